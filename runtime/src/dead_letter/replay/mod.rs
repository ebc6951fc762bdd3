//! `weir dlq replay`: dead letters sent back through the pipeline once what refused them
//! is fixed.
//!
//! A replay reads the pipeline's dead-letter output (the file or the topic) up to the end
//! it had when the replay started, and runs the pipeline with it as the source, in
//! passes: one per stage, and for the transform stage one per plugin. A letter goes back
//! in where it left: a record the decoder (or the router) refused is decoded again, a row
//! a transform plugin refused enters the chain at that plugin (it already went through
//! the plugins before it), and a row the sink refused goes to the sink without the
//! transforms (it went through all of them).
//!
//! Each pass has its own checkpoint stream per dead-letter file or partition
//! (`dlq:<output>#<pass>`), stored by the sink with the rows like any source position, so
//! a replay killed at any point and run again applies every letter once, and a replay of
//! one stage (`--stage`) does not move past the letters of another. A letter that fails
//! again is written to the dead-letter output again, with its reason, after the end the
//! replay read to: the next replay tries it again.
//!
//! Dead letters are at-least-once: a pipeline that crashed after writing some and before
//! its checkpoint writes them again when it reads those records again. A pass sends a
//! record once however many letters hold it, by the record's own position in the source
//! (a file's line, a partition's offset): it reads the output from its start, notes the
//! position of every letter of the pass (16 bytes each), and passes over a position it
//! has seen, whether sent by this replay or an earlier one.

pub mod file;
pub mod kafka;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};

use super::{DeadLetterConfig, Stage};
use crate::config::LoadedPipeline;
use crate::decode::Format;
use crate::position::{Checkpoint, Position};
use crate::source::{PollLimits, PollStatus, RawBatch, Source, SourceError};

/// One pass of a replay: the letters of one stage, or of one transform plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pass {
    /// Letters of the source, route, decode or sink stage.
    Stage(Stage),
    /// Rows the transform plugin named refused.
    Plugin(String),
    /// Rows refused by transform plugins the pipeline no longer has (`known` are the
    /// ones it has): not replayed, since where they would go back in is unknown; counted.
    GonePlugins { known: Vec<String> },
}

/// Which transforms a pass runs its letters through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transforms {
    All,
    /// The chain from this plugin on.
    From(String),
    None,
}

impl Pass {
    /// The passes a replay of `stages` (every stage when empty) makes, in the order the
    /// pipeline's stages come.
    pub fn plan(pipeline: &LoadedPipeline, stages: &[Stage]) -> Vec<Pass> {
        let wanted = |stage: Stage| stages.is_empty() || stages.contains(&stage);
        let mut passes = Vec::new();
        for stage in [Stage::Source, Stage::Route, Stage::Decode] {
            if wanted(stage) {
                passes.push(Pass::Stage(stage));
            }
        }
        if wanted(Stage::Transform) {
            let known: Vec<String> = pipeline
                .config
                .transforms
                .iter()
                .map(|t| t.name.clone())
                .collect();
            passes.extend(known.iter().cloned().map(Pass::Plugin));
            passes.push(Pass::GonePlugins { known });
        }
        if wanted(Stage::Sink) {
            passes.push(Pass::Stage(Stage::Sink));
        }
        passes
    }

    /// The pass's part of its checkpoint streams' names.
    pub fn key(&self) -> String {
        match self {
            Pass::Stage(stage) => stage.as_str().to_string(),
            Pass::Plugin(name) => format!("transform:{name}"),
            Pass::GonePlugins { .. } => "transform".to_string(),
        }
    }

    /// What the report calls it.
    pub fn describe(&self) -> String {
        match self {
            Pass::Stage(stage) => stage.as_str().to_string(),
            Pass::Plugin(name) => format!("transform `{name}`"),
            Pass::GonePlugins { .. } => "transform (plugins no longer in the pipeline)".into(),
        }
    }

    pub fn transforms(&self) -> Transforms {
        match self {
            Pass::Stage(Stage::Sink) | Pass::GonePlugins { .. } => Transforms::None,
            Pass::Stage(_) => Transforms::All,
            Pass::Plugin(name) => Transforms::From(name.clone()),
        }
    }

    /// The format of the pass's records: a decoder's letter holds the record as the
    /// source gave it, a transform's or the sink's the change as weir writes it (a
    /// Debezium event), whatever the source's format.
    pub fn format(&self, source: Format) -> Format {
        if self.past_the_decoder() {
            Format::DebeziumJson
        } else {
            source
        }
    }

    /// Whether the pass's records are changes past the decoder (a transform's or the
    /// sink's), which the plugins may have reshaped.
    pub fn past_the_decoder(&self) -> bool {
        !matches!(
            self,
            Pass::Stage(Stage::Source | Stage::Route | Stage::Decode)
        )
    }

    /// Whether the pass sends its letters on (the gone plugins' pass only counts them).
    fn sends(&self) -> bool {
        !matches!(self, Pass::GonePlugins { .. })
    }

    /// Whether a letter of `stage` with this reason is this pass's.
    fn takes(&self, stage: Stage, error: &str) -> bool {
        let plugin = || crate::plugin::chain::plugin_in_reason(error);
        match self {
            Pass::Stage(own) => *own == stage,
            Pass::Plugin(name) => stage == Stage::Transform && plugin() == Some(name),
            Pass::GonePlugins { known } => {
                stage == Stage::Transform && plugin().is_none_or(|p| !known.iter().any(|k| k == p))
            }
        }
    }
}

/// A dead letter as read back from the output.
#[derive(Debug, Default)]
pub struct StoredLetter {
    /// `None` when the output holds something that is not a dead letter weir wrote.
    pub stage: Option<Stage>,
    pub time: Option<DateTime<Utc>>,
    pub error: String,
    pub key: Option<Vec<u8>>,
    pub raw: Option<Vec<u8>>,
    /// The record was cut short to fit the output (a Kafka topic's message size).
    pub cut: bool,
    /// The record's position in the source, when it names one record (a file's line, a
    /// partition's offset; not a PostgreSQL commit's LSN, which several rows share).
    pub origin: Option<String>,
    /// The pipeline that wrote it, when the output says.
    pub pipeline: Option<String>,
}

impl StoredLetter {
    /// Whether `pass` of pipeline `pipeline` takes this letter: its stage (and plugin),
    /// and not another pipeline's that shares the output.
    fn belongs(&self, pass: &Pass, pipeline: &str) -> Result<bool, Foreign> {
        let Some(stage) = self.stage else {
            return Ok(false);
        };
        if !pass.takes(stage, &self.error) {
            return Ok(false);
        }
        match &self.pipeline {
            Some(other) if other != pipeline => Err(Foreign),
            _ => Ok(true),
        }
    }
}

/// A letter another pipeline wrote to a shared output.
struct Foreign;

/// Where the output ended when the replay began: every pass reads to there, so letters
/// written by the replay itself wait for the next replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputEnd {
    /// The file's length.
    File(u64),
    /// Each partition's end, by checkpoint stream key (`kafka:<topic>/<partition>`), and
    /// when they were read (milliseconds since the epoch).
    Kafka {
        ends: std::collections::BTreeMap<String, i64>,
        at_ms: i64,
    },
}

/// Reads dead letters back from one output, from its start.
pub trait LetterReader: Send {
    /// Checks that the output still holds what `checkpoint` says was replayed from it.
    fn check(&mut self, checkpoint: &Checkpoint) -> Result<(), SourceError>;
    /// The next letter and its position in the output (in this pass's streams), or `None`
    /// at the end it reads to.
    fn next(&mut self) -> Result<Option<(StoredLetter, Position)>, SourceError>;
    /// The end it reads to.
    fn end(&self) -> OutputEnd;
    fn describe(&self) -> String;
}

/// What a pass read, by what became of each letter.
#[derive(Debug, Default)]
pub struct PassCounts {
    /// This pass's letters read (others' are passed by).
    pub read: AtomicU64,
    /// Sent back through the pipeline.
    pub sent: AtomicU64,
    /// Older than `--since`.
    pub older: AtomicU64,
    /// Without a record to send: a tombstone, a record cut short to fit the output, or a
    /// row of a plugin the pipeline no longer has.
    pub not_replayable: AtomicU64,
    /// Entries of the output that are not dead letters weir wrote.
    pub unreadable: AtomicU64,
    /// Sent by an earlier replay.
    pub done_before: AtomicU64,
    /// A record another letter of the pass already holds (written again after a crash).
    pub duplicates: AtomicU64,
    /// Written by another pipeline sharing the output: left to that pipeline's replay.
    pub other_pipeline: AtomicU64,
}

impl PassCounts {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The source of a replay pass.
pub struct ReplaySource {
    reader: Box<dyn LetterReader>,
    pipeline: String,
    pass: Pass,
    since: Option<DateTime<Utc>>,
    counts: Arc<PassCounts>,
    /// What earlier replays applied, from the sink.
    done: Checkpoint,
    /// The origins of the pass's letters read so far, hashed.
    seen: HashSet<u128>,
}

impl ReplaySource {
    /// Opens the pipeline's dead-letter output for one pass.
    pub fn open(
        pipeline: &LoadedPipeline,
        pass: Pass,
        since: Option<DateTime<Utc>>,
        counts: Arc<PassCounts>,
        end: &OutputEnd,
    ) -> Result<ReplaySource, SourceError> {
        let reader = open_reader(pipeline, &pass.key(), Some(end))?;
        Ok(ReplaySource {
            reader,
            pipeline: pipeline.config.name.clone(),
            pass,
            since,
            counts,
            done: Checkpoint::default(),
            seen: HashSet::new(),
        })
    }
}

/// Where the output ends now, which the replay's passes read to, and how many of this
/// pipeline's letters each pass takes (what earlier replays sent included), from one read
/// of it: a pass with none is not run.
pub fn survey(
    pipeline: &LoadedPipeline,
    passes: &[Pass],
) -> Result<(OutputEnd, Vec<u64>), SourceError> {
    let mut reader = open_reader(pipeline, "survey", None)?;
    reader.check(&Checkpoint::default())?;
    let mut counts = vec![0; passes.len()];
    while let Some((letter, _)) = reader.next()? {
        let name = &pipeline.config.name;
        if let Some(i) = passes
            .iter()
            .position(|p| letter.belongs(p, name).unwrap_or(false))
        {
            counts[i] += 1;
        }
    }
    Ok((reader.end(), counts))
}

fn open_reader(
    pipeline: &LoadedPipeline,
    pass_key: &str,
    end: Option<&OutputEnd>,
) -> Result<Box<dyn LetterReader>, SourceError> {
    let mismatch = || SourceError {
        source_name: "dead-letter output".into(),
        message: "the replay's end is not of this output's kind".into(),
        retryable: false,
    };
    Ok(match pipeline.dead_letter() {
        DeadLetterConfig::File(config) => Box::new(file::FileLetters::open(
            &pipeline.resolve(&config.path),
            &config.path.display().to_string(),
            pass_key,
            match end {
                Some(OutputEnd::File(end)) => Some(*end),
                Some(_) => return Err(mismatch()),
                None => None,
            },
        )?),
        DeadLetterConfig::Kafka(config) => Box::new(kafka::KafkaLetters::open(
            &config,
            &pipeline.config.name,
            pass_key,
            match end {
                Some(OutputEnd::Kafka { ends, at_ms }) => Some((ends.clone(), *at_ms)),
                Some(_) => return Err(mismatch()),
                None => None,
            },
        )?),
    })
}

impl Source for ReplaySource {
    fn seek(&mut self, checkpoint: &Checkpoint) -> Result<(), SourceError> {
        self.reader.check(checkpoint)?;
        self.done = checkpoint.clone();
        Ok(())
    }

    fn poll(
        &mut self,
        batch: &mut RawBatch,
        limits: &PollLimits,
    ) -> Result<PollStatus, SourceError> {
        while !limits.filled(batch) {
            let Some((letter, position)) = self.reader.next()? else {
                break;
            };
            let counts = &*self.counts;
            if letter.stage.is_none() {
                PassCounts::add(&counts.unreadable);
                continue;
            }
            match letter.belongs(&self.pass, &self.pipeline) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(Foreign) => {
                    PassCounts::add(&counts.other_pipeline);
                    continue;
                }
            }
            // A record is known once sent, by this replay or an earlier one (the sink's
            // checkpoint covers the letter): another letter of it is a duplicate.
            let origin = letter.origin.as_deref().map(origin_hash);
            if self.done.covers(&position) {
                self.seen.extend(origin);
                PassCounts::add(&counts.done_before);
                continue;
            }
            if origin.is_some_and(|origin| self.seen.contains(&origin)) {
                PassCounts::add(&counts.duplicates);
                continue;
            }
            PassCounts::add(&counts.read);
            if self
                .since
                .is_some_and(|since| letter.time.is_none_or(|t| t < since))
            {
                PassCounts::add(&counts.older);
                continue;
            }
            match &letter.raw {
                Some(raw) if !letter.cut && self.pass.sends() => {
                    self.seen.extend(origin);
                    batch.push(letter.key.as_deref(), Some(raw), position);
                    PassCounts::add(&counts.sent);
                }
                _ => PassCounts::add(&counts.not_replayable),
            }
        }
        Ok(if batch.is_empty() {
            PollStatus::End
        } else {
            PollStatus::Records
        })
    }

    fn describe(&self) -> String {
        format!(
            "the dead letters of {} in {}",
            self.pass.describe(),
            self.reader.describe()
        )
    }
}

/// The checkpoint stream of one pass over one file or partition of the output.
fn stream(output: &str, pass_key: &str) -> String {
    format!("dlq:{output}#{pass_key}")
}

/// A letter's origin as 128 bits: two SipHash values with different prefixes (a
/// collision, which would pass over a letter, needs about 2^64 letters).
fn origin_hash(origin: &str) -> u128 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let half = |prefix: u8| {
        let mut hasher = DefaultHasher::new();
        prefix.hash(&mut hasher);
        origin.hash(&mut hasher);
        hasher.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
}

/// The origin of a record at a file's line or a partition's offset.
fn file_origin(file: &str, line: &str) -> String {
    format!("file:{file}:{line}")
}

fn kafka_origin(topic: &str, partition: &str, offset: &str) -> String {
    format!("kafka:{topic}/{partition}@{offset}")
}

/// Reads a dead letter's time as written (`%Y-%m-%dT%H:%M:%S%.3fZ`, or any RFC 3339).
fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_letter_belongs_to_one_pass() {
        let known = vec!["mask".to_string(), "probe".to_string()];
        let passes = [
            Pass::Stage(Stage::Decode),
            Pass::Plugin("mask".into()),
            Pass::Plugin("probe".into()),
            Pass::GonePlugins {
                known: known.clone(),
            },
            Pass::Stage(Stage::Sink),
        ];
        let letters = [
            (Stage::Decode, "invalid JSON: eof", 0),
            (
                Stage::Transform,
                "plugin_trap: the call failed (plugin `mask`)",
                1,
            ),
            (Stage::Transform, "plugin_row_error: no (plugin `probe`)", 2),
            (Stage::Transform, "plugin_row_error: no (plugin `gone`)", 3),
            (Stage::Transform, "a reason naming no plugin", 3),
            (Stage::Sink, "plugin_row_error: stale (resolver `lww`)", 4),
        ];
        for (stage, error, owner) in letters {
            for (i, pass) in passes.iter().enumerate() {
                assert_eq!(pass.takes(stage, error), i == owner, "{error} in {pass:?}");
            }
        }
        assert_eq!(passes[1].transforms(), Transforms::From("mask".into()));
        assert_eq!(passes[4].transforms(), Transforms::None);
        assert_eq!(passes[0].transforms(), Transforms::All);
        assert_eq!(
            stream("dl.jsonl", &passes[1].key()),
            "dlq:dl.jsonl#transform:mask"
        );
    }

    /// Letters in memory, in order.
    struct Letters(std::vec::IntoIter<(StoredLetter, Position)>);

    impl LetterReader for Letters {
        fn check(&mut self, _: &Checkpoint) -> Result<(), SourceError> {
            Ok(())
        }
        fn next(&mut self) -> Result<Option<(StoredLetter, Position)>, SourceError> {
            Ok(self.0.next())
        }
        fn end(&self) -> OutputEnd {
            OutputEnd::File(0)
        }
        fn describe(&self) -> String {
            "memory".into()
        }
    }

    fn letter(line: u64, stage: Stage, origin: Option<u64>, hour: u32) -> (StoredLetter, Position) {
        let letter = StoredLetter {
            stage: Some(stage),
            time: parse_time(&format!("2026-12-06T{hour:02}:00:00Z")),
            error: "bad".into(),
            key: None,
            raw: Some(format!("record {line}").into_bytes()),
            cut: false,
            origin: origin.map(|at| file_origin("events.jsonl", &at.to_string())),
            pipeline: Some(if line == 8 { "other" } else { "p" }.into()),
        };
        let position = Position::File {
            stream: "dlq:file:dl.jsonl#decode".into(),
            line,
            offset: line * 10,
            next: line * 10 + 10,
        };
        (letter, position)
    }

    fn sent(
        letters: Vec<(StoredLetter, Position)>,
        done: &Checkpoint,
        since: Option<&str>,
    ) -> (Vec<String>, Arc<PassCounts>) {
        let counts = Arc::new(PassCounts::default());
        let mut source = ReplaySource {
            reader: Box::new(Letters(letters.into_iter())),
            pipeline: "p".into(),
            pass: Pass::Stage(Stage::Decode),
            since: since.and_then(parse_time),
            counts: counts.clone(),
            done: Checkpoint::default(),
            seen: HashSet::new(),
        };
        source.seek(done).unwrap();
        let mut batch = RawBatch::default();
        let limits = PollLimits {
            max_records: 100,
            max_bytes: 1 << 20,
            max_wait: std::time::Duration::ZERO,
        };
        assert_eq!(
            source.poll(&mut batch, &limits).unwrap(),
            PollStatus::Records
        );
        let records = batch
            .iter()
            .map(|(r, _)| String::from_utf8(r.value.unwrap().to_vec()).unwrap())
            .collect();
        (records, counts)
    }

    #[test]
    fn a_record_is_sent_once_however_many_letters_hold_it() {
        let letters = || {
            vec![
                letter(1, Stage::Decode, Some(7), 8),
                letter(2, Stage::Sink, Some(8), 8),
                letter(3, Stage::Decode, Some(9), 9),
                // Written again by a run that crashed before its checkpoint.
                letter(4, Stage::Decode, Some(7), 9),
                letter(5, Stage::Decode, Some(9), 9),
                // No origin to tell by: sent.
                letter(6, Stage::Decode, None, 10),
                letter(7, Stage::Decode, Some(11), 10),
                // Another pipeline's, in a shared output.
                letter(8, Stage::Decode, Some(12), 10),
            ]
        };
        let (records, counts) = sent(letters(), &Checkpoint::default(), None);
        assert_eq!(records, ["record 1", "record 3", "record 6", "record 7"]);
        assert_eq!(PassCounts::get(&counts.duplicates), 2);
        assert_eq!(PassCounts::get(&counts.read), 4);
        assert_eq!(PassCounts::get(&counts.other_pipeline), 1);

        // Killed after the third letter: the duplicates of what was sent are still known.
        let mut done = Checkpoint::default();
        done.advance(&letters()[2].1);
        let (records, counts) = sent(letters(), &done, None);
        assert_eq!(records, ["record 6", "record 7"]);
        assert_eq!(PassCounts::get(&counts.done_before), 2);
        assert_eq!(PassCounts::get(&counts.duplicates), 2);

        // The first letter of record 7 is older than --since, its second is not: sent.
        let (records, counts) = sent(
            letters(),
            &Checkpoint::default(),
            Some("2026-12-06T09:00:00Z"),
        );
        assert_eq!(records, ["record 3", "record 4", "record 6", "record 7"]);
        assert_eq!(PassCounts::get(&counts.older), 1);
        assert_eq!(PassCounts::get(&counts.duplicates), 1);
    }

    #[test]
    fn times_are_read_as_written() {
        let t = parse_time("2026-12-06T08:34:08.123Z").unwrap();
        assert_eq!(t.timestamp_millis() % 1000, 123);
        assert!(parse_time("yesterday").is_none());
    }
}
