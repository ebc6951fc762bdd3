//! Where a pipeline stands: its lifecycle state, each table's progress, positions, lag,
//! the last heartbeat and the last error, kept while it runs and persisted in the target
//! beside the checkpoint (`store.rs`), so `weir status` can read it from another process,
//! or after the run has ended.
//!
//! The state is the source's phase (a copy pending or running, streaming, a resync
//! required) refined by the pipeline's health: `degraded` while a component retries (the
//! source unreachable, the sink failing), `catching-up` while streaming more than
//! `catch_up_lag` behind the source. Every change of state is logged with its reason and
//! time, and the last [`MAX_TRANSITIONS`] are kept in the status.

pub mod store;
pub mod writer;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::metrics::Health;
use crate::position::Checkpoint;

/// Transitions kept in the status (older ones are only in the log).
pub const MAX_TRANSITIONS: usize = 50;

/// How far behind the source a streaming pipeline may be before it counts as catching up,
/// unless the pipeline says otherwise.
pub const DEFAULT_CATCH_UP_LAG: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Connecting to the source and the sink, reading the stored checkpoint.
    Starting,
    /// The source will copy tables but has not begun.
    SnapshotPending,
    /// Tables are being copied.
    Snapshotting,
    /// Streaming, but further behind the source than `catch_up_lag`.
    CatchingUp,
    Streaming,
    /// Something retries: the source is unreachable, heartbeats are missing, the sink fails.
    Degraded,
    /// The source no longer holds the stored position: changes were lost to weir, and the
    /// tables affected must be copied again.
    ResyncRequired,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::SnapshotPending => "snapshot-pending",
            State::Snapshotting => "snapshotting",
            State::CatchingUp => "catching-up",
            State::Streaming => "streaming",
            State::Degraded => "degraded",
            State::ResyncRequired => "resync-required",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the process that writes the status still runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Process {
    Running,
    /// The run ended normally (its source ended, it was idle, or it was asked to stop).
    Stopped,
    /// The run failed; `last_error` says why.
    Failed,
}

/// One table's place in the lifecycle.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TableStatus {
    /// `snapshot-pending`, `snapshotting` or `streaming`.
    pub state: Option<State>,
    /// Rows the copy has read in this run.
    pub rows_copied: u64,
    /// The table's copy is finished (in this run or an earlier one).
    pub copied: bool,
    /// The source's estimate of the table's rows when its copy began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_estimated: Option<u64>,
    /// Row changes of the table the sink applied in this run.
    pub rows_applied: u64,
    /// Where a resumed copy began (after this key), if it resumed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_after: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub at: String,
    pub from: Option<State>,
    pub to: State,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lag {
    /// Seconds between a change (or heartbeat) being written at the source and the sink
    /// applying it, for the latest one applied.
    pub seconds: Option<f64>,
    /// Changes read but not yet applied, or rows still to copy.
    pub events: Option<u64>,
    /// WAL written at the source past what the sink has applied (`postgres-cdc`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal_bytes: Option<u64>,
    /// When `seconds` was measured.
    pub measured_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Error {
    pub at: String,
    pub message: String,
}

/// A stored position: the stream's resume point, as the checkpoint holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredPosition {
    pub next: i64,
    pub line: u64,
}

/// Everything `weir status` shows, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub pipeline: String,
    pub state: State,
    pub reason: String,
    /// When the pipeline entered `state`.
    pub since: String,
    pub process: Process,
    pub pid: u32,
    /// When this status was written; a running process rewrites it every second.
    pub updated_at: String,
    pub tables: BTreeMap<String, TableStatus>,
    /// The last checkpoint the sink made durable, by stream.
    pub positions: BTreeMap<String, StoredPosition>,
    pub lag: Lag,
    /// Source time of the last heartbeat the sink has applied.
    pub last_heartbeat: Option<String>,
    pub last_error: Option<Error>,
    pub events_read: u64,
    pub rows_applied: u64,
    pub dead_letters: u64,
    pub transitions: Vec<Transition>,
}

/// What [`Lifecycle::readings`] returns.
#[derive(Debug, Clone, Copy, Default)]
pub struct Readings {
    pub lag_seconds: Option<f64>,
    pub lag_events: Option<u64>,
    pub lag_wal_bytes: Option<u64>,
    pub last_heartbeat: Option<DateTime<Utc>>,
    pub durable_at: Option<DateTime<Utc>>,
}

/// The live lifecycle of a running pipeline, shared by its stages (in [`crate::metrics::Metrics`]).
#[derive(Debug, Default)]
pub struct Lifecycle {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// What the source says it is doing, and why.
    phase: Option<(State, String)>,
    /// The state last reported, with when it was entered.
    current: Option<(State, String, DateTime<Utc>)>,
    tables: BTreeMap<String, TableStatus>,
    positions: Option<Checkpoint>,
    lag: Lag,
    last_heartbeat: Option<DateTime<Utc>>,
    /// When the sink last made a checkpoint durable.
    durable_at: Option<DateTime<Utc>>,
    last_error: Option<Error>,
    transitions: VecDeque<Transition>,
    catch_up_lag: Option<Duration>,
    /// Whether event times measure lag (not for a recorded log replayed from a file).
    live_event_times: bool,
    /// Copies read but not yet applied: each table's copy stream, and the resume point
    /// that marks the copy's end in the sink's checkpoint.
    copies: BTreeMap<String, (String, i64)>,
    /// The phase to enter once every copy is applied (the source reads ahead of the sink,
    /// so its own end of the copy is too early to say `streaming`).
    after_copies: Option<(State, String)>,
    /// Streams whose stored position the source no longer holds: where they now begin.
    gaps: BTreeMap<String, i64>,
    /// Gaps the target was repaired after: where each stream began then.
    repaired: BTreeMap<String, i64>,
}

impl Inner {
    fn copy_applied(&mut self, table: &str) {
        if self.copies.remove(table).is_none() {
            return;
        }
        let streaming = self.after_copies.is_some();
        let status = self.tables.entry(table.to_string()).or_default();
        status.copied = true;
        if streaming {
            status.state = Some(State::Streaming);
        }
        self.enter_after_copies();
    }

    fn enter_after_copies(&mut self) {
        if self.copies.is_empty()
            && let Some(phase) = self.after_copies.take()
        {
            for status in self.tables.values_mut() {
                if status.state.is_some() {
                    status.state = Some(State::Streaming);
                }
            }
            self.phase = Some(phase);
        }
    }
}

pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Lifecycle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves plain data: go on with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How this run measures lag: `catch_up_lag` is the threshold of `catching-up`;
    /// `live_event_times` says whether the events' source times are live.
    pub fn configure(&self, catch_up_lag: Duration, live_event_times: bool) {
        let mut inner = self.lock();
        inner.catch_up_lag = Some(catch_up_lag);
        inner.live_event_times = live_event_times;
    }

    /// Carries over what an earlier run stored: its tables' progress, positions, last
    /// heartbeat and error, and its transitions, so the history spans restarts and a
    /// restarted pipeline does not show a blank status until its source has set up.
    pub fn resume_from(&self, earlier: Status) {
        let mut inner = self.lock();
        inner.tables = earlier.tables;
        for table in inner.tables.values_mut() {
            table.rows_applied = 0;
        }
        inner.positions = Some(Checkpoint {
            streams: earlier
                .positions
                .into_iter()
                .map(|(stream, p)| {
                    (
                        stream,
                        crate::position::ResumePoint {
                            next: p.next,
                            line: p.line,
                        },
                    )
                })
                .collect(),
        });
        inner.last_heartbeat = earlier
            .last_heartbeat
            .and_then(|at| DateTime::parse_from_rfc3339(&at).ok())
            .map(|at| at.to_utc());
        inner.last_error = earlier.last_error;
        inner.transitions = earlier.transitions.into();
    }

    /// The source's phase; the state follows at the next [`refresh`](Self::refresh).
    pub fn phase(&self, state: State, reason: impl Into<String>) {
        self.lock().phase = Some((state, reason.into()));
    }

    /// The source's phase, if it set one.
    pub fn current_phase(&self) -> Option<State> {
        self.lock().phase.as_ref().map(|(s, _)| *s)
    }

    /// Whether an earlier run's status says `table` was copied: `None` when there is no
    /// earlier status with tables to tell.
    pub fn was_copied(&self, table: &str) -> Option<bool> {
        let inner = self.lock();
        if inner.tables.is_empty() {
            return None;
        }
        Some(inner.tables.get(table).is_some_and(|t| t.copied))
    }

    /// Updates one table's status.
    pub fn table(&self, table: &str, update: impl FnOnce(&mut TableStatus)) {
        update(self.lock().tables.entry(table.to_string()).or_default());
    }

    /// The lag as last measured, the source time of the last heartbeat seen, and when the
    /// sink last made a checkpoint durable: what `/metrics` shows.
    pub fn readings(&self) -> Readings {
        let inner = self.lock();
        Readings {
            lag_seconds: inner.lag.seconds,
            lag_events: inner.lag.events,
            lag_wal_bytes: inner.lag.wal_bytes,
            last_heartbeat: inner.last_heartbeat,
            durable_at: inner.durable_at,
        }
    }

    /// A heartbeat written at the source at `sent` was applied now.
    pub fn heartbeat_applied(&self, sent: DateTime<Utc>) {
        let now = Utc::now();
        let mut inner = self.lock();
        inner.last_heartbeat = Some(inner.last_heartbeat.map_or(sent, |h| h.max(sent)));
        inner.lag.seconds = Some(seconds_between(sent, now));
        inner.lag.measured_at = Some(timestamp(now));
    }

    /// A heartbeat written at the source at `sent` was read (a Kafka source reads them
    /// beside the changes, so they say the source lives, not how far the sink is behind).
    pub fn heartbeat_seen(&self, sent: DateTime<Utc>) {
        let mut inner = self.lock();
        inner.last_heartbeat = Some(inner.last_heartbeat.map_or(sent, |h| h.max(sent)));
    }

    /// The source no longer holds `stream` from the stored position: it now begins at
    /// `first`. Kept until [`gaps_repaired`](Self::gaps_repaired).
    pub fn gap(&self, stream: &str, first: i64) {
        self.lock().gaps.insert(stream.to_string(), first);
    }

    /// The gaps found, by stream: where each stream now begins.
    pub fn gaps(&self) -> BTreeMap<String, i64> {
        self.lock().gaps.clone()
    }

    /// The target was repaired from the source after the gaps found: a stream may now go
    /// on from where it begins, as long as that is no later than when the gap was found
    /// (changes deleted since the repair began would be a new gap).
    pub fn gaps_repaired(&self) {
        let mut inner = self.lock();
        let gaps = std::mem::take(&mut inner.gaps);
        inner.repaired.extend(gaps);
    }

    /// Whether a gap in `stream` up to `first` was repaired.
    pub fn gap_repaired(&self, stream: &str, first: i64) -> bool {
        self.lock()
            .repaired
            .get(stream)
            .is_some_and(|repaired| first <= *repaired)
    }

    /// Changes written at the source up to `newest_ms` (epoch milliseconds) were applied now.
    pub fn changes_applied(&self, newest_ms: i64) {
        let mut inner = self.lock();
        if !inner.live_event_times {
            return;
        }
        let Some(written) = DateTime::<Utc>::from_timestamp_millis(newest_ms) else {
            return;
        };
        let now = Utc::now();
        inner.lag.seconds = Some(seconds_between(written, now));
        inner.lag.measured_at = Some(timestamp(now));
    }

    pub fn lag_events(&self, events: Option<u64>) {
        self.lock().lag.events = events;
    }

    pub fn lag_wal_bytes(&self, bytes: Option<u64>) {
        self.lock().lag.wal_bytes = bytes;
    }

    /// The last checkpoint the sink made durable. A copy whose end it holds is applied.
    pub fn durable(&self, checkpoint: &Checkpoint) {
        let mut inner = self.lock();
        inner.positions = Some(checkpoint.clone());
        inner.durable_at = Some(Utc::now());
        let applied: Vec<String> = inner
            .copies
            .iter()
            .filter(|(_, (stream, end))| checkpoint.get(stream).is_some_and(|r| r.next >= *end))
            .map(|(table, _)| table.clone())
            .collect();
        for table in applied {
            inner.copy_applied(&table);
        }
    }

    /// A table's copy will end at `end` in checkpoint stream `stream`.
    pub fn copy_planned(&self, table: &str, stream: &str, end: i64) {
        self.lock()
            .copies
            .insert(table.to_string(), (stream.to_string(), end));
    }

    /// A table's copy needs nothing applied (it read no row).
    pub fn copy_applied(&self, table: &str) {
        self.lock().copy_applied(table);
    }

    /// Enters `state` once every planned copy is applied (at once if none is pending).
    pub fn after_copies(&self, state: State, reason: impl Into<String>) {
        let mut inner = self.lock();
        inner.after_copies = Some((state, reason.into()));
        inner.enter_after_copies();
    }

    pub fn error(&self, message: &str) {
        self.lock().last_error = Some(Error {
            at: timestamp(Utc::now()),
            message: crate::redact::redact(message).into_owned(),
        });
    }

    /// Works out the state from the phase and `health`, logging a change of state. Returns
    /// the state.
    pub fn refresh(&self, health: &Health) -> State {
        let mut inner = self.lock();
        let (phase, phase_reason) = inner.phase.clone().unwrap_or((
            State::Starting,
            "connecting to the source and the sink".into(),
        ));
        let problems = health.describe();
        let (state, reason) = if phase == State::ResyncRequired {
            (phase, phase_reason)
        } else if !problems.is_empty() {
            (State::Degraded, problems.join("; "))
        } else if phase == State::Streaming
            && let (Some(lag), Some(threshold)) = (inner.lag.seconds, inner.catch_up_lag)
            && lag > threshold.as_secs_f64()
        {
            (
                State::CatchingUp,
                format!(
                    "{lag:.1}s behind the source (more than {}s)",
                    threshold.as_secs_f64()
                ),
            )
        } else {
            (phase, phase_reason)
        };
        let from = inner.current.as_ref().map(|(s, _, _)| *s);
        if from != Some(state) {
            let now = Utc::now();
            tracing::info!(from = ?from.map(State::as_str), to = %state, %reason, "pipeline state");
            inner.transitions.push_back(Transition {
                at: timestamp(now),
                from,
                to: state,
                reason: reason.clone(),
            });
            while inner.transitions.len() > MAX_TRANSITIONS {
                inner.transitions.pop_front();
            }
            inner.current = Some((state, reason, now));
        } else if let Some(current) = inner.current.as_mut() {
            // Same state, newer reason (a degraded component's latest error).
            current.1 = reason;
        }
        state
    }

    /// The status to store, as of the last [`refresh`](Self::refresh).
    pub fn status(&self, pipeline: &str, process: Process, counts: Counts) -> Status {
        let inner = self.lock();
        let (state, reason, since) = inner.current.clone().unwrap_or((
            State::Starting,
            "connecting to the source and the sink".into(),
            Utc::now(),
        ));
        let mut tables = inner.tables.clone();
        for (table, applied) in counts.tables {
            tables.entry(table).or_default().rows_applied = applied;
        }
        Status {
            pipeline: pipeline.to_string(),
            state,
            reason,
            since: timestamp(since),
            process,
            pid: std::process::id(),
            updated_at: timestamp(Utc::now()),
            tables,
            positions: inner
                .positions
                .iter()
                .flat_map(|c| c.streams.iter())
                .map(|(stream, r)| {
                    (
                        stream.clone(),
                        StoredPosition {
                            next: r.next,
                            line: r.line,
                        },
                    )
                })
                .collect(),
            lag: inner.lag.clone(),
            last_heartbeat: inner.last_heartbeat.map(timestamp),
            last_error: inner.last_error.clone(),
            events_read: counts.events_read,
            rows_applied: counts.rows_applied,
            dead_letters: counts.dead_letters,
            transitions: inner.transitions.iter().cloned().collect(),
        }
    }
}

/// Pipeline counters the status shows.
#[derive(Debug, Default)]
pub struct Counts {
    pub events_read: u64,
    pub rows_applied: u64,
    pub dead_letters: u64,
    /// Row changes applied, by source table.
    pub tables: Vec<(String, u64)>,
}

fn seconds_between(earlier: DateTime<Utc>, later: DateTime<Utc>) -> f64 {
    // Clocks of different hosts disagree a little: never report a negative lag.
    ((later - earlier).num_milliseconds().max(0) as f64) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_counts_as_repaired_only_up_to_where_the_stream_began_when_found() {
        let lifecycle = Lifecycle::default();
        let stream = "kafka:orders/0";
        lifecycle.gap(stream, 2200);
        assert!(!lifecycle.gap_repaired(stream, 2200), "not repaired yet");
        lifecycle.gaps_repaired();
        assert!(lifecycle.gaps().is_empty());
        assert!(lifecycle.gap_repaired(stream, 2200));
        assert!(lifecycle.gap_repaired(stream, 2100));
        // Retention deleted more since: a new gap.
        assert!(!lifecycle.gap_repaired(stream, 2300));
        assert!(!lifecycle.gap_repaired("kafka:orders/1", 10));
    }

    #[test]
    fn the_state_follows_the_phase_health_and_lag() {
        let lifecycle = Lifecycle::default();
        let health = Health::default();
        lifecycle.configure(Duration::from_secs(10), true);
        assert_eq!(lifecycle.refresh(&health), State::Starting);
        lifecycle.phase(State::Snapshotting, "copying 3 tables");
        assert_eq!(lifecycle.refresh(&health), State::Snapshotting);
        health.failing("source", "connection refused");
        assert_eq!(lifecycle.refresh(&health), State::Degraded);
        health.ok("source");
        lifecycle.phase(State::Streaming, "streaming");
        lifecycle.changes_applied(Utc::now().timestamp_millis() - 60_000);
        assert_eq!(lifecycle.refresh(&health), State::CatchingUp);
        lifecycle.heartbeat_applied(Utc::now());
        assert_eq!(lifecycle.refresh(&health), State::Streaming);
        // A resync outranks everything, a degraded health included.
        health.failing("sink", "down");
        lifecycle.phase(State::ResyncRequired, "slot dropped");
        assert_eq!(lifecycle.refresh(&health), State::ResyncRequired);
        let status = lifecycle.status("p", Process::Running, Counts::default());
        let path: Vec<State> = status.transitions.iter().map(|t| t.to).collect();
        assert_eq!(
            path,
            [
                State::Starting,
                State::Snapshotting,
                State::Degraded,
                State::CatchingUp,
                State::Streaming,
                State::ResyncRequired
            ]
        );
        assert!(status.transitions[2].reason.contains("connection refused"));
    }

    #[test]
    fn streaming_begins_when_the_sink_has_applied_every_copy() {
        let lifecycle = Lifecycle::default();
        let health = Health::default();
        lifecycle.phase(State::Snapshotting, "copying");
        lifecycle.table("a", |t| t.state = Some(State::Snapshotting));
        lifecycle.table("b", |t| t.state = Some(State::Snapshotting));
        lifecycle.copy_planned("a", "copy:a", i64::MAX);
        lifecycle.copy_planned("b", "copy:b", i64::MAX);
        lifecycle.copy_applied("b");
        // The source has read both copies; the sink has applied only part of `a`.
        lifecycle.after_copies(State::Streaming, "streaming");
        let partial = Checkpoint {
            streams: [(
                "copy:a".to_string(),
                crate::position::ResumePoint { next: 10, line: 1 },
            )]
            .into(),
        };
        lifecycle.durable(&partial);
        assert_eq!(lifecycle.refresh(&health), State::Snapshotting);
        let status = lifecycle.status("p", Process::Running, Counts::default());
        assert!(!status.tables["a"].copied && status.tables["b"].copied);
        let done = Checkpoint {
            streams: [(
                "copy:a".to_string(),
                crate::position::ResumePoint {
                    next: i64::MAX,
                    line: 0,
                },
            )]
            .into(),
        };
        lifecycle.durable(&done);
        assert_eq!(lifecycle.refresh(&health), State::Streaming);
        let status = lifecycle.status("p", Process::Running, Counts::default());
        assert_eq!(status.tables["a"].state, Some(State::Streaming));
        assert!(status.tables["a"].copied);
    }

    #[test]
    fn event_times_of_a_replayed_log_are_not_lag() {
        let lifecycle = Lifecycle::default();
        lifecycle.configure(Duration::from_secs(10), false);
        lifecycle.changes_applied(0);
        lifecycle.phase(State::Streaming, "reading");
        assert_eq!(lifecycle.refresh(&Health::default()), State::Streaming);
        assert_eq!(
            lifecycle
                .status("p", Process::Running, Counts::default())
                .lag
                .seconds,
            None
        );
    }

    #[test]
    fn transitions_are_bounded_and_errors_redacted() {
        let lifecycle = Lifecycle::default();
        let health = Health::default();
        for i in 0..(MAX_TRANSITIONS * 2) {
            let state = if i % 2 == 0 {
                State::Snapshotting
            } else {
                State::Streaming
            };
            lifecycle.phase(state, "x");
            lifecycle.refresh(&health);
        }
        lifecycle.error("cannot connect to postgres://weir:hunter2@db/app");
        let status = lifecycle.status("p", Process::Failed, Counts::default());
        assert_eq!(status.transitions.len(), MAX_TRANSITIONS);
        assert!(!status.last_error.unwrap().message.contains("hunter2"));
    }
}
