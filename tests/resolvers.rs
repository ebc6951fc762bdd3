//! Conflict resolver plugins in real pipelines: the example resolvers, built from
//! `plugins/` with `weir plugin build`, wired in through `conflict: { strategy: wasm }`,
//! run by the real `weir` binary over a file source into a target that already holds rows
//! of its own (the writes of the local site). Every case runs against both sinks that
//! read the current rows: SQLite, and a real PostgreSQL server.
//!
//! Each test checks the final table against an oracle that replays the same events one at
//! a time against a map, following the resolver's documented rule.

mod common;

use std::collections::BTreeMap;

use common::services::Postgres;
use common::{Workspace, plugin_wasm, sqlite_rows};
use weir_runtime::bench::Rng;

/// The target a case applies to.
enum Target {
    Sqlite,
    Postgres(Postgres),
}

impl Target {
    fn sqlite() -> Target {
        Target::Sqlite
    }

    fn postgres() -> Target {
        let pg = Postgres::start();
        pg.create_database("resolvers");
        Target::Postgres(pg)
    }

    /// The pipeline's `sink` section for `table`.
    fn sink(&self, table: &str, create: bool) -> String {
        match self {
            Target::Sqlite => format!(
                "sink:\n  type: sqlite\n  path: target.db\n  table: {table}\n  create: {create}\n"
            ),
            Target::Postgres(pg) => format!(
                "sink:\n  type: postgres\n  url: {}\n  table: {table}\n  create: {create}\n",
                pg.url("resolvers")
            ),
        }
    }

    /// Runs DDL and DML on the target (each statement as written, for both).
    fn execute(&self, ws: &Workspace, sql: &str) {
        match self {
            Target::Sqlite => rusqlite::Connection::open(ws.path("target.db"))
                .unwrap()
                .execute_batch(sql)
                .unwrap(),
            Target::Postgres(pg) => pg.client("resolvers").batch_execute(sql).unwrap(),
        }
    }

    /// The rows of a query whose columns are all text.
    fn rows(&self, ws: &Workspace, sql: &str) -> Vec<Vec<String>> {
        match self {
            Target::Sqlite => sqlite_rows(&ws.path("target.db"), sql),
            Target::Postgres(pg) => pg
                .client("resolvers")
                .query(sql, &[])
                .unwrap()
                .iter()
                .map(|r| (0..r.len()).map(|i| r.get::<_, String>(i)).collect())
                .collect(),
        }
    }
}

/// Runs each named case, a function of a [`Target`], once per sink: `sqlite::<case>` and
/// `postgres::<case>`.
macro_rules! in_both_sinks {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $case() {
                super::$case(&super::Target::sqlite());
            })*
        }
        mod postgres {
            $(#[test]
            fn $case() {
                super::$case(&super::Target::postgres());
            })*
        }
    };
}

in_both_sinks!(
    last_write_wins_keeps_the_highest_version_of_every_key,
    max_merge_keeps_counters_from_going_back,
    a_failing_resolver_dead_letters_its_round_and_the_rest_applies,
    a_counter_resolver_counts_each_change_once_under_duplicated_delivery,
);

/// (name, price text, version): a row of the target, as the oracle holds it.
type Row = (String, String, i64);
/// id -> row.
type Rows = BTreeMap<i64, Row>;

fn row_json(id: i64, (name, price, version): &Row) -> String {
    format!(
        r#"{{"id":{id},"name":{},"price":{price},"version":{version}}}"#,
        serde_json::to_string(name).unwrap()
    )
}

/// Creates the target table and fills it with `rows`.
fn seed_target(target: &Target, ws: &Workspace, rows: &Rows) {
    let mut sql = match target {
        Target::Sqlite => "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, \
                           price DECIMAL(12,2), version INTEGER);"
            .to_string(),
        Target::Postgres(_) => "CREATE TABLE items (id bigint PRIMARY KEY, name text, \
                                price numeric(12,2), version bigint);"
            .to_string(),
    };
    for (id, (name, price, version)) in rows {
        sql.push_str(&format!(
            "INSERT INTO items VALUES ({id}, '{}', {price}, {version});",
            name.replace('\'', "''")
        ));
    }
    target.execute(ws, &sql);
}

fn target_rows(target: &Target, ws: &Workspace) -> Rows {
    let sql = match target {
        Target::Sqlite => "SELECT id, name, printf('%.2f', price), version FROM items",
        Target::Postgres(_) => "SELECT id::text, name, price::text, version::text FROM items",
    };
    target
        .rows(ws, sql)
        .into_iter()
        .map(|r| {
            (
                r[0].parse().unwrap(),
                (r[1].clone(), r[2].clone(), r[3].parse().unwrap()),
            )
        })
        .collect()
}

fn pipeline(
    target: &Target,
    ws: &Workspace,
    crate_dir: &str,
    config: &str,
    batch: usize,
) -> std::path::PathBuf {
    let wasm = plugin_wasm(crate_dir);
    let yaml = format!(
        "name: resolvers\n\
         source:\n  type: file\n  path: events.jsonl\n  format: debezium-json\n\
         table:\n  name: items\n  primary_key: [id]\n{}\
         batch:\n  max_events: {batch}\n\
         conflict:\n  strategy: wasm\n  wasm: {}\n  config: {config}\n\
         {}\
         dead_letter:\n  type: file\n  path: dead-letters.jsonl\n",
        common::STREAM_COLUMNS,
        wasm.display(),
        target.sink("items", false)
    );
    ws.write("pipeline.yaml", &yaml)
}

/// Rows of a remote site arriving out of order: random ops over few keys, each with a
/// random version, so many of them are older than what the target holds.
struct Remote {
    lines: Vec<String>,
    /// (op, id, row) per line; `None` for a line the resolver must refuse.
    changes: Vec<Option<(char, i64, Row)>>,
}

fn remote_changes(events: usize, keys: i64, seed: u64, unversioned_every: usize) -> Remote {
    let mut rng = Rng::new(seed);
    let mut lines = Vec::new();
    let mut changes = Vec::new();
    for i in 0..events {
        let id = (rng.next_u64() % keys as u64) as i64;
        let version = (rng.next_u64() % 50) as i64;
        let row = (
            format!("remote-{i} 'q' \"d\" ünï"),
            format!("{}.{:02}", rng.next_u64() % 10_000, rng.next_u64() % 100),
            version,
        );
        if unversioned_every > 0 && i % unversioned_every == unversioned_every - 1 {
            lines.push(format!(
                r#"{{"op":"u","before":null,"after":{{"id":{id},"name":"no version","price":1.00,"version":null}}}}"#
            ));
            changes.push(None);
            continue;
        }
        let op = match rng.next_u64() % 10 {
            0 => 'd',
            1..=3 => 'c',
            _ => 'u',
        };
        let line = if op == 'd' {
            format!(
                r#"{{"op":"d","before":{},"after":null}}"#,
                row_json(id, &row)
            )
        } else {
            format!(
                r#"{{"op":"{op}","before":null,"after":{}}}"#,
                row_json(id, &row)
            )
        };
        lines.push(line);
        changes.push(Some((op, id, row)));
    }
    Remote { lines, changes }
}

fn local_rows(keys: i64, seed: u64) -> Rows {
    let mut rng = Rng::new(seed);
    let mut rows = Rows::new();
    for id in 0..keys {
        if !rng.next_u64().is_multiple_of(3) {
            let version = (rng.next_u64() % 50) as i64;
            rows.insert(id, (format!("local-{id}"), format!("{id}.50"), version));
        }
    }
    rows
}

fn last_write_wins_keeps_the_highest_version_of_every_key(target: &Target) {
    let ws = Workspace::new();
    let local = local_rows(150, 7);
    seed_target(target, &ws, &local);
    let remote = remote_changes(4000, 150, 8, 97);
    ws.append_lines("events.jsonl", &remote.lines);
    let pipeline = pipeline(
        target,
        &ws,
        "examples/lww-resolver",
        "{ version_column: version }",
        64,
    );
    let summary = ws.run_ok(&pipeline);

    // The oracle: one change at a time; no current row -> apply; a higher version ->
    // apply; an equal one -> apply for a delete, skip otherwise; a lower one -> skip.
    // Unversioned changes are refused.
    let mut expected = local.clone();
    let mut skipped = 0;
    let mut refused = 0;
    for change in &remote.changes {
        let Some((op, id, row)) = change else {
            refused += 1;
            continue;
        };
        let wins = expected
            .get(id)
            .is_none_or(|current| row.2 > current.2 || (*op == 'd' && row.2 == current.2));
        if !wins {
            skipped += 1;
        } else if *op == 'd' {
            expected.remove(id);
        } else {
            expected.insert(*id, row.clone());
        }
    }
    assert!(skipped > 1000, "the stream must exercise skips ({skipped})");
    assert_eq!(target_rows(target, &ws), expected);
    assert_eq!(summary["conflicts_skipped"], skipped, "{summary}");
    assert_eq!(summary["dead_letters"], refused, "{summary}");
    let letters = ws.dead_letters();
    assert_eq!(letters.len(), refused);
    for letter in letters {
        assert_eq!(letter["stage"], "sink", "{letter}");
        let error = letter["error"].as_str().unwrap();
        assert!(
            error.starts_with("plugin_row_error: the change has no `version`")
                && error.ends_with("(resolver `lww_resolver`)"),
            "{error}"
        );
    }
}

fn max_merge_keeps_counters_from_going_back(target: &Target) {
    let ws = Workspace::new();
    // `version` plays the counter here; the rest of the row comes from the change.
    let local = local_rows(100, 11);
    seed_target(target, &ws, &local);
    let remote = remote_changes(3000, 100, 12, 0);
    ws.append_lines("events.jsonl", &remote.lines);
    let pipeline = pipeline(
        target,
        &ws,
        "examples/max-merge",
        "{ columns: [version] }",
        50,
    );
    let summary = ws.run_ok(&pipeline);

    // The oracle: deletes and changes to a missing key apply; otherwise the change's row
    // with the counter at the larger of both sides.
    let mut expected = local.clone();
    let mut merged = 0;
    for change in &remote.changes {
        let (op, id, row) = change.as_ref().unwrap();
        match expected.get(id) {
            _ if *op == 'd' => {
                expected.remove(id);
            }
            Some(current) if current.2 > row.2 => {
                let counter = current.2;
                expected.insert(*id, (row.0.clone(), row.1.clone(), counter));
                merged += 1;
            }
            _ => {
                expected.insert(*id, row.clone());
            }
        }
    }
    assert!(merged > 500, "the stream must exercise merges ({merged})");
    assert_eq!(target_rows(target, &ws), expected);
    assert_eq!(summary["conflicts_merged"], merged, "{summary}");
    assert_eq!(summary["dead_letters"], 0, "{summary}");
}

fn a_failing_resolver_dead_letters_its_round_and_the_rest_applies(target: &Target) {
    let ws = Workspace::new();
    seed_target(target, &ws, &Rows::new());
    // max-merge refuses a config naming a column the table lacks only when it meets a
    // current row: the first batch inserts, the second updates and fails row by row.
    let lines: Vec<String> = (0..20)
        .map(|i| {
            let id = i % 10;
            let op = if i < 10 { "c" } else { "u" };
            format!(
                r#"{{"op":"{op}","before":null,"after":{{"id":{id},"name":"n{i}","price":1.00,"version":{i}}}}}"#
            )
        })
        .collect();
    ws.append_lines("events.jsonl", &lines);
    let pipeline = pipeline(
        target,
        &ws,
        "examples/max-merge",
        "{ columns: [views] }",
        10,
    );
    let summary = ws.run_ok(&pipeline);
    assert_eq!(
        summary["dead_letters"],
        10,
        "{summary}\n{:?}",
        ws.dead_letters()
    );
    for letter in ws.dead_letters() {
        let error = letter["error"].as_str().unwrap();
        assert!(
            error.starts_with("plugin_row_error: no column `views`")
                && error.ends_with("(resolver `max_merge`)"),
            "{error}"
        );
    }
    // The inserts applied; the refused updates did not.
    let rows = target_rows(target, &ws);
    assert_eq!(rows.len(), 10);
    assert!(
        rows.values().all(|(_, _, version)| *version < 10),
        "{rows:?}"
    );
}

#[test]
fn conflict_resolution_needs_a_sink_that_reads_rows() {
    let ws = Workspace::new();
    let pipeline = ws.write(
        "pipeline.yaml",
        "name: p\nsource: { type: file, path: e.jsonl }\ntable: { name: t, primary_key: [id] }\n\
         conflict: { strategy: wasm, wasm: r.wasm }\nsink: { type: parquet, path: out }\n",
    );
    let out = common::weir()
        .arg("validate")
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("conflict") && stderr.contains("postgres (upsert mode) or sqlite"),
        "{stderr}"
    );
}

/// Issue 5, test 3: a resolver that is not idempotent (counter-add adds the incoming
/// count to the stored one) keeps every counter right when changes are delivered again
/// under new stream positions — a producer retry, a replayed log — because weir keeps the
/// identity of every change it decided (source, table, key, source position) and skips a
/// copy. The checkpoint alone would not: a copy's position is new.
fn a_counter_resolver_counts_each_change_once_under_duplicated_delivery(target: &Target) {
    let ws = Workspace::new();
    let mut rng = Rng::new(21);
    let source = |lsn: u64| {
        format!(
            r#"{{"connector":"postgresql","name":"site-a","db":"app","schema":"public","table":"counters","lsn":{lsn}}}"#
        )
    };
    // 2000 increments over 40 keys, each with its own log position.
    let changes: Vec<(i64, i64, String)> = (0..2000u64)
        .map(|i| {
            let (id, delta) = (rng.below(40) as i64, 1 + rng.below(9) as i64);
            let line = format!(
                r#"{{"op":"u","after":{{"id":{id},"hits":{delta}}},"source":{}}}"#,
                source(1000 + i)
            );
            (id, delta, line)
        })
        .collect();
    let mut expected: BTreeMap<i64, i64> = BTreeMap::new();
    for (id, delta, _) in &changes {
        *expected.entry(*id).or_default() += delta;
    }
    // Delivery: in order, with about a quarter of the changes sent again a little later
    // (so some copies share a batch with their original, some land in a later run).
    let mut delivered: Vec<String> = Vec::new();
    let mut copies = 0;
    for (i, (_, _, line)) in changes.iter().enumerate() {
        delivered.push(line.clone());
        if rng.below(4) == 0 {
            let back = rng.below(30).min(i as u64) as usize;
            delivered.push(changes[i - back].2.clone());
            copies += 1;
        }
    }
    let wasm = plugin_wasm("testing/counter-add");
    let yaml = format!(
        "name: counters\n\
         source:\n  type: file\n  path: events.jsonl\n\
         table:\n  name: counters\n  primary_key: [id]\n  columns: {{id: int64, hits: int64}}\n\
         batch:\n  max_events: 64\n\
         conflict:\n  strategy: wasm\n  wasm: {}\n  config: {{ columns: [hits] }}\n\
         {}\
         dead_letter:\n  type: file\n  path: dead-letters.jsonl\n",
        wasm.display(),
        target.sink("counters", true)
    );
    let pipeline = ws.write("pipeline.yaml", &yaml);
    // Three runs over the growing log, as a pipeline restarted twice would see it.
    let mut duplicates = 0;
    for part in delivered.chunks(delivered.len() / 3 + 1) {
        ws.append_lines("events.jsonl", part);
        let summary = ws.run_ok(&pipeline);
        assert_eq!(summary["dead_letters"], 0, "{summary}");
        duplicates += summary["duplicates_skipped"].as_u64().unwrap();
    }
    let counters: BTreeMap<i64, i64> = target
        .rows(
            &ws,
            "SELECT CAST(id AS TEXT), CAST(hits AS TEXT) FROM counters",
        )
        .into_iter()
        .map(|r| (r[0].parse().unwrap(), r[1].parse().unwrap()))
        .collect();
    assert_eq!(counters, expected, "each increment must count once");
    assert!(copies > 400, "the delivery must repeat changes ({copies})");
    assert_eq!(duplicates, copies);
    // A run over the same log again applies nothing: the checkpoint holds it.
    let summary = ws.run_ok(&pipeline);
    assert_eq!(summary["upserts"], 0, "{summary}");
}
