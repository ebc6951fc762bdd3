//! What the Kafka source, the Kafka sink and the Kafka dead-letter output share: client
//! settings (with pass-through librdkafka options for TLS, SASL and tuning), librdkafka's
//! log routed to `tracing`, and a status that says whether the broker is reachable.

pub mod offsets;
pub mod producer;

use std::borrow::Cow;
use std::sync::Arc;

use crate::metrics::Metrics;

use indexmap::IndexMap;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use schemars::JsonSchema;
use serde::Deserialize;

/// A librdkafka setting's value; numbers and booleans are written as YAML scalars.
#[derive(Debug, Clone, PartialEq)]
pub struct OptionValue(pub String);

impl<'de> Deserialize<'de> for OptionValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(OptionValue(s)),
            serde_json::Value::Bool(b) => Ok(OptionValue(b.to_string())),
            serde_json::Value::Number(n) => Ok(OptionValue(n.to_string())),
            _ => Err(serde::de::Error::custom(
                "expected a string, number or boolean",
            )),
        }
    }
}

impl JsonSchema for OptionValue {
    fn schema_name() -> Cow<'static, str> {
        "KafkaOptionValue".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": ["string", "number", "integer", "boolean"]})
    }
}

/// librdkafka settings passed through as they are (`security.protocol`, `sasl.mechanism`,
/// `sasl.username`, `sasl.password`, `ssl.ca.location`, `fetch.wait.max.ms`, ...). Take
/// secrets from the environment with `${VAR}`; weir never prints these values.
pub type KafkaOptions = IndexMap<String, OptionValue>;

/// Settings weir manages itself: changing them would break its delivery guarantees.
const MANAGED: [&str; 5] = [
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
];

/// A problem with `options`, for config validation.
pub fn check_options(options: &KafkaOptions) -> Vec<(String, String)> {
    options
        .keys()
        .filter(|k| MANAGED.contains(&k.as_str()))
        .map(|k| {
            (
                k.clone(),
                format!(
                    "`{k}` is managed by weir (offsets are committed only after the sink has \
                     applied the data); set `brokers`, `group_id` or `start` instead"
                ),
            )
        })
        .collect()
}

/// Producer settings weir manages: the idempotent producer needs all of them as they are.
const MANAGED_BY_PRODUCER: [&str; 4] = [
    "bootstrap.servers",
    "enable.idempotence",
    "acks",
    "transactional.id",
];

/// A problem with a producer's `options`, for config validation.
pub fn check_producer_options(options: &KafkaOptions) -> Vec<(String, String)> {
    options
        .keys()
        .filter(|k| MANAGED_BY_PRODUCER.contains(&k.as_str()))
        .map(|k| {
            (
                k.clone(),
                format!(
                    "`{k}` is managed by weir (records are produced by the idempotent producer \
                     with acks=all); set `brokers` instead of bootstrap.servers"
                ),
            )
        })
        .collect()
}

/// A client configuration with the pass-through options applied.
pub fn client_config(brokers: &str, options: &KafkaOptions) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (key, value) in options {
        config.set(key, &value.0);
    }
    config.set_log_level(RDKafkaLogLevel::Warning);
    config
}

/// Routes librdkafka's log to `tracing` and its errors to the pipeline's health.
pub struct Context {
    pub metrics: Arc<Metrics>,
    /// The component name in the health report (`kafka source`, `kafka sink`, …).
    pub component: &'static str,
}

impl Context {
    pub fn failing(&self, problem: &str) {
        self.metrics.health.failing(self.component, problem);
    }

    pub fn ok(&self) {
        self.metrics.health.ok(self.component);
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let message = crate::redact::redact(message);
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(facility, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(facility, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka reports broker trouble here and keeps retrying by itself.
        self.failing(&format!("{error}: {reason}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_settings_are_refused() {
        let mut options = KafkaOptions::new();
        options.insert("enable.auto.commit".into(), OptionValue("true".into()));
        options.insert("fetch.wait.max.ms".into(), OptionValue("5".into()));
        let problems = check_options(&options);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "enable.auto.commit");
    }
}
