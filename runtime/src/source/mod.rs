//! Sources of change events. A source delivers raw records (key, value, position) in
//! batches; decoding is a separate stage. Adding a source is one module here plus one
//! variant in [`SourceConfig`] and one arm in [`build`].

pub mod file;
pub mod kafka;
pub mod postgres_cdc;

use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::config::LoadedPipeline;
use crate::decode::{Format, Headers, RawRecord, Span};
use crate::metrics::Metrics;
use crate::position::{Checkpoint, Position};

/// Where change events come from.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SourceConfig {
    /// Debezium change events, one JSON document per line, from a local file.
    File(file::FileSourceConfig),
    /// Debezium change events from Kafka topics, through a consumer group.
    Kafka(kafka::KafkaSourceConfig),
    /// A PostgreSQL database read directly: a copy of its tables, then its changes
    /// through logical replication (pgoutput).
    PostgresCdc(postgres_cdc::PostgresCdcSourceConfig),
}

impl SourceConfig {
    pub fn format(&self) -> Format {
        match self {
            SourceConfig::File(f) => f.format,
            SourceConfig::Kafka(k) => k.format,
            // The source writes Debezium envelopes with their schema blocks.
            SourceConfig::PostgresCdc(_) => Format::DebeziumJson,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct SourceError {
    pub source_name: String,
    pub message: String,
    /// A later attempt may succeed (a broker that is down), as opposed to a setup error.
    pub retryable: bool,
}

/// Records read by one poll, in one buffer.
#[derive(Debug, Default)]
pub struct RawBatch {
    buf: Vec<u8>,
    entries: Vec<Entry>,
    /// Header name and value ranges of every record, in order.
    headers: Vec<(Span, Option<Span>)>,
    /// The source's assignment these records were read under (see
    /// [`Committer::assignment`]); 0 for a source that never loses its streams.
    pub assignment: u64,
}

#[derive(Debug)]
struct Entry {
    key: Option<(usize, usize)>,
    value: Option<(usize, usize)>,
    headers: (usize, usize),
    position: Position,
}

impl RawBatch {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.entries.clear();
        self.headers.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    fn store(&mut self, bytes: Option<&[u8]>) -> Option<(usize, usize)> {
        bytes.map(|b| {
            let start = self.buf.len();
            self.buf.extend_from_slice(b);
            (start, self.buf.len())
        })
    }

    pub fn push(&mut self, key: Option<&[u8]>, value: Option<&[u8]>, position: Position) {
        self.push_with_headers(key, value, &[], position);
    }

    pub fn push_with_headers(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
        position: Position,
    ) {
        let key = self.store(key);
        let value = self.store(value);
        let first = self.headers.len();
        for (name, value) in headers {
            let name = self.store(Some(name.as_bytes())).expect("stored");
            let value = self.store(*value);
            self.headers.push((name, value));
        }
        self.entries.push(Entry {
            key,
            value,
            headers: (first, self.headers.len()),
            position,
        });
    }

    /// Every record with its position.
    pub fn iter(&self) -> impl Iterator<Item = (RawRecord<'_>, &Position)> {
        self.entries.iter().map(|e| {
            let slice = |r: Option<(usize, usize)>| r.map(|(a, b)| &self.buf[a..b]);
            (
                RawRecord {
                    key: slice(e.key),
                    value: slice(e.value),
                    headers: Headers {
                        buf: &self.buf,
                        items: &self.headers[e.headers.0..e.headers.1],
                    },
                },
                &e.position,
            )
        })
    }
}

/// How much one poll may return, and how long it may wait for the first record.
#[derive(Debug, Clone, Copy)]
pub struct PollLimits {
    pub max_records: usize,
    pub max_bytes: usize,
    pub max_wait: Duration,
}

impl PollLimits {
    /// Whether `batch` holds as much as one poll may return.
    pub fn filled(&self, batch: &RawBatch) -> bool {
        batch.len() >= self.max_records || batch.bytes() >= self.max_bytes
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollStatus {
    /// Records were added to the batch.
    Records,
    /// Nothing arrived within `max_wait`; the source may have more later.
    Idle,
    /// Nothing arrived, and the source is not ready to say it is idle (a consumer group is
    /// rebalancing, so this process owns no partitions yet).
    Waiting,
    /// Only records that carry a position and no change (heartbeats) were added: they are
    /// decoded and checkpointed, but the source counts as idle.
    Heartbeats,
    /// A finite source is exhausted.
    End,
}

pub trait Source: Send {
    /// Positions the source just after `checkpoint` (at the start for streams it lacks).
    fn seek(&mut self, checkpoint: &Checkpoint) -> Result<(), SourceError>;
    /// Appends up to the limits to `batch`.
    fn poll(
        &mut self,
        batch: &mut RawBatch,
        limits: &PollLimits,
    ) -> Result<PollStatus, SourceError>;
    /// A short description for logs (never secrets).
    fn describe(&self) -> String;
    /// Whether [`keep_alive`](Self::keep_alive) does anything: only then does the fetcher
    /// wake while it waits to hand records over.
    fn keeps_alive(&self) -> bool {
        false
    }
    /// Called about every 100 ms while the pipeline cannot take more records (the sink is
    /// slow or stalled), so a source can keep its connection alive without reading.
    fn keep_alive(&mut self) {}
    /// Tells the source what the sink has durably applied (Kafka commits the offsets to the
    /// consumer group). `None` for sources that keep no position of their own.
    fn committer(&self) -> Option<Box<dyn Committer>> {
        None
    }
    /// The tables of a source that hands over native events
    /// ([`crate::decode::native`]) rather than Debezium documents.
    fn native_tables(&self) -> Option<Arc<crate::decode::native::NativeTables>> {
        None
    }
    /// Gives the source a reader of the positions the sink has stored, so a stream it is
    /// handed while running (a partition a consumer group assigns) starts where the
    /// target is, not where this process last was.
    fn read_stored_positions_with(&mut self, reader: crate::sink::StoredPositions) {
        let _ = reader;
    }
}

/// Receives the positions the sink has durably applied; called from the applier thread.
pub trait Committer: Send {
    fn commit(&self, checkpoint: &Checkpoint);
    /// Like `commit`, waiting for it to complete (when the pipeline stops).
    fn commit_sync(&self, checkpoint: &Checkpoint) {
        self.commit(checkpoint);
    }
    /// The source's current assignment: it counts the times the source lost its streams
    /// (a consumer group revoked its partitions). A batch read under an earlier one is
    /// abandoned, not applied: the streams restart at the sink's stored position.
    fn assignment(&self) -> u64 {
        0
    }
}

/// Builds the pipeline's source.
pub fn build(
    pipeline: &LoadedPipeline,
    metrics: Arc<Metrics>,
) -> Result<Box<dyn Source>, SourceError> {
    match &pipeline.config.source {
        SourceConfig::File(config) => Ok(Box::new(file::FileSource::open(pipeline, config)?)),
        SourceConfig::Kafka(config) => Ok(Box::new(kafka::KafkaSource::open(
            pipeline, config, metrics,
        )?)),
        SourceConfig::PostgresCdc(config) => Ok(Box::new(postgres_cdc::PostgresCdcSource::open(
            pipeline, config, metrics,
        )?)),
    }
}
