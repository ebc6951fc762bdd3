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
    /// A row read from PostgreSQL by the `postgres-cdc` source: a change of the
    /// replication stream (`stream` is `postgres:<slot>`, `at` the commit LSN of its
    /// transaction and `seq` its place in it), or a row of a table's initial copy
    /// (`postgres-snapshot:<schema>.<table>`, ordered by primary key). `resume` is where the
    /// stream resumes once this row is applied; `lsn` is the WAL position shown to users.
    Postgres {
        stream: Arc<str>,
        at: i64,
        seq: u64,
        resume: ResumePoint,
        lsn: u64,
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
            Position::File { stream, .. }
            | Position::Kafka { stream, .. }
            | Position::Postgres { stream, .. } => stream,
        }
    }

    /// The record's own offset in its stream, comparable with a checkpoint's `next`.
    pub fn offset(&self) -> i64 {
        match self {
            Position::File { offset, .. } => *offset as i64,
            Position::Kafka { offset, .. } => *offset,
            Position::Postgres { at, .. } => *at,
        }
    }

    /// The record's place in its stream, comparable with a checkpoint's `(next, line)`: a
    /// record is already applied when its place is below the stored one. For files the
    /// second part is the number of lines before it, so the next unread line compares equal
    /// to the checkpoint; Kafka records need only the offset.
    pub fn order(&self) -> (i64, u64) {
        match self {
            Position::File { offset, line, .. } => (*offset as i64, line.saturating_sub(1)),
            Position::Kafka { offset, .. } => (*offset, 0),
            Position::Postgres { at, seq, .. } => (*at, *seq),
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
            Position::Postgres { resume, .. } => *resume,
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
            Position::Postgres { stream, lsn, .. } => {
                serde_json::json!({"stream": &**stream, "lsn": crate::source::postgres_cdc::lsn_text(*lsn)})
            }
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
            Position::Postgres { stream, lsn, .. } => write!(
                f,
                "{stream} at LSN {}",
                crate::source::postgres_cdc::lsn_text(*lsn)
            ),
        }
    }
}

/// Where to continue reading one stream: the next byte offset (files) or the next offset
/// (Kafka), and for files the number of lines already consumed. For PostgreSQL, a commit
/// LSN and the number of that transaction's changes applied, or the end LSN of the last
/// transaction applied whole with `line` 0. Resume points compare as `(next, line)`.
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

impl ResumePoint {
    fn order(&self) -> (i64, u64) {
        (self.next, self.line)
    }
}

impl Checkpoint {
    pub fn advance(&mut self, position: &Position) {
        let resume = position.resume();
        match self.streams.get_mut(position.stream_key()) {
            Some(existing) if existing.order() >= resume.order() => {}
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
            .is_some_and(|resume| position.order() < resume.order())
    }

    pub fn merge(&mut self, other: &Checkpoint) {
        for (stream, resume) in &other.streams {
            let entry = self.streams.entry(stream.clone()).or_insert(*resume);
            if resume.order() > entry.order() {
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

        // PostgreSQL: a transaction applied in part is resumed inside it; one applied whole
        // resumes at its end, before the next transaction's first change.
        let change = |at: i64, seq: u64, resume: (i64, u64)| Position::Postgres {
            stream: "postgres:s".into(),
            at,
            seq,
            resume: ResumePoint {
                next: resume.0,
                line: resume.1,
            },
            lsn: at as u64,
        };
        let mut cp = Checkpoint::default();
        cp.advance(&change(100, 1, (100, 2)));
        assert!(cp.covers(&change(100, 1, (100, 2))));
        assert!(
            !cp.covers(&change(100, 2, (150, 0))),
            "the second change is not applied"
        );
        cp.advance(&change(100, 2, (150, 0)));
        assert!(cp.covers(&change(100, 2, (150, 0))));
        assert!(
            !cp.covers(&change(150, 1, (150, 2))),
            "a transaction committed right after"
        );
        cp.advance(&change(100, 1, (100, 2)));
        assert_eq!(
            cp.get("postgres:s"),
            Some(ResumePoint { next: 150, line: 0 })
        );
        assert_eq!(at(7, 0).to_string(), "a.jsonl:7");
    }
}
