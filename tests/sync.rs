//! Multi-site sync against a real PostgreSQL and SQLite: the built-in conflict strategies,
//! tombstones and lanes (docs/sync.md).

mod common;

use std::collections::BTreeMap;

use common::faults::Figures;
use common::services::Postgres;
use common::{Workspace, plugin_wasm, sqlite_rows};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const ORIGINS: [&str; 3] = ["a", "b", "c"];

/// One write made at a site.
#[derive(Debug, Clone)]
struct Write {
    key: i64,
    version: i64,
    origin: &'static str,
    /// `None` for a delete.
    value: Option<i64>,
}

impl Write {
    /// The Debezium event, as the capture at `origin` emits it. A delete carries the
    /// version of the row it deleted in its `before` image.
    fn event(&self) -> String {
        let row = |value: Option<i64>| serde_json::json!({"id": self.key, "v": self.version, "o": self.origin, "val": value});
        let event = match self.value {
            Some(value) => serde_json::json!({"op": "u", "after": row(Some(value))}),
            None => serde_json::json!({"op": "d", "before": row(None)}),
        };
        event.to_string()
    }
}

/// Writes as sites make them: versions from a shared clock read at about the same time,
/// so different sites collide often; one site never reuses a version for a key.
fn writes(rng: &mut StdRng) -> Vec<Write> {
    let mut next: BTreeMap<(i64, &str), i64> = BTreeMap::new();
    (0..rng.random_range(10..30))
        .map(|_| {
            let key = rng.random_range(0..4);
            let origin = ORIGINS[rng.random_range(0..ORIGINS.len())];
            let floor = next.get(&(key, origin)).copied().unwrap_or(0);
            let version = floor.max(rng.random_range(0..8));
            next.insert((key, origin), version + 1);
            Write {
                key,
                version,
                origin,
                value: rng.random_bool(0.75).then(|| rng.random_range(0..1000)),
            }
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Strategy {
    LastWriteWins,
    FirstWriteWins,
    SourcePriority,
}

impl Strategy {
    fn yaml(self) -> &'static str {
        match self {
            Strategy::LastWriteWins => "strategy: last-write-wins",
            Strategy::FirstWriteWins => "strategy: first-write-wins",
            Strategy::SourcePriority => "strategy: source-priority\n  priority: [b, a]",
        }
    }

    /// The oracle's order, written from the documented rule and independent of weir's
    /// code: a tuple that is greater for the winning write.
    fn rank(self, w: &Write) -> (i64, i64, bool, &'static str) {
        let deleted = w.value.is_none();
        match self {
            Strategy::LastWriteWins => (0, w.version, deleted, w.origin),
            Strategy::FirstWriteWins => (0, -w.version, deleted, w.origin),
            Strategy::SourcePriority => {
                let rank = match w.origin {
                    "b" => 2,
                    "a" => 1,
                    _ => 0,
                };
                (rank, w.version, deleted, w.origin)
            }
        }
    }
}

/// Each key's final row: its greatest write under the strategy, if that is not a delete.
fn oracle(strategy: Strategy, writes: &[Write]) -> BTreeMap<i64, (i64, String, i64)> {
    let mut winners: BTreeMap<i64, &Write> = BTreeMap::new();
    for w in writes {
        if winners
            .get(&w.key)
            .is_none_or(|best| strategy.rank(w) > strategy.rank(best))
        {
            winners.insert(w.key, w);
        }
    }
    winners
        .into_iter()
        .filter_map(|(key, w)| w.value.map(|v| (key, (w.version, w.origin.to_string(), v))))
        .collect()
}

/// Where the pipelines apply: database `sync` of a PostgreSQL server, or `target.db` in
/// the test's workspace.
enum Target {
    Postgres(Postgres),
    Sqlite,
}

impl Target {
    fn postgres() -> Target {
        let pg = Postgres::start();
        pg.create_database("sync");
        Target::Postgres(pg)
    }

    fn pg(&self) -> &Postgres {
        match self {
            Target::Postgres(pg) => pg,
            Target::Sqlite => panic!("a PostgreSQL target"),
        }
    }

    fn sink(&self, table: &str) -> String {
        match self {
            Target::Postgres(pg) => format!(
                "sink:\n  type: postgres\n  url: {}\n  table: public.{table}\n  create: true\n",
                pg.url("sync")
            ),
            Target::Sqlite => format!(
                "sink:\n  type: sqlite\n  path: target.db\n  table: {table}\n  create: true\n"
            ),
        }
    }

    fn execute(&self, ws: &Workspace, sql: &str) {
        match self {
            Target::Postgres(pg) => pg.client("sync").batch_execute(sql).unwrap(),
            Target::Sqlite => rusqlite::Connection::open(ws.path("target.db"))
                .unwrap()
                .execute_batch(sql)
                .unwrap(),
        }
    }

    /// Text of every column of `sql`'s rows.
    fn rows(&self, ws: &Workspace, sql: &str) -> Vec<Vec<String>> {
        match self {
            Target::Postgres(pg) => pg
                .client("sync")
                .query(sql, &[])
                .unwrap()
                .iter()
                .map(|r| (0..r.len()).map(|i| r.get::<_, String>(i)).collect())
                .collect(),
            Target::Sqlite => sqlite_rows(&ws.path("target.db"), sql),
        }
    }

    /// `(key, version)` of the tombstones of `table`.
    fn tombstones(&self, ws: &Workspace, table: &str) -> Vec<(i64, String)> {
        let sql = match self {
            Target::Postgres(_) => {
                format!(r#"SELECT id::text, _weir_version FROM weir."public.{table}.tombstones""#)
            }
            Target::Sqlite => {
                format!(r#"SELECT id, _weir_version FROM "_weir_tombstones.{table}""#)
            }
        };
        self.rows(ws, &sql)
            .into_iter()
            .map(|r| (r[0].parse().unwrap(), r[1].clone()))
            .collect()
    }
}

/// A pipeline that applies the changes captured at `origin` (its file) to `table`. A
/// built-in strategy gets the version, origin and source site columns.
fn pipeline(ws: &Workspace, target: &Target, table: &str, origin: &str, conflict: &str) -> String {
    let name = format!("{table}-from-{origin}.yaml");
    let builtin = match conflict.starts_with("strategy: wasm") {
        true => String::new(),
        false => format!("  version_column: v\n  origin_column: o\n  source_site: {origin}\n"),
    };
    ws.write(
        &name,
        &format!(
            "name: {table}-from-{origin}\n\
             source:\n  type: file\n  path: {origin}.jsonl\n\
             table:\n  name: {table}\n  primary_key: [id]\n  \
             columns: {{id: int64, v: int64, o: string, val: int64}}\n\
             batch:\n  max_events: 3\n\
             {}\
             conflict:\n  {conflict}\n{builtin}\
             dead_letter:\n  type: file\n  path: dead-letters.jsonl\n",
            target.sink(table)
        ),
    );
    name
}

fn final_rows(ws: &Workspace, target: &Target, table: &str) -> BTreeMap<i64, (i64, String, i64)> {
    let sql =
        format!("SELECT CAST(id AS TEXT), CAST(v AS TEXT), o, CAST(val AS TEXT) FROM {table}");
    target
        .rows(ws, &sql)
        .into_iter()
        .map(|r| {
            let number = |i: usize| r[i].parse::<i64>().unwrap();
            (number(0), (number(1), r[2].clone(), number(3)))
        })
        .collect()
}

/// Property 1 of issue 5: random writes from three sites, delivered in random order with
/// duplicates, through one pipeline per site into one table, end in the state the oracle
/// computes, for every strategy, in PostgreSQL and in SQLite.
#[test]
fn every_strategy_converges_to_the_oracle_whatever_the_delivery() {
    let pg = Target::postgres();
    let sqlite = Target::Sqlite;
    let cases = [
        (Strategy::LastWriteWins, "lanes: 1", &pg),
        (Strategy::LastWriteWins, "lanes: 4", &pg),
        (Strategy::FirstWriteWins, "lanes: 1", &pg),
        (Strategy::SourcePriority, "lanes: 2", &pg),
        (Strategy::LastWriteWins, "lanes: 1", &sqlite),
        (Strategy::FirstWriteWins, "lanes: 1", &sqlite),
        (Strategy::SourcePriority, "lanes: 1", &sqlite),
    ];
    let mut figures = Figures::default();
    let mut wrong = Vec::new();
    for seed in 0..6u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let writes = writes(&mut rng);
        // Delivery: a shuffle, with about a third of the writes delivered twice.
        let mut delivered = writes.clone();
        delivered.extend(writes.iter().filter(|_| rng.random_bool(0.3)).cloned());
        delivered.shuffle(&mut rng);
        for (case, (strategy, lanes, target)) in cases.iter().enumerate() {
            let ws = Workspace::new();
            let table = format!("t{seed}_{case}");
            let conflict = format!("{}\n  {lanes}", strategy.yaml());
            let pipelines: BTreeMap<&str, String> = ORIGINS
                .iter()
                .map(|o| (*o, pipeline(&ws, target, &table, o, &conflict)))
                .collect();
            // Runs of consecutive deliveries from one site are applied by its pipeline,
            // in delivery order.
            let mut skipped = 0;
            for run in delivered.chunk_by(|a, b| a.origin == b.origin) {
                let origin = run[0].origin;
                let lines: Vec<String> = run.iter().map(Write::event).collect();
                ws.append_lines(&format!("{origin}.jsonl"), &lines);
                let summary = ws.run_ok(&ws.path(&pipelines[origin]));
                skipped += summary["conflicts_skipped"].as_u64().unwrap_or(0);
            }
            assert!(
                ws.dead_letters().is_empty(),
                "seed {seed} {strategy:?}: {:?}",
                ws.dead_letters()
            );
            let (rows, expected) = (final_rows(&ws, target, &table), oracle(*strategy, &writes));
            let case_figures = Figures::compare(delivered.len() as u64, &expected, &rows);
            figures.events += case_figures.events;
            figures.lost += case_figures.lost;
            figures.stale += case_figures.stale;
            if rows != expected {
                wrong.push(format!(
                    "seed {seed}, {strategy:?} with {lanes} (case {case}): {rows:?} against \
                     {expected:?}, delivered {delivered:?}"
                ));
            }
            // Every duplicate, at least, lost to its first delivery.
            assert!(skipped as usize >= delivered.len() - writes.len());
        }
    }
    figures.report_and_check(
        "sync: three sites into one table, every strategy",
        "shuffled delivery, a third of the writes twice",
    );
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A workspace and the pipeline that applies site b's changes (`b.jsonl`) to `table` in
/// `target` under `conflict`.
fn applying_site_b(target: &Target, table: &str, conflict: &str) -> (Workspace, String) {
    let ws = Workspace::new();
    let from_b = pipeline(&ws, target, table, "b", conflict);
    (ws, from_b)
}

#[test]
fn local_deletes_keep_their_version_and_echoes_are_dropped_in_postgres() {
    local_deletes_keep_their_version_and_echoes_are_dropped(&Target::postgres());
}

#[test]
fn local_deletes_keep_their_version_and_echoes_are_dropped_in_sqlite() {
    local_deletes_keep_their_version_and_echoes_are_dropped(&Target::Sqlite);
}

/// A delete made by an application at the target leaves a tombstone (the trigger weir
/// installs), so an older update that arrives later does not bring the row back; a newer
/// one does. Changes from the target's own site are dropped as echoes.
fn local_deletes_keep_their_version_and_echoes_are_dropped(target: &Target) {
    let (ws, from_b) = applying_site_b(target, "local", "strategy: last-write-wins\n  site: a");
    let write = |key, version, origin, value| Write {
        key,
        version,
        origin,
        value,
    };
    ws.append_lines(
        "b.jsonl",
        &[
            write(1, 5, "b", Some(10)).event(),
            write(2, 5, "b", Some(20)).event(),
        ],
    );
    ws.run_ok(&ws.path(&from_b));
    // The application at site a deletes key 1 (version 5) and updates key 2.
    target.execute(
        &ws,
        "DELETE FROM local WHERE id = 1; UPDATE local SET v = 7, o = 'a', val = 21 WHERE id = 2;",
    );
    // Late: key 1 at version 4 (older than the delete), key 2 at version 6 from b, and
    // an echo of site a's own write of key 2.
    ws.append_lines(
        "b.jsonl",
        &[
            write(1, 4, "b", Some(11)).event(),
            write(2, 6, "b", Some(22)).event(),
            write(2, 9, "a", Some(99)).event(),
        ],
    );
    let summary = ws.run_ok(&ws.path(&from_b));
    assert_eq!(summary["conflicts_skipped"], 2, "{summary}");
    assert_eq!(summary["echoes_dropped"], 1, "{summary}");
    let expected = BTreeMap::from([(2, (7, "a".to_string(), 21))]);
    assert_eq!(final_rows(&ws, target, "local"), expected);
    // A newer write brings key 1 back.
    ws.append_lines("b.jsonl", &[write(1, 6, "b", Some(12)).event()]);
    ws.run_ok(&ws.path(&from_b));
    assert_eq!(
        final_rows(&ws, target, "local")[&1],
        (6, "b".to_string(), 12)
    );
}

#[test]
fn a_key_inserted_during_the_batch_is_read_again_not_overwritten() {
    a_key_inserted_during_the_batch_is_read_again("strategy: last-write-wins\n  site: a");
}

/// The same race under a resolver plugin: the lww-resolver example, which keeps the
/// higher version.
#[test]
fn a_key_inserted_during_a_resolver_s_batch_is_read_again_not_overwritten() {
    let wasm = plugin_wasm("examples/lww-resolver");
    a_key_inserted_during_the_batch_is_read_again(&format!(
        "strategy: wasm\n  wasm: {}\n  config: {{ version_column: v }}",
        wasm.display()
    ));
}

/// A key with no row cannot be locked. When an application inserts it after weir read
/// the batch's keys and before weir's write, weir's insert finds the row: the count check
/// fails the batch as retryable, and applied again it reads the application's row and
/// keeps it (its version is newer). Without the check the older change would overwrite it.
fn a_key_inserted_during_the_batch_is_read_again(conflict: &str) {
    let target = Target::postgres();
    let pg = target.pg();
    let (ws, from_b) = applying_site_b(&target, "raced", conflict);
    // A first run creates the table.
    ws.append_lines(
        "b.jsonl",
        &[Write {
            key: 1,
            version: 1,
            origin: "b",
            value: Some(1),
        }
        .event()],
    );
    ws.run_ok(&ws.path(&from_b));
    // The application inserts key 2 (version 10) and holds its transaction open.
    let mut app = pg.client("sync");
    let mut tx = app.transaction().unwrap();
    tx.execute(
        "INSERT INTO raced (id, v, o, val) VALUES (2, 10, 'a', 100)",
        &[],
    )
    .unwrap();
    // weir brings an older write of key 2: it reads no row (the insert is uncommitted),
    // then its own insert waits on the application's.
    ws.append_lines(
        "b.jsonl",
        &[Write {
            key: 2,
            version: 5,
            origin: "b",
            value: Some(50),
        }
        .event()],
    );
    let weir = common::weir()
        .args(["run", "--json"])
        .arg(ws.path(&from_b))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut watcher = pg.client("sync");
    let started = std::time::Instant::now();
    loop {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE wait_event_type = 'Lock' AND query LIKE 'WITH written AS (INSERT INTO%'",
                &[],
            )
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "weir's insert never waited on the application's"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    tx.commit().unwrap();
    let output = weir.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("another writer inserted"),
        "the batch must have been applied again: {stderr}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["conflicts_skipped"], 1, "{summary}");
    assert_eq!(
        final_rows(&ws, &target, "raced")[&2],
        (10, "a".to_string(), 100)
    );
}

/// Tombstones past `tombstones.horizon` are removed (at the first batch of a run, then at
/// most once a minute); a change older than the delete that arrives after that is
/// treated as new, as docs/sync.md says.
#[test]
fn tombstones_past_the_horizon_are_removed_in_postgres() {
    tombstones_past_the_horizon_are_removed(&Target::postgres());
}

#[test]
fn tombstones_past_the_horizon_are_removed_in_sqlite() {
    tombstones_past_the_horizon_are_removed(&Target::Sqlite);
}

fn tombstones_past_the_horizon_are_removed(target: &Target) {
    let (ws, from_b) = applying_site_b(
        target,
        "horizon",
        "strategy: last-write-wins\n  tombstones: { horizon: 1s }",
    );
    let write = |key, version, value| Write {
        key,
        version,
        origin: "b",
        value,
    };
    ws.append_lines(
        "b.jsonl",
        &[write(1, 5, Some(1)).event(), write(1, 5, None).event()],
    );
    ws.run_ok(&ws.path(&from_b));
    let tombstones = || target.tombstones(&ws, "horizon");
    assert_eq!(tombstones(), vec![(1, "5".to_string())]);
    // Within the horizon an older write stays deleted...
    ws.append_lines("b.jsonl", &[write(1, 4, Some(2)).event()]);
    let summary = ws.run_ok(&ws.path(&from_b));
    assert_eq!(summary["conflicts_skipped"], 1, "{summary}");
    assert!(final_rows(&ws, target, "horizon").is_empty());
    // ...past it the tombstone is gone, and the next run removes it first thing.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    ws.append_lines("b.jsonl", &[write(2, 1, Some(3)).event()]);
    ws.run_ok(&ws.path(&from_b));
    assert_eq!(tombstones(), vec![]);
    ws.append_lines("b.jsonl", &[write(1, 3, Some(4)).event()]);
    ws.run_ok(&ws.path(&from_b));
    assert_eq!(
        final_rows(&ws, target, "horizon")[&1],
        (3, "b".to_string(), 4)
    );
}
