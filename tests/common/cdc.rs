//! Helpers of the tests that run the `postgres-cdc` source against a real PostgreSQL
//! server (`wal_level=logical`), with the source and the target as two databases.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::services::Postgres;
use super::{Workspace, weir};

pub fn pipeline(
    ws: &Workspace,
    pg: &Postgres,
    name: &str,
    source_extra: &str,
) -> std::path::PathBuf {
    let yaml = format!(
        "name: {name}\n\
         source:\n  type: postgres-cdc\n  url: {}\n  publication: weir_{name}\n  slot: weir_{name}\n\
         \x20 chunk_rows: 7\n{source_extra}\
         tables:\n  include: ['public.*']\n\
         sink:\n  type: postgres\n  url: {}\n  schema: public\n  mode: upsert\n  create: true\n\
         dead_letter:\n  type: file\n  path: dead-letters.jsonl\n",
        pg.url("source"),
        pg.url("target"),
    );
    ws.write("pipeline.yaml", &yaml)
}

/// Every row of `table` in `database`, each as its row text, in key order: the oracle
/// the target is compared with, independent of weir.
pub fn table_rows(pg: &Postgres, database: &str, table: &str) -> Vec<String> {
    pg.client(database)
        .query(
            &format!("SELECT t::text FROM public.{table} t ORDER BY 1"),
            &[],
        )
        .unwrap_or_else(|e| panic!("read {table} in {database}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

pub fn assert_same(pg: &Postgres, tables: &[&str]) {
    for table in tables {
        let source = table_rows(pg, "source", table);
        let target = table_rows(pg, "target", table);
        let clip = |rows: Vec<&String>| -> Vec<String> {
            rows.iter()
                .take(5)
                .map(|r| r.chars().take(300).collect())
                .collect()
        };
        // Sets: the tables may hold hundreds of thousands of rows.
        let (in_source, in_target): (
            std::collections::HashSet<&String>,
            std::collections::HashSet<&String>,
        ) = (source.iter().collect(), target.iter().collect());
        let missing = clip(source.iter().filter(|r| !in_target.contains(r)).collect());
        let extra = clip(target.iter().filter(|r| !in_source.contains(r)).collect());
        assert!(
            missing.is_empty() && extra.is_empty(),
            "table {table}: rows of the source not in the target {missing:#?}; \
             rows of the target not in the source {extra:#?}"
        );
    }
}

/// A running weir, killed when dropped (so a failing test leaves no process behind).
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn start(ws: &Workspace, pipeline: &std::path::Path) -> Running {
    Running(
        weir()
            .args(["run", "-q", "-v"])
            .arg(pipeline)
            .current_dir(ws.dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(ws.path("weir.log")).unwrap())
            .spawn()
            .expect("start weir"),
    )
}

/// Waits until the target matches the source, or fails after `limit`.
pub fn wait_until_same(pg: &Postgres, ws: &Workspace, tables: &[&str], limit: Duration) {
    let started = Instant::now();
    loop {
        let same = tables.iter().all(|t| {
            let target = pg
                .client("target")
                .query(&format!("SELECT t::text FROM public.{t} t ORDER BY 1"), &[]);
            match target {
                Ok(rows) => {
                    let target: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                    target == table_rows(pg, "source", t)
                }
                Err(_) => false,
            }
        });
        if same {
            return;
        }
        if started.elapsed() > limit {
            let log = std::fs::read_to_string(ws.path("weir.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("weir's log, last lines first:\n{}", tail.join("\n"));
            assert_same(pg, tables);
            panic!("the target did not catch up");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the pipeline has stored a checkpoint (its copy is applied).
pub fn wait_for_checkpoint(pg: &Postgres, ws: &Workspace, pipeline: &str) {
    let started = Instant::now();
    loop {
        let stored = pg
            .client("target")
            .query_opt(
                "SELECT 1 FROM weir.checkpoints WHERE pipeline = $1 LIMIT 1",
                &[&pipeline],
            )
            .ok()
            .flatten()
            .is_some();
        if stored {
            return;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let log = std::fs::read_to_string(ws.path("weir.log")).unwrap_or_default();
            panic!("pipeline {pipeline} stored no checkpoint; weir's log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// SIGKILL: nothing flushed, nothing said goodbye.
pub fn kill(running: Running) {
    drop(running);
}

pub fn server() -> Postgres {
    let pg = Postgres::start();
    pg.create_database("source");
    pg.create_database("target");
    pg
}

/// `weir status --json` of the pipeline file, if it shows a status.
pub fn status_json(ws: &Workspace, file: &std::path::Path) -> Option<serde_json::Value> {
    let output = weir()
        .args(["status", "--json"])
        .arg(file)
        .current_dir(ws.dir.path())
        .output()
        .expect("run weir status");
    output
        .status
        .success()
        .then(|| serde_json::from_slice(&output.stdout).expect("weir status --json prints JSON"))
}

/// Polls `weir status` until `accept` holds, or fails after `limit` with the last status.
pub fn wait_for_status(
    ws: &Workspace,
    file: &std::path::Path,
    limit: Duration,
    what: &str,
    mut accept: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < limit {
        if let Some(status) = status_json(ws, file) {
            if accept(&status) {
                return status;
            }
            last = Some(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(ws.path("weir.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    panic!(
        "weir status never showed {what} within {limit:?}; last status:\n{}\nweir's log, last \
         lines first:\n{}",
        serde_json::to_string_pretty(&last).unwrap(),
        tail.join("\n")
    );
}

/// Where each of a status's transitions went, oldest first.
pub fn transition_targets(status: &serde_json::Value) -> Vec<&str> {
    status["transitions"]
        .as_array()
        .expect("a status has transitions")
        .iter()
        .filter_map(|t| t["to"].as_str())
        .collect()
}
