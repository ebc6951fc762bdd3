//! A many-table change log as a snapshot: every event read once (a file, or Kafka topics
//! up to the end they have when the read starts), decoded and routed with the pipeline's
//! `tables` rules by the same code `weir run` uses ([`ManyTables`]), then folded to each
//! target table's final state by key. Shards routed into one target fold together, in
//! the order they were read (per key, the order of its topic partition).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use weir_runtime::config::LoadedPipeline;
use weir_runtime::config::reconcile::DebeziumSnapshot;
use weir_runtime::config::tables::TablesConfig;
use weir_runtime::decode::{DecodeError, RawRecord};
use weir_runtime::envelope::ChangeBatch;
use weir_runtime::metrics::Metrics;
use weir_runtime::plugin::chain::TransformChain;
use weir_runtime::position::{Checkpoint, Position};
use weir_runtime::source::SourceConfig;
use weir_runtime::tables::{ManyTables, TargetTable};

use crate::ReconcileError;
use crate::tables::debezium::{Refused, connect, each_line, final_rows};

/// One target table's final state, as the log describes it.
pub struct LogTable {
    /// The source tables routed to it.
    pub sources: BTreeSet<String>,
    /// The key its changes were folded by.
    pub primary_key: Vec<String>,
    pub changes: u64,
    schema: SchemaRef,
    rows: Vec<RecordBatch>,
}

impl LogTable {
    /// Registers the table's final rows as `name`.
    pub fn register(&self, ctx: &SessionContext, name: &str) -> Result<(), ReconcileError> {
        let table = MemTable::try_new(self.schema.clone(), vec![self.rows.clone()])
            .map_err(|e| ReconcileError::new(format!("{name}: {e}")))?;
        ctx.register_table(name, Arc::new(table))
            .map_err(|e| ReconcileError::new(format!("{name}: {e}")))?;
        Ok(())
    }
}

/// The log, split by target table.
pub struct LogTables {
    pub description: String,
    pub tables: BTreeMap<String, LogTable>,
    /// Source tables the pipeline does not select, with their event counts.
    pub skipped: BTreeMap<String, u64>,
    /// Records that could not be decoded or placed (`weir run` dead-letters them).
    pub undecodable: u64,
    /// Rows the transforms refused.
    pub refused: u64,
}

/// Reads the change log `config` names, or without `path` and `topic_pattern` the
/// pipeline's own source. `targets` are the target side's tables (where a table's key
/// is found last, as in `weir run`).
pub fn read(
    pipeline: &LoadedPipeline,
    tables: &TablesConfig,
    config: &DebeziumSnapshot,
    targets: HashMap<String, TargetTable>,
    log_end: Option<&BTreeMap<String, i64>>,
) -> Result<LogTables, ReconcileError> {
    let (what, source) = where_from(pipeline, config)?;
    let fail = |e: String| ReconcileError::new(format!("{what}: {e}"));
    let mut split = Split {
        many: ManyTables::new(tables, config.format, targets, true, usize::MAX).map_err(fail)?,
        chain: match config.transforms {
            true => TransformChain::load(pipeline).map_err(fail)?,
            false => None,
        },
        refused: Refused(0),
        metrics: Metrics::default(),
        batches: HashMap::new(),
        undecodable: 0,
        max_events: pipeline.config.batch.max_events.max(1),
    };
    match source {
        From::File(path) => each_line(pipeline, &path, |record, position| match record {
            Some(record) => split.push(record, position),
            None => {
                split.undecodable += 1;
                Ok(())
            }
        })
        .map_err(fail)?,
        From::Topics(topics) => {
            let kafka = connect(pipeline, config).map_err(fail)?;
            let topics = match topics {
                Topics::Named(topics) => topics,
                Topics::Pattern(pattern) => {
                    crate::wait::matching(&pattern, &kafka).map_err(fail)?
                }
            };
            for topic in topics {
                kafka
                    .read_to_end(&topic, log_end, |record, position| {
                        split.push(record, position)
                    })
                    .map_err(fail)?;
            }
        }
    }
    split.close().map_err(fail)?;
    let mut skipped = BTreeMap::new();
    let mut sources: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (source, counts) in split.metrics.table_counts() {
        if counts.skipped > 0 {
            skipped.insert(source.clone(), counts.skipped);
        }
        if !counts.target.is_empty() {
            sources.entry(counts.target).or_default().insert(source);
        }
    }
    let mut out = BTreeMap::new();
    for (target, batches) in split.batches {
        let (schema, rows) = final_rows(&batches).map_err(|e| fail(format!("{target}: {e}")))?;
        out.insert(
            target.clone(),
            LogTable {
                sources: sources.remove(&target).unwrap_or_default(),
                primary_key: batches
                    .first()
                    .map(|b| b.table.primary_key.clone())
                    .unwrap_or_default(),
                changes: batches.iter().map(|b| b.num_rows() as u64).sum(),
                schema,
                rows,
            },
        );
    }
    Ok(LogTables {
        description: what,
        tables: out,
        skipped,
        undecodable: split.undecodable,
        refused: split.refused.0,
    })
}

enum From {
    File(std::path::PathBuf),
    Topics(Topics),
}

enum Topics {
    Named(Vec<String>),
    Pattern(String),
}

/// Where the log is read from, and its description.
fn where_from(
    pipeline: &LoadedPipeline,
    config: &DebeziumSnapshot,
) -> Result<(String, From), ReconcileError> {
    if let Some(path) = &config.path {
        let path = pipeline.resolve(path);
        return Ok((format!("change log {}", path.display()), From::File(path)));
    }
    if let Some(pattern) = &config.topic_pattern {
        return Ok((
            format!("change log topics matching {pattern}"),
            From::Topics(Topics::Pattern(pattern.clone())),
        ));
    }
    match &pipeline.config.source {
        SourceConfig::File(file) => {
            let path = pipeline.resolve(&file.path);
            Ok((
                format!("the pipeline's change log {}", path.display()),
                From::File(path),
            ))
        }
        SourceConfig::Kafka(kafka) => match &kafka.topic_pattern {
            Some(pattern) => Ok((
                format!("the pipeline's topics matching {pattern}"),
                From::Topics(Topics::Pattern(pattern.clone())),
            )),
            None => Ok((
                format!("the pipeline's topics {}", kafka.topics.join(", ")),
                From::Topics(Topics::Named(kafka.topics.clone())),
            )),
        },
        SourceConfig::PostgresCdc(_) => Err(ReconcileError::new(
            "the pipeline reads a PostgreSQL database directly, so there is no change log to \
             replay: reconcile against the database itself (`reconcile.source: { type: \
             postgres, url: … }`)",
        )),
    }
}

/// Decodes records into per-table batches and collects them by target table.
struct Split {
    many: ManyTables,
    chain: Option<TransformChain>,
    refused: Refused,
    metrics: Metrics,
    batches: HashMap<String, Vec<ChangeBatch>>,
    undecodable: u64,
    max_events: usize,
}

impl Split {
    fn push(&mut self, record: RawRecord<'_>, position: &Position) -> Result<(), String> {
        match self.many.decode(record, position) {
            Ok(_) => {}
            Err(DecodeError::Record(e)) => {
                self.undecodable += 1;
                tracing::debug!(%position, error = %e.message, "skipped a record");
            }
            Err(DecodeError::OtherTable(reason)) => {
                self.undecodable += 1;
                tracing::debug!(%position, %reason, "skipped a record");
            }
            Err(DecodeError::Fatal(change)) => {
                return Err(format!(
                    "at {position}: column `{}` of table {} changes type from {} to {}, which \
                     weir cannot follow without losing data",
                    change.column,
                    self.many.current_table().unwrap_or("?"),
                    change.from,
                    change.to
                ));
            }
        }
        if self.many.rows() >= self.max_events {
            self.close()?;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), String> {
        for batch in self.many.finish(&Checkpoint::default(), &self.metrics) {
            let batch = match self.chain.as_mut() {
                Some(chain) => chain.run::<String>(batch, &mut self.refused)?,
                None => batch,
            };
            let target = batch
                .table
                .target
                .clone()
                .unwrap_or_else(|| batch.table.name.clone());
            self.batches.entry(target).or_default().push(batch);
        }
        Ok(())
    }
}
