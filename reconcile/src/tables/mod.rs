//! The snapshots `weir reconcile` compares, registered as DataFusion tables. Adding a kind
//! of snapshot is one module here plus one arm in [`register`].

mod debezium;
mod parquet;
pub mod postgres;
mod sqlite;

pub use postgres::qualified as postgres_table;

use datafusion::prelude::SessionContext;
use weir_runtime::config::LoadedPipeline;
use weir_runtime::config::reconcile::SnapshotConfig;

use crate::ReconcileError;

/// Rows per Arrow batch when a snapshot is read row by row (SQLite, PostgreSQL).
pub(crate) const BATCH_ROWS: usize = 64 * 1024;

/// Registers `snapshot` as table `name` (`source` or `target`); returns a description
/// of it for the report (never a secret). Called outside the async runtime: the
/// PostgreSQL client blocks on a runtime of its own.
pub fn register(
    runtime: &tokio::runtime::Runtime,
    ctx: &SessionContext,
    name: &str,
    snapshot: &SnapshotConfig,
    pipeline: &LoadedPipeline,
) -> Result<String, ReconcileError> {
    match snapshot {
        SnapshotConfig::Parquet(config) => {
            runtime.block_on(parquet::register(ctx, name, config, pipeline))
        }
        SnapshotConfig::Sqlite(config) => sqlite::register(ctx, name, config, pipeline),
        SnapshotConfig::Postgres(config) => postgres::register(ctx, name, config),
        SnapshotConfig::Debezium(config) => debezium::register(ctx, name, config, pipeline),
    }
}
