//! Where a record came from, and where to resume.
//!
//! Every record carries its [`Position`] (for dead letters and error messages). A
//! [`Checkpoint`] is the resume point per stream (a file, or a topic partition) after
//! everything up to it was durably applied. Sinks that can store it in the same
//! transaction as the data do so; that is what makes a restart lose nothing and apply
//! nothing twice.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// A line of a file: `line` is 1-based, `offset` is the byte offset where the line
    /// starts and `next` where the following line starts.
    File {
        stream: Arc<str>,
        line: u64,
        offset: u64,
        next: u64,
    },
    /// A Kafka record. `stream` is the checkpoint key `kafka:<topic>/<partition>`, built
    /// once per partition.
    Kafka {
        stream: Arc<str>,
        topic: Arc<str>,
        partition: i32,
        offset: i64,
    },
}

/// The checkpoint key of a topic partition.
pub fn kafka_stream(topic: &str, partition: i32) -> String {
    format!("kafka:{topic}/{partition}")
}

impl Position {
    /// The stream this position belongs to, as stored in checkpoints.
    pub fn stream_key(&self) -> &str {
        match self {
            Position::File { stream, .. } | Position::Kafka { stream, .. } => stream,
        }
    }

    /// The record's own offset in its stream, comparable with a checkpoint's `next`: a
    /// record is already applied when its offset is below the stored `next`.
    pub fn offset(&self) -> i64 {
        match self {
            Position::File { offset, .. } => *offset as i64,
            Position::Kafka { offset, .. } => *offset,
        }
    }

    /// The point to resume from once this record is applied.
    pub fn resume(&self) -> ResumePoint {
        match self {
            Position::File { line, next, .. } => ResumePoint {
                next: *next as i64,
                line: *line,
            },
            Position::Kafka { offset, .. } => ResumePoint {
                next: offset + 1,
                line: 0,
            },
        }
    }

    /// The JSON form used in dead letters.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Position::File {
                stream,
                line,
                offset,
                ..
            } => serde_json::json!({
                "file": stream.strip_prefix("file:").unwrap_or(stream),
                "line": line,
                "offset": offset,
            }),
            Position::Kafka {
                topic,
                partition,
                offset,
                ..
            } => serde_json::json!({"topic": &**topic, "partition": partition, "offset": offset}),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::File { stream, line, .. } => {
                write!(
                    f,
                    "{}:{line}",
                    stream.strip_prefix("file:").unwrap_or(stream)
                )
            }
            Position::Kafka {
                topic,
                partition,
                offset,
                ..
            } => write!(f, "topic {topic} partition {partition} offset {offset}"),
        }
    }
}

/// Where to continue reading one stream: the next byte offset (files) or the next offset
/// (Kafka), and for files the number of lines already consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ResumePoint {
    pub next: i64,
    #[serde(default)]
    pub line: u64,
}

/// Resume points for every stream a pipeline has read.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Checkpoint {
    pub streams: BTreeMap<String, ResumePoint>,
}

impl Checkpoint {
    pub fn advance(&mut self, position: &Position) {
        let resume = position.resume();
        match self.streams.get_mut(position.stream_key()) {
            Some(existing) if existing.next >= resume.next => {}
            Some(existing) => *existing = resume,
            None => {
                self.streams
                    .insert(position.stream_key().to_string(), resume);
            }
        }
    }

    /// True when `position` is before this checkpoint: its record was already applied.
    pub fn covers(&self, position: &Position) -> bool {
        self.streams
            .get(position.stream_key())
            .is_some_and(|resume| position.offset() < resume.next)
    }

    pub fn merge(&mut self, other: &Checkpoint) {
        for (stream, resume) in &other.streams {
            let entry = self.streams.entry(stream.clone()).or_insert(*resume);
            if resume.next > entry.next {
                *entry = *resume;
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    pub fn get(&self, stream: &str) -> Option<ResumePoint> {
        self.streams.get(stream).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_only_move_forward() {
        let stream: Arc<str> = "file:a.jsonl".into();
        let at = |line, next| Position::File {
            stream: stream.clone(),
            line,
            offset: 0,
            next,
        };
        let mut cp = Checkpoint::default();
        cp.advance(&at(2, 20));
        cp.advance(&at(1, 10));
        assert_eq!(
            cp.get("file:a.jsonl"),
            Some(ResumePoint { next: 20, line: 2 })
        );
        let kafka = Position::Kafka {
            stream: kafka_stream("orders", 3).into(),
            topic: "orders".into(),
            partition: 3,
            offset: 41,
        };
        cp.advance(&kafka);
        assert_eq!(cp.get("kafka:orders/3").unwrap().next, 42);
        assert!(!cp.covers(&kafka) || kafka.offset() < 42);
        let later = Position::Kafka {
            stream: kafka_stream("orders", 3).into(),
            topic: "orders".into(),
            partition: 3,
            offset: 42,
        };
        assert!(cp.covers(&kafka), "offset 41 was applied");
        assert!(!cp.covers(&later), "offset 42 was not");
        assert_eq!(kafka.to_string(), "topic orders partition 3 offset 41");
        assert_eq!(at(7, 0).to_string(), "a.jsonl:7");
    }
}
