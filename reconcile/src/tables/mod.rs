//! The snapshots `weir reconcile` compares, registered as DataFusion tables. Adding a kind
//! of snapshot is one module here plus one arm in [`Reader::register`].

pub(crate) mod debezium;
mod parquet;
pub mod parquet_check;
pub mod postgres;
mod sqlite;

pub use postgres::qualified as postgres_table;

use std::collections::BTreeMap;

use datafusion::prelude::SessionContext;
use weir_runtime::config::LoadedPipeline;
use weir_runtime::config::reconcile::SnapshotConfig;

use crate::ReconcileError;

/// Rows per Arrow batch when a snapshot is read row by row (SQLite, PostgreSQL).
pub(crate) const BATCH_ROWS: usize = 64 * 1024;

/// What reading a snapshot needs besides its settings.
pub struct Reader<'a> {
    pub runtime: &'a tokio::runtime::Runtime,
    pub pipeline: &'a LoadedPipeline,
    /// Where a change log read from Kafka stops, by stream (`kafka:<topic>/<partition>`):
    /// the positions the comparison waited for the pipeline to apply, so that both sides
    /// end at the same changes. Other partitions are read to their current end.
    pub log_end: Option<&'a BTreeMap<String, i64>>,
    /// Change logs already read and split by table (a many-table comparison).
    pub logs: Logs<'a>,
}

/// The change-log tables a side reads instead of its snapshot settings.
#[derive(Clone, Copy, Default)]
pub struct Logs<'a> {
    pub source: Option<&'a crate::database::log::LogTable>,
    pub target: Option<&'a crate::database::log::LogTable>,
}

impl Reader<'_> {
    /// Registers `snapshot` as table `name` (`source` or `target`); returns a description
    /// of it for the report (never a secret). Called outside the async runtime: the
    /// PostgreSQL client blocks on a runtime of its own.
    pub fn register(
        &self,
        ctx: &SessionContext,
        name: &str,
        snapshot: &SnapshotConfig,
    ) -> Result<String, ReconcileError> {
        let pipeline = self.pipeline;
        let log = match name {
            "source" => self.logs.source,
            _ => self.logs.target,
        };
        if let Some(log) = log {
            log.register(ctx, name)?;
            return Ok(format!(
                "change log of {} ({} changes)",
                log.sources.iter().cloned().collect::<Vec<_>>().join(", "),
                log.changes
            ));
        }
        match snapshot {
            SnapshotConfig::Parquet(config) => self
                .runtime
                .block_on(parquet::register(ctx, name, config, pipeline)),
            SnapshotConfig::Sqlite(config) => sqlite::register(ctx, name, config, pipeline),
            SnapshotConfig::Postgres(config) => postgres::register(ctx, name, config),
            SnapshotConfig::Debezium(config) => {
                debezium::register(ctx, name, config, pipeline, self.log_end)
            }
        }
    }
}
