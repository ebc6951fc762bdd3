//! Many-table pipelines (`tables:`) from a change-log file into SQLite: every selected
//! table applied to its own target table in one transaction per batch, skipped tables
//! counted, keys from the override, the default or the target, and per-table schemas.
//! Every target table is compared with an independent oracle's final state.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{Workspace, sqlite_rows};

/// A source table of the synthetic capture: its `source` block names and its key.
#[derive(Clone, Copy)]
struct Source {
    /// `db` (MySQL style) or `schema` (PostgreSQL style), by `postgres`.
    space: &'static str,
    table: &'static str,
    postgres: bool,
    /// Keys are `key_base + n`, so shards of one target never share a key.
    key_base: i64,
}

impl Source {
    const fn mysql(db: &'static str, table: &'static str, key_base: i64) -> Source {
        Source {
            space: db,
            table,
            postgres: false,
            key_base,
        }
    }

    fn name(&self) -> String {
        format!("{}.{}", self.space, self.table)
    }

    fn source_block(&self) -> String {
        if self.postgres {
            format!(
                r#"{{"connector":"postgresql","db":"shop","schema":"{}","table":"{}"}}"#,
                self.space, self.table
            )
        } else {
            format!(
                r#"{{"connector":"mysql","db":"{}","table":"{}"}}"#,
                self.space, self.table
            )
        }
    }
}

/// One row image: five columns of five types (int64 key, text, int64, float64, boolean).
fn row(id: i64, version: i64) -> String {
    format!(
        r#"{{"id":{id},"name":"n-{id}-{version}","qty":{},"price":{}.5,"active":{}}}"#,
        version * 3,
        id % 97,
        version % 2 == 0
    )
}

/// The rendering `sqlite_rows` gives of [`row`].
fn row_text(id: i64, version: i64) -> Vec<String> {
    vec![
        id.to_string(),
        format!("n-{id}-{version}"),
        (version * 3).to_string(),
        format!("{}.5", id % 97),
        if version % 2 == 0 { "1" } else { "0" }.to_string(),
    ]
}

/// A stream of inserts, updates and deletes over `sources`, interleaved, and the final
/// rows an oracle computes per source table (last change per key wins, deletes remove).
struct Capture {
    lines: Vec<String>,
    /// Source table -> id -> version.
    finals: BTreeMap<String, BTreeMap<i64, i64>>,
}

fn capture(sources: &[Source], events: usize, keys: i64, seed: u64) -> Capture {
    let mut rng = weir_runtime::bench::Rng::new(seed);
    let mut finals: BTreeMap<String, BTreeMap<i64, i64>> = BTreeMap::new();
    let mut versions: BTreeMap<(usize, i64), i64> = BTreeMap::new();
    let mut lines = Vec::with_capacity(events);
    for i in 0..events {
        let which = (rng.next_u64() % sources.len() as u64) as usize;
        let source = sources[which];
        let id = source.key_base + (rng.next_u64() % keys as u64) as i64;
        let rows = finals.entry(source.name()).or_default();
        let version = versions.entry((which, id)).or_insert(0);
        *version += 1;
        let line = match rows.get(&id).copied() {
            Some(old) if rng.next_u64().is_multiple_of(8) => {
                rows.remove(&id);
                format!(
                    r#"{{"op":"d","before":{},"after":null,"source":{},"ts_ms":{i}}}"#,
                    row(id, old),
                    source.source_block()
                )
            }
            old => {
                rows.insert(id, *version);
                format!(
                    r#"{{"op":"{}","before":{},"after":{},"source":{},"ts_ms":{i}}}"#,
                    if old.is_some() { "u" } else { "c" },
                    old.map_or("null".into(), |v| row(id, v)),
                    row(id, *version),
                    source.source_block()
                )
            }
        };
        lines.push(line);
    }
    Capture { lines, finals }
}

fn table_rows(db: &Path, table: &str) -> Vec<Vec<String>> {
    sqlite_rows(
        db,
        &format!("SELECT id, name, qty, price, active FROM \"{table}\" ORDER BY id"),
    )
}

fn expected(finals: &[&BTreeMap<i64, i64>]) -> Vec<Vec<String>> {
    let mut merged: BTreeMap<i64, i64> = BTreeMap::new();
    for rows in finals {
        merged.extend(rows.iter());
    }
    merged.iter().map(|(id, v)| row_text(*id, *v)).collect()
}

fn target_tables(db: &Path) -> Vec<String> {
    sqlite_rows(
        db,
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE '\\_weir%' \
         ESCAPE '\\' ORDER BY name",
    )
    .into_iter()
    .map(|r| r[0].clone())
    .collect()
}

/// The issue's second pipeline, as written: every table of the file, keyed by `id`.
const SHOP: &str = "\
name: shop
source: { type: file, path: events.jsonl, format: debezium-json }
tables:
  include: ['*']
  primary_key: [id]
sink: { type: sqlite, path: target.db, create: true }
";

#[test]
fn the_issue_s_file_pipeline_applies_every_table_to_its_own_target() {
    let w = Workspace::new();
    let sources = [
        Source::mysql("shop", "customers", 0),
        Source::mysql("shop", "orders", 0),
        Source {
            postgres: true,
            ..Source::mysql("public", "products", 0)
        },
    ];
    let capture = capture(&sources, 3000, 150, 7);
    w.append_lines("events.jsonl", &capture.lines);
    let pipeline = w.write("shop.yaml", SHOP);
    let summary = w.run_ok(&pipeline);
    let db = w.path("target.db");
    assert_eq!(target_tables(&db), ["customers", "orders", "products"]);
    for source in &sources {
        assert_eq!(
            table_rows(&db, source.table),
            expected(&[&capture.finals[&source.name()]]),
            "table {}",
            source.name()
        );
    }
    // Per-table counts: every change of each table decoded and applied.
    let tables = &summary["tables"];
    for source in &sources {
        let name = source.name();
        let events = capture
            .lines
            .iter()
            .filter(|l| l.contains(&source.source_block()))
            .count() as u64;
        assert_eq!(tables[&name]["target"], source.table, "{summary}");
        assert_eq!(tables[&name]["rows"], events, "{summary}");
        assert_eq!(tables[&name]["applied"], events, "{summary}");
    }
    assert_eq!(summary["rows_applied"], capture.lines.len() as u64);
    assert_eq!(summary["dead_letters"], 0, "{summary}");

    // The checkpoint is one for all tables: a second run applies nothing again.
    let again = w.run_ok(&pipeline);
    assert_eq!(again["rows_applied"], 0, "{again}");
}

#[test]
fn include_exclude_and_route_choose_the_tables_and_merge_shards() {
    let w = Workspace::new();
    let sources = [
        Source::mysql("inventory", "customers", 0),
        Source::mysql("inventory", "orders_shard_1", 0),
        Source::mysql("inventory", "orders_shard_2", 100_000),
        Source::mysql("inventory", "audit_log", 0),
        Source::mysql("billing", "invoices", 0),
    ];
    let capture = capture(&sources, 4000, 200, 11);
    w.append_lines("events.jsonl", &capture.lines);
    let pipeline = w.write(
        "inventory.yaml",
        "\
name: inventory
source: { type: file, path: events.jsonl, format: debezium-json }
tables:
  include: ['inventory.*']
  exclude: ['inventory.audit_log']
  route:
    - source: 'inventory.orders_shard_*'
      target: orders
  primary_key: [id]
sink: { type: sqlite, path: target.db, create: true }
dead_letter: { type: file, path: dead-letters.jsonl }
",
    );
    let summary = w.run_ok(&pipeline);
    let db = w.path("target.db");
    assert_eq!(target_tables(&db), ["customers", "orders"]);
    assert_eq!(
        table_rows(&db, "customers"),
        expected(&[&capture.finals["inventory.customers"]])
    );
    assert_eq!(
        table_rows(&db, "orders"),
        expected(&[
            &capture.finals["inventory.orders_shard_1"],
            &capture.finals["inventory.orders_shard_2"],
        ])
    );
    let count = |table: &str| {
        capture
            .lines
            .iter()
            .filter(|l| l.contains(&format!(r#""table":"{table}""#)))
            .count() as u64
    };
    let tables = &summary["tables"];
    assert_eq!(tables["inventory.audit_log"]["skipped"], count("audit_log"));
    assert_eq!(tables["inventory.audit_log"]["target"], "");
    assert_eq!(tables["billing.invoices"]["skipped"], count("invoices"));
    assert_eq!(tables["inventory.orders_shard_2"]["target"], "orders");
    assert_eq!(
        tables["inventory.orders_shard_2"]["applied"],
        count("orders_shard_2")
    );
    assert!(w.dead_letters().is_empty(), "{:?}", w.dead_letters());
}

#[test]
fn keys_come_from_the_override_the_default_or_the_target_else_a_dead_letter_says_where() {
    let w = Workspace::new();
    // `lines` has a composite key only its override names; `notes` has its key in the
    // target alone; `orphans` has none anywhere.
    let event = |table: &str, after: &str, i: usize| {
        format!(
            r#"{{"op":"c","before":null,"after":{after},"source":{{"db":"app","table":"{table}"}},"ts_ms":{i}}}"#
        )
    };
    let lines = vec![
        event("lines", r#"{"order_id":1,"item":"a","qty":1}"#, 1),
        event("lines", r#"{"order_id":1,"item":"b","qty":2}"#, 2),
        event("lines", r#"{"order_id":1,"item":"a","qty":5}"#, 3),
        event("notes", r#"{"note_id":7,"body":"first"}"#, 4),
        event("notes", r#"{"note_id":7,"body":"second"}"#, 5),
        event("orphans", r#"{"x":1}"#, 6),
    ];
    w.append_lines("events.jsonl", &lines);
    let conn = rusqlite::Connection::open(w.path("target.db")).unwrap();
    conn.execute_batch("CREATE TABLE notes (note_id INTEGER PRIMARY KEY, body TEXT)")
        .unwrap();
    drop(conn);
    let pipeline = w.write(
        "keys.yaml",
        "\
name: keys
source: { type: file, path: events.jsonl, format: debezium-json }
tables:
  overrides:
    app.lines: { primary_key: [order_id, item] }
sink: { type: sqlite, path: target.db, create: true }
dead_letter: { type: file, path: dead-letters.jsonl }
",
    );
    let summary = w.run_ok(&pipeline);
    let db = w.path("target.db");
    assert_eq!(
        sqlite_rows(&db, "SELECT order_id, item, qty FROM lines ORDER BY item"),
        [["1", "a", "5"], ["1", "b", "2"]]
    );
    assert_eq!(
        sqlite_rows(&db, "SELECT note_id, body FROM notes"),
        [["7", "second"]]
    );
    assert_eq!(target_tables(&db), ["lines", "notes"]);
    let letters = w.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["table"], "app.orphans");
    let error = letters[0]["error"].as_str().unwrap();
    assert!(
        error.contains("tables.overrides.app.orphans.primary_key")
            && error.contains("tables.primary_key"),
        "{error}"
    );
    assert_eq!(summary["tables"]["app.orphans"]["dead_letters"], 1);
}

#[test]
fn each_table_evolves_its_own_schema_and_an_incompatible_change_names_its_table() {
    let w = Workspace::new();
    let event = |table: &str, after: &str, i: usize| {
        format!(
            r#"{{"op":"c","before":null,"after":{after},"source":{{"db":"app","table":"{table}"}},"ts_ms":{i}}}"#
        )
    };
    w.append_lines(
        "events.jsonl",
        &[
            event("a", r#"{"id":1,"v":"x"}"#, 1),
            event("b", r#"{"id":1,"w":10}"#, 2),
            // `a` gains a column; `b` does not see it.
            event("a", r#"{"id":2,"v":"y","extra":true}"#, 3),
            event("b", r#"{"id":2,"w":11}"#, 4),
        ],
    );
    let pipeline = w.write("evolve.yaml", &SHOP.replace("name: shop", "name: evolve"));
    w.run_ok(&pipeline);
    let db = w.path("target.db");
    let columns = |table: &str| {
        sqlite_rows(
            &db,
            &format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid"),
        )
        .concat()
    };
    assert_eq!(columns("a"), ["id", "v", "extra"]);
    assert_eq!(columns("b"), ["id", "w"]);
    assert_eq!(
        sqlite_rows(&db, "SELECT id, v, extra FROM a ORDER BY id"),
        [["1", "x", "NULL"], ["2", "y", "1"]]
    );

    // A column of `b` whose schema block turns it from a number to text cannot be
    // converted: the run stops, naming table and column, after applying everything
    // before the event.
    let with_schema = |w_type: &str, w: &str, i: usize| {
        let fields = format!(
            r#"[{{"type":"int64","optional":false,"field":"id"}},{{"type":"{w_type}","optional":true,"field":"w"}}]"#
        );
        format!(
            r#"{{"schema":{{"type":"struct","fields":[{{"type":"struct","fields":{fields},"optional":true,"field":"before"}},{{"type":"struct","fields":{fields},"optional":true,"field":"after"}},{{"type":"string","optional":false,"field":"op"}}]}},"payload":{}}}"#,
            event("b", &format!(r#"{{"id":{i},"w":{w}}}"#), i)
        )
    };
    w.append_lines(
        "events.jsonl",
        &[
            with_schema("int64", "12", 3),
            event("a", r#"{"id":3,"v":"z"}"#, 5),
            with_schema("string", r#""eleven""#, 4),
        ],
    );
    let run = w.run(&pipeline, &[]);
    assert!(!run.output.status.success());
    let stderr = run.stderr();
    assert!(stderr.contains("column `w` of table `app.b`"), "{stderr}");
    assert_eq!(sqlite_rows(&db, "SELECT count(*) FROM a"), [["3"]]);
    assert_eq!(
        sqlite_rows(&db, "SELECT id, w FROM b ORDER BY id"),
        [["1", "10"], ["2", "11"], ["3", "12"]]
    );
}

#[test]
fn two_source_tables_of_one_name_are_not_merged_by_accident() {
    let w = Workspace::new();
    let sources = [
        Source::mysql("east", "customers", 0),
        Source::mysql("west", "customers", 0),
    ];
    let capture = capture(&sources, 200, 20, 3);
    w.append_lines("events.jsonl", &capture.lines);
    let pipeline = w.write(
        "clash.yaml",
        &(SHOP.replace("name: shop", "name: clash")
            + "dead_letter: { type: file, path: dead-letters.jsonl }\n"),
    );
    w.run_ok(&pipeline);
    // The first table seen owns `customers`; the other's events are dead letters that
    // say how to route them.
    let first = if capture.lines[0].contains("east") {
        "east.customers"
    } else {
        "west.customers"
    };
    let other = if first == "east.customers" {
        "west.customers"
    } else {
        "east.customers"
    };
    assert_eq!(
        table_rows(&w.path("target.db"), "customers"),
        expected(&[&capture.finals[first]])
    );
    let letters = w.dead_letters();
    let events_of_other = capture
        .lines
        .iter()
        .filter(|l| l.contains(&format!(r#""db":"{}""#, &other[..4])))
        .count();
    assert_eq!(letters.len(), events_of_other);
    assert!(
        letters
            .iter()
            .all(|l| l["table"] == other && l["stage"] == "route")
    );
    assert!(
        letters[0]["error"]
            .as_str()
            .unwrap()
            .contains("add a `tables.route` rule"),
        "{:?}",
        letters[0]
    );
}

/// The reader decodes a poll of many tables grouped by table. Across many small polls
/// every table still gets its rows in order and dead letters keep the stream's order;
/// an event that stops the run inside such a poll still applies exactly the events
/// before it, and dead-letters none after it.
#[test]
fn a_poll_grouped_by_table_still_stops_exactly_at_an_incompatible_change() {
    let w = Workspace::new();
    let event = |table: &str, id: usize, w: &str| {
        format!(
            r#"{{"op":"c","before":null,"after":{{"id":{id},"w":{w}}},"source":{{"db":"app","table":"{table}"}},"ts_ms":{id}}}"#
        )
    };
    // `b`'s `w` turns from a number to text: it cannot be converted.
    let retyped = |id: usize| {
        let fields = r#"[{"type":"int64","optional":false,"field":"id"},{"type":"string","optional":true,"field":"w"}]"#;
        format!(
            r#"{{"schema":{{"type":"struct","fields":[{{"type":"struct","fields":{fields},"optional":true,"field":"before"}},{{"type":"struct","fields":{fields},"optional":true,"field":"after"}},{{"type":"string","optional":false,"field":"op"}}]}},"payload":{}}}"#,
            event("b", id, r#""text""#)
        )
    };
    let tables = ["a", "b", "c"];
    let stop = 1_000;
    let mut lines = Vec::new();
    for id in 0..1_200 {
        let table = tables[id % 3];
        lines.push(match id {
            _ if id == stop => retyped(id),
            // An event with an unknown `op`: a dead letter of its table.
            _ if id % 97 == 5 => event(table, id, "1").replace(r#""op":"c""#, r#""op":"?""#),
            _ => event(table, id, &id.to_string()),
        });
    }
    w.append_lines("events.jsonl", &lines);
    // Polls of 40 records: most are decoded grouped, some (at batch limits) in order.
    let pipeline = w.write(
        "grouped.yaml",
        &(SHOP.replace("name: shop", "name: grouped")
            + "batch: { max_events: 40, max_total_events: 200 }
" + "dead_letter: { type: file, path: dead-letters.jsonl }\n"),
    );
    let run = w.run(&pipeline, &[]);
    assert!(!run.output.status.success());
    let stderr = run.stderr();
    assert!(stderr.contains("column `w` of table `app.b`"), "{stderr}");
    let db = w.path("target.db");
    for (t, table) in tables.iter().enumerate() {
        let expected: Vec<Vec<String>> = (0..stop)
            .filter(|id| id % 3 == t && id % 97 != 5)
            .map(|id| vec![id.to_string(), id.to_string()])
            .collect();
        assert_eq!(
            sqlite_rows(&db, &format!("SELECT id, w FROM {table} ORDER BY id")),
            expected,
            "table {table}"
        );
    }
    let letters: Vec<u64> = w
        .dead_letters()
        .iter()
        .map(|l| l["source"]["line"].as_u64().expect("a line"))
        .collect();
    let expected: Vec<u64> = (0..stop as u64)
        .filter(|id| id % 97 == 5)
        .map(|id| id + 1)
        .collect();
    assert_eq!(letters, expected);
}

#[test]
fn a_run_killed_at_random_points_ends_equal_to_the_oracle() {
    use std::time::Duration;
    let w = Workspace::new();
    let sources: Vec<Source> = [
        "t00", "t01", "t02", "t03", "t04", "t05", "t06", "t07", "t08", "t09", "t10", "t11",
    ]
    .iter()
    .map(|t| Source::mysql("app", t, 0))
    .collect();
    let capture = capture(&sources, 300_000, 500, 21);
    w.append_lines("events.jsonl", &capture.lines);
    let pipeline = w.write(
        "kill.yaml",
        &(SHOP.replace("name: shop", "name: kill") + "batch: { max_events: 2000 }\n"),
    );
    // How far the target is: the line its checkpoint stores (0 before the first batch).
    let db = w.path("target.db");
    let progress = || -> i64 {
        rusqlite::Connection::open(&db)
            .and_then(|c| {
                c.query_row(
                    "SELECT coalesce(max(line), 0) FROM _weir_checkpoints WHERE pipeline = 'kill'",
                    [],
                    |r| r.get(0),
                )
            })
            .unwrap_or(0)
    };
    let mut rng = weir_runtime::bench::Rng::new(5);
    let mut killed = 0;
    for _ in 0..5 {
        let before = progress();
        let mut child = common::weir()
            .args(["run", "--quiet"])
            .arg(&pipeline)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Killed at a random point after this run has committed something.
        while progress() <= before && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.next_u64() % 100));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        }
        child.wait().unwrap();
    }
    assert!(killed > 0, "no run was killed: make the stream longer");
    w.run_ok(&pipeline);
    let db = w.path("target.db");
    for source in &sources {
        assert_eq!(
            table_rows(&db, source.table),
            expected(&[&capture.finals[&source.name()]]),
            "table {} after {killed} kills",
            source.name()
        );
    }
}

/// `weir reconcile` on a many-table pipeline into SQLite: the change log split by table
/// against the target's tables, in the pipeline's routing; one table made to differ is
/// named alone, and `--repair apply` brings it back.
#[test]
fn reconcile_compares_every_routed_table_and_repairs_the_one_that_differs() {
    let w = Workspace::new();
    let sources = [
        Source::mysql("inventory", "customers", 0),
        Source::mysql("inventory", "orders_shard_1", 0),
        Source::mysql("inventory", "orders_shard_2", 100_000),
        Source::mysql("inventory", "audit_log", 0),
    ];
    let capture = capture(&sources, 3000, 150, 23);
    w.append_lines("events.jsonl", &capture.lines);
    let pipeline = w.write(
        "inventory.yaml",
        "\
name: inventory
source: { type: file, path: events.jsonl, format: debezium-json }
tables:
  include: ['inventory.*']
  exclude: ['inventory.audit_log']
  route:
    - source: 'inventory.orders_shard_*'
      target: orders
  primary_key: [id]
sink: { type: sqlite, path: target.db, create: true }
reconcile:
  source: { type: debezium }
  target: { type: sqlite, path: target.db }
",
    );
    w.run_ok(&pipeline);
    let reconcile = |args: &[&str]| {
        let out = common::weir()
            .arg("reconcile")
            .args(args)
            .arg(&pipeline)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, text, err) = reconcile(&[]);
    assert_eq!(code, Some(0), "{text}{err}");
    assert!(text.contains("EQUAL: every table"), "{text}");
    let (_, json, _) = reconcile(&["--json"]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let tables: Vec<(&str, u64)> = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["table"].as_str().unwrap(),
                t["target_rows"].as_u64().unwrap(),
            )
        })
        .collect();
    let orders = capture.finals["inventory.orders_shard_1"].len()
        + capture.finals["inventory.orders_shard_2"].len();
    assert_eq!(
        tables,
        [
            (
                "customers",
                capture.finals["inventory.customers"].len() as u64
            ),
            ("orders", orders as u64)
        ]
    );
    assert_eq!(
        report["skipped"],
        serde_json::json!(["inventory.audit_log"])
    );

    let db = rusqlite::Connection::open(w.path("target.db")).unwrap();
    let gone: i64 = db
        .query_row(
            "DELETE FROM customers WHERE id = (SELECT max(id) FROM customers) RETURNING id",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(db);
    let html = w.path("report.html");
    let (code, text, err) = reconcile(&["--html", html.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{text}{err}");
    assert!(
        text.contains("DIFFERENT: 1 of 2 tables differ: customers"),
        "{text}"
    );
    assert!(text.contains(&format!("id={gone}")), "{text}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("id=\"table-customers\""), "{page}");

    // `--repair sql`: only the script on standard output, under its table's name.
    let (code, script, report) = reconcile(&["--repair", "sql"]);
    assert_eq!(code, Some(1), "{script}{report}");
    assert!(
        report.contains("DIFFERENT: 1 of 2 tables differ"),
        "{report}"
    );
    assert!(script.starts_with("-- table customers\n"), "{script}");
    assert!(
        script.contains("INSERT INTO \"customers\"") && !script.contains("\"orders\""),
        "{script}"
    );

    let (code, text, err) = reconcile(&["--repair", "apply"]);
    assert_eq!(code, Some(0), "{text}{err}");
    assert!(text.contains("repaired 1 tables: 1 inserted"), "{text}");
}

#[test]
fn the_pipeline_file_is_checked_for_many_tables() {
    let w = Workspace::new();
    let check = |yaml: &str| {
        let path = w.write("p.yaml", yaml);
        let out = common::weir().arg("validate").arg(&path).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout),
        )
    };
    assert!(check(SHOP).0, "{}", check(SHOP).1);
    let both = check(&format!("{SHOP}table: {{ name: t, primary_key: [id] }}\n"));
    assert!(!both.0 && both.1.contains("either `table`"), "{}", both.1);
    let lanes = check(&format!(
        "{SHOP}conflict: {{ strategy: last-write-wins, version_column: qty, lanes: 4 }}\n"
    ));
    assert!(
        !lanes.0 && lanes.1.contains("`lanes` does not work with `tables`"),
        "{}",
        lanes.1
    );
    let one_table = check(&format!(
        "{SHOP}reconcile:\n  source: {{ type: debezium }}\n  \
         target: {{ type: sqlite, path: target.db, table: orders }}\n  key: [id]\n"
    ));
    assert!(
        !one_table.0
            && one_table.1.contains("compares every table it routes")
            && one_table.1.contains("`key` is for a one-table pipeline"),
        "{}",
        one_table.1
    );
    let named = check(&SHOP.replace("create: true", "create: true, table: t"));
    assert!(!named.0 && named.1.contains("`sink.table`"), "{}", named.1);
    let pattern = check(&SHOP.replace("include: ['*']", "include: ['[a-']"));
    assert!(
        !pattern.0 && pattern.1.contains("is not a table pattern"),
        "{}",
        pattern.1
    );
}

/// A Debezium record key with its schema, as the JSON converter writes it.
fn key_with_schema(topic: &str, fields: &[(&str, &str, String)]) -> String {
    let schema: Vec<String> = fields
        .iter()
        .map(|(name, ty, _)| format!(r#"{{"type":"{ty}","optional":false,"field":"{name}"}}"#))
        .collect();
    let payload: Vec<String> = fields
        .iter()
        .map(|(name, _, value)| format!(r#""{name}":{value}"#))
        .collect();
    format!(
        r#"{{"schema":{{"type":"struct","fields":[{}],"optional":false,"name":"{topic}.Key"}},"payload":{{{}}}}}"#,
        schema.join(","),
        payload.join(",")
    )
}

/// The issue's Kafka pipeline shape, into SQLite: one topic per table matched by
/// `topic_pattern`, keys from the record keys (with their schema), an excluded table, and
/// a topic created while the pipeline runs.
#[test]
fn kafka_topics_per_table_with_record_keys_and_a_topic_created_mid_run() {
    use common::services::Broker;
    use std::time::{Duration, Instant};
    let broker = Broker::start();
    let w = Workspace::new();
    let topic = |table: &str| format!("dbserver1.inventory.{table}");
    let event = |table: &str, op: &str, after: &str, i: usize| {
        format!(
            r#"{{"op":"{op}","before":null,"after":{after},"source":{{"connector":"mysql","db":"inventory","table":"{table}"}},"ts_ms":{i}}}"#
        )
    };
    // customers keyed by `id`, order lines by (`order_id`, `line`): neither key is
    // declared anywhere but in the record keys.
    let mut customers = Vec::new();
    for i in 0..300 {
        let id = i % 100;
        let key = key_with_schema(&topic("customers"), &[("id", "int32", id.to_string())]);
        let after = format!(r#"{{"id":{id},"email":"c{id}-{i}@example.com"}}"#);
        customers.push((Some(key), Some(event("customers", "u", &after, i))));
    }
    let mut lines = Vec::new();
    for i in 0..200 {
        let (order, line) = (i % 20, i % 7);
        let key = key_with_schema(
            &topic("order_lines"),
            &[
                ("order_id", "int32", order.to_string()),
                ("line", "int32", line.to_string()),
            ],
        );
        let after = format!(r#"{{"order_id":{order},"line":{line},"qty":{i}}}"#);
        lines.push((Some(key), Some(event("order_lines", "c", &after, i))));
    }
    let audit = vec![(
        Some(r#"{"id":1}"#.to_string()),
        Some(event("audit_log", "c", r#"{"id":1,"what":"x"}"#, 0)),
    )];
    for (table, records) in [
        ("customers", &customers),
        ("order_lines", &lines),
        ("audit_log", &audit),
    ] {
        broker.create_topic(&topic(table), 2);
        broker.produce(&topic(table), records);
    }
    let pipeline = w.write(
        "inventory.yaml",
        &format!(
            r#"name: inventory
source:
  type: kafka
  brokers: {}
  topic_pattern: '^dbserver1\.inventory\..+'
  group_id: weir-inventory
  start: earliest
  format: debezium-json
  options: {{ topic.metadata.refresh.interval.ms: 1000 }}
tables:
  include: ['inventory.*']
  exclude: ['inventory.audit_log']
sink: {{ type: sqlite, path: target.db, create: true }}
dead_letter: {{ type: file, path: dead-letters.jsonl }}
"#,
            broker.address()
        ),
    );
    let child = common::weir()
        .args(["run", "--json", "--stop-when-idle", "6s"])
        .arg(&pipeline)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let db = w.path("target.db");
    let count = |table: &str| -> Option<i64> {
        let conn = rusqlite::Connection::open(&db).ok()?;
        conn.query_row(&format!("SELECT count(*) FROM \"{table}\""), [], |r| {
            r.get(0)
        })
        .ok()
    };
    let started = Instant::now();
    while count("customers") != Some(100) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the pipeline did not apply customers"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A new table's topic, while the pipeline runs.
    broker.create_topic(&topic("products"), 1);
    let products: Vec<_> = (0..50)
        .map(|id| {
            let key = key_with_schema(
                &topic("products"),
                &[("sku", "string", format!("\"s{id}\""))],
            );
            let after = format!(r#"{{"sku":"s{id}","price":{id}.25}}"#);
            (Some(key), Some(event("products", "c", &after, id)))
        })
        .collect();
    broker.produce(&topic("products"), &products);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(target_tables(&db), ["customers", "order_lines", "products"]);
    assert_eq!(
        sqlite_rows(&db, "SELECT email FROM customers WHERE id = 7"),
        [["c7-207@example.com"]]
    );
    // 20 orders x 7 lines share 200 events: 140 keys, each with its last quantity.
    assert_eq!(count("order_lines"), Some(140));
    assert_eq!(
        sqlite_rows(
            &db,
            "SELECT qty FROM order_lines WHERE order_id = 3 AND line = 2"
        ),
        [["163"]]
    );
    assert_eq!(
        sqlite_rows(
            &db,
            "SELECT name FROM pragma_table_info('order_lines') WHERE pk > 0 ORDER BY pk"
        )
        .concat(),
        ["order_id", "line"]
    );
    assert_eq!(count("products"), Some(50));
    let tables = &summary["tables"];
    assert_eq!(tables["inventory.audit_log"]["skipped"], 1, "{summary}");
    assert_eq!(tables["inventory.products"]["applied"], 50, "{summary}");
    assert_eq!(summary["dead_letters"], 0, "{summary}");
}

/// `pipelines/many-tables.yaml` over its recorded log: the shards merged, the audit log
/// skipped, every other table as the log leaves it.
#[test]
fn the_many_tables_example_pipeline_runs() {
    let w = Workspace::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let yaml = std::fs::read_to_string(root.join("pipelines/many-tables.yaml"))
        .unwrap()
        .replace(
            "../examples/inventory/changes.jsonl",
            &root
                .join("examples/inventory/changes.jsonl")
                .display()
                .to_string(),
        )
        .replace("../out/inventory/", "");
    let pipeline = w.write("many-tables.yaml", &yaml);
    let summary = w.run_ok(&pipeline);
    let db = w.path("target.db");
    assert_eq!(target_tables(&db), ["customers", "orders", "products"]);
    assert_eq!(
        sqlite_rows(&db, "SELECT id, email FROM customers ORDER BY id"),
        [
            ["1001", "c1001@example.com"],
            ["1002", "george.bailey@example.com"],
            ["1003", "c1003@example.com"]
        ]
    );
    assert_eq!(
        sqlite_rows(&db, "SELECT order_number, quantity FROM orders ORDER BY 1"),
        [
            ["10001", "9"],
            ["10002", "2"],
            ["10003", "3"],
            ["11001", "1"],
            ["11003", "3"]
        ]
    );
    assert_eq!(
        sqlite_rows(&db, "SELECT weight FROM products WHERE id = 103"),
        [["0.8"]]
    );
    assert_eq!(summary["tables"]["inventory.audit_log"]["skipped"], 2);
    assert!(w.dead_letters().is_empty());
    let reconcile = common::weir()
        .arg("reconcile")
        .arg(&pipeline)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&reconcile.stdout);
    assert!(reconcile.status.success(), "{text}");
    assert!(
        text.contains("EQUAL: every table of the target holds its source's rows (3 tables)"),
        "{text}"
    );
}

/// A transform sees one table per call, knows its name, and runs only on the tables its
/// `tables` patterns select.
#[test]
fn transforms_see_one_named_table_per_call_and_run_on_their_tables() {
    let w = Workspace::new();
    let probe = common::plugin_wasm("testing/probe");
    let event = |table: &str, id: i64| {
        format!(
            r#"{{"op":"c","before":null,"after":{{"id":{id}}},"source":{{"db":"app","table":"{table}"}},"ts_ms":{id}}}"#
        )
    };
    let lines: Vec<String> = (0..6)
        .map(|i| event(["a", "b", "c"][i % 3], i as i64))
        .collect();
    w.append_lines("events.jsonl", &lines);
    let pipeline = w.write(
        "probe.yaml",
        &format!(
            "{}transforms:\n  - name: names\n    wasm: {}\n    config: {{ mode: table }}\n    tables: ['app.a', 'app.?']\n  - name: only-c\n    wasm: {}\n    config: {{ mode: table }}\n    tables: ['*.c']\n",
            SHOP.replace("name: shop", "name: probe")
                + "dead_letter: { type: file, path: dead-letters.jsonl }\n",
            probe.display(),
            probe.display()
        ),
    );
    w.run_ok(&pipeline);
    let mut seen: Vec<(String, String)> = w
        .dead_letters()
        .iter()
        .map(|l| {
            (
                l["table"].as_str().unwrap().to_string(),
                l["error"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    // The first plugin takes row 0 of each table's batch (`a`: ids 0 and 3, one batch);
    // the second sees only `c`'s remaining row.
    let expected: Vec<(String, String)> = [
        ("app.a", "names", "app.a -> a"),
        ("app.b", "names", "app.b -> b"),
        ("app.c", "names", "app.c -> c"),
        ("app.c", "only-c", "app.c -> c"),
    ]
    .iter()
    .map(|(table, plugin, names)| {
        (
            table.to_string(),
            format!("plugin_row_error: table: {names} (plugin `{plugin}`)"),
        )
    })
    .collect();
    assert_eq!(seen, expected);
    let db = w.path("target.db");
    assert_eq!(sqlite_rows(&db, "SELECT id FROM a"), [["3"]]);
    assert_eq!(sqlite_rows(&db, "SELECT id FROM b"), [["4"]]);
    // Every change of `c` was refused: it has no table.
    assert_eq!(target_tables(&db), ["a", "b"]);
}

/// The `ts_ms` of every change in a folder of Parquet files (each change's identity in
/// the synthetic captures: its line number).
fn parquet_changes(dir: &Path) -> Vec<i64> {
    use arrow::array::AsArray;
    let mut seen = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    for file in files {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&file).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            // `event_time` is the event's `ts_ms`, in the column's own unit: milliseconds
            // after a cast.
            use arrow::datatypes::{DataType, TimeUnit};
            let times = batch.column_by_name("event_time").unwrap();
            let millis = DataType::Timestamp(TimeUnit::Millisecond, None);
            let times = arrow::compute::cast(times, &millis).unwrap();
            let times = arrow::compute::cast(&times, &DataType::Int64).unwrap();
            seen.extend(
                times
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .iter()
                    .map(|t| t.unwrap()),
            );
        }
    }
    seen
}

/// A folder per table, rolled together: after kills at random points and a final run,
/// each table's folder holds each of its changes exactly once.
#[test]
fn parquet_writes_a_folder_per_table_with_every_change_once_across_kills() {
    use std::time::Duration;
    let w = Workspace::new();
    let sources: Vec<Source> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|t| Source::mysql("app", t, 0))
        .collect();
    let capture = capture(&sources, 400_000, 400, 31);
    w.append_lines("events.jsonl", &capture.lines);
    let pipeline = w.write(
        "parquet.yaml",
        "\
name: lake
source: { type: file, path: events.jsonl, format: debezium-json }
tables:
  include: ['app.*']
  exclude: ['app.f']
sink: { type: parquet, path: lake, file_rows: 3000 }
batch: { max_events: 1000 }
",
    );
    // A crash between renaming a roll's files and committing its manifest: the files are
    // not committed, and the rerun must not keep them beside the replayed changes.
    let crashed = common::weir()
        .args(["run", "--quiet"])
        .arg(&pipeline)
        .env("WEIR_INJECT_PANIC", "parquet-roll")
        .output()
        .unwrap();
    assert!(!crashed.status.success());
    assert!(
        String::from_utf8_lossy(&crashed.stderr).contains("injected panic"),
        "{}",
        String::from_utf8_lossy(&crashed.stderr)
    );
    let mut rng = weir_runtime::bench::Rng::new(17);
    let mut killed = 0;
    for _ in 0..5 {
        let mut child = common::weir()
            .args(["run", "--quiet"])
            .arg(&pipeline)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // A whole run takes seconds; each is killed well before that.
        std::thread::sleep(Duration::from_millis(100 + rng.next_u64() % 400));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        }
        child.wait().unwrap();
    }
    assert!(killed > 0, "no run was killed: make the stream longer");
    w.run_ok(&pipeline);
    let lake = w.path("lake");
    let mut folders: Vec<String> = std::fs::read_dir(&lake)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    assert_eq!(folders, ["a", "b", "c", "d", "e"]);
    for source in sources.iter().take(5) {
        let mut want: Vec<i64> = capture
            .lines
            .iter()
            .filter(|l| l.contains(&format!(r#""table":"{}""#, source.table)))
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["ts_ms"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        let mut got = parquet_changes(&lake.join(source.table));
        want.sort();
        got.sort();
        assert_eq!(
            got.len(),
            want.len(),
            "table {} after {killed} kills",
            source.table
        );
        let first_difference = got.iter().zip(&want).position(|(g, w)| g != w);
        assert_eq!(
            first_difference, None,
            "table {}: every change exactly once",
            source.table
        );
    }
}

/// `batch.max_tables` cuts a batch (one transaction) at that many tables.
#[test]
fn a_batch_touches_at_most_max_tables_tables() {
    let w = Workspace::new();
    let sources: Vec<Source> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|t| Source::mysql("app", t, 0))
        .collect();
    let capture = capture(&sources, 600, 50, 41);
    w.append_lines("events.jsonl", &capture.lines);
    let run = |name: &str, max_tables: usize| {
        let pipeline = w.write(
            &format!("{name}.yaml"),
            &(SHOP
                .replace("name: shop", &format!("name: {name}"))
                .replace("target.db", &format!("{name}.db"))
                + &format!("batch: {{ max_tables: {max_tables} }}\n")),
        );
        w.run_ok(&pipeline)
    };
    let whole = run("whole", 100);
    // Exactly as many tables as the limit: nothing to cut.
    let six = run("six", 6);
    let cut = run("cut", 2);
    assert_eq!(whole["batches"], 1, "{whole}");
    assert_eq!(six["batches"], 1, "{six}");
    // Six tables interleaved: every third change at the latest starts a new batch.
    assert!(cut["batches"].as_u64().unwrap() >= 200, "{cut}");
    for source in &sources {
        assert_eq!(
            table_rows(&w.path("cut.db"), source.table),
            expected(&[&capture.finals[&source.name()]])
        );
    }
}

/// An upsert of `row(id, version)` (whose `qty` is `3 × version`) into `space.table`.
fn upsert(source: &Source, id: i64, version: i64, at: i64) -> String {
    format!(
        r#"{{"op":"u","before":null,"after":{},"source":{},"ts_ms":{at}}}"#,
        row(id, version),
        source.source_block()
    )
}

#[test]
fn conflict_applies_to_every_table_with_per_table_overrides() {
    let w = Workspace::new();
    let (lww, fww) = (
        Source::mysql("shop", "prices", 0),
        Source::mysql("shop", "firsts", 0),
    );
    // Per key, versions arrive out of order: 5, then a late 2, then 4.
    let mut lines = Vec::new();
    for (i, version) in [5, 2, 4].into_iter().enumerate() {
        for source in [&lww, &fww] {
            for id in 1..=3 {
                lines.push(upsert(source, id, version, i as i64));
            }
        }
    }
    w.append_lines("events.jsonl", &lines);
    let yaml = SHOP.replace(
        "  primary_key: [id]\n",
        "  primary_key: [id]\n  overrides:\n    shop.firsts:\n      \
         conflict: { strategy: first-write-wins, version_column: qty }\n",
    ) + "conflict: { strategy: last-write-wins, version_column: qty }\n";
    let pipeline = w.write("p.yaml", &yaml);
    let summary = w.run_ok(&pipeline);
    let db = w.path("target.db");
    // last-write-wins keeps the highest version; the override keeps the lowest.
    assert_eq!(
        table_rows(&db, "prices"),
        (1..=3).map(|id| row_text(id, 5)).collect::<Vec<_>>(),
        "{summary}"
    );
    assert_eq!(
        table_rows(&db, "firsts"),
        (1..=3).map(|id| row_text(id, 2)).collect::<Vec<_>>(),
        "{summary}"
    );
    // Each table keeps its own tombstones.
    let tombstones = sqlite_rows(
        &db,
        "SELECT name FROM sqlite_schema WHERE name LIKE '\\_weir\\_tombstones.%' ESCAPE '\\' \
         ORDER BY name",
    );
    assert_eq!(
        tombstones,
        [["_weir_tombstones.firsts"], ["_weir_tombstones.prices"]],
        "{summary}"
    );

    // A table without the version column fails the run, naming the table.
    let plain = Source::mysql("shop", "notes", 0);
    w.append_lines(
        "events.jsonl",
        &[format!(
            r#"{{"op":"c","before":null,"after":{{"id":9,"name":"x"}},"source":{},"ts_ms":99}}"#,
            plain.source_block()
        )],
    );
    let run = w.run(&pipeline, &[]);
    assert!(!run.output.status.success(), "{}", run.stderr());
    assert!(
        run.stderr().contains("notes") && run.stderr().contains("qty"),
        "{}",
        run.stderr()
    );
}

/// Shards merged into one target keep that target's tombstones and versions one way, so
/// they must share a conflict strategy: an override that gives one shard another stops
/// the run, naming both shards and the target, before anything of the batch is applied.
#[test]
fn shards_merged_into_one_target_must_share_a_conflict_strategy() {
    let w = Workspace::new();
    let shards = [
        Source::mysql("shop", "orders_1", 0),
        Source::mysql("shop", "orders_2", 0),
    ];
    let lines: Vec<String> = shards
        .iter()
        .enumerate()
        .map(|(i, shard)| upsert(shard, i as i64 + 1, 3, i as i64))
        .collect();
    w.append_lines("events.jsonl", &lines);
    let yaml = SHOP.replace(
        "  primary_key: [id]\n",
        "  primary_key: [id]\n  route:\n    - { source: 'shop.orders_*', target: orders }\n  \
         overrides:\n    shop.orders_2:\n      \
         conflict: { strategy: first-write-wins, version_column: qty }\n",
    ) + "conflict: { strategy: last-write-wins, version_column: qty }\n";
    let pipeline = w.write("p.yaml", &yaml);
    let run = w.run(&pipeline, &[]);
    let stderr = run.stderr();
    assert!(!run.output.status.success(), "{stderr}");
    for name in [
        "`shop.orders_1`",
        "`shop.orders_2`",
        "`orders`",
        "conflict strateg",
    ] {
        assert!(stderr.contains(name), "{name}: {stderr}");
    }
    let applied = sqlite_rows(
        &w.path("target.db"),
        "SELECT count(*) FROM sqlite_schema WHERE name = 'orders'",
    );
    let none = if applied == [["0"]] {
        true
    } else {
        sqlite_rows(&w.path("target.db"), "SELECT count(*) FROM orders") == [["0"]]
    };
    assert!(none, "nothing of the batch is applied: {stderr}");
}

/// The `(source table, id)` of every change in a change-log JSON Lines file, in order.
fn jsonl_changes(path: &Path) -> Vec<(String, i64)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            let source = &event["source"];
            let image = if event["op"] == "d" {
                &event["before"]
            } else {
                &event["after"]
            };
            (
                format!(
                    "{}.{}",
                    source["db"].as_str().unwrap(),
                    source["table"].as_str().unwrap()
                ),
                image["id"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn jsonl_writes_a_file_per_table_committed_together() {
    let w = Workspace::new();
    let sources = [
        Source::mysql("shop", "customers", 0),
        Source::mysql("shop", "orders", 0),
        Source::mysql("shop", "orders_2", 1000),
    ];
    let capture = capture(&sources, 2000, 100, 11);
    w.append_lines("events.jsonl", &capture.lines);
    let yaml = SHOP.replace(
        "sink: { type: sqlite, path: target.db, create: true }",
        "sink: { type: jsonl, path: out }",
    ) + "";
    let yaml = yaml.replace(
        "  primary_key: [id]\n",
        "  primary_key: [id]\n  route: [{ source: 'shop.orders*', target: orders }]\n",
    );
    let pipeline = w.write("p.yaml", &yaml);
    // Which changes each target file must hold: per source table, in order (a file that
    // merges shards holds each batch's changes shard by shard).
    let by_source = |changes: Vec<(String, i64)>| {
        let mut tables: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for (table, id) in changes {
            tables.entry(table).or_default().push(id);
        }
        tables
    };
    let wanted = |target: &str| {
        by_source(
            jsonl_changes(&w.path("events.jsonl"))
                .into_iter()
                .filter(|(table, _)| match target {
                    "orders" => table.starts_with("shop.orders"),
                    _ => table == &format!("shop.{target}"),
                })
                .collect(),
        )
    };
    let written = |path: &Path| by_source(jsonl_changes(path));
    let summary = w.run_ok(&pipeline);
    let out = w.path("out");
    for target in ["customers", "orders"] {
        let file = written(&out.join(format!("{target}.jsonl")));
        assert!(file == wanted(target), "{target}: {summary}");
    }
    assert_eq!(
        summary["rows_applied"],
        capture.lines.len() as u64,
        "{summary}"
    );

    // A crash after writing, before the commit: a torn tail and a file the commit does not
    // know. The restart cuts both back, and the next events land once.
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .append(true)
        .open(out.join("customers.jsonl"))
        .unwrap()
        .write_all(b"{\"op\":\"c\",\"torn")
        .unwrap();
    std::fs::write(out.join("products.jsonl"), "{\"uncommitted\":true}\n").unwrap();
    let more = capture_more(&sources);
    w.append_lines("events.jsonl", &more);
    let again = w.run_ok(&pipeline);
    assert_eq!(again["rows_applied"], more.len() as u64, "{again}");
    for target in ["customers", "orders"] {
        let file = written(&out.join(format!("{target}.jsonl")));
        assert!(file == wanted(target), "{target} after the restart");
    }
    assert!(!out.join("products.jsonl").exists());

    // `final`: each file holds its table's current rows.
    let finals = w.write(
        "final.yaml",
        &yaml.replace("path: out }", "path: rows, mode: final }"),
    );
    w.run_ok(&finals);
    let rows = std::fs::read_to_string(w.path("rows/customers.jsonl")).unwrap();
    let mut ids: Vec<i64> = rows
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    ids.sort();
    let mut oracle: BTreeMap<i64, i64> = capture.finals["shop.customers"].clone();
    for line in &more {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        if event["source"]["table"] == "customers" {
            oracle.insert(event["after"]["id"].as_i64().unwrap(), 0);
        }
    }
    assert_eq!(ids, oracle.keys().copied().collect::<Vec<_>>());
}

/// Inserts of fresh keys into each source, after a capture.
fn capture_more(sources: &[Source]) -> Vec<String> {
    sources
        .iter()
        .enumerate()
        .map(|(i, source)| {
            format!(
                r#"{{"op":"c","before":null,"after":{},"source":{},"ts_ms":{i}}}"#,
                row(source.key_base + 900 + i as i64, 1),
                source.source_block()
            )
        })
        .collect()
}

#[test]
fn kafka_sink_writes_a_topic_per_table_that_weir_reads_back_into_the_same_tables() {
    use common::services::Broker;
    let broker = Broker::start();
    let w = Workspace::new();
    let sources = [
        Source::mysql("shop", "customers", 0),
        Source::mysql("shop", "orders", 0),
    ];
    let capture = capture(&sources, 1500, 80, 5);
    w.append_lines("events.jsonl", &capture.lines);
    // The test broker creates no topic on first use (Kafka's default does).
    for source in &sources {
        broker.create_topic(&format!("weir.shop.{}", source.table), 2);
    }
    let out = w.write(
        "out.yaml",
        &SHOP.replace(
            "sink: { type: sqlite, path: target.db, create: true }",
            &format!(
                "sink: {{ type: kafka, brokers: '{}', topic: 'weir.shop.{{table}}' }}",
                broker.address()
            ),
        ),
    );
    let summary = w.run_ok(&out);
    assert_eq!(
        summary["rows_applied"],
        capture.lines.len() as u64,
        "{summary}"
    );
    // The topics, read by another pipeline: the same tables as the oracle's.
    let back = w.write(
        "back.yaml",
        &format!(
            r#"name: back
source:
  type: kafka
  brokers: {}
  topic_pattern: '^weir\.shop\..+'
  group_id: weir-back
  start: earliest
  format: debezium-json
tables:
  include: ['*']
sink: {{ type: sqlite, path: back.db, create: true }}
"#,
            broker.address()
        ),
    );
    let run = w.run(&back, &["--stop-when-idle", "5s"]);
    assert!(run.output.status.success(), "{}", run.stderr());
    let db = w.path("back.db");
    assert_eq!(target_tables(&db), ["customers", "orders"]);
    for source in &sources {
        assert_eq!(
            table_rows(&db, source.table),
            expected(&[&capture.finals[&source.name()]]),
            "table {}",
            source.name()
        );
    }
    // A table name Kafka cannot take as a topic is refused by `weir validate`'s sibling
    // check on the template itself.
    let bad = w.write(
        "bad.yaml",
        &std::fs::read_to_string(&out)
            .unwrap()
            .replace("{table}", "{name}"),
    );
    let check = common::weir().arg("validate").arg(&bad).output().unwrap();
    assert!(!check.status.success());
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("placeholder other than `{table}`")
            || String::from_utf8_lossy(&check.stderr).contains("placeholder other than `{table}`"),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn reconcile_skips_and_counts_hostile_records_in_a_many_table_log() {
    let w = Workspace::new();
    let sources = [
        Source::mysql("shop", "customers", 0),
        Source::mysql("shop", "orders", 0),
    ];
    let capture = capture(&sources, 600, 50, 31);
    let mut lines = capture.lines.clone();
    // Not JSON; a table whose target would be a path; no table at all; deeply nested.
    lines.insert(100, "this is not json".to_string());
    lines.insert(
        200,
        r#"{"op":"c","before":null,"after":{"id":1},"source":{"db":"shop","table":".."},"ts_ms":1}"#
            .to_string(),
    );
    lines.insert(
        300,
        r#"{"op":"c","before":null,"after":{"id":1},"ts_ms":1}"#.to_string(),
    );
    lines.insert(
        400,
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
    );
    w.append_lines("events.jsonl", &lines);
    let pipeline = w.write(
        "p.yaml",
        &(SHOP.to_string()
            + "dead_letter: { type: file, path: dead-letters.jsonl }\n\
               reconcile:\n  source: { type: debezium }\n  \
               target: { type: sqlite, path: target.db }\n"),
    );
    let summary = w.run_ok(&pipeline);
    assert_eq!(summary["dead_letters"], 4, "{summary}");
    let out = common::weir()
        .arg("reconcile")
        .arg(&pipeline)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("EQUAL: every table"), "{text}");
    assert!(
        text.contains("4 records could not be decoded or placed"),
        "{text}"
    );
}

/// A column added to one table mid-stream closes that table's file alone: its folder
/// holds a file of each schema, the other table's one file, and the manifest commits
/// all of them.
#[test]
fn parquet_closes_only_the_file_of_a_table_whose_schema_changes() {
    let w = Workspace::new();
    let lines: Vec<String> = (1..=8)
        .map(|id| {
            let table = if id % 2 == 0 { "a" } else { "b" };
            let note = if table == "a" && id > 4 {
                format!(r#","note":"n{id}""#)
            } else {
                String::new()
            };
            format!(
                r#"{{"op":"c","after":{{"id":{id}{note}}},"source":{{"db":"app","table":"{table}"}}}}"#
            )
        })
        .collect();
    w.append_lines("events.jsonl", &lines);
    let pipeline = w.write(
        "parquet.yaml",
        "\
name: evolve
source: { type: file, path: events.jsonl, format: debezium-json }
tables: { include: ['app.*'], primary_key: [id] }
sink: { type: parquet, path: lake }
batch: { max_events: 2 }
",
    );
    w.run_ok(&pipeline);
    let files = |table: &str| -> Vec<Vec<String>> {
        let mut paths: Vec<_> = std::fs::read_dir(w.path("lake").join(table))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|path| {
                let reader =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                        std::fs::File::open(path).unwrap(),
                    )
                    .unwrap();
                let after = reader.schema().field_with_name("after").unwrap().clone();
                let arrow::datatypes::DataType::Struct(fields) = after.data_type() else {
                    panic!("after is {after:?}");
                };
                fields.iter().map(|f| f.name().clone()).collect()
            })
            .collect()
    };
    assert_eq!(files("a"), [vec!["id"], vec!["id", "note"]]);
    assert_eq!(files("b"), [vec!["id"]]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.path("lake").join("_weir_manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["tables"]["a"], 1, "{manifest}");
    assert_eq!(manifest["tables"]["b"], 0, "{manifest}");
}
