//! Pipeline counters, shared between the stages and whoever reports progress.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
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
    pub dead_letters: AtomicU64,
    pub tombstones: AtomicU64,
    pub schema_changes: AtomicU64,
    pub ignored: AtomicU64,
    pub batches: AtomicU64,
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
            dead_letters: get(&self.dead_letters),
            tombstones: get(&self.tombstones),
            schema_changes: get(&self.schema_changes),
            ignored: get(&self.ignored),
            batches: get(&self.batches),
        }
    }
}
