//! The Kafka source against a real `tansu` broker.

mod common;

use common::services::Broker;
use common::{Workspace, fixture, json_lines, sqlite_rows};

/// The Flink fixture's 16 events, keyed by id, through a real broker into SQLite.
#[test]
fn fixture_events_from_kafka_end_as_the_final_table() {
    let broker = Broker::start();
    broker.create_topic("products", 3);
    let records: Vec<(Option<String>, Option<String>)> =
        json_lines(&fixture("flink/debezium-data-schema-exclude.txt"))
            .into_iter()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                let image = if v["op"] == "d" { "before" } else { "after" };
                (Some(format!("{{\"id\":{}}}", v[image]["id"])), Some(line))
            })
            .collect();
    broker.produce("products", &records);

    let ws = Workspace::new();
    let yaml = format!(
        "name: from-kafka\n\
         source:\n  type: kafka\n  brokers: {}\n  topics: [products]\n  group_id: weir-test\n  start: earliest\n\
         table:\n  name: products\n  primary_key: [id]\n  columns: {{id: int32, name: string, description: string, weight: float32}}\n\
         sink:\n  type: sqlite\n  path: target.db\n  create: true\n",
        broker.address()
    );
    let pipeline = ws.write("pipeline.yaml", &yaml);
    let run = ws.run(&pipeline, &["--stop-when-idle", "3s"]);
    assert!(run.output.status.success(), "{}", run.stderr());
    assert_eq!(run.summary["events_read"], 16, "{}", run.summary);
    let rows = sqlite_rows(
        &ws.path("target.db"),
        "SELECT id, weight FROM products ORDER BY id",
    );
    let ids: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        ids,
        [
            "101", "102", "103", "104", "105", "106", "107", "108", "109", "110"
        ]
    );
    // The checkpoint in the target covers all three partitions.
    let streams = sqlite_rows(
        &ws.path("target.db"),
        "SELECT stream, next FROM _weir_checkpoints ORDER BY stream",
    );
    assert_eq!(streams.len(), 3, "{streams:?}");
    let total: i64 = streams.iter().map(|r| r[1].parse::<i64>().unwrap()).sum();
    assert_eq!(total, 16);
}
