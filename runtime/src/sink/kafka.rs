//! The Kafka sink: every change, in order, as a record keyed by the row's primary key.
//!
//! Formats:
//! - `debezium-json`: the Debezium payload (`before`, `after`, `op`, `ts_ms`, `ts_us`,
//!   `source`, `transaction`) with Debezium's `source` fields, values in plain JSON (decimals as numbers, dates and timestamps as ISO text);
//! - `debezium-json-schema`: `{"schema", "payload"}` as Kafka Connect's JsonConverter
//!   writes with schemas enabled, values in Connect's native encodings, so a reader (weir
//!   included) gets back exactly the types that went in;
//! - `json-rows`: the row itself with `__op` (Debezium's `ExtractNewRecordState` shape);
//!   a delete is the old row with `__deleted: "true"`.
//!
//! After a delete a tombstone (the key with a null value) follows, so a compacted topic
//! forgets the key; `tombstones: false` turns that off. A truncate is a record with a null
//! key.
//!
//! A many-table pipeline (`tables:`) sends each table's changes to the topic `topic`
//! names with `{table}` replaced by the target table (`shop.{table}`); a `topic` without
//! `{table}` takes every table (Debezium's topic-routing shape, the `source` block saying
//! each change's table).
//!
//! Delivery is at-least-once. The idempotent producer (`acks=all`) never duplicates a
//! record through its own retries, and a batch counts as applied only when the broker has
//! acknowledged all of it. Kafka has nowhere to keep weir's checkpoint with the data, so
//! after a crash or a failed batch the changes since the source's last commit are produced
//! again; consumers apply them idempotently by key (what a change log keyed by primary key
//! is for).

use std::sync::Arc;

use arrow::array::{Array, AsArray, StructArray};
use arrow::datatypes::Fields;
use rdkafka::message::{Header, OwnedHeaders};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{Applied, Rejects, Sink, SinkError};
use crate::config::LoadedPipeline;
use crate::connect::RowEncoder;
use crate::encode::{self, write_change, write_change_with, write_json_string, write_struct_row};
use crate::envelope::{self, ChangeBatch, Op};
use crate::kafka::KafkaOptions;
use crate::kafka::producer::{DeliveringProducer, SendError};
use crate::metrics::Metrics;
use crate::position::Checkpoint;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    #[schemars(length(min = 1))]
    pub brokers: String,
    /// The topic to produce to. `{table}` in it is replaced by the target table's name, so
    /// a many-table pipeline writes a topic per table (`shop.{table}`); `{source}` by the
    /// source table's (`shop.{source}` gives Debezium's `shop.public.orders`).
    #[schemars(length(min = 1))]
    pub topic: String,
    /// The shape of each record's value.
    #[serde(default)]
    pub format: KafkaSinkFormat,
    /// Follow each delete with a tombstone (the key, a null value) so a compacted topic
    /// drops the key.
    #[serde(default = "yes")]
    pub tombstones: bool,
    /// librdkafka producer settings passed through (TLS, SASL, `compression.type`,
    /// `linger.ms`, `message.max.bytes`, ...).
    #[serde(default)]
    pub options: KafkaOptions,
}

impl KafkaSinkConfig {
    pub fn capabilities(&self) -> super::Capabilities {
        // The source resumes from its own committed position instead of a checkpoint
        // stored with the data. Tables without a key are sent with a null record key.
        super::Capabilities {
            many_tables: true,
            ..Default::default()
        }
    }

    /// The topic for a target table's changes, read from the source table `source`.
    pub fn topic_for(&self, table: &str, source: &str) -> String {
        topic_for(&self.topic, table, source)
    }
}

fn topic_for(template: &str, table: &str, source: &str) -> String {
    template.replace(TABLE, table).replace(SOURCE, source)
}

/// The placeholder for the target table in `topic`.
const TABLE: &str = "{table}";
/// The placeholder for the source table (`public.orders`): `shop.{source}` names the
/// topics as Debezium does (`<prefix>.<schema>.<table>`).
const SOURCE: &str = "{source}";

/// Whether `topic` is a name Kafka accepts: at most 249 characters of ASCII letters,
/// digits, `.`, `_` and `-`, and not `.` or `..`.
pub fn check_topic_name(topic: &str) -> Result<(), String> {
    let valid = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{topic}` is not a Kafka topic name (at most 249 of a-z, A-Z, 0-9, `.`, `_`, `-`)"
        ))
    }
}

impl KafkaSinkConfig {
    /// Problems with `topic`: a placeholder other than `{table}`, or characters Kafka
    /// refuses outside it.
    pub fn topic_problems(&self) -> Option<String> {
        let sample = self.topic_for("t", "s.t");
        if sample.contains(['{', '}']) {
            return Some(format!(
                "`{}` has a placeholder other than `{TABLE}` and `{SOURCE}`",
                self.topic
            ));
        }
        check_topic_name(&sample).err()
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum KafkaSinkFormat {
    /// The Debezium change event payload, values as plain JSON.
    #[default]
    DebeziumJson,
    /// The Debezium change event with its Kafka Connect schema, values in Connect's
    /// native encodings.
    DebeziumJsonSchema,
    /// The row itself with `__op` (and `__deleted: "true"` on deletes).
    JsonRows,
}

/// What the sink works out once per row schema.
struct Plan {
    fields: Fields,
    /// Indices of the primary key columns in the row images.
    key_columns: Vec<usize>,
    /// Native encoders and the serialised schemas (`debezium-json-schema` only).
    native: Option<Native>,
}

struct Native {
    row: RowEncoder,
    key: RowEncoder,
    /// `{"schema":…,"payload":` for values and keys, ready to prepend.
    value_prefix: String,
    key_prefix: String,
}

pub struct KafkaSink {
    /// The configured topic, `{table}` unreplaced.
    template: String,
    /// The topic of the table being sent.
    topic: String,
    /// Other tables' plans, by topic (many-table pipelines).
    plans: std::collections::HashMap<String, Option<Plan>>,
    format: KafkaSinkFormat,
    tombstones: bool,
    producer: DeliveringProducer,
    plan: Option<Plan>,
    checkpoint: Checkpoint,
    durable: Option<Checkpoint>,
    key: String,
    value: String,
}

impl KafkaSink {
    pub fn open(
        _pipeline: &LoadedPipeline,
        config: &KafkaSinkConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SinkError> {
        let topic = match _pipeline.table() {
            Some(table) => config.topic_for(&table.name, &table.name),
            None => config.topic.clone(),
        };
        Ok(KafkaSink {
            template: config.topic.clone(),
            topic,
            plans: Default::default(),
            format: config.format,
            tombstones: config.tombstones,
            producer: DeliveringProducer::new(
                &config.brokers,
                &config.options,
                metrics,
                "kafka sink",
            ),
            plan: None,
            checkpoint: Checkpoint::default(),
            durable: None,
            key: String::new(),
            value: String::new(),
        })
    }

    fn error(&self, error: SendError) -> SinkError {
        let retryable = matches!(error, SendError::Retry(_));
        let mut e = SinkError::new(self.describe(), error.to_string());
        e.retryable = retryable;
        e
    }

    fn plan(&mut self, batch: &ChangeBatch) -> Result<(), SinkError> {
        let fields = batch.row_fields();
        if self.plan.as_ref().is_some_and(|p| p.fields == fields) {
            return Ok(());
        }
        let key_columns = batch
            .table
            .primary_key
            .iter()
            .map(|name| {
                fields.find(name).map(|(i, _)| i).ok_or_else(|| {
                    SinkError::new(
                        self.describe(),
                        format!("primary key column `{name}` is not in the rows"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let native = (self.format == KafkaSinkFormat::DebeziumJsonSchema).then(|| {
            let row = RowEncoder::new(&fields);
            let key = row
                .select(&batch.table.primary_key)
                .expect("key columns checked above");
            let key_schema = key.struct_schema(&format!("{}.Key", self.topic), None, false);
            let value_schema = crate::connect::envelope_schema(&self.topic, &row);
            Native {
                value_prefix: format!("{{\"schema\":{value_schema},\"payload\":"),
                key_prefix: format!("{{\"schema\":{key_schema},\"payload\":"),
                row,
                key,
            }
        });
        self.plan = Some(Plan {
            fields,
            key_columns,
            native,
        });
        Ok(())
    }

    /// Writes the key of `row` into `self.key`; `false` for a truncate (no key).
    fn write_key(&mut self, batch: &ChangeBatch, row: usize, op: Op) -> bool {
        self.key.clear();
        let plan = self.plan.as_ref().expect("planned");
        if op == Op::Truncate || plan.key_columns.is_empty() {
            return false;
        }
        let image: &StructArray = if op == Op::Delete {
            batch.before()
        } else {
            batch.after()
        };
        // A delete's key is in `before`: the decoder fills it from the record key when
        // the event has no before image.
        match &plan.native {
            Some(native) => {
                self.key.push_str(&native.key_prefix);
                native.key.write_selected(&mut self.key, image, row);
                self.key.push('}');
            }
            None => {
                self.key.push('{');
                for (i, &column) in plan.key_columns.iter().enumerate() {
                    if i > 0 {
                        self.key.push(',');
                    }
                    write_json_string(&mut self.key, plan.fields[column].name());
                    self.key.push(':');
                    encode::write_json(&mut self.key, image.column(column).as_ref(), row);
                }
                self.key.push('}');
            }
        }
        true
    }

    fn write_value(&mut self, batch: &ChangeBatch, row: usize, op: Op) {
        self.value.clear();
        let plan = self.plan.as_ref().expect("planned");
        match (self.format, &plan.native) {
            (KafkaSinkFormat::DebeziumJsonSchema, Some(native)) => {
                self.value.push_str(&native.value_prefix);
                write_change_with(&mut self.value, batch, row, |out, image, row| {
                    native.row.write_row(out, image, row)
                });
                self.value.push('}');
            }
            (KafkaSinkFormat::JsonRows, _) => {
                let image = match op {
                    Op::Delete => Some(batch.before()),
                    Op::Truncate => None,
                    _ => Some(batch.after()),
                };
                match image {
                    Some(image) => write_struct_row(&mut self.value, image, row),
                    None => self.value.push_str("{}"),
                }
                self.value.pop();
                if !self.value.ends_with('{') {
                    self.value.push(',');
                }
                self.value.push_str("\"__op\":");
                write_json_string(&mut self.value, op.as_str());
                if op == Op::Delete {
                    self.value.push_str(",\"__deleted\":\"true\"");
                }
                let data = &batch.data;
                let source_time = data.column(
                    data.schema()
                        .index_of(envelope::SOURCE_TIME)
                        .expect("envelope column"),
                );
                if source_time.is_valid(row) {
                    let micros = source_time
                        .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                        .value(row);
                    self.value
                        .push_str(&format!(",\"__source_ts_ms\":{}", micros.div_euclid(1000)));
                }
                self.value.push('}');
            }
            _ => write_change(&mut self.value, batch, row),
        }
    }
}

/// The record headers the change arrived with (Kafka sources), passed on.
fn headers(batch: &ChangeBatch, row: usize) -> Option<OwnedHeaders> {
    let data = &batch.data;
    let column = data.column(data.schema().index_of(envelope::HEADERS).ok()?);
    let entries = column.as_map().value(row);
    if entries.is_empty() {
        return None;
    }
    let names = entries.column(0).as_string::<i32>();
    let values = entries.column(1).as_binary::<i32>();
    let mut headers = OwnedHeaders::new_with_capacity(entries.len());
    for i in 0..entries.len() {
        headers = headers.insert(Header {
            key: names.value(i),
            value: values.is_valid(i).then(|| values.value(i)),
        });
    }
    Some(headers)
}

impl Sink for KafkaSink {
    fn committed(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        // Kafka holds no checkpoint of weir's: the source resumes from its own committed
        // position (a Kafka source's group offsets).
        Ok(None)
    }

    fn apply(
        &mut self,
        batch: &ChangeBatch,
        rejects: &mut dyn Rejects,
    ) -> Result<Applied, SinkError> {
        let mut applied = Applied::default();
        self.send(batch, rejects, &mut applied)?;
        if let Err(e) = self.producer.flush() {
            return Err(self.error(e));
        }
        self.checkpoint.merge(&batch.checkpoint);
        self.durable = Some(self.checkpoint.clone());
        applied.durable = self.durable.clone();
        Ok(applied)
    }

    fn apply_tables(
        &mut self,
        batches: &[ChangeBatch],
        _prepared: Option<&super::Prepared>,
        checkpoint: &Checkpoint,
        rejects: &mut dyn Rejects,
    ) -> Result<Applied, SinkError> {
        let mut applied = Applied::default();
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            let table = batch.table.target.as_deref().unwrap_or(&batch.table.name);
            let topic = topic_for(&self.template, table, &batch.table.name);
            if topic != self.topic {
                check_topic_name(&topic).map_err(|e| {
                    SinkError::new(self.describe(), format!("table `{table}`: {e}"))
                })?;
                let plan = self.plans.remove(&topic).flatten();
                let parked = std::mem::replace(&mut self.plan, plan);
                self.plans
                    .insert(std::mem::replace(&mut self.topic, topic), parked);
            }
            self.send(batch, rejects, &mut applied)?;
        }
        if let Err(e) = self.producer.flush() {
            return Err(self.error(e));
        }
        self.checkpoint.merge(checkpoint);
        self.durable = Some(self.checkpoint.clone());
        applied.durable = self.durable.clone();
        Ok(applied)
    }

    fn flush(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        if let Err(e) = self.producer.flush() {
            return Err(self.error(e));
        }
        Ok(self.durable.clone())
    }

    fn describe(&self) -> String {
        format!("kafka sink {}", self.topic)
    }
}

impl KafkaSink {
    /// Queues every change of `batch` on the producer (delivered by the next flush).
    fn send(
        &mut self,
        batch: &ChangeBatch,
        rejects: &mut dyn Rejects,
        applied: &mut Applied,
    ) -> Result<(), SinkError> {
        self.plan(batch)?;
        let ops: Vec<Op> = batch.ops().collect();
        for (row, &op) in ops.iter().enumerate() {
            let keyed = self.write_key(batch, row, op);
            self.write_value(batch, row, op);
            let key = keyed.then_some(self.key.as_bytes());
            let sent = self.producer.send(
                &self.topic,
                key,
                Some(self.value.as_bytes()),
                headers(batch, row),
            );
            match sent {
                Ok(()) => applied.appended += 1,
                Err(SendError::Refused(reason)) => {
                    rejects.reject(batch, row, &reason)?;
                    continue;
                }
                Err(e) => return Err(self.error(e)),
            }
            if op == Op::Delete && self.tombstones {
                let key = Some(self.key.as_bytes());
                if let Err(e) = self.producer.send(&self.topic, key, None, None) {
                    return Err(self.error(e));
                }
            }
        }
        Ok(())
    }
}
