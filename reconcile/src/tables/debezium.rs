//! Debezium change-log snapshots: a file of change events decoded with the pipeline's
//! `table` settings (the same decoder `weir run` uses), optionally run through the
//! pipeline's transforms, and folded to its final state by key — the last change of each
//! key wins, a delete removes the key, a truncate empties the table, an update that moves
//! its key leaves the old key. The result is the table the log describes, which a target
//! fed from the same log must hold.
//!
//! Records that cannot be decoded, and rows a transform refuses, are skipped and counted
//! (`weir run` sends the same ones to its dead-letter output); a type change weir cannot
//! follow is an error.

use std::borrow::Cow;
use std::io::BufRead;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StructArray, UInt32Array, new_null_array};
use arrow::compute::{cast, take};
use arrow::datatypes::{Fields, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use indexmap::IndexMap;
use weir_runtime::config::LoadedPipeline;
use weir_runtime::config::reconcile::DebeziumSnapshot;
use weir_runtime::decode::{DecodeError, Decoder, RawRecord};
use weir_runtime::encode;
use weir_runtime::envelope::{ChangeBatch, Op};
use weir_runtime::plugin::chain::{RejectRow, TransformChain};
use weir_runtime::position::{Checkpoint, Position};
use weir_runtime::sink::compact::key_columns;

use crate::ReconcileError;

/// What the log held besides its final rows.
#[derive(Debug, Default, Clone, Copy)]
struct LogStats {
    changes: u64,
    undecodable: u64,
    refused: u64,
}

/// Counts the rows the transforms refuse.
struct Refused(u64);

impl RejectRow<ReconcileError> for Refused {
    fn reject(&mut self, _: &ChangeBatch, _: usize, _: &str) -> Result<(), ReconcileError> {
        self.0 += 1;
        Ok(())
    }
}

pub fn register(
    ctx: &SessionContext,
    name: &str,
    config: &DebeziumSnapshot,
    pipeline: &LoadedPipeline,
) -> Result<String, ReconcileError> {
    let path = pipeline.resolve(&config.path);
    let fail =
        |e: String| ReconcileError::new(format!("{name}: change log {}: {e}", path.display()));
    let (batches, stats) = read(pipeline, config, &path).map_err(fail)?;
    let (schema, rows) = final_rows(&batches).map_err(fail)?;
    let table = MemTable::try_new(schema, vec![rows]).map_err(|e| fail(e.to_string()))?;
    ctx.register_table(name, Arc::new(table))
        .map_err(|e| fail(e.to_string()))?;
    let mut description = format!("change log {} ({} changes", path.display(), stats.changes);
    if stats.undecodable > 0 {
        description.push_str(&format!(
            "; {} records could not be decoded and were skipped",
            stats.undecodable
        ));
    }
    if config.transforms {
        description.push_str(&format!(
            "; through the pipeline's transforms, which refused {}",
            stats.refused
        ));
    }
    description.push(')');
    Ok(description)
}

/// The log's changes, in batches of the pipeline's `batch.max_events`, transformed when
/// the snapshot asks for it.
fn read(
    pipeline: &LoadedPipeline,
    config: &DebeziumSnapshot,
    path: &std::path::Path,
) -> Result<(Vec<ChangeBatch>, LogStats), String> {
    let file = std::fs::File::open(path).map_err(|e| {
        format!(
            "cannot open it ({e}); check the path (relative paths are taken from the \
             pipeline file's directory)"
        )
    })?;
    let mut chain = match config.transforms {
        true => TransformChain::load(pipeline)?,
        false => None,
    };
    let mut refused = Refused(0);
    let mut decoder = Decoder::new(pipeline.table_spec(), config.format);
    let stream: Arc<str> = format!("file:{}", path.display()).into();
    let mut stats = LogStats::default();
    let mut batches = Vec::new();
    let max_events = pipeline.config.batch.max_events.max(1);
    let mut finish = |decoder: &mut Decoder, batches: &mut Vec<ChangeBatch>| {
        let batch = decoder.finish(Checkpoint::default());
        let batch = match chain.as_mut() {
            Some(chain) => chain.run(batch, &mut refused).map_err(|e| e.to_string())?,
            None => batch,
        };
        batches.push(batch);
        Ok::<_, String>(())
    };
    let mut offset = 0u64;
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("read failed at line {}: {e}", index + 1))?;
        let next = offset + line.len() as u64 + 1;
        let position = Position::File {
            stream: stream.clone(),
            line: index as u64 + 1,
            offset,
            next,
        };
        offset = next;
        if line.trim().is_empty() {
            continue;
        }
        let record = RawRecord {
            value: Some(line.as_bytes()),
            ..RawRecord::default()
        };
        match decoder.decode(record, &position) {
            Ok(_) => {}
            Err(DecodeError::Record(e)) => {
                stats.undecodable += 1;
                tracing::debug!(line = index + 1, error = %e.message, "skipped a record");
            }
            Err(DecodeError::Fatal(change)) => {
                return Err(format!(
                    "line {}: column `{}` changes type from {} to {}, which weir cannot \
                     follow without losing data",
                    index + 1,
                    change.column,
                    change.from,
                    change.to
                ));
            }
        }
        if decoder.rows() >= max_events {
            stats.changes += decoder.rows() as u64;
            finish(&mut decoder, &mut batches)?;
        }
    }
    stats.changes += decoder.rows() as u64;
    finish(&mut decoder, &mut batches)?;
    stats.refused = refused.0;
    Ok((batches, stats))
}

/// The rows the log leaves: the `after` image of each key's last change, with the
/// columns of the last batch (earlier batches may lack columns added later, or hold
/// them in a narrower type).
fn final_rows(batches: &[ChangeBatch]) -> Result<(Arc<Schema>, Vec<RecordBatch>), String> {
    let text = |columns: &[ArrayRef], row: usize| -> Option<Vec<String>> {
        columns
            .iter()
            .map(|c| encode::text(c.as_ref(), row).map(Cow::into_owned))
            .collect()
    };
    // Key -> (batch, row) of its last change.
    let mut state: IndexMap<Vec<String>, (usize, u32)> = IndexMap::new();
    for (b, batch) in batches.iter().enumerate() {
        let keys_before = key_columns(batch, batch.before())?;
        let keys_after = key_columns(batch, batch.after())?;
        for (row, op) in batch.ops().enumerate() {
            match op {
                Op::Truncate => state.clear(),
                Op::Delete => {
                    if let Some(key) = text(&keys_before, row) {
                        state.shift_remove(&key);
                    }
                }
                _ => {
                    let key = text(&keys_after, row)
                        .ok_or_else(|| "a change has a null key".to_string())?;
                    if op == Op::Update
                        && let Some(old) = text(&keys_before, row)
                        && old != key
                    {
                        state.shift_remove(&old);
                    }
                    state.insert(key, (b, row as u32));
                }
            }
        }
    }
    let fields: Fields = batches
        .last()
        .map(|b| b.after().fields().clone())
        .unwrap_or_default();
    let schema = Arc::new(Schema::new(fields.clone()));
    let mut rows = Vec::new();
    for (b, batch) in batches.iter().enumerate() {
        let indices =
            UInt32Array::from_iter_values(state.values().filter(|(i, _)| *i == b).map(|(_, r)| *r));
        if indices.is_empty() {
            continue;
        }
        let after: &StructArray = batch.after();
        let columns = fields
            .iter()
            .map(|field| match after.column_by_name(field.name()) {
                Some(column) => {
                    let taken = take(column.as_ref(), &indices, None).map_err(|e| e.to_string())?;
                    match taken.data_type() == field.data_type() {
                        true => Ok(taken),
                        false => cast(&taken, field.data_type()).map_err(|e| e.to_string()),
                    }
                }
                None => Ok(new_null_array(field.data_type(), indices.len())),
            })
            .collect::<Result<Vec<_>, String>>()?;
        rows.push(RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())?);
    }
    Ok((schema, rows))
}
