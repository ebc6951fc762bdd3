//! The `postgres-cdc` source's copy against PostgreSQL's own `COPY TO | COPY FROM`, in the
//! same run on the same server (issue 19):
//!
//! ```text
//! cargo bench --bench capture                          # 10 tables of 100,000 rows
//! cargo bench --bench capture -- --rows 1000000 --repeat 3
//! ```
//!
//! Both copy the same 10 tables (an integer key and 7 columns of 6 types) from the
//! database `source` into an empty database; the baseline streams each table's
//! `COPY … TO STDOUT` into `COPY … FROM STDIN`, the fastest a client can move the rows.
//! weir's time runs from process start until the target holds every row (it then keeps
//! streaming and is stopped); beside it, its CPU time per row.
//!
//! `WEIR_COMPARE=<path to another weir binary>` copies a third time in each run with
//! that build: a before-and-after of a change measured in one run.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::Workspace;
use common::services::Postgres;
use support::{median, table_ddl};

const TABLES: usize = 10;

struct Args {
    rows: usize,
    repeat: usize,
}

fn args() -> Args {
    let values = support::number_args(&[("--rows", 100_000), ("--repeat", 1)]);
    Args {
        rows: values[0],
        repeat: values[1].max(1),
    }
}

/// `COPY TO STDOUT` of every table piped into `COPY FROM STDIN` of `target`.
fn copy_baseline(pg: &Postgres, target: &str) -> f64 {
    let mut dst = pg.client(target);
    for t in 0..TABLES {
        dst.batch_execute(&table_ddl(&format!("t{t}"))).unwrap();
    }
    let mut src = pg.client("source");
    let started = Instant::now();
    for t in 0..TABLES {
        support::copy_table(&mut src, &mut dst, &format!("t{t}"));
    }
    started.elapsed().as_secs_f64()
}

/// Whether every table of `target` holds its last row (`rows_per_table`). Asked of the
/// key's index, so the polling costs the server next to nothing beside the copy (a
/// `count(*)` of a table of 1M rows ten times a second took a good part of a core, which
/// the baseline, timed by its own client, never paid). weir copies each table in key
/// order and applies its batches one after another, so the last row's commit means every
/// row; `assert_all_copied` counts them once the timer has stopped. Tables found full
/// are not asked again (`full`).
fn all_copied(client: &mut postgres::Client, full: &mut [bool], rows_per_table: i64) -> bool {
    for (t, done) in full.iter_mut().enumerate() {
        if !*done {
            *done = client
                .query_one(&format!("SELECT max(id) FROM t{t}"), &[])
                .map(|r| r.get::<_, Option<i64>>(0) >= Some(rows_per_table))
                .unwrap_or(false);
        }
    }
    full.iter().all(|done| *done)
}

/// Every table of `target` holds exactly `rows_per_table` rows.
fn assert_all_copied(client: &mut postgres::Client, rows_per_table: i64) {
    for t in 0..TABLES {
        let count: i64 = client
            .query_one(&format!("SELECT count(*) FROM t{t}"), &[])
            .unwrap()
            .get(0);
        assert_eq!(count, rows_per_table, "table t{t} holds every row");
    }
}

/// weir's copy into `target`: seconds until the target holds every row, and CPU seconds.
fn weir_copy(
    pg: &Postgres,
    ws: &Workspace,
    target: &str,
    (run, binary): (usize, Option<&str>),
    rows: i64,
) -> (f64, f64) {
    let name = format!("capture{run}{}", if binary.is_some() { "b" } else { "" });
    let yaml = format!(
        "name: {name}\nsource:\n  type: postgres-cdc\n  url: {}\n  publication: weir_bench\n\
         \x20 slot: {name}\n\
         tables:\n  include: ['public.*']\n\
         sink:\n  type: postgres\n  url: {}\n  schema: public\n  mode: upsert\n  create: true\n\
         dead_letter:\n  type: file\n  path: {name}.dead-letters.jsonl\n",
        pg.url("source"),
        pg.url(target)
    );
    let file = ws.write(&format!("{name}.yaml"), &yaml);
    let started = Instant::now();
    let mut command = match binary {
        Some(path) => std::process::Command::new(path),
        None => common::weir(),
    };
    let mut child = command
        .args(["run", "--quiet"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut client = pg.client(target);
    let mut full = [false; TABLES];
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if all_copied(&mut client, &mut full, rows / TABLES as i64) {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "weir stopped before copying every row"
        );
        assert!(started.elapsed() < Duration::from_secs(3600), "too slow");
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = support::process_cpu_seconds(pid);
    assert_all_copied(&mut client, rows / TABLES as i64);
    let _ = child.kill();
    let _ = child.wait();
    support::drop_slot(&mut pg.client("source"), &name);
    (seconds, cpu)
}

fn main() {
    let args = args();
    let rows = (args.rows * TABLES) as i64;
    println!(
        "weir capture benchmark: {TABLES} tables of {} rows ({rows} rows)",
        args.rows
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
                     FROM generate_series(1, {}) g",
                    args.rows
                ))
                .unwrap();
        }
        source.batch_execute("VACUUM ANALYZE").unwrap();
    }
    let ws = Workspace::new();
    let (mut copy_times, mut weir_times, mut weir_cpu) = (Vec::new(), Vec::new(), Vec::new());
    let mut other_times = Vec::new();
    for run in 0..args.repeat {
        let baseline = format!("copy{run}");
        pg.create_database(&baseline);
        let seconds = copy_baseline(&pg, &baseline);
        assert_all_copied(&mut pg.client(&baseline), rows / TABLES as i64);
        println!(
            "  COPY TO | COPY FROM  {seconds:7.2} s  {:>9.0} rows/s",
            rows as f64 / seconds
        );
        copy_times.push(seconds);

        let target = format!("weir{run}");
        pg.create_database(&target);
        let (seconds, cpu) = weir_copy(&pg, &ws, &target, (run, None), rows);
        println!(
            "  weir postgres-cdc    {seconds:7.2} s  {:>9.0} rows/s  {:.2} µs CPU/row  ({:.2}× COPY)",
            rows as f64 / seconds,
            cpu / rows as f64 * 1e6,
            copy_times[run] / seconds
        );
        weir_times.push(seconds);
        weir_cpu.push(cpu);
        // Another build of weir, copied in the same run (a same-run A/B of a change).
        if let Ok(other) = std::env::var("WEIR_COMPARE") {
            let target = format!("other{run}");
            pg.create_database(&target);
            let (seconds, cpu) = weir_copy(&pg, &ws, &target, (run, Some(&other)), rows);
            println!(
                "  WEIR_COMPARE         {seconds:7.2} s  {:>9.0} rows/s  {:.2} µs CPU/row  ({:.2}× COPY)",
                rows as f64 / seconds,
                cpu / rows as f64 * 1e6,
                copy_times[run] / seconds
            );
            other_times.push(seconds);
        }
    }
    if let Some(other) = median(&mut other_times) {
        println!("median of WEIR_COMPARE: {:.0} rows/s", rows as f64 / other);
    }
    let (copy, weir) = (
        median(&mut copy_times).unwrap(),
        median(&mut weir_times).unwrap(),
    );
    println!(
        "median: COPY {:.0} rows/s, weir {:.0} rows/s: {:.2}× (target 0.8×); weir CPU {:.2} µs/row",
        rows as f64 / copy,
        rows as f64 / weir,
        copy / weir,
        median(&mut weir_cpu).unwrap() / rows as f64 * 1e6
    );
}
