//! `weir dlq replay` with the real binary, real wasm plugins and a real broker: dead
//! letters go back in where they left the pipeline, each is applied once however often
//! the replay is killed, `--stage` and `--since` narrow it, and what fails again is
//! written again and reported.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::services::Broker;
use common::{Workspace, plugin_wasm, sqlite_rows, weir};

/// An insert of `id`; every third carries a note longer than the first run's
/// `max_record_bytes`, so the decoder refuses it.
fn event(id: u64) -> String {
    let note = if id.is_multiple_of(3) {
        "n".repeat(400)
    } else {
        "short".into()
    };
    format!("{{\"op\":\"c\",\"after\":{{\"id\":{id},\"name\":\"item {id}\",\"note\":\"{note}\"}}}}")
}

/// The first run's pipeline (`fixed: false`: records over 300 bytes refused, the probe
/// trapping on batches holding id 1000) or the fixed one. `rename` runs before the probe,
/// so a row the probe refused has been renamed already: sent through `rename` again, it
/// would fail (it has no `name` any more).
fn changelog_pipeline(ws: &Workspace, fixed: bool) -> std::path::PathBuf {
    let rename = plugin_wasm("examples/rename");
    let probe = plugin_wasm("testing/probe");
    let (max_record_bytes, probe_config) = if fixed {
        (1 << 20, "{mode: identity}".to_string())
    } else {
        (300, "{mode: trap, id: 1000}".to_string())
    };
    let yaml = format!(
        "name: replayed\n\
         source:\n  type: file\n  path: events.jsonl\n\
         table:\n  name: items\n  primary_key: [id]\n  columns: {{id: int64, name: string, note: string}}\n\
         transforms:\n\
         \x20 - name: rename\n    wasm: {}\n    config: {{columns: {{name: title}}}}\n\
         \x20 - name: probe\n    wasm: {}\n    config: {probe_config}\n\
         sink:\n  type: jsonl\n  path: changes.jsonl\n  mode: changelog\n\
         dead_letter:\n  type: file\n  path: dead-letters.jsonl\n\
         batch:\n  max_events: 50\n  max_wait: 50ms\n  max_record_bytes: {max_record_bytes}\n",
        rename.display(),
        probe.display()
    );
    ws.write("pipeline.yaml", &yaml)
}

fn replay(pipeline: &std::path::Path, extra: &[&str]) -> (std::process::Output, serde_json::Value) {
    let output = weir()
        .args(["dlq", "replay", "--json"])
        .args(extra)
        .arg(pipeline)
        .output()
        .expect("run weir dlq replay");
    let report = serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim())
        .unwrap_or(serde_json::Value::Null);
    (output, report)
}

/// The report's line for one pass.
fn pass<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["passes"]
        .as_array()
        .and_then(|passes| passes.iter().find(|p| p["pass"] == name))
        .unwrap_or_else(|| panic!("no pass {name} in {report}"))
}

fn spawn_replay(pipeline: &std::path::Path) -> Child {
    weir()
        .args(["dlq", "replay", "--json"])
        .arg(pipeline)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn weir dlq replay")
}

#[test]
fn replayed_letters_go_back_where_they_left_and_apply_once_across_kills() {
    const EVENTS: u64 = 30_000;
    let ws = Workspace::new();
    ws.append_lines("events.jsonl", &(1..=EVENTS).map(event).collect::<Vec<_>>());
    let pipeline = changelog_pipeline(&ws, false);
    let first = ws.run(&pipeline, &[]);
    assert!(first.output.status.success(), "{}", first.stderr());
    let letters = ws.dead_letters();
    let decode = letters.iter().filter(|l| l["stage"] == "decode").count();
    let transform = letters.iter().filter(|l| l["stage"] == "transform").count();
    assert_eq!(decode as u64, EVENTS / 3, "every third record is too large");
    // The batch holding id 1000, less its records the decoder refused.
    assert!(transform > 10, "{transform} rows of the trapped batch");
    assert_eq!(letters.len(), decode + transform);
    // A pipeline that crashed between writing dead letters and its checkpoint writes them
    // again when it reads their records again: here, the first 100 decode letters.
    let text = std::fs::read_to_string(ws.path("dead-letters.jsonl")).unwrap();
    let again: Vec<String> = text
        .lines()
        .filter(|l| l.contains("\"stage\":\"decode\""))
        .take(100)
        .map(str::to_string)
        .collect();
    ws.append_lines("dead-letters.jsonl", &again);

    // The fix: larger records allowed, the probe passes everything. The replay is killed
    // three times, each a few milliseconds after it stored a new position.
    let pipeline = changelog_pipeline(&ws, true);
    let sidecar = ws.path("changes.jsonl.checkpoint.json");
    let replayed_lines = || {
        std::fs::read(&sidecar)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map(|v| {
                v["checkpoint"]
                    .as_object()
                    .map(|streams| {
                        streams
                            .iter()
                            .filter(|(stream, _)| stream.starts_with("dlq:"))
                            .map(|(_, at)| at["line"].as_u64().unwrap_or(0))
                            .sum::<u64>()
                    })
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    };
    let mut rng = weir_runtime::bench::Rng::new(0x5eed);
    for _ in 0..3 {
        let before = replayed_lines();
        let mut child = spawn_replay(&pipeline);
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() && replayed_lines() == before {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no progress in 60 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(rng.below(20)));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the replay ended before it was killed; give it more letters"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let (output, report) = replay(&pipeline, &[]);
    assert!(
        output.status.success(),
        "{}\n{report}",
        String::from_utf8_lossy(&output.stderr)
    );
    for name in ["decode", "transform `probe`", "transform `rename`", "sink"] {
        assert_eq!(pass(&report, name)["failed_again"], 0, "{report}");
    }
    assert_eq!(pass(&report, "decode")["duplicates"], 100, "{report}");

    // Every change once: the first run's and the replayed ones, each renamed once.
    let log = std::fs::read_to_string(ws.path("changes.jsonl")).unwrap();
    let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
    for line in log.lines() {
        let change: serde_json::Value = serde_json::from_str(line).unwrap();
        let after = &change["after"];
        let id = after["id"].as_u64().unwrap();
        assert_eq!(after["title"], format!("item {id}"), "{line}");
        assert!(after.get("name").is_none(), "{line}");
        *seen.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "applied more than once: {twice:?}");
    assert_eq!(seen.len() as u64, EVENTS, "every change applied");
    // Nothing failed again, so the output holds only the first run's letters.
    assert_eq!(ws.dead_letters().len(), letters.len() + again.len());

    // A replay run again finds nothing left to send.
    let (output, report) = replay(&pipeline, &[]);
    assert!(output.status.success());
    for p in report["passes"].as_array().unwrap() {
        assert_eq!(p["replayed"], 0, "{report}");
    }
}

#[test]
fn kafka_dead_letters_replay_by_stage_and_since_and_what_fails_again_is_kept() {
    let broker = Broker::start();
    broker.create_topic("replay-dlq", 3);
    let ws = Workspace::new();
    // A CHECK the first rows break: every tenth price is negative. The transform renames
    // `price` to `amount` before the sink, so a row the sink refused has no `price` any
    // more: sent through the transform again, it would fail.
    let conn = rusqlite::Connection::open(ws.path("target.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, amount INTEGER CHECK (amount >= 0))",
    )
    .unwrap();
    drop(conn);
    let lines: Vec<String> = (1..=200)
        .map(|id| {
            if id % 40 == 0 {
                // Never decodable: the replay sends it again and it fails again.
                format!("{{\"op\":\"c\",\"after\":{{\"id\":{id},\"price\":\"lots\"}}}}")
            } else {
                let price = if id % 10 == 0 { -id } else { id };
                format!("{{\"op\":\"c\",\"after\":{{\"id\":{id},\"price\":{price}}}}}")
            }
        })
        .collect();
    ws.append_lines("events.jsonl", &lines);
    let yaml = format!(
        "name: kafka-replayed\n\
         source:\n  type: file\n  path: events.jsonl\n\
         table:\n  name: orders\n  primary_key: [id]\n  columns: {{id: int64, price: int64}}\n\
         transforms:\n  - name: rename\n    wasm: {}\n    config: {{columns: {{price: amount}}}}\n\
         sink:\n  type: sqlite\n  path: target.db\n\
         dead_letter:\n  type: kafka\n  brokers: {}\n  topic: replay-dlq\n\
         \x20 options: {{batch.num.messages: '1'}}\n\
         batch:\n  max_events: 30\n",
        plugin_wasm("examples/rename").display(),
        broker.address()
    );
    // One dead letter per record batch: tansu 0.6 reports a partition's end as the base
    // offset of its last batch plus one, which would hide the rest of that batch from a
    // replay that reads to the end (docs/decisions.md, "tansu resumes at record-batch
    // boundaries").
    let pipeline = ws.write("pipeline.yaml", &yaml);
    let first = ws.run(&pipeline, &[]);
    assert!(first.output.status.success(), "{}", first.stderr());
    // 5 records the decoder refuses (ids 40, 80, ...), 15 negative prices the target does.
    assert_eq!(first.summary["dead_letters"], 5 + 15, "{}", first.summary);
    let count = || sqlite_rows(&ws.path("target.db"), "SELECT count(*) FROM orders")[0][0].clone();
    assert_eq!(count(), "180");

    // The target is fixed: the table rebuilt without its CHECK.
    let conn = rusqlite::Connection::open(ws.path("target.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE fixed (id INTEGER PRIMARY KEY, amount INTEGER);
         INSERT INTO fixed SELECT * FROM orders; DROP TABLE orders;
         ALTER TABLE fixed RENAME TO orders;",
    )
    .unwrap();
    drop(conn);

    // Letters older than --since are passed over: here, all of them.
    let (output, report) = replay(
        &pipeline,
        &["--stage", "sink", "--since", "2099-01-01T00:00:00Z"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let sink = pass(&report, "sink");
    assert_eq!(sink["letters"], 15, "{report}");
    assert_eq!(sink["older"], 15, "{report}");
    assert_eq!(sink["replayed"], 0, "{report}");
    assert_eq!(report["passes"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(count(), "180");

    // --stage sink replays the rows the target refused, and only them.
    let (output, report) = replay(&pipeline, &["--stage", "sink", "--since", "1h"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let sink = pass(&report, "sink");
    assert_eq!(sink["replayed"], 15, "{report}");
    assert_eq!(sink["rows_applied"], 15, "{report}");
    assert_eq!(sink["failed_again"], 0, "{report}");
    assert_eq!(count(), "195");
    let negative = sqlite_rows(
        &ws.path("target.db"),
        "SELECT count(*) FROM orders WHERE amount < 0",
    );
    assert_eq!(negative, [["15"]]);

    // The undecodable records fail again: kept in the topic with their reason (after the
    // end the replay read to), reported, and the exit status says so.
    let (output, report) = replay(&pipeline, &[]);
    assert_eq!(output.status.code(), Some(1), "{report}");
    let decode = pass(&report, "decode");
    assert_eq!(decode["replayed"], 5, "{report}");
    assert_eq!(decode["failed_again"], 5, "{report}");
    assert_eq!(
        pass(&report, "sink")["replayed"],
        0,
        "the sink's were replayed: {report}"
    );
    let letters = broker.consume_all("replay-dlq", 25);
    let again: Vec<_> = letters
        .iter()
        .filter(|l| {
            // The letter it came from: its partition and offset (as a line, offset + 1).
            l.header("weir.source.file")
                .is_some_and(|from| from.starts_with("dlq:kafka:replay-dlq/"))
                && l.header("weir.source.line").is_some()
        })
        .collect();
    assert_eq!(again.len(), 5);
    for letter in again {
        assert_eq!(letter.header("weir.error.stage").as_deref(), Some("decode"));
        assert!(
            letter
                .header("weir.error.message")
                .unwrap()
                .contains("price")
        );
    }
    // The next replay tries those five, not the first five again.
    let (_, report) = replay(&pipeline, &["--stage", "decode"]);
    assert_eq!(pass(&report, "decode")["letters"], 5, "{report}");
    assert_eq!(count(), "195");
}
