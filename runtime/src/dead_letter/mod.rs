//! The dead-letter output: records that could not be processed, with the reason.
//!
//! Nothing is dropped silently. A record that fails to decode (or, later, a row a plugin
//! rejects) is written here with the stage that failed, the error, its source position and
//! the raw record, and the pipeline goes on. Dead letters are made durable (fsynced, or
//! acknowledged by the broker) before the checkpoint moves past them, so a crash cannot lose one; after a crash a dead letter may
//! be written twice (its position identifies the duplicate).
//!
//! Outputs: a JSON Lines file ([`file`]) or a Kafka topic ([`kafka`]).

pub mod file;
pub mod kafka;

use std::path::PathBuf;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::config::LoadedPipeline;
use crate::metrics::Metrics;
use crate::position::Position;

/// Where dead letters go.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum DeadLetterConfig {
    /// A JSON Lines file, appended to.
    File(file::FileDeadLetterConfig),
    /// A Kafka topic: each dead letter is the original record (key and value) with the
    /// reason and position in `weir.*` headers.
    Kafka(kafka::KafkaDeadLetterConfig),
}

impl DeadLetterConfig {
    pub fn file(path: impl Into<PathBuf>) -> Self {
        DeadLetterConfig::File(file::FileDeadLetterConfig { path: path.into() })
    }

    /// Where dead letters go, for people: the file's path or the topic.
    pub fn describe(&self, pipeline: &LoadedPipeline) -> String {
        match self {
            DeadLetterConfig::File(config) => pipeline.resolve(&config.path).display().to_string(),
            DeadLetterConfig::Kafka(config) => format!("kafka topic {}", config.topic),
        }
    }
}

/// The pipeline stage where a record failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Source,
    /// The event is a row change of another table than the pipeline's.
    Route,
    Decode,
    Transform,
    Sink,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Source,
        Stage::Route,
        Stage::Decode,
        Stage::Transform,
        Stage::Sink,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Source => "source",
            Stage::Route => "route",
            Stage::Decode => "decode",
            Stage::Transform => "transform",
            Stage::Sink => "sink",
        }
    }
}

/// One rejected record.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub stage: Stage,
    pub error: &'a str,
    /// The source table the record is for, when known.
    pub table: Option<&'a str>,
    pub position: Option<&'a Position>,
    pub key: Option<&'a [u8]>,
    pub raw: Option<&'a [u8]>,
}

pub trait DeadLetterSink: Send {
    fn write(&mut self, letter: &DeadLetter<'_>) -> std::io::Result<()>;
    /// Makes every letter written so far durable.
    fn flush(&mut self) -> std::io::Result<()>;
    fn describe(&self) -> String;
}

/// Builds the pipeline's dead-letter output.
pub fn build(
    pipeline: &LoadedPipeline,
    metrics: Arc<Metrics>,
) -> Result<Box<dyn DeadLetterSink>, String> {
    match pipeline.dead_letter() {
        DeadLetterConfig::File(config) => Ok(Box::new(file::FileDeadLetters::new(
            &pipeline.resolve(&config.path),
            &pipeline.config.name,
        ))),
        DeadLetterConfig::Kafka(config) => Ok(Box::new(kafka::KafkaDeadLetters::new(
            &config,
            &pipeline.config.name,
            metrics,
        ))),
    }
}
