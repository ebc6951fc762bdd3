//! The `postgres-cdc` source under load against a real PostgreSQL server: an application
//! writes to ten tables while weir copies and streams them, and weir is SIGKILLed five
//! times during the copy and five times while streaming. The target must end equal to
//! the source, by an oracle independent of weir (every row as text) and by `weir
//! reconcile`; and each resumed copy must start at most one chunk before what the sink
//! had applied.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cdc::*;
use common::services::Postgres;
use common::{Workspace, weir};

const TABLES: usize = 10;
const ROWS: i64 = 120_000;
const CHUNK: i64 = 1_000;

fn table(i: usize) -> String {
    format!("t{i}")
}

/// Writes to every table until `stop`: inserts, updates that leave a TOASTed column
/// alone, deletes; once a truncate and once a new column. Returns how many statements.
fn application(pg: &Postgres, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let mut source = pg.client("source");
    std::thread::spawn(move || {
        let mut statements = 0u64;
        let mut next_id = 1_000_000i64;
        while !stop.load(Ordering::Relaxed) {
            let t = table(statements as usize % TABLES);
            let id = (statements as i64 * 7919) % ROWS + 1;
            let sql = match statements % 5 {
                0 | 1 => format!("UPDATE {t} SET n = n + 1 WHERE id = {id}"),
                2 => {
                    next_id += 1;
                    format!("INSERT INTO {t} (id, n, note) VALUES ({next_id}, 0, 'new')")
                }
                3 => format!("DELETE FROM {t} WHERE id = {}", id + 1),
                _ => format!("UPDATE {t} SET n = n + 1 WHERE id IN ({id}, {})", id + 2),
            };
            source.batch_execute(&sql).unwrap();
            match statements {
                600 => source.batch_execute("TRUNCATE t9").unwrap(),
                900 => source
                    .batch_execute(
                        "ALTER TABLE t8 ADD COLUMN extra int;
                         UPDATE t8 SET extra = 7 WHERE id % 100 = 0",
                    )
                    .unwrap(),
                _ => {}
            }
            statements += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        statements
    })
}

/// The highest key of each table in the target, below the application's own keys.
fn copied_up_to(pg: &Postgres) -> Vec<Option<i64>> {
    let mut target = pg.client("target");
    (0..TABLES)
        .map(|i| {
            target
                .query_one(
                    &format!("SELECT max(id) FROM {} WHERE id < 1000000", table(i)),
                    &[],
                )
                .ok()
                .and_then(|r| r.get::<_, Option<i64>>(0))
        })
        .collect()
}

#[test]
fn ten_tables_under_load_survive_ten_sigkills_and_end_equal() {
    let pg = server();
    let ws = Workspace::new();
    let mut source = pg.client("source");
    for i in 0..TABLES {
        source
            .batch_execute(&format!(
                "CREATE TABLE {t} (id bigint PRIMARY KEY, n bigint NOT NULL, note text);
                 INSERT INTO {t} SELECT g, 0,
                     CASE WHEN g % 1000 = 0
                          THEN (SELECT string_agg(md5((g * 100 + k)::text), '') FROM generate_series(1, 300) k)
                          ELSE 'row ' || g END
                   FROM generate_series(1, {ROWS}) g;
                 ANALYZE {t};",
                t = table(i)
            ))
            .unwrap();
    }
    let names: Vec<String> = (0..TABLES).map(table).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let yaml = std::fs::read_to_string(pipeline(
        &ws,
        &pg,
        "load",
        "  heartbeat: { interval: 1s }\n",
    ))
    .unwrap()
    .replace("chunk_rows: 7", &format!("chunk_rows: {CHUNK}"))
    // Small batches: a copy of large ones ended within the five runs it is to be killed in.
    .replace("tables:", "batch: { max_events: 1000 }\ntables:")
        + &format!(
            "reconcile:\n  source: {{ type: postgres, url: '{}', schema: public }}\n  \
             target: {{ type: postgres, url: '{}', schema: public }}\n",
            pg.url("source"),
            pg.url("target")
        );
    let file = ws.write("load.yaml", &yaml);

    let stop = Arc::new(AtomicBool::new(false));
    let app = application(&pg, stop.clone());

    // Five kills while the tables are copied. Before each restart, note how far each
    // table's copy was applied; the restarted copy must resume near there.
    let mut copy_kills = 0;
    let mut resumed_checks = 0;
    let mut applied_before: Option<Vec<Option<i64>>> = None;
    let started = Instant::now();
    while copy_kills < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "five kills during the copy"
        );
        let before = copied_up_to(&pg);
        let running = start(&ws, &file);
        if let Some(applied) = applied_before.take() {
            // The restarted copy says where each table resumed.
            let status = wait_for_status(&ws, &file, Duration::from_secs(60), "a new run", |s| {
                s["process"] == "running"
                    && s["state"] != "starting"
                    && s["pid"].as_u64() == Some(running.0.id() as u64)
            });
            for (i, applied) in applied.iter().enumerate() {
                let resumed = &status["tables"][format!("public.{}", table(i))];
                if let (Some(applied), Some(after)) = (
                    applied,
                    resumed["resumed_after"]
                        .as_str()
                        .and_then(|k| k.parse::<i64>().ok()),
                ) {
                    assert!(
                        after >= applied - CHUNK,
                        "table {}: the copy resumed after key {after}, more than a chunk \
                         before the {applied} applied",
                        table(i)
                    );
                    resumed_checks += 1;
                }
            }
        }
        // Let the copy apply some more, then kill it mid-copy. Progress is read from each
        // table's highest key (an index lookup): counting the rows took long enough for
        // the copy to end within five runs.
        let run_started = Instant::now();
        while copied_up_to(&pg) == before && run_started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let copying = status_json(&ws, &file).is_some_and(|s| s["state"] != "streaming");
        kill(running);
        if !copying {
            break;
        }
        copy_kills += 1;
        applied_before = Some(copied_up_to(&pg));
    }
    assert_eq!(copy_kills, 5, "the copy outlasted five kills");
    assert!(resumed_checks > 0, "some copies resumed by key");

    // Five kills while streaming.
    for round in 0..5 {
        let running = start(&ws, &file);
        wait_for_status(&ws, &file, Duration::from_secs(120), "streaming", |s| {
            s["state"] == "streaming" && s["pid"].as_u64() == Some(running.0.id() as u64)
        });
        std::thread::sleep(Duration::from_millis(700 + 300 * round));
        kill(running);
    }

    stop.store(true, Ordering::Relaxed);
    let statements = app.join().unwrap();
    assert!(
        statements > 900,
        "the application wrote ({statements} statements)"
    );
    let _last = start(&ws, &file);
    // The oracle: every row of every table, as PostgreSQL prints it, on both sides.
    wait_until_same(&pg, &ws, &names, Duration::from_secs(180));
    let reconcile = weir()
        .args(["reconcile", "-q"])
        .arg(&file)
        .current_dir(ws.dir.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&reconcile.stdout);
    assert_eq!(reconcile.status.code(), Some(0), "{report}");
    assert!(report.contains("EQUAL"), "{report}");
    let extra: i64 = pg
        .client("target")
        .query_one("SELECT count(*) FROM t8 WHERE extra = 7", &[])
        .unwrap()
        .get(0);
    assert!(extra > 0, "the new column reached the target");
}
