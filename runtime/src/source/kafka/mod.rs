//! The Kafka source: Debezium topics read through a consumer group (librdkafka).
//!
//! Offsets are never committed by librdkafka on its own (`enable.auto.commit=false`,
//! `enable.auto.offset.store=false`). The pipeline commits a partition's offset only after
//! the sink has durably applied everything before it ([`KafkaCommitter`]). When partitions
//! are assigned, each starts at the checkpoint the sink stored with its data, if it has one
//! (so a crash between the sink's commit and the broker's commit neither loses nor repeats
//! a change), else at the group's committed offset, else where `start` says.
//!
//! A stored position the broker no longer holds (retention deleted the records while the
//! pipeline was stopped) is a gap, never skipped: the first record after an assignment is
//! checked against the partition's log start, and a gap stops the run in
//! `resync-required` (see [`KafkaSource::first_record`]). Debezium's heartbeats tell an
//! idle source from a broken one ([`heartbeat`]).
//!
//! A broker that is down is not an error: librdkafka keeps reconnecting, the status line
//! says so, and reading resumes when the broker is back.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers as _, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use schemars::JsonSchema;
use serde::Deserialize;

pub mod heartbeat;

use super::{Committer, PollLimits, PollStatus, RawBatch, Source, SourceError};
use crate::config::LoadedPipeline;
use crate::decode::Format;
use crate::kafka::{Context, KafkaOptions, client_config};
use crate::metrics::Metrics;
use crate::position::{Checkpoint, Position, kafka_stream};
use heartbeat::{HeartbeatWatch, KafkaHeartbeatConfig};

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    #[schemars(length(min = 1))]
    pub brokers: String,
    /// Topics to read. Give this or `topic_pattern`.
    #[serde(default)]
    pub topics: Vec<String>,
    /// A regular expression for the topics to read (e.g. `^shop\.public\..*`), instead of
    /// `topics`.
    #[serde(default)]
    pub topic_pattern: Option<String>,
    /// Consumer group. Several weir processes with one group share the partitions.
    #[schemars(length(min = 1))]
    pub group_id: String,
    /// Where to begin a partition that has no stored position (neither a checkpoint in the
    /// sink nor a committed offset in the group).
    #[serde(default)]
    pub start: Start,
    /// The shape of each record's value.
    #[serde(default)]
    pub format: Format,
    /// librdkafka settings passed through (TLS, SASL, tuning), e.g.
    /// `security.protocol: SASL_SSL`, `sasl.password: ${KAFKA_PASSWORD}`.
    #[serde(default)]
    pub options: KafkaOptions,
    /// Debezium's heartbeats, e.g. `{ timeout: 60s }`: without a change event or a
    /// heartbeat for `timeout`, the pipeline is `degraded`.
    #[serde(default)]
    pub heartbeat: Option<KafkaHeartbeatConfig>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Start {
    /// From the oldest record the topic still holds.
    #[default]
    Earliest,
    /// From records produced after the pipeline starts.
    Latest,
    /// Only from the group's committed offsets: a partition without one is an error.
    Committed,
}

/// Partition state shared by the consumer (rebalance callback), the source and the
/// committer.
#[derive(Default)]
struct Shared {
    /// Where each partition resumes: the sink's checkpoint, then what was applied since.
    resume: Mutex<Checkpoint>,
    /// Reads the sink's stored positions when partitions are assigned, if the sink can.
    stored: Mutex<Option<crate::sink::StoredPositions>>,
    /// Counts revocations: records read under an earlier count are abandoned.
    assignment: AtomicU64,
    /// Partitions currently assigned to this process.
    assigned: Mutex<BTreeMap<String, (String, i32)>>,
    /// The offset each partition was assigned at, until its first record arrives.
    expected: Mutex<HashMap<(String, i32), i64>>,
    /// Whether `expected` has entries (read per record without taking the lock).
    checking: AtomicBool,
}

/// librdkafka settings weir changes unless `options` names them.
///
/// `fetch.queue.backoff.ms`: when the local queue is full (weir is the slower side),
/// librdkafka stops fetching for this long, 1 s by default; weir drains the queue well
/// before that and then waits idle. 100 ms keeps the queue fed: the end-to-end benchmark
/// went from ≈ 215k to ≈ 280k events/s (docs/benchmarks.md).
///
/// `statistics.interval.ms`: librdkafka's statistics give each partition's lag (the
/// broker's end less the group's committed offset, which weir commits only once the sink
/// has applied everything before it): the status's lag in events, every 5 s.
const TUNED_DEFAULTS: [(&str, &str); 2] = [
    ("fetch.queue.backoff.ms", "100"),
    ("statistics.interval.ms", "5000"),
];

const METADATA_REFRESH: &str = "topic.metadata.refresh.interval.ms";
/// How often a `topic_pattern` subscription looks for new topics, unless `options` say.
const PATTERN_METADATA_REFRESH_MS: &str = "10000";

pub struct SourceContext {
    base: Context,
    shared: Arc<Shared>,
}

impl rdkafka::client::ClientContext for SourceContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.base.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.base.error(error, reason);
    }

    /// The lag in events, each partition's and their sum: over the partitions this process
    /// owns, the broker's end less the committed offset (none while no lag is known).
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut lag = None;
        let mut by_partition = std::collections::BTreeMap::new();
        for topic in statistics.topics.values() {
            for partition in topic.partitions.values() {
                // Partition -1 is librdkafka's own; -1 lag means not known yet.
                if partition.partition >= 0 && partition.desired && partition.consumer_lag >= 0 {
                    *lag.get_or_insert(0u64) += partition.consumer_lag as u64;
                    by_partition.insert(
                        (topic.topic.clone(), partition.partition),
                        partition.consumer_lag as u64,
                    );
                }
            }
        }
        self.base.metrics.lifecycle.lag_events(lag);
        self.base.metrics.set_partition_lag(by_partition);
    }
}

impl ConsumerContext for SourceContext {
    /// Assigns partitions at the sink's checkpoint where it has one. weir uses the eager
    /// rebalance protocol (librdkafka's default assignors).
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut assigned = self.shared.assigned.lock().expect("assigned lock");
                assigned.clear();
                for element in tpl.elements() {
                    let key = kafka_stream(element.topic(), element.partition());
                    assigned.insert(key, (element.topic().to_string(), element.partition()));
                }
                let resume = self.resume_points(assigned.keys().cloned().collect());
                let mut starts = Vec::new();
                let mut expected = self.shared.expected.lock().expect("expected lock");
                expected.clear();
                for (key, (topic, partition)) in assigned.iter() {
                    if let Some(point) = resume.get(key) {
                        let _ =
                            tpl.set_partition_offset(topic, *partition, Offset::Offset(point.next));
                        expected.insert((topic.clone(), *partition), point.next);
                        starts.push(format!("{key}@{}", point.next));
                    } else {
                        starts.push(format!("{key}@group"));
                    }
                }
                self.shared
                    .checking
                    .store(!expected.is_empty(), Ordering::Relaxed);
                tracing::info!(partitions = ?starts, "partitions assigned");
                if let Err(e) = consumer.assign(tpl) {
                    tracing::error!(error = %e, "assigning partitions failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Batches read under this assignment and not yet applied are abandoned
                // (the applier compares their assignment with this count): the
                // partitions' next owner, this process or another, starts at the sink's
                // stored position. A batch being applied at this moment finishes; the
                // sink skips any row another process applied first, so nothing
                // regresses and nothing is applied twice.
                self.shared.assignment.fetch_add(1, Ordering::SeqCst);
                Metrics::add(&self.base.metrics.revocations, 1);
                self.shared.assigned.lock().expect("assigned lock").clear();
                self.shared.expected.lock().expect("expected lock").clear();
                self.shared.checking.store(false, Ordering::Relaxed);
                tracing::info!("partitions revoked");
                if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "unassigning partitions failed");
                }
            }
            other => tracing::error!(error = ?other, "rebalance failed"),
        }
    }
}

impl SourceContext {
    /// Where each of `streams` resumes: the sink's stored position, read now (another
    /// process may have applied past where this one stopped), else what this process
    /// last applied, else the group's committed offset.
    fn resume_points(&self, streams: Vec<String>) -> Checkpoint {
        let mut resume = self.shared.resume.lock().expect("resume lock");
        if let Some(read) = self.shared.stored.lock().expect("stored lock").as_mut() {
            match read(&streams) {
                Ok(stored) => resume.merge(&stored),
                // The sink still skips what it holds: starting earlier costs a re-read.
                Err(e) => tracing::warn!(
                    error = %e,
                    "cannot read the sink's stored positions; the partitions start where \
                     this process last applied, or at the group's offsets"
                ),
            }
        }
        resume.clone()
    }
}

pub struct KafkaSource {
    consumer: Arc<BaseConsumer<SourceContext>>,
    shared: Arc<Shared>,
    description: String,
    streams: HashMap<(String, i32), (Arc<str>, Arc<str>)>,
    /// The partition of the previous record: records come in runs per partition, so this
    /// spares a map lookup (and a key allocation) per record.
    last_stream: Option<(i32, Arc<str>, Arc<str>)>,
    subscription: Vec<String>,
    subscribed: bool,
    heartbeat: Option<HeartbeatWatch>,
    metrics: Arc<Metrics>,
    resync_auto: bool,
}

/// The librdkafka consumer settings: the user's `options`, weir's tuned defaults where
/// the user gave none, and the settings weir manages itself.
fn consumer_config(config: &KafkaSourceConfig, pipeline_name: &str) -> ClientConfig {
    let mut client = client_config(&config.brokers, &config.options);
    for (key, value) in TUNED_DEFAULTS {
        if !config.options.contains_key(key) {
            client.set(key, value);
        }
    }
    // A pattern subscription finds new topics when it refreshes the broker's metadata:
    // librdkafka's default (5 minutes) would leave a new table unread that long.
    if config.topic_pattern.is_some() && !config.options.contains_key(METADATA_REFRESH) {
        client.set(METADATA_REFRESH, PATTERN_METADATA_REFRESH_MS);
    }
    client
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set(
            "auto.offset.reset",
            match config.start {
                Start::Earliest => "earliest",
                Start::Latest => "latest",
                Start::Committed => "error",
            },
        )
        .set("client.id", format!("weir-{pipeline_name}"));
    client
}

impl KafkaSource {
    pub fn open(
        pipeline: &LoadedPipeline,
        config: &KafkaSourceConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SourceError> {
        let error = |message: String| SourceError {
            source_name: "kafka source".into(),
            message,
            retryable: false,
        };
        let client = consumer_config(config, &pipeline.config.name);
        // Assignments count from 1: the reader, at 0, then starts its checkpoint afresh
        // with the first records, holding only the partitions this process reads (a
        // batch's checkpoint rows are locked in the sink, so positions of partitions
        // other processes own would make every process wait for the others).
        let shared = Arc::new(Shared {
            assignment: AtomicU64::new(1),
            ..Shared::default()
        });
        let heartbeat = config
            .heartbeat
            .as_ref()
            .map(|h| HeartbeatWatch::open(config, h, &pipeline.config.name, metrics.clone()))
            .transpose()
            .map_err(error)?;
        let context = SourceContext {
            base: Context {
                metrics: metrics.clone(),
                component: "kafka source",
            },
            shared: shared.clone(),
        };
        let consumer: BaseConsumer<SourceContext> = client
            .create_with_context(context)
            .map_err(|e| error(format!("cannot create the consumer: {e}")))?;
        let subscription = match &config.topic_pattern {
            Some(pattern) if pattern.starts_with('^') => vec![pattern.clone()],
            Some(pattern) => vec![format!("^{pattern}")],
            None => config.topics.clone(),
        };
        Ok(KafkaSource {
            consumer: Arc::new(consumer),
            shared,
            description: format!("kafka {} group {}", subscription.join(","), config.group_id),
            streams: HashMap::new(),
            last_stream: None,
            subscription,
            subscribed: false,
            heartbeat,
            metrics,
            resync_auto: pipeline.config.lifecycle.resync == crate::config::ResyncMode::Auto,
        })
    }

    /// Checks the first record after an assignment against the offset asked for. Past it
    /// is normal on a compacted topic (and tansu 0.6 does it when the offset lies inside a
    /// record batch: see docs/decisions.md); but when the partition's log now begins past
    /// the offset asked for, retention deleted changes weir never applied: a gap.
    fn first_record(&self, topic: &str, partition: i32, offset: i64) -> Result<(), SourceError> {
        if !self.shared.checking.load(Ordering::Relaxed) {
            return Ok(());
        }
        let asked = {
            let mut expected = self.shared.expected.lock().expect("expected lock");
            let asked = expected.remove(&(topic.to_string(), partition));
            if expected.is_empty() {
                self.shared.checking.store(false, Ordering::Relaxed);
            }
            asked
        };
        let Some(asked) = asked.filter(|asked| offset != *asked) else {
            return Ok(());
        };
        if offset < asked {
            // Records before the position asked for: the broker has reset the partition
            // (it ended before that position: the topic was deleted and created again, or
            // the broker lost records). What was stored no longer describes this log.
            return self.gap(
                topic,
                partition,
                asked,
                offset,
                format!(
                    "the broker sent offset {offset}, before the stored position {asked}: the \
                     partition ended before it (the topic was deleted and created again, or the \
                     broker lost records)"
                ),
            );
        }
        match self
            .consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
        {
            Ok((first, _)) if first > asked => self.gap(
                topic,
                partition,
                asked,
                first,
                format!(
                    "the stored position is offset {asked}, but the broker now begins the \
                     partition at offset {first}: offsets {asked}..{} were deleted (retention) \
                     before weir applied them",
                    first - 1
                ),
            ),
            Ok(_) => {
                tracing::warn!(
                    topic,
                    partition,
                    asked,
                    received = offset,
                    "the broker's first record is past the offset asked for: offsets \
                     {asked}..{} were skipped. Normal on a compacted topic; otherwise the \
                     broker did not return the record batch holding the offset, and those \
                     changes are missing",
                    offset - 1
                );
                Ok(())
            }
            // Not knowing is not a reason to skip: stop, and the next run looks again.
            Err(e) => Err(SourceError {
                source_name: self.description.clone(),
                message: format!(
                    "{topic}/{partition}: asked for offset {asked} and received {offset}, and \
                     cannot read where the partition begins to tell retention from compaction: {e}"
                ),
                retryable: false,
            }),
        }
    }

    /// The partition no longer holds the stored position `asked`: it begins at `first`
    /// (`what` says how it was found). Unless the
    /// target was repaired since the gap was found, the pipeline is `resync-required` and
    /// the run stops; `weir run` repairs it from the `reconcile` source with
    /// `lifecycle.resync: auto` (or `--resync`) and runs again.
    fn gap(
        &self,
        topic: &str,
        partition: i32,
        asked: i64,
        first: i64,
        what: String,
    ) -> Result<(), SourceError> {
        let stream = kafka_stream(topic, partition);
        let lifecycle = &self.metrics.lifecycle;
        if lifecycle.gap_repaired(&stream, first) {
            tracing::info!(
                %stream,
                from = first,
                "the target was repaired from the source after this gap; going on"
            );
            return Ok(());
        }
        tracing::debug!(%stream, asked, first, "gap");
        let message = format!("{stream}: {what}");
        lifecycle.gap(&stream, first);
        lifecycle.phase(crate::lifecycle::State::ResyncRequired, &message);
        lifecycle.refresh(&self.metrics.health);
        let advice = match self.resync_auto {
            true => format!(
                "weir repairs the target from the pipeline's `reconcile` source, then goes on \
                 from offset {first}"
            ),
            false => format!(
                "run `weir run PIPELINE --resync` (or set `lifecycle: {{ resync: auto }}`): \
                 weir repairs the target from the pipeline's `reconcile` source, then goes on \
                 from offset {first}"
            ),
        };
        Err(SourceError {
            source_name: self.description.clone(),
            message: format!("{message}. Resync: {advice}"),
            retryable: false,
        })
    }

    fn position(&mut self, topic: &str, partition: i32, offset: i64) -> Position {
        let (stream, topic) = match &self.last_stream {
            Some((p, stream, t)) if *p == partition && **t == *topic => (stream.clone(), t.clone()),
            _ => {
                let (stream, topic) = self
                    .streams
                    .entry((topic.to_string(), partition))
                    .or_insert_with(|| (kafka_stream(topic, partition).into(), topic.into()))
                    .clone();
                self.last_stream = Some((partition, stream.clone(), topic.clone()));
                (stream, topic)
            }
        };
        Position::Kafka {
            stream,
            topic,
            partition,
            offset,
        }
    }
}

impl KafkaSource {
    /// Records arrived: the source lives; heartbeats read meanwhile are taken in.
    fn heartbeat_between_records(&mut self) {
        if let Some(heartbeat) = self.heartbeat.as_mut() {
            heartbeat.events_arrived();
            heartbeat.check(false);
        }
    }
}

impl Source for KafkaSource {
    fn seek(&mut self, checkpoint: &Checkpoint) -> Result<(), SourceError> {
        // Positions are applied when partitions are assigned (see `rebalance`).
        *self.shared.resume.lock().expect("resume lock") = checkpoint.clone();
        if !self.subscribed {
            let topics: Vec<&str> = self.subscription.iter().map(String::as_str).collect();
            self.consumer.subscribe(&topics).map_err(|e| SourceError {
                source_name: self.description.clone(),
                message: format!("cannot subscribe: {e}"),
                retryable: false,
            })?;
            self.subscribed = true;
        }
        Ok(())
    }

    fn poll(
        &mut self,
        batch: &mut RawBatch,
        limits: &PollLimits,
    ) -> Result<PollStatus, SourceError> {
        let started = Instant::now();
        let consumer = self.consumer.clone();
        let mut elapsed = Duration::ZERO;
        batch.assignment = self.shared.assignment.load(Ordering::SeqCst);
        loop {
            if limits.filled(batch) {
                self.heartbeat_between_records();
                return Ok(PollStatus::Records);
            }
            // While records flow, reading the clock for each one costs more than a batch
            // that closes a few records late.
            if batch.len().is_multiple_of(64) {
                elapsed = started.elapsed();
            }
            if elapsed >= limits.max_wait {
                if !batch.is_empty() {
                    self.heartbeat_between_records();
                    return Ok(PollStatus::Records);
                }
                // Without partitions (the group is still assigning them) there is nothing
                // to be idle about yet.
                let owns_partitions = !self
                    .shared
                    .assigned
                    .lock()
                    .expect("assigned lock")
                    .is_empty();
                if let Some(heartbeat) = self.heartbeat.as_mut() {
                    heartbeat.check(true);
                }
                return Ok(if owns_partitions {
                    PollStatus::Idle
                } else {
                    PollStatus::Waiting
                });
            }
            let polled = consumer.poll(limits.max_wait - elapsed);
            // A rebalance runs inside `poll`: what was read before it is dropped here,
            // before a record of the new assignment joins the batch.
            self.abandon_if_revoked(batch);
            let Some(result) = polled else {
                elapsed = started.elapsed();
                continue;
            };
            match result {
                Ok(message) => {
                    if batch.is_empty() {
                        self.consumer.context().base.ok();
                    }
                    self.first_record(message.topic(), message.partition(), message.offset())?;
                    let position =
                        self.position(message.topic(), message.partition(), message.offset());
                    // Borrowed from the message; the batch copies them once.
                    let headers: Vec<(&str, Option<&[u8]>)> = message
                        .headers()
                        .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
                        .unwrap_or_default();
                    batch.push_with_headers(message.key(), message.payload(), &headers, position);
                }
                Err(KafkaError::MessageConsumption(code)) | Err(KafkaError::Global(code))
                    if code == RDKafkaErrorCode::AutoOffsetReset =>
                {
                    return Err(SourceError {
                        source_name: self.description.clone(),
                        message: "a partition has no committed offset for this group \
                                  (start: committed); use `start: earliest` or `start: latest`"
                            .into(),
                        retryable: false,
                    });
                }
                Err(e) => {
                    // Transport trouble: librdkafka retries; report and keep polling.
                    self.consumer.context().base.failing(&e.to_string());
                    if !batch.is_empty() {
                        self.heartbeat_between_records();
                        return Ok(PollStatus::Records);
                    }
                }
            }
        }
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn committer(&self) -> Option<Box<dyn Committer>> {
        Some(Box::new(KafkaCommitter {
            consumer: self.consumer.clone(),
            shared: self.shared.clone(),
        }))
    }

    fn read_stored_positions_with(&mut self, reader: crate::sink::StoredPositions) {
        *self.shared.stored.lock().expect("stored lock") = Some(reader);
    }
}

impl KafkaSource {
    /// Drops the records of `batch` read before a revocation (the partitions restart at
    /// the sink's position, wherever they are assigned next).
    fn abandon_if_revoked(&self, batch: &mut RawBatch) {
        let now = self.shared.assignment.load(Ordering::SeqCst);
        if batch.assignment != now {
            if !batch.is_empty() {
                tracing::debug!(
                    records = batch.len(),
                    "abandoning records of revoked partitions"
                );
                Metrics::add(&self.metrics.events_abandoned, batch.len() as u64);
                batch.clear();
            }
            batch.assignment = now;
        }
    }
}

/// Commits applied positions to the consumer group, for the partitions this process still
/// owns.
pub struct KafkaCommitter {
    consumer: Arc<BaseConsumer<SourceContext>>,
    shared: Arc<Shared>,
}

impl Committer for KafkaCommitter {
    /// Commits in the background: the sink's checkpoint is the authority; the group's
    /// offsets serve other consumers and sinks that cannot store a checkpoint.
    fn commit(&self, checkpoint: &Checkpoint) {
        self.commit_with(checkpoint, CommitMode::Async);
    }

    fn commit_sync(&self, checkpoint: &Checkpoint) {
        self.commit_with(checkpoint, CommitMode::Sync);
    }

    fn assignment(&self) -> u64 {
        self.shared.assignment.load(Ordering::SeqCst)
    }
}

impl KafkaCommitter {
    fn commit_with(&self, checkpoint: &Checkpoint, mode: CommitMode) {
        self.shared
            .resume
            .lock()
            .expect("resume lock")
            .merge(checkpoint);
        let assigned = self.shared.assigned.lock().expect("assigned lock").clone();
        let mut list = TopicPartitionList::new();
        for (key, resume) in &checkpoint.streams {
            if let Some((topic, partition)) = assigned.get(key) {
                let _ = list.add_partition_offset(topic, *partition, Offset::Offset(resume.next));
            }
        }
        if list.count() == 0 {
            return;
        }
        if let Err(e) = self.consumer.commit(&list, mode) {
            tracing::warn!(error = %e, "committing offsets to the broker failed; the next batch commits them");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(options: serde_json::Value) -> KafkaSourceConfig {
        serde_json::from_value(serde_json::json!({
            "brokers": "localhost:9092",
            "topics": ["orders"],
            "group_id": "g",
            "options": options,
        }))
        .expect("a valid source config")
    }

    #[test]
    fn tuned_defaults_apply_unless_options_name_them() {
        let default = consumer_config(&config(serde_json::json!({})), "p");
        assert_eq!(default.get("fetch.queue.backoff.ms"), Some("100"));
        assert_eq!(default.get("enable.auto.commit"), Some("false"));
        assert_eq!(default.get("client.id"), Some("weir-p"));
        let chosen = consumer_config(
            &config(serde_json::json!({"fetch.queue.backoff.ms": 1000})),
            "p",
        );
        assert_eq!(chosen.get("fetch.queue.backoff.ms"), Some("1000"));
    }
}
