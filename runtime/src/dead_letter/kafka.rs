//! Dead letters as records in a Kafka topic.
//!
//! Each dead letter is the original record (its key and value as they arrived, so it can
//! be produced back to the source topic once fixed), with the reason and position in
//! headers:
//!
//! | header | value |
//! |---|---|
//! | `weir.pipeline` | the pipeline's name |
//! | `weir.error.stage` | `source`, `decode`, `transform` or `sink` |
//! | `weir.error.message` | the reason (secrets redacted) |
//! | `weir.error.time` | when, ISO-8601 UTC |
//! | `weir.source.table` | the source table, when known |
//! | `weir.source.topic`, `weir.source.partition`, `weir.source.offset` | a Kafka record's position |
//! | `weir.source.file`, `weir.source.line`, `weir.source.offset` | a file record's position |
//!
//! `flush` returns once the broker has acknowledged every dead letter, and the pipeline
//! flushes before it commits past them. While the broker is unreachable, `flush` resends
//! with backoff for up to `retry_for`, then fails, which stops the pipeline without
//! committing past the records (they are read again on restart).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{DeadLetter, DeadLetterSink};
use crate::config::HumanDuration;
use crate::kafka::KafkaOptions;
use crate::kafka::producer::{DeliveringProducer, SendError};
use crate::metrics::Metrics;
use crate::position::Position;
use crate::redact::redact;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaDeadLetterConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    #[schemars(length(min = 1))]
    pub brokers: String,
    /// The dead-letter topic.
    #[schemars(length(min = 1))]
    pub topic: String,
    /// How long to keep resending while the broker is unreachable before the pipeline
    /// stops.
    #[serde(default = "default_retry_for")]
    pub retry_for: HumanDuration,
    /// librdkafka producer settings passed through (TLS, SASL, `message.max.bytes`, ...).
    #[serde(default)]
    pub options: KafkaOptions,
}

fn default_retry_for() -> HumanDuration {
    HumanDuration(Duration::from_secs(120))
}

/// A record too large for the producer keeps this much of its value; the whole record
/// is still in the source at its position.
const KEEP_OF_REFUSED: usize = 512 * 1024;

/// A dead letter not yet acknowledged, kept to resend.
struct Pending {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(&'static str, String)>,
}

impl Pending {
    fn headers(&self) -> OwnedHeaders {
        let mut headers = OwnedHeaders::new_with_capacity(self.headers.len());
        for (name, value) in &self.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        headers
    }
}

pub struct KafkaDeadLetters {
    topic: String,
    pipeline: String,
    retry_for: Duration,
    producer: DeliveringProducer,
    pending: Vec<Pending>,
}

impl KafkaDeadLetters {
    pub fn new(config: &KafkaDeadLetterConfig, pipeline: &str, metrics: Arc<Metrics>) -> Self {
        KafkaDeadLetters {
            topic: config.topic.clone(),
            pipeline: pipeline.to_string(),
            retry_for: config.retry_for.0,
            producer: DeliveringProducer::new(
                &config.brokers,
                &config.options,
                metrics,
                "dead-letter topic",
            ),
            pending: Vec::new(),
        }
    }

    fn send(&mut self, index: usize) -> Result<(), SendError> {
        let letter = &self.pending[index];
        let sent = self.producer.send(
            &self.topic,
            letter.key.as_deref(),
            letter.value.as_deref(),
            Some(letter.headers()),
        );
        match sent {
            Err(SendError::Refused(_)) => {
                let letter = &mut self.pending[index];
                if let Some(value) = &mut letter.value {
                    letter
                        .headers
                        .push(("weir.raw.original_bytes", value.len().to_string()));
                    value.truncate(KEEP_OF_REFUSED);
                }
                let letter = &self.pending[index];
                self.producer.send(
                    &self.topic,
                    letter.key.as_deref(),
                    letter.value.as_deref(),
                    Some(letter.headers()),
                )
            }
            other => other,
        }
    }
}

fn io_error(error: SendError) -> std::io::Error {
    std::io::Error::other(error.to_string())
}

/// The `weir.*` headers of a dead letter.
pub fn letter_headers(letter: &DeadLetter<'_>, pipeline: &str) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("weir.pipeline", pipeline.to_string()),
        ("weir.error.stage", letter.stage.as_str().to_string()),
        ("weir.error.message", redact(letter.error).into_owned()),
        (
            "weir.error.time",
            chrono::Utc::now()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string(),
        ),
    ];
    if let Some(table) = letter.table {
        headers.push(("weir.source.table", table.to_string()));
    }
    match letter.position {
        Some(Position::Kafka {
            topic,
            partition,
            offset,
            ..
        }) => {
            headers.push(("weir.source.topic", topic.to_string()));
            headers.push(("weir.source.partition", partition.to_string()));
            headers.push(("weir.source.offset", offset.to_string()));
        }
        Some(Position::File {
            stream,
            line,
            offset,
            ..
        }) => {
            let file = stream.strip_prefix("file:").unwrap_or(stream);
            headers.push(("weir.source.file", file.to_string()));
            headers.push(("weir.source.line", line.to_string()));
            headers.push(("weir.source.offset", offset.to_string()));
        }
        Some(Position::Postgres { stream, lsn, .. }) => {
            headers.push(("weir.source.stream", stream.to_string()));
            headers.push((
                "weir.source.lsn",
                crate::source::postgres_cdc::lsn_text(*lsn),
            ));
        }
        None => {}
    }
    headers
}

impl DeadLetterSink for KafkaDeadLetters {
    fn write(&mut self, letter: &DeadLetter<'_>) -> std::io::Result<()> {
        self.pending.push(Pending {
            key: letter.key.map(<[u8]>::to_vec),
            value: letter.raw.map(<[u8]>::to_vec),
            headers: letter_headers(letter, &self.pipeline),
        });
        match self.send(self.pending.len() - 1) {
            // A broker that is down now is retried by `flush`.
            Ok(()) | Err(SendError::Retry(_)) => Ok(()),
            Err(e) => Err(io_error(e)),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.retry_for;
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.producer.flush() {
                Ok(()) => {
                    self.pending.clear();
                    return Ok(());
                }
                Err(SendError::Retry(message)) if Instant::now() < deadline => {
                    tracing::warn!(
                        "dead letters not acknowledged yet, resending in {backoff:?}: {message}"
                    );
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    // The failed producer is gone; resend everything not acknowledged.
                    for index in 0..self.pending.len() {
                        match self.send(index) {
                            Ok(()) | Err(SendError::Retry(_)) => {}
                            Err(e) => return Err(io_error(e)),
                        }
                    }
                }
                Err(e) => {
                    return Err(std::io::Error::other(format!(
                        "{} dead letters were not acknowledged by the broker: {e}",
                        self.pending.len()
                    )));
                }
            }
        }
    }

    fn describe(&self) -> String {
        format!("kafka topic {}", self.topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letter::Stage;

    #[test]
    fn headers_carry_stage_reason_and_position() {
        let position = Position::Kafka {
            stream: "kafka:orders/3".into(),
            topic: "orders".into(),
            partition: 3,
            offset: 42,
        };
        let letter = DeadLetter {
            stage: Stage::Decode,
            error: "bad value in postgres://weir:hunter2@db/app",
            table: Some("public.orders"),
            position: Some(&position),
            key: None,
            raw: Some(b"{"),
        };
        let headers = letter_headers(&letter, "orders");
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("weir.error.stage"), Some("decode"));
        assert_eq!(get("weir.source.table"), Some("public.orders"));
        assert_eq!(get("weir.source.topic"), Some("orders"));
        assert_eq!(get("weir.source.partition"), Some("3"));
        assert_eq!(get("weir.source.offset"), Some("42"));
        assert_eq!(get("weir.source.file"), None);
        let message = get("weir.error.message").unwrap();
        assert!(!message.contains("hunter2"), "{message}");
    }
}
