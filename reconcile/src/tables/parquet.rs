//! Parquet snapshots: one file or a directory of `.parquet` files, read by DataFusion
//! itself (projection and predicates pushed into the scan), each file checked first
//! ([`super::parquet_check`]): a snapshot is a file from outside weir.

use std::path::{Path, PathBuf};

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
    for file in parquet_files(&path)
        .map_err(|e| ReconcileError::new(format!("{name}: cannot list {description}: {e}")))?
    {
        super::parquet_check::check_file(&file).map_err(|e| {
            ReconcileError::new(format!(
                "{name}: {} is not a Parquet file weir reads: {e}",
                file.display()
            ))
        })?;
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

/// The files DataFusion reads for `path`: the file itself, or a directory's `.parquet`
/// files (its default extension), in every subdirectory.
fn parquet_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(parquet_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "parquet") {
            files.push(path);
        }
    }
    Ok(files)
}
