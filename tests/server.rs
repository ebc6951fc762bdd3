//! The pipeline's HTTP listener with the real binary: `/metrics`, `/health` and `/ready`
//! answer while a pipeline runs, and the counters they show are the run's.

mod common;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::services::{free_port, http_get as get, series_value as value};
use common::{STREAM_COLUMNS, Workspace, change_stream, weir};

#[test]
fn metrics_health_and_readiness_are_served_while_a_pipeline_runs() {
    let ws = Workspace::new();
    let events = 3_000;
    let stream = change_stream(events, 200, 9);
    ws.append_lines("events.jsonl", &stream.lines);
    // One record the decoder refuses: a dead letter of the `decode` stage.
    ws.append_lines("events.jsonl", &["{\"payload\": 1}".to_string()]);
    let port = free_port();
    let pipeline = ws.write(
        "pipeline.yaml",
        &format!(
            "name: served\n\
             source:\n  type: file\n  path: events.jsonl\n  follow: true\n\
             table:\n  name: items\n  primary_key: [id]\n{STREAM_COLUMNS}\
             sink:\n  type: sqlite\n  path: target.db\n  create: true\n\
             server:\n  listen: 127.0.0.1:{port}\n"
        ),
    );
    let mut child = weir()
        .args(["run", "--json", "-q", "--stop-when-idle", "4s"])
        .arg(&pipeline)
        .current_dir(ws.dir.path())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(ws.path("weir.log")).unwrap())
        .spawn()
        .expect("start weir");
    // Scrape until every event is counted as read, while the run waits for more.
    let started = Instant::now();
    let metrics = loop {
        if let Some((200, body)) = get(port, "/metrics")
            && value(&body, "weir_events_received_total{pipeline=\"served\"}")
                == Some(events as u64 + 1)
        {
            break body;
        }
        if child.try_wait().unwrap().is_some() || started.elapsed() > Duration::from_secs(60) {
            let log = std::fs::read_to_string(ws.path("weir.log")).unwrap_or_default();
            panic!("weir served no metrics counting {events} events; its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let health = get(port, "/health").expect("/health answers");
    assert_eq!(health, (200, "ok\n".to_string()));
    let ready = get(port, "/ready").expect("/ready answers");
    assert_eq!(ready, (200, "streaming\n".to_string()));
    assert_eq!(get(port, "/nothing").map(|r| r.0), Some(404));
    assert!(
        metrics.contains("weir_pipeline_state{pipeline=\"served\",state=\"streaming\"} 1"),
        "{metrics}"
    );
    // The counters are the run's: what its summary says once it ends.
    let mut last = metrics;
    while child.try_wait().unwrap().is_none() {
        if let Some((200, body)) = get(port, "/metrics") {
            last = body;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "weir stopped");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let applied = |op: &str| {
        value(
            &last,
            &format!("weir_rows_applied_total{{pipeline=\"served\",op=\"{op}\"}}"),
        )
    };
    assert_eq!(applied("upsert"), summary["upserts"].as_u64(), "{last}");
    assert_eq!(applied("delete"), summary["deletes"].as_u64(), "{last}");
    assert!(applied("upsert") > Some(0));
    assert_eq!(summary["dead_letters"], 1);
    assert_eq!(
        value(
            &last,
            "weir_dead_letters_total{pipeline=\"served\",stage=\"decode\",reason=\"invalid_event\"}"
        ),
        Some(1),
        "{last}"
    );
    assert_eq!(
        value(&last, "weir_batch_apply_seconds_count{pipeline=\"served\"}"),
        summary["batches"].as_u64(),
        "one apply time per batch: {last}"
    );
    let durable = last
        .lines()
        .find_map(|l| {
            l.strip_prefix("weir_last_checkpoint_timestamp_seconds{pipeline=\"served\"} ")
        })
        .and_then(|v| v.parse::<f64>().ok())
        .expect("the time of the last checkpoint");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        durable <= now && durable > now - 120.0,
        "the last checkpoint was made during the run ({durable}, now {now})"
    );
    assert_eq!(
        value(&last, "weir_events_received_total{pipeline=\"served\"}"),
        summary["events_read"].as_u64()
    );
    // The listener is gone with the run.
    assert!(
        get(port, "/health").is_none(),
        "nothing listens after the run"
    );
}
