//! A group of weir processes sharing one pipeline through a Kafka consumer group, into a
//! PostgreSQL change log (`mode: append`), for the scale-out test and the soak: starting,
//! signalling and finishing processes, the partitions' stored positions, and the change
//! log read back the way the inventory oracle writes it.
//!
//! tansu 0.6, the test broker, expires a member that stopped answering without starting
//! a new generation, so the other members are never told to rejoin and the dead member's
//! partitions stay unowned until the next member joins or leaves (docs/decisions.md,
//! "Scale-out tests and tansu's group expiry"). A real Kafka rebalances on the expiry
//! itself. So after a member dies without leaving (SIGKILL, SIGSTOP), another joins once
//! its session has expired: the same rebalance, through the same code in weir (revoke,
//! abandon what was read, assign at the sink's positions).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::faults::Figures;
use super::inventory::{Capture, Table, target_of};
use super::services::{Broker, Postgres, signal};

/// Longer than the pipelines' `session.timeout.ms` (6 s), so the broker has expired a
/// member that stopped answering.
pub const PAST_THE_SESSION: Duration = Duration::from_secs(9);

/// The pipeline of a group's processes: the inventory tables of `topic` (all in one, as
/// Debezium's topic routing writes them) into a PostgreSQL change log (`mode: append`, so
/// a second apply shows), in group `weir-NAME`, with a 6 s session and a dead-letter file
/// per process.
pub fn change_log_pipeline(name: &str, topic: &str) -> String {
    format!(
        r#"name: {name}
source:
  type: kafka
  brokers: ${{KAFKA_BROKERS}}
  topics: [{topic}]
  group_id: weir-{name}
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
  path: dead-letters-${{WEIR_PROCESS}}.jsonl
batch:
  max_events: 2000
  max_wait: 100ms
"#
    )
}

/// The services, pipeline and topic a group's processes share. The pipeline reads its
/// broker from `KAFKA_BROKERS` and its target from `PG_URL`; each process gets its name
/// in `WEIR_PROCESS` (for a dead-letter file of its own).
pub struct Group<'a> {
    pub pg: &'a Postgres,
    pub broker: &'a Broker,
    pub pipeline: &'a Path,
    /// The pipeline's `name`, under which the sink stores its positions.
    pub name: &'static str,
    pub database: &'static str,
    pub topic: &'static str,
    pub partitions: i32,
}

impl Group<'_> {
    /// Starts a process of the group, with `extra` arguments to `weir run`.
    pub fn start(&self, name: &'static str, extra: &[&str]) -> Process {
        let log = self.pipeline.with_file_name(format!("{name}.log"));
        let child = super::weir()
            .env("KAFKA_BROKERS", self.broker.address())
            // Named, so a test can find the process's sessions in `pg_stat_activity`.
            .env(
                "PG_URL",
                format!(
                    "{}?application_name=weir-{name}",
                    self.pg.url(self.database)
                ),
            )
            .env("WEIR_PROCESS", name)
            .env("RUST_LOG", "info")
            .args(["run", "--json", "-q"])
            .args(extra)
            .arg(self.pipeline)
            .current_dir(self.pipeline.parent().expect("a directory"))
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
            stops_when_idle: extra.contains(&"--stop-when-idle"),
            child,
            log,
        }
    }

    /// The stored position of each partition (absent before its first batch, and all
    /// absent while PostgreSQL is down).
    pub fn positions(&self) -> BTreeMap<i32, i64> {
        let Ok(mut client) =
            postgres::Client::connect(&self.pg.url(self.database), postgres::NoTls)
        else {
            return BTreeMap::new();
        };
        client
            .query(
                "SELECT stream, next FROM weir.checkpoints WHERE pipeline = $1 AND next >= 0",
                &[&self.name],
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

    /// Waits until every partition's stored position is past `since` (or at the
    /// partition's end): the partitions are all owned and applied by the group's live
    /// members. Fails if one of `live` exits, or after `limit`.
    pub fn wait_until_every_partition_moves(
        &self,
        since: &BTreeMap<i32, i64>,
        what: &str,
        live: &mut [&mut Process],
        limit: Duration,
    ) {
        let started = Instant::now();
        loop {
            let now = self.positions();
            let behind: Vec<i32> = (0..self.partitions)
                .filter(|p| {
                    let at = now.get(p).copied().unwrap_or(-1);
                    let end = self
                        .broker
                        .watermarks(self.topic, *p)
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
                started.elapsed() < limit,
                "{what}: partitions {behind:?} did not move past {since:?} (now {now:?}); {}\n\
                 --- broker ---\n{}",
                live.iter()
                    .map(|p| p.log_tail())
                    .collect::<Vec<_>>()
                    .join("\n"),
                self.broker.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every partition's stored position is at its end: everything written
    /// is applied. Fails if one of `live` exits (with `--stop-when-idle`, if it fails), or
    /// after `limit`.
    pub fn wait_until_applied_to_the_end(&self, live: &mut [&mut Process], limit: Duration) {
        let started = Instant::now();
        loop {
            let now = self.positions();
            let behind: Vec<(i32, i64, i64)> = (0..self.partitions)
                .filter_map(|p| {
                    let at = now.get(&p).copied().unwrap_or(0);
                    let end = self
                        .broker
                        .watermarks(self.topic, p)
                        .map(|(_, high)| high)?;
                    (at < end).then_some((p, at, end))
                })
                .collect();
            if behind.is_empty() && now.len() == self.partitions as usize {
                return;
            }
            for process in live.iter_mut() {
                process.check_running("applying what is left");
            }
            assert!(
                started.elapsed() < limit,
                "partitions (partition, at, end) {behind:?} not applied to their end: {}\n\
                 --- broker ---\n{}",
                live.iter()
                    .map(|p| p.log_tail())
                    .collect::<Vec<_>>()
                    .join("\n"),
                self.broker.log_tail()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Freezes `frozen` (SIGSTOP) past its session timeout, starts `joiner` (on tansu,
    /// the join is what moves the frozen member's partitions: see the module's comment),
    /// waits until the others have applied every partition past where they were, then
    /// thaws it and waits until they all move again. Returns the joiner, still running.
    pub fn freeze_past_the_session(
        &self,
        frozen: &mut Process,
        joiner: &'static str,
        extra: &[&str],
        others: &mut [&mut Process],
    ) -> Process {
        let frozen_at = self.positions();
        frozen.signal("STOP");
        self.take_over_and_thaw(frozen_at, frozen, joiner, extra, others)
    }

    /// As [`Group::freeze_past_the_session`], but `frozen` is stopped inside a batch's
    /// transaction, at a known point, not wherever the signal finds it: the test holds
    /// the pipeline's checkpoint rows, waits until `frozen`'s session waits on them
    /// (each batch locks its partitions' rows first), stops it, and lets the rows go. The
    /// process then holds a batch of partitions that will be revoked, and its session,
    /// idle in its transaction, is ended by the server after `idle_transaction_timeout`
    /// (which lets the new owners lock those rows). Returns the joiner, still running.
    pub fn freeze_inside_a_batch(
        &self,
        frozen: &mut Process,
        joiner: &'static str,
        extra: &[&str],
        others: &mut [&mut Process],
    ) -> Process {
        let mut holder = self.pg.client(self.database);
        let mut hold = holder.transaction().expect("a transaction");
        hold.execute(
            "SELECT * FROM weir.checkpoints WHERE pipeline = $1 FOR UPDATE",
            &[&self.name],
        )
        .expect("lock the checkpoint rows");
        let mut watcher = self.pg.client(self.database);
        let started = Instant::now();
        while watcher
            .query_opt(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = $1 \
                 AND wait_event_type = 'Lock' AND query LIKE '%weir.checkpoints%FOR UPDATE%'",
                &[&format!("weir-{}", frozen.name)],
            )
            .expect("read pg_stat_activity")
            .is_none()
        {
            frozen.check_alive("waiting on the checkpoint rows");
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{} did not wait on the checkpoint rows within 60 s: {}",
                frozen.name,
                frozen.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Where the held batch starts: nothing can be stored while the rows are held.
        let frozen_at = self.positions();
        frozen.signal("STOP");
        hold.commit().expect("let the checkpoint rows go");
        self.take_over_and_thaw(frozen_at, frozen, joiner, extra, others)
    }

    /// Waits past `frozen`'s session, starts `joiner`, waits until the others have
    /// applied every partition past `frozen_at`, then thaws `frozen` and waits until they
    /// all move again.
    fn take_over_and_thaw(
        &self,
        frozen_at: BTreeMap<i32, i64>,
        frozen: &mut Process,
        joiner: &'static str,
        extra: &[&str],
        others: &mut [&mut Process],
    ) -> Process {
        let limit = Duration::from_secs(120);
        std::thread::sleep(PAST_THE_SESSION);
        let mut joiner = self.start(joiner, extra);
        let mut live: Vec<&mut Process> = others.iter_mut().map(|p| &mut **p).collect();
        live.push(&mut joiner);
        self.wait_until_every_partition_moves(
            &frozen_at,
            &format!("while {} was frozen", frozen.name),
            &mut live,
            limit,
        );
        frozen.signal("CONT");
        let thawed_at = self.positions();
        live.push(frozen);
        self.wait_until_every_partition_moves(&thawed_at, "after the thaw", &mut live, limit);
        joiner
    }
}

/// One weir process of a group, logging to a file beside the pipeline. Killed if the
/// test fails.
pub struct Process {
    pub name: &'static str,
    /// Started with `--stop-when-idle`: it may exit on its own once it has read
    /// everything.
    stops_when_idle: bool,
    child: Child,
    log: PathBuf,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, name: &str) {
        signal(self.child.id(), name);
    }

    /// The end of its log, for failure messages.
    pub fn log_tail(&self) -> String {
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

    /// Fails the test if the process has exited, or, if it was started with
    /// `--stop-when-idle`, if it has failed.
    pub fn check_running(&mut self, what: &str) {
        if !self.stops_when_idle {
            return self.check_alive(what);
        }
        if let Some(status) = self.child.try_wait().unwrap() {
            assert!(
                status.success(),
                "{} failed ({status}) {what}: {}",
                self.name,
                self.log_tail()
            );
        }
    }

    /// Fails the test if the process has exited.
    pub fn check_alive(&mut self, what: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "{} exited ({status}) {what}: {}",
                self.name,
                self.log_tail()
            );
        }
    }

    /// Stops the process (SIGTERM: it applies what it has read and leaves the group) if it
    /// has not stopped on its own; returns its summary.
    pub fn stop(mut self, limit: Duration) -> serde_json::Value {
        if self.child.try_wait().unwrap().is_none() {
            self.signal("TERM");
        }
        self.finish(limit)
    }

    /// Waits for the process to exit on its own; returns its summary.
    pub fn finish(mut self, limit: Duration) -> serde_json::Value {
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

    pub fn kill(mut self) {
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

/// The change log's rows: per target table, each change's (stream, offset) and the key's
/// last row, read the way the oracle writes it (or `None` for a delete).
pub struct ChangeLog {
    pub changes: Vec<(String, i64)>,
    pub finals: BTreeMap<String, BTreeMap<String, String>>,
}

pub fn read_change_log(pg: &Postgres, database: &str, tables: &[Table]) -> ChangeLog {
    let mut client = pg.client(database);
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

/// What the change log shows against the oracle: keys lost or stale, changes applied more
/// than once, and changes missing from the log (counted as lost). `events` is left 0.
pub fn change_log_figures(log: &ChangeLog, capture: &Capture, expected_changes: u64) -> Figures {
    let applied_once: BTreeSet<&(String, i64)> = log.changes.iter().collect();
    let mut figures = Figures::compare(0, &flatten(&capture.finals), &flatten(&log.finals));
    figures.duplicated = Some((log.changes.len() - applied_once.len()) as u64);
    figures.lost += expected_changes.saturating_sub(applied_once.len() as u64);
    figures
}

/// Per-table rows keyed by (table, key), to compare with [`super::faults::Figures`].
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
