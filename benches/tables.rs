//! Many-table pipelines against one table, measured in the same run (issue 18):
//!
//! ```text
//! cargo bench --bench tables                         # 1M events, 100 and 1000 tables
//! cargo bench --bench tables -- --events 200000 --repeat 3
//! cargo bench --bench tables -- --only pg-1,pg-100   # of pg-1, pg-100, pg-1000, pq-1, pq-100
//! cargo bench --bench tables -- --total 8192         # batch.max_total_events of many-table runs
//! ```
//!
//! 1. File → PostgreSQL upsert: 1M events spread over 100 tables (`tables:`), against
//!    the same 1M events in one table (`table:`), same columns (17, of 13 types), same keys.
//! 2. File → Parquet, the same two ways.
//! 3. File → PostgreSQL with 1,000 tables: peak RSS beside the one-table run's. The
//!    tables' events interleave evenly, so this run sets `batch.max_tables: 1000` (and
//!    the server `max_locks_per_transaction = 256`, which that needs).
//!
//! Each weir run's rate counts from process start to its summary; beside it its CPU time
//! per event and its peak resident memory (from the kernel's accounting of the child).

#[path = "../tests/common/mod.rs"]
mod common;
// Each benchmark uses some of the shared helpers.
mod support;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use common::Workspace;
use common::services::Postgres;
use support::median;
use weir_runtime::bench::{COLUMNS, generate_over};

struct Args {
    events: usize,
    /// `batch.max_total_events` for the many-table runs (the default when not given).
    total: Option<usize>,
    repeat: usize,
    only: Option<String>,
}

fn args() -> Args {
    let mut args = Args {
        events: 1_000_000,
        total: None,
        repeat: 1,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("{arg} needs a number"))
        };
        match arg.as_str() {
            "--events" => args.events = value(),
            "--total" => args.total = Some(value()),
            "--repeat" => args.repeat = value().max(1),
            "--only" => args.only = it.next(),
            _ => {}
        }
    }
    args
}

/// One measured weir run.
struct Measured {
    seconds: f64,
    cpu: f64,
    rss_mib: f64,
}

/// The peak resident memory of process `pid` so far (`VmHWM`, which belongs to the
/// process's own address space: unlike the kernel's `ru_maxrss` for a child, it does not
/// start from the parent's size at `fork`).
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Runs `weir run --json` to the end of its file and measures wall time, CPU time and
/// peak RSS of the process. `WEIR_BENCH_WRAP` runs weir under a profiler, e.g.
/// `perf record -g -o weir.perf --` (the RSS is then the profiler's).
fn run(pipeline: &Path) -> (Measured, serde_json::Value) {
    let started = Instant::now();
    let mut command = match std::env::var("WEIR_BENCH_WRAP") {
        Ok(wrap) if !wrap.trim().is_empty() => {
            let mut words = wrap.split_whitespace();
            let mut command = std::process::Command::new(words.next().expect("a command"));
            command.args(words).arg(env!("CARGO_BIN_EXE_weir"));
            command
        }
        _ => common::weir(),
    };
    // Reaped by `wait4` below, which also reports its resource use.
    #[allow(clippy::zombie_processes)]
    let mut child = command
        .args(["run", "--json", "--quiet"])
        .arg(pipeline)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    // Sampled until the process ends: VmHWM only grows, so the last sample is the peak
    // (less what the last 20 ms added).
    let pid = child.id();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0.0f64;
        while let Some(rss) = peak_rss_mib(pid) {
            peak = peak.max(rss);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        peak
    });
    let mut status = 0;
    // SAFETY: plain calls on a zeroed struct and a child of this process.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4");
    let seconds = started.elapsed().as_secs_f64();
    let rss_mib = sampler.join().unwrap();
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert_eq!(status, 0, "weir failed: {err}");
    // A profiler given in `WEIR_BENCH_WRAP` may print lines of its own around weir's.
    let line = out.lines().rev().find(|l| l.starts_with('{')).unwrap_or("");
    let summary: serde_json::Value = serde_json::from_str(line).expect("summary");
    assert_eq!(summary["dead_letters"], 0, "{summary}");
    let time = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        Measured {
            seconds,
            cpu: time(usage.ru_utime) + time(usage.ru_stime),
            rss_mib,
        },
        summary,
    )
}

/// The generated events with their `source.table` rewritten to `t000`…: event `i` goes
/// to table `i % tables` (ids stay as generated, so every table gets its share of keys).
fn spread(events: &[u8], tables: usize) -> String {
    let text = std::str::from_utf8(events).expect("UTF-8");
    let mut out = String::with_capacity(text.len() + text.len() / 50);
    for (i, line) in text.lines().enumerate() {
        let table = format!(r#""table":"t{:03}""#, i % tables);
        out.push_str(&line.replacen(r#""table":"orders""#, &table, 1));
        out.push('\n');
    }
    out
}

fn columns_yaml(indent: &str) -> String {
    let mut yaml = format!("{indent}columns:\n");
    for (name, ty) in COLUMNS {
        let _ = writeln!(yaml, "{indent}  {name}: '{ty}'");
    }
    yaml
}

/// A pipeline over `file`: one table (`tables == 0`) or many.
fn pipeline(ws: &Workspace, name: &str, file: &str, many: bool, sink: &str) -> std::path::PathBuf {
    let tables = if many {
        format!(
            "tables:\n  include: ['*']\n  primary_key: [id]\n{}",
            columns_yaml("  ")
        )
    } else {
        format!(
            "table:\n  name: orders\n  primary_key: [id]\n{}",
            columns_yaml("  ")
        )
    };
    let yaml = format!(
        "name: {name}\nsource:\n  type: file\n  path: {file}\n  format: debezium-json\n\
         {tables}{sink}dead_letter:\n  type: file\n  path: {name}.dead-letters.jsonl\n"
    );
    ws.write(&format!("{name}.yaml"), &yaml)
}

fn main() {
    let args = args();
    let wanted = |id: &str| {
        args.only
            .as_deref()
            .is_none_or(|only| only.split(',').any(|o| o.trim() == id))
    };
    println!("weir many-table benchmark: {} events", args.events);
    let generated = generate_over(args.events, None, false, 42);
    let ws = Workspace::new();
    ws.write(
        "one.jsonl",
        std::str::from_utf8(&generated.events).expect("UTF-8"),
    );
    ws.write("t100.jsonl", &spread(&generated.events, 100));
    ws.write("t1000.jsonl", &spread(&generated.events, 1000));
    drop(generated);
    let pg = Postgres::start();
    if wanted("pg-1000") {
        // A transaction over 1,000 tables takes a few locks per table: more than the lock
        // table holds by default (64 per connection), as for pg_dump of such a database.
        pg.client("postgres")
            .batch_execute("ALTER SYSTEM SET max_locks_per_transaction = 256")
            .unwrap();
        pg.stop_server();
        pg.start_server();
    }

    // (id for --only, label, file, many, sink kind)
    let runs: [(&str, &str, &str, bool, &str); 5] = [
        ("pg-1", "postgres, 1 table", "one.jsonl", false, "postgres"),
        (
            "pg-100",
            "postgres, 100 tables",
            "t100.jsonl",
            true,
            "postgres",
        ),
        (
            "pg-1000",
            "postgres, 1000 tables",
            "t1000.jsonl",
            true,
            "postgres",
        ),
        ("pq-1", "parquet, 1 table", "one.jsonl", false, "parquet"),
        (
            "pq-100",
            "parquet, 100 tables",
            "t100.jsonl",
            true,
            "parquet",
        ),
    ];
    let mut results: Vec<(&str, Vec<Measured>)> = Vec::new();
    for round in 1..=args.repeat {
        for (i, (id, label, file, many, kind)) in runs.iter().enumerate() {
            if !wanted(id) {
                continue;
            }
            let name = format!("r{round}-{i}");
            let sink = match *kind {
                "postgres" => {
                    pg.create_database(&name.replace('-', "_"));
                    format!(
                        "sink:\n  type: postgres\n  url: {}\n  schema: public\n  mode: upsert\n  create: true\n{}",
                        pg.url(&name.replace('-', "_")),
                        if *many {
                            ""
                        } else {
                            "  table: public.orders\n"
                        }
                    )
                }
                _ => format!("sink:\n  type: parquet\n  path: out-{name}\n"),
            };
            let mut sink = sink;
            let mut batch = String::new();
            if let (Some(total), true) = (args.total, *many) {
                batch.push_str(&format!("  max_total_events: {total}\n"));
            }
            if *id == "pg-1000" {
                // Events of 1,000 tables, interleaved evenly: under the default
                // `max_tables` (100) a batch would end every 100 events.
                batch.push_str("  max_tables: 1000\n");
            }
            if !batch.is_empty() {
                sink.push_str(&format!("batch:\n{batch}"));
            }
            let path = pipeline(&ws, &name, file, *many, &sink);
            println!("round {round}: {label}");
            let (measured, summary) = run(&path);
            assert_eq!(summary["events_read"], args.events as u64, "{summary}");
            println!(
                "  => {:.0} ev/s in {:.2} s; CPU {:.2} µs/event; peak RSS {:.0} MiB",
                args.events as f64 / measured.seconds,
                measured.seconds,
                measured.cpu * 1e6 / args.events as f64,
                measured.rss_mib
            );
            match results.iter_mut().find(|(l, _)| l == label) {
                Some((_, runs)) => runs.push(measured),
                None => results.push((label, vec![measured])),
            }
        }
    }
    let baseline_of = |label: &str| {
        if label.starts_with("postgres") {
            "postgres, 1 table"
        } else {
            "parquet, 1 table"
        }
    };
    println!("\n| run | rate | time | CPU per event | peak RSS | rate of 1 table | ratio range |");
    println!("|---|---|---|---|---|---|---|");
    for (label, runs) in &results {
        let base = results
            .iter()
            .find(|(l, _)| *l == baseline_of(label))
            .map(|(_, r)| r);
        let mut ratios: Vec<f64> = base
            .map(|base| {
                runs.iter()
                    .zip(base)
                    .map(|(m, b)| b.seconds / m.seconds)
                    .collect()
            })
            .unwrap_or_default();
        let ratio = median(&mut ratios).map_or("-".into(), |r| format!("{r:.2}×"));
        let range = match (ratios.first(), ratios.last()) {
            (Some(low), Some(high)) => format!("{low:.2}–{high:.2}×"),
            _ => "-".into(),
        };
        let mut rates: Vec<f64> = runs
            .iter()
            .map(|m| args.events as f64 / m.seconds)
            .collect();
        let mut seconds: Vec<f64> = runs.iter().map(|m| m.seconds).collect();
        let mut cpu: Vec<f64> = runs
            .iter()
            .map(|m| m.cpu * 1e6 / args.events as f64)
            .collect();
        let mut rss: Vec<f64> = runs.iter().map(|m| m.rss_mib).collect();
        println!(
            "| {label} | {:.0} ev/s | {:.2} s | {:.2} µs | {:.0} MiB | {ratio} | {range} |",
            median(&mut rates).unwrap_or_default(),
            median(&mut seconds).unwrap_or_default(),
            median(&mut cpu).unwrap_or_default(),
            median(&mut rss).unwrap_or_default(),
        );
    }
}
