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

/// Whether every table of `target` holds `rows_per_table` rows. Tables found full are
/// not counted again (`full`), so the polling costs the server little beside the copy.
fn all_copied(client: &mut postgres::Client, full: &mut [bool], rows_per_table: i64) -> bool {
    for (t, done) in full.iter_mut().enumerate() {
        if !*done {
            *done = client
                .query_one(&format!("SELECT count(*) FROM t{t}"), &[])
                .map(|r| r.get::<_, i64>(0) >= rows_per_table)
                .unwrap_or(false);
        }
    }
    full.iter().all(|done| *done)
}

/// weir's copy into `target`: seconds until the target holds every row, and CPU seconds.
fn weir_copy(pg: &Postgres, ws: &Workspace, target: &str, run: usize, rows: i64) -> (f64, f64) {
    let name = format!("capture{run}");
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
    let mut child = common::weir()
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
    let _ = child.kill();
    let _ = child.wait();
    pg.client("source")
        .execute("SELECT pg_drop_replication_slot($1)", &[&name])
        .unwrap();
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
    for run in 0..args.repeat {
        let baseline = format!("copy{run}");
        pg.create_database(&baseline);
        let seconds = copy_baseline(&pg, &baseline);
        assert!(all_copied(
            &mut pg.client(&baseline),
            &mut [false; TABLES],
            rows / TABLES as i64
        ));
        println!(
            "  COPY TO | COPY FROM  {seconds:7.2} s  {:>9.0} rows/s",
            rows as f64 / seconds
        );
        copy_times.push(seconds);

        let target = format!("weir{run}");
        pg.create_database(&target);
        let (seconds, cpu) = weir_copy(&pg, &ws, &target, run, rows);
        println!(
            "  weir postgres-cdc    {seconds:7.2} s  {:>9.0} rows/s  {:.2} µs CPU/row  ({:.2}× COPY)",
            rows as f64 / seconds,
            cpu / rows as f64 * 1e6,
            copy_times[run] / seconds
        );
        weir_times.push(seconds);
        weir_cpu.push(cpu);
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
