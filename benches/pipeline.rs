//! End-to-end pipeline benchmarks against a real `tansu` broker and a real PostgreSQL,
//! both started here on loopback as the integration tests start them:
//!
//! ```text
//! cargo bench --bench pipeline                      # 1M events, 4 partitions
//! cargo bench --bench pipeline -- --events 200000 --partitions 1
//! cargo bench --bench pipeline -- --repeat 3        # 3 interleaved rounds, medians
//! cargo bench --bench pipeline -- --only raw,kafka-parquet   # some runs only
//! cargo bench --bench pipeline -- --keys 100000 --only file-postgres   # lanes (issue 5)
//! ```
//!
//! Every figure comes from the same run on the same machine, so the ratios mean something
//! on a shared, noisy host:
//!
//! 1. Kafka → decode → PostgreSQL upsert, beside PostgreSQL's own ceiling for the same
//!    work: `psql` COPYs the same change rows into a staging table and applies them with
//!    the same `DELETE … USING` and `INSERT … ON CONFLICT` merge, in one transaction.
//! 2. Kafka → Parquet, beside the raw consume rate of the same topic (an rdkafka consumer
//!    that only counts bytes, with the same fetch settings).
//! 3. The same two pipelines from a file source: weir's own throughput, without the
//!    broker's fetch latency in the way.
//! 4. File → PostgreSQL under `conflict: last-write-wins` (locked reads, versions,
//!    tombstones) with 1 lane and with 4, beside the same ceiling; `--keys` spreads the
//!    changes over that many keys.
//!
//! Beside every weir rate: its CPU time per event (user + sys of the weir process over the
//! events it read). Rates count from process start (including the consumer group join)
//! to the last commit; `--stop-when-idle` time is subtracted.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::services::{Broker, Postgres, find_pg_binary};
use common::{Workspace, weir};
use support::{cpu_seconds, median};
use weir_runtime::bench::{COLUMNS, generate_over};

/// The librdkafka fetch settings for weir and the raw consumer alike: tansu answers a
/// fetch only when `fetch.wait.max.ms` expires, so the default 500 ms caps throughput.
const FETCH_WAIT_MS: &str = "5";
const IDLE: Duration = Duration::from_secs(1);

struct Args {
    events: usize,
    partitions: u32,
    /// Run only what these name (comma-separated parts of `raw-consume`, `kafka-parquet`,
    /// `file-parquet`, `kafka-postgres`, `file-postgres`; the ceiling runs with either
    /// PostgreSQL pipeline).
    only: Option<String>,
    /// Rounds of every run, interleaved; the table shows medians.
    repeat: usize,
    /// Draw every change's key from this many keys (default: new keys for inserts).
    keys: Option<u64>,
}

fn args() -> Args {
    let mut args = Args {
        events: 1_000_000,
        partitions: 4,
        only: None,
        repeat: 1,
        keys: None,
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
            "--partitions" => args.partitions = value() as u32,
            "--only" => args.only = it.next(),
            "--repeat" => args.repeat = value().max(1),
            "--keys" => args.keys = Some(value() as u64),
            // `cargo bench` passes `--bench`.
            _ => {}
        }
    }
    args
}

const RAW: &str = "raw consumer (counts bytes)";
const CEILING: &str = "PostgreSQL ceiling (COPY + merge)";

/// Every run's measurements, one per round, in the order first measured.
#[derive(Default)]
struct Table {
    rows: Vec<(&'static str, Vec<Measured>, Option<&'static str>)>,
}

impl Table {
    fn add(&mut self, label: &'static str, measured: Measured, baseline: Option<&'static str>) {
        let cpu = |c: Option<f64>| {
            c.map_or("-".into(), |c| {
                format!("{:.1}", c * 1e6 / measured.events as f64)
            })
        };
        println!(
            "  => {:.0} ev/s in {:.2} s; CPU µs/event: {}, broker {}",
            measured.rate(),
            measured.seconds,
            cpu(measured.cpu),
            cpu(measured.broker_cpu)
        );
        match self.rows.iter_mut().find(|(l, _, _)| *l == label) {
            Some((_, runs, _)) => runs.push(measured),
            None => self.rows.push((label, vec![measured], baseline)),
        }
    }

    fn runs(&self, label: &str) -> Option<&[Measured]> {
        self.rows
            .iter()
            .find(|(l, _, _)| *l == label)
            .map(|(_, runs, _)| runs.as_slice())
    }

    /// Medians over the rounds; a ratio is the median of the per-round ratios (each weir
    /// run against the baseline measured in the same round), with their range.
    fn print(&self, rounds: usize) {
        println!(
            "\n| run | rate | time | CPU per event | broker CPU per event | of baseline |{}",
            if rounds > 1 { " range |" } else { "" }
        );
        println!(
            "|---|---|---|---|---|---|{}",
            if rounds > 1 { "---|" } else { "" }
        );
        for (label, runs, baseline) in &self.rows {
            let mut ratios: Vec<f64> = baseline
                .and_then(|b| self.runs(b))
                .map(|base| {
                    runs.iter()
                        .zip(base)
                        .map(|(m, b)| 100.0 * m.rate() / b.rate())
                        .collect()
                })
                .unwrap_or_default();
            let ratio = median(&mut ratios).map_or(String::new(), |r| format!("{r:.0}%"));
            let range = match (ratios.first(), ratios.last()) {
                (Some(low), Some(high)) if rounds > 1 => format!(" {low:.0}–{high:.0}% |"),
                _ if rounds > 1 => " |".into(),
                _ => String::new(),
            };
            let mut rates: Vec<f64> = runs.iter().map(Measured::rate).collect();
            let mut seconds: Vec<f64> = runs.iter().map(|m| m.seconds).collect();
            let per_event = |cpu: fn(&Measured) -> Option<f64>| {
                let mut values: Vec<f64> = runs
                    .iter()
                    .filter_map(|m| cpu(m).map(|c| c * 1e6 / m.events as f64))
                    .collect();
                median(&mut values).map_or("-".into(), |c| format!("{c:.1} µs"))
            };
            println!(
                "| {label:<36} | {:>9.0} ev/s | {:>7.2} s | {:>10} | {:>10} | {ratio:>7} |{range}",
                median(&mut rates).unwrap_or_default(),
                median(&mut seconds).unwrap_or_default(),
                per_event(|m| m.cpu),
                per_event(|m| m.broker_cpu),
            );
        }
    }
}

/// One measured run.
struct Measured {
    events: usize,
    seconds: f64,
    /// CPU seconds (user + sys) of the measured process; `None` when not separable.
    cpu: Option<f64>,
    /// CPU seconds the broker spent meanwhile, for runs that read from it.
    broker_cpu: Option<f64>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.events as f64 / self.seconds
    }
}

/// Runs `weir run` on a pipeline and measures it: wall time from the summary (less the
/// idle wait when `idle` is set) and the process's CPU time.
fn run_weir(
    pipeline: &Path,
    events: usize,
    idle: Option<Duration>,
    broker: Option<&Broker>,
) -> (Measured, serde_json::Value) {
    let before = cpu_seconds(libc::RUSAGE_CHILDREN);
    let broker_before = broker.map(Broker::cpu_seconds);
    // WEIR_BENCH_WRAP runs weir under a profiler, e.g. `perf record -g -o weir.perf --`.
    let mut command = match std::env::var("WEIR_BENCH_WRAP") {
        Ok(wrap) if !wrap.trim().is_empty() => {
            let mut words = wrap.split_whitespace();
            let mut command = Command::new(words.next().expect("a command"));
            command.args(words).arg(env!("CARGO_BIN_EXE_weir"));
            command
        }
        _ => weir(),
    };
    command.args(["run", "--json"]);
    if let Some(idle) = idle {
        command.args(["--stop-when-idle", &format!("{}ms", idle.as_millis())]);
    }
    let output = command.arg(pipeline).output().expect("run weir");
    let cpu = cpu_seconds(libc::RUSAGE_CHILDREN) - before;
    let broker_cpu = broker
        .zip(broker_before)
        .map(|(b, before)| b.cpu_seconds() - before);
    assert!(
        output.status.success(),
        "weir failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("a JSON summary");
    assert_eq!(summary["events_read"], events as u64, "{summary}");
    assert_eq!(summary["dead_letters"], 0, "{summary}");
    let elapsed = summary["elapsed_seconds"].as_f64().expect("elapsed");
    let seconds = elapsed - idle.map_or(0.0, |d| d.as_secs_f64());
    (
        Measured {
            events,
            seconds,
            cpu: Some(cpu),
            broker_cpu,
        },
        summary,
    )
}

/// The raw consume rate: an rdkafka consumer that joins a group, reads the topic from the
/// start and only counts records and bytes.
fn raw_consume(broker: &Broker, topic: &str, events: usize, group: &str) -> Measured {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let cpu_before = cpu_seconds(libc::RUSAGE_SELF);
    let broker_before = broker.cpu_seconds();
    let started = Instant::now();
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", FETCH_WAIT_MS)
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let (mut count, mut bytes) = (0usize, 0usize);
    while count < events {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("consume");
            count += 1;
            bytes +=
                message.payload().map_or(0, <[u8]>::len) + message.key().map_or(0, <[u8]>::len);
        }
        assert!(
            started.elapsed() < Duration::from_secs(1200),
            "raw consumer stalled at {count} records"
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(libc::RUSAGE_SELF) - cpu_before;
    let broker_cpu = broker.cpu_seconds() - broker_before;
    println!(
        "  raw consumer: {count} records, {:.0} MB in {seconds:.2} s",
        bytes as f64 / 1e6
    );
    Measured {
        events: count,
        seconds,
        cpu: Some(cpu),
        broker_cpu: Some(broker_cpu),
    }
}

fn columns_yaml() -> String {
    let mut yaml = String::from("  columns:\n");
    for (name, ty) in COLUMNS {
        let _ = writeln!(yaml, "    {name}: '{ty}'");
    }
    yaml
}

/// The Kafka source of weir's pipelines. `WEIR_BENCH_KAFKA_OPTIONS` adds librdkafka
/// options (`key=value,key=value`) to try other settings.
fn kafka_source(broker: &Broker, topic: &str, group: &str) -> String {
    let mut yaml = format!(
        "source:\n  type: kafka\n  brokers: {}\n  topics: [{topic}]\n  group_id: {group}\n  \
         options:\n    fetch.wait.max.ms: {FETCH_WAIT_MS}\n",
        broker.address()
    );
    extra_options(&mut yaml, "WEIR_BENCH_KAFKA_OPTIONS", "    ");
    yaml
}

/// A pipeline file. `WEIR_BENCH_BATCH_OPTIONS` sets `batch` keys (`max_events=4096,…`).
fn pipeline(ws: &Workspace, name: &str, source: &str, sink: &str) -> std::path::PathBuf {
    let mut yaml = format!(
        "name: {name}\n{source}table:\n  name: orders\n  primary_key: [id]\n{}{sink}\
         dead_letter:\n  type: file\n  path: {name}.dead-letters.jsonl\n",
        columns_yaml()
    );
    if std::env::var("WEIR_BENCH_BATCH_OPTIONS").is_ok_and(|v| !v.trim().is_empty()) {
        yaml.push_str("batch:\n");
        extra_options(&mut yaml, "WEIR_BENCH_BATCH_OPTIONS", "  ");
    }
    ws.write(&format!("{name}.yaml"), &yaml)
}

fn postgres_sink(pg: &Postgres, table: &str) -> String {
    format!(
        "sink:\n  type: postgres\n  url: {}\n  table: public.{table}\n  mode: upsert\n  create: true\n",
        pg.url("bench")
    )
}

/// A Parquet sink. `WEIR_BENCH_PARQUET_OPTIONS` adds sink options (`key=value,…`), e.g.
/// `dictionary=all` or `compression=snappy`.
fn parquet_sink(dir: &str) -> String {
    let mut yaml = format!("sink:\n  type: parquet\n  path: {dir}\n");
    extra_options(&mut yaml, "WEIR_BENCH_PARQUET_OPTIONS", "  ");
    yaml
}

/// Appends the `key=value,…` pairs of an environment variable as YAML keys.
fn extra_options(yaml: &mut String, variable: &str, indent: &str) {
    let extra = std::env::var(variable).unwrap_or_default();
    for option in extra.split(',').filter(|o| !o.trim().is_empty()) {
        let (key, value) = option
            .split_once('=')
            .unwrap_or_else(|| panic!("{variable} holds key=value pairs"));
        let _ = writeln!(yaml, "{indent}{}: {}", key.trim(), value.trim());
    }
}

/// Escapes a value for COPY's text format.
fn copy_text(out: &mut String, value: &serde_json::Value, column_type: &str) {
    match value {
        serde_json::Value::Null => out.push_str("\\N"),
        serde_json::Value::String(s) => {
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\t' => out.push_str("\\t"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    c => out.push(c),
                }
            }
        }
        serde_json::Value::Number(n) if column_type == "timestamp_micros" => {
            let micros = n.as_i64().expect("micros");
            let t = chrono::DateTime::from_timestamp_micros(micros).expect("in range");
            let _ = write!(out, "{}", t.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f"));
        }
        serde_json::Value::Number(n) if column_type == "date" => {
            let days = n.as_i64().expect("days");
            let date = chrono::DateTime::from_timestamp(days * 86_400, 0).expect("in range");
            let _ = write!(out, "{}", date.format("%Y-%m-%d"));
        }
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

/// PostgreSQL's own ceiling: psql COPYs every change row (with its sequence number and
/// operation) into a staging table, then applies the last change per key with the same
/// `DELETE … USING` and `INSERT … ON CONFLICT DO UPDATE` weir uses, in one transaction.
fn postgres_ceiling(ws: &Workspace, pg: &Postgres, events: &[u8], like: &str) -> Measured {
    let mut rows = String::with_capacity(events.len());
    let mut count = 0;
    for (seq, line) in events
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let event: serde_json::Value = serde_json::from_slice(line).expect("event");
        let op = event["op"].as_str().expect("op");
        let image = if op == "d" {
            &event["before"]
        } else {
            &event["after"]
        };
        for (name, ty) in COLUMNS {
            copy_text(&mut rows, &image[name], ty);
            rows.push('\t');
        }
        let _ = writeln!(rows, "{seq}\t{op}");
        count += 1;
    }
    let data = ws.write("ceiling.copy", &rows);
    let names: Vec<String> = COLUMNS.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    let list = names.join(", ");
    let updates: Vec<String> = names
        .iter()
        .filter(|n| n.as_str() != "\"id\"")
        .map(|n| format!("{n} = EXCLUDED.{n}"))
        .collect();
    let mut client = pg.client("bench");
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS ceiling; CREATE TABLE ceiling (LIKE {like} INCLUDING ALL)"
        ))
        .expect("create the ceiling table");
    let script = format!(
        "\\set ON_ERROR_STOP on\n\
         BEGIN;\n\
         CREATE TEMP TABLE staging (LIKE ceiling) ON COMMIT DROP;\n\
         ALTER TABLE staging ADD COLUMN _seq bigint, ADD COLUMN _op text;\n\
         \\copy staging ({list}, _seq, _op) FROM '{}'\n\
         CREATE TEMP TABLE last ON COMMIT DROP AS SELECT DISTINCT ON (id) * FROM staging ORDER BY id, _seq DESC;\n\
         DELETE FROM ceiling t USING last WHERE last._op = 'd' AND t.id = last.id;\n\
         INSERT INTO ceiling ({list}) SELECT {list} FROM last WHERE _op <> 'd'\n  \
           ON CONFLICT (id) DO UPDATE SET {};\n\
         COMMIT;\n",
        data.display(),
        updates.join(", ")
    );
    let script = ws.write("ceiling.sql", &script);
    let started = Instant::now();
    let output = Command::new(find_pg_binary("psql"))
        .args(["-X", "-q", "-d", &pg.url("bench"), "-f"])
        .arg(&script)
        .output()
        .expect("run psql");
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        output.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Measured {
        events: count,
        seconds,
        cpu: None,
        broker_cpu: None,
    }
}

/// A fingerprint of a table's content, to check weir and the ceiling agree.
fn fingerprint(pg: &Postgres, table: &str) -> (i64, i64) {
    let row = pg
        .client("bench")
        .query_one(
            &format!("SELECT count(*), coalesce(sum(hashtext(t::text)::bigint), 0)::bigint FROM {table} t"),
            &[],
        )
        .expect("fingerprint");
    (row.get(0), row.get(1))
}

fn main() {
    let args = args();
    println!(
        "weir pipeline benchmark: {} events, {} partitions",
        args.events, args.partitions
    );
    let generated = generate_over(args.events, args.keys, false, 42);
    println!(
        "  generated {:.0} MB of schemaless Debezium events ({} bytes each on average)",
        generated.events.len() as f64 / 1e6,
        generated.events.len() / args.events
    );

    let broker = Broker::start();
    let pg = Postgres::start();
    pg.create_database("bench");
    let ws = Workspace::new();
    ws.write(
        "events.jsonl",
        std::str::from_utf8(&generated.events).expect("UTF-8"),
    );

    let topic = "bench";
    broker.create_topic(topic, args.partitions);
    let records: Vec<(Option<String>, Option<String>)> = generated
        .events
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .zip(&generated.ids)
        .map(|(line, id)| {
            (
                Some(format!("{{\"id\":{id}}}")),
                Some(String::from_utf8(line.to_vec()).expect("UTF-8")),
            )
        })
        .collect();
    let started = Instant::now();
    broker.produce_batched(topic, &records);
    println!(
        "  produced {} records in {:.1} s",
        records.len(),
        started.elapsed().as_secs_f64()
    );
    drop(records);

    let n = args.events;
    let wanted = |name: &str| {
        args.only
            .as_deref()
            .is_none_or(|only| only.split(',').any(|o| name.contains(o)))
    };
    let file_source = "source:\n  type: file\n  path: events.jsonl\n";
    let mut table = Table::default();
    for round in 1..=args.repeat {
        if args.repeat > 1 {
            println!("round {round} of {}", args.repeat);
        }
        if wanted("raw-consume") {
            println!("measuring: raw consume");
            let measured = raw_consume(&broker, topic, n, &format!("bench-raw-{round}"));
            table.add(RAW, measured, None);
        }
        let runs = [
            ("kafka-parquet", "weir kafka -> parquet", Some(RAW)),
            ("file-parquet", "weir file -> parquet", None),
            (
                "kafka-postgres",
                "weir kafka -> postgres upsert",
                Some(CEILING),
            ),
            (
                "file-postgres",
                "weir file -> postgres upsert",
                Some(CEILING),
            ),
            (
                "file-postgres-lww-1",
                "weir file -> postgres, last-write-wins, 1 lane",
                Some(CEILING),
            ),
            (
                "file-postgres-lww-4",
                "weir file -> postgres, last-write-wins, 4 lanes",
                Some(CEILING),
            ),
        ];
        let mut postgres_tables = Vec::new();
        for (run, label, baseline) in runs {
            if !wanted(run) {
                continue;
            }
            println!("measuring: {run}");
            // Fresh names each round: a new consumer group, table and checkpoint.
            let name = format!("{run}-{round}");
            let source = if run.starts_with("kafka") {
                kafka_source(&broker, topic, &format!("bench-{name}"))
            } else {
                file_source.to_string()
            };
            let sink = if run.ends_with("parquet") {
                parquet_sink(&name)
            } else {
                postgres_tables.push(name.replace('-', "_"));
                let mut sink = postgres_sink(&pg, &name.replace('-', "_"));
                if let Some(lanes) = run.strip_prefix("file-postgres-lww-") {
                    let _ = write!(
                        sink,
                        "conflict:\n  strategy: last-write-wins\n  version_column: version\n  \
                         lanes: {lanes}\n"
                    );
                }
                sink
            };
            let kafka = run.starts_with("kafka");
            let (measured, summary) = run_weir(
                &pipeline(&ws, &name, &source, &sink),
                n,
                kafka.then_some(IDLE),
                kafka.then_some(&broker),
            );
            println!(
                "  {} batches; {} upserts, {} deletes, {} appended",
                summary["batches"], summary["upserts"], summary["deletes"], summary["appended"]
            );
            if run.ends_with("parquet") {
                let bytes: u64 = std::fs::read_dir(ws.path(&name))
                    .expect("the parquet directory")
                    .map(|e| e.expect("entry").metadata().expect("metadata").len())
                    .sum();
                println!("  {:.1} MB of Parquet", bytes as f64 / 1e6);
            }
            table.add(label, measured, baseline);
        }
        if let Some(like) = postgres_tables.first() {
            println!("measuring: postgres ceiling (psql COPY + merge)");
            let ceiling = postgres_ceiling(&ws, &pg, &generated.events, like);
            let expected = fingerprint(&pg, "ceiling");
            for name in &postgres_tables {
                assert_eq!(
                    fingerprint(&pg, name),
                    expected,
                    "{name} differs from the ceiling's table: the benchmark compares unequal work"
                );
                // Keep the database small across rounds.
                pg.client("bench")
                    .batch_execute(&format!("DROP TABLE {name}"))
                    .expect("drop a measured table");
            }
            println!(
                "  weir's tables and the ceiling's hold the same {} rows",
                expected.0
            );
            table.add(CEILING, ceiling, None);
        }
    }
    table.print(args.repeat);
}
