//! The `postgres-cdc` source: a PostgreSQL database read directly, without Debezium.
//!
//! On its first start it creates the publication (for the tables `tables:` selects) and a
//! logical replication slot (pgoutput) if they are missing. A new slot exports a snapshot:
//! every selected table is copied inside it, in primary key order and in chunks, and the
//! stream then starts at the slot's consistent point, so the copy and the stream neither
//! miss nor repeat a change. Both produce Debezium change events (`events.rs`): every
//! decoder, plugin and sink downstream sees what it would see from Debezium.
//!
//! Positions: a streamed change is placed by its transaction's commit LSN and its index
//! in the transaction, so a restart inside a transaction skips exactly what was applied;
//! the last change of a transaction resumes at the transaction's end LSN. A copied row of
//! a table with one integer key column is placed by that key, so a killed copy resumes
//! after the last row applied. The slot's confirmed flush LSN is advanced (`Committer`)
//! only to the end of the last transaction the sink has durably applied.
//!
//! See docs/postgres-cdc.md for what it does and does not handle yet.

mod catalog;
pub mod cutover;
pub(crate) mod datetime;
mod events;
mod replication;
mod slot_wait;
mod snapshot;
mod stream;
pub(crate) mod values;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::Client;
use schemars::JsonSchema;
use serde::Deserialize;

use self::catalog::{Domains, SourceTable};
use self::snapshot::Snapshot;
use self::stream::Stream;
use super::{Committer, PollLimits, PollStatus, RawBatch, Source, SourceError};
use crate::config::{HumanDuration, LoadedPipeline};
use crate::decode::native::NativeTables;
use crate::lifecycle::State;
use crate::metrics::Metrics;
use crate::position::Checkpoint;
use crate::redact::Secret;
use crate::tables::Routing;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresCdcSourceConfig {
    /// Connection URL of the source database, `postgres://user:password@host:port/db`.
    /// The user needs the REPLICATION attribute (or to own the slot) and SELECT on the
    /// tables; creating the publication needs ownership of them.
    pub url: Secret,
    /// The publication to read; created for the selected tables if missing.
    #[schemars(length(min = 1))]
    pub publication: String,
    /// The logical replication slot (pgoutput); created if missing.
    #[schemars(length(min = 1))]
    pub slot: String,
    /// When to copy the tables' existing rows.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// Logical decoding messages weir writes to the source, so an idle source still moves
    /// the slot forward (and its WAL can be freed).
    #[serde(default)]
    pub heartbeat: Option<HeartbeatConfig>,
    /// Rows fetched per chunk of a table's copy.
    #[serde(default = "default_chunk_rows")]
    #[schemars(range(min = 1))]
    pub chunk_rows: usize,
    /// The logical server name in events' `source.name` (Debezium's topic prefix).
    /// Defaults to the pipeline's name.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Replication origins (names or `*` patterns) whose transactions are not read: the
    /// writes of another pipeline whose `postgres` sink marks them with that `origin`.
    /// A pipeline and its reverse skip each other's origin, so a change does not go
    /// back and forth (docs/cutover.md).
    #[serde(default)]
    pub skip_origins: Vec<String>,
}

impl PostgresCdcSourceConfig {
    /// Whether `skip_origins` leaves out the transactions of replication origin `origin`.
    pub fn skips_origin(&self, origin: &str) -> bool {
        origin_patterns(&self.skip_origins)
            .is_ok_and(|patterns| patterns.iter().any(|p| p.matches(origin)))
    }
}

/// Compiles `skip_origins`.
fn origin_patterns(patterns: &[String]) -> Result<Vec<glob::Pattern>, String> {
    patterns
        .iter()
        .map(|p| glob::Pattern::new(p).map_err(|e| format!("skip_origins `{p}`: {e}")))
        .collect()
}

fn default_chunk_rows() -> usize {
    10_000
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotMode {
    /// Copy the tables when the slot is new (or a copy was not finished), then stream.
    #[default]
    Initial,
    /// Never copy: stream from the slot's position only.
    Never,
    /// Copy every table on every start, then stream.
    Always,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// How often, e.g. `10s`.
    pub interval: HumanDuration,
}

/// An LSN as PostgreSQL prints it (`16/B374D848`).
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

pub use self::snapshot::is_copy_stream;

/// The checkpoint key of the replication stream.
pub fn stream_key(slot: &str) -> String {
    format!("postgres:{slot}")
}

enum Phase {
    /// `seek` has not run yet.
    Setup,
    Copying(Box<Snapshot>, Box<Stream>),
    Streaming(Box<Stream>),
    /// The replication connection was lost: reconnect on the next poll.
    Lost {
        attempts: u32,
        error: String,
    },
}

/// Heartbeats the stream has read and the sink has not yet applied: (LSN, the source's
/// time when it was written), oldest first.
type SentHeartbeats = Arc<Mutex<VecDeque<(u64, chrono::DateTime<chrono::Utc>)>>>;

/// Heartbeats remembered at most (the sink applies them in order; older ones are dropped).
const MAX_SENT_HEARTBEATS: usize = 1024;

/// How often the WAL written past the sink's position is measured.
const LAG_PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Reconnections in a row before the run fails: about a minute and a half of back-off.
const MAX_RECONNECTS: u32 = 12;

/// Losses of the stream in a row, each with the same error and nothing read between,
/// before the run fails: the same change failing again after each reconnection.
const MAX_REPEATED_LOSSES: u32 = 5;

pub struct PostgresCdcSource {
    config: PostgresCdcSourceConfig,
    server: String,
    db: String,
    routing: Routing,
    phase: Phase,
    /// A connection for the catalog, heartbeats and TOAST look-ups.
    meta: Option<Client>,
    domains: Domains,
    last_heartbeat: Option<Instant>,
    /// The end of the last transaction the sink applied whole: the slot may move there.
    flushed: Arc<AtomicU64>,
    heartbeats: SentHeartbeats,
    last_lag_probe: Option<Instant>,
    metrics: Arc<Metrics>,
    /// `lifecycle.resync: auto`: a gap copies every table again instead of stopping.
    resync_auto: bool,
    /// The tables selected when the run began (a table added to the publication later
    /// has not been copied).
    selected: std::collections::HashSet<String>,
    /// Tables added to the publication since their copy would have run, to copy while
    /// streaming ([`LateCopy`]).
    late_queue: Vec<String>,
    /// The last loss of the stream and how many times in a row it recurred with nothing
    /// read between: a change the stream cannot read fails the same way after every
    /// reconnection, and must stop the run rather than loop.
    repeated_loss: (String, u32),
    /// The copy of such tables under way.
    late: Option<LateCopy>,
    /// The tables the events are written for ([`crate::decode::native`]).
    native: Arc<NativeTables>,
}

/// A copy of tables added to the publication while streaming. It reads in the snapshot a
/// temporary slot exported, which sees exactly the transactions committed before the
/// slot's consistent point (`until`). The stream pauses before the first transaction
/// committed at or after that point, the copy is emitted, and the stream goes on. So the
/// changes the copy holds are applied before it (it overwrites them with the same or
/// later rows) and the changes it lacks after it: no gap and nothing older on top.
struct LateCopy {
    until: u64,
    snapshot: Box<Snapshot>,
}

impl PostgresCdcSource {
    pub fn open(
        pipeline: &LoadedPipeline,
        config: &PostgresCdcSourceConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SourceError> {
        let fail = |message: String| SourceError {
            source_name: "postgres-cdc source".into(),
            message,
            retryable: false,
        };
        let tables = pipeline.config.tables.as_ref().ok_or_else(|| {
            fail(
                "a postgres-cdc source reads a whole database: select its tables with a \
                 `tables:` section (e.g. `tables: { include: ['public.*'] }`)"
                    .into(),
            )
        })?;
        let routing = Routing::new(tables).map_err(fail)?;
        Ok(PostgresCdcSource {
            server: config
                .server_name
                .clone()
                .unwrap_or_else(|| pipeline.config.name.clone()),
            config: config.clone(),
            db: String::new(),
            routing,
            phase: Phase::Setup,
            meta: None,
            domains: Domains::default(),
            last_heartbeat: None,
            flushed: Arc::new(AtomicU64::new(0)),
            heartbeats: Arc::default(),
            last_lag_probe: None,
            metrics,
            resync_auto: pipeline.config.lifecycle.resync == crate::config::ResyncMode::Auto,
            selected: Default::default(),
            late_queue: Vec::new(),
            repeated_loss: (String::new(), 0),
            late: None,
            native: Arc::new(NativeTables::default()),
        })
    }

    fn error(&self, message: impl Into<String>, retryable: bool) -> SourceError {
        SourceError {
            source_name: format!("postgres-cdc source (slot {})", self.config.slot),
            message: crate::redact::redact(&message.into()).into_owned(),
            retryable,
        }
    }

    /// The slot no longer holds the sink's position: with `lifecycle.resync: auto`, the
    /// state says so and the tables are copied again; otherwise the run stops with the
    /// resync exit code.
    fn gap(&self, message: &str) -> Result<(), SourceError> {
        let lifecycle = &self.metrics.lifecycle;
        lifecycle.phase(State::ResyncRequired, message);
        // Recorded now: the copy that follows would replace the state within a second.
        lifecycle.refresh(&self.metrics.health);
        if self.resync_auto {
            tracing::warn!(slot = %self.config.slot, reason = %message, "resync: copying every table again");
            return Ok(());
        }
        Err(self.error(
            format!(
                "{message}. Resync: run with `lifecycle: {{ resync: auto }}` to copy every \
                 table again (each target table is emptied first, then refilled), or drop \
                 the target tables' rows and the pipeline's checkpoint and run again"
            ),
            false,
        ))
    }

    /// `table` streams without having been copied (it was added to the publication after
    /// the copy): its rows from before are not in the target. Said in the log and in the
    /// status, table and last error, so the gap is not silent.
    fn not_copied(&self, table: &str) {
        let message = format!(
            "{table} was added to the publication after the copy: its changes stream, but \
             its rows from before are not in the target; copy them with a run with \
             `snapshot: always`, or `weir reconcile --repair apply`"
        );
        tracing::warn!(%table, "{message}");
        let lifecycle = &self.metrics.lifecycle;
        lifecycle.table(table, |t| {
            t.state = Some(State::Streaming);
            t.copied = false;
        });
        lifecycle.error(&message);
    }

    /// Starts copying the tables in `late_queue` while `stream` runs ([`LateCopy`]).
    fn start_late_copy(&mut self, stream: &mut Stream) -> Result<(), String> {
        let names = std::mem::take(&mut self.late_queue);
        self.meta().map_err(|e| e.message)?;
        let meta = self.meta.as_mut().expect("connected");
        let published = catalog::published(meta, &self.config.publication)?;
        let tables: Vec<SourceTable> = catalog::selected_tables(meta, &self.routing, &self.domains)
            .map_err(|e| catalog::describe_error(&e))?
            .into_iter()
            .filter(|t| names.contains(&t.name()) && published.contains(&t.name()))
            .collect();
        if tables.is_empty() {
            return Ok(());
        }
        let listed: Vec<String> = tables.iter().map(SourceTable::name).collect();
        tracing::info!(tables = ?listed, "copying tables added to the publication mid-run");
        // A second replication connection holds the temporary slot until the copy has
        // imported its snapshot; closing it then drops the slot.
        let mut exporter = self.open_stream()?;
        let name = temporary_slot_name(&self.config.slot);
        let (until, exported) = {
            let _watch = slot_wait::SlotWait::start(self.config.url.clone(), name.clone());
            exporter.create_temporary_slot(&name)?
        };
        let snapshot = Snapshot::start(
            &self.config,
            &self.server,
            tables,
            // Taken whole under a name of its own (`late`): no earlier position counts.
            &Checkpoint::default(),
            snapshot::CopyPoint {
                exported: Some(&exported),
                lsn: until,
                resync_at: None,
                late: true,
            },
            self.metrics.clone(),
        )?;
        drop(exporter);
        // Something at or past `until` reaches the stream even on an idle source.
        self.emit_heartbeat()?;
        stream.pause_at(until);
        self.late = Some(LateCopy {
            until,
            snapshot: Box::new(snapshot),
        });
        Ok(())
    }

    /// Emits the next rows of the late copy once the stream has paused at its point;
    /// `None` while the stream still has to get there.
    fn poll_late_copy(
        &mut self,
        stream: &mut Stream,
        batch: &mut RawBatch,
        limits: &PollLimits,
    ) -> Option<Result<PollStatus, SourceError>> {
        if !stream.paused() {
            return None;
        }
        let late = self.late.as_mut()?;
        let context = snapshot::Context {
            server: &self.server,
            db: &self.db,
            native: &self.native,
            now_ms: chrono::Utc::now().timestamp_millis(),
        };
        let result = late.snapshot.poll(batch, limits, &context);
        // The stream is not read meanwhile: tell the server the sink's progress.
        if let Err(e) = stream.keep_alive() {
            tracing::debug!(error = %e, "keep-alive during the copy failed");
        }
        Some(match result {
            Ok(true) => Ok(PollStatus::Records),
            Ok(false) => {
                let late = self.late.take().expect("a late copy");
                match late.snapshot.finish() {
                    Ok(copied) => {
                        tracing::info!(lsn = %lsn_text(late.until), "copy of tables added mid-run finished; streaming");
                        stream.resume();
                        self.streaming(copied.into_iter());
                        Ok(if batch.is_empty() {
                            PollStatus::Idle
                        } else {
                            PollStatus::Records
                        })
                    }
                    Err(e) => Err(self.error(e, true)),
                }
            }
            Err(e) => Err(self.error(e, true)),
        })
    }

    /// The stream runs: the pipeline is `streaming` once the sink has applied every
    /// table's copy.
    fn streaming(&self, tables: impl Iterator<Item = String>) {
        let lifecycle = &self.metrics.lifecycle;
        for table in tables {
            lifecycle.table(&table, |t| {
                t.state.get_or_insert(State::Streaming);
            });
        }
        lifecycle.lag_events(None);
        lifecycle.after_copies(
            State::Streaming,
            format!("streaming from slot {}", self.config.slot),
        );
    }

    fn open_stream(&self) -> Result<Stream, String> {
        Stream::open(
            &self.config,
            &self.server,
            &self.db,
            self.flushed.clone(),
            self.heartbeats.clone(),
            self.native.clone(),
        )
    }

    /// Measures how much WAL the source has written past what the sink applied, now and
    /// then, for `weir status`.
    fn probe_lag(&mut self) {
        if self
            .last_lag_probe
            .is_some_and(|at| at.elapsed() < LAG_PROBE_INTERVAL)
        {
            return;
        }
        self.last_lag_probe = Some(Instant::now());
        let flushed = self.flushed.load(Ordering::Acquire);
        if let Ok(meta) = self.meta()
            && let Ok(current) = current_lsn(meta)
        {
            self.metrics
                .lifecycle
                .lag_wal_bytes((flushed > 0).then(|| current.saturating_sub(flushed)));
        }
    }

    fn meta(&mut self) -> Result<&mut Client, SourceError> {
        if self.meta.as_ref().is_none_or(|c| c.is_closed()) {
            let client = connect(self.config.url.expose())
                .map_err(|e| self.error(format!("cannot connect: {e}"), true))?;
            self.meta = Some(client);
        }
        Ok(self.meta.as_mut().expect("connected"))
    }

    /// Writes a heartbeat message into the WAL when one is due.
    fn heartbeat(&mut self) -> Result<(), SourceError> {
        let Some(interval) = self.config.heartbeat.as_ref().map(|h| h.interval.0) else {
            return Ok(());
        };
        if self
            .last_heartbeat
            .is_some_and(|at| at.elapsed() < interval)
        {
            return Ok(());
        }
        self.meta()?;
        if let Err(e) = self.emit_heartbeat() {
            // A heartbeat that fails is not a reason to stop: the stream reports a lost
            // server on its own.
            tracing::warn!(error = %e, "heartbeat failed");
        }
        Ok(())
    }

    /// Writes a heartbeat message into the WAL now.
    fn emit_heartbeat(&mut self) -> Result<(), String> {
        self.last_heartbeat = Some(Instant::now());
        // The simple query protocol: nothing is prepared (and parsed again) each time.
        let result = self.meta().map_err(|e| e.message)?.batch_execute(&format!(
            "SELECT pg_logical_emit_message(false, '{}', now()::text)",
            stream::HEARTBEAT_PREFIX
        ));
        result.map_err(|e| {
            self.meta = None;
            catalog::describe_error(&e)
        })
    }
}

/// The temporary slot of a copy while streaming: the pipeline's slot name with a suffix,
/// within PostgreSQL's 63 bytes.
fn temporary_slot_name(slot: &str) -> String {
    // The process id: another process of the pipeline (or a slot named like this one
    // with a suffix) never holds the same name; a killed process's temporary slot went
    // with its connection.
    let suffix = format!("_copy_{}", std::process::id());
    let mut end = slot.len().min(63 - suffix.len());
    while !slot.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{suffix}", &slot[..end])
}

/// A plain connection with the session settings both the copy and pgoutput's text
/// values assume.
fn connect(url: &str) -> Result<Client, String> {
    let mut client =
        crate::postgres_client::connect(url).map_err(|e| catalog::describe_error(&e))?;
    client
        .batch_execute(SESSION_SETTINGS_SQL)
        .map_err(|e| catalog::describe_error(&e))?;
    Ok(client)
}

/// Value formats every text value is read in: ISO dates, UTC, hex bytea, exact floats.
const SESSION_SETTINGS_SQL: &str = "SET DateStyle = 'ISO, YMD'; SET TimeZone = 'UTC'; \
     SET bytea_output = 'hex'; SET extra_float_digits = 3; SET IntervalStyle = 'postgres'";

/// The same settings as libpq startup options, for the replication connection.
const SESSION_OPTIONS: &str = "-c DateStyle=ISO,YMD -c TimeZone=UTC -c bytea_output=hex \
     -c extra_float_digits=3 -c IntervalStyle=postgres";

impl Source for PostgresCdcSource {
    fn seek(&mut self, checkpoint: &Checkpoint) -> Result<(), SourceError> {
        let (tables, db) = {
            let meta = self.meta()?;
            let domains = Domains::load(meta).map_err(|e| (catalog::describe_error(&e), true));
            let db = meta
                .query_one("SELECT current_database()", &[])
                .map(|r| r.get::<_, String>(0))
                .map_err(|e| (catalog::describe_error(&e), true));
            match (domains, db) {
                (Ok(domains), Ok(db)) => {
                    self.domains = domains;
                    let meta = self.meta.as_mut().expect("connected");
                    let tables = catalog::selected_tables(meta, &self.routing, &self.domains)
                        .map_err(|e| self.error(catalog::describe_error(&e), true))?;
                    (tables, db)
                }
                (Err((e, r)), _) | (_, Err((e, r))) => return Err(self.error(e, r)),
            }
        };
        self.db = db;
        let meta = self.meta.as_mut().expect("connected");
        let created = catalog::ensure_publication(meta, &self.config.publication, &tables);
        let published = catalog::published(meta, &self.config.publication);
        if created.map_err(|e| self.error(e, false))? {
            tracing::info!(publication = %self.config.publication, tables = tables.len(), "publication created");
        }
        let published = published.map_err(|e| self.error(e, true))?;
        let tables: Vec<SourceTable> = tables
            .into_iter()
            .filter(|t| published.contains(&t.name()))
            .collect();

        let key = stream_key(&self.config.slot);
        let stored = checkpoint.get(&key).map(|r| r.next.max(0) as u64);
        self.selected = tables.iter().map(SourceTable::name).collect();
        // Streamed before, yet never copied (published after that run's copy), or whose
        // copy while streaming was cut short.
        let never_copied: Vec<String> = match (stored, self.config.snapshot) {
            (Some(_), SnapshotMode::Initial) => self
                .selected
                .iter()
                .filter(|table| match snapshot::copy_finished(checkpoint, table) {
                    Some(finished) => !finished,
                    // An empty table's copy leaves no position; the earlier status says.
                    None => self.metrics.lifecycle.was_copied(table) == Some(false),
                })
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        // Why the tables must be copied again, and from which slot position, when the
        // source no longer holds the sink's position (a gap).
        let mut resync: Option<(String, Option<u64>)> = None;
        let slot_exists = slot_plugin(self.meta.as_mut().expect("connected"), &self.config.slot);
        let slot_exists = match slot_exists.map_err(|e| self.error(e, false))? {
            Slot::Lost(message) => {
                self.gap(&message)?;
                let meta = self.meta.as_mut().expect("connected");
                meta.execute("SELECT pg_drop_replication_slot($1)", &[&self.config.slot])
                    .map_err(|e| {
                        self.error(
                            format!(
                                "cannot drop the invalidated slot {}: {}",
                                self.config.slot,
                                catalog::describe_error(&e)
                            ),
                            false,
                        )
                    })?;
                resync = Some((message, None));
                None
            }
            Slot::Found(plugin, confirmed) => {
                // The slot is confirmed only up to what the sink durably applied, so a
                // slot confirmed past the sink's position was created after it: by a
                // resync whose copy is not finished, or by hand. Either way the changes
                // between are not in it.
                if let (Some(stored), Some(confirmed)) = (stored, confirmed)
                    && confirmed > stored
                {
                    let message = format!(
                        "replication slot {} starts at {}, after the sink's position {}: it \
                         was created anew since, and the changes between are not in it",
                        self.config.slot,
                        lsn_text(confirmed),
                        lsn_text(stored)
                    );
                    self.gap(&message)?;
                    resync = Some((message, Some(confirmed)));
                }
                Some(plugin)
            }
            Slot::Missing => None,
        };
        match slot_exists.as_deref() {
            None | Some("pgoutput") => {}
            Some(other) => {
                return Err(self.error(
                    format!(
                        "replication slot {} exists but decodes with {other}; weir reads \
                         pgoutput: name another slot",
                        self.config.slot
                    ),
                    false,
                ));
            }
        }
        if slot_exists.is_none()
            && resync.is_none()
            && let Some(stored) = stored
        {
            let message = format!(
                "the sink has applied this pipeline up to {} of slot {}, but the slot does \
                 not exist: the changes since that position are gone from the source (the \
                 slot was dropped)",
                lsn_text(stored),
                self.config.slot
            );
            self.gap(&message)?;
            resync = Some((message, None));
        }
        let mut stream = self.open_stream().map_err(|e| self.error(e, true))?;
        let created = match slot_exists {
            Some(_) => None,
            None => {
                let _watch =
                    slot_wait::SlotWait::start(self.config.url.clone(), self.config.slot.clone());
                Some(stream.create_slot().map_err(|e| self.error(e, true))?)
            }
        };
        // A resync copies every table again as of the new slot's start; each copy is named
        // for that position, so a resync interrupted by a restart resumes it.
        let resync_at = resync.as_ref().map(|(_, confirmed)| {
            created
                .as_ref()
                .map(|(lsn, _)| *lsn)
                .or(*confirmed)
                .unwrap_or_default()
        });
        let copy = resync.is_some()
            || match self.config.snapshot {
                SnapshotMode::Never => false,
                SnapshotMode::Always => true,
                // A copy runs with a new slot, and is finished after a restart until the
                // stream has applied something (which only happens once the copy is done).
                SnapshotMode::Initial => created.is_some() || checkpoint.get(&key).is_none(),
            };
        self.phase = if copy {
            let meta = self.meta.as_mut().expect("connected");
            let (start_lsn, exported) = match created {
                Some((lsn, name)) => (lsn, Some(name)),
                None => (current_lsn(meta).map_err(|e| self.error(e, true))?, None),
            };
            let snapshot = Snapshot::start(
                &self.config,
                &self.server,
                tables,
                checkpoint,
                snapshot::CopyPoint {
                    exported: exported.as_deref(),
                    lsn: start_lsn,
                    resync_at,
                    late: false,
                },
                self.metrics.clone(),
            )
            .map_err(|e| self.error(e, true))?;
            Phase::Copying(Box::new(snapshot), Box::new(stream))
        } else {
            stream.start().map_err(|e| self.error(e, true))?;
            self.late_queue = never_copied;
            self.streaming(tables.iter().map(SourceTable::name));
            Phase::Streaming(Box::new(stream))
        };
        Ok(())
    }

    fn poll(
        &mut self,
        batch: &mut RawBatch,
        limits: &PollLimits,
    ) -> Result<PollStatus, SourceError> {
        self.heartbeat()?;
        match std::mem::replace(&mut self.phase, Phase::Setup) {
            Phase::Setup => Err(self.error("polled before seek", false)),
            Phase::Copying(mut snapshot, mut stream) => {
                let context = snapshot::Context {
                    server: &self.server,
                    db: &self.db,
                    native: &self.native,
                    now_ms: chrono::Utc::now().timestamp_millis(),
                };
                match snapshot.poll(batch, limits, &context) {
                    Ok(true) => {
                        self.phase = Phase::Copying(snapshot, stream);
                        Ok(PollStatus::Records)
                    }
                    Ok(false) => {
                        let copied = snapshot.finish().map_err(|e| self.error(e, true))?;
                        tracing::info!(slot = %self.config.slot, "copy finished; streaming");
                        stream.start().map_err(|e| self.error(e, true))?;
                        self.streaming(copied.into_iter());
                        self.phase = Phase::Streaming(stream);
                        Ok(if batch.is_empty() {
                            PollStatus::Idle
                        } else {
                            PollStatus::Records
                        })
                    }
                    Err(e) => Err(self.error(e, true)),
                }
            }
            Phase::Streaming(mut stream) => {
                if let Some(result) = self.poll_late_copy(&mut stream, batch, limits) {
                    self.phase = Phase::Streaming(stream);
                    return result;
                }
                self.probe_lag();
                let meta = self.meta.as_mut();
                match stream.poll(batch, limits, meta, &mut self.domains) {
                    Ok(status) => {
                        if status == PollStatus::Records {
                            self.repeated_loss = (String::new(), 0);
                        }
                        for table in stream.take_relations_seen() {
                            if self.selected.insert(table.clone()) {
                                match self.config.snapshot {
                                    SnapshotMode::Never => self.not_copied(&table),
                                    _ => self.late_queue.push(table),
                                }
                            }
                        }
                        if self.late.is_none() && !self.late_queue.is_empty() {
                            let started = self.start_late_copy(&mut stream);
                            self.phase = Phase::Streaming(stream);
                            if let Err(e) = started {
                                return Err(self.error(
                                    format!("cannot copy the tables added to the publication: {e}"),
                                    false,
                                ));
                            }
                            return Ok(status);
                        }
                        self.phase = Phase::Streaming(stream);
                        Ok(status)
                    }
                    Err(error) => {
                        // Dropping the stream closes its connection. What this poll read
                        // is kept; the server sends again everything after the slot's
                        // confirmed position, and the sink skips what it holds.
                        let error = crate::redact::redact(&error).into_owned();
                        if batch.is_empty() && self.repeated_loss.0 == error {
                            self.repeated_loss.1 += 1;
                        } else {
                            self.repeated_loss = (error.clone(), 1);
                        }
                        if self.repeated_loss.1 >= MAX_REPEATED_LOSSES {
                            return Err(self.error(
                                format!(
                                    "{error} (the stream failed this way {} times in a row \
                                     after reconnecting, with nothing read between: the \
                                     change at the slot's position cannot be read)",
                                    self.repeated_loss.1
                                ),
                                false,
                            ));
                        }
                        tracing::warn!(%error, "replication stream lost; reconnecting");
                        self.metrics
                            .health
                            .failing(HEALTH, &format!("replication stream lost: {error}"));
                        self.phase = Phase::Lost { attempts: 0, error };
                        Ok(if batch.is_empty() {
                            PollStatus::Waiting
                        } else {
                            PollStatus::Records
                        })
                    }
                }
            }
            Phase::Lost { attempts, error } => {
                if attempts >= MAX_RECONNECTS {
                    return Err(self.error(
                        format!("{error} (the stream was lost; {attempts} reconnections failed)"),
                        true,
                    ));
                }
                if attempts > 0 {
                    std::thread::sleep(Duration::from_secs(1 << attempts.min(3)));
                }
                let reopened = self
                    .open_stream()
                    .and_then(|mut stream| stream.start().map(|()| stream));
                match reopened {
                    Ok(mut stream) => {
                        if let Some(late) = &self.late {
                            stream.pause_at(late.until);
                        }
                        tracing::info!(slot = %self.config.slot, "replication stream reconnected");
                        self.metrics.health.ok(HEALTH);
                        self.phase = Phase::Streaming(Box::new(stream));
                    }
                    Err(e) => {
                        let e = crate::redact::redact(&e).into_owned();
                        tracing::warn!(error = %e, attempt = attempts + 1, "cannot reconnect");
                        self.metrics.health.failing(
                            HEALTH,
                            &format!(
                                "source unreachable ({e}); reconnection {} of {MAX_RECONNECTS} failed",
                                attempts + 1
                            ),
                        );
                        self.phase = Phase::Lost {
                            attempts: attempts + 1,
                            error: e,
                        };
                    }
                }
                Ok(PollStatus::Waiting)
            }
        }
    }

    fn describe(&self) -> String {
        format!(
            "postgres-cdc publication {} slot {}",
            self.config.publication, self.config.slot
        )
    }

    fn keeps_alive(&self) -> bool {
        true
    }

    fn keep_alive(&mut self) {
        if let Phase::Streaming(stream) = &mut self.phase
            && let Err(error) = stream.keep_alive()
        {
            // The next poll finds the connection lost and reopens it.
            tracing::debug!(%error, "status update while the pipeline is full");
        }
    }

    fn native_tables(&self) -> Option<Arc<NativeTables>> {
        Some(self.native.clone())
    }

    fn committer(&self) -> Option<Box<dyn Committer>> {
        Some(Box::new(SlotCommitter {
            key: stream_key(&self.config.slot),
            flushed: self.flushed.clone(),
            heartbeats: self.heartbeats.clone(),
            metrics: self.metrics.clone(),
        }))
    }
}

enum Slot {
    Missing,
    /// It exists in this database, with this output plugin, confirmed up to this LSN.
    Found(String, Option<u64>),
    /// It was invalidated: the changes since its position are gone.
    Lost(String),
}

/// The output plugin of `slot` in this database, if it exists.
fn slot_plugin(client: &mut Client, slot: &str) -> Result<Slot, String> {
    let row = client
        .query_opt(
            "SELECT plugin::text, database = current_database(), wal_status = 'lost',
                    confirmed_flush_lsn::text
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .map_err(|e| catalog::describe_error(&e))?;
    match row {
        None => Ok(Slot::Missing),
        Some(row) if row.get::<_, Option<bool>>(2) == Some(true) => Ok(Slot::Lost(format!(
            "replication slot {slot} was invalidated (its WAL exceeded \
             max_slot_wal_keep_size): the changes since the sink's position are gone from \
             the source"
        ))),
        Some(row) if row.get::<_, Option<bool>>(1) == Some(true) => Ok(Slot::Found(
            row.get(0),
            row.get::<_, Option<&str>>(3).and_then(parse_lsn),
        )),
        Some(_) => Err(format!(
            "replication slot {slot} belongs to another database: name another slot"
        )),
    }
}

fn current_lsn(client: &mut Client) -> Result<u64, String> {
    let row = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .map_err(|e| catalog::describe_error(&e))?;
    parse_lsn(row.get(0)).ok_or_else(|| "the server returned an unreadable LSN".into())
}

/// An LSN from its text form `16/B374D848`.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
}

/// Moves the slot's confirmed flush LSN to what the sink has durably applied: the end of
/// the last transaction applied whole, or, inside a transaction applied in part, that
/// transaction's commit LSN. The server sends again every transaction whose commit record
/// starts at or after the confirmed LSN, so the part is sent again and the sink skips the
/// changes it already holds; every transaction committed before it was applied. So the
/// slot moves on under a steady load too, where batches seldom end at a commit.
struct SlotCommitter {
    key: String,
    flushed: Arc<AtomicU64>,
    heartbeats: SentHeartbeats,
    metrics: Arc<Metrics>,
}

impl Committer for SlotCommitter {
    fn commit(&self, checkpoint: &Checkpoint) {
        if let Some(resume) = checkpoint.get(&self.key)
            && resume.next > 0
        {
            let flushed = resume.next as u64;
            self.flushed.fetch_max(flushed, Ordering::AcqRel);
            // The heartbeats now applied measure the lag from source to sink.
            let mut applied = None;
            {
                let mut sent = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
                while sent.front().is_some_and(|(lsn, _)| *lsn <= flushed) {
                    applied = sent.pop_front().map(|(_, at)| at);
                }
            }
            if let Some(at) = applied {
                self.metrics.lifecycle.heartbeat_applied(at);
            }
        }
    }
}

/// The health component a lost replication connection is reported under.
const HEALTH: &str = "source";

/// How long one poll may wait on the replication connection at most, whatever the
/// batch's `max_wait`: heartbeats are written between polls.
const MAX_POLL_WAIT: Duration = Duration::from_secs(1);
