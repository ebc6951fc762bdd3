//! Sinks apply change batches.
//!
//! Adding a sink today takes a module (or folder) here, whose config type declares its
//! [`Capabilities`], plus five match arms in this file: a variant of [`SinkConfig`], and
//! its arm in [`build`], [`SinkConfig::capabilities`], [`SinkConfig::kind`] and
//! [`SinkConfig::configured_table`]. The configuration checks and the pipeline ask the
//! capabilities, never which sink it is.
//!
//! The contract: `apply` makes a batch durable or buffers it, and reports which checkpoint
//! is durable now. A sink that can (SQLite, PostgreSQL) stores the checkpoint in the same
//! transaction as the data, so `committed` after a crash says exactly where the data
//! stops. The pipeline never moves a checkpoint past data the sink has not made durable.
//! A sink that takes many tables (`tables:`) applies every table of a step, and the
//! checkpoint, at once ([`Sink::apply_tables`]).

pub mod applied;
pub mod compact;
pub mod jsonl;
pub mod kafka;
pub mod lanes;
pub mod parquet;
pub mod postgres;
pub mod resolve;
pub mod sqlite;
pub mod stored;
pub mod versioned;

use schemars::JsonSchema;
use serde::Deserialize;

use std::sync::Arc;

use crate::config::LoadedPipeline;
use crate::decode::types::ColumnType;
use crate::envelope::ChangeBatch;
use crate::metrics::Metrics;
use crate::position::Checkpoint;

/// Where changes are applied.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SinkConfig {
    /// A SQLite database: rows are upserted by primary key and deleted, with the source
    /// position stored in the same transaction.
    Sqlite(sqlite::SqliteSinkConfig),
    /// Parquet files holding the change log (every change, with its envelope).
    Parquet(parquet::ParquetSinkConfig),
    /// A JSON Lines file with the change log, or the final rows.
    Jsonl(jsonl::JsonlSinkConfig),
    /// A PostgreSQL table: upserts by primary key through COPY and a staging table, or
    /// an append-only change log, with the source position in the same transaction.
    Postgres(postgres::PostgresSinkConfig),
    /// A Kafka topic: every change as a record keyed by primary key (Debezium JSON with
    /// or without its schema, or flattened rows), through the idempotent producer.
    Kafka(kafka::KafkaSinkConfig),
}

/// What a sink can do, declared by the sink itself: the configuration checks and the
/// pipeline ask this, never which sink it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// It reads the target's current rows, so conflict strategies and resolvers work.
    pub reads_target_rows: bool,
    /// It can apply in several lanes (`conflict.lanes`).
    pub lanes: bool,
    /// It stores the checkpoint with the data, in one transaction.
    pub stores_checkpoint: bool,
    /// It applies many tables in one transaction (`tables:` pipelines).
    pub many_tables: bool,
    /// It applies changes by primary key, so every table needs one.
    pub applies_by_key: bool,
}

impl SinkConfig {
    /// What this sink can do with this configuration.
    pub fn capabilities(&self) -> Capabilities {
        match self {
            SinkConfig::Sqlite(config) => config.capabilities(),
            SinkConfig::Parquet(config) => config.capabilities(),
            SinkConfig::Jsonl(config) => config.capabilities(),
            SinkConfig::Postgres(config) => config.capabilities(),
            SinkConfig::Kafka(config) => config.capabilities(),
        }
    }

    /// The sink's type, as the pipeline file spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Sqlite(_) => "sqlite",
            SinkConfig::Parquet(_) => "parquet",
            SinkConfig::Jsonl(_) => "jsonl",
            SinkConfig::Postgres(_) => "postgres",
            SinkConfig::Kafka(_) => "kafka",
        }
    }

    /// The one target table the configuration names, if it does.
    pub fn configured_table(&self) -> Option<&str> {
        match self {
            SinkConfig::Sqlite(config) => config.table.as_deref(),
            SinkConfig::Postgres(config) => config.table.as_deref(),
            SinkConfig::Parquet(_) | SinkConfig::Jsonl(_) | SinkConfig::Kafka(_) => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{sink}: {message}")]
pub struct SinkError {
    pub sink: String,
    pub message: String,
    /// A later attempt may succeed (a lost connection), as opposed to a setup error.
    pub retryable: bool,
}

impl SinkError {
    pub fn new(sink: impl Into<String>, message: impl Into<String>) -> Self {
        SinkError {
            sink: sink.into(),
            message: crate::redact::redact(&message.into()).into_owned(),
            retryable: false,
        }
    }
}

/// What one `apply` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The checkpoint that is durable now (this batch's, or an earlier one's).
    pub durable: Option<Checkpoint>,
    /// Keys upserted, deleted, and truncates done (sinks that apply by key).
    pub upserts: u64,
    pub deletes: u64,
    pub truncates: u64,
    /// Changes appended to a change log (Parquet, JSONL changelog).
    pub appended: u64,
    /// Changes a conflict resolver skipped (the target row stands).
    pub skipped: u64,
    /// Changes a conflict resolver replaced by a merged row.
    pub merged: u64,
    /// Changes dropped because they came from the target's own site (`conflict.site`).
    pub echoes: u64,
    /// Changes recognised as already applied by their identity (source, table, key and
    /// position), under a resolver plugin (docs/sync.md, "Once-only apply").
    pub duplicates: u64,
    /// Rows the target already held by their position (at or before its stored
    /// checkpoint): a batch delivered again after a crash, or applied first by the
    /// process that owns the partition now.
    pub already_applied: u64,
}

/// Where a sink sends rows it cannot apply (a value the target refuses). The pipeline
/// writes each to the dead-letter output, durably, before the sink commits past it.
pub trait Rejects {
    fn reject(&mut self, batch: &ChangeBatch, row: usize, error: &str) -> Result<(), SinkError>;
}

/// Rows of `batch` that the target has not applied yet: those at or after the checkpoint
/// it already stores for their stream. `None` when every row is new. A transactional sink
/// reads its checkpoint inside the transaction and skips the rest, so a batch delivered
/// twice (a crash between the sink's and the broker's commit, a rebalance) is applied once.
pub fn unapplied(batch: &ChangeBatch, stored: &Checkpoint) -> Option<Vec<bool>> {
    if stored.is_empty() || !batch.positions.iter().any(|p| stored.covers(p)) {
        return None;
    }
    Some(batch.positions.iter().map(|p| !stored.covers(p)).collect())
}

/// Work a sink did on a batch ahead of its turn (compaction, encoding), opaque to the
/// pipeline and handed back to the same sink.
pub type Prepared = Box<dyn std::any::Any + Send>;

/// What the preparer made of each table's batch of a many-table step, in order (handed to
/// [`Sink::apply_tables`] as one [`Prepared`]).
pub type PreparedTables = Vec<Option<Prepared>>;

/// The part of a sink's work that depends on the batch alone. The pipeline runs it on
/// its own thread, so it overlaps the sink applying the previous batch (a database busy
/// merging, say). `None` when there is nothing to prepare.
pub type Preparer = Arc<dyn Fn(&ChangeBatch) -> Option<Prepared> + Send + Sync>;

/// Reads the positions a sink has stored for some streams, on a connection of its own
/// (it is called from the source's thread, while the sink applies).
pub type StoredPositions = Box<dyn FnMut(&[String]) -> Result<Checkpoint, SinkError> + Send>;

pub trait Sink: Send {
    /// The checkpoint stored with the data, if this sink keeps one.
    fn committed(&mut self) -> Result<Option<Checkpoint>, SinkError>;
    /// A reader of the stored positions of given streams, for sinks that several
    /// processes can share (see [`StoredPositions`]).
    fn stored_positions(&self) -> Option<StoredPositions> {
        None
    }
    fn apply(
        &mut self,
        batch: &ChangeBatch,
        rejects: &mut dyn Rejects,
    ) -> Result<Applied, SinkError>;
    /// A function preparing batches ahead (see [`Preparer`]), if this sink has one.
    fn preparer(&self) -> Option<Preparer> {
        None
    }
    /// [`apply`](Self::apply) with what the preparer made of this batch, if anything.
    fn apply_prepared(
        &mut self,
        batch: &ChangeBatch,
        prepared: Option<&Prepared>,
        rejects: &mut dyn Rejects,
    ) -> Result<Applied, SinkError> {
        let _ = prepared;
        self.apply(batch, rejects)
    }
    /// Makes everything applied so far durable and returns its checkpoint.
    fn flush(&mut self) -> Result<Option<Checkpoint>, SinkError>;
    /// The column types the target already holds, so a restarted pipeline still notices an
    /// incompatible change (empty when the sink cannot tell).
    fn target_types(&mut self) -> Result<Vec<(String, ColumnType)>, SinkError> {
        Ok(Vec::new())
    }
    /// Applies the batches of several tables (each naming its target in
    /// `table.target`) and stores `checkpoint`, all in one transaction. `prepared` is a
    /// [`PreparedTables`] when the sink has a preparer. Only sinks whose
    /// [`Capabilities::many_tables`] is set are asked.
    fn apply_tables(
        &mut self,
        batches: &[ChangeBatch],
        prepared: Option<&Prepared>,
        checkpoint: &Checkpoint,
        rejects: &mut dyn Rejects,
    ) -> Result<Applied, SinkError> {
        let _ = (batches, prepared, checkpoint, rejects);
        Err(SinkError::new(self.describe(), "this sink takes one table"))
    }
    /// The target's existing tables, with their keys and column types, for many-table
    /// pipelines (empty when the sink cannot tell).
    fn target_tables(
        &mut self,
    ) -> Result<std::collections::HashMap<String, crate::tables::TargetTable>, SinkError> {
        Ok(Default::default())
    }
    /// The calls of the conflict resolver plugins it runs, by outcome, with their time.
    fn plugin_stats(&self) -> Vec<Arc<crate::plugin::stats::PluginStats>> {
        Vec::new()
    }
    /// A short description for logs (never secrets).
    fn describe(&self) -> String;
}

/// Builds the pipeline's sink.
pub fn build(pipeline: &LoadedPipeline, metrics: Arc<Metrics>) -> Result<Box<dyn Sink>, SinkError> {
    match &pipeline.config.sink {
        SinkConfig::Sqlite(config) => Ok(Box::new(sqlite::SqliteSink::open(pipeline, config)?)),
        SinkConfig::Parquet(config) if pipeline.config.tables.is_some() => {
            Ok(Box::new(parquet::ParquetTables::open(pipeline, config)?))
        }
        SinkConfig::Parquet(config) => Ok(Box::new(parquet::ParquetSink::open(pipeline, config)?)),
        SinkConfig::Jsonl(config) if pipeline.config.tables.is_some() => Ok(Box::new(
            jsonl::tables::JsonlTables::open(pipeline, config)?,
        )),
        SinkConfig::Jsonl(config) => Ok(Box::new(jsonl::JsonlSink::open(pipeline, config)?)),
        SinkConfig::Postgres(config) => {
            let lanes = pipeline.config.conflict.as_ref().map_or(1, |c| c.lanes());
            if lanes == 1 {
                return Ok(Box::new(postgres::PostgresSink::open(pipeline, config)?));
            }
            let name = &pipeline.config.name;
            let sinks = (0..lanes)
                .map(|lane| {
                    let checkpoint = lanes::lane_name(name, lane, lanes);
                    postgres::PostgresSink::open_as(pipeline, config, &checkpoint)
                        .map(|sink| Box::new(sink) as Box<dyn Sink>)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Box::new(lanes::Lanes::new(sinks)))
        }
        SinkConfig::Kafka(config) => {
            Ok(Box::new(kafka::KafkaSink::open(pipeline, config, metrics)?))
        }
    }
}

/// Writes `bytes` to `path` atomically: a temporary file, fsync, rename, fsync of the
/// directory. Readers see the old or the new content, never a mix.
pub(crate) fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(path)
}

pub(crate) fn sync_dir(path: &std::path::Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
