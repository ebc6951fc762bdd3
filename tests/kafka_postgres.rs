//! Kafka → weir → PostgreSQL with a real `tansu` broker and a real PostgreSQL server: the
//! production path, under crashes, outages and bad input.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::faults::Figures;
use common::services::{Broker, Postgres};
use common::{
    FULL_TYPES_COLUMNS, STREAM_COLUMNS, Stream, Workspace, change_stream, compact_json, fixture,
    json_lines, keyed_by_row_id, weir,
};

/// A Kafka → PostgreSQL pipeline file; the topic has the table's name.
fn pipeline(
    ws: &Workspace,
    broker: &Broker,
    pg: &Postgres,
    table: &str,
    key: &str,
    table_extra: &str,
    batch: usize,
) -> std::path::PathBuf {
    let yaml = format!(
        "name: {table}-sync\n\
         source:\n  type: kafka\n  brokers: ${{KAFKA_BROKERS}}\n  topics: [{table}]\n  group_id: weir-{table}\n  start: earliest\n  format: debezium-json\n  options:\n    session.timeout.ms: 6000\n    heartbeat.interval.ms: 1000\n\
         table:\n  name: {table}\n  primary_key: [{key}]\n{table_extra}\
         sink:\n  type: postgres\n  url: ${{PG_URL}}\n  table: public.{table}\n  mode: upsert\n  create: true\n\
         dead_letter:\n  type: file\n  path: dead-letters.jsonl\n\
         batch:\n  max_events: {batch}\n  max_wait: 100ms\n"
    );
    let path = ws.write("pipeline.yaml", &yaml);
    std::fs::write(
        ws.path("env"),
        format!("{}\n{}\n", broker.address(), pg.url("target")),
    )
    .unwrap();
    path
}

fn command(ws: &Workspace, pipeline: &std::path::Path, idle: &str) -> std::process::Command {
    let env = std::fs::read_to_string(ws.path("env")).unwrap();
    let mut lines = env.lines();
    let mut command = weir();
    command
        .env("KAFKA_BROKERS", lines.next().unwrap())
        .env("PG_URL", lines.next().unwrap())
        .args(["run", "--json", "-q", "--stop-when-idle", idle])
        .arg(pipeline)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn run_to_end(ws: &Workspace, pipeline: &std::path::Path) -> serde_json::Value {
    let output = command(ws, pipeline, "4s").output().unwrap();
    assert!(
        output.status.success(),
        "weir failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn wait(child: &mut Child, limit: Duration) -> std::process::Output {
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < limit,
            "weir did not finish within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    std::process::Output {
        status: child.wait().unwrap(),
        stdout,
        stderr,
    }
}

/// How far the pipeline has got: the sum of its stored resume offsets.
fn progress(pg: &Postgres, pipeline: &str) -> i64 {
    postgres::Client::connect(&pg.url("target"), postgres::NoTls)
        .ok()
        .and_then(|mut c| {
            c.query_one(
                "SELECT coalesce(sum(greatest(next, 0)), 0)::bigint FROM weir.checkpoints WHERE pipeline = $1",
                &[&pipeline],
            )
            .ok()
        })
        .map_or(0, |row| row.get(0))
}

/// Waits until the pipeline has stored progress beyond `beyond`; fails with weir's own
/// error output if it exits first.
fn wait_for_progress(pg: &Postgres, pipeline: &str, beyond: i64, child: &mut Child) {
    let started = Instant::now();
    while progress(pg, pipeline) <= beyond {
        if child.try_wait().unwrap().is_some() {
            let output = wait(child, Duration::from_secs(1));
            panic!(
                "weir exited early: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no progress beyond {beyond}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Compares the target with the source's final state: every key's last version present,
/// nothing stale, nothing that should be gone.
fn check_final_state(pg: &Postgres, stream: &Stream) {
    check_table(pg, "items", stream);
}

/// [`check_final_state`], after reporting the figures for `scripts/faults`.
fn check_final_state_after(pg: &Postgres, stream: &Stream, test: &str, injected: &str) {
    let (lost, stale, extra) = table_differences(pg, "items", stream);
    Figures {
        events: stream.lines.len() as u64,
        lost: lost.len() as u64,
        stale: (stale.len() + extra.len()) as u64,
        duplicated: None,
    }
    .report_and_check(test, injected);
}

fn check_table(pg: &Postgres, table: &str, stream: &Stream) {
    let (lost, stale, extra) = table_differences(pg, table, stream);
    assert!(
        lost.is_empty() && stale.is_empty() && extra.is_empty(),
        "{} lost {lost:?}, {} stale {stale:?}, {} extra {extra:?}",
        lost.len(),
        stale.len(),
        extra.len()
    );
}

/// The keys the target lacks, has stale and should not have.
fn table_differences(
    pg: &Postgres,
    table: &str,
    stream: &Stream,
) -> (Vec<i64>, Vec<String>, Vec<i64>) {
    let rows = pg
        .client("target")
        .query(
            &format!("SELECT id, name, price::text, version FROM {table}"),
            &[],
        )
        .unwrap();
    let actual: BTreeMap<i64, (String, String, i64)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    let mut lost = Vec::new();
    let mut stale = Vec::new();
    for (id, (name, price, version)) in &stream.final_rows {
        match actual.get(id) {
            None => lost.push(*id),
            Some((n, p, v)) if v != version || n != name || decimal(p) != decimal(price) => stale
                .push(format!(
                    "id {id}: has ({n}, {p}, v{v}), expected ({name}, {price}, v{version})"
                )),
            Some(_) => {}
        }
    }
    let extra: Vec<_> = actual
        .keys()
        .filter(|id| !stream.final_rows.contains_key(id))
        .copied()
        .collect();
    (lost, stale, extra)
}

fn decimal(text: &str) -> i128 {
    weir_runtime::decode::decimal::from_text(
        text.as_bytes(),
        2,
        weir_runtime::decode::decimal::Rescale::Exact,
    )
    .unwrap()
    .as_i128()
}

fn setup(
    events: usize,
    keys: i64,
    seed: u64,
    partitions: u32,
) -> (Broker, Postgres, Workspace, Stream) {
    setup_on(Broker::start(), events, keys, seed, partitions)
}

/// [`setup`] on a broker of one's own (one whose data survives a restart).
fn setup_on(
    broker: Broker,
    events: usize,
    keys: i64,
    seed: u64,
    partitions: u32,
) -> (Broker, Postgres, Workspace, Stream) {
    let pg = Postgres::start();
    pg.create_database("target");
    broker.create_topic("items", partitions);
    let stream = change_stream(events, keys, seed);
    broker.produce("items", &keyed_by_row_id(&stream.lines));
    (broker, pg, Workspace::new(), stream)
}

#[test]
fn shared_fixtures_through_kafka_end_as_the_expected_tables() {
    let broker = Broker::start();
    let pg = Postgres::start();
    pg.create_database("target");

    broker.create_topic("products", 3);
    broker.produce(
        "products",
        &keyed_by_row_id(&json_lines(&fixture(
            "flink/debezium-data-schema-include.txt",
        ))),
    );
    let ws = Workspace::new();
    let p = pipeline(&ws, &broker, &pg, "products", "id", "", 500);
    assert_eq!(run_to_end(&ws, &p)["events_read"], 16);
    let rows = pg
        .client("target")
        .query("SELECT id, description FROM products ORDER BY id", &[])
        .unwrap();
    let ids: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, (101..=110).collect::<Vec<_>>());
    assert_eq!(
        rows[9].get::<_, String>(1),
        "new water resistent white wind breaker"
    );

    broker.create_topic("customers", 2);
    broker.produce(
        "customers",
        &keyed_by_row_id(&json_lines(&fixture("risingwave/debezium_log.1"))),
    );
    let ws = Workspace::new();
    let p = pipeline(&ws, &broker, &pg, "customers", "id", "", 500);
    run_to_end(&ws, &p);
    let rows = pg
        .client("target")
        .query(
            "SELECT concat_ws(' ', id, first_name, last_name, email) FROM customers ORDER BY id",
            &[],
        )
        .unwrap();
    let got: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let expected: Vec<String> =
        std::fs::read_to_string(fixture("risingwave/expected-debezium_log.1.txt"))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
    assert_eq!(got, expected);

    broker.create_topic("full_types", 1);
    let doc = compact_json(&fixture("flink-cdc/debezium-data-schema-exclude.json"));
    broker.produce(
        "full_types",
        &[
            (
                Some("{\"id\":\"AQ==\"}".into()),
                Some(doc["expected_snapshot"].to_string()),
            ),
            (
                Some("{\"id\":\"AQ==\"}".into()),
                Some(doc["expected_binlog"].to_string()),
            ),
        ],
    );
    let ws = Workspace::new();
    let p = pipeline(
        &ws,
        &broker,
        &pg,
        "full_types",
        "id",
        FULL_TYPES_COLUMNS,
        500,
    );
    run_to_end(&ws, &p);
    let row = pg
        .client("target")
        .query_one(
            "SELECT big_un_c::text, decimal_c::text, big_decimal_c::text FROM full_types",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "18446744073709551615");
    assert_eq!(row.get::<_, String>(1), "123.4567");
    assert_eq!(row.get::<_, String>(2), "34567892.1");
}

#[test]
fn sigkill_at_random_points_of_a_100k_stream_loses_nothing() {
    let (broker, pg, ws, stream) = setup(100_000, 1_000, 21, 4);
    let p = pipeline(&ws, &broker, &pg, "items", "id", STREAM_COLUMNS, 500);
    let mut rng = weir_runtime::bench::Rng::new(0x2545f4914f6cdd1d);
    for _ in 0..5 {
        let pause = rng.below(200);
        let before = progress(&pg, "items-sync");
        let mut child = command(&ws, &p, "60s").spawn().unwrap();
        wait_for_progress(&pg, "items-sync", before, &mut child);
        std::thread::sleep(Duration::from_millis(pause));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let output = command(&ws, &p, "4s").arg("-v").output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["dead_letters"], 0);
    assert_eq!(
        progress(&pg, "items-sync"),
        100_000,
        "every offset applied; the last run's log:\n{log}"
    );
    check_final_state(&pg, &stream);
}

/// Runs a 40,000-change stream through a pipeline (`--stop-when-idle idle`), does `fault`
/// to the broker once weir is mid-stream, and checks that weir waits it out, ends within
/// `limit`, and equal to the oracle.
fn broker_fault_is_waited_for(
    broker: Broker,
    seed: u64,
    (idle, limit): (&str, Duration),
    injected: &str,
    fault: impl FnOnce(&mut Broker),
) {
    let (mut broker, pg, ws, stream) = setup_on(broker, 40_000, 1_000, seed, 2);
    let p = pipeline(&ws, &broker, &pg, "items", "id", STREAM_COLUMNS, 200);
    let mut child = command(&ws, &p, idle).spawn().unwrap();
    wait_for_progress(&pg, "items-sync", 1_000, &mut child);
    assert!(
        progress(&pg, "items-sync") < 40_000,
        "the fault came mid-stream"
    );
    fault(&mut broker);
    let output = wait(&mut child, limit);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    check_final_state_after(&pg, &stream, "kafka to PostgreSQL", injected);
}

#[test]
fn a_paused_broker_is_waited_for() {
    let bounds = ("15s", Duration::from_secs(180));
    broker_fault_is_waited_for(
        Broker::start(),
        22,
        bounds,
        "broker frozen (SIGSTOP) for 10 s",
        |broker| {
            broker.pause();
            std::thread::sleep(Duration::from_secs(10));
            broker.resume();
        },
    );
}

#[test]
fn a_killed_and_restarted_broker_is_waited_for() {
    // A broker whose records and offsets survive its death (its SQLite storage).
    broker_fault_is_waited_for(
        Broker::start_with_storage("sqlite://tansu.db"),
        23,
        ("20s", Duration::from_secs(240)),
        "broker killed (SIGKILL), restarted after 5 s",
        |broker| broker.restart_after(Duration::from_secs(5)),
    );
}

/// The group's committed offsets, read without joining the group.
fn committed_offsets(broker: &Broker, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .unwrap();
    committed
        .elements()
        .iter()
        .map(|e| e.offset().to_raw().unwrap_or(-1))
        .collect()
}

#[test]
fn a_postgres_outage_moves_no_offset_and_loses_nothing() {
    let (broker, pg, ws, stream) = setup(40_000, 1_000, 24, 2);
    let p = pipeline(&ws, &broker, &pg, "items", "id", STREAM_COLUMNS, 200);
    let mut child = command(&ws, &p, "15s").spawn().unwrap();
    wait_for_progress(&pg, "items-sync", 2_000, &mut child);
    pg.stop_server();
    // Let in-flight commits land, then watch the offsets while the sink is down.
    std::thread::sleep(Duration::from_secs(2));
    let at_start = committed_offsets(&broker, "weir-items", "items", 2);
    std::thread::sleep(Duration::from_secs(8));
    let at_end = committed_offsets(&broker, "weir-items", "items", 2);
    assert_eq!(
        at_start, at_end,
        "no offset advances while PostgreSQL is down"
    );
    assert!(
        at_start.iter().sum::<i64>() < 40_000,
        "the outage started mid-stream: {at_start:?}"
    );
    pg.start_server();
    let output = wait(&mut child, Duration::from_secs(180));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    check_final_state_after(
        &pg,
        &stream,
        "kafka to PostgreSQL",
        "PostgreSQL stopped for 10 s",
    );
    let at_last = committed_offsets(&broker, "weir-items", "items", 2);
    assert_eq!(at_last.iter().sum::<i64>(), 40_000);
}

#[test]
fn poison_records_are_dead_lettered_and_the_rest_applied() {
    let broker = Broker::start();
    let pg = Postgres::start();
    pg.create_database("target");
    broker.create_topic("items", 3);
    let stream = change_stream(10_000, 500, 25);
    // About 1% poison, of four kinds, mixed in.
    let mut records = keyed_by_row_id(&stream.lines);
    let mut poison = Vec::new();
    for i in 0..100 {
        let id = i % 500;
        let (value, reason) = match i % 4 {
            0 => (
                r#"{"op":"c","after":{"id":"#.to_string() + &id.to_string(),
                "invalid JSON",
            ),
            1 => (
                format!(
                    r#"{{"op":"c","after":{{"id":{id},"name":"x","price":"not a number","version":1}}}}"#
                ),
                "column `price`",
            ),
            2 => (
                format!(
                    r#"{{"op":"c","after":{{"id":{id},"name":"{}","price":1.00,"version":1}}}}"#,
                    "x".repeat(1_200_000)
                ),
                "more than batch.max_record_bytes",
            ),
            _ => (
                format!(r#"{{"after":{{"id":{id},"name":"x","price":1.00,"version":1}}}}"#),
                "no `op` field",
            ),
        };
        poison.push(reason);
        records.insert(
            i * 100 + 37,
            (Some(format!("{{\"id\":{id}}}")), Some(value)),
        );
    }
    broker.produce("items", &records);
    let ws = Workspace::new();
    let p = pipeline(&ws, &broker, &pg, "items", "id", STREAM_COLUMNS, 500);
    let summary = run_to_end(&ws, &p);
    assert_eq!(summary["events_read"], 10_100);
    assert_eq!(summary["dead_letters"], 100);
    let letters = ws.dead_letters();
    assert_eq!(letters.len(), 100);
    let mut counts = BTreeMap::new();
    for letter in &letters {
        assert_eq!(letter["stage"], "decode");
        assert_eq!(letter["source"]["topic"], "items");
        assert!(letter["source"]["partition"].is_i64() && letter["source"]["offset"].is_i64());
        assert!(letter["raw"].is_string(), "the record is kept");
        let error = letter["error"].as_str().unwrap();
        let reason = poison
            .iter()
            .find(|r| error.contains(**r))
            .unwrap_or_else(|| panic!("unexpected reason: {error}"));
        *counts.entry(*reason).or_insert(0) += 1;
    }
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [25, 25, 25, 25],
        "{counts:?}"
    );
    check_final_state_after(
        &pg,
        &stream,
        "kafka to PostgreSQL",
        "1% poison records, four kinds",
    );
}

/// The pipeline from the issue and docs, `pipelines/kafka-postgres.yaml`, runs as written:
/// brokers and URL from the environment, no declared columns.
#[test]
fn the_documented_kafka_to_postgres_pipeline_runs_as_written() {
    let broker = Broker::start();
    let pg = Postgres::start();
    pg.create_database("target");
    broker.create_topic("orders", 2);
    let stream = change_stream(3_000, 200, 11);
    broker.produce("orders", &keyed_by_row_id(&stream.lines));
    let ws = Workspace::new();
    let documented =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/kafka-postgres.yaml");
    let pipeline = ws.write(
        "kafka-postgres.yaml",
        &std::fs::read_to_string(documented).unwrap(),
    );
    let output = weir()
        .env("KAFKA_BROKERS", broker.address())
        .env("PG_URL", pg.url("target"))
        .args(["run", "--json", "--stop-when-idle", "3s"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["events_read"], 3_000, "{summary}");
    assert_eq!(summary["dead_letters"], 0, "{summary}");
    check_table(&pg, "orders", &stream);
}
