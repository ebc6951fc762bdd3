//! Dead letters read back from a Kafka topic ([`crate::dead_letter::kafka`]): the
//! original record's key and value, with the stage, reason and time in `weir.*` headers.
//! The topic is read without joining a consumer group: the replay's positions are kept by
//! the sink, with the rows.

use super::{LetterReader, StoredLetter, file_origin, kafka_origin, parse_time, stream};
use crate::dead_letter::Stage;
use crate::dead_letter::kafka::KafkaDeadLetterConfig;
use crate::kafka::offsets::{BoundedRead, Offsets};
use crate::position::{Checkpoint, Position, kafka_stream};
use crate::source::SourceError;

pub struct KafkaLetters {
    offsets: Offsets,
    topic: String,
    pass_key: String,
    /// Where each partition ended when the replay opened the topic: letters written later
    /// (by this replay) are not read.
    ends: std::collections::BTreeMap<String, i64>,
    read: Option<BoundedRead>,
}

impl KafkaLetters {
    pub fn open(
        config: &KafkaDeadLetterConfig,
        pipeline: &str,
        pass_key: &str,
    ) -> Result<KafkaLetters, SourceError> {
        let error = |message: String| SourceError {
            source_name: format!("dead-letter topic {}", config.topic),
            message,
            retryable: false,
        };
        // The group is named only because librdkafka needs one; it is never joined.
        let offsets = Offsets::connect(
            &config.brokers,
            &config.options,
            &format!("weir-dlq-replay-{pipeline}"),
        )
        .map_err(error)?;
        let ends = offsets
            .ends(std::slice::from_ref(&config.topic))
            .map_err(error)?;
        Ok(KafkaLetters {
            offsets,
            topic: config.topic.clone(),
            pass_key: pass_key.to_string(),
            ends,
            read: None,
        })
    }

    fn error(&self, message: String) -> SourceError {
        SourceError {
            source_name: format!("dead-letter topic {}", self.topic),
            message,
            retryable: false,
        }
    }
}

/// A record of the topic as a letter (`stage: None` when it has no `weir.error.stage`).
fn letter(record: crate::decode::RawRecord<'_>) -> StoredLetter {
    let header = |name: &str| {
        record
            .headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| std::str::from_utf8(value?).ok())
    };
    StoredLetter {
        stage: header("weir.error.stage").and_then(Stage::from_name),
        time: header("weir.error.time").and_then(parse_time),
        error: header("weir.error.message").unwrap_or_default().to_string(),
        key: record.key.map(<[u8]>::to_vec),
        raw: record.value.map(<[u8]>::to_vec),
        cut: header("weir.raw.original_bytes").is_some(),
        origin: match (
            header("weir.source.file"),
            header("weir.source.line"),
            header("weir.source.topic"),
            header("weir.source.partition"),
            header("weir.source.offset"),
        ) {
            (Some(file), Some(line), ..) => Some(file_origin(file, line)),
            (_, _, Some(topic), Some(partition), Some(offset)) => {
                Some(kafka_origin(topic, partition, offset))
            }
            _ => None,
        },
    }
}

impl LetterReader for KafkaLetters {
    /// Starts the read at each partition's first record (what a partition no longer holds
    /// was dropped by the topic's retention, and cannot be replayed).
    fn check(&mut self, _: &Checkpoint) -> Result<(), SourceError> {
        let (topic, pass_key) = (&self.topic, &self.pass_key);
        let stream_of = |partition| stream(&kafka_stream(topic, partition), pass_key);
        let read = BoundedRead::start(&self.offsets, topic, |_| None, Some(&self.ends), stream_of)
            .map_err(|e| self.error(e))?;
        self.read = Some(read);
        Ok(())
    }

    fn next(&mut self) -> Result<Option<(StoredLetter, Position)>, SourceError> {
        if self.read.is_none() {
            self.check(&Checkpoint::default())?;
        }
        let Some(read) = &mut self.read else {
            return Ok(None);
        };
        let next = read.next(&self.offsets, |record, position| {
            (letter(record), position.clone())
        });
        next.map_err(|e| self.error(e))
    }

    fn describe(&self) -> String {
        format!("kafka topic {}", self.topic)
    }
}
