//! A whole captured database through a real `tansu` broker into a real PostgreSQL: the
//! issue's many-table pipeline (`topic_pattern` over one topic per table, `tables:` with
//! include, exclude and a shard route, keys from the Kafka record keys) under SIGKILLs,
//! and the same tables through one topic. Every target table is compared with an
//! independent oracle's final state.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::Workspace;
use common::services::{Broker, Postgres};

use common::inventory::{Capture, Table, capture, tables, target_of};

/// Every target table as `key text -> row text`, read the way the oracle writes it.
fn target_rows(pg: &Postgres, table: &Table, target: &str) -> BTreeMap<String, String> {
    let mut client = pg.client("target");
    let sql = format!(
        "SELECT {}, {} FROM public.\"{target}\"",
        table.key_sql(),
        table.row_sql()
    );
    client
        .query(&sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn check_targets(pg: &Postgres, tables: &[Table], capture: &Capture) {
    let mut client = pg.client("target");
    let present: Vec<String> = client
        .query(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut expected: Vec<&str> = tables.iter().filter_map(target_of).collect();
    expected.sort();
    expected.dedup();
    assert_eq!(present, expected, "the target's tables");
    let mut checked = BTreeMap::new();
    for table in tables {
        let Some(target) = target_of(table) else {
            continue;
        };
        if checked.insert(target, ()).is_some() {
            continue;
        }
        let want = capture.finals.get(target).cloned().unwrap_or_default();
        let got = target_rows(pg, table, target);
        let missing = want.keys().filter(|k| !got.contains_key(*k)).count();
        let extra = got.keys().filter(|k| !want.contains_key(*k)).count();
        let stale = want
            .iter()
            .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
            .count();
        assert_eq!(
            (missing, extra, stale),
            (0, 0, 0),
            "table {target}: missing, extra, stale; e.g. want {:?} got {:?}",
            want.iter().find(|(k, v)| got.get(*k) != Some(v)),
            want.iter()
                .find(|(k, v)| got.get(*k) != Some(v))
                .and_then(|(k, _)| got.get(k))
        );
    }
}

const PIPELINE: &str = r#"name: inventory
source:
  type: kafka
  brokers: ${KAFKA_BROKERS}
  topic_pattern: '^dbserver1\.inventory\..+'
  group_id: weir-inventory
  start: earliest
  format: debezium-json
tables:
  include: ['inventory.*']
  exclude: ['inventory.audit_log', 'inventory.audit_trail']
  route:
    - source: 'inventory.orders_shard_*'
      target: orders
sink:
  type: postgres
  url: ${PG_URL}
  schema: public
  mode: upsert
  create: true
dead_letter:
  type: file
  path: dead-letters.jsonl
"#;

fn command(
    broker: &Broker,
    pg: &Postgres,
    pipeline: &std::path::Path,
    idle: &str,
) -> std::process::Command {
    let mut command = common::weir();
    command
        .env("KAFKA_BROKERS", broker.address())
        .env("PG_URL", pg.url("target"))
        .args(["run", "--json", "-q", "--stop-when-idle", idle])
        .arg(pipeline)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Offsets the pipeline has stored in the target, over every stream.
fn progress(pg: &Postgres, pipeline: &str) -> i64 {
    postgres::Client::connect(&pg.url("target"), postgres::NoTls)
        .ok()
        .and_then(|mut c| {
            c.query_one(
                "SELECT coalesce(sum(greatest(next, 0)), 0)::bigint FROM weir.checkpoints \
                 WHERE pipeline = $1",
                &[&pipeline],
            )
            .ok()
        })
        .map_or(0, |row| row.get(0))
}

fn wait_for_progress(pg: &Postgres, beyond: i64, child: &mut Child) {
    let started = Instant::now();
    while progress(pg, "inventory") <= beyond {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            panic!("weir exited early ({status}): {stderr}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no progress beyond {beyond}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn fifty_tables_from_topics_per_table_survive_sigkills_and_equal_the_oracle() {
    let tables = tables();
    let events = 200_000;
    let capture = capture(&tables, events, 150, 0x5eed);
    let broker = Broker::start();
    let pg = Postgres::start();
    pg.create_database("target");
    for (t, table) in tables.iter().enumerate() {
        let topic = format!("dbserver1.inventory.{}", table.name);
        broker.create_topic(&topic, if t % 5 == 0 { 2 } else { 1 });
        broker.produce(&topic, &capture.records[t]);
    }
    let ws = Workspace::new();
    let pipeline = ws.write("inventory.yaml", PIPELINE);
    let mut rng = weir_runtime::bench::Rng::new(0x2545f4914f6cdd1d);
    for _ in 0..5 {
        let before = progress(&pg, "inventory");
        let mut child = command(&broker, &pg, &pipeline, "60s").spawn().unwrap();
        wait_for_progress(&pg, before, &mut child);
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let output = command(&broker, &pg, &pipeline, "5s").output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["dead_letters"], 0, "{summary}");
    assert_eq!(
        progress(&pg, "inventory"),
        events as i64,
        "every offset applied"
    );
    check_targets(&pg, &tables, &capture);
    // `t07` gained its column mid-stream.
    let mut client = pg.client("target");
    let note: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 't07' AND column_name = 'note'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(note, 1);
    // The keys came from the record keys: a composite key stays composite.
    let key: Vec<String> = client
        .query(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid \
             AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'public.t03'::regclass \
             AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(key, ["tenant", "code"]);
}

/// `weir reconcile` on the 50-table pipeline: the change log split by table against the
/// target schema, then three tables made to differ and repaired, then checksum mode
/// against a copy of the tables (each table in the mode its key allows).
fn reconcile_every_table(
    broker: &Broker,
    pg: &Postgres,
    ws: &Workspace,
    pipeline: &std::path::Path,
) {
    let base = std::fs::read_to_string(pipeline).unwrap();
    let pipeline = ws.write(
        "inventory-reconcile.yaml",
        &format!(
            "{base}reconcile:\n  source:\n    type: debezium\n  target:\n    type: postgres\n    \
             url: ${{PG_URL}}\n    schema: public\n"
        ),
    );
    let reconcile = |args: &[&str], path: &std::path::Path| {
        let output = common::weir()
            .env("KAFKA_BROKERS", broker.address())
            .env("PG_URL", pg.url("target"))
            .arg("reconcile")
            .args(args)
            .arg(path)
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&output.stdout)
            .or_else(|_| {
                // `--repair apply` prints the first report, a line, then the second.
                let text = String::from_utf8_lossy(&output.stdout);
                let last = text.rfind("\n{\n").map_or(0, |i| i + 1);
                serde_json::from_str(&text[last..])
            })
            .unwrap_or_else(|e| {
                panic!(
                    "{e}: {}\n{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                )
            });
        (output.status.code(), report)
    };
    let (code, report) = reconcile(&["--json"], &pipeline);
    assert_eq!(code, Some(0), "{report:#}");
    let lines = report["tables"].as_array().unwrap();
    assert_eq!(lines.len(), 47, "46 tables and `orders`");
    assert!(lines.iter().all(|l| l["status"] == "equal"), "{report:#}");
    let orders = lines.iter().find(|l| l["table"] == "orders").unwrap();
    assert_eq!(
        orders["sources"],
        serde_json::json!(["inventory.orders_shard_1", "inventory.orders_shard_2"])
    );
    assert_eq!(
        report["skipped"],
        serde_json::json!(["inventory.audit_log", "inventory.audit_trail"])
    );

    // Three tables differ: a row deleted, a value changed, a row added.
    let mut client = pg.client("target");
    let deleted: i64 = client
        .query_one(
            "DELETE FROM t01 WHERE id = (SELECT min(id) FROM t01) RETURNING id",
            &[],
        )
        .unwrap()
        .get(0);
    let changed: String = client
        .query_one(
            "UPDATE t02 SET qty = qty + 1 WHERE code = (SELECT min(code) FROM t02) RETURNING code",
            &[],
        )
        .unwrap()
        .get(0);
    client
        .execute(
            "INSERT INTO orders (id, name) VALUES (999999999999, 'intruder')",
            &[],
        )
        .unwrap();
    let (code, report) = reconcile(&["--json"], &pipeline);
    assert_eq!(code, Some(1), "{report:#}");
    let differing: Vec<&str> = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["status"] != "equal")
        .map(|l| l["table"].as_str().unwrap())
        .collect();
    assert_eq!(differing, ["orders", "t01", "t02"]);
    let detail = |table: &str| {
        report["differences"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["table"] == table)
            .map(|d| d["report"].clone())
            .unwrap_or_else(|| panic!("no detail of {table}: {report:#}"))
    };
    let t01 = detail("t01");
    assert_eq!(t01["missing"]["count"], 1);
    assert_eq!(t01["missing"]["rows"][0][0], deleted.to_string());
    let t02 = detail("t02");
    assert_eq!(t02["mismatched"]["count"], 1);
    assert_eq!(t02["mismatched"]["rows"][0]["key"][0], changed);
    assert_eq!(t02["mismatched"]["rows"][0]["columns"][0]["column"], "qty");
    let orders = detail("orders");
    assert_eq!(orders["extra"]["count"], 1);
    assert_eq!(orders["extra"]["rows"][0][0], "999999999999");
    assert_eq!(
        (
            t01["extra"]["count"].as_u64(),
            orders["missing"]["count"].as_u64()
        ),
        (Some(0), Some(0))
    );

    let (code, report) = reconcile(&["--json", "--repair", "apply"], &pipeline);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["equal"], true);

    // Checksum mode, table by table, against a copy of the tables in schema `inventory`
    // (so the copy's tables are named as the stream named them, and routed the same).
    client.batch_execute("CREATE SCHEMA inventory").unwrap();
    for line in lines {
        let table = line["table"].as_str().unwrap();
        client
            .batch_execute(&format!(
                "CREATE TABLE inventory.{table} (LIKE public.{table} INCLUDING ALL);
                 INSERT INTO inventory.{table} SELECT * FROM public.{table};"
            ))
            .unwrap();
    }
    client
        .batch_execute("UPDATE inventory.t00 SET name = 'changed' WHERE id = (SELECT max(id) FROM inventory.t00)")
        .unwrap();
    let checksum = ws.write(
        "inventory-checksum.yaml",
        &format!(
            "{base}reconcile:\n  mode: checksum\n  source:\n    type: postgres\n    \
             url: ${{PG_URL}}\n    schema: inventory\n  target:\n    type: postgres\n    \
             url: ${{PG_URL}}\n    schema: public\n"
        ),
    );
    let (code, report) = reconcile(&["--json"], &checksum);
    assert_eq!(code, Some(1), "{report:#}");
    let lines = report["tables"].as_array().unwrap();
    assert_eq!(lines.len(), 47);
    let mode = |table: &str| {
        lines.iter().find(|l| l["table"] == table).unwrap()["mode"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // Integer keys are cut into checksum ranges; text and composite keys are compared in full.
    assert_eq!(
        [mode("t00"), mode("t01"), mode("t02"), mode("t03")],
        ["checksum", "checksum", "full", "full"]
    );
    let differing: Vec<&str> = lines
        .iter()
        .filter(|l| l["status"] != "equal")
        .map(|l| l["table"].as_str().unwrap())
        .collect();
    assert_eq!(differing, ["t00"], "{report:#}");
    assert_eq!(report["differences"][0]["report"]["mismatched"]["count"], 1);
}

#[test]
fn the_same_tables_through_one_topic_equal_the_oracle() {
    let tables = tables();
    let capture = capture(&tables, 30_000, 60, 0xfeed);
    let broker = Broker::start();
    let pg = Postgres::start();
    pg.create_database("target");
    // Debezium's topic routing: every table in one topic, keyed by its record key (so a
    // key's changes stay in one partition, in order).
    let topic = "dbserver1.inventory.all";
    broker.create_topic(topic, 3);
    let interleaved = capture.interleaved(9);
    let total = interleaved.len();
    broker.produce(topic, &interleaved);
    let ws = Workspace::new();
    let pipeline = ws.write(
        "inventory.yaml",
        &PIPELINE.replace(
            r"'^dbserver1\.inventory\..+'",
            "'^dbserver1\\.inventory\\.all$'",
        ),
    );
    let output = command(&broker, &pg, &pipeline, "5s").output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["dead_letters"], 0, "{summary}");
    assert_eq!(summary["events_read"], total as u64);
    let skipped = capture.records[tables.len() - 2].len() + capture.records[tables.len() - 1].len();
    let tables_json = &summary["tables"];
    assert_eq!(
        tables_json["inventory.audit_log"]["skipped"]
            .as_u64()
            .unwrap()
            + tables_json["inventory.audit_trail"]["skipped"]
                .as_u64()
                .unwrap(),
        skipped as u64
    );
    check_targets(&pg, &tables, &capture);
    reconcile_every_table(&broker, &pg, &ws, &pipeline);
}

/// A row the target refuses in a many-table transaction is dead-lettered with its table,
/// and every other row of every table is applied (the transaction is applied again with
/// savepoints, which isolate the refused row).
#[test]
fn a_refused_row_is_dead_lettered_and_every_other_table_applied() {
    let pg = Postgres::start();
    pg.create_database("target");
    pg.client("target")
        .batch_execute("CREATE TABLE public.b (id int PRIMARY KEY, qty int CHECK (qty >= 0))")
        .unwrap();
    let ws = Workspace::new();
    let event = |table: &str, id: i64, qty: i64| {
        format!(
            r#"{{"op":"c","before":null,"after":{{"id":{id},"qty":{qty}}},"source":{{"db":"shop","schema":"app","table":"{table}"}},"ts_ms":{id}}}"#
        )
    };
    let mut lines = Vec::new();
    for id in 0..50 {
        lines.push(event("a", id, id));
        lines.push(event("b", id, if id == 17 { -1 } else { id }));
    }
    ws.append_lines("events.jsonl", &lines);
    let pipeline = ws.write(
        "p.yaml",
        &format!(
            "name: refuse\nsource: {{ type: file, path: events.jsonl, format: debezium-json }}\n\
             tables: {{ primary_key: [id] }}\n\
             sink: {{ type: postgres, url: '{}', mode: upsert, create: true }}\n\
             dead_letter: {{ type: file, path: dead-letters.jsonl }}\n",
            pg.url("target")
        ),
    );
    let summary = ws.run_ok(&pipeline);
    assert_eq!(summary["dead_letters"], 1, "{summary}");
    let letters = ws.dead_letters();
    assert_eq!(letters[0]["table"], "app.b");
    assert!(
        letters[0]["error"]
            .as_str()
            .unwrap()
            .contains("check constraint"),
        "{}",
        letters[0]
    );
    let mut client = pg.client("target");
    let count = |client: &mut postgres::Client, table: &str| -> i64 {
        client
            .query_one(&format!("SELECT count(*) FROM public.{table}"), &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(count(&mut client, "a"), 50);
    assert_eq!(count(&mut client, "b"), 49);
}

#[test]
fn conflict_strategies_apply_per_table_with_overrides_and_tombstones_of_their_own() {
    let pg = Postgres::start();
    pg.create_database("target");
    let ws = Workspace::new();
    let source = |table: &str| format!(r#"{{"db":"shop","schema":"app","table":"{table}"}}"#);
    let upsert = |table: &str, id: i64, version: i64, at: usize| {
        format!(
            r#"{{"op":"u","before":null,"after":{{"id":{id},"v":{version}}},"source":{},"ts_ms":{at}}}"#,
            source(table)
        )
    };
    // Per key: version 5, a late 2, then 4. Key 9 of `a` is deleted at version 7, then a
    // late update at version 3 must not bring it back.
    let mut lines = Vec::new();
    for (at, version) in [5, 2, 4].into_iter().enumerate() {
        for table in ["a", "b"] {
            for id in 1..=3 {
                lines.push(upsert(table, id, version, at));
            }
        }
    }
    lines.push(upsert("a", 9, 6, 10));
    lines.push(format!(
        r#"{{"op":"d","before":{{"id":9,"v":7}},"after":null,"source":{},"ts_ms":11}}"#,
        source("a")
    ));
    lines.push(upsert("a", 9, 3, 12));
    ws.append_lines("events.jsonl", &lines);
    let pipeline = ws.write(
        "p.yaml",
        &format!(
            "name: versions\nsource: {{ type: file, path: events.jsonl, format: debezium-json }}\n\
             tables:\n  primary_key: [id]\n  overrides:\n    app.b:\n      \
             conflict: {{ strategy: first-write-wins, version_column: v }}\n\
             conflict: {{ strategy: last-write-wins, version_column: v }}\n\
             sink: {{ type: postgres, url: '{}', mode: upsert, create: true }}\n",
            pg.url("target")
        ),
    );
    let summary = ws.run_ok(&pipeline);
    let mut client = pg.client("target");
    let versions = |client: &mut postgres::Client, table: &str| -> Vec<(i32, i32)> {
        client
            .query(
                &format!("SELECT id, v FROM public.{table} ORDER BY id"),
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, i64>(0) as i32, r.get::<_, i64>(1) as i32))
            .collect()
    };
    assert_eq!(
        versions(&mut client, "a"),
        [(1, 5), (2, 5), (3, 5)],
        "{summary}"
    );
    assert_eq!(
        versions(&mut client, "b"),
        [(1, 2), (2, 2), (3, 2)],
        "{summary}"
    );
    // `a`: the late 2s and 4s, and the update after the delete; `b`: the 4s.
    assert_eq!(summary["conflicts_skipped"], 10, "{summary}");
    // Each target has its own tombstones; `a`'s holds the deleted key.
    let tombstones: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'weir' AND tablename LIKE '%tombstones'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tombstones, 2, "{summary}");
}

/// Inserts (and copied rows) of a large batch are COPYed straight into the target; when
/// the target already holds some of their keys, that COPY is refused and undone, and the
/// rows are merged as upserts instead: each row ends as the last event says, once. Both
/// the many-table path (no savepoints on the first attempt) and the one-table path.
#[test]
fn inserts_of_keys_the_target_already_holds_update_them() {
    let pg = Postgres::start();
    pg.create_database("target");
    let mut client = pg.client("target");
    for table in ["a", "b", "one"] {
        client
            .batch_execute(&format!(
                "CREATE TABLE public.{table} (id int PRIMARY KEY, qty int NOT NULL);
                 INSERT INTO public.{table} SELECT g, -1 FROM generate_series(3000, 3010) g;"
            ))
            .unwrap();
    }
    let ws = Workspace::new();
    let event = |table: &str, op: &str, id: i64| {
        format!(
            r#"{{"op":"{op}","before":null,"after":{{"id":{id},"qty":{id}}},"source":{{"db":"shop","schema":"app","table":"{table}"}},"ts_ms":{id}}}"#
        )
    };
    let mut lines = Vec::new();
    for id in 0..6000 {
        // `a` is a copy (`r`), `b` inserts; `c` is new to the target.
        lines.push(event("a", "r", id));
        lines.push(event("b", "c", id));
        lines.push(event("c", "c", id));
    }
    ws.append_lines("events.jsonl", &lines);
    let many = ws.write(
        "many.yaml",
        &format!(
            "name: many\nsource: {{ type: file, path: events.jsonl, format: debezium-json }}\n\
             tables: {{ primary_key: [id] }}\n\
             sink: {{ type: postgres, url: '{}', mode: upsert, create: true }}\n\
             batch: {{ max_events: 20000 }}\n\
             dead_letter: {{ type: file, path: dead-letters.jsonl }}\n",
            pg.url("target")
        ),
    );
    let summary = ws.run_ok(&many);
    assert_eq!(summary["dead_letters"], 0, "{summary}");
    let one = ws.write(
        "one.yaml",
        &format!(
            "name: one\nsource: {{ type: file, path: events.jsonl, format: debezium-json }}\n\
             table: {{ name: app.b, primary_key: [id] }}\n\
             sink: {{ type: postgres, url: '{}', table: public.one }}\n\
             batch: {{ max_events: 20000 }}\n\
             dead_letter: {{ type: file, path: one-dead-letters.jsonl }}\n",
            pg.url("target")
        ),
    );
    ws.run_ok(&one);
    for table in ["a", "b", "c", "one"] {
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*), count(*) FILTER (WHERE qty = id), min(id)::bigint, max(id)::bigint FROM public.{table}"
                ),
                &[],
            )
            .unwrap();
        let (count, right, min, max): (i64, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!((count, right, min, max), (6000, 6000, 0, 5999), "{table}");
    }
}
