//! Pipeline counters and component health, shared between the stages and whoever reports
//! progress.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::dead_letter::{DeadLetter, Stage};
use crate::plugin::stats::{PluginReading, PluginStats};

/// Dead letters the status page shows, the latest first.
pub const RECENT_DEAD_LETTERS: usize = 10;

/// The longest text of a dead letter the status page keeps (its error, its record), in
/// bytes.
const PREVIEW_BYTES: usize = 300;

/// Locks `mutex`, going on with its data if a panic elsewhere poisoned it: these are
/// counters, read by the HTTP listener too, which must not die of another thread's panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Components that are degraded but retrying (a broker that is down, a lost database
/// connection), for the status line and logs.
#[derive(Debug, Default)]
pub struct Health {
    problems: Mutex<BTreeMap<String, (Instant, String)>>,
}

impl Health {
    /// Records that `component` is failing; logs the first failure.
    pub fn failing(&self, component: &str, problem: &str) {
        let problem = crate::redact::redact(problem).into_owned();
        let mut problems = self.problems.lock().expect("health lock");
        match problems.get_mut(component) {
            Some((_, last)) => *last = problem,
            None => {
                tracing::warn!(component, problem = %problem, "degraded; retrying");
                problems.insert(component.to_string(), (Instant::now(), problem));
            }
        }
    }

    /// Records that `component` works again; logs the recovery.
    pub fn ok(&self, component: &str) {
        let mut problems = self.problems.lock().expect("health lock");
        if let Some((since, _)) = problems.remove(component) {
            tracing::info!(component, after = ?since.elapsed(), "recovered");
        }
    }

    /// How long `component` has been failing, if it is.
    pub fn failing_for(&self, component: &str) -> Option<Duration> {
        let problems = self.problems.lock().expect("health lock");
        problems.get(component).map(|(since, _)| since.elapsed())
    }

    /// One line per degraded component, e.g. `kafka: broker unavailable for 12s (…)`.
    pub fn describe(&self) -> Vec<String> {
        // Read by the HTTP listener too, which must not die of another thread's panic.
        let problems = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        problems
            .iter()
            .map(|(component, (since, problem))| {
                format!(
                    "{component}: {problem} (for {}s, retrying)",
                    since.elapsed().as_secs()
                )
            })
            .collect()
    }
}

/// The time each batch took to apply, as a Prometheus histogram.
#[derive(Debug, Clone)]
pub struct ApplySeconds(pub prometheus_client::metrics::histogram::Histogram);

impl Default for ApplySeconds {
    fn default() -> Self {
        // From 1 ms to about 16 s, doubling: a small batch into SQLite to a large one
        // into a slow remote server.
        ApplySeconds(prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15),
        ))
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub health: Health,
    /// Where the pipeline stands (its lifecycle state), for `weir status`.
    pub lifecycle: crate::lifecycle::Lifecycle,
    /// Records read from the source.
    pub events_read: AtomicU64,
    pub bytes_read: AtomicU64,
    /// Rows decoded into change batches.
    pub rows_decoded: AtomicU64,
    /// Rows in batches the sink has applied.
    pub rows_applied: AtomicU64,
    pub upserts: AtomicU64,
    pub deletes: AtomicU64,
    pub truncates: AtomicU64,
    /// Changes appended to a change-log sink.
    pub appended: AtomicU64,
    /// Changes a conflict resolver skipped, or replaced by a merged row.
    pub conflicts_skipped: AtomicU64,
    pub conflicts_merged: AtomicU64,
    /// Changes dropped because they came from the target's own site (loop prevention).
    pub echoes_dropped: AtomicU64,
    pub duplicates_skipped: AtomicU64,
    /// Rows the sink skipped because the target held them by position already.
    pub already_applied: AtomicU64,
    pub dead_letters: AtomicU64,
    pub tombstones: AtomicU64,
    pub schema_changes: AtomicU64,
    pub ignored: AtomicU64,
    pub batches: AtomicU64,
    /// Dead letters by the stage that refused the record and the class of its reason
    /// ([`Stage::reason_class`]).
    pub dead_letters_by_reason: Mutex<BTreeMap<(Stage, &'static str), u64>>,
    /// The latest dead letters, newest last, their texts cut and secrets masked.
    pub recent_dead_letters: Mutex<VecDeque<RecentDeadLetter>>,
    /// The plugins the pipeline runs, each counting its calls.
    pub plugins: Mutex<Vec<Arc<PluginStats>>>,
    /// Each Kafka partition's lag in events (the broker's end less the committed offset),
    /// over the partitions this process owns.
    pub partition_lag: Mutex<BTreeMap<(String, i32), u64>>,
    /// Attempts to apply a batch the sink failed and that were made again.
    pub sink_retries: AtomicU64,
    /// Events read under a consumer-group assignment that was revoked before they were
    /// applied: left to the partitions' next owner, which starts at the sink's position.
    pub events_abandoned: AtomicU64,
    /// Rebalances that revoked this process's partitions.
    pub revocations: AtomicU64,
    /// How long each batch took to apply, retries included (`/metrics`).
    pub apply_seconds: ApplySeconds,
    /// Counts by source table, for many-table pipelines (`tables:`).
    pub tables: Mutex<BTreeMap<String, TableCounts>>,
}

/// A dead letter as the status page shows it: no more than [`PREVIEW_BYTES`] of its error
/// and record, with credentials masked ([`crate::redact::redact_record`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentDeadLetter {
    pub at: String,
    pub stage: Stage,
    pub reason: &'static str,
    pub table: Option<String>,
    pub position: Option<String>,
    pub error: String,
    pub record: Option<String>,
}

/// The start of `bytes` as text, no more than [`PREVIEW_BYTES`], credentials masked by
/// `mask`.
fn preview(bytes: &[u8], mask: fn(&str) -> std::borrow::Cow<'_, str>) -> String {
    let end = bytes.len().min(PREVIEW_BYTES * 4);
    let text = String::from_utf8_lossy(&bytes[..end]);
    // Masked before it is cut, so a cut cannot split a secret from its name.
    let mut text = mask(&text).into_owned();
    if text.len() > PREVIEW_BYTES || end < bytes.len() {
        text.truncate(text.floor_char_boundary(PREVIEW_BYTES));
        text.push('…');
    }
    text
}

/// What a many-table pipeline did with one source table.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableCounts {
    /// The target table its changes go to (empty while it has none).
    pub target: String,
    /// Row changes decoded.
    pub rows: u64,
    /// Row changes in batches the sink applied.
    pub applied: u64,
    /// Events skipped because the pipeline does not select the table.
    pub skipped: u64,
    /// Events of the table sent to the dead-letter output.
    pub dead_letters: u64,
}

impl TableCounts {
    fn add(&mut self, other: &TableCounts) {
        if self.target.is_empty() {
            self.target.clone_from(&other.target);
        }
        self.rows += other.rows;
        self.applied += other.applied;
        self.skipped += other.skipped;
        self.dead_letters += other.dead_letters;
    }
}

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub events_read: u64,
    pub bytes_read: u64,
    pub rows_decoded: u64,
    pub rows_applied: u64,
    pub upserts: u64,
    pub deletes: u64,
    pub truncates: u64,
    pub appended: u64,
    pub conflicts_skipped: u64,
    pub conflicts_merged: u64,
    pub echoes_dropped: u64,
    pub duplicates_skipped: u64,
    pub already_applied: u64,
    pub events_abandoned: u64,
    pub revocations: u64,
    pub sink_retries: u64,
    pub dead_letters: u64,
    pub tombstones: u64,
    pub schema_changes: u64,
    pub ignored: u64,
    pub batches: u64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds counts by source table (the reader and the applier publish theirs per batch).
    pub fn add_table_counts(&self, counts: BTreeMap<String, TableCounts>) {
        let mut tables = lock(&self.tables);
        for (table, counts) in counts {
            tables.entry(table).or_default().add(&counts);
        }
    }

    /// Counts a dead letter by stage and reason, and keeps a preview of it for the
    /// status page.
    pub fn dead_letter(&self, letter: &DeadLetter<'_>) {
        Metrics::add(&self.dead_letters, 1);
        let reason = letter.stage.reason_class(letter.error);
        *lock(&self.dead_letters_by_reason)
            .entry((letter.stage, reason))
            .or_default() += 1;
        let recent = RecentDeadLetter {
            at: crate::lifecycle::timestamp(chrono::Utc::now()),
            stage: letter.stage,
            reason,
            table: letter.table.map(str::to_string),
            position: letter.position.map(ToString::to_string),
            error: preview(letter.error.as_bytes(), crate::redact::redact_error),
            record: letter
                .raw
                .map(|raw| preview(raw, crate::redact::redact_record)),
        };
        let mut letters = lock(&self.recent_dead_letters);
        if letters.len() == RECENT_DEAD_LETTERS {
            letters.pop_front();
        }
        letters.push_back(recent);
    }

    /// Dead letters so far by stage and reason class.
    pub fn dead_letters_by_reason(&self) -> BTreeMap<(Stage, &'static str), u64> {
        lock(&self.dead_letters_by_reason).clone()
    }

    /// The latest dead letters, newest first.
    pub fn recent_dead_letters(&self) -> Vec<RecentDeadLetter> {
        lock(&self.recent_dead_letters)
            .iter()
            .rev()
            .cloned()
            .collect()
    }

    /// Adds plugins whose calls `/metrics` and the status page show.
    pub fn watch_plugins(&self, plugins: impl IntoIterator<Item = Arc<PluginStats>>) {
        lock(&self.plugins).extend(plugins);
    }

    /// Each plugin's calls so far, one reading per plugin name (a resolver runs once per
    /// sink lane: their calls are added up).
    pub fn plugin_readings(&self) -> Vec<PluginReading> {
        let mut readings: Vec<PluginReading> = Vec::new();
        for plugin in lock(&self.plugins).iter() {
            let reading = plugin.read();
            match readings
                .iter_mut()
                .find(|r| r.name == reading.name && r.kind == reading.kind)
            {
                Some(sum) => {
                    for (total, (_, n)) in sum.calls.iter_mut().zip(reading.calls) {
                        total.1 += n;
                    }
                    sum.seconds += reading.seconds;
                }
                None => readings.push(reading),
            }
        }
        readings
    }

    /// Replaces the lag of the Kafka partitions this process owns.
    pub fn set_partition_lag(&self, lag: BTreeMap<(String, i32), u64>) {
        *lock(&self.partition_lag) = lag;
    }

    pub fn partition_lag(&self) -> BTreeMap<(String, i32), u64> {
        lock(&self.partition_lag).clone()
    }

    /// The pipeline's status as it stands, for the status page and the status store.
    pub fn status(
        &self,
        pipeline: &str,
        process: crate::lifecycle::Process,
    ) -> crate::lifecycle::Status {
        let snapshot = self.snapshot();
        let counts = crate::lifecycle::Counts {
            events_read: snapshot.events_read,
            rows_applied: snapshot.rows_applied,
            dead_letters: snapshot.dead_letters,
            tables: self
                .table_counts()
                .into_iter()
                .map(|(table, counts)| (table, counts.applied))
                .collect(),
        };
        self.lifecycle.status(pipeline, process, counts)
    }

    /// The counts by source table so far.
    pub fn table_counts(&self) -> BTreeMap<String, TableCounts> {
        lock(&self.tables).clone()
    }

    pub fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            events_read: get(&self.events_read),
            bytes_read: get(&self.bytes_read),
            rows_decoded: get(&self.rows_decoded),
            rows_applied: get(&self.rows_applied),
            upserts: get(&self.upserts),
            deletes: get(&self.deletes),
            truncates: get(&self.truncates),
            appended: get(&self.appended),
            conflicts_skipped: get(&self.conflicts_skipped),
            conflicts_merged: get(&self.conflicts_merged),
            echoes_dropped: get(&self.echoes_dropped),
            duplicates_skipped: get(&self.duplicates_skipped),
            already_applied: get(&self.already_applied),
            events_abandoned: get(&self.events_abandoned),
            revocations: get(&self.revocations),
            sink_retries: get(&self.sink_retries),
            dead_letters: get(&self.dead_letters),
            tombstones: get(&self.tombstones),
            schema_changes: get(&self.schema_changes),
            ignored: get(&self.ignored),
            batches: get(&self.batches),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_reports_outages_without_secrets() {
        let health = Health::default();
        assert!(health.describe().is_empty());
        health.failing("kafka", "connect to sasl://u:pw@broker failed");
        let lines = health.describe();
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with("kafka: connect to sasl://u:***@broker failed"),
            "{lines:?}"
        );
        assert!(health.failing_for("kafka").is_some());
        health.ok("kafka");
        assert!(health.describe().is_empty());
    }
}
