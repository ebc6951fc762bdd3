//! Waiting for a running pipeline to catch up before comparing (`reconcile.wait`).
//!
//! The positions to reach are, by default, the end each stream of the pipeline's source
//! has when the wait starts: every Kafka partition's high watermark, or the file source's
//! length. How far the pipeline has applied comes from the checkpoint its sink stores
//! with the data (SQLite, PostgreSQL), which is exact; for a sink that stores none, from
//! the Kafka source's consumer group offsets, which the pipeline commits only after its
//! sink applied the data (so they may lag a little, never lead).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use weir_runtime::config::LoadedPipeline;
use weir_runtime::config::reconcile::WaitConfig;
use weir_runtime::kafka::offsets::Offsets;
use weir_runtime::position::kafka_stream;
use weir_runtime::sink::stored::stored_checkpoint;
use weir_runtime::source::SourceConfig;
use weir_runtime::source::kafka::KafkaSourceConfig;
use weir_runtime::source::postgres_cdc::PostgresCdcSourceConfig;
use weir_runtime::source::postgres_cdc::cutover::SourceDatabase;
use weir_runtime::source::postgres_cdc::stream_key;

use crate::ReconcileError;

/// How often the applied positions are read.
const POLL: Duration = Duration::from_millis(250);

/// What the wait reached, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Waited {
    /// The positions waited for, by stream (`kafka:<topic>/<partition>`, `file:<path>`):
    /// everything before each was applied.
    pub positions: BTreeMap<String, i64>,
    pub seconds: f64,
}

/// Blocks until the pipeline has applied its source up to the configured positions, or
/// fails when `timeout` passes first.
pub fn until_applied(
    pipeline: &LoadedPipeline,
    config: &WaitConfig,
) -> Result<Waited, ReconcileError> {
    let started = Instant::now();
    let fail = |e: String| ReconcileError::new(format!("wait: {e}"));
    let source = Source::of(pipeline).map_err(fail)?;
    let positions = match config.positions.is_empty() {
        true => source.ends().map_err(fail)?,
        false => source.given(&config.positions).map_err(fail)?,
    };
    let mut last_report = Instant::now();
    loop {
        let applied = source.applied(pipeline).map_err(fail)?;
        let behind: Vec<(&String, i64, i64)> = positions
            .iter()
            .map(|(stream, &wanted)| (stream, applied.get(stream).copied().unwrap_or(0), wanted))
            .filter(|(_, at, wanted)| at < wanted)
            .collect();
        if behind.is_empty() {
            return Ok(Waited {
                positions,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        let lag = || {
            behind
                .iter()
                .map(|(stream, at, wanted)| format!("{stream} at {at} of {wanted}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if started.elapsed() >= config.timeout.0 {
            return Err(fail(format!(
                "the pipeline did not apply its source up to the positions within {}: {}. \
                 Is `weir run` running for this pipeline? Raise `wait.timeout` if it is \
                 still catching up",
                humantime::format_duration(config.timeout.0),
                lag()
            )));
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            tracing::info!("waiting for the pipeline: {}", lag());
            last_report = Instant::now();
        }
        std::thread::sleep(POLL);
    }
}

/// The pipeline's source, as far as waiting needs it.
enum Source {
    /// The topics the pipeline reads (`topics`, or those matching `topic_pattern` when
    /// the wait starts), and a client reading its group's offsets.
    Kafka(Vec<String>, Offsets),
    /// The file's checkpoint stream key and its resolved path.
    File(String, std::path::PathBuf),
    /// A PostgreSQL database read by `postgres-cdc`: the replication stream's checkpoint
    /// key, and the source's settings.
    Postgres(String, Box<PostgresCdcSourceConfig>),
}

impl Source {
    fn of(pipeline: &LoadedPipeline) -> Result<Self, String> {
        match &pipeline.config.source {
            SourceConfig::Kafka(kafka) => {
                let offsets = Offsets::connect(&kafka.brokers, &kafka.options, &kafka.group_id)?;
                Ok(Source::Kafka(topics(kafka, &offsets)?, offsets))
            }
            SourceConfig::File(file) => Ok(Source::File(
                format!("file:{}", file.path.display()),
                pipeline.resolve(&file.path),
            )),
            SourceConfig::PostgresCdc(source) => Ok(Source::Postgres(
                stream_key(&source.slot),
                Box::new(source.clone()),
            )),
        }
    }

    /// Each stream's end now.
    fn ends(&self) -> Result<BTreeMap<String, i64>, String> {
        match self {
            // The end of the WAL is no position the slot's stream reaches (it holds other
            // databases' records too): a watermark message written now is.
            Source::Postgres(stream, config) => {
                let lsn = SourceDatabase::connect(config)?.watermark()?;
                Ok(BTreeMap::from([(stream.clone(), lsn as i64)]))
            }
            Source::Kafka(topics, kafka) => kafka.ends(topics),
            Source::File(stream, path) => {
                let length = std::fs::metadata(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                    .len();
                Ok(BTreeMap::from([(stream.clone(), length as i64)]))
            }
        }
    }

    /// The positions the user gave, by checkpoint stream key: `topic/partition` for
    /// Kafka, the source's path for a file.
    fn given(
        &self,
        positions: &indexmap::IndexMap<String, i64>,
    ) -> Result<BTreeMap<String, i64>, String> {
        positions
            .iter()
            .map(|(name, &offset)| {
                let stream = match self {
                    Source::Postgres(stream, _) => {
                        return Err(format!(
                            "position `{name}`: a postgres-cdc pipeline is waited for up to \
                             a watermark weir writes into the source's WAL when the wait \
                             starts; give no `positions` (the stream is {stream})"
                        ));
                    }
                    Source::Kafka(..) => {
                        let (topic, partition) = name
                            .strip_prefix("kafka:")
                            .unwrap_or(name)
                            .rsplit_once('/')
                            .and_then(|(t, p)| Some((t, p.parse::<i32>().ok()?)))
                            .ok_or_else(|| {
                                format!(
                                    "position `{name}`: name a topic partition as \
                                     `<topic>/<partition>`, e.g. `orders/0`"
                                )
                            })?;
                        kafka_stream(topic, partition)
                    }
                    Source::File(stream, _) => {
                        let path = stream.strip_prefix("file:").unwrap_or(stream);
                        if name.strip_prefix("file:").unwrap_or(name) != path {
                            return Err(format!(
                                "position `{name}`: the pipeline's source is the file \
                                 `{path}`; name it as written there"
                            ));
                        }
                        stream.clone()
                    }
                };
                Ok((stream, offset))
            })
            .collect()
    }

    /// How far the pipeline has applied each stream: the next position to apply.
    fn applied(&self, pipeline: &LoadedPipeline) -> Result<BTreeMap<String, i64>, String> {
        match (stored_checkpoint(pipeline), self) {
            (Some(stored), _) => Ok(stored
                .map_err(|e| e.to_string())?
                .streams
                .into_iter()
                .map(|(stream, point)| (stream, point.next))
                .collect()),
            (None, Source::Kafka(topics, kafka)) => kafka.committed(topics),
            (None, Source::Postgres(..)) => {
                Err("the pipeline's sink stores no checkpoint weir can read".into())
            }
            (None, Source::File(..)) => Err(
                "the pipeline's sink stores no checkpoint that weir can read from outside \
                 (Parquet, JSON lines, Kafka), and its file source has no consumer group; \
                 compare after `weir run` has finished instead"
                    .into(),
            ),
        }
    }
}

/// The topics a Kafka source reads: `topics`, or those matching `topic_pattern` now.
pub(crate) fn topics(config: &KafkaSourceConfig, kafka: &Offsets) -> Result<Vec<String>, String> {
    match &config.topic_pattern {
        None => Ok(config.topics.clone()),
        Some(pattern) => matching(pattern, kafka),
    }
}

/// The topics whose names match `pattern` now, as a `topic_pattern` subscription reads
/// it (anchored at the start).
pub(crate) fn matching(pattern: &str, kafka: &Offsets) -> Result<Vec<String>, String> {
    let anchored = match pattern.starts_with('^') {
        true => pattern.to_string(),
        false => format!("^{pattern}"),
    };
    let regex =
        regex::Regex::new(&anchored).map_err(|e| format!("topic_pattern `{pattern}`: {e}"))?;
    let mut topics = kafka.topics(|name| regex.is_match(name))?;
    topics.sort();
    Ok(topics)
}
