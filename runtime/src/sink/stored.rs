//! The checkpoint a sink stored with its data, read from outside the pipeline and without
//! writing anything: how far a running pipeline has applied its source. `weir reconcile`
//! waits on it. The sink's own `committed` is not used for this: opening a sink prepares
//! its tables, which must not race the running pipeline.

use postgres::error::SqlState;
use rusqlite::{Connection, OpenFlags};

use super::{SinkConfig, SinkError, lanes};
use crate::config::LoadedPipeline;
use crate::position::Checkpoint;

/// The stored checkpoint: `None` when this kind of sink stores none in its target (Kafka,
/// Parquet, JSON lines); an empty checkpoint when it stores one but has applied nothing
/// yet.
pub fn stored_checkpoint(pipeline: &LoadedPipeline) -> Option<Result<Checkpoint, SinkError>> {
    let name = &pipeline.config.name;
    match &pipeline.config.sink {
        SinkConfig::Sqlite(config) => Some(sqlite(&pipeline.resolve(&config.path), name)),
        SinkConfig::Postgres(config) => {
            let lanes = pipeline.config.conflict.as_ref().map_or(1, |c| c.lanes());
            let names: Vec<String> = match lanes {
                1 => vec![name.clone()],
                n => (0..n).map(|lane| lanes::lane_name(name, lane, n)).collect(),
            };
            Some(postgres(config.url.expose(), &names))
        }
        SinkConfig::Parquet(_) | SinkConfig::Jsonl(_) | SinkConfig::Kafka(_) => None,
    }
}

fn sqlite(path: &std::path::Path, pipeline: &str) -> Result<Checkpoint, SinkError> {
    let error = |e: String| SinkError::new(format!("sqlite sink {}", path.display()), e);
    if !path.exists() {
        return Ok(Checkpoint::default());
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| error(e.to_string()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| error(e.to_string()))?;
    match super::sqlite::stored_checkpoint(&conn, pipeline) {
        Ok(checkpoint) => Ok(checkpoint),
        // The pipeline has not prepared the database yet.
        Err(e) if e.to_string().contains("no such table") => Ok(Checkpoint::default()),
        Err(e) => Err(error(e.to_string())),
    }
}

/// With lanes, each lane stores its own checkpoint: a stream is applied up to the lowest
/// of them, and only if every lane has it.
fn postgres(url: &str, names: &[String]) -> Result<Checkpoint, SinkError> {
    let error =
        |e: &postgres::Error| SinkError::new("postgres sink", super::postgres::describe_error(e));
    let mut client = crate::postgres_client::connect(url).map_err(|e| error(&e))?;
    let rows = match client.query(
        "SELECT stream, min(next), min(line) FROM weir.checkpoints
         WHERE pipeline = ANY($1) AND next >= 0
         GROUP BY stream HAVING count(*) = $2",
        &[&names, &(names.len() as i64)],
    ) {
        Ok(rows) => rows,
        // The pipeline has not prepared the database yet.
        Err(e)
            if e.code() == Some(&SqlState::UNDEFINED_TABLE)
                || e.code() == Some(&SqlState::INVALID_SCHEMA_NAME) =>
        {
            return Ok(Checkpoint::default());
        }
        Err(e) => return Err(error(&e)),
    };
    Ok(super::postgres::checkpoint_of(&rows))
}
