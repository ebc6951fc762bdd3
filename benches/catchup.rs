//! The `postgres-cdc` source catching up a backlog, against PostgreSQL's own logical
//! replication (`CREATE SUBSCRIPTION` on the same publication) in the same run, and the
//! end-to-end lag at half of weir's catch-up rate (issue 19):
//!
//! ```text
//! cargo bench --bench catchup                                  # 100,000 changes
//! cargo bench --bench catchup -- --changes 1000000 --repeat 3 --lag-seconds 60
//! WEIR_BENCH_EXTRA=$'batch:\n  max_events: 32768\n' cargo bench --bench catchup   # other settings
//! ```
//!
//! Ten tables start equal in three databases: the source and two targets. Two slots are
//! made on the publication, then the backlog is written: `--changes` row updates across
//! the ten tables, 100 rows per transaction, then one transaction marking row 1 of every
//! table. A subscription on one slot and a weir pipeline (`snapshot: never`) on the other
//! then each apply it; each is timed from its start until every table's mark has arrived
//! (both apply a table's transactions in commit order), and every table must then equal
//! the source. They run one after the other, never side by side.
//!
//! Beside them, `pg_recvlogical` reads the same backlog into /dev/null from a third slot:
//! the rate one slot's walsender decodes at, which no reader of one slot can pass.
//!
//! Lag: weir streams while a writer updates rows at half the rate weir caught up at, and
//! weir's heartbeats (one a second) measure the time from a heartbeat's writing at the
//! source to the sink applying it; the status's lag is sampled as it changes.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::Workspace;
use common::services::Postgres;
use support::{median, table_ddl};

const TABLES: usize = 10;
/// Rows updated per transaction of the backlog.
const PER_TRANSACTION: usize = 100;

/// Each table's rows as one digest: equal digests, equal tables.
fn digests(pg: &Postgres, database: &str) -> Vec<String> {
    let mut client = pg.client(database);
    (0..TABLES)
        .map(|t| {
            client
                .query_one(
                    &format!("SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM t{t} t"),
                    &[],
                )
                .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
                .unwrap_or_default()
        })
        .collect()
}

/// A copy of the source's tables in a new database `target`.
fn copy_tables(pg: &Postgres, target: &str) {
    pg.create_database(target);
    let mut dst = pg.client(target);
    let mut src = pg.client("source");
    for t in 0..TABLES {
        dst.batch_execute(&table_ddl(&format!("t{t}"))).unwrap();
        support::copy_table(&mut src, &mut dst, &format!("t{t}"));
    }
}

/// Whether every table of `database` holds the mark of `run`.
fn marked(pg: &Postgres, database: &str, run: usize) -> bool {
    let Ok(mut client) = postgres::Client::connect(&pg.url(database), postgres::NoTls) else {
        return false;
    };
    let mark = format!("mark {run}");
    (0..TABLES).all(|t| {
        client
            .query_opt(
                &format!("SELECT 1 FROM t{t} WHERE id = 1 AND note = $1"),
                &[&mark],
            )
            .ok()
            .flatten()
            .is_some()
    })
}

fn wait_marked(pg: &Postgres, database: &str, run: usize, started: Instant) -> f64 {
    while !marked(pg, database, run) {
        assert!(started.elapsed() < Duration::from_secs(3600), "too slow");
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed().as_secs_f64()
}

/// The backlog: `changes` row updates in transactions of [`PER_TRANSACTION`] rows, the
/// tables in turn, then the mark of `run` in every table.
fn write_backlog(pg: &Postgres, rows: usize, changes: usize, run: usize) {
    let mut client = pg.client("source");
    let mut written = 0;
    let mut start = 1;
    let mut table = 0;
    while written < changes {
        let n = PER_TRANSACTION.min(changes - written);
        if start + n > rows + 1 {
            start = 1;
        }
        client
            .batch_execute(&format!(
                "UPDATE t{table} SET qty = qty + 1, note = md5(note || '{run}')
                 WHERE id BETWEEN {start} AND {}",
                start + n - 1
            ))
            .unwrap();
        written += n;
        table = (table + 1) % TABLES;
        if table == 0 {
            start += n;
        }
    }
    let marks: Vec<String> = (0..TABLES)
        .map(|t| format!("UPDATE t{t} SET note = 'mark {run}' WHERE id = 1;"))
        .collect();
    client
        .batch_execute(&format!("BEGIN; {} COMMIT;", marks.join(" ")))
        .unwrap();
}

fn weir_pipeline(
    pg: &Postgres,
    ws: &Workspace,
    name: &str,
    slot: &str,
    target: &str,
) -> std::path::PathBuf {
    ws.write(
        &format!("{name}.yaml"),
        &format!(
            "name: {name}\nsource:\n  type: postgres-cdc\n  url: {}\n  publication: bench_pub\n  \
             slot: {slot}\n  snapshot: never\n  heartbeat: {{ interval: 1s }}\n\
             tables:\n  include: ['public.*']\n\
             sink:\n  type: postgres\n  url: {}\n  schema: public\n  mode: upsert\n  create: true\n\
             dead_letter:\n  type: file\n  path: {name}.dead-letters.jsonl\n{}",
            pg.url("source"),
            pg.url(target),
            // e.g. `batch: { max_events: 32768 }`, to try other batch settings.
            std::env::var("WEIR_BENCH_EXTRA").unwrap_or_default()
        ),
    )
}

fn start_weir(file: &std::path::Path) -> std::process::Child {
    common::weir()
        .args(["run", "--quiet"])
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn create_slot(pg: &Postgres, slot: &str) {
    pg.client("source")
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .unwrap();
}

struct Run {
    /// The walsender alone: `pg_recvlogical` writing the backlog to /dev/null.
    walsender: f64,
    subscription: f64,
    weir: f64,
    weir_cpu: f64,
}

fn catch_up(pg: &Postgres, ws: &Workspace, rows: usize, changes: usize, run: usize) -> Run {
    let (sub_db, weir_db) = (format!("sub{run}"), format!("weir{run}"));
    copy_tables(pg, &sub_db);
    copy_tables(pg, &weir_db);
    let (sub_slot, weir_slot) = (format!("sub_slot{run}"), format!("weir_slot{run}"));
    let recv_slot = format!("recv_slot{run}");
    create_slot(pg, &sub_slot);
    create_slot(pg, &weir_slot);
    create_slot(pg, &recv_slot);
    let backlog = Instant::now();
    write_backlog(pg, rows, changes, run);
    println!(
        "  run {run}: backlog of {changes} changes written in {:.1} s",
        backlog.elapsed().as_secs_f64()
    );
    let source = digests(pg, "source");
    let end: String = pg
        .client("source")
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .unwrap()
        .get(0);

    // The floor: one slot's walsender decodes the backlog at this rate for any reader.
    let started = Instant::now();
    let status = std::process::Command::new(common::services::find_pg_binary("pg_recvlogical"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
        ])
        .args([
            "-d", "source", "--slot", &recv_slot, "--start", "-P", "pgoutput",
        ])
        .args(["-o", "proto_version=1", "-o", "publication_names=bench_pub"])
        .args(["-E", &end, "-f", "/dev/null"])
        .status()
        .unwrap();
    assert!(status.success(), "pg_recvlogical failed");
    let walsender = started.elapsed().as_secs_f64();
    support::drop_slot(&mut pg.client("source"), &recv_slot);

    // PostgreSQL's own: a subscription on the same publication, from its slot.
    let mut sub = pg.client(&sub_db);
    sub.batch_execute(&format!(
        "CREATE SUBSCRIPTION sub{run} CONNECTION 'host=127.0.0.1 port={} dbname=source \
         user=postgres' PUBLICATION bench_pub WITH (create_slot = false, slot_name = \
         '{sub_slot}', copy_data = false, enabled = false)",
        pg.port
    ))
    .unwrap();
    let started = Instant::now();
    sub.batch_execute(&format!("ALTER SUBSCRIPTION sub{run} ENABLE"))
        .unwrap();
    let subscription = wait_marked(pg, &sub_db, run, started);
    sub.batch_execute(&format!("DROP SUBSCRIPTION sub{run}"))
        .unwrap();
    assert_eq!(digests(pg, &sub_db), source, "the subscription's tables");

    let file = weir_pipeline(pg, ws, &format!("catchup{run}"), &weir_slot, &weir_db);
    let started = Instant::now();
    let mut child = start_weir(&file);
    let weir = wait_marked(pg, &weir_db, run, started);
    let weir_cpu = support::process_cpu_seconds(child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(digests(pg, &weir_db), source, "weir's tables");
    support::drop_slot(&mut pg.client("source"), &weir_slot);
    Run {
        walsender,
        subscription,
        weir,
        weir_cpu,
    }
}

/// The status's lag in seconds, with when it was measured.
fn lag_sample(client: &mut postgres::Client, pipeline: &str) -> Option<(String, f64)> {
    let row = client
        .query_opt(
            "SELECT status::text FROM weir.status WHERE pipeline = $1",
            &[&pipeline],
        )
        .ok()??;
    let status: serde_json::Value = serde_json::from_str(&row.get::<_, String>(0)).ok()?;
    Some((
        status["lag"]["measured_at"].as_str()?.to_string(),
        status["lag"]["seconds"].as_f64()?,
    ))
}

/// p50 and p99 of weir's heartbeat lag while a writer changes `rate` rows a second.
fn steady_lag(
    pg: &Postgres,
    ws: &Workspace,
    rows: usize,
    rate: f64,
    seconds: u64,
) -> (Vec<f64>, f64) {
    let slot = "weir_lag";
    create_slot(pg, slot);
    let file = weir_pipeline(pg, ws, "lag", slot, "weir0");
    let mut child = start_weir(&file);
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written) = (stop.clone(), written.clone());
        let mut client = pg.client("source");
        std::thread::spawn(move || {
            // Every 50 ms, the rows due by then, in one transaction.
            let started = Instant::now();
            let (mut done, mut next_id, mut table) = (0u64, 1usize, 0usize);
            while !stop.load(Ordering::Relaxed) {
                let due = (started.elapsed().as_secs_f64() * rate) as u64;
                if due > done {
                    let n = (due - done) as usize;
                    if next_id + n > rows {
                        next_id = 1;
                    }
                    client
                        .batch_execute(&format!(
                            "UPDATE t{table} SET qty = qty + 1 WHERE id BETWEEN {next_id} AND {}",
                            next_id + n - 1
                        ))
                        .unwrap();
                    done += n as u64;
                    next_id += n;
                    table = (table + 1) % TABLES;
                    written.store(done, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let mut client = pg.client("weir0");
    // The first seconds connect and settle; then every new measurement is a sample.
    std::thread::sleep(Duration::from_secs(5));
    let mut samples = Vec::new();
    let mut last = None;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        if let Some((at, lag)) = lag_sample(&mut client, "lag")
            && last.as_ref() != Some(&at)
        {
            samples.push(lag);
            last = Some(at);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let achieved = written.load(Ordering::Relaxed) as f64 / (seconds as f64 + 5.0);
    let _ = child.kill();
    let _ = child.wait();
    support::drop_slot(&mut pg.client("source"), slot);
    (samples, achieved)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let values = support::number_args(&[
        ("--changes", 100_000),
        ("--repeat", 1),
        ("--lag-seconds", 30),
    ]);
    let (changes, repeat, lag_seconds) = (values[0], values[1].max(1), values[2] as u64);
    let rows = (changes / TABLES).max(10_000);
    println!(
        "weir catch-up benchmark: {TABLES} tables of {rows} rows, a backlog of {changes} \
         changes ({PER_TRANSACTION} rows per transaction), {repeat} run(s)"
    );
    let pg = Postgres::start();
    pg.create_database("source");
    {
        let mut source = pg.client("source");
        for t in 0..TABLES {
            source.batch_execute(&table_ddl(&format!("t{t}"))).unwrap();
            source
                .batch_execute(&format!(
                    "INSERT INTO t{t} SELECT g, 'customer ' || g, g * 0.01, g % 1000,
                         TIMESTAMPTZ '2024-01-01 00:00:00+00' + g * interval '1 second',
                         DATE '2024-01-01' + g % 3650, g % 2 = 0, md5(g::text)
                     FROM generate_series(1, {rows}) g"
                ))
                .unwrap();
        }
        let tables: Vec<String> = (0..TABLES).map(|t| format!("t{t}")).collect();
        source
            .batch_execute(&format!(
                "CREATE PUBLICATION bench_pub FOR TABLE {}",
                tables.join(", ")
            ))
            .unwrap();
        source.batch_execute("VACUUM ANALYZE").unwrap();
    }
    let ws = Workspace::new();
    let (mut subs, mut weirs, mut cpus) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..repeat {
        let r = catch_up(&pg, &ws, rows, changes, run);
        println!(
            "  pg_recvlogical       {:7.2} s  {:>9.0} changes/s  (the walsender alone, to /dev/null)",
            r.walsender,
            changes as f64 / r.walsender
        );
        println!(
            "  CREATE SUBSCRIPTION  {:7.2} s  {:>9.0} changes/s",
            r.subscription,
            changes as f64 / r.subscription
        );
        println!(
            "  weir postgres-cdc    {:7.2} s  {:>9.0} changes/s  {:.2} µs CPU/change  ({:.2}× the subscription)",
            r.weir,
            changes as f64 / r.weir,
            r.weir_cpu / changes as f64 * 1e6,
            r.subscription / r.weir
        );
        subs.push(r.subscription);
        weirs.push(r.weir);
        cpus.push(r.weir_cpu);
    }
    let (sub, weir) = (median(&mut subs).unwrap(), median(&mut weirs).unwrap());
    let weir_rate = changes as f64 / weir;
    println!(
        "median: subscription {:.0} changes/s, weir {weir_rate:.0} changes/s: {:.2}× (target 1.0×); \
         weir CPU {:.2} µs/change",
        changes as f64 / sub,
        sub / weir,
        median(&mut cpus).unwrap() / changes as f64 * 1e6
    );

    let rate = weir_rate / 2.0;
    let (mut samples, achieved) = steady_lag(&pg, &ws, rows, rate, lag_seconds);
    samples.sort_by(f64::total_cmp);
    if samples.is_empty() {
        println!("lag: no heartbeat was applied in {lag_seconds} s");
        return;
    }
    println!(
        "lag at half weir's rate ({rate:.0} changes/s asked, {achieved:.0} written), from \
         heartbeats, {} samples over {lag_seconds} s: p50 {:.3} s, p99 {:.3} s, max {:.3} s",
        samples.len(),
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples[samples.len() - 1]
    );
}
