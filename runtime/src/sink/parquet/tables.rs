//! Many tables as Parquet: a folder of change-log files per target table
//! (`<path>/<table>/part-NNNNNN.parquet`), rolled together.
//!
//! One table's files carry its checkpoint in their footers; many tables need one
//! checkpoint for all of them. So files roll together, at batch boundaries: when any
//! table's file reaches `file_rows` (or `file_age`), every open file is closed with the
//! same checkpoint in its footer, and then `_weir_manifest.json` is replaced atomically
//! with that checkpoint and each table's last file. The manifest is the commit: on
//! restart, files past it (renamed before a crash, but not yet committed) and unfinished
//! files are removed, and the pipeline resumes from the manifest's checkpoint, so the log
//! holds every change exactly once. A file may exceed `file_rows` by up to one batch.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ParquetSink, ParquetSinkConfig, file_name, seq_of};
use crate::config::LoadedPipeline;
use crate::envelope::ChangeBatch;
use crate::position::Checkpoint;
use crate::sink::{Applied, Prepared, Rejects, Sink, SinkError, write_atomically};

const MANIFEST: &str = "_weir_manifest.json";

/// Most bytes all tables' writers may buffer in unfinished row groups together. Each
/// writer holds its row group in memory until it is full (`row_group_rows`); with many
/// tables that would grow with the table count, so past this the largest row group is
/// written out early.
const BUFFERED_BYTES: usize = 64 << 20;

/// What the last roll committed.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Manifest {
    checkpoint: Checkpoint,
    /// Each table's last committed file number.
    tables: BTreeMap<String, u64>,
}

pub struct ParquetTables {
    dir: PathBuf,
    config: ParquetSinkConfig,
    /// One writer per target table, each in its own folder.
    tables: HashMap<String, ParquetSink>,
    manifest: Manifest,
    /// The checkpoint of everything applied so far, committed or not.
    latest: Option<Checkpoint>,
}

impl ParquetTables {
    pub fn open(pipeline: &LoadedPipeline, config: &ParquetSinkConfig) -> Result<Self, SinkError> {
        let dir = pipeline.resolve(&config.path);
        let fail =
            |message: String| SinkError::new(format!("parquet sink {}", dir.display()), message);
        std::fs::create_dir_all(&dir)
            .map_err(|e| fail(format!("cannot create the directory: {e}")))?;
        let manifest: Manifest = match std::fs::read(dir.join(MANIFEST)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| fail(format!("{MANIFEST} is not readable: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
            Err(e) => return Err(fail(format!("cannot read {MANIFEST}: {e}"))),
        };
        // Files the last roll did not commit are removed: their changes come again.
        for entry in std::fs::read_dir(&dir).map_err(|e| fail(e.to_string()))? {
            let entry = entry.map_err(|e| fail(e.to_string()))?;
            if !entry.file_type().map_err(|e| fail(e.to_string()))?.is_dir() {
                continue;
            }
            let table = entry.file_name().to_string_lossy().into_owned();
            let committed = manifest.tables.get(&table).copied();
            for file in std::fs::read_dir(entry.path()).map_err(|e| fail(e.to_string()))? {
                let file = file.map_err(|e| fail(e.to_string()))?;
                let name = file.file_name().to_string_lossy().into_owned();
                let uncommitted = name.ends_with(".parquet.tmp")
                    || seq_of(&name).is_some_and(|seq| committed.is_none_or(|c| seq > c));
                if uncommitted {
                    std::fs::remove_file(file.path()).map_err(|e| fail(e.to_string()))?;
                }
            }
        }
        Ok(ParquetTables {
            dir,
            config: config.clone(),
            tables: HashMap::new(),
            manifest,
            latest: None,
        })
    }

    fn error(&self, message: impl Into<String>) -> SinkError {
        SinkError::new(self.describe(), message)
    }

    /// The writer of `target`, opened in its folder on first use.
    fn table(&mut self, target: &str) -> Result<&mut ParquetSink, SinkError> {
        if !self.tables.contains_key(target) {
            let dir = self.dir.join(target);
            std::fs::create_dir_all(&dir)
                .map_err(|e| self.error(format!("cannot create {}: {e}", dir.display())))?;
            let next_seq = self.manifest.tables.get(target).map_or(0, |seq| seq + 1);
            let sink = ParquetSink {
                newest: next_seq.checked_sub(1).map(|seq| dir.join(file_name(seq))),
                dir,
                config: self.config.clone(),
                next_seq,
                file: None,
                checkpoint: Checkpoint::default(),
                durable: None,
            };
            self.tables.insert(target.to_string(), sink);
        }
        Ok(self.tables.get_mut(target).expect("inserted above"))
    }

    /// Closes every open file with `checkpoint` in its footer, then commits the manifest.
    fn roll(&mut self, checkpoint: &Checkpoint) -> Result<(), SinkError> {
        for (table, sink) in &mut self.tables {
            if sink.file.is_some() {
                sink.checkpoint = checkpoint.clone();
                sink.close_file()?;
            }
            // Every file started since the last roll is closed now (some closed earlier,
            // at a schema change): all are committed together.
            if let Some(last) = sink.next_seq.checked_sub(1) {
                self.manifest.tables.insert(table.clone(), last);
            }
        }
        // A crash here leaves renamed files that no manifest commits (tests/many_tables.rs).
        crate::fault::panic_if_injected("parquet-roll");
        // Merged, not replaced: a batch carries only the streams read under the source's
        // current assignment (a consumer group may have moved the others), and a
        // stream's position never moves back.
        self.manifest.checkpoint.merge(checkpoint);
        let bytes = serde_json::to_vec(&self.manifest).expect("the manifest serialises");
        write_atomically(&self.dir.join(MANIFEST), &bytes)
            .map_err(|e| self.error(format!("cannot write {MANIFEST}: {e}")))
    }

    /// Writes out the largest unfinished row groups until all of them together buffer at
    /// most [`BUFFERED_BYTES`].
    fn bound_buffers(&mut self) -> Result<(), SinkError> {
        let buffered = |sink: &ParquetSink| {
            sink.file
                .as_ref()
                .map_or(0, |f| f.writer.in_progress_size())
        };
        let mut total: usize = self.tables.values().map(buffered).sum();
        while total > BUFFERED_BYTES {
            let Some(largest) = self.tables.values_mut().max_by_key(|s| buffered(s)) else {
                break;
            };
            let before = buffered(largest);
            if before == 0 {
                break;
            }
            let open = largest.file.as_mut().expect("a file buffers");
            open.writer
                .flush()
                .map_err(|e| SinkError::new("parquet sink", e.to_string()))?;
            let after = buffered(largest);
            if after >= before {
                break;
            }
            total -= before - after;
        }
        Ok(())
    }

    fn due(&self) -> bool {
        self.tables.values().any(|sink| {
            sink.file.as_ref().is_some_and(|f| {
                f.rows >= self.config.file_rows
                    || self
                        .config
                        .file_age
                        .is_some_and(|age| f.opened.elapsed() >= age.0)
            })
        })
    }
}

impl Sink for ParquetTables {
    fn committed(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        Ok(
            (!self.manifest.checkpoint.streams.is_empty())
                .then(|| self.manifest.checkpoint.clone()),
        )
    }

    fn apply(
        &mut self,
        batch: &ChangeBatch,
        rejects: &mut dyn Rejects,
    ) -> Result<Applied, SinkError> {
        self.apply_tables(
            std::slice::from_ref(batch),
            None,
            &batch.checkpoint,
            rejects,
        )
    }

    fn apply_tables(
        &mut self,
        batches: &[ChangeBatch],
        _prepared: Option<&Prepared>,
        checkpoint: &Checkpoint,
        _rejects: &mut dyn Rejects,
    ) -> Result<Applied, SinkError> {
        let mut applied = Applied::default();
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            let target = batch.table.target.as_deref().unwrap_or(&batch.table.name);
            let sink = self.table(target)?;
            let schema = batch.data.schema();
            if sink.file_has_other_schema(&schema) {
                // A schema change closes the table's file; it is committed with the next
                // roll (and removed, its changes replayed, if a crash comes first).
                sink.close_file()?;
            }
            if sink.file.is_none() {
                sink.start_file(schema)?;
            }
            let open = sink.file.as_mut().expect("opened above");
            open.writer
                .write(&batch.data)
                .map_err(|e| SinkError::new("parquet sink", e.to_string()))?;
            open.rows += batch.num_rows();
            applied.appended += batch.num_rows() as u64;
        }
        self.bound_buffers()?;
        self.latest = Some(checkpoint.clone());
        if self.due() {
            self.roll(checkpoint)?;
            applied.durable = Some(checkpoint.clone());
        }
        Ok(applied)
    }

    fn flush(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        if let Some(latest) = self.latest.take() {
            self.roll(&latest)?;
        }
        self.committed()
    }

    fn describe(&self) -> String {
        format!("parquet sink {} (a folder per table)", self.dir.display())
    }
}
