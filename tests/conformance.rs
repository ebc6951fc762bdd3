//! Conformance against the shared third-party Debezium fixtures
//! (`shared/fixtures/debezium`, see its README): every data file with asserted results goes
//! through weir's decoder and, for final states, through the real `weir` binary into a
//! SQLite target. Where an expected value is specific to the origin project's rendering,
//! the equivalent weir value is asserted and a comment says why.

mod common;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float32Type, Float64Type, Int32Type, Int64Type};
use common::{
    FULL_TYPES_COLUMNS, FULL_TYPES_SQLITE_QUERY, Workspace, compact_json, fixture,
    full_types_sqlite_rows, json_lines, sqlite_rows,
};
use weir_runtime::decode::table::{TableSpec, UnknownColumns};
use weir_runtime::decode::types::{ColumnDef, parse_declared};
use weir_runtime::decode::{DecodeError, Decoder, Format, Outcome, RawRecord};
use weir_runtime::envelope::{ChangeBatch, Op};
use weir_runtime::position::{Checkpoint, Position};

fn spec(primary_key: &[&str], declared: &[(&str, &str)]) -> TableSpec {
    TableSpec {
        declared: declared
            .iter()
            .map(|(name, ty)| ColumnDef {
                name: name.to_string(),
                ..parse_declared(ty).unwrap()
            })
            .collect(),
        ..TableSpec::new("t", primary_key)
    }
}

struct Decoded {
    batch: ChangeBatch,
    outcomes: Vec<Result<Outcome, DecodeError>>,
}

fn decode(lines: &[String], spec: TableSpec, format: Format) -> Decoded {
    let mut decoder = Decoder::new(spec, format);
    let outcomes = lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let position = Position::File {
                stream: "file:fixture".into(),
                line: i as u64 + 1,
                offset: 0,
                next: 0,
            };
            decoder.decode(
                RawRecord {
                    headers: Default::default(),
                    key: None,
                    value: Some(line.as_bytes()),
                },
                &position,
            )
        })
        .collect();
    Decoded {
        batch: decoder.finish(Checkpoint::default()),
        outcomes,
    }
}

/// A value as Flink's `Row.toString` prints the fixtures' `products` rows. The physical
/// type there is `FLOAT`, so a weight is printed as the float32 it is (`3.14`, not
/// `3.140000104904175`); a schema block that says `double` is narrowed the same way here.
fn flink_value(array: &dyn Array, row: usize) -> String {
    if array.is_null(row) {
        return "null".into();
    }
    match array.data_type() {
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row).to_string(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).to_string(),
        DataType::Float32 => format!("{:?}", array.as_primitive::<Float32Type>().value(row)),
        DataType::Float64 => format!(
            "{:?}",
            array.as_primitive::<Float64Type>().value(row) as f32
        ),
        DataType::Utf8 => array.as_string::<i32>().value(row).to_string(),
        other => panic!("unexpected type {other}"),
    }
}

fn flink_row(image: &arrow::array::StructArray, row: usize) -> String {
    let values: Vec<String> = ["id", "name", "description", "weight"]
        .iter()
        .map(|c| flink_value(image.column_by_name(c).unwrap().as_ref(), row))
        .collect();
    format!("({})", values.join(","))
}

/// The changelog Flink derives from Debezium events: inserts and snapshot reads are `+I`,
/// an update is `-U` (before) then `+U` (after), a delete is `-D` (before).
fn flink_changelog(batch: &ChangeBatch) -> Vec<String> {
    let mut out = Vec::new();
    for (row, op) in batch.ops().enumerate() {
        match op {
            Op::Create | Op::Read => out.push(format!("+I{}", flink_row(batch.after(), row))),
            Op::Update => {
                out.push(format!("-U{}", flink_row(batch.before(), row)));
                out.push(format!("+U{}", flink_row(batch.after(), row)));
            }
            Op::Delete => out.push(format!("-D{}", flink_row(batch.before(), row))),
            Op::Truncate => panic!("no truncates in these fixtures"),
        }
    }
    out
}

fn expected_lines(relative: &str) -> Vec<String> {
    std::fs::read_to_string(fixture(relative))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

const PRODUCTS_FLOAT: &[(&str, &str)] = &[
    ("id", "int32"),
    ("name", "string"),
    ("description", "string"),
    ("weight", "float32"),
];

#[test]
fn flink_mysql_and_postgres_files_give_the_asserted_changelog() {
    let expected = expected_lines("flink/expected-debezium-data-schema-exclude.txt");
    assert_eq!(expected.len(), 20);
    for (file, expected_file) in [
        (
            "flink/debezium-data-schema-exclude.txt",
            "flink/expected-debezium-data-schema-exclude.txt",
        ),
        (
            "flink/debezium-data-schema-include.txt",
            "flink/expected-debezium-data-schema-include.txt",
        ),
        (
            "flink/debezium-postgres-data-schema-exclude.txt",
            "flink/expected-debezium-postgres-data-schema-exclude.txt",
        ),
        (
            "flink/debezium-postgres-data-schema-include.txt",
            "flink/expected-debezium-postgres-data-schema-include.txt",
        ),
    ] {
        let lines = json_lines(&fixture(file));
        assert_eq!(lines.len(), 16, "{file}");
        // Schemaless files get Flink's declared types; files with a schema block are typed
        // by it (weight is a double there, narrowed for printing as Flink's FLOAT).
        let declared = if file.contains("include") {
            &[][..]
        } else {
            PRODUCTS_FLOAT
        };
        let decoded = decode(&lines, spec(&["id"], declared), Format::DebeziumJson);
        assert!(
            decoded.outcomes.iter().all(|o| *o == Ok(Outcome::Row)),
            "{file}"
        );
        assert_eq!(
            flink_changelog(&decoded.batch),
            expected_lines(expected_file),
            "{file}"
        );
    }
}

#[test]
fn flink_metadata_of_the_first_event() {
    use arrow::datatypes::TimestampMicrosecondType;
    let text = |batch: &ChangeBatch, column: &str| {
        let a = batch
            .data
            .column_by_name(column)
            .unwrap()
            .as_string::<i32>();
        a.is_valid(0).then(|| a.value(0).to_string())
    };
    let micros = |batch: &ChangeBatch, column: &str| {
        batch
            .data
            .column_by_name(column)
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>()
            .value(0)
    };
    for file in [
        "flink/debezium-data-schema-include.txt",
        "flink/debezium-data-schema-exclude.txt",
    ] {
        let lines = json_lines(&fixture(file));
        let decoded = decode(
            &lines[..1],
            spec(&["id"], PRODUCTS_FLOAT),
            Format::DebeziumJson,
        );
        let b = &decoded.batch;
        // ingestion-timestamp is the envelope's ts_ms; source.timestamp is source.ts_ms.
        assert_eq!(micros(b, "event_time"), 1_589_355_606_100_000, "{file}");
        assert_eq!(micros(b, "source_time"), 0, "{file}");
        assert_eq!(text(b, "source_db").as_deref(), Some("inventory"));
        assert_eq!(text(b, "source_schema"), None);
        assert_eq!(text(b, "source_table").as_deref(), Some("products"));
        // Flink exposes all 14 source properties as a map; weir keeps the documented
        // envelope columns and folds the log coordinates into source_position.
        assert_eq!(text(b, "source_connector").as_deref(), Some("mysql"));
        assert_eq!(
            text(b, "source_position").as_deref(),
            Some("file=mysql-bin.000003,pos=154,row=0")
        );
    }
    let lines = json_lines(&fixture("flink/debezium-postgres-data-schema-exclude.txt"));
    let decoded = decode(
        &lines[..1],
        spec(&["id"], PRODUCTS_FLOAT),
        Format::DebeziumJson,
    );
    let b = &decoded.batch;
    assert_eq!(micros(b, "event_time"), 1_596_001_099_434_000);
    assert_eq!(micros(b, "source_time"), 1_596_001_099_434_000);
    assert_eq!(text(b, "source_db").as_deref(), Some("postgres"));
    assert_eq!(text(b, "source_schema").as_deref(), Some("inventory"));
    assert_eq!(text(b, "source_table").as_deref(), Some("products"));
}

#[test]
fn flink_reserialised_changelog_matches() {
    // The origin re-serialises each changelog row: +I/+U as {"before":null,"after":row,"op":"c"},
    // -U/-D as {"before":row,"after":null,"op":"d"}.
    let lines = json_lines(&fixture("flink/debezium-data-schema-include.txt"));
    let decoded = decode(&lines, spec(&["id"], &[]), Format::DebeziumJson);
    let row_json = |image: &arrow::array::StructArray, row: usize| {
        let mut object = serde_json::Map::new();
        object.insert(
            "id".into(),
            image
                .column_by_name("id")
                .unwrap()
                .as_primitive::<Int32Type>()
                .value(row)
                .into(),
        );
        for c in ["name", "description"] {
            object.insert(
                c.into(),
                image
                    .column_by_name(c)
                    .unwrap()
                    .as_string::<i32>()
                    .value(row)
                    .into(),
            );
        }
        // Flink's FLOAT column: the float32 value, printed in its shortest form.
        let w = image
            .column_by_name("weight")
            .unwrap()
            .as_primitive::<Float64Type>()
            .value(row) as f32;
        object.insert(
            "weight".into(),
            serde_json::from_str(&format!("{w:?}")).unwrap(),
        );
        serde_json::Value::Object(object)
    };
    let b = &decoded.batch;
    let mut actual = Vec::new();
    for (row, op) in b.ops().enumerate() {
        let insert = |v| serde_json::json!({"before": null, "after": v, "op": "c"});
        let delete = |v| serde_json::json!({"before": v, "after": null, "op": "d"});
        match op {
            Op::Create | Op::Read => actual.push(insert(row_json(b.after(), row))),
            Op::Update => {
                actual.push(delete(row_json(b.before(), row)));
                actual.push(insert(row_json(b.after(), row)));
            }
            Op::Delete => actual.push(delete(row_json(b.before(), row))),
            Op::Truncate => unreachable!(),
        }
    }
    let expected: Vec<serde_json::Value> =
        expected_lines("flink/expected-debezium-data-schema-include.serialized.txt")
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(actual, expected);
}

#[test]
fn flink_replica_identity_default_delete_is_dead_lettered() {
    // Flink fails the job on an update without `before`, because its changelog needs the
    // -U row. weir applies full after-images, so those updates apply; what it cannot apply
    // is the delete whose `before` is null too: that event goes to the dead-letter output
    // with a reason that points at REPLICA IDENTITY, like Flink's message.
    let expected = std::fs::read_to_string(fixture(
        "flink/expected-debezium-postgres-data-replica-identity.txt",
    ))
    .unwrap();
    assert!(expected.contains("REPLICA IDENTITY"));
    let ws = Workspace::new();
    ws.append_lines(
        "events.jsonl",
        &json_lines(&fixture(
            "flink/debezium-postgres-data-replica-identity.txt",
        )),
    );
    let columns = "  columns: {id: int32, name: string, description: string, weight: float32}\n";
    let pipeline = ws.sqlite_pipeline("products", "id", columns);
    let summary = ws.run_ok(&pipeline);
    assert_eq!(summary["events_read"], 16);
    assert_eq!(summary["dead_letters"], 1);
    let letters = ws.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["stage"], "decode");
    assert_eq!(letters[0]["source"]["line"], 16);
    let error = letters[0]["error"].as_str().unwrap();
    assert!(
        error.contains("REPLICA IDENTITY") && error.contains("without a `before` image"),
        "{error}"
    );
    let rows = sqlite_rows(
        &ws.path("target.db"),
        "SELECT id, description, weight FROM products WHERE id >= 110 ORDER BY id",
    );
    assert_eq!(
        rows,
        [
            vec![
                "110".to_string(),
                "new water resistent white wind breaker".into(),
                "0.5".into()
            ],
            vec!["111".into(), "Big 2-wheel scooter ".into(), "5.17".into()],
        ],
        "the updates applied; 111 stays because its delete could not be applied"
    );
}

#[test]
fn flink_connector_kafka_final_table_and_aggregate() {
    let ws = Workspace::new();
    ws.append_lines(
        "events.jsonl",
        &json_lines(&fixture(
            "flink-connector-kafka/debezium-data-schema-exclude.txt",
        )),
    );
    let columns = "  columns: {id: int32, name: string, description: string, weight: float32}\n";
    let summary = ws.run_ok(&ws.sqlite_pipeline("products", "id", columns));
    assert_eq!(summary["events_read"], 16);
    assert_eq!(summary["dead_letters"], 0);

    let expected = flink_final_table();
    assert_eq!(expected.len(), 10);
    let actual = sqlite_rows(
        &ws.path("target.db"),
        "SELECT id, name, description, weight FROM products ORDER BY id",
    );
    assert_eq!(actual.len(), expected.len());
    for (a, e) in actual.iter().zip(&expected) {
        assert_eq!(a[..3], e[..3]);
        // The comment prints 1.0 as `1`; compare the numbers.
        assert_eq!(
            a[3].parse::<f64>().unwrap(),
            e[3].parse::<f64>().unwrap(),
            "{a:?} vs {e:?}"
        );
    }

    // SUM(weight) GROUP BY name with weight DECIMAL(10,3): a second pipeline declares the
    // decimal type, and the sums are computed exactly from the target's values.
    let ws = Workspace::new();
    ws.append_lines(
        "events.jsonl",
        &json_lines(&fixture(
            "flink-connector-kafka/debezium-data-schema-exclude.txt",
        )),
    );
    let columns = "  columns:\n    id: int32\n    name: string\n    description: string\n    weight: decimal(10,3)\n";
    ws.run_ok(&ws.sqlite_pipeline("products", "id", columns));
    let rows = sqlite_rows(
        &ws.path("target.db"),
        "SELECT name, weight FROM products ORDER BY id",
    );
    let mut sums: Vec<(String, i128)> = Vec::new();
    for row in rows {
        // SQLite keeps a DECIMAL(10,3) as the nearest REAL when that is lossless at 15
        // digits; its shortest text is the exact decimal.
        let millis = weir_runtime::decode::decimal::from_text(
            row[1].as_bytes(),
            3,
            weir_runtime::decode::decimal::Rescale::Exact,
        )
        .unwrap()
        .as_i128();
        match sums.iter_mut().find(|(n, _)| *n == row[0]) {
            Some((_, s)) => *s += millis,
            None => sums.push((row[0].clone(), millis)),
        }
    }
    let actual: Vec<String> = sums
        .iter()
        .map(|(name, s)| {
            format!(
                "+I[changelog_topic, products, {name}, {}]",
                weir_runtime::decode::decimal::format(arrow::datatypes::i256::from_i128(*s), 3)
            )
        })
        .collect();
    // The origin's first two columns are FIRST_VALUE(topic) and the source table.
    assert_eq!(
        actual,
        expected_lines("flink-connector-kafka/expected-debezium-data-schema-exclude.txt")
    );
}

/// The final `products` table from the flink-connector-kafka test's comment (a MySQL-style
/// ASCII table), as rows of values.
fn flink_final_table() -> Vec<Vec<String>> {
    expected_lines("flink-connector-kafka/expected-debezium-data-schema-exclude.final-table.txt")
        .iter()
        .filter(|l| l.starts_with('|') && !l.contains(" id "))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|v| v.trim().to_string())
                .collect()
        })
        .collect()
}

/// A Paimon expectation line `+I[101, scooter, …, NULL]` as values.
fn paimon_rows(relative: &str) -> Vec<Vec<String>> {
    expected_lines(relative)
        .iter()
        .map(|l| {
            l.trim_start_matches("+I[")
                .trim_end_matches(']')
                .split(", ")
                .map(str::to_string)
                .collect()
        })
        .collect()
}

#[test]
fn paimon_schemaless_evolution_adds_columns_file_by_file() {
    let ws = Workspace::new();
    let pipeline = ws.sqlite_pipeline("product", "id", "");
    for n in 1..=3 {
        ws.append_lines(
            "events.jsonl",
            &json_lines(&fixture(&format!(
                "paimon/table-schemaevolution/debezium-data-{n}.txt"
            ))),
        );
        // Each run resumes after the lines the previous one applied.
        let summary = ws.run_ok(&pipeline);
        assert_eq!(summary["dead_letters"], 0);
        let expected = paimon_rows(&format!(
            "paimon/table-schemaevolution/expected-debezium-data-{n}.txt"
        ));
        let columns = expected[0].len();
        let select =
            ["id", "name", "description", "weight", "age", "address"][..columns].join(", ");
        let actual = sqlite_rows(
            &ws.path("target.db"),
            &format!("SELECT {select} FROM product ORDER BY id"),
        );
        // Paimon infers every column as STRING; weir infers numbers, whose text is the same.
        assert_eq!(actual, expected, "after file {n}");
    }
}

#[test]
fn paimon_schema_evolution_widens_and_stops_on_incompatible_change() {
    let ws = Workspace::new();
    let pipeline = ws.sqlite_pipeline("product", "id", "");
    for n in 1..=4 {
        ws.append_lines(
            "events.jsonl",
            &json_lines(&fixture(&format!(
                "paimon/table-schema-schemaevolution/debezium-data-{n}.txt"
            ))),
        );
        ws.run_ok(&pipeline);
        let expected = paimon_rows(&format!(
            "paimon/table-schema-schemaevolution/expected-debezium-data-{n}.txt"
        ));
        let select = if n == 1 {
            "id, name, description, weight"
        } else {
            "id, name, description, weight, age"
        };
        let actual = sqlite_rows(
            &ws.path("target.db"),
            &format!("SELECT {select} FROM product ORDER BY id"),
        );
        assert_eq!(actual, expected, "after file {n}");
    }
    // int64 -> string: Paimon says "Cannot convert field age from type BIGINT to STRING".
    ws.append_lines(
        "events.jsonl",
        &json_lines(&fixture(
            "paimon/table-schema-schemaevolution/debezium-data-5.txt",
        )),
    );
    let run = ws.run(&pipeline, &[]);
    assert!(!run.output.status.success());
    let stderr = run.stderr();
    assert!(
        stderr.contains("column `age` changed from int64 to string"),
        "{stderr}"
    );
    assert!(stderr.contains("events.jsonl:5"), "{stderr}");
    // Nothing from the incompatible event was applied.
    let rows = sqlite_rows(&ws.path("target.db"), "SELECT count(*) FROM product");
    assert_eq!(rows, [vec!["4".to_string()]]);
}

#[test]
fn paimon_tombstone_between_files_is_skipped() {
    let ws = Workspace::new();
    ws.append_lines(
        "events.jsonl",
        &json_lines(&fixture("paimon/table-nullvalue/debezium-data-1.txt")),
    );
    // The origin test sends a Kafka null value between the two files.
    ws.append_lines("events.jsonl", &["null".to_string()]);
    ws.append_lines(
        "events.jsonl",
        &json_lines(&fixture("paimon/table-nullvalue/debezium-data-2.txt")),
    );
    let summary = ws.run_ok(&ws.sqlite_pipeline("test", "id", ""));
    assert_eq!(summary["tombstones"], 1);
    let rows = sqlite_rows(
        &ws.path("target.db"),
        "SELECT id, value FROM test ORDER BY id",
    );
    assert_eq!(
        rows,
        paimon_rows("paimon/table-nullvalue/expected-debezium-data-2.txt")
    );
}

#[test]
fn paimon_schema_change_event_is_recognised_and_applies_nothing() {
    let event = compact_json(&fixture("paimon/mysql/debezium-event-change.json"));
    let decoded = decode(
        &[event.to_string()],
        spec(&["pk"], &[]),
        Format::DebeziumJson,
    );
    let Ok(Outcome::SchemaChange(info)) = &decoded.outcomes[0] else {
        panic!("{:?}", decoded.outcomes[0]);
    };
    assert_eq!(
        info.table_changes,
        [("ALTER".to_string(), "tinyint1_not_bool_test.t1".to_string())]
    );
    assert_eq!(
        info.ddl.as_deref(),
        Some("ALTER TABLE t1 ADD COLUMN _new_tinyint1 TINYINT(1)")
    );
    assert_eq!(
        decoded.batch.num_rows(),
        0,
        "a schema-change event carries no row (and no ts_ms)"
    );

    let ws = Workspace::new();
    ws.append_lines("events.jsonl", &[event.to_string()]);
    let summary = ws.run_ok(&ws.sqlite_pipeline("t1", "pk", ""));
    assert_eq!(summary["schema_changes"], 1);
    assert_eq!(summary["rows_applied"], 0);
    assert_eq!(summary["dead_letters"], 0);
}

#[test]
fn risingwave_final_tables() {
    for (file, expected) in [
        (
            "risingwave/debezium_log.1",
            "risingwave/expected-debezium_log.1.txt",
        ),
        (
            "risingwave/debezium_log_no_schema_field.1",
            "risingwave/expected-debezium_log_no_schema_field.1.txt",
        ),
    ] {
        let ws = Workspace::new();
        ws.append_lines("events.jsonl", &json_lines(&fixture(file)));
        let summary = ws.run_ok(&ws.sqlite_pipeline("customers", "id", ""));
        assert_eq!(summary["events_read"], 10, "{file}");
        let rows = sqlite_rows(
            &ws.path("target.db"),
            "SELECT id, first_name, last_name, email FROM customers ORDER BY id",
        );
        let rendered: Vec<String> = rows.iter().map(|r| r.join(" ")).collect();
        assert_eq!(rendered, expected_lines(expected), "{file}");
    }
}

#[test]
fn risingwave_ignore_case_with_a_composite_key() {
    let ws = Workspace::new();
    ws.append_lines(
        "events.jsonl",
        &json_lines(&fixture("risingwave/debezium_ignore_case_json.1")),
    );
    let pipeline = ws.sqlite_pipeline(
        "lineitem",
        "l_orderkey, l_linenumber",
        "  case_insensitive: true\n",
    );
    let summary = ws.run_ok(&pipeline);
    assert_eq!(summary["rows_applied"], 3);
    let rows = sqlite_rows(
        &ws.path("target.db"),
        "SELECT L_ORDERKEY, L_LINENUMBER FROM lineitem ORDER BY 1, 2",
    );
    let expected: Vec<Vec<String>> =
        expected_lines("risingwave/expected-debezium_ignore_case_json.1.txt")
            .iter()
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect();
    assert_eq!(rows, expected);
}

/// `new Customer(1004, "Anne", "Kretchmar", "annek@noanswer.org")` from an expectation file.
fn customer(expected_file: &str, starts_with: &str) -> Vec<String> {
    let line = expected_lines(expected_file)
        .into_iter()
        .find(|l| l.starts_with(starts_with))
        .unwrap_or_else(|| panic!("{starts_with} in {expected_file}"));
    let inner = &line[line.find("new Customer(").unwrap() + 13..line.rfind(')').unwrap()];
    inner
        .split(", ")
        .map(|v| v.trim_matches('"').to_string())
        .collect()
}

fn customer_of(image: &arrow::array::StructArray, row: usize) -> Vec<String> {
    ["id", "first_name", "last_name", "email"]
        .iter()
        .map(|c| {
            let column = image.column_by_name(c).unwrap();
            weir_runtime::encode::text(column.as_ref(), row)
                .map(|t| t.into_owned())
                .unwrap_or_else(|| {
                    let mut s = String::new();
                    weir_runtime::encode::write_json(&mut s, column.as_ref(), row);
                    s
                })
        })
        .collect()
}

#[test]
fn debezium_serde_envelopes() {
    let one = |file: &str, format: Format, declared: &[(&str, &str)], unknown: UnknownColumns| {
        let event = compact_json(&fixture(file));
        let mut s = spec(&["id"], declared);
        s.unknown_columns = unknown;
        decode(&[event.to_string()], s, format)
    };
    let add = UnknownColumns::Add;

    let d = one(
        "debezium/serde-with-schema.json",
        Format::DebeziumJson,
        &[],
        add,
    );
    assert_eq!(
        customer_of(d.batch.after(), 0),
        customer(
            "debezium/expected-serde-with-schema.json.txt",
            "valuePayloadWithSchema"
        )
    );
    assert_eq!(d.batch.ops().next(), Some(Op::Create));
    // The origin counts the keys of its envelope map; weir's envelope is a fixed set of
    // columns, so the equivalent check is that the envelope fields it reads are there:
    // a boolean `source.snapshot` and the source coordinates.
    let snapshot = d
        .batch
        .data
        .column_by_name("source_snapshot")
        .unwrap()
        .as_string::<i32>();
    assert_eq!(snapshot.value(0), "false");

    let d = one(
        "debezium/serde-without-schema.json",
        Format::DebeziumJson,
        &[],
        add,
    );
    assert_eq!(
        customer_of(d.batch.after(), 0),
        customer(
            "debezium/expected-serde-without-schema.json.txt",
            "valuePayloadWithoutSchema"
        )
    );
    assert!(d.batch.before().is_null(0), "from.field=before is null");
    assert_eq!(d.batch.ops().next(), Some(Op::Create));

    let d = one("debezium/serde-update.json", Format::DebeziumJson, &[], add);
    assert_eq!(
        customer_of(d.batch.before(), 0),
        customer(
            "debezium/expected-serde-update.json.txt",
            "valueBeforeField"
        )
    );

    let d = one(
        "debezium/serde-unwrapped.json",
        Format::DebeziumJsonUnwrapped,
        &[],
        add,
    );
    assert_eq!(
        customer_of(d.batch.after(), 0),
        customer(
            "debezium/expected-serde-unwrapped.json.txt",
            "valuePayloadUnwrapped"
        )
    );

    // An unknown column is refused when asked to (the origin throws), or ignored.
    let declared = [
        ("id", "int32"),
        ("first_name", "string"),
        ("last_name", "string"),
        ("email", "string"),
    ];
    let d = one(
        "debezium/serde-unknown-property.json",
        Format::DebeziumJson,
        &declared,
        UnknownColumns::Reject,
    );
    let Err(DecodeError::Record(e)) = &d.outcomes[0] else {
        panic!("{:?}", d.outcomes[0])
    };
    assert!(e.message.contains("middle_name"), "{}", e.message);
    let d = one(
        "debezium/serde-unknown-property.json",
        Format::DebeziumJson,
        &declared,
        UnknownColumns::Ignore,
    );
    assert_eq!(
        customer_of(d.batch.before(), 0),
        customer(
            "debezium/expected-serde-unknown-property.json.txt",
            "valueWithUnknownPropertyIgnored"
        )
    );
}

#[test]
fn flink_cdc_base64_and_numeric_decimals_decode_to_the_same_rows() {
    // Without a schema the scale comes from the table definition (the test's DDL).
    let declared = [
        ("id", "decimal(20,0)"),
        ("big_un_c", "decimal(20,0)"),
        ("big_un_z_c", "decimal(20,0)"),
        ("decimal_c", "decimal(8,4)"),
        ("decimal_un_c", "decimal(8,4)"),
        ("decimal_un_z_c", "decimal(8,4)"),
        ("numeric_c", "decimal(6,0)"),
        ("big_decimal_c", "decimal(65,1)"),
        ("timestamp_c", "timestamptz"),
    ];
    let rows = |file: &str| {
        let doc = compact_json(&fixture(file));
        let events = [
            doc["expected_snapshot"].to_string(),
            doc["expected_binlog"].to_string(),
        ];
        let decoded = decode(&events, spec(&["id"], &declared), Format::DebeziumJson);
        assert!(
            decoded.outcomes.iter().all(|o| *o == Ok(Outcome::Row)),
            "{file}: {:?}",
            decoded.outcomes
        );
        let render = |image: &arrow::array::StructArray, row: usize| {
            let mut s = String::new();
            weir_runtime::encode::write_struct_row(&mut s, image, row);
            s
        };
        let b = &decoded.batch;
        let ops: Vec<Op> = b.ops().collect();
        assert_eq!(ops, [Op::Read, Op::Update]);
        (
            render(b.after(), 0),
            render(b.before(), 1),
            render(b.after(), 1),
        )
    };
    let base64 = rows("flink-cdc/debezium-data-schema-exclude.json");
    let numeric = rows("flink-cdc/debezium-data-schema-exclude-with-numeric-decimal.json");
    assert_eq!(base64, numeric, "both encodings give the same rows");

    let snapshot: serde_json::Value = serde_json::from_str(&base64.0).unwrap();
    // The computed pairs from the fixtures README, as exact JSON numbers.
    for (column, expected) in [
        ("id", "1"),
        ("big_un_c", "18446744073709551615"),
        ("decimal_c", "123.4567"),
        ("decimal_un_c", "123.4568"),
        ("decimal_un_z_c", "123.4569"),
        ("numeric_c", "346"),
        ("big_decimal_c", "34567892.1"),
    ] {
        let text = base64.0.split(&format!("\"{column}\":")).nth(1).unwrap();
        let value: String = text
            .chars()
            .take_while(|c| *c != ',' && *c != '}')
            .collect();
        assert_eq!(value, expected, "{column}");
    }
    assert_eq!(snapshot["varchar_c"], "Hello World");
    assert_eq!(snapshot["varchar_len0_c"], "");
    assert_eq!(snapshot["timestamp_c"], "2020-07-17T18:00:22Z");

    // The update changes only timestamp_c.
    let before: serde_json::Value = serde_json::from_str(&base64.1).unwrap();
    let after: serde_json::Value = serde_json::from_str(&base64.2).unwrap();
    let changed: Vec<&String> = after
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, v)| before[k.as_str()] != **v)
        .map(|(k, _)| k)
        .collect();
    assert_eq!(changed, ["timestamp_c"]);
    assert_eq!(after["timestamp_c"], "2020-07-17T18:33:22Z");
}

/// The four Flink files (MySQL and PostgreSQL, with and without schema) describe the same
/// DML; through the SQLite sink each ends as the final table from the flink-connector-kafka
/// test's comment.
#[test]
fn flink_files_end_as_the_final_table_in_sqlite() {
    let expected = flink_final_table();
    for file in [
        "flink/debezium-data-schema-exclude.txt",
        "flink/debezium-data-schema-include.txt",
        "flink/debezium-postgres-data-schema-exclude.txt",
        "flink/debezium-postgres-data-schema-include.txt",
    ] {
        let ws = Workspace::new();
        ws.append_lines("events.jsonl", &json_lines(&fixture(file)));
        let columns = if file.contains("include") {
            ""
        } else {
            "  columns: {id: int32, name: string, description: string, weight: float32}\n"
        };
        let summary = ws.run_ok(&ws.sqlite_pipeline("products", "id", columns));
        assert_eq!(summary["dead_letters"], 0, "{file}");
        let actual = sqlite_rows(
            &ws.path("target.db"),
            "SELECT id, name, description, weight FROM products ORDER BY id",
        );
        assert_eq!(actual.len(), expected.len(), "{file}");
        for (a, e) in actual.iter().zip(&expected) {
            assert_eq!(a[..3], e[..3], "{file}");
            // With a schema block the weight is the double the MySQL file carries
            // (3.140000104904175); as a float32 it is the 3.14 the table shows.
            assert_eq!(
                a[3].parse::<f64>().unwrap() as f32,
                e[3].parse::<f32>().unwrap(),
                "{file}: {a:?}"
            );
        }
    }
}

/// The Flink-CDC full_types row, both decimal encodings, lands in SQLite with every digit.
#[test]
fn flink_cdc_rows_land_in_sqlite_exactly() {
    for file in [
        "flink-cdc/debezium-data-schema-exclude.json",
        "flink-cdc/debezium-data-schema-exclude-with-numeric-decimal.json",
    ] {
        let doc = compact_json(&fixture(file));
        let ws = Workspace::new();
        ws.append_lines(
            "events.jsonl",
            &[
                doc["expected_snapshot"].to_string(),
                doc["expected_binlog"].to_string(),
            ],
        );
        let summary = ws.run_ok(&ws.sqlite_pipeline("full_types", "id", FULL_TYPES_COLUMNS));
        assert_eq!(summary["dead_letters"], 0, "{file}");
        let rows = sqlite_rows(&ws.path("target.db"), FULL_TYPES_SQLITE_QUERY);
        // Decimals wider than 15 digits are stored as exact text (NUMERIC affinity would
        // round 18446744073709551615).
        assert_eq!(rows, full_types_sqlite_rows(), "{file}");
    }
}

/// The Debezium serde events through the SQLite sink: the customer row as the origin
/// asserts it.
#[test]
fn debezium_serde_events_land_in_sqlite() {
    for (file, expected_file, case, format) in [
        (
            "debezium/serde-with-schema.json",
            "debezium/expected-serde-with-schema.json.txt",
            "valuePayloadWithSchema",
            "debezium-json",
        ),
        (
            "debezium/serde-without-schema.json",
            "debezium/expected-serde-without-schema.json.txt",
            "valuePayloadWithoutSchema",
            "debezium-json",
        ),
        (
            "debezium/serde-update.json",
            "debezium/expected-serde-with-schema.json.txt",
            "valuePayloadWithSchema",
            "debezium-json",
        ),
        (
            "debezium/serde-unwrapped.json",
            "debezium/expected-serde-unwrapped.json.txt",
            "valuePayloadUnwrapped",
            "debezium-json-unwrapped",
        ),
    ] {
        let ws = Workspace::new();
        ws.append_lines("events.jsonl", &[compact_json(&fixture(file)).to_string()]);
        let pipeline = ws.sqlite_pipeline("customers", "id", "");
        let text = std::fs::read_to_string(&pipeline)
            .unwrap()
            .replace("format: debezium-json", &format!("format: {format}"));
        std::fs::write(&pipeline, text).unwrap();
        let summary = ws.run_ok(&pipeline);
        assert_eq!(summary["dead_letters"], 0, "{file}");
        let rows = sqlite_rows(
            &ws.path("target.db"),
            "SELECT id, first_name, last_name, email FROM customers",
        );
        // The update's after image is the same customer the with-schema case asserts.
        assert_eq!(rows, [customer(expected_file, case)], "{file}");
    }
}
