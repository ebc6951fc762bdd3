//! `weir reconcile` over real snapshots: a Parquet source against a SQLite target, and
//! PostgreSQL against PostgreSQL, each with differences of every kind injected (missing
//! rows, extra rows, a mismatch in each column type, NULL against '', awkward identifiers).
//! The report must name exactly the injected differences, and the exit code must say
//! equal (0), different (1) or error (2).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Decimal128Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use common::Workspace;
use common::faults::Figures;
use common::services::{Broker, Postgres};

/// One row of the test table. `a"b` and `select` are columns too.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    id: i64,
    name: Option<String>,
    /// Hundredths.
    price: i128,
    /// Microseconds since the epoch.
    ts: i64,
    flag: bool,
    ratio: f64,
    quoted: String,
    select: i32,
}

const BASE_MICROS: i64 = 1_795_000_000_000_000;

fn source_rows() -> Vec<Row> {
    (0..200)
        .map(|id| Row {
            id,
            // Quotes, a backslash, a newline, a tab and non-ASCII letters, which a repair
            // script must carry exactly.
            name: (id % 7 != 0).then(|| format!("name {id} 'q' \"d\" ünï \\ back\nslash\t")),
            price: 1000 + id as i128 * 37,
            ts: BASE_MICROS + id * 1_000_001,
            flag: id % 2 == 0,
            ratio: id as f64 / 3.0,
            quoted: format!("v{id}"),
            select: id as i32 * 3,
        })
        .collect()
}

/// The differences injected into the target, by key: the columns that differ.
fn injected() -> BTreeMap<i64, Vec<&'static str>> {
    BTreeMap::from([
        (20, vec!["name"]),
        (21, vec!["name"]),
        (30, vec!["price"]),
        (40, vec!["ts"]),
        (50, vec!["flag"]),
        (60, vec!["ratio"]),
        (70, vec!["a\"b"]),
        (80, vec!["select"]),
    ])
}

const MISSING: [i64; 2] = [10, 11];
const EXTRA: i64 = 1000;

/// The source with the injected differences: rows 10 and 11 gone, row 1000 added, and
/// one column changed in each of the rows `injected` names.
fn target_rows() -> Vec<Row> {
    let mut rows: Vec<Row> = source_rows()
        .into_iter()
        .filter(|r| !MISSING.contains(&r.id))
        .collect();
    for row in rows.iter_mut() {
        match row.id {
            // Row 20 has a name in the source and NULL here; row 21 (21 % 7 == 0) has
            // NULL in the source and '' here.
            20 => row.name = None,
            21 => row.name = Some(String::new()),
            30 => row.price += 1,
            40 => row.ts += 1,
            50 => row.flag = !row.flag,
            60 => row.ratio += 1e-9,
            70 => row.quoted.push('!'),
            80 => row.select += 1,
            _ => {}
        }
    }
    let mut extra = rows[0].clone();
    extra.id = EXTRA;
    rows.push(extra);
    rows
}

fn timestamp_text(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

fn price_text(hundredths: i128) -> String {
    format!("{}.{:02}", hundredths / 100, hundredths % 100)
}

fn write_parquet(path: &std::path::Path, rows: &[Row]) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("price", DataType::Decimal128(12, 2), true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("flag", DataType::Boolean, true),
        Field::new("ratio", DataType::Float64, true),
        Field::new("a\"b", DataType::Utf8, true),
        Field::new("select", DataType::Int32, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.id))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.name.clone()))),
        Arc::new(
            Decimal128Array::from_iter_values(rows.iter().map(|r| r.price))
                .with_precision_and_scale(12, 2)
                .unwrap(),
        ),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.ts))
                .with_timezone("UTC"),
        ),
        Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.flag)))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.ratio))),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| &r.quoted),
        )),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.select))),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// `tab'le` in a SQLite database, typed as weir's SQLite sink declares its columns.
fn write_sqlite(path: &std::path::Path, rows: &[Row]) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        r#"DROP TABLE IF EXISTS "tab'le";
           CREATE TABLE "tab'le" ("id" INTEGER PRIMARY KEY, "name" TEXT, "price" DECIMAL(12,2),
               "ts" TIMESTAMPTZ, "flag" BOOLEAN, "ratio" REAL, "a""b" TEXT, "select" INTEGER)"#,
    )
    .unwrap();
    for r in rows {
        conn.execute(
            r#"INSERT INTO "tab'le" VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"#,
            rusqlite::params![
                r.id,
                r.name,
                price_text(r.price),
                timestamp_text(r.ts),
                r.flag,
                r.ratio,
                r.quoted,
                r.select
            ],
        )
        .unwrap();
    }
}

/// `table` in PostgreSQL, with the types a migration would give it.
fn write_postgres(pg: &Postgres, table: &str, rows: &[Row]) {
    let mut client = pg.client("reconcile");
    let quoted = format!("\"{}\"", table.replace('"', "\"\""));
    client
        .batch_execute(&format!(
            r#"DROP TABLE IF EXISTS {quoted};
               CREATE TABLE {quoted} (id bigint PRIMARY KEY, name text, price numeric(12,2),
                   ts timestamptz, flag boolean, ratio double precision, "a""b" text,
                   "select" integer)"#
        ))
        .unwrap();
    for r in rows {
        client
            .execute(
                &format!(
                    "INSERT INTO {quoted} VALUES ($1, $2, $3::text::numeric, $4::text::timestamptz, \
                     $5, $6, $7, $8)"
                ),
                &[
                    &r.id,
                    &r.name,
                    &price_text(r.price),
                    &timestamp_text(r.ts),
                    &r.flag,
                    &r.ratio,
                    &r.quoted,
                    &r.select,
                ],
            )
            .unwrap();
    }
}

fn pipeline(ws: &Workspace, reconcile: &str) -> std::path::PathBuf {
    ws.write(
        "pipeline.yaml",
        &format!(
            "name: orders\n\
             source: {{ type: file, path: events.jsonl }}\n\
             table: {{ name: orders, primary_key: [id] }}\n\
             sink: {{ type: sqlite, path: target.db }}\n\
             reconcile:\n{reconcile}"
        ),
    )
}

struct Outcome {
    code: i32,
    report: serde_json::Value,
    stderr: String,
}

fn reconcile(pipeline: &std::path::Path) -> Outcome {
    let output = common::weir()
        .args(["reconcile", "--json"])
        .arg(pipeline)
        .output()
        .unwrap();
    Outcome {
        code: output.status.code().unwrap(),
        report: serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn keys(rows: &serde_json::Value) -> BTreeSet<i64> {
    rows["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap().parse().unwrap())
        .collect()
}

/// Checks that the report names exactly the injected differences (all of them, or all
/// but the float one when a tolerance covers it).
fn assert_injected(report: &serde_json::Value, with_tolerance: bool) {
    assert_eq!(report["equal"], false, "{report:#}");
    assert_eq!(report["missing"]["count"], 2, "{report:#}");
    assert_eq!(keys(&report["missing"]), BTreeSet::from(MISSING));
    assert_eq!(report["extra"]["count"], 1, "{report:#}");
    assert_eq!(keys(&report["extra"]), BTreeSet::from([EXTRA]));
    let mut expected = injected();
    if with_tolerance {
        expected.remove(&60);
    }
    let found: BTreeMap<i64, Vec<String>> = report["mismatched"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let key = m["key"][0].as_str().unwrap().parse().unwrap();
            let columns = m["columns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["column"].as_str().unwrap().to_string())
                .collect();
            (key, columns)
        })
        .collect();
    let expected: BTreeMap<i64, Vec<String>> = expected
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().map(String::from).collect()))
        .collect();
    assert_eq!(found, expected, "{report:#}");
    assert_eq!(report["mismatched"]["count"], expected.len());
    // NULL and '' are different values, shown as null and "".
    let name = |id: i64| {
        report["mismatched"]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["key"][0].as_str() == Some(id.to_string().as_str()))
            .unwrap()["columns"][0]
            .clone()
    };
    assert_eq!(name(20)["target"], serde_json::Value::Null, "{report:#}");
    assert!(name(20)["source"].is_string());
    assert_eq!(name(21)["target"], "", "{report:#}");
    // Decimals and timestamps are shown exactly.
    let price = name(30);
    assert_eq!(
        (price["source"].as_str(), price["target"].as_str()),
        (
            Some(price_text(1000 + 30 * 37).as_str()),
            Some(price_text(1000 + 30 * 37 + 1).as_str())
        ),
        "{report:#}"
    );
}

#[test]
fn parquet_against_sqlite_names_every_injected_difference() {
    let ws = Workspace::new();
    std::fs::create_dir(ws.path("snapshot")).unwrap();
    write_parquet(&ws.path("snapshot/part-0.parquet"), &source_rows());
    write_sqlite(&ws.path("target.db"), &target_rows());
    let section = |extra: &str| {
        format!(
            "  source: {{ type: parquet, path: snapshot/ }}\n\
             \x20 target: {{ type: sqlite, path: target.db, table: \"tab'le\" }}\n\
             \x20 key: [id]\n{extra}\
             \x20 queries:\n\
             \x20   - name: rows\n\
             \x20     sql: SELECT count(*) AS n FROM target\n"
        )
    };
    let exact = reconcile(&pipeline(&ws, &section("")));
    if std::env::var("SHOW").is_ok() {
        let out = common::weir()
            .arg("reconcile")
            .arg(ws.path("pipeline.yaml"))
            .output()
            .unwrap();
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    }
    assert_eq!(exact.code, 1, "{}", exact.stderr);
    assert_injected(&exact.report, false);
    assert_eq!(exact.report["source"]["rows"], 200);
    assert_eq!(exact.report["target"]["rows"], 199);
    assert_eq!(
        exact.report["queries"][0]["rows"],
        serde_json::json!([["199"]])
    );

    // The HTML page: the verdict, the chart, the differing values, escaped.
    let html = ws.path("report.html");
    let status = common::weir()
        .args(["reconcile", "--html"])
        .arg(&html)
        .arg(ws.path("pipeline.yaml"))
        .output()
        .unwrap()
        .status;
    assert_eq!(status.code(), Some(1));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("DIFFERENT") && page.contains("<svg"),
        "{page}"
    );
    assert!(
        page.contains("tab&#39;le") && page.contains("a&quot;b"),
        "{page}"
    );
    assert!(page.contains("<td>21.10</td><td>21.11</td>"), "{page}");

    let tolerant = reconcile(&pipeline(&ws, &section("  float_tolerance: 0.000001\n")));
    assert_eq!(tolerant.code, 1, "{}", tolerant.stderr);
    assert_injected(&tolerant.report, true);

    // The repair script, on standard output alone (the report goes to standard error),
    // run by SQLite itself, brings the target to the source: equal, exit 0, and the
    // terminal report says so.
    let output = common::weir()
        .args(["reconcile", "--repair", "sql"])
        .arg(pipeline(&ws, &section("")))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let script = String::from_utf8(output.stdout).unwrap();
    assert!(script.starts_with("-- weir reconcile"), "{script}");
    assert!(!script.contains("missing in target"), "{script}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing in target"));
    let count = |prefix: &str| script.lines().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(
        (count("INSERT"), count("DELETE"), count("UPDATE")),
        (2, 1, 8),
        "{script}"
    );
    rusqlite::Connection::open(ws.path("target.db"))
        .unwrap()
        .execute_batch(&script)
        .unwrap();
    let output = common::weir()
        .arg("reconcile")
        .arg(pipeline(&ws, &section("")))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{text}\n{script}");
    assert!(text.contains("EQUAL"), "{text}");
}

#[test]
fn postgres_against_postgres_names_every_injected_difference() {
    let pg = Postgres::start();
    pg.create_database("reconcile");
    write_postgres(&pg, "src", &source_rows());
    write_postgres(&pg, "tab'le", &target_rows());
    let ws = Workspace::new();
    let url = pg.url("reconcile");
    let section = format!(
        "  source: {{ type: postgres, url: \"{url}\", query: \"SELECT * FROM src\" }}\n\
         \x20 target: {{ type: postgres, url: \"{url}\", table: \"public.tab'le\" }}\n"
    );
    let outcome = reconcile(&pipeline(&ws, &section));
    assert_eq!(outcome.code, 1, "{}", outcome.stderr);
    assert_injected(&outcome.report, false);

    // Checksum mode finds the same rows: the checksums are computed in PostgreSQL, and
    // only the rows of key ranges whose checksums differ are read.
    let checksum_section = format!(
        "{}  mode: checksum\n  checksum: {{ bucket_keys: 64, ranges: 3 }}\n",
        section.replace("query: \"SELECT * FROM src\"", "table: public.src")
    );
    let checksum = reconcile(&pipeline(&ws, &checksum_section));
    assert_eq!(checksum.code, 1, "{}", checksum.stderr);
    assert_injected(&checksum.report, false);
    for part in ["missing", "extra", "mismatched"] {
        assert_eq!(
            checksum.report[part], outcome.report[part],
            "{part}: checksum mode against full mode"
        );
    }
    let stats = &checksum.report["checksum"];
    assert_eq!(stats["ranges"], 3, "{stats}");
    // Rows 10, 11, 20…80 and 1000 differ: only their 32-key leaves are read, not the
    // 399 rows of both tables.
    assert!(stats["rows_read"].as_u64().unwrap() < 300, "{stats}");
    assert_eq!(checksum.report["source"]["rows"], 200);
    assert_eq!(checksum.report["target"]["rows"], 199);
    // Every column is hashed by its type's own hash function.
    assert_eq!(stats["hashed_as_text"], serde_json::json!([]), "{stats}");

    // A column whose type differs between the sides, and one whose type has no hash
    // function, are hashed as their text; the rows found stay the same.
    pg.client("reconcile")
        .batch_execute(
            r#"ALTER TABLE "tab'le" ALTER COLUMN "select" TYPE bigint;
               ALTER TABLE src ADD COLUMN doc json DEFAULT '{"a": [1, "ü"]}';
               ALTER TABLE "tab'le" ADD COLUMN doc json DEFAULT '{"a": [1, "ü"]}';"#,
        )
        .unwrap();
    let mixed = reconcile(&pipeline(&ws, &checksum_section));
    assert_eq!(mixed.code, 1, "{}", mixed.stderr);
    assert_eq!(
        mixed.report["checksum"]["hashed_as_text"],
        serde_json::json!(["select", "doc"]),
        "{}",
        mixed.report["checksum"]
    );
    assert_injected(&mixed.report, false);
    pg.client("reconcile")
        .batch_execute(
            r#"ALTER TABLE "tab'le" ALTER COLUMN "select" TYPE integer;
               ALTER TABLE src DROP COLUMN doc;
               ALTER TABLE "tab'le" DROP COLUMN doc;"#,
        )
        .unwrap();

    // A killed run resumes: the first run dies after one key range is recorded; the next
    // takes that range from the state file and finds the same rows.
    let killed = common::weir()
        .args(["reconcile", "--json"])
        .arg(ws.path("pipeline.yaml"))
        .env("WEIR_TEST_ABORT_AFTER_RANGES", "1")
        .output()
        .unwrap();
    assert!(!killed.status.success());
    let state = ws.path("orders.reconcile-state.json");
    assert!(state.exists(), "the killed run left its state");
    let resumed = reconcile(&ws.path("pipeline.yaml"));
    assert_eq!(resumed.code, 1, "{}", resumed.stderr);
    assert!(
        resumed.report["checksum"]["ranges_resumed"]
            .as_u64()
            .unwrap()
            >= 1,
        "{:#}",
        resumed.report["checksum"]
    );
    // For scripts/faults: a difference the uninterrupted run found and the resumed one
    // did not is lost; one only the resumed run found is stale.
    let mut figures = Figures {
        events: outcome.report["source"]["rows"].as_u64().unwrap_or(0),
        ..Figures::default()
    };
    let mut compared = 0;
    for part in ["missing", "extra", "mismatched"] {
        // Each difference by its row, as the report prints it.
        let rows = |report: &serde_json::Value| -> BTreeSet<String> {
            report[part]["rows"]
                .as_array()
                .map(|rows| rows.iter().map(|r| r.to_string()).collect())
                .unwrap_or_default()
        };
        let (found, after_kill) = (rows(&outcome.report), rows(&resumed.report));
        compared += found.len();
        figures.lost += found.difference(&after_kill).count() as u64;
        figures.stale += after_kill.difference(&found).count() as u64;
    }
    assert!(
        compared > 0,
        "the reports list their rows: {:#}",
        outcome.report
    );
    figures.report_and_check(
        "reconcile: PostgreSQL, checksum mode",
        "the reconcile killed after one key range",
    );
    for part in ["missing", "extra", "mismatched"] {
        assert_eq!(resumed.report[part], outcome.report[part], "{part}");
    }
    assert!(!state.exists(), "a finished run removes its state");
    pipeline(&ws, &section);

    // `--repair apply` runs the script in PostgreSQL, reconciles again, and exits 0.
    let output = common::weir()
        .args(["reconcile", "--repair", "apply"])
        .arg(ws.path("pipeline.yaml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains("repaired: 2 inserted, 1 deleted, 8 updated"),
        "{text}"
    );
    assert_eq!(reconcile(&ws.path("pipeline.yaml")).code, 0);
    // The repaired rows hold the source's exact values.
    let mut client = pg.client("reconcile");
    let read = |client: &mut postgres::Client, table: &str, id: i64| -> Vec<String> {
        let row = client
            .query_one(
                &format!(
                    "SELECT coalesce(name, '<null>'), price::text, ts::text, \"a\"\"b\" \
                     FROM \"{table}\" WHERE id = $1"
                ),
                &[&id],
            )
            .unwrap();
        (0..4).map(|i| row.get::<_, String>(i)).collect()
    };
    for id in [10, 20, 21, 30, 40, 70] {
        assert_eq!(
            read(&mut client, "tab'le", id),
            read(&mut client, "src", id)
        );
    }
}

#[test]
fn a_snapshot_that_cannot_be_read_exits_2_with_the_reason() {
    let ws = Workspace::new();
    let outcome = reconcile(&pipeline(
        &ws,
        "  source: { type: parquet, path: nowhere/ }\n  target: { type: sqlite, path: t.db, table: t }\n",
    ));
    assert_eq!(outcome.code, 2);
    assert!(
        outcome.stderr.contains("does not exist")
            && outcome.stderr.contains("reconcile.source.path"),
        "{}",
        outcome.stderr
    );
    // A password in the URL never reaches the message.
    let outcome = reconcile(&pipeline(
        &ws,
        "  source: { type: postgres, url: \"postgres://u:hunter2@127.0.0.1:1/db\", table: t }\n\
         \x20 target: { type: sqlite, path: t.db, table: t }\n",
    ));
    assert_eq!(outcome.code, 2);
    assert!(!outcome.stderr.contains("hunter2"), "{}", outcome.stderr);
    assert!(
        outcome.stderr.contains("cannot connect"),
        "{}",
        outcome.stderr
    );
}

/// A change log folds to the table it describes: the last change of each key, deletes
/// removed, a key move leaving the old key, everything before a truncate gone. The test's
/// own replay of the events is the oracle. A target that `weir run` fed from the same log
/// reconciles equal; tampered with, it does not, and the report names the rows.
#[test]
fn a_change_log_folds_to_its_final_state_and_checks_a_pipeline_s_target() {
    let ws = Workspace::new();
    let mut rng = weir_runtime::bench::Rng::new(5);
    let mut lines = Vec::new();
    let mut oracle: BTreeMap<i64, i64> = BTreeMap::new();
    for i in 0..600i64 {
        let id = rng.below(60) as i64;
        let choice = if i == 300 { u64::MAX } else { rng.below(10) };
        let event = match choice {
            u64::MAX => {
                oracle.clear();
                serde_json::json!({"op": "t", "source": {"table": "t"}})
            }
            0 if oracle.contains_key(&id) => {
                oracle.remove(&id);
                serde_json::json!({"op": "d", "before": {"id": id, "v": 0}})
            }
            1 if oracle.contains_key(&id) && !oracle.contains_key(&(id + 100)) => {
                // The key moves from id to id + 100.
                let v = oracle.remove(&id).unwrap();
                oracle.insert(id + 100, v + i);
                serde_json::json!({"op": "u", "before": {"id": id, "v": v}, "after": {"id": id + 100, "v": v + i}})
            }
            _ => {
                oracle.insert(id, i);
                serde_json::json!({"op": "u", "after": {"id": id, "v": i}})
            }
        };
        lines.push(event.to_string());
    }
    // A damaged record: skipped by the fold as by the run.
    lines.insert(100, r#"{"op":"u","after":{"id":"#.to_string());
    ws.append_lines("events.jsonl", &lines);
    let yaml = "name: log\n\
         source: { type: file, path: events.jsonl }\n\
         table: { name: t, primary_key: [id], columns: { id: int64, v: int64 } }\n\
         sink: { type: sqlite, path: target.db, create: true }\n\
         dead_letter: { type: file, path: dead-letters.jsonl }\n\
         reconcile:\n\
         \x20 source: { type: debezium, path: events.jsonl }\n\
         \x20 target: { type: sqlite, path: target.db, table: t }\n\
         \x20 queries:\n\
         \x20   - { name: rows, sql: 'SELECT id, v FROM source ORDER BY id' }\n";
    let pipeline = ws.write("pipeline.yaml", yaml);
    ws.run_ok(&pipeline);
    let outcome = reconcile(&pipeline);
    assert_eq!(outcome.code, 0, "{}\n{:#}", outcome.stderr, outcome.report);
    let folded: BTreeMap<i64, i64> = outcome.report["queries"][0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().parse().unwrap(),
                r[1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(folded, oracle);
    assert!(
        outcome.report["source"]["description"]
            .as_str()
            .unwrap()
            .contains("1 records could not be decoded"),
        "{:#}",
        outcome.report
    );

    // Tampered: one row gone, one changed, one added.
    let (&gone, &changed) = (oracle.keys().next().unwrap(), oracle.keys().nth(1).unwrap());
    rusqlite::Connection::open(ws.path("target.db"))
        .unwrap()
        .execute_batch(&format!(
            "DELETE FROM t WHERE id = {gone}; UPDATE t SET v = v + 1 WHERE id = {changed};
             INSERT INTO t VALUES (9999, 1);"
        ))
        .unwrap();
    let outcome = reconcile(&pipeline);
    assert_eq!(outcome.code, 1, "{}", outcome.stderr);
    assert_eq!(keys(&outcome.report["missing"]), BTreeSet::from([gone]));
    assert_eq!(keys(&outcome.report["extra"]), BTreeSet::from([9999]));
    assert_eq!(
        outcome.report["mismatched"]["rows"][0]["key"][0],
        changed.to_string()
    );
    assert_eq!(outcome.report["mismatched"]["count"], 1);
}

/// A live pipeline is compared at a consistent cut: rows changed within `min_age` (by
/// `updated_at`, on either side) may still be in flight and are left out; older
/// differences are reported. In full mode (SQLite) and in checksum mode (PostgreSQL).
#[test]
fn changes_within_min_age_are_left_out_of_the_comparison() {
    let now = chrono::Utc::now();
    let at = |seconds_ago: i64| {
        (now - chrono::Duration::seconds(seconds_ago))
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string()
    };
    // (id, value, updated_at) on each side. 1: equal. 2: differs, old. 3: differs, changed
    // at the source 10 s ago. 4: only in the source, 10 s old. 5: only in the target, old.
    // 6: differs, changed at the target 10 s ago.
    let source = [
        (1, 10, at(3600)),
        (2, 20, at(3600)),
        (3, 31, at(10)),
        (4, 40, at(10)),
        (6, 60, at(3600)),
    ];
    let target = [
        (1, 10, at(3600)),
        (2, 21, at(3600)),
        (3, 30, at(3600)),
        (5, 50, at(3600)),
        (6, 61, at(10)),
    ];
    let expect = |report: &serde_json::Value| {
        assert_eq!(keys(&report["missing"]), BTreeSet::new(), "{report:#}");
        assert_eq!(keys(&report["extra"]), BTreeSet::from([5]), "{report:#}");
        let mismatched: BTreeSet<String> = report["mismatched"]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["key"][0].as_str().unwrap().to_string())
            .collect();
        assert_eq!(mismatched, BTreeSet::from(["2".to_string()]), "{report:#}");
        assert!(report["cut"].as_str().unwrap().contains("updated_at"));
    };
    let cut = "  cut: { column: updated_at, min_age: 5m }\n";

    let ws = Workspace::new();
    for (db, rows) in [("a.db", &source), ("b.db", &target)] {
        let conn = rusqlite::Connection::open(ws.path(db)).unwrap();
        conn.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER, updated_at TIMESTAMPTZ)",
        )
        .unwrap();
        for (id, v, ts) in rows.iter() {
            conn.execute(
                "INSERT INTO t VALUES (?1, ?2, ?3)",
                rusqlite::params![id, v, ts],
            )
            .unwrap();
        }
    }
    let outcome = reconcile(&pipeline(
        &ws,
        &format!(
            "  source: {{ type: sqlite, path: a.db, table: t }}\n\
             \x20 target: {{ type: sqlite, path: b.db, table: t }}\n{cut}"
        ),
    ));
    assert_eq!(outcome.code, 1, "{}", outcome.stderr);
    expect(&outcome.report);

    let pg = Postgres::start();
    pg.create_database("reconcile");
    let mut client = pg.client("reconcile");
    for (table, rows) in [("a", &source), ("b", &target)] {
        client
            .batch_execute(&format!(
                "CREATE TABLE {table} (id bigint PRIMARY KEY, v bigint, updated_at timestamptz)"
            ))
            .unwrap();
        for (id, v, ts) in rows.iter() {
            client
                .execute(
                    &format!("INSERT INTO {table} VALUES ($1, $2, $3::text::timestamptz)"),
                    &[&(*id as i64), &(*v as i64), ts],
                )
                .unwrap();
        }
    }
    let url = pg.url("reconcile");
    let outcome = reconcile(&pipeline(
        &ws,
        &format!(
            "  source: {{ type: postgres, url: \"{url}\", table: a }}\n\
             \x20 target: {{ type: postgres, url: \"{url}\", table: b }}\n\
             \x20 mode: checksum\n{cut}"
        ),
    ));
    assert_eq!(outcome.code, 1, "{}", outcome.stderr);
    expect(&outcome.report);
}

/// A live pipeline from Kafka: `weir reconcile` reads the change log from the topic up to
/// its end, waits until the running pipeline has applied every partition up to that end
/// (the checkpoint its SQLite sink stores), and only then compares.
#[test]
fn a_kafka_change_log_against_a_running_pipeline_after_waiting_for_it() {
    let broker = Broker::start();
    broker.create_topic("products", 3);
    let records = common::keyed_by_id(&common::fixture("flink/debezium-data-schema-exclude.txt"));
    broker.produce("products", &records);

    let ws = Workspace::new();
    let yaml = |group: &str, sink: &str, wait: &str| {
        format!(
            "name: live\n\
             source: {{ type: kafka, brokers: \"{b}\", topics: [products], group_id: {group} }}\n\
             table:\n  name: products\n  primary_key: [id]\n  \
             columns: {{id: int32, name: string, description: string, weight: float32}}\n\
             sink: {sink}\n\
             reconcile:\n  source: {{ type: debezium, topic: products }}\n  \
             target: {{ type: sqlite, path: target.db, table: products }}\n  wait: {wait}\n",
            b = broker.address()
        )
    };
    let sqlite_sink = "{ type: sqlite, path: target.db, create: true }";
    let pipeline = ws.write(
        "pipeline.yaml",
        &yaml("live", sqlite_sink, "{ timeout: 90s }"),
    );
    let run = common::weir()
        .args(["run", "-q", "--stop-when-idle", "5s"])
        .arg(&pipeline)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Started at once: the pipeline is still joining its group, and the target database
    // may not exist yet. The comparison waits for the pipeline to apply the topic's end.
    let live = reconcile(&pipeline);
    assert_eq!(live.code, 0, "{}\n{:#}", live.stderr, live.report);
    let positions = live.report["waited"]["positions"].as_object().unwrap();
    assert_eq!(positions.len(), 3, "{positions:?}");
    assert!(positions.contains_key("kafka:products/0"), "{positions:?}");
    let ends: i64 = positions.values().map(|v| v.as_i64().unwrap()).sum();
    assert_eq!(ends, records.len() as i64, "{positions:?}");
    assert_eq!(live.report["source"]["rows"], 10, "{:#}", live.report);
    assert_eq!(live.report["target"]["rows"], 10, "{:#}", live.report);
    assert!(
        live.report["source"]["description"]
            .as_str()
            .unwrap()
            .contains("topic products (16 changes"),
        "{:#}",
        live.report["source"]
    );
    let finished = run.wait_with_output().unwrap();
    assert!(
        finished.status.success(),
        "{}",
        String::from_utf8_lossy(&finished.stderr)
    );

    // The log read from the topic catches a row the target lost.
    rusqlite::Connection::open(ws.path("target.db"))
        .unwrap()
        .execute("DELETE FROM products WHERE id = 105", [])
        .unwrap();
    let tampered = reconcile(&pipeline);
    assert_eq!(tampered.code, 1, "{}", tampered.stderr);
    assert_eq!(keys(&tampered.report["missing"]), BTreeSet::from([105]));

    // A source that names its topics by a pattern: the wait finds them on the broker.
    ws.write(
        "pipeline.yaml",
        &yaml("live", sqlite_sink, "{ timeout: 30s }")
            .replace("topics: [products]", "topic_pattern: \"prod.*\""),
    );
    let by_pattern = reconcile(&pipeline);
    assert_eq!(by_pattern.code, 1, "{}", by_pattern.stderr);
    assert_eq!(
        by_pattern.report["waited"]["positions"],
        live.report["waited"]["positions"]
    );

    // The log stops where the wait stopped: with partition 1 waited for only up to its
    // first record, the log holds that partition's first change alone, and the target,
    // which has all of them, differs.
    let partition_1 = positions["kafka:products/1"].as_i64().unwrap();
    assert!(partition_1 > 1, "{positions:?}");
    ws.write(
        "pipeline.yaml",
        &yaml(
            "live",
            sqlite_sink,
            "{ positions: { products/1: 1 }, timeout: 30s }",
        ),
    );
    let early = reconcile(&pipeline);
    assert_eq!(early.code, 1, "{}", early.stderr);
    let changes = records.len() as i64 - (partition_1 - 1);
    assert!(
        early.report["source"]["description"]
            .as_str()
            .unwrap()
            .contains(&format!("topic products ({changes} changes")),
        "{:#}",
        early.report["source"]
    );

    // A position the pipeline never reaches: exit 2 once the timeout passes, naming the
    // stream and how far it got.
    ws.write(
        "pipeline.yaml",
        &yaml(
            "live",
            sqlite_sink,
            "{ positions: { products/1: 100000 }, timeout: 1s }",
        ),
    );
    let behind = reconcile(&pipeline);
    assert_eq!(behind.code, 2, "{:#}", behind.report);
    assert!(
        behind.stderr.contains("kafka:products/1 at ") && behind.stderr.contains("of 100000"),
        "{}",
        behind.stderr
    );

    // A sink that stores no checkpoint (JSON lines): the wait reads the consumer group's
    // committed offsets instead. The group `live` committed the topic's end; a group that
    // never ran has committed nothing, and the wait gives up.
    let jsonl_sink = "{ type: jsonl, path: out.jsonl }";
    ws.write(
        "pipeline.yaml",
        &yaml("live", jsonl_sink, "{ timeout: 30s }"),
    );
    let committed = reconcile(&pipeline);
    assert_eq!(committed.code, 1, "{}", committed.stderr);
    assert_eq!(
        committed.report["waited"]["positions"]
            .as_object()
            .unwrap()
            .len(),
        3
    );
    ws.write(
        "pipeline.yaml",
        &yaml("never-ran", jsonl_sink, "{ timeout: 1s }"),
    );
    let never = reconcile(&pipeline);
    assert_eq!(never.code, 2, "{:#}", never.report);
    assert!(never.stderr.contains(" at 0 of "), "{}", never.stderr);
}
