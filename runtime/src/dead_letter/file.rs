//! Dead letters as a JSON Lines file.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{DeadLetter, DeadLetterSink};
use crate::encode::write_json_string;
use crate::redact::redact;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileDeadLetterConfig {
    /// Path of the JSON Lines file. Relative paths resolve against the pipeline file.
    pub path: PathBuf,
}

/// Dead letters as JSON Lines:
/// `{"time", "pipeline", "stage", "error", "table", "source": {...}, "key", "raw"}`; `raw_base64`
/// replaces `raw` when the record is not UTF-8.
pub struct FileDeadLetters {
    path: PathBuf,
    pipeline: String,
    writer: Option<BufWriter<File>>,
    dirty: bool,
    line: String,
}

impl FileDeadLetters {
    pub fn new(path: &Path, pipeline: &str) -> Self {
        FileDeadLetters {
            path: path.to_path_buf(),
            pipeline: pipeline.to_string(),
            writer: None,
            dirty: false,
            line: String::new(),
        }
    }

    fn writer(&mut self) -> std::io::Result<&mut BufWriter<File>> {
        if self.writer.is_none() {
            if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.writer = Some(BufWriter::new(file));
        }
        Ok(self.writer.as_mut().expect("opened above"))
    }
}

fn write_bytes_field(line: &mut String, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            line.push_str(&format!(",\"{name}\":"));
            write_json_string(line, text);
        }
        Err(_) => {
            line.push_str(&format!(",\"{name}_base64\":"));
            write_json_string(line, &BASE64.encode(bytes));
        }
    }
}

impl DeadLetterSink for FileDeadLetters {
    fn write(&mut self, letter: &DeadLetter<'_>) -> std::io::Result<()> {
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        line.push_str("{\"time\":");
        write_json_string(
            &mut line,
            &chrono::Utc::now()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string(),
        );
        line.push_str(",\"pipeline\":");
        write_json_string(&mut line, &self.pipeline);
        line.push_str(",\"stage\":");
        write_json_string(&mut line, letter.stage.as_str());
        line.push_str(",\"error\":");
        write_json_string(&mut line, &redact(letter.error));
        if let Some(table) = letter.table {
            line.push_str(",\"table\":");
            write_json_string(&mut line, table);
        }
        if let Some(position) = letter.position {
            line.push_str(",\"source\":");
            line.push_str(&position.to_json().to_string());
        }
        if let Some(key) = letter.key {
            write_bytes_field(&mut line, "key", key);
        }
        if let Some(raw) = letter.raw {
            write_bytes_field(&mut line, "raw", raw);
        }
        line.push_str("}\n");
        let result = self.writer().and_then(|w| w.write_all(line.as_bytes()));
        self.line = line;
        self.dirty = true;
        result
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        if let Some(writer) = &mut self.writer {
            writer.flush()?;
            writer.get_ref().sync_data()?;
        }
        self.dirty = false;
        Ok(())
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letter::Stage;
    use crate::position::Position;

    #[test]
    fn dead_letters_carry_stage_error_position_and_raw_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dl.jsonl");
        let mut sink = FileDeadLetters::new(&path, "orders");
        let position = Position::File {
            stream: "file:events.jsonl".into(),
            line: 7,
            offset: 120,
            next: 140,
        };
        sink.write(&DeadLetter {
            stage: Stage::Decode,
            error: "invalid JSON: EOF while parsing",
            table: Some("shop.orders"),
            position: Some(&position),
            key: None,
            raw: Some(b"{\"op\":"),
        })
        .unwrap();
        sink.write(&DeadLetter {
            stage: Stage::Decode,
            error: "bad",
            table: None,
            position: None,
            key: None,
            raw: Some(&[0xff, 0xfe]),
        })
        .unwrap();
        sink.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["stage"], "decode");
        assert_eq!(lines[0]["table"], "shop.orders");
        assert!(lines[1].get("table").is_none());
        assert_eq!(lines[0]["pipeline"], "orders");
        assert_eq!(lines[0]["error"], "invalid JSON: EOF while parsing");
        assert_eq!(lines[0]["source"]["line"], 7);
        assert_eq!(lines[0]["source"]["file"], "events.jsonl");
        assert_eq!(lines[0]["raw"], "{\"op\":");
        assert_eq!(lines[1]["raw_base64"], "//4=");
    }
}
