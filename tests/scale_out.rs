//! Several weir processes sharing one pipeline through a Kafka consumer group, with a
//! real `tansu` broker and a real PostgreSQL: 50 tables in one topic of 12 partitions,
//! written while processes are frozen past their session timeout (fencing), killed,
//! added, and made to come and go. The target is a change log (`mode: append`), so every
//! change applied shows once per apply: it is checked against an independent oracle for
//! changes lost, applied twice, and keys left at a stale version.
//!
//! tansu 0.6, the test broker, expires a member that stopped answering without starting
//! a new generation, so the other members are never told to rejoin and the dead member's
//! partitions stay unowned until the next member joins or leaves (docs/decisions.md,
//! "Scale-out tests and tansu's group expiry"). A real Kafka rebalances on the expiry
//! itself. So here, after each member dies without leaving (SIGKILL, SIGSTOP), another
//! joins once its session has expired: the same rebalance, through the same code in weir
//! (revoke, abandon what was read, assign at the sink's positions).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::Workspace;
use common::faults::Figures;
use common::inventory::{Table, capture, tables, target_of};
use common::services::{Broker, Postgres, free_port, http_get, series_value, signal};

const TOPIC: &str = "dbserver1.inventory.all";
const PARTITIONS: i32 = 12;
const PIPELINE: &str = "inventory";
/// Longer than the pipeline's `session.timeout.ms`, so the broker has expired a member
/// that stopped answering.
const PAST_THE_SESSION: Duration = Duration::from_secs(9);
/// Changes written while the processes run (the rest are written before).
const LIVE_EVENTS: usize = 30_000;

fn pipeline_yaml() -> String {
    format!(
        r#"name: {PIPELINE}
source:
  type: kafka
  brokers: ${{KAFKA_BROKERS}}
  topics: [{TOPIC}]
  group_id: weir-inventory
  start: earliest
  format: debezium-json
  options:
    session.timeout.ms: 6000
    heartbeat.interval.ms: 1000
tables:
  include: ['inventory.*']
  exclude: ['inventory.audit_log', 'inventory.audit_trail']
  route:
    - source: 'inventory.orders_shard_*'
      target: orders
sink:
  type: postgres
  url: ${{PG_URL}}
  schema: public
  mode: append
  create: true
  idle_transaction_timeout: 5s
dead_letter:
  type: file
  path: dead-letters.jsonl
batch:
  max_events: 2000
  max_wait: 100ms
"#
    )
}

/// One weir process of the group, logging to a file beside the pipeline and serving its
/// metrics on `port`.
struct Process {
    name: &'static str,
    child: Child,
    log: std::path::PathBuf,
    port: u16,
}

impl Process {
    fn start(
        name: &'static str,
        broker: &Broker,
        pg: &Postgres,
        pipeline: &std::path::Path,
    ) -> Self {
        let log = pipeline.with_file_name(format!("{name}.log"));
        let port = free_port();
        let child = common::weir()
            .env("KAFKA_BROKERS", broker.address())
            .env("PG_URL", pg.url("target"))
            .env("RUST_LOG", "info")
            .args(["run", "--json", "-q", "--stop-when-idle", "10s"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg(pipeline)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("a log file"),
            ))
            .spawn()
            .expect("start weir");
        Process {
            name,
            child,
            log,
            port,
        }
    }

    /// What the process found it must not apply, as its metrics stand: events it read
    /// and abandoned on a revoke, and rows the sink found applied already.
    fn fenced(&self) -> u64 {
        let Some((200, metrics)) = http_get(self.port, "/metrics") else {
            return 0;
        };
        let series = |name: &str| {
            series_value(&metrics, &format!("{name}{{pipeline=\"{PIPELINE}\"}}")).unwrap_or(0)
        };
        series("weir_events_abandoned_total") + series("weir_rows_already_applied_total")
    }

    fn signal(&self, name: &str) {
        signal(self.child.id(), name);
    }

    /// The end of its log, for failure messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|line| !line.contains("new table") && !line.contains("skipping a table"))
            .collect();
        format!(
            "--- {} ---\n{}",
            self.name,
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }

    /// Fails the test if the process has exited.
    fn check_alive(&mut self, what: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "{} exited ({status}) {what}: {}",
                self.name,
                self.log_tail()
            );
        }
    }

    /// Waits for the process to exit on its own; returns its summary.
    fn finish(mut self, limit: Duration) -> serde_json::Value {
        let started = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if started.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "{} did not stop within {limit:?}: {}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let tail = self.log_tail();
        let mut stdout = Vec::new();
        use std::io::Read;
        self.child
            .stdout
            .take()
            .expect("piped")
            .read_to_end(&mut stdout)
            .unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{} failed ({status}): {tail}", self.name);
        serde_json::from_slice(&stdout)
            .unwrap_or_else(|e| panic!("{}'s summary: {e}: {tail}", self.name))
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// A failed test leaves no process behind (a frozen one is killed too).
impl Drop for Process {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The services and pipeline a test's processes share.
struct Group<'a> {
    pg: &'a Postgres,
    broker: &'a Broker,
    pipeline: &'a std::path::Path,
}

impl Group<'_> {
    /// Freezes `frozen` (SIGSTOP) past its session timeout, starts `joiner` (on tansu, the
    /// join is what moves the frozen member's partitions: see the module's comment), waits
    /// until the others have applied every partition past where they were, then thaws it
    /// and waits until they all move again. Returns the joiner, still running.
    fn freeze_past_the_session(
        &self,
        frozen: &mut Process,
        joiner: &'static str,
        others: &mut [&mut Process],
    ) -> Process {
        let frozen_at = positions(self.pg);
        frozen.signal("STOP");
        std::thread::sleep(PAST_THE_SESSION);
        let mut joiner = Process::start(joiner, self.broker, self.pg, self.pipeline);
        let mut live: Vec<&mut Process> = others.iter_mut().map(|p| &mut **p).collect();
        live.push(&mut joiner);
        wait_until_every_partition_moves(
            self.pg,
            self.broker,
            &frozen_at,
            &format!("while {} was frozen", frozen.name),
            &mut live,
        );
        frozen.signal("CONT");
        let thawed_at = positions(self.pg);
        live.push(frozen);
        wait_until_every_partition_moves(
            self.pg,
            self.broker,
            &thawed_at,
            "after the thaw",
            &mut live,
        );
        // The thawed process finds out about the revoke at its next poll, and about its
        // session's end at its next statement: give its counters a moment.
        let started = Instant::now();
        while live.last().unwrap().fenced() == 0 && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(200));
        }
        drop(live);
        joiner
    }
}

/// The stored position of each partition (absent before its first batch).
fn positions(pg: &Postgres) -> BTreeMap<i32, i64> {
    let Ok(mut client) = postgres::Client::connect(&pg.url("target"), postgres::NoTls) else {
        return BTreeMap::new();
    };
    client
        .query(
            "SELECT stream, next FROM weir.checkpoints WHERE pipeline = $1 AND next >= 0",
            &[&PIPELINE],
        )
        .unwrap_or_default()
        .iter()
        .filter_map(|row| {
            let stream: String = row.get(0);
            let partition = stream.rsplit_once('/')?.1.parse().ok()?;
            Some((partition, row.get(1)))
        })
        .collect()
}

/// Waits until every partition's stored position is past `since` (or at the partition's
/// end): the partitions are all owned and applied by the group's live members.
fn wait_until_every_partition_moves(
    pg: &Postgres,
    broker: &Broker,
    since: &BTreeMap<i32, i64>,
    what: &str,
    live: &mut [&mut Process],
) {
    let started = Instant::now();
    loop {
        let now = positions(pg);
        let behind: Vec<i32> = (0..PARTITIONS)
            .filter(|p| {
                let at = now.get(p).copied().unwrap_or(-1);
                let end = broker
                    .watermarks(TOPIC, *p)
                    .map_or(i64::MAX, |(_, high)| high);
                at <= since.get(p).copied().unwrap_or(-1) && at < end
            })
            .collect();
        if behind.is_empty() {
            eprintln!(
                "{what}: every partition moved in {:.1} s; offsets applied: {}",
                started.elapsed().as_secs_f64(),
                now.values().sum::<i64>()
            );
            return;
        }
        for process in live.iter_mut() {
            process.check_alive(what);
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{what}: partitions {behind:?} did not move past {since:?} (now {now:?}); {}\n\
             --- broker ---\n{}",
            live.iter()
                .map(|p| p.log_tail())
                .collect::<Vec<_>>()
                .join("\n"),
            broker.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The change log's rows: per target table, each change's (stream, offset) and the key's
/// last row, read the way the oracle writes it (or `None` for a delete).
struct ChangeLog {
    changes: Vec<(String, i64)>,
    finals: BTreeMap<String, BTreeMap<String, String>>,
}

fn read_change_log(pg: &Postgres, tables: &[Table]) -> ChangeLog {
    let mut client = pg.client("target");
    let mut log = ChangeLog {
        changes: Vec::new(),
        finals: BTreeMap::new(),
    };
    let mut seen = BTreeSet::new();
    for table in tables {
        let Some(target) = target_of(table) else {
            continue;
        };
        if !seen.insert(target) {
            continue;
        }
        for row in client
            .query(
                &format!("SELECT _weir_stream, _weir_offset FROM public.\"{target}\""),
                &[],
            )
            .unwrap()
        {
            log.changes.push((row.get(0), row.get(1)));
        }
        // A key's changes all travel in one partition, so its offsets order them.
        let sql = format!(
            "SELECT DISTINCT ON (1) {}, _weir_op, {} FROM public.\"{target}\" \
             ORDER BY 1, _weir_offset DESC",
            table.key_sql(),
            table.row_sql()
        );
        let finals = log.finals.entry(target.to_string()).or_default();
        for row in client
            .query(&sql, &[])
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
        {
            let op: String = row.get(1);
            if op != "d" {
                finals.insert(row.get(0), row.get(2));
            }
        }
    }
    log
}

/// 3 processes, then one frozen past its session timeout while a fourth joins, then
/// thawed (fencing), one killed and a fifth started, and a sixth joining and leaving
/// three times, all over 300,000 changes to 50 tables: every change is applied once, none
/// is lost, no key is left stale.
#[test]
fn a_group_of_processes_survives_freezes_kills_and_rebalances_applying_each_change_once() {
    let tables = tables();
    let events = 300_000;
    let capture = capture(&tables, events, 400, 0x5ca1e);
    let broker = Broker::start();
    let pg = Postgres::start();
    pg.create_database("target");
    broker.create_topic(TOPIC, PARTITIONS as u32);
    // Debezium's topic routing: every table in one topic, keyed by the record key (so a
    // key's changes stay in one partition, in order).
    let interleaved = capture.interleaved(12);
    let audit: usize = tables
        .iter()
        .zip(&capture.records)
        .filter(|(table, _)| target_of(table).is_none())
        .map(|(_, records)| records.len())
        .sum();
    // Most changes are there before the processes start (tansu serves a backlog in large
    // fetches, and a stream written while several consumers fetch it, a few records at a
    // time, at a fifth of the rate); the rest arrive during the faults, a chunk at a time.
    let (backlog, live) = interleaved.split_at(events - LIVE_EVENTS);
    let producing = Instant::now();
    for chunk in backlog.chunks(30_000) {
        broker.produce(TOPIC, chunk);
    }
    eprintln!(
        "{} events produced in {:.1} s",
        backlog.len(),
        producing.elapsed().as_secs_f64()
    );
    let live = live.to_vec();
    let produced = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producing = {
        let produced = produced.clone();
        let broker_address = broker.address();
        std::thread::spawn(move || {
            for chunk in live.chunks(2_000) {
                common::services::produce_to(&broker_address, TOPIC, chunk);
                std::thread::sleep(Duration::from_millis(500));
            }
            produced.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };

    let ws = Workspace::new();
    let pipeline = ws.write("inventory.yaml", &pipeline_yaml());
    let mut p1 = Process::start("p1", &broker, &pg, &pipeline);
    let mut p2 = Process::start("p2", &broker, &pg, &pipeline);
    let mut p3 = Process::start("p3", &broker, &pg, &pipeline);
    wait_until_every_partition_moves(
        &pg,
        &broker,
        &BTreeMap::new(),
        "at the start",
        &mut [&mut p1, &mut p2, &mut p3],
    );

    // Fencing: p2 is frozen while it works through the backlog, past its session
    // timeout, and the group gives its partitions to the others (a fourth joins after the
    // expiry), which go on from the stored positions. Then p2 is thawed, still holding
    // the batches it had read: those must not be applied over the new owners' work.
    // p2 may be frozen between two batches and hold nothing; then it is frozen again,
    // with a process that joins for the occasion and leaves after, a few times at most.
    let group = Group {
        pg: &pg,
        broker: &broker,
        pipeline: &pipeline,
    };
    let mut p4 = group.freeze_past_the_session(&mut p2, "p4", &mut [&mut p1, &mut p3]);
    for _ in 1..4 {
        if p2.fenced() > 0 {
            break;
        }
        eprintln!("p2 held nothing when thawed: frozen again");
        let p7 = group.freeze_past_the_session(&mut p2, "p7", &mut [&mut p1, &mut p3, &mut p4]);
        p7.signal("TERM");
        p7.finish(Duration::from_secs(60));
    }

    // A process killed without leaving the group; once its session has expired, a fifth
    // joins. The partitions move to the live members, each from its stored position.
    // (On tansu 0.6 the join is what moves them: see the module's comment.)
    let killed_at = positions(&pg);
    p1.kill();
    std::thread::sleep(PAST_THE_SESSION);
    let mut p5 = Process::start("p5", &broker, &pg, &pipeline);
    wait_until_every_partition_moves(
        &pg,
        &broker,
        &killed_at,
        "after p1 was killed and p5 joined",
        &mut [&mut p2, &mut p3, &mut p4, &mut p5],
    );

    // A rebalance storm: a sixth process joins and leaves (SIGTERM: it applies what it has
    // read and leaves the group), three times.
    for _ in 0..3 {
        let before = positions(&pg);
        let mut p6 = Process::start("p6", &broker, &pg, &pipeline);
        wait_until_every_partition_moves(
            &pg,
            &broker,
            &before,
            "with p6 joining",
            &mut [&mut p2, &mut p3, &mut p4, &mut p5, &mut p6],
        );
        p6.signal("TERM");
        p6.finish(Duration::from_secs(60));
    }

    producing.join().unwrap();
    assert!(produced.load(std::sync::atomic::Ordering::SeqCst));
    let summaries: Vec<(&str, serde_json::Value)> = [p2, p3, p4, p5]
        .into_iter()
        .map(|p| (p.name, p.finish(Duration::from_secs(300))))
        .collect();

    let log = read_change_log(&pg, &tables);
    let applied_once: BTreeSet<&(String, i64)> = log.changes.iter().collect();
    let expected_changes = (events - audit) as u64;
    let mut figures = Figures::compare(
        events as u64,
        &flatten(&capture.finals),
        &flatten(&log.finals),
    );
    figures.duplicated = Some((log.changes.len() - applied_once.len()) as u64);
    figures.lost += expected_changes.saturating_sub(applied_once.len() as u64);
    for (name, summary) in &summaries {
        eprintln!(
            "{name}: revoked {} times, {} events abandoned, {} rows already applied, {} read",
            summary["partitions_revoked"],
            summary["events_abandoned"],
            summary["already_applied"],
            summary["events_read"],
        );
    }
    figures.report_and_check(
        "scale-out: 3 to 5 processes in one group",
        "SIGKILL, SIGSTOP past the session, joins, leaves",
    );
    assert_eq!(applied_once.len() as u64, expected_changes);
    // p2 was thawed holding batches of partitions it had lost: it abandoned them, or the
    // sink found them applied already.
    let fenced = summaries[0].1["events_abandoned"].as_u64().unwrap()
        + summaries[0].1["already_applied"].as_u64().unwrap();
    assert!(
        fenced > 0,
        "p2 held nothing when thawed: {}",
        summaries[0].1
    );
}

fn flatten(
    by_table: &BTreeMap<String, BTreeMap<String, String>>,
) -> BTreeMap<(String, String), String> {
    by_table
        .iter()
        .flat_map(|(table, rows)| {
            rows.iter()
                .map(move |(key, row)| ((table.clone(), key.clone()), row.clone()))
        })
        .collect()
}
