//! The Parquet sink: the change log (every change with its envelope) as Parquet files.
//!
//! Files are written as `part-NNNNNN.parquet.tmp` and renamed when closed, so readers only
//! ever see complete files. A file closes when it reaches `file_rows` rows, when it is older
//! than `file_age`, when the schema changes, and when the pipeline stops. Each file records
//! the pipeline's checkpoint in its footer (`weir.checkpoint`); a restart resumes from the
//! newest complete file, so the log holds every change exactly once.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::schema::types::ColumnPath;
use schemars::JsonSchema;
use serde::Deserialize;

mod tables;

pub use tables::ParquetTables;

use super::{Applied, Rejects, Sink, SinkError, sync_dir};
use crate::config::{HumanDuration, LoadedPipeline};
use crate::decode::types::{ColumnType, from_arrow};
use crate::envelope::{self, ChangeBatch};
use crate::position::Checkpoint;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkConfig {
    /// Directory for the files; created if missing. Relative paths resolve against the
    /// pipeline file's directory.
    pub path: PathBuf,
    /// Rows per row group.
    #[serde(default = "default_row_group_rows")]
    #[schemars(range(min = 1))]
    pub row_group_rows: usize,
    /// Rows per file; a full file is closed and a new one started.
    #[serde(default = "default_file_rows")]
    #[schemars(range(min = 1))]
    pub file_rows: usize,
    /// Close a file once it is this old, so a slow stream still produces files.
    #[serde(default)]
    pub file_age: Option<HumanDuration>,
    /// Column compression.
    #[serde(default)]
    pub compression: ParquetCompression,
    /// Which columns use dictionary encoding.
    #[serde(default)]
    pub dictionary: ParquetDictionary,
}

impl ParquetSinkConfig {
    pub fn capabilities(&self) -> super::Capabilities {
        super::Capabilities {
            stores_checkpoint: true,
            many_tables: true,
            ..Default::default()
        }
    }
}

/// Dictionary encoding pays for itself on columns with few distinct values and costs
/// time (every value is hashed) on the rest; with zstd, row columns are usually as small
/// or smaller without it (measured in docs/benchmarks.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ParquetDictionary {
    /// The envelope's low-cardinality columns (`op`, `source_connector`, `source_name`,
    /// `source_db`, `source_schema`, `source_table`, `source_snapshot`).
    #[default]
    Envelope,
    /// Every column (Parquet writers' usual default).
    All,
    /// No column.
    None,
}

/// Envelope columns that hold a handful of distinct values.
const LOW_CARDINALITY: [&str; 7] = [
    envelope::OP,
    envelope::SOURCE_CONNECTOR,
    envelope::SOURCE_NAME,
    envelope::SOURCE_DB,
    envelope::SOURCE_SCHEMA,
    envelope::SOURCE_TABLE,
    envelope::SOURCE_SNAPSHOT,
];

fn default_row_group_rows() -> usize {
    128 * 1024
}

fn default_file_rows() -> usize {
    1_000_000
}

#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ParquetCompression {
    #[default]
    Zstd,
    Snappy,
    None,
}

const CHECKPOINT_KEY: &str = "weir.checkpoint";

struct OpenFile {
    writer: ArrowWriter<BufWriter<File>>,
    schema: SchemaRef,
    tmp: PathBuf,
    path: PathBuf,
    rows: usize,
    opened: Instant,
}

pub struct ParquetSink {
    dir: PathBuf,
    /// The newest complete file, whose schema says what the log holds so far.
    newest: Option<PathBuf>,
    config: ParquetSinkConfig,
    next_seq: u64,
    file: Option<OpenFile>,
    /// Everything applied so far, durable or not.
    checkpoint: Checkpoint,
    durable: Option<Checkpoint>,
}

fn file_name(seq: u64) -> String {
    format!("part-{seq:06}.parquet")
}

fn seq_of(name: &str) -> Option<u64> {
    name.strip_prefix("part-")?
        .strip_suffix(".parquet")?
        .parse()
        .ok()
}

impl ParquetSink {
    pub fn open(pipeline: &LoadedPipeline, config: &ParquetSinkConfig) -> Result<Self, SinkError> {
        let dir = pipeline.resolve(&config.path);
        let name = format!("parquet sink {}", dir.display());
        std::fs::create_dir_all(&dir)
            .map_err(|e| SinkError::new(&name, format!("cannot create the directory: {e}")))?;
        let mut newest = None;
        for entry in std::fs::read_dir(&dir).map_err(|e| SinkError::new(&name, e.to_string()))? {
            let entry = entry.map_err(|e| SinkError::new(&name, e.to_string()))?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if file_name.starts_with("part-") && file_name.ends_with(".parquet.tmp") {
                // An unfinished file from a run that stopped abruptly; its changes are
                // replayed from the last checkpoint.
                std::fs::remove_file(entry.path())
                    .map_err(|e| SinkError::new(&name, e.to_string()))?;
            } else if let Some(seq) = seq_of(&file_name) {
                newest = newest.max(Some(seq));
            }
        }
        let durable = match newest {
            Some(seq) => {
                read_checkpoint(&dir.join(file_name(seq))).map_err(|e| SinkError::new(&name, e))?
            }
            None => None,
        };
        Ok(ParquetSink {
            newest: newest.map(|seq| dir.join(file_name(seq))),
            dir,
            config: config.clone(),
            next_seq: newest.map_or(0, |s| s + 1),
            file: None,
            checkpoint: durable.clone().unwrap_or_default(),
            durable,
        })
    }

    fn error(&self, message: impl Into<String>) -> SinkError {
        SinkError::new(self.describe(), message)
    }

    fn start_file(&mut self, schema: SchemaRef) -> Result<(), SinkError> {
        let path = self.dir.join(file_name(self.next_seq));
        let tmp = path.with_extension("parquet.tmp");
        self.next_seq += 1;
        let compression = match self.config.compression {
            ParquetCompression::Zstd => Compression::ZSTD(ZstdLevel::default()),
            ParquetCompression::Snappy => Compression::SNAPPY,
            ParquetCompression::None => Compression::UNCOMPRESSED,
        };
        let mut props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(self.config.row_group_rows))
            .set_compression(compression)
            .set_dictionary_enabled(self.config.dictionary == ParquetDictionary::All);
        if self.config.dictionary == ParquetDictionary::Envelope {
            for column in LOW_CARDINALITY {
                props = props.set_column_dictionary_enabled(ColumnPath::from(column), true);
            }
        }
        let props = props.build();
        let file = File::create(&tmp)
            .map_err(|e| self.error(format!("cannot create {}: {e}", tmp.display())))?;
        let writer = ArrowWriter::try_new(BufWriter::new(file), schema.clone(), Some(props))
            .map_err(|e| self.error(e.to_string()))?;
        self.file = Some(OpenFile {
            writer,
            schema,
            tmp,
            path,
            rows: 0,
            opened: Instant::now(),
        });
        Ok(())
    }

    /// Whether a file is open with a schema other than `schema` (and must be closed
    /// before rows of `schema` are written). The decoder hands out one schema per table
    /// version, so comparing pointers first spares a deep comparison of every field, and
    /// of the metadata map, for each table of each batch.
    fn file_has_other_schema(&self, schema: &SchemaRef) -> bool {
        self.file
            .as_ref()
            .is_some_and(|f| !Arc::ptr_eq(&f.schema, schema) && f.schema != *schema)
    }

    /// Closes the open file: footer with the checkpoint, fsync, rename.
    fn close_file(&mut self) -> Result<(), SinkError> {
        let Some(mut open) = self.file.take() else {
            return Ok(());
        };
        let checkpoint = serde_json::to_string(&self.checkpoint).expect("checkpoint serialises");
        open.writer
            .append_key_value_metadata(KeyValue::new(CHECKPOINT_KEY.to_string(), checkpoint));
        let inner = open
            .writer
            .into_inner()
            .map_err(|e| self.error(format!("cannot finish {}: {e}", open.tmp.display())))?;
        let file = inner.into_inner().map_err(|e| {
            self.error(format!(
                "cannot flush {}: {}",
                open.tmp.display(),
                e.error()
            ))
        })?;
        file.sync_all().map_err(|e| self.error(e.to_string()))?;
        std::fs::rename(&open.tmp, &open.path).map_err(|e| self.error(e.to_string()))?;
        sync_dir(&open.path).map_err(|e| self.error(e.to_string()))?;
        self.durable = Some(self.checkpoint.clone());
        Ok(())
    }
}

fn read_checkpoint(path: &Path) -> Result<Option<Checkpoint>, String> {
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let reader = SerializedFileReader::new(file).map_err(|e| format!("{}: {e}", path.display()))?;
    let value = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == CHECKPOINT_KEY))
        .and_then(|k| k.value.clone());
    match value {
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{}: bad checkpoint metadata: {e}", path.display())),
        None => Ok(None),
    }
}

impl Sink for ParquetSink {
    fn committed(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        Ok(self.durable.clone())
    }

    fn apply(
        &mut self,
        batch: &ChangeBatch,
        _rejects: &mut dyn Rejects,
    ) -> Result<Applied, SinkError> {
        let mut applied = Applied::default();
        let schema = batch.data.schema();
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.file_has_other_schema(&schema) {
                self.close_file()?;
            }
            if self.file.is_none() {
                self.start_file(schema.clone())?;
            }
            let open = self.file.as_mut().expect("opened above");
            // A batch is split across files so each holds exactly `file_rows` rows.
            let take = (self.config.file_rows - open.rows).min(batch.num_rows() - offset);
            open.writer
                .write(&batch.data.slice(offset, take))
                .map_err(|e| SinkError::new("parquet sink", e.to_string()))?;
            open.rows += take;
            offset += take;
            applied.appended += take as u64;
            if open.rows >= self.config.file_rows {
                // The file's footer covers the rows up to its last one.
                self.checkpoint.advance(&batch.positions[offset - 1]);
                self.close_file()?;
                applied.durable = self.durable.clone();
            }
        }
        self.checkpoint.merge(&batch.checkpoint);
        let expired = self.file.as_ref().is_some_and(|f| {
            self.config
                .file_age
                .is_some_and(|age| f.opened.elapsed() >= age.0)
        });
        if expired {
            self.close_file()?;
            applied.durable = self.durable.clone();
        }
        Ok(applied)
    }

    fn flush(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        self.close_file()?;
        Ok(self.durable.clone())
    }

    fn target_types(&mut self) -> Result<Vec<(String, ColumnType)>, SinkError> {
        let Some(path) = &self.newest else {
            return Ok(Vec::new());
        };
        let file = File::open(path).map_err(|e| self.error(e.to_string()))?;
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| self.error(e.to_string()))?;
        let after = builder
            .schema()
            .field_with_name(crate::envelope::AFTER)
            .map(|f| f.data_type().clone());
        Ok(match after {
            Ok(arrow::datatypes::DataType::Struct(fields)) => fields
                .iter()
                .filter_map(|f| from_arrow(f.data_type()).map(|t| (f.name().clone(), t)))
                .collect(),
            _ => Vec::new(),
        })
    }

    fn describe(&self) -> String {
        format!("parquet sink {}", self.dir.display())
    }
}
