//! The lifecycle of a pipeline fed by Debezium through Kafka, with a real `tansu` broker:
//! heartbeats that stop and come back, and a retention gap that must never be skipped.

mod common;

use std::time::{Duration, Instant};

use common::cdc::{Running, start, status_json, transition_targets, wait_for_status};
use common::services::{Broker, Postgres};
use common::{STREAM_COLUMNS, Workspace, change_stream, keyed_by_row_id, weir};

const TOPIC: &str = "shop.public.items";
const HEARTBEATS: &str = "__debezium-heartbeat.shop";

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Debezium writes heartbeats every `every` until `stop` is set.
fn heartbeats(
    broker: &Broker,
    every: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    let address = broker.address();
    std::thread::spawn(move || {
        use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
        let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &address)
            .set("linger.ms", "0")
            .create()
            .expect("producer");
        let mut sent = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let value = format!(
                r#"{{"schema":{{"type":"struct","name":"io.debezium.connector.common.Heartbeat"}},"payload":{{"ts_ms":{}}}}}"#,
                now_ms()
            );
            let key = r#"{"serverName":"shop"}"#;
            producer
                .send(BaseRecord::to(HEARTBEATS).key(key).payload(&value))
                .map_err(|(e, _)| e)
                .expect("send a heartbeat");
            producer.flush(Duration::from_secs(10)).expect("flushed");
            sent += 1;
            std::thread::sleep(every);
        }
        sent
    })
}

/// Heartbeats that stop make the pipeline `degraded`, naming them, within the timeout; when
/// they come back it is `streaming` again. Without a change to apply, only the heartbeats
/// tell weir that Debezium and its database live.
#[test]
fn missing_heartbeats_degrade_the_pipeline_and_returning_ones_restore_it() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    broker.create_topic(HEARTBEATS, 1);
    let stream = change_stream(300, 60, 5);
    broker.produce(TOPIC, &keyed_by_row_id(&stream.lines));
    let ws = Workspace::new();
    let timeout = 3;
    let pipeline = ws.write(
        "pipeline.yaml",
        &format!(
            "name: items-sync\n\
             source:\n  type: kafka\n  brokers: {}\n  topics: [{TOPIC}]\n  group_id: weir-items\n  \
             heartbeat: {{ timeout: {timeout}s }}\n  options: {{ session.timeout.ms: 6000 }}\n\
             table:\n  name: items\n  primary_key: [id]\n{STREAM_COLUMNS}\
             sink: {{ type: sqlite, path: target.db, create: true }}\n\
             batch: {{ max_wait: 100ms }}\n",
            broker.address()
        ),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let beating = heartbeats(&broker, Duration::from_millis(300), stop.clone());
    let running: Running = start(&ws, &pipeline);
    let streaming = |status: &serde_json::Value| {
        status["state"] == "streaming" && status["rows_applied"].as_u64() == Some(300)
    };
    let status = wait_for_status(
        &ws,
        &pipeline,
        Duration::from_secs(60),
        "streaming",
        streaming,
    );
    // Heartbeats arrive while nothing else does.
    let first_beat = status["last_heartbeat"].as_str().map(str::to_string);
    wait_for_status(
        &ws,
        &pipeline,
        Duration::from_secs(20),
        "a newer heartbeat",
        |s| {
            s["state"] == "streaming"
                && s["last_heartbeat"].as_str().is_some()
                && s["last_heartbeat"].as_str().map(str::to_string) != first_beat
        },
    );
    // Long enough to have degraded without the heartbeats.
    std::thread::sleep(Duration::from_secs(timeout + 2));
    assert_eq!(
        status_json(&ws, &pipeline).expect("a status")["state"],
        "streaming",
        "heartbeats were flowing"
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = beating.join().unwrap();
    assert!(sent > 5, "{sent} heartbeats sent");
    let stopped = Instant::now();
    let degraded = wait_for_status(
        &ws,
        &pipeline,
        Duration::from_secs(timeout + 20),
        "degraded for missing heartbeats",
        |s| s["state"] == "degraded",
    );
    let after = stopped.elapsed();
    let reason = degraded["reason"].as_str().unwrap();
    assert!(
        reason.contains("no change event and no heartbeat") && reason.contains(HEARTBEATS),
        "{reason}"
    );
    // It was the timeout (plus the status writer's second), not something else at once.
    assert!(
        after >= Duration::from_secs(timeout - 1),
        "degraded after {after:?}"
    );
    eprintln!("degraded {after:?} after the heartbeats stopped (timeout {timeout}s)");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let beating = heartbeats(&broker, Duration::from_millis(300), stop.clone());
    let back = wait_for_status(
        &ws,
        &pipeline,
        Duration::from_secs(30),
        "streaming after the heartbeats came back",
        |s| s["state"] == "streaming",
    );
    let transitions = transition_targets(&back);
    assert!(
        transitions.ends_with(&["streaming", "degraded", "streaming"]),
        "{transitions:?}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    beating.join().unwrap();
    drop(running);
}

fn rows(pg: &Postgres, database: &str) -> Vec<String> {
    let mut client = pg.client(database);
    client
        .query(
            "SELECT id::text || '|' || name || '|' || price::text || '|' || version::text \
             FROM items ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

fn run(ws: &Workspace, pipeline: &std::path::Path, extra: &[&str]) -> std::process::Output {
    weir()
        .args(["run", "-q", "-v", "--stop-when-idle", "4s"])
        .args(extra)
        .arg(pipeline)
        .current_dir(ws.dir.path())
        .output()
        .expect("run weir")
}

/// Retention deletes changes while the pipeline is stopped. On start weir finds its stored
/// position below where the partition now begins: it stops in `resync-required` with exit
/// code 3 and applies nothing past the gap. With `--resync` it repairs the target from the
/// database the changes came from, goes on from where the partition begins, and ends equal.
#[test]
fn a_retention_gap_is_never_skipped_and_a_resync_repairs_it_from_the_source() {
    let pg = Postgres::start();
    for database in ["source", "target"] {
        pg.create_database(database);
    }
    // tansu's SQLite storage: its retention deletes records older than `retention.ms`.
    let mut broker = Broker::start_with_storage("sqlite://tansu.db");
    broker.create_topic_with(
        TOPIC,
        1,
        &[("cleanup.policy", "delete"), ("retention.ms", "600000")],
    );
    let stream = change_stream(3000, 400, 11);
    let (applied, rest) = stream.lines.split_at(1000);
    let (lost, kept) = rest.split_at(1200);
    // The database the changes came from, as it is after all of them.
    let mut source = pg.client("source");
    source
        .batch_execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, name text, price numeric(12,2), \
             version bigint)",
        )
        .unwrap();
    for (id, (name, price, version)) in &stream.final_rows {
        source
            .execute(
                "INSERT INTO items VALUES ($1, $2, $3::text::numeric, $4)",
                &[id, name, price, version],
            )
            .unwrap();
    }
    let ws = Workspace::new();
    let pipeline = ws.write(
        "pipeline.yaml",
        &format!(
            "name: items-sync\n\
             source:\n  type: kafka\n  brokers: {broker}\n  topics: [{TOPIC}]\n  group_id: weir-items\n  \
             options: {{ session.timeout.ms: 6000 }}\n\
             table:\n  name: items\n  primary_key: [id]\n{STREAM_COLUMNS}\
             sink: {{ type: postgres, url: '{target}', table: public.items, mode: upsert, create: true }}\n\
             batch: {{ max_wait: 100ms }}\n\
             reconcile:\n  source: {{ type: postgres, url: '{source}', table: public.items }}\n  \
             target: {{ type: postgres, url: '{target}', table: public.items }}\n",
            broker = broker.address(),
            target = pg.url("target"),
            source = pg.url("source"),
        ),
    );
    // Written an hour ago: old enough for the retention to delete, once it runs.
    let an_hour_ago = now_ms() - 3_600_000;
    broker.produce_at(TOPIC, &keyed_by_row_id(applied), an_hour_ago);
    let first = run(&ws, &pipeline, &[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stored = |ws: &Workspace| {
        status_json(ws, &pipeline).expect("a status")["positions"][format!("kafka:{TOPIC}/0")]
            ["next"]
            .as_i64()
    };
    assert_eq!(stored(&ws), Some(1000));
    let applied_rows = rows(&pg, "target");

    // While weir is stopped: more changes, the older ones past retention; the broker's
    // retention runs (every second from now on) and deletes them.
    broker.produce_at(TOPIC, &keyed_by_row_id(lost), an_hour_ago);
    broker.produce(TOPIC, &keyed_by_row_id(kept));
    assert_eq!(broker.watermarks(TOPIC, 0), Some((0, 3000)));
    broker.restart_on("sqlite://tansu.db?maintenance_interval=1s");
    let started = Instant::now();
    while broker.watermarks(TOPIC, 0) != Some((2200, 3000)) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the broker's retention did not run: the topic is at {:?}\n{}",
            broker.watermarks(TOPIC, 0),
            broker.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Manual: stop with exit code 3, say what to run, apply nothing.
    let manual = run(&ws, &pipeline, &[]);
    let stderr = String::from_utf8_lossy(&manual.stderr);
    assert_eq!(manual.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("offsets 1000..2199 were deleted") && stderr.contains("--resync"),
        "{stderr}"
    );
    let status = status_json(&ws, &pipeline).expect("a status");
    assert_eq!(status["state"], "resync-required", "{status:#}");
    assert_eq!(stored(&ws), Some(1000), "nothing past the gap was applied");
    assert_eq!(rows(&pg, "target"), applied_rows);

    // Resync: repaired from the source, then the rest of the topic; equal at the end.
    let resync = run(&ws, &pipeline, &["--resync"]);
    let stderr = String::from_utf8_lossy(&resync.stderr);
    assert!(resync.status.success(), "{stderr}");
    assert_eq!(rows(&pg, "target"), rows(&pg, "source"));
    assert_eq!(stored(&ws), Some(3000), "{stderr}");
    let reconcile = weir()
        .args(["reconcile", "-q"])
        .arg(&pipeline)
        .current_dir(ws.dir.path())
        .output()
        .unwrap();
    assert_eq!(
        reconcile.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&reconcile.stdout)
    );
    let status = status_json(&ws, &pipeline).expect("a status");
    let transitions = transition_targets(&status);
    assert!(
        transitions.ends_with(&["resync-required", "snapshotting", "streaming"]),
        "{transitions:?}"
    );
}

/// The lag in events from Kafka counts what the sink has not applied: while the target
/// table is locked, the records read stay in it; once the lock goes, it falls to 0.
#[test]
fn kafka_lag_in_events_counts_the_records_the_sink_has_not_applied() {
    let pg = Postgres::start();
    pg.create_database("target");
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    let stream = change_stream(400, 100, 9);
    let (first, second) = stream.lines.split_at(200);
    broker.produce(TOPIC, &keyed_by_row_id(first));
    let ws = Workspace::new();
    let pipeline = ws.write(
        "pipeline.yaml",
        &format!(
            "name: items-sync\n\
             source:\n  type: kafka\n  brokers: {}\n  topics: [{TOPIC}]\n  group_id: weir-items\n  \
             options: {{ session.timeout.ms: 6000, statistics.interval.ms: 200 }}\n\
             table:\n  name: items\n  primary_key: [id]\n{STREAM_COLUMNS}\
             sink: {{ type: postgres, url: '{}', table: public.items, mode: upsert, create: true }}\n\
             batch: {{ max_wait: 100ms }}\n",
            broker.address(),
            pg.url("target")
        ),
    );
    let running: Running = start(&ws, &pipeline);
    let lag = |s: &serde_json::Value| s["lag"]["events"].as_u64();
    wait_for_status(&ws, &pipeline, Duration::from_secs(60), "caught up", |s| {
        s["rows_applied"].as_u64() == Some(200) && lag(s) == Some(0)
    });
    // Locked: the sink waits, the records stay unapplied.
    let mut locker = pg.client("target");
    let mut lock = locker.transaction().unwrap();
    lock.batch_execute("LOCK TABLE public.items IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    broker.produce(TOPIC, &keyed_by_row_id(second));
    let behind = wait_for_status(&ws, &pipeline, Duration::from_secs(60), "200 behind", |s| {
        lag(s) == Some(200)
    });
    assert_eq!(behind["rows_applied"].as_u64(), Some(200), "{behind:#}");
    lock.rollback().unwrap();
    wait_for_status(
        &ws,
        &pipeline,
        Duration::from_secs(60),
        "caught up again",
        |s| s["rows_applied"].as_u64() == Some(400) && lag(s) == Some(0),
    );
    drop(running);
}
