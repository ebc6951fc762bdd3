//! Dead letters read back from a JSON Lines file ([`crate::dead_letter::file`]).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;

use super::{LetterReader, OutputEnd, StoredLetter, file_origin, kafka_origin, parse_time, stream};
use crate::dead_letter::Stage;
use crate::position::{Checkpoint, Position};
use crate::source::SourceError;

/// A line longer than this is not read into memory: it is passed over as not a letter
/// (the file source's own limit on a line).
const MAX_LINE: u64 = 256 << 20;

/// One line as [`crate::dead_letter::file::FileDeadLetters`] writes it.
#[derive(Deserialize)]
struct Line {
    stage: String,
    #[serde(default)]
    pipeline: Option<String>,
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    error: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_base64: Option<String>,
    #[serde(default)]
    raw: Option<String>,
    #[serde(default)]
    raw_base64: Option<String>,
    #[serde(default)]
    source: Option<serde_json::Value>,
}

pub struct FileLetters {
    path: PathBuf,
    stream: Arc<str>,
    /// `None` when there is no file: no dead letters.
    reader: Option<BufReader<File>>,
    /// The file's length when the replay began: letters written later (by this replay)
    /// are not read.
    end: u64,
    offset: u64,
    line: u64,
    buf: Vec<u8>,
    /// [`MAX_LINE`], smaller in tests.
    max_line: u64,
}

impl FileLetters {
    /// `name` is the path as the pipeline spells it (the streams' names do not change
    /// with the directory weir runs in).
    /// `end` is where the replay reads to, `None` for the file's length now.
    pub fn open(
        path: &Path,
        name: &str,
        pass_key: &str,
        end: Option<u64>,
    ) -> Result<FileLetters, SourceError> {
        let (reader, length) = match File::open(path) {
            Ok(file) => {
                let length = file
                    .metadata()
                    .map_err(|e| error(path, format!("cannot stat: {e}")))?
                    .len();
                (Some(BufReader::with_capacity(1 << 20, file)), length)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, 0),
            Err(e) => return Err(error(path, format!("cannot open: {e}"))),
        };
        let end = end.unwrap_or(length).min(length);
        Ok(FileLetters {
            path: path.to_path_buf(),
            stream: stream(&format!("file:{name}"), pass_key).into(),
            reader,
            end,
            offset: 0,
            line: 0,
            buf: Vec::new(),
            max_line: MAX_LINE,
        })
    }
}

fn error(path: &Path, message: String) -> SourceError {
    SourceError {
        source_name: format!("dead-letter file {}", path.display()),
        message,
        retryable: false,
    }
}

/// Reads one line of the file into a letter (`stage: None` when it is not one).
fn parse(line: &[u8]) -> StoredLetter {
    let Ok(line) = serde_json::from_slice::<Line>(line) else {
        return StoredLetter::default();
    };
    let bytes = |text: Option<String>, base64: Option<String>| -> Result<Option<Vec<u8>>, ()> {
        match (text, base64) {
            (Some(text), _) => Ok(Some(text.into_bytes())),
            (None, Some(encoded)) => BASE64.decode(encoded).map(Some).map_err(|_| ()),
            (None, None) => Ok(None),
        }
    };
    let (Some(stage), Ok(key), Ok(raw)) = (
        Stage::from_name(&line.stage),
        bytes(line.key, line.key_base64),
        bytes(line.raw, line.raw_base64),
    ) else {
        return StoredLetter::default();
    };
    StoredLetter {
        stage: Some(stage),
        time: line.time.as_deref().and_then(parse_time),
        error: line.error,
        key,
        raw,
        cut: false,
        pipeline: line.pipeline,
        origin: line.source.as_ref().and_then(origin),
    }
}

/// The record's position in the source, from the letter's `source` block.
fn origin(source: &serde_json::Value) -> Option<String> {
    let text = |name: &str| match &source[name] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    if let (Some(file), Some(line)) = (text("file"), text("line")) {
        return Some(file_origin(&file, &line));
    }
    let (topic, partition, offset) = (text("topic")?, text("partition")?, text("offset")?);
    Some(kafka_origin(&topic, &partition, &offset))
}

impl LetterReader for FileLetters {
    fn check(&mut self, checkpoint: &Checkpoint) -> Result<(), SourceError> {
        let Some(resume) = checkpoint.get(&self.stream) else {
            return Ok(());
        };
        if resume.next as u64 > self.end || self.reader.is_none() {
            return Err(error(
                &self.path,
                format!(
                    "the target's checkpoint says {} bytes ({} lines) of it were replayed, but \
                     it has only {} bytes: it was replaced or truncated since. Replaying it \
                     again could apply letters twice; restore it, or move its letters to a \
                     new file",
                    resume.next, resume.line, self.end
                ),
            ));
        }
        Ok(())
    }

    fn next(&mut self) -> Result<Option<(StoredLetter, Position)>, SourceError> {
        let Some(reader) = &mut self.reader else {
            return Ok(None);
        };
        if self.offset >= self.end {
            return Ok(None);
        }
        self.buf.clear();
        let limit = (self.end - self.offset).min(self.max_line + 1);
        let n = reader
            .by_ref()
            .take(limit)
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| {
                error(
                    &self.path,
                    format!("read failed at byte {}: {e}", self.offset),
                )
            })? as u64;
        let mut n = n;
        if n > self.max_line {
            // Not read into memory: the rest of the line is passed over in pieces.
            self.buf.clear();
            let mut piece = Vec::new();
            loop {
                piece.clear();
                let read = reader
                    .by_ref()
                    .take((self.end - self.offset - n).min(1 << 20))
                    .read_until(b'\n', &mut piece)
                    .map_err(|e| error(&self.path, format!("read failed: {e}")))?
                    as u64;
                n += read;
                if read == 0 || piece.last() == Some(&b'\n') {
                    break;
                }
            }
            tracing::warn!(
                file = %self.path.display(),
                line = self.line + 1,
                bytes = n,
                "a line longer than {} bytes is not a dead letter weir wrote; passed over",
                self.max_line
            );
            self.buf.push(b'\n');
        }
        if self.buf.last() != Some(&b'\n') {
            // A letter being written when the replay opened the file: the next replay
            // reads it whole.
            return Ok(None);
        }
        self.buf.pop();
        self.line += 1;
        let position = Position::File {
            stream: self.stream.clone(),
            line: self.line,
            offset: self.offset,
            next: self.offset + n,
        };
        self.offset += n;
        Ok(Some((parse(&self.buf), position)))
    }

    fn end(&self) -> OutputEnd {
        OutputEnd::File(self.end)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letter::file::FileDeadLetters;
    use crate::dead_letter::{DeadLetter, DeadLetterSink};

    fn letter<'a>(stage: Stage, raw: Option<&'a [u8]>) -> DeadLetter<'a> {
        DeadLetter {
            stage,
            error: "bad",
            table: None,
            position: None,
            key: Some(b"{\"id\":1}"),
            raw,
        }
    }

    fn read_all(letters: &mut FileLetters) -> Vec<(StoredLetter, Position)> {
        std::iter::from_fn(|| letters.next().unwrap()).collect()
    }

    #[test]
    fn reads_back_what_the_writer_wrote_up_to_the_end_it_had() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dl.jsonl");
        let mut writer = FileDeadLetters::new(&path, "p");
        writer
            .write(&letter(Stage::Decode, Some(b"{\"op\":")))
            .unwrap();
        writer
            .write(&letter(Stage::Sink, Some(&[0xff, 0x00])))
            .unwrap();
        writer.write(&letter(Stage::Transform, None)).unwrap();
        writer.flush().unwrap();
        let mut letters = FileLetters::open(&path, "dl.jsonl", "sink", None).unwrap();
        // Written after the replay opened the file: not read by it.
        writer.write(&letter(Stage::Sink, Some(b"later"))).unwrap();
        writer.flush().unwrap();
        let read = read_all(&mut letters);
        assert_eq!(read.len(), 3);
        assert_eq!(read[0].0.stage, Some(Stage::Decode));
        assert_eq!(read[0].0.raw.as_deref(), Some(&b"{\"op\":"[..]));
        assert_eq!(read[0].0.key.as_deref(), Some(&b"{\"id\":1}"[..]));
        assert!(read[0].0.time.is_some());
        assert_eq!(read[1].0.raw.as_deref(), Some(&[0xff, 0x00][..]));
        assert_eq!(read[2].0.raw, None);
        assert_eq!(read[2].1.stream_key(), "dlq:file:dl.jsonl#sink");

        // A new replay reads from the start, up to the letter written later.
        let mut again = FileLetters::open(&path, "dl.jsonl", "sink", None).unwrap();
        let mut checkpoint = Checkpoint::default();
        checkpoint.advance(&read[1].1);
        again.check(&checkpoint).unwrap();
        let read = read_all(&mut again);
        assert_eq!(read.len(), 4);
        assert_eq!(read[3].0.raw.as_deref(), Some(&b"later"[..]));
    }

    #[test]
    fn hostile_lines_are_not_letters_and_a_half_written_one_waits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dl.jsonl");
        std::fs::write(
            &path,
            "not json\n{\"stage\":\"nowhere\"}\n{\"stage\":\"decode\",\"raw_base64\":\"!!\"}\n\
             {\"stage\":\"decode\",\"raw\":\"x\"}\n{\"stage\":\"dec",
        )
        .unwrap();
        let mut letters = FileLetters::open(&path, "dl.jsonl", "decode", None).unwrap();
        let read = read_all(&mut letters);
        let stages: Vec<_> = read.iter().map(|(l, _)| l.stage).collect();
        assert_eq!(stages, [None, None, None, Some(Stage::Decode)]);

        // A line over the limit is passed over without being read into memory whole.
        let long = format!("{{\"stage\":\"decode\",\"raw\":\"{}\"}}", "x".repeat(3000));
        std::fs::write(
            &path,
            format!("{long}\n{{\"stage\":\"sink\",\"raw\":\"y\"}}\n"),
        )
        .unwrap();
        let mut letters = FileLetters::open(&path, "dl.jsonl", "decode", None).unwrap();
        letters.max_line = 1000;
        let read = read_all(&mut letters);
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].0.stage, None);
        assert!(letters.buf.capacity() < 2000, "{}", letters.buf.capacity());
        assert_eq!(read[1].0.stage, Some(Stage::Sink));
        assert_eq!(read[1].1.order(), (long.len() as i64 + 1, 1));
        assert!(
            FileLetters::open(&dir.path().join("none"), "none", "decode", None)
                .unwrap()
                .next()
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_truncated_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dl.jsonl");
        std::fs::write(&path, "{\"stage\":\"decode\",\"raw\":\"x\"}\n").unwrap();
        let mut checkpoint = Checkpoint::default();
        checkpoint.streams.insert(
            "dlq:file:dl.jsonl#decode".into(),
            crate::position::ResumePoint { next: 999, line: 9 },
        );
        let mut letters = FileLetters::open(&path, "dl.jsonl", "decode", None).unwrap();
        let e = letters.check(&checkpoint).unwrap_err();
        assert!(e.message.contains("replaced or truncated"), "{e}");
    }
}
