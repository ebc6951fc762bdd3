//! Debezium change-log snapshots: change events from a file, or from a Kafka topic up to
//! the end it has when the read starts, decoded with the pipeline's `table` settings (the
//! same decoder `weir run` uses), optionally run through the pipeline's transforms, and
//! folded to its final state by key — the last change of each
//! key wins, a delete removes the key, a truncate empties the table, an update that moves
//! its key leaves the old key. The result is the table the log describes, which a target
//! fed from the same log must hold.
//!
//! Records that cannot be decoded, and rows a transform refuses, are skipped and counted
//! (`weir run` sends the same ones to its dead-letter output); a type change weir cannot
//! follow is an error.

use std::borrow::Cow;
use std::collections::BTreeMap;
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
use weir_runtime::kafka::offsets::Offsets;
use weir_runtime::plugin::chain::{RejectRow, TransformChain};
use weir_runtime::position::{Checkpoint, Position};
use weir_runtime::sink::compact::key_columns;
use weir_runtime::source::SourceConfig;

use crate::ReconcileError;

/// What the log held besides its final rows.
#[derive(Debug, Default, Clone, Copy)]
struct LogStats {
    changes: u64,
    undecodable: u64,
    other_tables: u64,
    refused: u64,
}

/// Counts the rows the transforms refuse.
pub(crate) struct Refused(pub(crate) u64);

impl<E> RejectRow<E> for Refused {
    fn reject(&mut self, _: &ChangeBatch, _: usize, _: &str) -> Result<(), E> {
        self.0 += 1;
        Ok(())
    }
}

pub fn register(
    ctx: &SessionContext,
    name: &str,
    config: &DebeziumSnapshot,
    pipeline: &LoadedPipeline,
    log_end: Option<&BTreeMap<String, i64>>,
) -> Result<String, ReconcileError> {
    let (what, read) = match (&config.path, &config.topic) {
        (Some(path), _) => {
            let path = pipeline.resolve(path);
            (
                format!("change log {}", path.display()),
                read_file(pipeline, config, &path),
            )
        }
        (None, Some(topic)) => (
            format!("change log topic {topic}"),
            read_topic(pipeline, config, topic, log_end),
        ),
        (None, None) => {
            return Err(ReconcileError::new(format!(
                "{name}: a debezium snapshot needs `path` or `topic`"
            )));
        }
    };
    let fail = |e: String| ReconcileError::new(format!("{name}: {what}: {e}"));
    let (batches, stats) = read.map_err(fail)?;
    let (schema, rows) = final_rows(&batches).map_err(fail)?;
    let table = MemTable::try_new(schema, vec![rows]).map_err(|e| fail(e.to_string()))?;
    ctx.register_table(name, Arc::new(table))
        .map_err(|e| fail(e.to_string()))?;
    let mut description = format!("{what} ({} changes", stats.changes);
    if stats.undecodable > 0 {
        description.push_str(&format!(
            "; {} records could not be decoded and were skipped",
            stats.undecodable
        ));
    }
    if stats.other_tables > 0 {
        description.push_str(&format!(
            "; {} changes of other tables were left out",
            stats.other_tables
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

/// Decodes change events into batches of the pipeline's `batch.max_events`, run through
/// the pipeline's transforms when the snapshot asks for it.
struct LogReader {
    decoder: Decoder,
    chain: Option<TransformChain>,
    refused: Refused,
    stats: LogStats,
    batches: Vec<ChangeBatch>,
    max_events: usize,
}

impl LogReader {
    fn new(pipeline: &LoadedPipeline, config: &DebeziumSnapshot) -> Result<Self, String> {
        Ok(LogReader {
            decoder: Decoder::new(pipeline.table_spec(), config.format),
            chain: match config.transforms {
                true => TransformChain::load(pipeline)?,
                false => None,
            },
            refused: Refused(0),
            stats: LogStats::default(),
            batches: Vec::new(),
            max_events: pipeline.config.batch.max_events.max(1),
        })
    }

    fn push(&mut self, record: RawRecord<'_>, position: &Position) -> Result<(), String> {
        match self.decoder.decode(record, position) {
            Ok(_) => {}
            Err(DecodeError::Record(e)) => {
                self.stats.undecodable += 1;
                tracing::debug!(%position, error = %e.message, "skipped a record");
            }
            Err(DecodeError::OtherTable(reason)) => {
                self.stats.other_tables += 1;
                tracing::debug!(%position, %reason, "left out another table's change");
            }
            Err(DecodeError::Fatal(change)) => {
                return Err(format!(
                    "at {position}: column `{}` changes type from {} to {}, which weir cannot \
                     follow without losing data",
                    change.column, change.from, change.to
                ));
            }
        }
        if self.decoder.rows() >= self.max_events {
            self.close_batch()?;
        }
        Ok(())
    }

    fn close_batch(&mut self) -> Result<(), String> {
        self.stats.changes += self.decoder.rows() as u64;
        let batch = self.decoder.finish(Checkpoint::default());
        let batch = match self.chain.as_mut() {
            Some(chain) => chain
                .run::<ReconcileError>(batch, &mut self.refused)
                .map_err(|e| e.to_string())?,
            None => batch,
        };
        self.batches.push(batch);
        Ok(())
    }

    fn finish(mut self) -> Result<(Vec<ChangeBatch>, LogStats), String> {
        self.close_batch()?;
        self.stats.refused = self.refused.0;
        Ok((self.batches, self.stats))
    }
}

/// The changes of a file, one event per line.
fn read_file(
    pipeline: &LoadedPipeline,
    config: &DebeziumSnapshot,
    path: &std::path::Path,
) -> Result<(Vec<ChangeBatch>, LogStats), String> {
    let mut log = LogReader::new(pipeline, config)?;
    each_line(pipeline, path, |record, position| match record {
        Some(record) => log.push(record, position),
        None => {
            log.stats.undecodable += 1;
            Ok(())
        }
    })?;
    log.finish()
}

/// Passes each event of a change-log file to `each`, with its position; `None` for a
/// line longer than the pipeline's `batch.max_record_bytes`, which is read past without
/// being held (the file comes from outside weir). Blank lines are skipped.
pub(crate) fn each_line(
    pipeline: &LoadedPipeline,
    path: &std::path::Path,
    mut each: impl FnMut(Option<RawRecord<'_>>, &Position) -> Result<(), String>,
) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| {
        format!(
            "cannot open it ({e}); check the path (relative paths are taken from the \
             pipeline file's directory)"
        )
    })?;
    let stream: Arc<str> = format!("file:{}", path.display()).into();
    let limit = pipeline.config.batch.max_record_bytes;
    let mut reader = std::io::BufReader::new(file);
    let mut line = Vec::new();
    let mut offset = 0u64;
    for index in 0u64.. {
        let read = read_line(&mut reader, &mut line, limit)
            .map_err(|e| format!("read failed at line {}: {e}", index + 1))?;
        let Some(length) = read else { break };
        let next = offset + length;
        let position = Position::File {
            stream: stream.clone(),
            line: index + 1,
            offset,
            next,
        };
        offset = next;
        if !line.ends_with(b"\n") && line.len() > limit {
            tracing::debug!(%position, "skipped a record longer than batch.max_record_bytes");
            each(None, &position)?;
            continue;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if text.trim_ascii().is_empty() {
            continue;
        }
        let record = RawRecord {
            value: Some(text),
            ..RawRecord::default()
        };
        each(Some(record), &position)?;
    }
    Ok(())
}

/// Reads one line into `line` (with its newline), keeping at most `limit + 1` bytes of
/// it: a longer line is read past, not held. Returns the line's full length in the file,
/// or `None` at the end.
fn read_line(
    reader: &mut impl BufRead,
    line: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<Option<u64>> {
    line.clear();
    let kept = std::io::Read::take(&mut *reader, limit as u64 + 1).read_until(b'\n', line)?;
    if kept == 0 {
        return Ok(None);
    }
    let mut length = kept as u64;
    if !line.ends_with(b"\n") && line.len() > limit {
        // Too long: consume the rest of the line without keeping it.
        loop {
            let buffer = reader.fill_buf()?;
            if buffer.is_empty() {
                break;
            }
            let (used, done) = match memchr::memchr(b'\n', buffer) {
                Some(i) => (i + 1, true),
                None => (buffer.len(), false),
            };
            reader.consume(used);
            length += used as u64;
            if done {
                break;
            }
        }
    }
    Ok(Some(length))
}

/// The changes of a Kafka topic, from its start up to the end it has now (or `log_end`).
fn read_topic(
    pipeline: &LoadedPipeline,
    config: &DebeziumSnapshot,
    topic: &str,
    log_end: Option<&BTreeMap<String, i64>>,
) -> Result<(Vec<ChangeBatch>, LogStats), String> {
    let kafka = connect(pipeline, config)?;
    let mut log = LogReader::new(pipeline, config)?;
    kafka.read_to_end(topic, log_end, |record, position| {
        log.push(record, position)
    })?;
    log.finish()
}

/// A client for the snapshot's topics. Brokers and settings default to the pipeline's
/// Kafka source's.
pub(crate) fn connect(
    pipeline: &LoadedPipeline,
    config: &DebeziumSnapshot,
) -> Result<Offsets, String> {
    let pipeline_source = match &pipeline.config.source {
        SourceConfig::Kafka(source) => Some(source),
        _ => None,
    };
    let brokers = config
        .brokers
        .as_deref()
        .or(pipeline_source.map(|s| s.brokers.as_str()))
        .ok_or("no `brokers` to read the topic from (the pipeline's source is not Kafka)")?;
    let options = match (&config.options, &config.brokers, pipeline_source) {
        (Some(options), _, _) => options.clone(),
        (None, None, Some(source)) => source.options.clone(),
        _ => Default::default(),
    };
    let group = format!("weir-reconcile-{}", pipeline.config.name);
    Offsets::connect(brokers, &options, &group)
}

/// The rows the log leaves: the `after` image of each key's last change, with the
/// columns of the last batch (earlier batches may lack columns added later, or hold
/// them in a narrower type).
pub(crate) fn final_rows(
    batches: &[ChangeBatch],
) -> Result<(Arc<Schema>, Vec<RecordBatch>), String> {
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

#[cfg(test)]
mod tests {
    use super::read_line;

    #[test]
    fn a_line_past_the_limit_is_read_past_not_held() {
        let text = format!("short\n{}\nlast", "x".repeat(100_000));
        let mut reader = std::io::BufReader::with_capacity(64, text.as_bytes());
        let mut line = Vec::new();
        assert_eq!(read_line(&mut reader, &mut line, 10).unwrap(), Some(6));
        assert_eq!(line, b"short\n");
        assert_eq!(
            read_line(&mut reader, &mut line, 10).unwrap(),
            Some(100_001)
        );
        assert_eq!(line.len(), 11, "only the limit and a byte are kept");
        assert_eq!(read_line(&mut reader, &mut line, 10).unwrap(), Some(4));
        assert_eq!(line, b"last");
        assert_eq!(read_line(&mut reader, &mut line, 10).unwrap(), None);
    }
}
