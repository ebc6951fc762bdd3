//! Running a pipeline: source → decode → sink → checkpoint.
//!
//! Two threads. The reader polls the source, decodes records into change batches and writes
//! dead letters; the applier hands batches to the sink. A bounded channel between them lets
//! decoding and applying overlap on two cores without unbounded memory. The start position
//! is the checkpoint the sink stored with its data; nothing moves it forward until the sink
//! reports the batch durable, and dead letters are flushed before the batch that covers them
//! is sent, so a crash at any point loses nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::LoadedPipeline;
use crate::dead_letter::{DeadLetter, DeadLetterConfig, DeadLetterSink, FileDeadLetters, Stage};
use crate::decode::table::IncompatibleChange;
use crate::decode::{DecodeError, Decoder, Outcome};
use crate::envelope::ChangeBatch;
use crate::metrics::Metrics;
use crate::position::{Checkpoint, Position};
use crate::sink::{self, SinkError};
use crate::source::{self, PollLimits, PollStatus, RawBatch, SourceError};

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Exit once the source has delivered nothing for this long and everything read is
    /// applied (for streaming sources; a file source without `follow` ends at its end).
    pub stop_when_idle: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("source: {0}")]
    Source(#[from] SourceError),
    #[error("sink: {0}")]
    Sink(#[from] SinkError),
    #[error(
        "schema change at {position}: column `{}` changed from {} to {}, which weir cannot \
         convert without losing data. Everything before this event is applied; the pipeline \
         stops here. Migrate the target column (or route the new type to a new column with a \
         transform) and restart",
        change.column, change.from, change.to
    )]
    IncompatibleSchema {
        change: IncompatibleChange,
        position: Position,
    },
    #[error("dead-letter output {path}: {error}")]
    DeadLetter { path: String, error: std::io::Error },
    #[error("the reader stopped unexpectedly")]
    ReaderLost,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Where the run started (the sink's stored checkpoint), if it resumed.
    pub resumed_from: Option<Checkpoint>,
    /// The last checkpoint the sink made durable.
    pub checkpoint: Option<Checkpoint>,
    pub elapsed: Duration,
    /// True when the run ended because it was asked to stop (a signal).
    pub interrupted: bool,
}

type Letters = Arc<Mutex<Box<dyn DeadLetterSink>>>;

fn dead_letters(pipeline: &LoadedPipeline) -> Letters {
    let DeadLetterConfig::File(config) = pipeline.dead_letter();
    let path = pipeline.resolve(&config.path);
    Arc::new(Mutex::new(Box::new(FileDeadLetters::new(
        &path,
        &pipeline.config.name,
    ))))
}

/// Runs the pipeline until the source ends, it is idle for `stop_when_idle`, or `stop` is
/// set. Returns an error for anything that needs a person: a setup problem, a sink that
/// keeps failing, an incompatible schema change.
pub fn run(
    pipeline: &LoadedPipeline,
    options: &RunOptions,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> Result<RunSummary, PipelineError> {
    let started = Instant::now();
    let mut sink = sink::build(pipeline)?;
    let resumed_from = sink.committed()?;
    let start = resumed_from.clone().unwrap_or_default();
    let mut table = pipeline.table_spec();
    table.target_types = sink.target_types()?;
    let mut source = source::build(pipeline)?;
    source.seek(&start)?;
    tracing::info!(
        pipeline = %pipeline.config.name,
        source = %source.describe(),
        sink = %sink.describe(),
        resume = ?resumed_from,
        "starting"
    );
    let letters = dead_letters(pipeline);
    let interrupted = Arc::new(AtomicBool::new(false));
    let (tx, rx) = sync_channel::<Result<ChangeBatch, PipelineError>>(2);
    let reader = {
        let pipeline = pipeline.clone();
        let options = options.clone();
        let metrics = metrics.clone();
        let stop = stop.clone();
        let letters = letters.clone();
        let interrupted = interrupted.clone();
        std::thread::Builder::new()
            .name("weir-reader".into())
            .spawn(move || {
                let decoder = Decoder::new(table, pipeline.format());
                let result = read(
                    &pipeline, source, decoder, start, &options, &metrics, &stop, &letters, &tx,
                );
                match result {
                    Ok(()) => interrupted.store(stop.load(Ordering::Relaxed), Ordering::Relaxed),
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })
            .expect("spawn the reader thread")
    };
    let applied = apply(&mut *sink, rx, &metrics);
    // Whatever happened, let the reader finish (it stops when the channel closes).
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    let checkpoint = applied?;
    Ok(RunSummary {
        resumed_from,
        checkpoint,
        elapsed: started.elapsed(),
        interrupted: interrupted.load(Ordering::Relaxed),
    })
}

/// The applier: every batch goes to the sink in order; the last durable checkpoint is
/// returned after a final flush.
fn apply(
    sink: &mut dyn sink::Sink,
    rx: Receiver<Result<ChangeBatch, PipelineError>>,
    metrics: &Metrics,
) -> Result<Option<Checkpoint>, PipelineError> {
    let mut durable = None;
    for message in rx {
        let batch = match message {
            Ok(batch) => batch,
            Err(e) => {
                // Make what was applied before the error durable, then report it.
                sink.flush()?;
                return Err(e);
            }
        };
        let applied = sink.apply(&batch)?;
        Metrics::add(&metrics.rows_applied, batch.num_rows() as u64);
        Metrics::add(&metrics.upserts, applied.upserts);
        Metrics::add(&metrics.deletes, applied.deletes);
        Metrics::add(&metrics.truncates, applied.truncates);
        Metrics::add(&metrics.appended, applied.appended);
        Metrics::add(&metrics.batches, 1);
        if applied.durable.is_some() {
            durable = applied.durable;
        }
    }
    if let Some(flushed) = sink.flush()? {
        durable = Some(flushed);
    }
    Ok(durable)
}

#[allow(clippy::too_many_arguments)]
fn read(
    pipeline: &LoadedPipeline,
    mut source: Box<dyn source::Source>,
    mut decoder: Decoder,
    start: Checkpoint,
    options: &RunOptions,
    metrics: &Metrics,
    stop: &AtomicBool,
    letters: &Letters,
    tx: &SyncSender<Result<ChangeBatch, PipelineError>>,
) -> Result<(), PipelineError> {
    let batch_config = &pipeline.config.batch;
    let limits = PollLimits {
        max_records: batch_config.max_events,
        max_bytes: batch_config.max_bytes,
        max_wait: batch_config.max_wait.0,
    };
    let mut raw = RawBatch::default();
    let mut checkpoint = start.clone();
    let mut sent = start;
    let mut last_activity = Instant::now();
    let dead_letter_path = letters.lock().expect("dead letters").describe();
    let letter_error = |error: std::io::Error| PipelineError::DeadLetter {
        path: dead_letter_path.clone(),
        error,
    };
    let mut letters_pending = false;

    // Sends the rows decoded so far (or just the checkpoint advance) to the applier.
    let send = |decoder: &mut Decoder,
                checkpoint: &Checkpoint,
                sent: &mut Checkpoint,
                letters_pending: &mut bool|
     -> Result<bool, PipelineError> {
        if decoder.rows() == 0 && checkpoint == sent {
            return Ok(true);
        }
        if *letters_pending {
            letters
                .lock()
                .expect("dead letters")
                .flush()
                .map_err(letter_error)?;
            *letters_pending = false;
        }
        let batch = decoder.finish(checkpoint.clone());
        *sent = checkpoint.clone();
        Ok(tx.send(Ok(batch)).is_ok())
    };

    while !stop.load(Ordering::Relaxed) {
        raw.clear();
        let status = source.poll(&mut raw, &limits)?;
        match status {
            PollStatus::End => break,
            PollStatus::Idle => {
                if !send(&mut decoder, &checkpoint, &mut sent, &mut letters_pending)? {
                    return Ok(());
                }
                if options
                    .stop_when_idle
                    .is_some_and(|idle| last_activity.elapsed() >= idle)
                {
                    tracing::info!("source idle; stopping");
                    break;
                }
                continue;
            }
            PollStatus::Records => last_activity = Instant::now(),
        }
        Metrics::add(&metrics.events_read, raw.len() as u64);
        Metrics::add(&metrics.bytes_read, raw.bytes() as u64);
        for (record, position) in raw.iter() {
            match decoder.decode(record, position) {
                Ok(Outcome::Row) => Metrics::add(&metrics.rows_decoded, 1),
                Ok(Outcome::Tombstone) => Metrics::add(&metrics.tombstones, 1),
                Ok(Outcome::SchemaChange(info)) => {
                    Metrics::add(&metrics.schema_changes, 1);
                    tracing::info!(at = %position, ddl = ?info.ddl, tables = ?info.table_changes, "schema change event");
                }
                Ok(Outcome::Ignored(what)) => {
                    Metrics::add(&metrics.ignored, 1);
                    tracing::debug!(at = %position, "ignored a {what}");
                }
                Err(DecodeError::Record(e)) => {
                    Metrics::add(&metrics.dead_letters, 1);
                    tracing::debug!(at = %position, error = %e.message, "record sent to the dead-letter output");
                    letters
                        .lock()
                        .expect("dead letters")
                        .write(&DeadLetter {
                            stage: Stage::Decode,
                            error: &e.message,
                            position: Some(position),
                            key: record.key,
                            raw: record.value,
                        })
                        .map_err(letter_error)?;
                    letters_pending = true;
                }
                Err(DecodeError::Fatal(change)) => {
                    // Apply everything before this event, then stop.
                    send(&mut decoder, &checkpoint, &mut sent, &mut letters_pending)?;
                    return Err(PipelineError::IncompatibleSchema {
                        change,
                        position: position.clone(),
                    });
                }
            }
            checkpoint.advance(position);
            if (decoder.rows() >= batch_config.max_events
                || decoder.bytes() >= batch_config.max_bytes)
                && !send(&mut decoder, &checkpoint, &mut sent, &mut letters_pending)?
            {
                return Ok(());
            }
        }
        if !send(&mut decoder, &checkpoint, &mut sent, &mut letters_pending)? {
            return Ok(());
        }
    }
    send(&mut decoder, &checkpoint, &mut sent, &mut letters_pending)?;
    Ok(())
}
