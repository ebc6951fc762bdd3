//! A Kafka producer that knows whether what it sent arrived: the Kafka sink and the Kafka
//! dead-letter output send a batch, then `flush`, which returns only when the broker has
//! acknowledged every record (`acks=all`) or one has failed.
//!
//! The producer is idempotent, so librdkafka's own retries never write a record twice. A
//! failed flush drops the producer and the next send starts a new one: a fatal
//! idempotence error leaves a producer unusable, and after any failure the caller resends
//! the whole batch anyway (at-least-once: records acknowledged before the failure are
//! written again).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::util::Timeout;

use super::{Context, KafkaOptions, client_config};
use crate::metrics::Metrics;

/// Why a send or flush failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// This record can never be produced (larger than `message.max.bytes`): route it to
    /// the dead letters and go on.
    Refused(String),
    /// The broker refused the data for a reason retrying will not fix (authorisation, a
    /// record over the topic's size limit): stop with this message.
    Permanent(String),
    /// Try again later (broker unreachable, timed out).
    Retry(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Refused(m) | SendError::Permanent(m) | SendError::Retry(m) => f.write_str(m),
        }
    }
}

/// Errors no retry can fix.
fn is_permanent(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRequiredAcks
    )
}

pub struct DeliveryContext {
    base: Context,
    /// The first delivery failure since the last flush.
    failure: Mutex<Option<(Option<RDKafkaErrorCode>, String)>>,
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.base.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.base.error(error, reason);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            let mut failure = self.failure.lock().expect("failure lock");
            if failure.is_none() {
                *failure = Some((error.rdkafka_error_code(), error.to_string()));
            }
        }
    }
}

pub struct DeliveringProducer {
    config: ClientConfig,
    metrics: Arc<Metrics>,
    component: &'static str,
    producer: Option<BaseProducer<DeliveryContext>>,
}

impl DeliveringProducer {
    /// `component` names this producer in the health report and in errors.
    pub fn new(
        brokers: &str,
        options: &KafkaOptions,
        metrics: Arc<Metrics>,
        component: &'static str,
    ) -> Self {
        let mut config = client_config(brokers, options);
        config.set("enable.idempotence", "true");
        config.set("acks", "all");
        // librdkafka's default is 5 minutes; a shorter one turns a broker outage into a
        // retry with a visible status sooner.
        if !options.contains_key("message.timeout.ms")
            && !options.contains_key("delivery.timeout.ms")
        {
            config.set("message.timeout.ms", "30000");
        }
        DeliveringProducer {
            config,
            metrics,
            component,
            producer: None,
        }
    }

    fn producer(&mut self) -> Result<&BaseProducer<DeliveryContext>, SendError> {
        if self.producer.is_none() {
            let context = DeliveryContext {
                base: Context {
                    metrics: self.metrics.clone(),
                    component: self.component,
                },
                failure: Mutex::new(None),
            };
            let producer = self.config.create_with_context(context).map_err(|e| {
                SendError::Permanent(format!(
                    "{}: cannot create the producer: {}",
                    self.component,
                    crate::redact::redact(&e.to_string())
                ))
            })?;
            self.producer = Some(producer);
        }
        Ok(self.producer.as_ref().expect("created above"))
    }

    /// Queues one record. Waits while librdkafka's queue is full.
    pub fn send(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> Result<(), SendError> {
        let component = self.component;
        let producer = self.producer()?;
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(value) = value {
            record = record.payload(value);
        }
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        loop {
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(50));
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {
                    return Err(SendError::Refused(format!(
                        "the record is larger than the producer's message.max.bytes ({} bytes \
                         of value); raise `message.max.bytes` in the options (and the topic's \
                         max.message.bytes) to produce it",
                        value.map_or(0, <[u8]>::len)
                    )));
                }
                Err((error, _)) => {
                    let message = format!("{component}: cannot queue a record: {error}");
                    return Err(match error.rdkafka_error_code() {
                        Some(code) if is_permanent(code) => SendError::Permanent(message),
                        _ => SendError::Retry(message),
                    });
                }
            }
        }
    }

    /// Waits until every queued record is acknowledged. On failure the producer is
    /// dropped (a new one is made for the next send) and the caller resends.
    pub fn flush(&mut self) -> Result<(), SendError> {
        let Some(producer) = &self.producer else {
            return Ok(());
        };
        let flushed = producer.flush(Timeout::Never);
        let failure = producer
            .context()
            .failure
            .lock()
            .expect("failure lock")
            .take();
        let fatal = producer.client().fatal_error();
        let error = match (flushed, failure, fatal) {
            (Ok(()), None, None) => {
                self.metrics.health.ok(self.component);
                return Ok(());
            }
            (_, _, Some((code, reason))) => (
                Some(code),
                format!("fatal producer error: {code}: {reason}"),
            ),
            (_, Some((code, message)), None) => (code, format!("delivery failed: {message}")),
            (Err(e), None, None) => (e.rdkafka_error_code(), format!("flush failed: {e}")),
        };
        self.producer = None;
        let message =
            crate::redact::redact(&format!("{}: {}", self.component, error.1)).into_owned();
        self.metrics.health.failing(self.component, &message);
        Err(match error.0 {
            Some(code) if is_permanent(code) => SendError::Permanent(message),
            _ => SendError::Retry(message),
        })
    }
}

impl Drop for DeliveringProducer {
    fn drop(&mut self) {
        // Give queued records a moment; anything unsent is resent from the checkpoint.
        if let Some(producer) = &self.producer {
            let _ = producer.flush(Duration::from_secs(5));
        }
    }
}
