//! The JSON Lines sink: the change log, or the final rows.
//!
//! `changelog` appends every change as a Debezium-style JSON event (weir can read the file
//! back). After each batch the file is fsynced and a sidecar `<file>.checkpoint.json`
//! records its length and the checkpoint; a restart truncates any tail written after that,
//! so the log holds every change exactly once.
//!
//! `final` keeps the current row of every key and rewrites the file (atomically) when the
//! pipeline flushes: at the end of the source and when it stops. It holds the table in
//! memory and rebuilds it from the start of the source on every run.
//!
//! A many-table pipeline (`tables:`) writes a file per target table in the folder `path`
//! ([`tables`]).

pub mod tables;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::compact::{compact, keys};
use super::{Applied, Rejects, Sink, SinkError, write_atomically};
use crate::config::LoadedPipeline;
use crate::encode::{write_change, write_struct_row};
use crate::envelope::ChangeBatch;
use crate::position::Checkpoint;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonlSinkConfig {
    /// Path of the output file; with `tables`, of the folder that holds a file per table
    /// (`<table>.jsonl`). Relative paths resolve against the pipeline file's directory.
    pub path: PathBuf,
    /// What the file holds.
    #[serde(default)]
    pub mode: JsonlMode,
}

impl JsonlSinkConfig {
    pub fn capabilities(&self) -> super::Capabilities {
        super::Capabilities {
            stores_checkpoint: true,
            many_tables: true,
            // `final` keeps the current row of each key.
            applies_by_key: self.mode == JsonlMode::Final,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum JsonlMode {
    /// Every change, in order, as a Debezium-style event.
    #[default]
    Changelog,
    /// The current row of every key, one JSON object per line.
    Final,
}

#[derive(Serialize, Deserialize)]
struct Sidecar {
    length: u64,
    checkpoint: Checkpoint,
}

pub struct JsonlSink {
    path: PathBuf,
    sidecar: PathBuf,
    mode: JsonlMode,
    writer: Option<BufWriter<File>>,
    length: u64,
    durable: Option<Checkpoint>,
    /// `final` mode: key bytes to the row's JSON, and the key's first appearance (for a
    /// stable output order).
    rows: HashMap<Vec<u8>, (u64, String)>,
    sequence: u64,
    checkpoint: Checkpoint,
    line: String,
}

impl JsonlSink {
    pub fn open(pipeline: &LoadedPipeline, config: &JsonlSinkConfig) -> Result<Self, SinkError> {
        let path = pipeline.resolve(&config.path);
        let sidecar = PathBuf::from(format!("{}.checkpoint.json", path.display()));
        let name = format!("jsonl sink {}", path.display());
        let mut sink = JsonlSink {
            sidecar: sidecar.clone(),
            mode: config.mode,
            ..Self::final_rows(path.clone())
        };
        if config.mode == JsonlMode::Final {
            return Ok(sink);
        }
        let state: Option<Sidecar> = match std::fs::read(&sidecar) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                SinkError::new(&name, format!("{} is damaged: {e}", sidecar.display()))
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(SinkError::new(&name, e.to_string())),
        };
        if state.is_none()
            && path.exists()
            && std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) > 0
        {
            return Err(SinkError::new(
                &name,
                format!(
                    "{} exists but has no {}; weir will not append to a file it did not write. \
                     Move it away, or delete it to start over",
                    path.display(),
                    sidecar.display()
                ),
            ));
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| SinkError::new(&name, e.to_string()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| SinkError::new(&name, format!("cannot open: {e}")))?;
        if let Some(state) = state {
            // Drop anything written after the last recorded batch: it is replayed.
            file.set_len(state.length)
                .map_err(|e| SinkError::new(&name, e.to_string()))?;
            sink.length = state.length;
            sink.checkpoint = state.checkpoint.clone();
            sink.durable = Some(state.checkpoint);
        }
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        use std::io::Seek;
        writer
            .seek(std::io::SeekFrom::Start(sink.length))
            .map_err(|e| SinkError::new(&name, e.to_string()))?;
        sink.writer = Some(writer);
        Ok(sink)
    }

    /// A `final`-mode sink writing `path` (one table of a many-table pipeline), and the
    /// empty state `open` starts from.
    fn final_rows(path: PathBuf) -> Self {
        JsonlSink {
            sidecar: PathBuf::new(),
            path,
            mode: JsonlMode::Final,
            writer: None,
            length: 0,
            durable: None,
            rows: HashMap::new(),
            sequence: 0,
            checkpoint: Checkpoint::default(),
            line: String::new(),
        }
    }

    fn error(&self, message: impl Into<String>) -> SinkError {
        SinkError::new(self.describe(), message)
    }

    fn append_changes(&mut self, batch: &ChangeBatch) -> Result<u64, SinkError> {
        let mut line = std::mem::take(&mut self.line);
        let writer = self.writer.as_mut().expect("changelog mode has a writer");
        for row in 0..batch.num_rows() {
            line.clear();
            write_change(&mut line, batch, row);
            line.push('\n');
            writer
                .write_all(line.as_bytes())
                .map_err(|e| SinkError::new("jsonl sink", e.to_string()))?;
            self.length += line.len() as u64;
        }
        self.line = line;
        writer
            .flush()
            .map_err(|e| SinkError::new("jsonl sink", e.to_string()))?;
        writer
            .get_ref()
            .sync_data()
            .map_err(|e| SinkError::new("jsonl sink", e.to_string()))?;
        self.checkpoint.merge(&batch.checkpoint);
        let sidecar = Sidecar {
            length: self.length,
            checkpoint: self.checkpoint.clone(),
        };
        write_atomically(
            &self.sidecar,
            &serde_json::to_vec(&sidecar).expect("serialises"),
        )
        .map_err(|e| self.error(format!("cannot write {}: {e}", self.sidecar.display())))?;
        self.durable = Some(self.checkpoint.clone());
        Ok(batch.num_rows() as u64)
    }

    fn apply_final(&mut self, batch: &ChangeBatch, applied: &mut Applied) -> Result<(), SinkError> {
        let segments = compact(batch, None).map_err(|e| self.error(e))?;
        if segments.is_empty() {
            return Ok(());
        }
        let keys = keys(batch).map_err(|e| self.error(e))?;
        for segment in segments {
            if segment.truncate_first {
                self.rows.clear();
                applied.truncates += 1;
            }
            for row in segment.deletes {
                self.rows.remove(keys.before.row(row).data());
                applied.deletes += 1;
            }
            for row in segment.upserts {
                let mut json = String::new();
                write_struct_row(&mut json, batch.after(), row);
                let key = keys.after.row(row).data().to_vec();
                let sequence = self.sequence;
                self.sequence += 1;
                let entry = self.rows.entry(key).or_insert((sequence, String::new()));
                entry.1 = json;
                applied.upserts += 1;
            }
        }
        Ok(())
    }
}

impl Sink for JsonlSink {
    fn committed(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        Ok(self.durable.clone())
    }

    fn apply(
        &mut self,
        batch: &ChangeBatch,
        _rejects: &mut dyn Rejects,
    ) -> Result<Applied, SinkError> {
        let mut applied = Applied::default();
        match self.mode {
            JsonlMode::Changelog => {
                applied.appended = self.append_changes(batch)?;
                applied.durable = self.durable.clone();
            }
            JsonlMode::Final => {
                self.apply_final(batch, &mut applied)?;
                self.checkpoint.merge(&batch.checkpoint);
            }
        }
        Ok(applied)
    }

    fn flush(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        if self.mode == JsonlMode::Final {
            let mut rows: Vec<&(u64, String)> = self.rows.values().collect();
            rows.sort_by_key(|(sequence, _)| *sequence);
            let mut out = String::new();
            for (_, json) in rows {
                out.push_str(json);
                out.push('\n');
            }
            write_atomically(&self.path, out.as_bytes())
                .map_err(|e| self.error(format!("cannot write: {e}")))?;
        }
        Ok(self.durable.clone())
    }

    fn describe(&self) -> String {
        format!("jsonl sink {}", self.path.display())
    }
}
