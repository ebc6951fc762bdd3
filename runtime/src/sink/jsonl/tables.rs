//! Many tables as JSON Lines: a file per target table in the folder `path`
//! (`<path>/<table>.jsonl`), committed together.
//!
//! `changelog`: a batch appends each table's changes to its file, fsyncs the files it
//! touched, then replaces `_weir_checkpoint.json` (every file's length and the checkpoint)
//! atomically. That replacement is the commit: on restart each file is cut back to its
//! committed length and a file the sidecar does not know is removed (it was created after
//! the last commit), so every file holds each change exactly once.
//!
//! `final`: each table's current rows, every file rewritten when the pipeline flushes (as
//! for one table, rebuilt from the start of the source on every run).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{JsonlMode, JsonlSink, JsonlSinkConfig};
use crate::config::LoadedPipeline;
use crate::encode::write_change;
use crate::envelope::ChangeBatch;
use crate::position::Checkpoint;
use crate::sink::{Applied, Prepared, Rejects, Sink, SinkError, sync_dir, write_atomically};

const SIDECAR: &str = "_weir_checkpoint.json";

/// What the last batch committed.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Committed {
    checkpoint: Checkpoint,
    /// Each table file's committed length, by target table.
    lengths: BTreeMap<String, u64>,
}

/// A table's change-log file, open for appending.
struct TableFile {
    writer: BufWriter<File>,
    length: u64,
    dirty: bool,
}

pub struct JsonlTables {
    dir: PathBuf,
    mode: JsonlMode,
    /// `changelog`: the files open so far.
    files: HashMap<String, TableFile>,
    /// `final`: each table's rows.
    finals: HashMap<String, JsonlSink>,
    committed: Committed,
    /// Whether a commit exists (the sidecar was read, or written by this run).
    resumed: bool,
    line: String,
}

impl JsonlTables {
    pub fn open(pipeline: &LoadedPipeline, config: &JsonlSinkConfig) -> Result<Self, SinkError> {
        let dir = pipeline.resolve(&config.path);
        let fail =
            |message: String| SinkError::new(format!("jsonl sink {}", dir.display()), message);
        std::fs::create_dir_all(&dir)
            .map_err(|e| fail(format!("cannot create the directory: {e}")))?;
        let mut sink = JsonlTables {
            dir: dir.clone(),
            mode: config.mode,
            files: HashMap::new(),
            finals: HashMap::new(),
            committed: Committed::default(),
            resumed: false,
            line: String::new(),
        };
        if config.mode == JsonlMode::Final {
            return Ok(sink);
        }
        match std::fs::read(dir.join(SIDECAR)) {
            Ok(bytes) => {
                sink.committed = serde_json::from_slice(&bytes)
                    .map_err(|e| fail(format!("{SIDECAR} is damaged: {e}")))?;
                sink.resumed = true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(format!("cannot read {SIDECAR}: {e}"))),
        }
        for (table, path) in table_files(&dir).map_err(|e| fail(e.to_string()))? {
            match sink.committed.lengths.get(&table) {
                Some(&length) => {
                    // Anything written after the last commit comes again.
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| fail(format!("cannot open {}: {e}", path.display())))?;
                    file.set_len(length).map_err(|e| fail(e.to_string()))?;
                }
                None if !sink.resumed && std::fs::metadata(&path).is_ok_and(|m| m.len() > 0) => {
                    return Err(fail(format!(
                        "{} exists but the folder has no {SIDECAR}; weir will not append to \
                         files it did not write. Move the folder away, or empty it to start over",
                        path.display()
                    )));
                }
                // Created after the last commit: every change in it comes again.
                None => std::fs::remove_file(&path).map_err(|e| fail(e.to_string()))?,
            }
        }
        Ok(sink)
    }

    fn error(&self, message: impl Into<String>) -> SinkError {
        SinkError::new(self.describe(), message)
    }

    fn file(&mut self, table: &str) -> Result<&mut TableFile, SinkError> {
        if !self.files.contains_key(table) {
            let path = self.dir.join(format!("{table}.jsonl"));
            let length = self.committed.lengths.get(table).copied().unwrap_or(0);
            let opened = (|| -> std::io::Result<TableFile> {
                let file = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)?;
                file.set_len(length)?;
                let mut writer = BufWriter::with_capacity(256 << 10, file);
                writer.seek(std::io::SeekFrom::Start(length))?;
                Ok(TableFile {
                    writer,
                    length,
                    dirty: false,
                })
            })()
            .map_err(|e| self.error(format!("cannot open {}: {e}", path.display())))?;
            self.files.insert(table.to_string(), opened);
        }
        Ok(self.files.get_mut(table).expect("opened above"))
    }

    fn append_tables(
        &mut self,
        batches: &[ChangeBatch],
        checkpoint: &Checkpoint,
    ) -> Result<u64, SinkError> {
        let mut appended = 0;
        let mut line = std::mem::take(&mut self.line);
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            let table = batch.table.target.as_deref().unwrap_or(&batch.table.name);
            let file = self.file(table)?;
            for row in 0..batch.num_rows() {
                line.clear();
                write_change(&mut line, batch, row);
                line.push('\n');
                file.writer.write_all(line.as_bytes()).map_err(io)?;
                file.length += line.len() as u64;
            }
            file.dirty = true;
            appended += batch.num_rows() as u64;
        }
        self.line = line;
        let mut created = false;
        for (table, file) in self.files.iter_mut().filter(|(_, f)| f.dirty) {
            file.writer.flush().map_err(io)?;
            file.writer.get_ref().sync_data().map_err(io)?;
            file.dirty = false;
            created |= self
                .committed
                .lengths
                .insert(table.clone(), file.length)
                .is_none();
        }
        if created {
            // The new files' directory entries must be durable before the commit names them.
            sync_dir(&self.dir.join(SIDECAR)).map_err(io)?;
        }
        self.committed.checkpoint.merge(checkpoint);
        write_atomically(
            &self.dir.join(SIDECAR),
            &serde_json::to_vec(&self.committed).expect("serialises"),
        )
        .map_err(io)?;
        self.resumed = true;
        Ok(appended)
    }
}

fn io(e: std::io::Error) -> SinkError {
    SinkError::new("jsonl sink", e.to_string())
}

/// The `<table>.jsonl` files of `dir`, by table.
fn table_files(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(table) = name.strip_suffix(".jsonl")
            && entry.file_type()?.is_file()
        {
            files.push((table.to_string(), entry.path()));
        }
    }
    Ok(files)
}

impl Sink for JsonlTables {
    fn committed(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        Ok(self.resumed.then(|| self.committed.checkpoint.clone()))
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
        rejects: &mut dyn Rejects,
    ) -> Result<Applied, SinkError> {
        let mut applied = Applied::default();
        match self.mode {
            JsonlMode::Changelog => match self.append_tables(batches, checkpoint) {
                Ok(appended) => {
                    applied.appended = appended;
                    applied.durable = Some(self.committed.checkpoint.clone());
                }
                Err(e) => {
                    // What was written past the last commit is cut off when each file is
                    // opened again.
                    self.files.clear();
                    return Err(self.error(e.message));
                }
            },
            JsonlMode::Final => {
                for batch in batches.iter().filter(|b| b.num_rows() > 0) {
                    let table = batch.table.target.as_deref().unwrap_or(&batch.table.name);
                    let sink = self.finals.entry(table.to_string()).or_insert_with(|| {
                        JsonlSink::final_rows(self.dir.join(format!("{table}.jsonl")))
                    });
                    let done = sink.apply(batch, rejects)?;
                    applied.upserts += done.upserts;
                    applied.deletes += done.deletes;
                    applied.truncates += done.truncates;
                }
            }
        }
        Ok(applied)
    }

    fn flush(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        for sink in self.finals.values_mut() {
            sink.flush()?;
        }
        Ok(self.resumed.then(|| self.committed.checkpoint.clone()))
    }

    fn describe(&self) -> String {
        format!("jsonl sink {}", self.dir.display())
    }
}
