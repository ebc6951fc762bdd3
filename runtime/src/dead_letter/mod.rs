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
pub mod replay;

use std::path::PathBuf;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::config::LoadedPipeline;
use crate::metrics::Metrics;
use crate::plugin::stats::OUTCOMES;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

    /// The stage [`Stage::as_str`] names.
    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|stage| stage.as_str() == name)
    }

    /// The classes of reason a dead letter of this stage can have (`/metrics` shows each
    /// from 0, so the first of a class is an increase an alert sees).
    pub fn reason_classes(self) -> &'static [&'static str] {
        match self {
            Stage::Source => &["unreadable"],
            Stage::Route => &["other_table", "unknown_table"],
            Stage::Decode => &[
                "too_large",
                "invalid_json",
                "invalid_key",
                "invalid_value",
                "invalid_event",
            ],
            Stage::Transform => &PLUGIN_REASONS[1..],
            Stage::Sink => &PLUGIN_REASONS,
        }
    }

    /// The class of a dead letter's reason, one of [`Stage::reason_classes`]: for a
    /// plugin's (a transform's, or a conflict resolver's at the sink), the code its reason
    /// starts with (`plugin_timeout: …` is `timeout`, a row the plugin refused is
    /// `rejected`); for a decode, what was wrong with the record.
    pub fn reason_class(self, error: &str) -> &'static str {
        let classes = self.reason_classes();
        let plugin_code = error
            .split(':')
            .next()
            .and_then(|code| code.strip_prefix("plugin_"))
            .map(|code| {
                if code == "row_error" {
                    "rejected"
                } else {
                    code
                }
            });
        match self {
            Stage::Transform | Stage::Sink if plugin_code.is_some() => {
                let code = plugin_code.unwrap_or_default();
                classes
                    .iter()
                    .find(|c| **c == code)
                    .copied()
                    .unwrap_or("error")
            }
            Stage::Transform => "error",
            Stage::Decode => {
                // By what the decoder's messages start with: a column's value may hold any
                // of the words looked for.
                if error.starts_with("column `") {
                    "invalid_value"
                } else if error.starts_with("invalid JSON") {
                    "invalid_json"
                } else if error.starts_with("the record has ") && error.contains("max_record_bytes")
                {
                    "too_large"
                } else if error.starts_with("the record key") {
                    if error.contains("not valid JSON") {
                        "invalid_json"
                    } else {
                        "invalid_key"
                    }
                } else {
                    "invalid_event"
                }
            }
            // The router could not read the event's `source` block.
            Stage::Route if error.contains("cannot read which table") => "unknown_table",
            Stage::Source | Stage::Route | Stage::Sink => classes[0],
        }
    }
}

/// The reasons of the sink stage: the target refused the row, or a conflict resolver
/// plugin refused it or failed, by the failure's outcome (the transform stage's are the
/// same without `refused`). Made from the plugin outcomes, so a new one is a class here.
const PLUGIN_REASONS: [&str; OUTCOMES.len() + 1] = {
    let mut reasons = [""; OUTCOMES.len() + 1];
    reasons[0] = "refused";
    reasons[1] = "rejected";
    // Every outcome but `ok`, which is no dead letter.
    let mut i = 1;
    while i < OUTCOMES.len() {
        reasons[i + 1] = OUTCOMES[i];
        i += 1;
    }
    reasons
};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_classed_by_their_stage_and_code() {
        let cases = [
            (
                Stage::Transform,
                "plugin_row_error: no email (plugin `mask`)",
                "rejected",
            ),
            (
                Stage::Transform,
                "plugin_timeout: the call ran past its 100 ms deadline",
                "timeout",
            ),
            (
                Stage::Transform,
                "plugin_oom: the plugin reached its memory cap",
                "oom",
            ),
            (
                Stage::Transform,
                "plugin_trap: the call for this row's batch failed",
                "trap",
            ),
            (Stage::Transform, "something else", "error"),
            (
                Stage::Decode,
                "the record has 9 bytes, more than batch.max_record_bytes",
                "too_large",
            ),
            (
                Stage::Decode,
                "invalid JSON: expected value at line 1",
                "invalid_json",
            ),
            (
                Stage::Decode,
                "the record key is not valid JSON: eof",
                "invalid_json",
            ),
            (
                Stage::Decode,
                "the record key is not a JSON object",
                "invalid_key",
            ),
            (
                Stage::Decode,
                "column `price`: `x` is not a number",
                "invalid_value",
            ),
            (
                Stage::Decode,
                "the event's `payload` has no `op` field",
                "invalid_event",
            ),
            (
                Stage::Route,
                "a change of `public.b`, not `public.a`",
                "other_table",
            ),
            (
                Stage::Route,
                "weir cannot read which table the event is for (its `source` block is not well-formed JSON)",
                "unknown_table",
            ),
            (Stage::Sink, "violates check constraint", "refused"),
            (
                Stage::Sink,
                "plugin_timeout: the call ran past its 5 ms deadline (resolver `lww`)",
                "timeout",
            ),
            (
                Stage::Sink,
                "plugin_row_error: stale (resolver `lww`)",
                "rejected",
            ),
            (Stage::Transform, "plugin_something_new: x", "error"),
        ];
        for (stage, error, class) in cases {
            assert_eq!(stage.reason_class(error), class, "{error}");
            assert!(stage.reason_classes().contains(&class));
        }
    }
}
