//! Dead letters read back from a Kafka topic ([`crate::dead_letter::kafka`]): the
//! original record's key and value, with the stage, reason and time in `weir.*` headers.
//! The topic is read without joining a consumer group: the replay's positions are kept by
//! the sink, with the rows.

use std::collections::BTreeMap;

use super::{LetterReader, OutputEnd, StoredLetter, file_origin, kafka_origin, parse_time, stream};
use crate::dead_letter::Stage;
use crate::dead_letter::kafka::KafkaDeadLetterConfig;
use crate::kafka::offsets::{BoundedRead, Offsets};
use crate::position::{Checkpoint, Position, kafka_stream};
use crate::source::SourceError;

pub struct KafkaLetters {
    offsets: Offsets,
    topic: String,
    pass_key: String,
    /// Where each partition ended when the replay began, by checkpoint stream key: letters
    /// written later (by this replay) are not read.
    ends: BTreeMap<String, i64>,
    /// When `ends` were read (milliseconds since the epoch).
    ends_at_ms: i64,
    read: Option<BoundedRead>,
}

impl KafkaLetters {
    /// `ends` are where the replay reads to, `None` for the partitions' ends now.
    pub fn open(
        config: &KafkaDeadLetterConfig,
        pipeline: &str,
        pass_key: &str,
        ends: Option<(BTreeMap<String, i64>, i64)>,
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
        let (ends, ends_at_ms) = match ends {
            Some(ends) => ends,
            None => (
                offsets
                    .ends(std::slice::from_ref(&config.topic))
                    .map_err(error)?,
                chrono::Utc::now().timestamp_millis(),
            ),
        };
        Ok(KafkaLetters {
            offsets,
            topic: config.topic.clone(),
            pass_key: pass_key.to_string(),
            ends,
            ends_at_ms,
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
        pipeline: header("weir.pipeline").map(str::to_string),
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

/// A letter's place in its partition, as the position of a line: offset N is line N + 1.
/// A position of the Kafka kind would name the dead-letter topic where the router looks
/// for a record's topic (a many-table pipeline routes an event that does not name its
/// table by its topic), and could send the record to a table of that name.
fn as_line(position: &Position) -> Position {
    match position {
        Position::Kafka { stream, offset, .. } => Position::File {
            stream: stream.clone(),
            line: *offset as u64 + 1,
            offset: *offset as u64,
            next: *offset as u64 + 1,
        },
        other => other.clone(),
    }
}

impl LetterReader for KafkaLetters {
    /// Refuses a topic that no longer holds what was replayed from it (deleted and
    /// created again, its offsets start over), then starts the read at each partition's
    /// first record (what a partition no longer holds was dropped by the topic's
    /// retention, and cannot be replayed).
    fn check(&mut self, checkpoint: &Checkpoint) -> Result<(), SourceError> {
        for (partition_stream, end) in &self.ends {
            let replayed = checkpoint.get(&stream(partition_stream, &self.pass_key));
            if let Some(resume) = replayed.filter(|resume| resume.next > *end) {
                return Err(self.error(format!(
                    "the target's checkpoint says letters up to offset {} of {partition_stream} \
                     were replayed, but it ends at {end}: the topic was deleted and created \
                     again since. Replaying it could pass over new letters as replayed; \
                     give the new letters a new topic",
                    resume.next - 1
                )));
            }
        }
        let (topic, pass_key) = (&self.topic, &self.pass_key);
        let stream_of = |partition| stream(&kafka_stream(topic, partition), pass_key);
        let read = BoundedRead::start(&self.offsets, topic, Some(&self.ends), stream_of)
            .map_err(|e| self.error(e))?
            .ends_read_at(self.ends_at_ms);
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
            (letter(record), as_line(position))
        });
        next.map_err(|e| self.error(e))
    }

    fn end(&self) -> OutputEnd {
        OutputEnd::Kafka {
            ends: self.ends.clone(),
            at_ms: self.ends_at_ms,
        }
    }

    fn describe(&self) -> String {
        format!("kafka topic {}", self.topic)
    }
}
