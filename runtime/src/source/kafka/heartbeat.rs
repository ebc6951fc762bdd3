//! Debezium heartbeats on a Kafka source: they tell an idle source from a broken one.
//!
//! Debezium writes a record to `__debezium-heartbeat.<prefix>` every
//! `heartbeat.interval.ms`, even when its database is idle. weir reads that topic with a
//! consumer of its own, outside the consumer group: every weir process of a group wants to
//! know the source is alive, and heartbeats carry no change to apply or position to keep,
//! so they are read from the end of the topic. When neither a change event nor a heartbeat
//! has arrived within `heartbeat.timeout`, the source reports itself failing, and the
//! pipeline's state is `degraded` with the reason until one arrives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::config::HumanDuration;
use crate::kafka::{Context, client_config};
use crate::metrics::Metrics;

use super::KafkaSourceConfig;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaHeartbeatConfig {
    /// The heartbeat topic. Defaults to Debezium's `__debezium-heartbeat.<prefix>`.
    #[serde(default)]
    pub topic: Option<String>,
    /// Debezium's `topic.prefix`, for the default topic. Defaults to the first part of the
    /// source's topics (`shop` for `shop.public.orders`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// The pipeline is `degraded` when neither a change event nor a heartbeat has arrived
    /// for this long, e.g. `60s` (a few of Debezium's `heartbeat.interval.ms`).
    pub timeout: HumanDuration,
}

impl KafkaHeartbeatConfig {
    /// The topic to read, or why it cannot be told.
    pub fn topic(&self, source: &KafkaSourceConfig) -> Result<String, String> {
        if let Some(topic) = &self.topic {
            return Ok(topic.clone());
        }
        if let Some(prefix) = &self.prefix {
            return Ok(format!("__debezium-heartbeat.{prefix}"));
        }
        let prefixes: std::collections::BTreeSet<&str> = source
            .topics
            .iter()
            .filter_map(|t| t.split_once('.').map(|(prefix, _)| prefix))
            .collect();
        match (prefixes.len(), source.topics.len()) {
            (1, n) if n > 0 => Ok(format!(
                "__debezium-heartbeat.{}",
                prefixes.first().expect("one prefix")
            )),
            _ => Err(
                "cannot tell Debezium's topic prefix from the source's topics: give \
                      `heartbeat.prefix` or `heartbeat.topic`"
                    .into(),
            ),
        }
    }
}

/// The health component missing heartbeats are reported under.
pub const HEALTH: &str = "source heartbeats";

/// How often a heartbeat topic that could not be found is looked for again.
const FIND_TOPIC_EVERY: Duration = Duration::from_secs(5);

/// A heartbeat value larger than this is not parsed (its time is taken from the record).
const MAX_HEARTBEAT_BYTES: usize = 64 * 1024;

pub struct HeartbeatWatch {
    consumer: BaseConsumer<Context>,
    topic: String,
    timeout: Duration,
    /// When the topic's partitions were assigned, or last looked for.
    assigned: bool,
    last_lookup: Option<Instant>,
    /// When a change event or a heartbeat last arrived (or the watch began).
    last_sign_of_life: Instant,
    last_heartbeat: Option<Instant>,
    metrics: Arc<Metrics>,
}

impl HeartbeatWatch {
    pub fn open(
        source: &KafkaSourceConfig,
        heartbeat: &KafkaHeartbeatConfig,
        pipeline_name: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let topic = heartbeat.topic(source)?;
        let mut client = client_config(&source.brokers, &source.options);
        // Assigned partitions only: no group membership, no commits.
        client
            .set("group.id", format!("weir-{pipeline_name}-heartbeats"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "latest")
            .set("client.id", format!("weir-{pipeline_name}-heartbeats"));
        let consumer = client
            .create_with_context(Context {
                metrics: metrics.clone(),
                component: "kafka heartbeat consumer",
            })
            .map_err(|e| format!("cannot create the heartbeat consumer: {e}"))?;
        Ok(HeartbeatWatch {
            consumer,
            topic,
            timeout: heartbeat.timeout.0,
            assigned: false,
            last_lookup: None,
            last_sign_of_life: Instant::now(),
            last_heartbeat: None,
            metrics,
        })
    }

    /// Change events arrived.
    pub fn events_arrived(&mut self) {
        self.last_sign_of_life = Instant::now();
        self.metrics.health.ok(HEALTH);
    }

    /// Reads the heartbeats that arrived. With `judge`, also decides whether the source
    /// has been silent too long (only where the source found nothing to read: a pipeline
    /// that was busy applying did not look).
    pub fn check(&mut self, judge: bool) {
        if !self.assigned {
            self.find_topic();
        }
        if self.assigned {
            // Drain what arrived; a bounded number per call, the rest comes next time.
            for _ in 0..1024 {
                match self.consumer.poll(Duration::ZERO) {
                    Some(Ok(message)) => {
                        let at = message
                            .payload()
                            .and_then(heartbeat_time)
                            .or_else(|| message.timestamp().to_millis())
                            .and_then(DateTime::<Utc>::from_timestamp_millis)
                            .unwrap_or_else(Utc::now);
                        self.metrics.lifecycle.heartbeat_seen(at);
                        self.last_heartbeat = Some(Instant::now());
                        self.last_sign_of_life = Instant::now();
                        self.metrics.health.ok(HEALTH);
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, topic = %self.topic, "heartbeat consumer");
                        break;
                    }
                    None => break,
                }
            }
        }
        let silent = self.last_sign_of_life.elapsed();
        if judge && silent > self.timeout {
            let heard = match self.last_heartbeat {
                Some(at) => format!("the last heartbeat came {}s ago", at.elapsed().as_secs()),
                None => "no heartbeat has arrived since the pipeline started".into(),
            };
            let found = match self.assigned {
                true => String::new(),
                false => " (the topic was not found on the broker)".into(),
            };
            self.metrics.health.failing(
                HEALTH,
                &format!(
                    "no change event and no heartbeat on `{}`{found} for {}s (heartbeat.timeout \
                     {}s): Debezium or its database may be down; {heard}",
                    self.topic,
                    silent.as_secs(),
                    self.timeout.as_secs_f64()
                ),
            );
        }
    }

    /// Assigns every partition of the heartbeat topic at its end, if the topic exists.
    fn find_topic(&mut self) {
        if self
            .last_lookup
            .is_some_and(|at| at.elapsed() < FIND_TOPIC_EVERY)
        {
            return;
        }
        self.last_lookup = Some(Instant::now());
        let metadata = match self
            .consumer
            .fetch_metadata(Some(&self.topic), Duration::from_secs(2))
        {
            Ok(metadata) => metadata,
            Err(e) => {
                tracing::debug!(error = %e, topic = %self.topic, "heartbeat topic metadata");
                return;
            }
        };
        let mut list = TopicPartitionList::new();
        for topic in metadata.topics() {
            if topic.name() != self.topic || topic.error().is_some() {
                continue;
            }
            for partition in topic.partitions() {
                let _ = list.add_partition_offset(&self.topic, partition.id(), Offset::End);
            }
        }
        if list.count() == 0 {
            return;
        }
        match self.consumer.assign(&list) {
            Ok(()) => {
                tracing::info!(topic = %self.topic, partitions = list.count(), "reading heartbeats");
                self.assigned = true;
            }
            Err(e) => tracing::warn!(error = %e, topic = %self.topic, "cannot read heartbeats"),
        }
    }
}

/// The time a Debezium heartbeat was written: `ts_ms` of its value, with or without the
/// schema envelope.
fn heartbeat_time(value: &[u8]) -> Option<i64> {
    if value.len() > MAX_HEARTBEAT_BYTES {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(value).ok()?;
    let body = value.get("payload").unwrap_or(&value);
    body.get("ts_ms")?.as_i64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(topics: &[&str]) -> KafkaSourceConfig {
        serde_json::from_value(serde_json::json!({
            "brokers": "localhost:9092",
            "topics": topics,
            "group_id": "g",
        }))
        .expect("a valid source config")
    }

    fn heartbeat(value: serde_json::Value) -> KafkaHeartbeatConfig {
        serde_json::from_value(value).expect("a valid heartbeat config")
    }

    #[test]
    fn the_topic_follows_debeziums_prefix() {
        let timeout = serde_json::json!({"timeout": "10s"});
        let shop = source(&["shop.public.orders", "shop.public.items"]);
        assert_eq!(
            heartbeat(timeout.clone()).topic(&shop),
            Ok("__debezium-heartbeat.shop".into())
        );
        let mixed = source(&["shop.public.orders", "crm.public.people"]);
        assert!(heartbeat(timeout).topic(&mixed).is_err());
        let named = heartbeat(serde_json::json!({"timeout": "10s", "prefix": "crm"}));
        assert_eq!(named.topic(&mixed), Ok("__debezium-heartbeat.crm".into()));
        let topic = heartbeat(serde_json::json!({"timeout": "10s", "topic": "beats"}));
        assert_eq!(topic.topic(&mixed), Ok("beats".into()));
    }

    #[test]
    fn heartbeat_times_come_from_ts_ms_with_or_without_schemas() {
        assert_eq!(
            heartbeat_time(br#"{"ts_ms": 1700000000123}"#),
            Some(1700000000123)
        );
        assert_eq!(
            heartbeat_time(br#"{"schema": {}, "payload": {"ts_ms": 5}}"#),
            Some(5)
        );
        assert_eq!(heartbeat_time(b"not json"), None);
        assert_eq!(heartbeat_time(br#"{"ts_ms": "soon"}"#), None);
    }
}
