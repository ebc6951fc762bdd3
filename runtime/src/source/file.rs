//! The file source: NDJSON change events, one per line.
//!
//! Every line is a record; an empty line or `null` is a tombstone. The position of a record
//! is its line number and byte offset, so a restarted pipeline seeks straight to the first
//! line it has not applied. With `follow: true` the file is read as it grows (a partial
//! last line waits for its newline).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Deserialize;

use super::{PollLimits, PollStatus, RawBatch, Source, SourceError};
use crate::config::LoadedPipeline;
use crate::decode::Format;
use crate::position::{Checkpoint, Position};

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// Path of the NDJSON file. Relative paths resolve against the pipeline file's
    /// directory.
    pub path: PathBuf,
    /// The shape of each line.
    #[serde(default)]
    pub format: Format,
    /// Keep reading as the file grows, instead of stopping at its end.
    #[serde(default)]
    pub follow: bool,
}

/// Lines longer than this are refused rather than read into memory.
const MAX_LINE: usize = 256 << 20;

pub struct FileSource {
    path: PathBuf,
    stream: Arc<str>,
    reader: BufReader<File>,
    follow: bool,
    offset: u64,
    line: u64,
    buf: Vec<u8>,
    /// Bytes the last line took in the file, line ending included.
    consumed: usize,
}

impl FileSource {
    pub fn open(pipeline: &LoadedPipeline, config: &FileSourceConfig) -> Result<Self, SourceError> {
        let path = pipeline.resolve(&config.path);
        let file = File::open(&path).map_err(|e| SourceError {
            source_name: "file source".into(),
            message: format!(
                "cannot open {}: {e} (the path is relative to the pipeline file's directory)",
                path.display()
            ),
            retryable: false,
        })?;
        Ok(FileSource {
            stream: format!("file:{}", config.path.display()).into(),
            path,
            reader: BufReader::with_capacity(1 << 20, file),
            follow: config.follow,
            offset: 0,
            line: 0,
            buf: Vec::new(),
            consumed: 0,
        })
    }

    fn error(&self, message: String) -> SourceError {
        SourceError {
            source_name: format!("file source {}", self.path.display()),
            message,
            retryable: false,
        }
    }

    /// Reads one line into `self.buf` (without its line ending). Returns `Ok(false)` at the
    /// end of the data; in follow mode a partial line is put back for the next poll.
    fn read_line(&mut self) -> Result<bool, SourceError> {
        self.buf.clear();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| self.error(format!("read failed at byte {}: {e}", self.offset)))?;
        if n == 0 {
            return Ok(false);
        }
        if n > MAX_LINE {
            return Err(self.error(format!(
                "line {} is longer than {} MiB; is this an NDJSON file?",
                self.line + 1,
                MAX_LINE >> 20
            )));
        }
        self.consumed = n;
        let complete = self.buf.last() == Some(&b'\n');
        if !complete && self.follow {
            // A writer is mid-line: read it again once it is finished.
            self.reader
                .seek(SeekFrom::Start(self.offset))
                .map_err(|e| self.error(format!("seek failed: {e}")))?;
            return Ok(false);
        }
        if complete {
            self.buf.pop();
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
        }
        Ok(true)
    }
}

impl Source for FileSource {
    fn seek(&mut self, checkpoint: &Checkpoint) -> Result<(), SourceError> {
        let Some(resume) = checkpoint.get(&self.stream) else {
            return Ok(());
        };
        let len = self
            .reader
            .get_ref()
            .metadata()
            .map_err(|e| self.error(format!("cannot stat: {e}")))?
            .len();
        if resume.next as u64 > len {
            return Err(self.error(format!(
                "the target's checkpoint says {} bytes ({} lines) were applied, but the file has \
                 only {len} bytes: it was replaced or truncated. Restore the file, or start \
                 over with a fresh target",
                resume.next, resume.line
            )));
        }
        self.reader
            .seek(SeekFrom::Start(resume.next as u64))
            .map_err(|e| self.error(format!("seek failed: {e}")))?;
        self.offset = resume.next as u64;
        self.line = resume.line;
        Ok(())
    }

    fn poll(
        &mut self,
        batch: &mut RawBatch,
        limits: &PollLimits,
    ) -> Result<PollStatus, SourceError> {
        let started = Instant::now();
        loop {
            while !limits.filled(batch) {
                if !self.read_line()? {
                    break;
                }
                let next = self.offset + self.consumed as u64;
                self.line += 1;
                let position = Position::File {
                    stream: self.stream.clone(),
                    line: self.line,
                    offset: self.offset,
                    next,
                };
                self.offset = next;
                let value = &self.buf;
                batch.push(None, Some(value), position);
            }
            if !batch.is_empty() {
                return Ok(PollStatus::Records);
            }
            if !self.follow {
                return Ok(PollStatus::End);
            }
            if started.elapsed() >= limits.max_wait {
                return Ok(PollStatus::Idle);
            }
            std::thread::sleep(Duration::from_millis(20).min(limits.max_wait));
        }
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    fn pipeline(dir: &std::path::Path, follow: bool) -> (LoadedPipeline, FileSourceConfig) {
        let yaml = format!(
            "name: t\nsource: {{type: file, path: events.jsonl, follow: {follow}}}\n\
             table: {{name: t, primary_key: [id]}}\nsink: {{type: sqlite, path: t.db}}\n"
        );
        let p = load_str(&yaml, &dir.join("p.yaml"), &|_| None).unwrap();
        let crate::source::SourceConfig::File(c) = p.config.source.clone() else {
            unreachable!("a file source")
        };
        (p, c)
    }

    fn limits(n: usize) -> PollLimits {
        PollLimits {
            max_records: n,
            max_bytes: 1 << 20,
            max_wait: Duration::from_millis(50),
        }
    }

    fn lines(batch: &RawBatch) -> Vec<(String, String)> {
        batch
            .iter()
            .map(|(r, p)| {
                (
                    String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
                    p.to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn reads_lines_with_positions_and_resumes_after_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("events.jsonl"), "a\r\nbb\n\nccc").unwrap();
        let (p, c) = pipeline(dir.path(), false);
        let mut source = FileSource::open(&p, &c).unwrap();
        let mut batch = RawBatch::default();
        assert_eq!(
            source.poll(&mut batch, &limits(2)).unwrap(),
            PollStatus::Records
        );
        assert_eq!(
            lines(&batch),
            [
                ("a".into(), "events.jsonl:1".into()),
                ("bb".into(), "events.jsonl:2".into())
            ]
        );
        let mut checkpoint = Checkpoint::default();
        for (_, position) in batch.iter() {
            checkpoint.advance(position);
        }

        let mut resumed = FileSource::open(&p, &c).unwrap();
        resumed.seek(&checkpoint).unwrap();
        let mut rest = RawBatch::default();
        assert_eq!(
            resumed.poll(&mut rest, &limits(10)).unwrap(),
            PollStatus::Records
        );
        assert_eq!(
            lines(&rest),
            [
                ("".into(), "events.jsonl:3".into()),
                ("ccc".into(), "events.jsonl:4".into())
            ]
        );
        rest.clear();
        assert_eq!(
            resumed.poll(&mut rest, &limits(10)).unwrap(),
            PollStatus::End
        );
    }

    #[test]
    fn a_checkpoint_beyond_the_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("events.jsonl"), "a\n").unwrap();
        let (p, c) = pipeline(dir.path(), false);
        let mut source = FileSource::open(&p, &c).unwrap();
        let mut checkpoint = Checkpoint::default();
        checkpoint.streams.insert(
            "file:events.jsonl".into(),
            crate::position::ResumePoint { next: 100, line: 9 },
        );
        let err = source.seek(&checkpoint).unwrap_err().to_string();
        assert!(err.contains("replaced or truncated"), "{err}");
    }

    #[test]
    fn follow_mode_waits_for_complete_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "one\ntw").unwrap();
        let (p, c) = pipeline(dir.path(), true);
        let mut source = FileSource::open(&p, &c).unwrap();
        let mut batch = RawBatch::default();
        source.poll(&mut batch, &limits(10)).unwrap();
        assert_eq!(lines(&batch).len(), 1);
        batch.clear();
        assert_eq!(
            source.poll(&mut batch, &limits(10)).unwrap(),
            PollStatus::Idle
        );
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"o\n")
            .unwrap();
        assert_eq!(
            source.poll(&mut batch, &limits(10)).unwrap(),
            PollStatus::Records
        );
        assert_eq!(lines(&batch), [("two".into(), "events.jsonl:2".into())]);
    }
}
