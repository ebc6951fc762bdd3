//! The Kafka source, the Kafka sink and the Kafka dead-letter output against a real
//! `tansu` broker.

mod common;

use common::services::Broker;
use common::{
    FULL_TYPES_COLUMNS, FULL_TYPES_SQLITE_QUERY, Run, Workspace, compact_json, fixture,
    full_types_sqlite_rows, json_lines, keyed_by_id, sqlite_rows,
};

/// The Flink fixture's 16 events, keyed by id, through a real broker into SQLite.
#[test]
fn fixture_events_from_kafka_end_as_the_final_table() {
    let broker = Broker::start();
    broker.create_topic("products", 3);
    let records = keyed_by_id(&fixture("flink/debezium-data-schema-exclude.txt"));
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

/// A file-to-Kafka pipeline over `events.jsonl`, producing to `topic` in `format`.
fn to_kafka(ws: &Workspace, broker: &Broker, topic: &str, format: &str, table: &str) {
    let yaml = format!(
        "name: to-kafka-{topic}\n\
         source:\n  type: file\n  path: events.jsonl\n\
         table:\n  name: {table}\n  primary_key: [id]\n{}\
         sink:\n  type: kafka\n  brokers: {}\n  topic: {topic}\n  format: {format}\n",
        if table == "full_types" {
            FULL_TYPES_COLUMNS
        } else {
            ""
        },
        broker.address()
    );
    let pipeline = ws.write(&format!("to-{topic}.yaml"), &yaml);
    let run = ws.run(&pipeline, &[]);
    assert!(run.output.status.success(), "{}", run.stderr());
    assert_eq!(run.summary["dead_letters"], 0, "{}", run.summary);
}

/// A Kafka-to-SQLite pipeline reading `topic` into `<topic>.db`, with no declared columns:
/// the types come from the records.
fn from_kafka(ws: &Workspace, broker: &Broker, topic: &str, format: &str, table: &str) -> Run {
    let yaml = format!(
        "name: from-kafka-{topic}\n\
         source:\n  type: kafka\n  brokers: {}\n  topics: [{topic}]\n  group_id: read-{topic}\n  format: {format}\n\
         table:\n  name: {table}\n  primary_key: [id]\n\
         sink:\n  type: sqlite\n  path: {topic}.db\n  create: true\n",
        broker.address()
    );
    let pipeline = ws.write(&format!("from-{topic}.yaml"), &yaml);
    let run = ws.run(&pipeline, &["--stop-when-idle", "3s"]);
    assert!(run.output.status.success(), "{}", run.stderr());
    run
}

/// Flink's products stream (16 changes, with a delete) through the Kafka sink in each format
/// and back through the Kafka source ends as the same table as straight from the file.
/// Every record is keyed by the primary key, and each delete is followed by a tombstone.
#[test]
fn kafka_sink_formats_round_trip_through_the_broker() {
    let broker = Broker::start();
    let lines = json_lines(&fixture("flink/debezium-data-schema-include.txt"));
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["payload"].clone())
        .collect();
    let deletes = events.iter().filter(|e| e["op"] == "d").count();
    assert_eq!(events.len(), 16);
    assert!(deletes > 0);

    let ws = Workspace::new();
    ws.append_lines("events.jsonl", &lines);
    ws.run_ok(&ws.sqlite_pipeline("products", "id", ""));
    let query = "SELECT id, name, description, weight FROM products ORDER BY id";
    let direct = sqlite_rows(&ws.path("target.db"), query);
    assert_eq!(direct.len(), 10);

    for (format, read_as) in [
        ("debezium-json", "debezium-json"),
        ("debezium-json-schema", "debezium-json"),
        ("json-rows", "debezium-json-unwrapped"),
    ] {
        let topic = format!("products-{format}");
        broker.create_topic(&topic, 3);
        to_kafka(&ws, &broker, &topic, format, "products");

        let records = broker.consume_all(&topic, events.len() + deletes);
        assert_eq!(records.len(), events.len() + deletes, "{format}");
        for (i, record) in records.iter().enumerate() {
            let key = record.key_json();
            let key = if format == "debezium-json-schema" {
                assert_eq!(key["schema"]["fields"][0]["field"], "id", "{format}");
                key["payload"].clone()
            } else {
                key
            };
            let Some(value) = record.value_json() else {
                // A tombstone follows its delete, with the same key, in the same partition.
                let delete = &records[i - 1];
                assert_eq!(delete.key, record.key, "{format}");
                assert_eq!(delete.offset + 1, record.offset, "{format}");
                continue;
            };
            let (op, row) = match format {
                "json-rows" => (value["__op"].clone(), value.clone()),
                "debezium-json-schema" => {
                    let payload = &value["payload"];
                    let image = if payload["op"] == "d" {
                        "before"
                    } else {
                        "after"
                    };
                    assert_eq!(value["schema"]["fields"][1]["field"], "after");
                    (payload["op"].clone(), payload[image].clone())
                }
                _ => {
                    let image = if value["op"] == "d" {
                        "before"
                    } else {
                        "after"
                    };
                    (value["op"].clone(), value[image].clone())
                }
            };
            assert_eq!(
                key,
                serde_json::json!({"id": row["id"]}),
                "{format}: {value}"
            );
            if op == "d" {
                let next = &records[i + 1];
                assert!(
                    next.value.is_none(),
                    "{format}: a delete without a tombstone"
                );
            }
        }

        let run = from_kafka(&ws, &broker, &topic, read_as, "products");
        assert_eq!(run.summary["dead_letters"], 0, "{format}: {}", run.summary);
        let through_kafka = sqlite_rows(&ws.path(&format!("{topic}.db")), query);
        assert_eq!(through_kafka, direct, "{format}");
    }
}

/// With its schema, a change keeps its exact types through Kafka: 20- and 65-digit
/// decimals and a timestamp read back without any declared column.
#[test]
fn kafka_sink_with_schema_keeps_decimals_and_timestamps_exact() {
    let broker = Broker::start();
    broker.create_topic("full_types", 1);
    let doc = compact_json(&fixture("flink-cdc/debezium-data-schema-exclude.json"));
    let ws = Workspace::new();
    ws.append_lines(
        "events.jsonl",
        &[
            doc["expected_snapshot"].to_string(),
            doc["expected_binlog"].to_string(),
        ],
    );
    to_kafka(
        &ws,
        &broker,
        "full_types",
        "debezium-json-schema",
        "full_types",
    );
    let run = from_kafka(&ws, &broker, "full_types", "debezium-json", "full_types");
    assert_eq!(run.summary["events_read"], 2, "{}", run.summary);
    let rows = sqlite_rows(&ws.path("full_types.db"), FULL_TYPES_SQLITE_QUERY);
    assert_eq!(rows, full_types_sqlite_rows());
    // The column types came from the Connect schema, not from inference.
    let types = sqlite_rows(
        &ws.path("full_types.db"),
        "SELECT name, type FROM pragma_table_info('full_types') \
         WHERE name IN ('decimal_c', 'big_decimal_c') ORDER BY name",
    );
    assert_eq!(
        types,
        [
            vec!["big_decimal_c".to_string(), "DECIMAL TEXT(65,1)".into()],
            vec!["decimal_c".to_string(), "DECIMAL(8,4)".into()],
        ]
    );
}

/// Poison records from a Kafka source go to a dead-letter topic: the original key and
/// value, with the stage, reason and source position in `weir.*` headers. Good records
/// are all applied.
/// Record headers travel with the change: read by the Kafka source into the batch's
/// `headers` column, and written again by the Kafka sink.
#[test]
fn record_headers_pass_from_the_kafka_source_to_the_kafka_sink() {
    let broker = Broker::start();
    broker.create_topic("traced", 1);
    broker.create_topic("traced-out", 1);
    let records: Vec<(Option<String>, Option<String>)> = (1..=3)
        .map(|id| {
            (
                Some(format!("{{\"id\":{id}}}")),
                Some(format!(r#"{{"op":"c","after":{{"id":{id},"v":"x"}}}}"#)),
            )
        })
        .collect();
    broker.produce_with_headers(
        "traced",
        &records,
        &[
            vec![("trace-id", "a1"), ("tenant", "acme")],
            vec![],
            vec![("trace-id", "c3")],
        ],
    );
    let ws = Workspace::new();
    let yaml = format!(
        "name: traced\n\
         source:\n  type: kafka\n  brokers: {b}\n  topics: [traced]\n  group_id: traced\n\
         table:\n  name: t\n  primary_key: [id]\n\
         sink:\n  type: kafka\n  brokers: {b}\n  topic: traced-out\n",
        b = broker.address()
    );
    let run = ws.run(&ws.write("traced.yaml", &yaml), &["--stop-when-idle", "3s"]);
    assert!(run.output.status.success(), "{}", run.stderr());
    let out = broker.consume_all("traced-out", 3);
    let seen: Vec<(serde_json::Value, Vec<(String, String)>)> = out
        .iter()
        .map(|r| {
            let headers = r
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect();
            (r.key_json(), headers)
        })
        .collect();
    let pair = |n: &str, v: &str| (n.to_string(), v.to_string());
    assert_eq!(
        seen,
        [
            (
                serde_json::json!({"id": 1}),
                vec![pair("trace-id", "a1"), pair("tenant", "acme")]
            ),
            (serde_json::json!({"id": 2}), vec![]),
            (serde_json::json!({"id": 3}), vec![pair("trace-id", "c3")]),
        ]
    );
}

#[test]
fn dead_letters_go_to_a_kafka_topic_with_reason_and_position() {
    let broker = Broker::start();
    broker.create_topic("orders-in", 1);
    broker.create_topic("orders-dlq", 1);
    let poison = [
        (
            3usize,
            "{\"op\":\"c\",\"after\":{\"id\":3,\"qty\":".to_string(),
            "JSON",
        ),
        (7, "{\"after\":{\"id\":7,\"qty\":1}}".to_string(), "op"),
        (
            12,
            "{\"op\":\"c\",\"after\":{\"id\":12,\"qty\":\"many\"}}".to_string(),
            "qty",
        ),
    ];
    let records: Vec<(Option<String>, Option<String>)> = (0..20usize)
        .map(|i| {
            let value = match poison.iter().find(|(at, _, _)| *at == i) {
                Some((_, bad, _)) => bad.clone(),
                None => format!("{{\"op\":\"c\",\"after\":{{\"id\":{i},\"qty\":{i}}}}}"),
            };
            (Some(format!("{{\"id\":{i}}}")), Some(value))
        })
        .collect();
    broker.produce("orders-in", &records);

    let ws = Workspace::new();
    let yaml = format!(
        "name: dlq-to-kafka\n\
         source:\n  type: kafka\n  brokers: {0}\n  topics: [orders-in]\n  group_id: dlq-test\n\
         table:\n  name: orders\n  primary_key: [id]\n  columns: {{id: int64, qty: int64}}\n\
         sink:\n  type: sqlite\n  path: target.db\n  create: true\n\
         dead_letter:\n  type: kafka\n  brokers: {0}\n  topic: orders-dlq\n",
        broker.address()
    );
    let pipeline = ws.write("pipeline.yaml", &yaml);
    let run = ws.run(&pipeline, &["--stop-when-idle", "3s"]);
    assert!(run.output.status.success(), "{}", run.stderr());
    assert_eq!(run.summary["dead_letters"], 3, "{}", run.summary);
    assert_eq!(run.summary["dead_letter_output"], "kafka topic orders-dlq");
    let applied = sqlite_rows(&ws.path("target.db"), "SELECT count(*) FROM orders");
    assert_eq!(applied, [["17"]]);

    let letters = broker.consume_all("orders-dlq", 3);
    assert_eq!(letters.len(), 3);
    for (letter, (at, raw, mentions)) in letters.iter().zip(&poison) {
        assert_eq!(letter.value.as_deref(), Some(raw.as_bytes()));
        assert_eq!(letter.key_json(), serde_json::json!({"id": at}));
        assert_eq!(letter.header("weir.error.stage").as_deref(), Some("decode"));
        assert_eq!(
            letter.header("weir.source.topic").as_deref(),
            Some("orders-in")
        );
        assert_eq!(letter.header("weir.source.partition").as_deref(), Some("0"));
        assert_eq!(
            letter.header("weir.source.offset"),
            Some(at.to_string()),
            "{letter:?}"
        );
        assert_eq!(
            letter.header("weir.pipeline").as_deref(),
            Some("dlq-to-kafka")
        );
        let message = letter.header("weir.error.message").unwrap();
        assert!(message.contains(mentions), "{message}");
    }
}

/// Dead letters from a file source name the file and line in their headers.
#[test]
fn file_dead_letters_to_kafka_name_file_and_line() {
    let broker = Broker::start();
    broker.create_topic("quickstart-dlq", 1);
    let ws = Workspace::new();
    let events =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart/orders.jsonl");
    let yaml = format!(
        "name: quickstart-dlq\n\
         source:\n  type: file\n  path: {}\n  format: debezium-json\n\
         table:\n  name: orders\n  primary_key: [id]\n  columns: {{id: int32, total: 'decimal(10,2)', \
         created_at: timestamp_micros, updated_at: timestamptz}}\n\
         sink:\n  type: sqlite\n  path: target.db\n  create: true\n\
         dead_letter:\n  type: kafka\n  brokers: {}\n  topic: quickstart-dlq\n",
        events.display(),
        broker.address()
    );
    let pipeline = ws.write("pipeline.yaml", &yaml);
    let summary = ws.run_ok(&pipeline);
    assert_eq!(summary["dead_letters"], 2, "{summary}");
    let letters = broker.consume_all("quickstart-dlq", 2);
    let lines: Vec<Option<String>> = letters
        .iter()
        .map(|l| l.header("weir.source.line"))
        .collect();
    assert_eq!(lines, [Some("351".to_string()), Some("502".to_string())]);
    let text = std::fs::read_to_string(&events).unwrap();
    let source_lines: Vec<&str> = text.lines().collect();
    for letter in &letters {
        assert!(
            letter
                .header("weir.source.file")
                .unwrap()
                .ends_with("orders.jsonl")
        );
        let line: usize = letter.header("weir.source.line").unwrap().parse().unwrap();
        assert_eq!(
            letter.value.as_deref(),
            Some(source_lines[line - 1].as_bytes())
        );
    }
}
