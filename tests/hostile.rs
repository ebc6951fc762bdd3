//! weir against hostile input, with the real binary and real plugins
//! (`plugins/testing/hostile`, `plugins/testing/alias-errors`): another table's events in
//! the stream, a stage that panics, plugin output built to crash the host's reader, keys
//! retyped by a plugin, a target that refuses a row, and plugins that try to make the host
//! spend memory for them. Deadlines are measured in `tests/plugin_deadlines.rs`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::services::Postgres;
use common::{Workspace, plugin_wasm, sqlite_rows, weir};

/// `n` inserts of items `1..=n`, as bare Debezium payloads.
fn items(n: i64) -> Vec<String> {
    (1..=n)
        .map(|id| {
            format!(
                r#"{{"op":"c","before":null,"after":{{"id":{id},"name":"item {id}"}},"ts_ms":{id}}}"#
            )
        })
        .collect()
}

/// A file → SQLite pipeline over `events.jsonl`, 10 events per batch, with one transform.
fn plugin_pipeline(ws: &Workspace, wasm: &Path, config: &str, limits: &str) -> std::path::PathBuf {
    ws.write(
        "pipeline.yaml",
        &format!(
            "name: hostile\n\
             source:\n  type: file\n  path: events.jsonl\n\
             batch:\n  max_events: 10\n\
             table:\n  name: items\n  primary_key: [id]\n\
             transforms:\n  - name: hostile\n    wasm: {}\n    config: {config}\n{limits}\
             sink:\n  type: sqlite\n  path: target.db\n  table: items\n  create: true\n\
             dead_letter:\n  type: file\n  path: dead-letters.jsonl\n",
            wasm.display()
        ),
    )
}

fn ids(ws: &Workspace) -> Vec<i64> {
    sqlite_rows(&ws.path("target.db"), "SELECT id FROM items ORDER BY id")
        .into_iter()
        .map(|r| r[0].parse().unwrap())
        .collect()
}

/// The `id` of a dead letter's change (its `after`, else its `before`).
fn dead_id(letter: &serde_json::Value) -> i64 {
    let raw: serde_json::Value = serde_json::from_str(letter["raw"].as_str().unwrap()).unwrap();
    let image = if raw["after"].is_null() {
        "before"
    } else {
        "after"
    };
    raw[image]["id"].as_i64().unwrap()
}

/// Issue 17, item 1: a stream that mixes tables never changes the declared table; the
/// other table's events are dead letters of stage `route` naming both tables.
#[test]
fn another_tables_events_never_reach_the_declared_table() {
    let source = |table: &str| {
        format!(
            r#""source":{{"connector":"postgresql","db":"shop","schema":"public","table":"{table}"}}"#
        )
    };
    let events = [
        format!(
            r#"{{"op":"c","before":null,"after":{{"id":1,"name":"Ann"}},{},"ts_ms":1}}"#,
            source("customers")
        ),
        // An order with the same key: before the fix it overwrote customer 1.
        format!(
            r#"{{"op":"c","before":null,"after":{{"id":1,"total":9.50}},{},"ts_ms":2}}"#,
            source("orders")
        ),
        // Its key is a string: decoding it into `customers` would stop the pipeline.
        format!(
            r#"{{"op":"c","before":null,"after":{{"id":"o-2","total":1.25}},{},"ts_ms":3}}"#,
            source("orders")
        ),
        // A truncate of another table must not empty this one.
        format!(
            r#"{{"op":"t","before":null,"after":null,{},"ts_ms":4}}"#,
            source("orders")
        ),
        format!(
            r#"{{"op":"u","before":{{"id":1,"name":"Ann"}},"after":{{"id":1,"name":"Ann B"}},{},"ts_ms":5}}"#,
            source("customers")
        ),
        // No table information at all: applied, as before.
        r#"{"op":"c","before":null,"after":{"id":2,"name":"Bo"},"ts_ms":6}"#.to_string(),
    ];
    for name in ["customers", "public.customers", "shop.public.customers"] {
        let ws = Workspace::new();
        ws.append_lines("events.jsonl", &events);
        let pipeline = ws.write(
            "pipeline.yaml",
            &format!(
                "name: mixed\n\
                 source:\n  type: file\n  path: events.jsonl\n\
                 table:\n  name: {name}\n  primary_key: [id]\n\
                 sink:\n  type: sqlite\n  path: target.db\n  table: customers\n  create: true\n\
                 dead_letter:\n  type: file\n  path: dead-letters.jsonl\n"
            ),
        );
        let summary = ws.run_ok(&pipeline);
        let rows = sqlite_rows(&ws.path("target.db"), "SELECT * FROM customers ORDER BY id");
        assert_eq!(
            rows,
            vec![
                vec!["1".to_string(), "Ann B".into()],
                vec!["2".into(), "Bo".into()]
            ],
            "table `{name}`: the target holds only customers, with only their columns"
        );
        let letters = ws.dead_letters();
        assert_eq!(letters.len(), 3, "table `{name}`: {letters:#?}");
        for letter in &letters {
            assert_eq!(letter["stage"], "route", "{letter}");
            let error = letter["error"].as_str().unwrap();
            assert!(
                error.contains("`shop.public.orders`") && error.contains(&format!("`{name}`")),
                "the reason names both tables: {error}"
            );
        }
        assert_eq!(summary["dead_letters"], 3);
    }
}

/// Issue 17, items 2, 3 and 4: each way of malforming a plugin's output dead-letters the
/// rows of its batch alone (`plugin_bad_output`), the process survives, and later batches
/// apply.
#[test]
fn malformed_plugin_output_dead_letters_only_its_batch() {
    let wasm = plugin_wasm("testing/hostile");
    let mut failures = Vec::new();
    for mode in [
        "offset-past-body",
        "lz4-bomb",
        "wrong-lengths",
        "invalid-utf8",
        "retyped-key-digits",
        "retyped-key-text",
    ] {
        let ws = Workspace::new();
        ws.append_lines("events.jsonl", &items(30));
        let pipeline = plugin_pipeline(&ws, &wasm, &format!("{{mode: {mode}, id: 15}}"), "");
        let run = ws.run(&pipeline, &[]);
        if !run.output.status.success() {
            failures.push(format!(
                "{mode}: weir run exited with {:?}: {}",
                run.output.status,
                run.stderr()
            ));
            continue;
        }
        let letters = ws.dead_letters();
        let mut dead: Vec<i64> = letters.iter().map(dead_id).collect();
        dead.sort();
        let reasons_ok = letters.iter().all(|l| {
            l["stage"] == "transform"
                && l["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("plugin_bad_output"))
        });
        let applied = ids(&ws);
        let expected: Vec<i64> = (1..=30).filter(|id| !dead.contains(id)).collect();
        if !dead.contains(&15) || dead.len() != 10 || !reasons_ok || applied != expected {
            failures.push(format!(
                "{mode}: dead letters {dead:?} (reasons {:?}), applied {applied:?}",
                letters
                    .iter()
                    .map(|l| l["error"].clone())
                    .collect::<Vec<_>>()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Issue 17, item 2: a panic in any stage fails the run (non-zero exit, the stage and the
/// panic named), instead of reading as the end of the input.
#[test]
fn a_panic_in_any_stage_fails_the_run() {
    let probe = plugin_wasm("testing/probe");
    let pg = Postgres::start();
    pg.create_database("panics");
    let mut failures = Vec::new();
    // Items with a version column, for the lanes of a last-write-wins sink.
    let versioned: Vec<String> = (1..=30)
        .map(|id| {
            format!(r#"{{"op":"c","before":null,"after":{{"id":{id},"name":"item {id}","v":1}},"ts_ms":{id}}}"#)
        })
        .collect();
    for (stage, thread) in [
        ("fetch", "weir-fetch"),
        ("read", "weir-reader"),
        ("transform", "weir-transform"),
        ("prepare", "weir-prepare"),
        ("lane", "weir-lane"),
        ("apply", "apply"),
    ] {
        let ws = Workspace::new();
        ws.append_lines("events.jsonl", &versioned);
        let sink = match stage {
            "prepare" | "lane" => format!(
                "sink:\n  type: postgres\n  url: {}\n  table: public.items_{stage}\n  create: true\n",
                pg.url("panics")
            ),
            _ => "sink:\n  type: sqlite\n  path: target.db\n  table: items\n  create: true\n"
                .to_string(),
        };
        let conflict = if stage == "lane" {
            "conflict:\n  strategy: last-write-wins\n  version_column: v\n  lanes: 2\n"
        } else {
            ""
        };
        let pipeline = ws.write(
            "pipeline.yaml",
            &format!(
                "name: panics\n\
                 source:\n  type: file\n  path: events.jsonl\n\
                 table:\n  name: items\n  primary_key: [id]\n\
                 transforms:\n  - name: identity\n    wasm: {}\n    config: {{mode: identity}}\n\
                 {sink}{conflict}\
                 dead_letter:\n  type: file\n  path: dead-letters.jsonl\n",
                probe.display()
            ),
        );
        let output = weir()
            .args(["run", "--quiet"])
            .arg(&pipeline)
            .env("WEIR_INJECT_PANIC", stage)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let message = stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_default();
        if output.status.success()
            || !message.contains(thread)
            || !message.contains("injected panic")
        {
            failures.push(format!(
                "{stage}: exit {:?}, error line {message:?}\n{stderr}",
                output.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Creates the test's SQLite target with `ddl`, before weir sees it.
fn create_target(ws: &Workspace, ddl: &str) {
    rusqlite::Connection::open(ws.path("target.db"))
        .unwrap()
        .execute_batch(ddl)
        .unwrap();
}

/// Issue 17, item 4: a target that refuses a row (here a CHECK constraint) dead-letters
/// that row, with the target's reason, and applies the rest of its batch. Changes
/// compacted into a refused one go with it; an update that moves its key is written
/// whole or not at all; a refusal that rolls the whole transaction back fails the run.
#[test]
fn a_row_the_sqlite_target_refuses_is_a_dead_letter() {
    let ws = Workspace::new();
    create_target(
        &ws,
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT CHECK (name <> 'item 7'))",
    );
    let mut events = items(12);
    events.extend([
        // Compacted into the refused update: dead-lettered with it.
        r#"{"op":"c","before":null,"after":{"id":20,"name":"ok"}}"#.to_string(),
        r#"{"op":"u","before":{"id":20,"name":"ok"},"after":{"id":20,"name":"item 7"}}"#
            .to_string(),
        r#"{"op":"c","before":null,"after":{"id":30,"name":"thirty"}}"#.to_string(),
    ]);
    ws.append_lines("events.jsonl", &events);
    let pipeline = ws.write(
        "pipeline.yaml",
        "name: refused\n\
         source:\n  type: file\n  path: events.jsonl\n\
         table:\n  name: items\n  primary_key: [id]\n\
         sink:\n  type: sqlite\n  path: target.db\n  table: items\n\
         dead_letter:\n  type: file\n  path: dead-letters.jsonl\n",
    );
    ws.run_ok(&pipeline);
    let mut expected: Vec<i64> = (1..=12).filter(|&i| i != 7).collect();
    expected.push(30);
    assert_eq!(ids(&ws), expected);
    let letters = ws.dead_letters();
    let dead: Vec<(i64, &str)> = letters
        .iter()
        .map(|l| (dead_id(l), l["stage"].as_str().unwrap()))
        .collect();
    assert_eq!(
        dead,
        [(7, "sink"), (20, "sink"), (20, "sink")],
        "{letters:#?}"
    );
    let error = letters[0]["error"].as_str().unwrap();
    assert!(error.contains("CHECK constraint"), "{error}");
    let folded = letters.iter().find(|l| l["source"]["line"] == 13).unwrap();
    assert!(
        folded["error"]
            .as_str()
            .unwrap()
            .starts_with("compacted into a later change of the same key"),
        "{folded}"
    );

    // An update moving key 30 to 31 whose new row is refused leaves key 30 as it was.
    ws.append_lines(
        "events.jsonl",
        &[
            r#"{"op":"u","before":{"id":30,"name":"thirty"},"after":{"id":31,"name":"item 7"}}"#
                .to_string(),
        ],
    );
    ws.run_ok(&pipeline);
    assert_eq!(ids(&ws), expected);
    assert_eq!(ws.dead_letters().len(), 4);

    // A constraint whose conflict clause rolls the whole transaction back: nothing of the
    // batch can be applied around it, so the run fails and stores no checkpoint past it.
    let ws = Workspace::new();
    create_target(
        &ws,
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL ON CONFLICT ROLLBACK)",
    );
    let mut events = items(12);
    events.push(r#"{"op":"c","before":null,"after":{"id":13,"name":null}}"#.to_string());
    ws.append_lines("events.jsonl", &events);
    let pipeline = ws.write(
        "pipeline.yaml",
        &std::fs::read_to_string(&pipeline).unwrap(),
    );
    let run = ws.run(&pipeline, &[]);
    assert!(!run.output.status.success());
    assert!(
        run.stderr().contains("rolled the batch's transaction back"),
        "{}",
        run.stderr()
    );
    assert_eq!(ids(&ws), Vec::<i64>::new());
}

/// Runs `weir run --quiet` and returns its exit status and peak resident memory in MiB
/// (from the kernel's accounting of the finished child).
fn run_measuring_rss(pipeline: &Path) -> (std::process::ExitStatus, f64) {
    // Reaped by `wait4` below, which also reports its peak memory.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "--quiet"])
        .arg(pipeline)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: plain calls on a zeroed struct and a child of this process.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4");
    use std::os::unix::process::ExitStatusExt;
    (
        std::process::ExitStatus::from_raw(status),
        usage.ru_maxrss as f64 / 1024.0,
    )
}

/// Issue 17, item 6: what the host spends for a plugin stays within the plugin's cap. A
/// plugin that points 1,024 row errors at one 1 MiB string, or fails every batch with a
/// 256 KiB message, or refuses every row with its own 8 KiB message, cannot push weir's
/// peak memory past the pass-through run's plus `memory_mb` plus 64 MiB, nor write one
/// batch's error once per row.
#[test]
fn memory_spent_for_a_plugin_stays_within_its_cap() {
    const MEMORY_MB: f64 = 16.0;
    let limits = "    limits: { memory_mb: 16 }\n";
    let run = |wasm: &Path, config: &str, events: i64| {
        let ws = Workspace::new();
        ws.append_lines("events.jsonl", &items(events));
        let pipeline = ws.write(
            "pipeline.yaml",
            &std::fs::read_to_string(plugin_pipeline(&ws, wasm, config, limits))
                .unwrap()
                .replace("max_events: 10", "max_events: 1000"),
        );
        let (status, rss) = run_measuring_rss(&pipeline);
        (ws, status, rss)
    };
    const EVENTS: i64 = 2000;
    let hostile = plugin_wasm("testing/hostile");
    let aliasing = plugin_wasm("testing/alias-errors");
    // Compile both plugins into the cache first: compiling takes memory no run measures.
    run(&hostile, "{mode: identity}", 1);
    run(&aliasing, "{}", 1);
    let (_, status, baseline) = run(&hostile, "{mode: identity}", EVENTS);
    assert!(status.success());
    let bound = baseline + MEMORY_MB + 64.0;
    let mut failures = Vec::new();
    // The dead letters each case may write: every row is one (about 400 bytes with its
    // change and a short reason), plus the long reasons: a batch's error once per batch,
    // a row's own reason capped at 4 KiB.
    let per_row = 512;
    for (name, wasm, config, letters_bound) in [
        (
            "aliased row errors",
            aliasing.clone(),
            "{}",
            EVENTS * per_row + 2 * 5120,
        ),
        (
            "a 256 KiB batch error",
            hostile.clone(),
            "{mode: huge-error}",
            EVENTS * per_row + 2 * 5120,
        ),
        (
            "an 8 KiB error per row",
            hostile.clone(),
            "{mode: huge-row-errors, error_bytes: 8192}",
            EVENTS * (per_row + 4096),
        ),
    ] {
        let (ws, status, rss) = run(&wasm, config, EVENTS);
        let letters = std::fs::metadata(ws.path("dead-letters.jsonl")).map_or(0, |m| m.len());
        println!(
            "{name}: peak {rss:.0} MiB (pass-through {baseline:.0} MiB), dead letters {letters} bytes"
        );
        if !status.success() || rss > bound {
            failures.push(format!(
                "{name}: exit {status}, peak {rss:.0} MiB > {bound:.0} MiB"
            ));
        }
        let dead = ws.dead_letters();
        if name == "aliased row errors"
            && !dead.iter().all(|l| {
                l["error"].as_str().is_some_and(|e| {
                    e.starts_with("plugin_bad_output") && e.contains("memory cap of 16 MiB")
                })
            })
        {
            failures.push(format!("{name}: {}", dead[0]["error"]));
        }
        let dead = dead.len() as i64;
        if dead != EVENTS || letters > letters_bound as u64 {
            failures.push(format!(
                "{name}: {dead} dead letters, {letters} bytes (at most {letters_bound})"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
