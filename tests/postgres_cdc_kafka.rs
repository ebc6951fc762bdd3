//! weir in Debezium's place: `postgres-cdc` publishes Debezium-compatible topics through
//! the Kafka sink, a weir Kafka pipeline reading them ends in the same state as a direct
//! pipeline, and the events have the shapes of Debezium's own PostgreSQL events (the
//! shared fixtures), field by field. A real PostgreSQL server and a real `tansu` broker.

mod common;

use std::time::{Duration, Instant};

use common::cdc::{Running, table_rows};
use common::services::{Broker, Postgres};
use common::{Workspace, fixtures, weir};

const TABLES: [&str; 2] = ["products", "orders"];

fn pipeline(
    ws: &Workspace,
    file: &str,
    name: &str,
    source: &str,
    sink: &str,
) -> std::path::PathBuf {
    ws.write(
        file,
        &format!(
            "name: {name}\n{source}\
             tables:\n  include: ['public.*']\n{sink}\
             dead_letter: {{ type: file, path: {name}-dead-letters.jsonl }}\n\
             batch: {{ max_wait: 100ms }}\n"
        ),
    )
}

/// Runs `weir run` on a pipeline file in the background, its log beside it.
fn start(ws: &Workspace, pipeline: &std::path::Path) -> Running {
    let log = format!("{}.log", pipeline.file_name().unwrap().to_string_lossy());
    Running(
        weir()
            .args(["run", "-q", "-v"])
            .arg(pipeline)
            .current_dir(ws.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(ws.path(&log)).unwrap())
            .spawn()
            .expect("start weir"),
    )
}

fn cdc_source(pg: &Postgres, slot: &str) -> String {
    format!(
        "source:\n  type: postgres-cdc\n  url: {}\n  publication: {slot}\n  slot: {slot}\n  \
         server_name: shop\n",
        pg.url("source")
    )
}

/// The JSON type of a value, as a shape.
fn kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// Every field of `expected` (Debezium's event) is in `actual` (weir's) with the same
/// shape, objects compared field by field; differences are listed by path. A number
/// Debezium happened to write without a fraction matches either kind of number.
fn same_shape(
    path: &str,
    expected: &serde_json::Value,
    actual: &serde_json::Value,
    out: &mut Vec<String>,
) {
    match (expected, actual) {
        (serde_json::Value::Object(e), serde_json::Value::Object(a)) => {
            for (key, value) in e {
                match a.get(key) {
                    Some(found) => same_shape(&format!("{path}.{key}"), value, found, out),
                    None => out.push(format!("{path}.{key}: missing")),
                }
            }
        }
        (serde_json::Value::Number(_), serde_json::Value::Number(_)) => {
            let (e, a) = (kind(expected), kind(actual));
            if e == "number" && a == "integer" {
                out.push(format!("{path}: {e} in Debezium's, {a} in weir's"));
            }
        }
        _ if kind(expected) != kind(actual) => out.push(format!(
            "{path}: {} in Debezium's, {} in weir's ({actual})",
            kind(expected),
            kind(actual)
        )),
        _ => {}
    }
}

/// The fields of a Connect struct schema, by name: their type and, for structs, theirs.
fn schema_shape(
    path: &str,
    expected: &serde_json::Value,
    actual: &serde_json::Value,
    out: &mut Vec<String>,
) {
    let fields = |s: &serde_json::Value| -> Vec<(String, serde_json::Value)> {
        s["fields"]
            .as_array()
            .map(|fields| {
                fields
                    .iter()
                    .map(|f| (f["field"].as_str().unwrap_or("").to_string(), f.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let actual_fields = fields(actual);
    for (name, field) in fields(expected) {
        let at = format!("{path}.{name}");
        match actual_fields.iter().find(|(n, _)| *n == name) {
            None => out.push(format!("{at}: missing from weir's schema")),
            Some((_, found)) => {
                if field["type"] != found["type"] {
                    out.push(format!(
                        "{at}: {} in Debezium's, {} in weir's",
                        field["type"], found["type"]
                    ));
                } else if field["type"] == "struct" {
                    schema_shape(&at, &field, found, out);
                }
            }
        }
    }
}

fn fixture_events(file: &str) -> Vec<serde_json::Value> {
    let path = fixtures().join("flink").join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn wait_for_rows(pg: &Postgres, database: &str, limit: Duration) {
    let started = Instant::now();
    loop {
        let same = TABLES.iter().all(|t| {
            pg.client(database)
                .query(&format!("SELECT 1 FROM public.{t} LIMIT 1"), &[])
                .is_ok()
                && table_rows(pg, "source", t) == table_rows(pg, database, t)
        });
        if same {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{database} did not catch up with the source"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn debezium_compatible_topics_end_as_the_direct_pipeline_and_match_debeziums_shapes() {
    let pg = common::cdc::server();
    pg.create_database("via_kafka");
    let broker = Broker::start();
    // As Debezium's topics, one partition per table (tansu creates none on its own).
    for prefix in ["shop", "shopschema"] {
        for table in TABLES {
            broker.create_topic(&format!("{prefix}.public.{table}"), 1);
        }
    }
    let mut source = pg.client("source");
    // Debezium's tutorial table, as in the fixtures: REPLICA IDENTITY FULL, so updates
    // and deletes carry their whole before-image.
    source
        .batch_execute(
            "CREATE TABLE products (id int PRIMARY KEY, name text NOT NULL, description text, \
             weight double precision);
             ALTER TABLE products REPLICA IDENTITY FULL;
             CREATE TABLE orders (id bigint PRIMARY KEY, product_id int, quantity int, \
             price numeric(10,2), placed date);
             INSERT INTO products VALUES
               (101, 'scooter', 'Small 2-wheel scooter', 3.14),
               (102, 'car battery', '12V car battery', 8.1),
               (103, '12-pack drill bits', '12-pack of drill bits with sizes ranging from #40 to #3', 0.8),
               (104, 'hammer', '12oz carpenter''s hammer', 0.75),
               (105, 'hammer', '14oz carpenter''s hammer', 0.875),
               (106, 'hammer', '16oz carpenter''s hammer', 1.0),
               (107, 'rocks', 'box of assorted rocks', 5.3),
               (108, 'jacket', 'water resistent black wind breaker', 0.1),
               (109, 'spare tire', '24 inch spare tire', 22.2);
             INSERT INTO orders SELECT g, 101 + g % 9, g % 5 + 1, g * 1.25, DATE '2026-01-01' + g
               FROM generate_series(1, 300) g;",
        )
        .unwrap();
    let ws = Workspace::new();
    let direct = pipeline(
        &ws,
        "direct.yaml",
        "direct",
        &cdc_source(&pg, "weir_direct"),
        &format!(
            "sink: {{ type: postgres, url: '{}', schema: public, mode: upsert, create: true }}\n",
            pg.url("target")
        ),
    );
    let to_kafka = |format: &str, prefix: &str| {
        pipeline(
            &ws,
            &format!("{prefix}.yaml"),
            prefix,
            &cdc_source(&pg, &format!("weir_{prefix}")),
            &format!(
                "sink: {{ type: kafka, brokers: '{}', topic: '{prefix}.{{source}}', format: {format} }}\n",
                broker.address()
            ),
        )
    };
    let plain = to_kafka("debezium-json", "shop");
    let with_schemas = to_kafka("debezium-json-schema", "shopschema");
    let running: Vec<Running> = [&direct, &plain, &with_schemas]
        .iter()
        .map(|p| start(&ws, p))
        .collect();
    let logs = || {
        ["direct", "shop", "shopschema"]
            .iter()
            .map(|name| {
                let log = std::fs::read_to_string(ws.path(&format!("{name}.yaml.log")));
                format!("--- {name}:\n{}", log.unwrap_or_default())
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    wait_for_rows(&pg, "target", Duration::from_secs(90));

    // The changes behind Debezium's tutorial events, and more on the other table.
    source
        .batch_execute(
            "UPDATE products SET description = '18oz carpenter hammer' WHERE id = 106;
             UPDATE products SET weight = 5.1 WHERE id = 107;
             INSERT INTO products VALUES (110, 'jacket', 'water resistent white wind breaker', 0.2);
             INSERT INTO products VALUES (111, 'scooter', 'Big 2-wheel scooter ', 5.18);
             UPDATE products SET description = 'new water resistent white wind breaker', weight = 0.5 WHERE id = 110;
             UPDATE products SET weight = 5.17 WHERE id = 111;
             DELETE FROM products WHERE id = 111;
             UPDATE orders SET quantity = quantity + 10 WHERE id % 7 = 0;
             DELETE FROM orders WHERE id % 11 = 0;
             INSERT INTO orders SELECT g, 101, 1, 9.99, NULL FROM generate_series(301, 350) g;",
        )
        .unwrap();
    wait_for_rows(&pg, "target", Duration::from_secs(60));

    // 9 read, 4 updates, 2 inserts, 1 delete and its tombstone, as Debezium's tutorial.
    let all_records = |topic: &str| {
        let started = Instant::now();
        loop {
            let records = broker.consume_all(topic, 17);
            if records.len() >= 17 || started.elapsed() > Duration::from_secs(60) {
                return records;
            }
        }
    };
    let plain_records = all_records("shop.public.products");
    let schema_records = all_records("shopschema.public.products");
    drop(running);
    assert_eq!(
        plain_records.len(),
        17,
        "records of shop.public.products\n{}",
        logs()
    );
    assert_eq!(
        schema_records.len(),
        17,
        "records of shopschema.public.products"
    );

    // A weir Kafka pipeline reading the topics ends as the direct one. It reads the topics
    // with schemas: without them a numeric column's scale is not in the events (as with
    // Debezium's), and the target it creates keeps `12.5` where the source has `12.50`.
    let from_kafka = pipeline(
        &ws,
        "from-kafka.yaml",
        "from-kafka",
        &format!(
            "source: {{ type: kafka, brokers: '{}', topic_pattern: '^shopschema\\.public\\..*', group_id: from-kafka }}\n",
            broker.address()
        ),
        &format!(
            "sink: {{ type: postgres, url: '{}', schema: public, mode: upsert, create: true }}\n",
            pg.url("via_kafka")
        ),
    );
    let output = weir()
        .args(["run", "-q", "--stop-when-idle", "5s"])
        .arg(&from_kafka)
        .current_dir(ws.dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for table in TABLES {
        assert_eq!(
            table_rows(&pg, "via_kafka", table),
            table_rows(&pg, "target", table),
            "{table}: through Kafka and direct"
        );
    }

    // Field by field, each kind of event has the shape of Debezium's.
    let ops = ["r", "u", "c", "d"];
    let mut differences = Vec::new();
    let debezium = fixture_events("debezium-postgres-data-schema-exclude.txt");
    let weirs: Vec<serde_json::Value> = plain_records
        .iter()
        .filter_map(|r| r.value_json())
        .collect();
    for op in ops {
        let expected = debezium
            .iter()
            .find(|e| e["op"] == op)
            .expect("Debezium's event");
        let actual = weirs
            .iter()
            .find(|e| e["op"] == op)
            .unwrap_or_else(|| panic!("no `{op}` event from weir"));
        same_shape(op, expected, actual, &mut differences);
        assert_eq!(actual["source"]["connector"], "postgresql");
        assert_eq!(actual["source"]["schema"], "public");
        assert_eq!(actual["source"]["table"], "products");
        assert_eq!(actual["source"]["name"], "shop");
    }
    let snapshot = weirs.iter().find(|e| e["op"] == "r").unwrap();
    assert_eq!(snapshot["source"]["snapshot"], "true");
    let update_107 = weirs
        .iter()
        .find(|e| e["op"] == "u" && e["after"]["id"] == 107)
        .unwrap();
    assert_eq!(
        update_107["before"]["weight"], 5.3,
        "REPLICA IDENTITY FULL before-image"
    );
    assert_eq!(update_107["after"]["weight"], 5.1);
    // With schemas: the payloads as above, and the schemas of Debezium's fields.
    let debezium = fixture_events("debezium-postgres-data-schema-include.txt");
    let weirs: Vec<serde_json::Value> = schema_records
        .iter()
        .filter_map(|r| r.value_json())
        .collect();
    for op in ops {
        let expected = debezium
            .iter()
            .find(|e| e["payload"]["op"] == op)
            .expect("Debezium's event");
        let actual = weirs
            .iter()
            .find(|e| e["payload"]["op"] == op)
            .unwrap_or_else(|| panic!("no `{op}` event from weir"));
        same_shape(
            &format!("{op}.payload"),
            &expected["payload"],
            &actual["payload"],
            &mut differences,
        );
        schema_shape(
            &format!("{op}.schema"),
            &expected["schema"],
            &actual["schema"],
            &mut differences,
        );
    }
    let tombstones = plain_records.iter().filter(|r| r.value.is_none()).count();
    assert_eq!(tombstones, 1, "a delete is followed by a tombstone");
    let key = plain_records[0].key_json();
    assert_eq!(
        key,
        serde_json::json!({"id": 101}),
        "the key is the primary key"
    );
    assert!(
        differences.is_empty(),
        "shapes that differ from Debezium's:\n{}",
        differences.join("\n")
    );
}
