//! Reconciliation benchmarks (issue 6), every figure from the same run:
//!
//! ```text
//! cargo bench --bench reconcile                          # 1M rows, 3 rounds
//! cargo bench --bench reconcile -- --rows 200000 --repeat 1
//! cargo bench --bench reconcile -- --parquet-rows 10000000 --only parquet
//! ```
//!
//! 1. **Checksum mode against a real peer.** Two PostgreSQL tables of `--rows` rows and 5
//!    columns, about 100 rows apart (33 missing, 33 extra, 34 changed), compared by:
//!    - the floor: PostgreSQL hashing both tables once, on two connections at once
//!      (`SELECT bit_xor(hashtextextended(t::text, 0)) FROM tbl t`);
//!    - `weir reconcile --mode checksum`;
//!    - `reladiff` (PyPI, the maintained fork of data-diff) with its checksum-and-bisect
//!      algorithm (`-a hashdiff`) and its defaults.
//!
//!    Rounds are interleaved; the table shows medians and the ratios weir/floor and
//!    reladiff/weir. Both tools must report the same rows, or the bench fails.
//! 3. **Checksum mode over many tables** (`--only tables`). `--tables` (100) pairs of
//!    PostgreSQL tables of `--table-rows` (100k) rows in schemas `src` and `dst`, three
//!    pairs about 100 rows apart, compared by:
//!    - the floor: PostgreSQL hashing every table once, both schemas at once (one
//!      connection each);
//!    - `weir reconcile --mode checksum` on a many-table pipeline (`tables`, a
//!      `postgres` schema on each side);
//!    - `reladiff -a hashdiff` run table by table, as one would without weir.
//!
//!    Both must name the same three tables and rows.
//! 2. **Full mode over Parquet.** Two snapshots of `--parquet-rows` rows (5 columns, about
//!    100 rows apart) compared by `weir reconcile` in full mode: time and rows per second.
//!
//! `reladiff` is installed with `pip install 'reladiff[postgresql]'` when missing.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    ArrayRef, Decimal128Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use common::services::Postgres;
use common::{Workspace, weir};
use support::{cpu_seconds, median};

struct Args {
    rows: i64,
    parquet_rows: i64,
    repeat: usize,
    /// `postgres`, `parquet`, `tables`, or the first two (default).
    only: Option<String>,
    tables: i64,
    table_rows: i64,
    /// `reconcile.concurrency` of the many-table bench.
    concurrency: i64,
}

fn args() -> Args {
    let mut args = Args {
        rows: 1_000_000,
        parquet_rows: 10_000_000,
        repeat: 3,
        only: None,
        tables: 100,
        table_rows: 100_000,
        concurrency: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or_else(|| panic!("{arg} needs a number"))
        };
        match arg.as_str() {
            "--rows" => args.rows = value(),
            "--parquet-rows" => args.parquet_rows = value(),
            "--repeat" => args.repeat = value().max(1) as usize,
            "--tables" => args.tables = value().max(3),
            "--table-rows" => args.table_rows = value().max(1000),
            "--concurrency" => args.concurrency = value().clamp(1, 64),
            "--only" => args.only = it.next(),
            _ => {}
        }
    }
    args
}

/// Keys changed, deleted from `b` and added to `b`: about 100 differences.
fn injected(rows: i64) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    let step = rows / 101;
    let picks: Vec<i64> = (1..=100).map(|i| i * step).collect();
    let changed = picks.iter().copied().step_by(3).collect();
    let deleted = picks.iter().copied().skip(1).step_by(3).collect();
    let added = (1..=33).map(|i| rows + i).collect();
    (changed, deleted, added)
}

fn setup_postgres(pg: &Postgres, rows: i64) {
    let mut client = pg.client("bench");
    let (changed, deleted, added) = injected(rows);
    let list = |keys: &[i64]| {
        keys.iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    client
        .batch_execute(&format!(
            "CREATE TABLE bench_a (id bigint PRIMARY KEY, name text, price numeric(12,2),
                 ts timestamptz, qty integer);
             INSERT INTO bench_a SELECT g, md5(g::text), (g % 100000) / 100.0,
                 timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second', g % 97
             FROM generate_series(1, {rows}) g;
             CREATE TABLE bench_b (LIKE bench_a INCLUDING ALL);
             INSERT INTO bench_b SELECT * FROM bench_a;
             UPDATE bench_b SET price = price + 0.01 WHERE id IN ({changed});
             DELETE FROM bench_b WHERE id IN ({deleted});
             INSERT INTO bench_b SELECT g, md5(g::text), 1.00, now(), 1
             FROM unnest(ARRAY[{added}]::bigint[]) g;",
            changed = list(&changed),
            deleted = list(&deleted),
            added = list(&added),
        ))
        .expect("create the bench tables");
    // VACUUM runs outside a transaction: one statement per call.
    for table in ["bench_a", "bench_b"] {
        client
            .batch_execute(&format!("VACUUM ANALYZE {table}"))
            .expect("vacuum");
    }
}

/// The floor: both tables hashed once, on two connections at the same time.
fn floor(pg: &Postgres) -> f64 {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for table in ["bench_a", "bench_b"] {
            scope.spawn(move || {
                pg.client("bench")
                    .query_one(
                        &format!("SELECT bit_xor(hashtextextended(t::text, 0)) FROM {table} t"),
                        &[],
                    )
                    .expect("hash");
            });
        }
    });
    started.elapsed().as_secs_f64()
}

/// `(seconds, keys reported missing, extra, mismatched)`.
fn weir_checksum(
    ws: &Workspace,
    pg: &Postgres,
) -> (f64, BTreeSet<i64>, BTreeSet<i64>, BTreeSet<i64>) {
    let url = pg.url("bench");
    let pipeline = ws.write(
        "reconcile.yaml",
        &format!(
            "name: bench\nsource: {{ type: file, path: e.jsonl }}\n\
             table: {{ name: t, primary_key: [id] }}\nsink: {{ type: sqlite, path: t.db }}\n\
             reconcile:\n  source: {{ type: postgres, url: \"{url}\", table: bench_a }}\n\
             \x20 target: {{ type: postgres, url: \"{url}\", table: bench_b }}\n\
             \x20 mode: checksum\n"
        ),
    );
    let started = Instant::now();
    let cpu = cpu_seconds(libc::RUSAGE_CHILDREN);
    let output = weir()
        .args(["reconcile", "--json", "-q", "--limit", "1000"])
        .arg(&pipeline)
        .output()
        .expect("run weir");
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "  weir's own CPU: {:.2} s",
        cpu_seconds(libc::RUSAGE_CHILDREN) - cpu
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let keys = |rows: &serde_json::Value| -> BTreeSet<i64> {
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| r[0].as_str().unwrap().parse().unwrap())
            .collect()
    };
    let mismatched = report["mismatched"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["key"][0].as_str().unwrap().parse().unwrap())
        .collect();
    println!("  weir checksum stats: {}", report["checksum"]);
    (
        seconds,
        keys(&report["missing"]["rows"]),
        keys(&report["extra"]["rows"]),
        mismatched,
    )
}

/// `(seconds, keys only in a, only in b, in both but different)`.
fn reladiff(pg: &Postgres) -> (f64, BTreeSet<i64>, BTreeSet<i64>, BTreeSet<i64>) {
    let url = format!("postgresql://postgres@127.0.0.1:{}/bench", pg.port);
    let started = Instant::now();
    // reladiff prints through `rich`, which wraps at the terminal's width: give it room.
    let output = Command::new("reladiff")
        .env("COLUMNS", "100000")
        .env("NO_COLOR", "1")
        .args([
            &url, "bench_a", &url, "bench_b", "-a", "hashdiff", "-k", "id",
        ])
        .args([
            "-c", "name", "-c", "price", "-c", "ts", "-c", "qty", "--json",
        ])
        .output()
        .expect("run reladiff");
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (mut minus, mut plus) = (BTreeSet::new(), BTreeSet::new());
    // Each difference is a line `["-" or "+", [key, columns…]]`.
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line.trim()) else {
            continue;
        };
        let key: i64 = value[1][0]
            .as_str()
            .and_then(|k| k.parse().ok())
            .or_else(|| value[1][0].as_i64())
            .unwrap_or_else(|| panic!("a key in {line}"));
        match value[0].as_str() {
            Some("-") => minus.insert(key),
            Some("+") => plus.insert(key),
            _ => panic!("an entry type in {line}"),
        };
    }
    let both: BTreeSet<i64> = minus.intersection(&plus).copied().collect();
    let only_a = minus.difference(&both).copied().collect();
    let only_b = plus.difference(&both).copied().collect();
    (seconds, only_a, only_b, both)
}

fn ensure_reladiff() {
    let present = Command::new("reladiff").arg("--version").output();
    if present.is_ok_and(|o| o.status.success()) {
        return;
    }
    let status = Command::new("pip")
        .args(["install", "--quiet", "reladiff[postgresql]"])
        .status()
        .expect("run pip");
    assert!(status.success(), "cannot install reladiff");
}

fn postgres_bench(args: &Args) {
    ensure_reladiff();
    let pg = Postgres::start();
    pg.create_database("bench");
    println!("setting up two tables of {} rows...", args.rows);
    setup_postgres(&pg, args.rows);
    let (changed, deleted, added) = injected(args.rows);
    let expected = (
        deleted.iter().copied().collect::<BTreeSet<_>>(),
        added.iter().copied().collect::<BTreeSet<_>>(),
        changed.iter().copied().collect::<BTreeSet<_>>(),
    );
    let ws = Workspace::new();
    let (mut floors, mut weirs, mut reladiffs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=args.repeat {
        let f = floor(&pg);
        let (w, missing, extra, mismatched) = weir_checksum(&ws, &pg);
        assert_eq!((missing, extra, mismatched), expected, "weir's differences");
        let (r, only_a, only_b, both) = reladiff(&pg);
        assert_eq!((only_a, only_b, both), expected, "reladiff's differences");
        println!(
            "round {round}: floor {f:.2} s, weir {w:.2} s ({:.2}x floor), reladiff {r:.2} s \
             ({:.2}x weir)",
            w / f,
            r / w
        );
        floors.push(f);
        weirs.push(w);
        reladiffs.push(r);
    }
    let (mut over_floor, mut speedup) = (ratios(&weirs, &floors), ratios(&reladiffs, &weirs));
    let (f, w, r) = (
        median(&mut floors).unwrap(),
        median(&mut weirs).unwrap(),
        median(&mut reladiffs).unwrap(),
    );
    println!(
        "\n{} rows x 2 tables, {} differences, medians of {} rounds:",
        args.rows,
        expected.0.len() + expected.1.len() + expected.2.len(),
        args.repeat
    );
    println!("  floor (hash both tables at once)   {f:>7.2} s");
    println!(
        "  weir reconcile --mode checksum     {w:>7.2} s   {:.2}x the floor (rounds: {:?})",
        median(&mut over_floor).unwrap(),
        over_floor
            .iter()
            .map(|x| (x * 100.0).round() / 100.0)
            .collect::<Vec<_>>()
    );
    println!(
        "  reladiff -a hashdiff               {r:>7.2} s   {:.2}x weir's time (rounds: {:?})",
        median(&mut speedup).unwrap(),
        speedup
            .iter()
            .map(|x| (x * 100.0).round() / 100.0)
            .collect::<Vec<_>>()
    );
}

fn write_snapshot(path: &std::path::Path, rows: i64, target: bool) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("price", DataType::Decimal128(12, 2), true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("qty", DataType::Int32, true),
    ]));
    let (changed, deleted, added) = injected(rows);
    let file = std::fs::File::create(path).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(props)).unwrap();
    let chunk = 1_000_000;
    let mut start = 1;
    let last = if target {
        rows + added.len() as i64
    } else {
        rows
    };
    while start <= last {
        let end = (start + chunk).min(last + 1);
        let ids: Vec<i64> = (start..end)
            .filter(|id| !(target && deleted.binary_search(id).is_ok()))
            .collect();
        let price = |id: i64| {
            let base = (id % 100_000) as i128;
            if target && changed.binary_search(&id).is_ok() {
                base + 1
            } else {
                base
            }
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|id| format!("name-{id:x}")),
            )),
            Arc::new(
                Decimal128Array::from_iter_values(ids.iter().map(|id| price(*id)))
                    .with_precision_and_scale(12, 2)
                    .unwrap(),
            ),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    ids.iter().map(|id| 1_767_225_600_000_000 + id * 1_000_000),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(Int32Array::from_iter_values(
                ids.iter().map(|id| (id % 97) as i32),
            )),
        ];
        writer
            .write(&RecordBatch::try_new(schema.clone(), columns).unwrap())
            .unwrap();
        start = end;
    }
    writer.close().unwrap();
}

fn parquet_bench(args: &Args) {
    let ws = Workspace::new();
    println!(
        "writing two Parquet snapshots of {} rows...",
        args.parquet_rows
    );
    write_snapshot(&ws.path("a.parquet"), args.parquet_rows, false);
    write_snapshot(&ws.path("b.parquet"), args.parquet_rows, true);
    let pipeline = ws.write(
        "reconcile.yaml",
        "name: bench\nsource: { type: file, path: e.jsonl }\n\
         table: { name: t, primary_key: [id] }\nsink: { type: sqlite, path: t.db }\n\
         reconcile:\n  source: { type: parquet, path: a.parquet }\n\
         \x20 target: { type: parquet, path: b.parquet }\n",
    );
    let mut times = Vec::new();
    let mut checks = Vec::new();
    for round in 1..=args.repeat {
        // What checking the two files costs (reconcile does it before reading them):
        // their footers and page headers walked, `tables::parquet_check`.
        let started = Instant::now();
        for file in ["a.parquet", "b.parquet"] {
            weir_reconcile::tables::parquet_check::check_file(&ws.path(file)).unwrap();
        }
        checks.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        let output = weir()
            .args(["reconcile", "--json", "-q"])
            .arg(&pipeline)
            .output()
            .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(output.status.code(), Some(1));
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let counts = (
            report["missing"]["count"].as_u64().unwrap(),
            report["extra"]["count"].as_u64().unwrap(),
            report["mismatched"]["count"].as_u64().unwrap(),
        );
        let (changed, deleted, added) = injected(args.parquet_rows);
        assert_eq!(
            counts,
            (
                deleted.len() as u64,
                added.len() as u64,
                changed.len() as u64
            )
        );
        println!(
            "round {round}: {seconds:.2} s, {:.0} rows/s (both snapshots' rows); checking the \
             files alone {:.3} s",
            2.0 * args.parquet_rows as f64 / seconds,
            checks.last().unwrap()
        );
        times.push(seconds);
    }
    let t = median(&mut times).unwrap();
    let check = median(&mut checks).unwrap();
    println!(
        "\nfull mode, two Parquet snapshots of {} rows: {t:.2} s (median of {}), {:.0} rows/s; \
         of which checking the files {check:.3} s ({:.1}%)",
        args.parquet_rows,
        args.repeat,
        2.0 * args.parquet_rows as f64 / t,
        100.0 * check / t
    );
}

/// Each round's `a / b`.
fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(a, b)| a / b).collect()
}

fn main() {
    let args = args();
    let only = args
        .only
        .clone()
        .unwrap_or_else(|| "postgres,parquet".into());
    if only.contains("postgres") {
        postgres_bench(&args);
    }
    if only.contains("parquet") {
        parquet_bench(&args);
    }
    if only.contains("tables") {
        tables_bench(&args);
    }
}

/// The tables of the many-table bench, and which of them differ.
fn bench_tables(args: &Args) -> (Vec<String>, Vec<String>) {
    let names: Vec<String> = (0..args.tables).map(|i| format!("t{i:03}")).collect();
    let differing = [1, args.tables / 2, args.tables - 1]
        .iter()
        .map(|&i| names[i as usize].clone())
        .collect();
    (names, differing)
}

fn setup_tables(pg: &Postgres, args: &Args) {
    let mut client = pg.client("bench");
    let (names, differing) = bench_tables(args);
    let (changed, deleted, added) = injected(args.table_rows);
    let list = |keys: &[i64]| {
        keys.iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    client
        .batch_execute("CREATE SCHEMA src; CREATE SCHEMA dst;")
        .unwrap();
    for name in &names {
        let rows = args.table_rows;
        client
            .batch_execute(&format!(
                "CREATE TABLE src.{name} (id bigint PRIMARY KEY, name text, price numeric(12,2),
                     ts timestamptz, qty integer);
                 INSERT INTO src.{name} SELECT g, md5(g::text), (g % 100000) / 100.0,
                     timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second', g % 97
                 FROM generate_series(1, {rows}) g;
                 CREATE TABLE dst.{name} (LIKE src.{name} INCLUDING ALL);
                 INSERT INTO dst.{name} SELECT * FROM src.{name};"
            ))
            .expect("create a bench table");
        if differing.contains(name) {
            client
                .batch_execute(&format!(
                    "UPDATE dst.{name} SET price = price + 0.01 WHERE id IN ({changed});
                     DELETE FROM dst.{name} WHERE id IN ({deleted});
                     INSERT INTO dst.{name} SELECT g, md5(g::text), 1.00, now(), 1
                     FROM unnest(ARRAY[{added}]::bigint[]) g;",
                    changed = list(&changed),
                    deleted = list(&deleted),
                    added = list(&added),
                ))
                .expect("make a table differ");
        }
    }
    client.batch_execute("VACUUM ANALYZE").expect("vacuum");
}

/// The floor: every table of both schemas hashed once, one connection per schema.
fn tables_floor(pg: &Postgres, names: &[String]) -> f64 {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for schema in ["src", "dst"] {
            scope.spawn(move || {
                let mut client = pg.client("bench");
                for name in names {
                    client
                        .query_one(
                            &format!(
                                "SELECT bit_xor(hashtextextended(t::text, 0)) FROM {schema}.{name} t"
                            ),
                            &[],
                        )
                        .expect("hash");
                }
            });
        }
    });
    started.elapsed().as_secs_f64()
}

/// `(seconds, differing tables, differences in all)`.
fn weir_tables(ws: &Workspace, pg: &Postgres, concurrency: i64) -> (f64, Vec<String>, u64) {
    let url = pg.url("bench");
    let pipeline = ws.write(
        "tables.yaml",
        &format!(
            "name: bench-tables\nsource: {{ type: file, path: e.jsonl }}\n\
             tables: {{ include: ['src.*'] }}\nsink: {{ type: sqlite, path: t.db }}\n\
             reconcile:\n  source: {{ type: postgres, url: \"{url}\", schema: src }}\n\
             \x20 target: {{ type: postgres, url: \"{url}\", schema: dst }}\n\
             \x20 mode: checksum\n  concurrency: {concurrency}\n"
        ),
    );
    let started = Instant::now();
    let cpu = cpu_seconds(libc::RUSAGE_CHILDREN);
    let output = weir()
        .args(["reconcile", "--json", "-q", "--limit", "1000"])
        .arg(&pipeline)
        .output()
        .expect("run weir");
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "  weir's own CPU: {:.2} s",
        cpu_seconds(libc::RUSAGE_CHILDREN) - cpu
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut differing = Vec::new();
    let mut differences = 0;
    for line in report["tables"].as_array().unwrap() {
        assert_eq!(line["mode"], "checksum", "{line}");
        if line["status"] != "equal" {
            differing.push(line["table"].as_str().unwrap().to_string());
        }
        for kind in ["missing", "extra", "mismatched"] {
            differences += line[kind].as_u64().unwrap();
        }
    }
    (seconds, differing, differences)
}

/// `(seconds, differing tables, differences in all)`, reladiff run on each pair in turn.
fn reladiff_tables(pg: &Postgres, names: &[String]) -> (f64, Vec<String>, u64) {
    let url = format!("postgresql://postgres@127.0.0.1:{}/bench", pg.port);
    let started = Instant::now();
    let (mut differing, mut differences) = (Vec::new(), 0);
    for name in names {
        let output = Command::new("reladiff")
            .env("COLUMNS", "100000")
            .env("NO_COLOR", "1")
            .args([
                &url,
                &format!("src.{name}"),
                &url,
                &format!("dst.{name}"),
                "-a",
                "hashdiff",
                "-k",
                "id",
            ])
            .args([
                "-c", "name", "-c", "price", "-c", "ts", "-c", "qty", "--json",
            ])
            .output()
            .expect("run reladiff");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut keys = BTreeSet::new();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(line.trim()) {
                keys.insert(value[1][0].to_string());
            }
        }
        if !keys.is_empty() {
            differing.push(name.clone());
            differences += keys.len() as u64;
        }
    }
    (started.elapsed().as_secs_f64(), differing, differences)
}

fn tables_bench(args: &Args) {
    ensure_reladiff();
    let pg = Postgres::start();
    pg.create_database("bench");
    println!(
        "setting up {} table pairs of {} rows...",
        args.tables, args.table_rows
    );
    setup_tables(&pg, args);
    let (names, expected) = bench_tables(args);
    let ws = Workspace::new();
    let (mut floors, mut weirs, mut reladiffs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=args.repeat {
        let f = tables_floor(&pg, &names);
        let (w, differing, weir_differences) = weir_tables(&ws, &pg, args.concurrency);
        assert_eq!(differing, expected, "weir's differing tables");
        let (r, reladiff_differing, reladiff_differences) = reladiff_tables(&pg, &names);
        assert_eq!(reladiff_differing, expected, "reladiff's differing tables");
        assert_eq!(
            weir_differences, reladiff_differences,
            "both count every differing key once"
        );
        println!(
            "round {round}: floor {f:.2} s, weir {w:.2} s ({:.2}x floor), reladiff table by \
             table {r:.2} s ({:.2}x weir)",
            w / f,
            r / w
        );
        floors.push(f);
        weirs.push(w);
        reladiffs.push(r);
    }
    let (mut over_floor, mut speedup) = (ratios(&weirs, &floors), ratios(&reladiffs, &weirs));
    println!(
        "\nchecksum mode, {} table pairs of {} rows, 3 of them about 100 rows apart, median of {}:",
        args.tables, args.table_rows, args.repeat
    );
    println!(
        "  floor (hash every table, both schemas at once)  {:>7.2} s",
        median(&mut floors).unwrap()
    );
    println!(
        "  weir reconcile --mode checksum (many tables)    {:>7.2} s   {:.2}x the floor",
        median(&mut weirs).unwrap(),
        median(&mut over_floor).unwrap()
    );
    println!(
        "  reladiff -a hashdiff, table by table            {:>7.2} s   {:.2}x weir's time",
        median(&mut reladiffs).unwrap(),
        median(&mut speedup).unwrap()
    );
}
