//! Parquet snapshots: one file or a directory of `.parquet` files, read by DataFusion
//! itself (projection and predicates pushed into the scan).

use datafusion::prelude::{ParquetReadOptions, SessionContext};
use weir_runtime::config::LoadedPipeline;
use weir_runtime::config::reconcile::ParquetSnapshot;

use crate::ReconcileError;

pub async fn register(
    ctx: &SessionContext,
    name: &str,
    config: &ParquetSnapshot,
    pipeline: &LoadedPipeline,
) -> Result<String, ReconcileError> {
    let path = pipeline.resolve(&config.path);
    let description = format!("parquet {}", path.display());
    if !path.exists() {
        return Err(ReconcileError::new(format!(
            "{name}: {description} does not exist; check `reconcile.{name}.path` (relative \
             paths are taken from the pipeline file's directory)"
        )));
    }
    // A directory is a listing of its files; DataFusion tells one apart by the slash.
    let mut location = path.to_string_lossy().into_owned();
    if path.is_dir() && !location.ends_with('/') {
        location.push('/');
    }
    ctx.register_parquet(name, &location, ParquetReadOptions::default())
        .await
        .map_err(|e| ReconcileError::new(format!("{name}: cannot read {description}: {e}")))?;
    Ok(description)
}
