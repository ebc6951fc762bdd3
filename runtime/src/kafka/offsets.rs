//! A topic's positions, read without joining any consumer group: where each partition
//! ends now (its high watermark), the offsets a group has committed, and a topic's records
//! from its start up to the end it had when the read began. `weir reconcile` uses them to
//! read a change log from Kafka and to wait until a pipeline has caught up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers as _, Message, Timestamp};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::{Context, KafkaOptions, client_config};
use crate::decode::{Headers, RawRecord};
use crate::metrics::Metrics;
use crate::position::{Position, kafka_stream};

/// How long one request to the broker may take, and how long a read may go without a
/// record before it is given up.
const PATIENCE: Duration = Duration::from_secs(30);

impl ConsumerContext for Context {}

/// A consumer that never subscribes: it reads metadata and watermarks, and reads
/// partitions it assigns itself.
pub struct Offsets {
    consumer: BaseConsumer<Context>,
    brokers: String,
}

impl Offsets {
    /// `group` is only used to read that group's committed offsets; this consumer never
    /// joins it (it never subscribes) and never commits.
    pub fn connect(brokers: &str, options: &KafkaOptions, group: &str) -> Result<Self, String> {
        let mut config = client_config(brokers, options);
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("client.id", "weir-reconcile");
        let context = Context {
            metrics: Arc::new(Metrics::default()),
            component: "kafka offsets",
        };
        let consumer = config
            .create_with_context(context)
            .map_err(|e| format!("cannot create a Kafka client for {brokers}: {e}"))?;
        Ok(Offsets {
            consumer,
            brokers: brokers.to_string(),
        })
    }

    /// The partitions of `topic`; an error when the broker does not know it.
    pub fn partitions(&self, topic: &str) -> Result<Vec<i32>, String> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(topic), PATIENCE)
            .map_err(|e| {
                format!(
                    "cannot read topic {topic}'s metadata from {}: {e}",
                    self.brokers
                )
            })?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Err(format!(
                "the broker at {} has no topic {topic}",
                self.brokers
            ));
        };
        if let Some(error) = found.error() {
            return Err(format!(
                "topic {topic} at {}: {:?}; check the topic's name",
                self.brokers,
                RDKafkaErrorCode::from(error)
            ));
        }
        Ok(found.partitions().iter().map(|p| p.id()).collect())
    }

    /// Every topic the broker has whose name `matches`.
    pub fn topics(&self, matches: impl Fn(&str) -> bool) -> Result<Vec<String>, String> {
        let metadata = self
            .consumer
            .fetch_metadata(None, PATIENCE)
            .map_err(|e| format!("cannot read the topics of {}: {e}", self.brokers))?;
        Ok(metadata
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .filter(|name| matches(name))
            .collect())
    }

    /// `(low, high)` watermarks of each partition of `topic`: the first offset it still
    /// holds and the offset its next record will get.
    pub fn watermarks(&self, topic: &str) -> Result<BTreeMap<i32, (i64, i64)>, String> {
        self.partitions(topic)?
            .into_iter()
            .map(|partition| {
                self.consumer
                    .fetch_watermarks(topic, partition, PATIENCE)
                    .map(|marks| (partition, marks))
                    .map_err(|e| {
                        format!("cannot read the end of {topic} partition {partition}: {e}")
                    })
            })
            .collect()
    }

    /// The end of each partition of `topics` now, by checkpoint stream key
    /// (`kafka:<topic>/<partition>`).
    pub fn ends(&self, topics: &[String]) -> Result<BTreeMap<String, i64>, String> {
        let mut ends = BTreeMap::new();
        for topic in topics {
            for (partition, (_, high)) in self.watermarks(topic)? {
                ends.insert(kafka_stream(topic, partition), high);
            }
        }
        Ok(ends)
    }

    /// The offsets this client's group has committed for `topics`, by checkpoint stream
    /// key; partitions without one are left out.
    pub fn committed(&self, topics: &[String]) -> Result<BTreeMap<String, i64>, String> {
        let mut list = TopicPartitionList::new();
        for topic in topics {
            for partition in self.partitions(topic)? {
                list.add_partition(topic, partition);
            }
        }
        let committed = self
            .consumer
            .committed_offsets(list, PATIENCE)
            .map_err(|e| format!("cannot read the group's committed offsets: {e}"))?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(offset) => Some((kafka_stream(e.topic(), e.partition()), offset)),
                _ => None,
            })
            .collect())
    }

    /// Reads `topic` from the start of each partition up to the end it has now, or up to
    /// `until`'s offset for the partitions it names (by checkpoint stream key), passing
    /// every record to `each`; returns how many were read. Records produced after the
    /// read began are not read. Partitions are read in the order the broker returns
    /// them, so the order of records is kept within a partition (and so per key, as
    /// Debezium keys its topics).
    pub fn read_to_end(
        &self,
        topic: &str,
        until: Option<&BTreeMap<String, i64>>,
        mut each: impl FnMut(RawRecord<'_>, &Position) -> Result<(), String>,
    ) -> Result<u64, String> {
        let mut read = BoundedRead::start(self, topic, until, |p| kafka_stream(topic, p))?;
        let mut count = 0;
        while let Some(result) = read.next(self, &mut each)? {
            result?;
            count += 1;
        }
        Ok(count)
    }
}

/// A read of some partitions of a topic, from chosen offsets up to the ends they had when
/// it started, one record at a time (records produced later are not read).
pub struct BoundedRead {
    topic: Arc<str>,
    /// The offset each partition still to be read ends at.
    remaining: BTreeMap<i32, i64>,
    /// The checkpoint stream key of each partition's positions.
    streams: BTreeMap<i32, Arc<str>>,
    /// Where each partition read ends.
    ends: BTreeMap<i32, i64>,
    /// When the read began, in milliseconds since the epoch.
    began_ms: i64,
    /// Partitions [`BoundedRead::past_the_end`] warned about.
    warned: std::collections::BTreeSet<i32>,
    last_record: Instant,
    header_bytes: Vec<u8>,
    header_spans: Vec<(crate::decode::Span, Option<crate::decode::Span>)>,
}

impl BoundedRead {
    /// Assigns `offsets`' consumer to every partition of `topic` that has records between
    /// its first and its end now, or `until`'s offset for the partitions it names.
    /// `stream` names each partition's positions.
    pub fn start(
        offsets: &Offsets,
        topic: &str,
        until: Option<&BTreeMap<String, i64>>,
        stream: impl Fn(i32) -> String,
    ) -> Result<BoundedRead, String> {
        let mut remaining: BTreeMap<i32, i64> = BTreeMap::new();
        let mut list = TopicPartitionList::new();
        for (partition, (low, high)) in offsets.watermarks(topic)? {
            let high = until
                .and_then(|until| until.get(&kafka_stream(topic, partition)))
                .map_or(high, |&end| end.min(high));
            if high > low {
                remaining.insert(partition, high);
                list.add_partition_offset(topic, partition, Offset::Offset(low))
                    .map_err(|e| e.to_string())?;
            }
        }
        offsets
            .consumer
            .assign(&list)
            .map_err(|e| format!("cannot read {topic}: {e}"))?;
        let streams = remaining.keys().map(|&p| (p, stream(p).into())).collect();
        Ok(BoundedRead {
            topic: Arc::from(topic),
            ends: remaining.clone(),
            began_ms: chrono::Utc::now().timestamp_millis(),
            warned: Default::default(),
            remaining,
            streams,
            last_record: Instant::now(),
            header_bytes: Vec::new(),
            header_spans: Vec::new(),
        })
    }

    /// A record at or past the end the broker gave for its partition when the read
    /// started: a broker that understates a partition's end (tansu 0.6 gives the base
    /// offset of its last record batch plus one) would hide the records between, so say
    /// so, once per partition.
    fn past_the_end(&mut self, partition: i32, offset: i64, timestamp: Timestamp) {
        let Some(&end) = self.ends.get(&partition) else {
            return;
        };
        // Records produced since the read began are past its end, as they should be:
        // only one made at least a second before it began says the end was wrong.
        let before_the_read = timestamp
            .to_millis()
            .is_some_and(|millis| millis < self.began_ms - 1000);
        if offset >= end && before_the_read && self.warned.insert(partition) {
            tracing::warn!(
                topic = %self.topic,
                partition,
                end,
                offset,
                "the broker returned a record past the end it gave for this partition when \
                 the read began; if the record was in the topic then, the broker understated \
                 the end, and records before it may not have been read"
            );
        }
    }

    /// Says the ends were read at `millis` (since the epoch), earlier than the read began.
    pub fn ends_read_at(mut self, millis: i64) -> BoundedRead {
        self.began_ms = millis;
        self
    }

    /// Passes the next record to `each` and returns what it returned, or `None` once
    /// every partition has reached its end (the consumer is then unassigned).
    pub fn next<R>(
        &mut self,
        offsets: &Offsets,
        mut each: impl FnMut(RawRecord<'_>, &Position) -> R,
    ) -> Result<Option<R>, String> {
        let topic = self.topic.clone();
        while !self.remaining.is_empty() {
            let Some(result) = offsets.consumer.poll(Duration::from_millis(500)) else {
                if self.last_record.elapsed() > PATIENCE {
                    return Err(format!(
                        "no records from {} for {}s while partitions {:?} of {topic} still \
                         had records to read; is the broker reachable?",
                        offsets.brokers,
                        PATIENCE.as_secs(),
                        self.remaining.keys().collect::<Vec<_>>()
                    ));
                }
                continue;
            };
            self.last_record = Instant::now();
            match result {
                Ok(message) => {
                    let partition = message.partition();
                    let Some(&end) = self.remaining.get(&partition) else {
                        self.past_the_end(partition, message.offset(), message.timestamp());
                        continue;
                    };
                    if message.offset() >= end {
                        self.remaining.remove(&partition);
                        self.past_the_end(partition, message.offset(), message.timestamp());
                        continue;
                    }
                    if message.offset() + 1 >= end {
                        self.remaining.remove(&partition);
                    }
                    let position = Position::Kafka {
                        stream: self.streams[&partition].clone(),
                        topic: topic.clone(),
                        partition,
                        offset: message.offset(),
                    };
                    // The headers, as the decoder takes them: spans into one buffer.
                    self.header_bytes.clear();
                    self.header_spans.clear();
                    for header in message.headers().iter().flat_map(|h| h.iter()) {
                        let bytes = &mut self.header_bytes;
                        let mut store = |value: &[u8]| {
                            let start = bytes.len();
                            bytes.extend_from_slice(value);
                            (start, bytes.len())
                        };
                        let name = store(header.key.as_bytes());
                        let value = header.value.map(&mut store);
                        self.header_spans.push((name, value));
                    }
                    let record = RawRecord {
                        key: message.key(),
                        value: message.payload(),
                        headers: Headers {
                            buf: &self.header_bytes,
                            items: &self.header_spans,
                        },
                    };
                    return Ok(Some(each(record, &position)));
                }
                // The partition ends before its high watermark (the last offsets were
                // transaction markers, or compacted away).
                Err(KafkaError::PartitionEOF(partition)) => {
                    self.remaining.remove(&partition);
                }
                Err(e) => {
                    return Err(format!(
                        "reading {topic} from {} failed: {e}",
                        offsets.brokers
                    ));
                }
            }
        }
        let _ = offsets.consumer.unassign();
        Ok(None)
    }
}
