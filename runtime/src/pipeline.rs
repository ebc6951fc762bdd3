//! Running a pipeline: source → decode → transform plugins → sink → checkpoint.
//!
//! Three threads, four for sinks that prepare batches. The fetcher polls the source into
//! raw batches (for Kafka: copying records out of librdkafka's queue); the reader decodes
//! them into change batches and writes dead letters; the preparer (PostgreSQL: compact and
//! encode as COPY text) works on the next batch while the sink applies the current one;
//! the applier hands batches to the sink and, once the sink reports them durable, tells
//! the source (Kafka commits the offsets). Bounded channels between them let the stages
//! overlap without unbounded memory, and stop the reading when the sink is down. The start
//! position is the checkpoint the sink stored with its data; nothing moves a checkpoint
//! forward until the sink reports the batch durable, and dead letters are flushed before
//! the batch that covers them is applied, so a crash at any point loses nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::config::LoadedPipeline;
use crate::dead_letter::replay::{OutputEnd, Pass, PassCounts, ReplaySource, Transforms};
use crate::dead_letter::{self, DeadLetter, DeadLetterSink, Stage};
use crate::decode::native::NativeTables;
use crate::decode::table::IncompatibleChange;
use crate::decode::{DecodeError, Decoder, Outcome};
use crate::envelope::ChangeBatch;
use crate::lifecycle::writer::{StatusWriter, newest_source_time};
use crate::metrics::Metrics;
use crate::plugin::chain::{RejectRow, TransformChain};
use crate::position::{Checkpoint, Position};
use crate::sink::{self, Prepared, Rejects, Sink, SinkError};
use crate::source::{self, Committer, PollLimits, PollStatus, RawBatch, Source, SourceError};
use crate::tables::{GroupLimits, ManyTables, Planned};

/// What flows from the reader to the applier: the batches read (with what the sink's
/// preparer made of them), or the error that stopped the reader.
type Message = Result<(Work, Option<Prepared>), PipelineError>;

/// What the reader sends at once: one table's batch, or for a many-table pipeline the
/// batches of every table the records touched. They are applied in one sink transaction
/// with their checkpoint.
struct Work {
    batches: Vec<ChangeBatch>,
    checkpoint: Checkpoint,
    /// From a many-table pipeline (applied with [`Sink::apply_tables`]).
    many: bool,
    /// The source's assignment its records were read under ([`RawBatch::assignment`]).
    assignment: u64,
}

/// How the reader decodes: one table, or many (`tables:`), each with its own decoder.
enum Decoding {
    One(Box<Decoder>),
    Many(Box<ManyTables>),
}

impl Decoding {
    fn set_native(&mut self, tables: Option<Arc<NativeTables>>) {
        match self {
            Decoding::One(decoder) => decoder.set_native(tables),
            Decoding::Many(many) => many.set_native(tables),
        }
    }

    fn rows(&self) -> usize {
        match self {
            Decoding::One(decoder) => decoder.rows(),
            Decoding::Many(many) => many.rows(),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Decoding::One(decoder) => decoder.bytes(),
            Decoding::Many(many) => many.bytes(),
        }
    }

    /// Whether the batch holds as much as it may: `max_records` events (of one table, in a
    /// many-table batch), `max_total` events over its tables, or `max_bytes` of input.
    fn full(&self, limits: &PollLimits, max_total: usize) -> bool {
        let largest = match self {
            Decoding::One(decoder) => decoder.rows(),
            Decoding::Many(many) => many.largest(),
        };
        largest >= limits.max_records
            || self.rows() >= max_total
            || self.bytes() >= limits.max_bytes
    }

    /// Whether the batch is applied when a poll has been decoded, full or not. A
    /// many-table batch goes on filling while polls come back full (the source has more
    /// right now): a table costs the sink the same statements for 50 rows as for 5,000.
    fn ends_with_poll(&self, poll_was_full: bool) -> bool {
        match self {
            Decoding::One(_) => true,
            Decoding::Many(_) => !poll_was_full,
        }
    }

    /// Whether the last record was left for the next batch (`batch.max_tables`).
    fn take_deferred(&mut self) -> bool {
        match self {
            Decoding::One(_) => false,
            Decoding::Many(many) => many.take_deferred(),
        }
    }

    fn decode(
        &mut self,
        record: crate::decode::RawRecord<'_>,
        position: &Position,
    ) -> Result<Outcome, DecodeError> {
        match self {
            Decoding::One(decoder) => decoder.decode(record, position),
            Decoding::Many(many) => many.decode(record, position),
        }
    }

    /// The source table of the record decoded last, for its dead letter.
    fn table(&self) -> Option<&str> {
        match self {
            Decoding::One(decoder) => Some(decoder.table_name()),
            Decoding::Many(many) => many.current_table(),
        }
    }

    fn finish(&mut self, checkpoint: Checkpoint, assignment: u64, metrics: &Metrics) -> Work {
        match self {
            Decoding::One(decoder) => Work {
                checkpoint: checkpoint.clone(),
                batches: vec![decoder.finish(checkpoint)],
                many: false,
                assignment,
            },
            Decoding::Many(many) => Work {
                batches: many.finish(&checkpoint, metrics),
                checkpoint,
                many: true,
                assignment,
            },
        }
    }
}

/// What flows from the fetcher to the reader: records and how the poll ended.
type Fetched = Result<(RawBatch, PollStatus), SourceError>;

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Exit once the source has delivered nothing for this long and everything read is
    /// applied (for streaming sources; a file source without `follow` ends at its end).
    pub stop_when_idle: Option<Duration>,
    /// Read the dead-letter output instead of the source, for one pass of `weir dlq
    /// replay` ([`crate::dead_letter::replay`]).
    pub replay: Option<ReplayRun>,
}

/// One pass of a dead-letter replay.
#[derive(Debug, Clone)]
pub struct ReplayRun {
    pub pass: Pass,
    /// Letters written before this are passed over.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Where the dead-letter output ended when the replay began.
    pub end: OutputEnd,
    pub counts: Arc<PassCounts>,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("source: {0}")]
    Source(#[from] SourceError),
    #[error("sink: {0}")]
    Sink(#[from] SinkError),
    #[error(
        "schema change at {position}: column `{}`{} changed from {} to {}, which weir cannot \
         convert without losing data. Everything before this event is applied; the pipeline \
         stops here. Migrate the target column (or route the new type to a new column with a \
         transform) and restart",
        change.column, table.as_ref().map_or(String::new(), |t| format!(" of table `{t}`")),
        change.from, change.to
    )]
    IncompatibleSchema {
        change: IncompatibleChange,
        /// The table, in a many-table pipeline (a one-table pipeline names only one).
        table: Option<String>,
        /// Boxed: errors travel in every `Result` of the pipeline.
        position: Box<Position>,
    },
    #[error("dead-letter output {path}: {error}")]
    DeadLetter { path: String, error: String },
    #[error("{0}")]
    Plugin(String),
    /// The pipeline cannot start as configured.
    #[error("{0}")]
    Setup(String),
    #[error(
        "the {stage} stage panicked (thread {thread}): {message}. Everything before the batch \
         it held is applied and checkpointed; a rerun resumes there. This is a bug in weir: \
         please report it with this message"
    )]
    Panicked {
        stage: &'static str,
        thread: String,
        message: String,
    },
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

/// The dead-letter output, shared by the reader (decode errors) and the applier (rows the
/// sink refuses).
#[derive(Clone)]
struct Letters {
    sink: Arc<Mutex<Box<dyn DeadLetterSink>>>,
    metrics: Arc<Metrics>,
    /// Native events ([`crate::decode::native`]) are written as Debezium documents.
    native: Option<Arc<NativeTables>>,
}

impl Letters {
    fn error(&self, error: impl ToString) -> PipelineError {
        PipelineError::DeadLetter {
            path: self.sink.lock().expect("dead letters").describe(),
            error: error.to_string(),
        }
    }

    fn write(&self, letter: &DeadLetter<'_>) -> Result<(), PipelineError> {
        tracing::debug!(stage = letter.stage.as_str(), error = %letter.error, "record sent to the dead-letter output");
        let native = |raw| self.native.is_some() && crate::decode::native::is_native(raw);
        let rendered = match (&self.native, letter.raw) {
            (Some(native_tables), Some(raw)) if native(raw) => native_tables.render(raw),
            _ => None,
        };
        let rendered_letter;
        let letter = match &rendered {
            Some(document) => {
                rendered_letter = DeadLetter {
                    raw: Some(document),
                    ..*letter
                };
                &rendered_letter
            }
            None => letter,
        };
        // The status page shows the record as the dead letter holds it, with its fields'
        // names, which its masking needs: a native record not rendered is left out.
        match letter.raw {
            Some(raw) if native(raw) => self.metrics.dead_letter(&DeadLetter {
                raw: None,
                ..*letter
            }),
            _ => self.metrics.dead_letter(letter),
        }
        self.sink
            .lock()
            .expect("dead letters")
            .write(letter)
            .map_err(|e| self.error(e))
    }

    fn flush(&self) -> Result<(), PipelineError> {
        self.sink
            .lock()
            .expect("dead letters")
            .flush()
            .map_err(|e| self.error(e))
    }

    /// Writes one row of a change batch (as Debezium JSON) with its source position.
    fn write_change(
        &self,
        stage: Stage,
        batch: &ChangeBatch,
        row: usize,
        error: &str,
    ) -> Result<(), PipelineError> {
        let mut change = String::new();
        crate::encode::write_change(&mut change, batch, row);
        self.write(&DeadLetter {
            stage,
            error,
            table: Some(&batch.table.name),
            position: batch.positions.get(row),
            key: None,
            raw: Some(change.as_bytes()),
        })
    }

    /// A row a transform plugin refused (or a row of a batch whose call failed).
    fn reject_row(
        &self,
        batch: &ChangeBatch,
        row: usize,
        error: &str,
    ) -> Result<(), PipelineError> {
        self.write_change(Stage::Transform, batch, row, error)
    }
}

/// Rows a sink refuses go to the dead-letter output, durably, before the sink commits.
impl Rejects for Letters {
    fn reject(&mut self, batch: &ChangeBatch, row: usize, error: &str) -> Result<(), SinkError> {
        self.write_change(Stage::Sink, batch, row, error)
            .and_then(|_| self.flush())
            .map_err(|e| SinkError::new("dead-letter output", e.to_string()))
    }
}

/// Runs the pipeline until the source ends, it is idle for `stop_when_idle`, or `stop` is
/// set. Returns an error for anything that needs a person: a setup problem, a sink that
/// refuses the data, an incompatible schema change.
pub fn run(
    pipeline: &LoadedPipeline,
    options: &RunOptions,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> Result<RunSummary, PipelineError> {
    metrics.lifecycle.configure(
        pipeline.config.lifecycle.catch_up_lag.0,
        !matches!(pipeline.config.source, source::SourceConfig::File(_)),
    );
    let mut status = None;
    let result = run_stages(pipeline, options, metrics.clone(), stop, &mut status);
    // A run that failed before its sink was ready (a plugin that does not load, a target
    // that cannot be reached) writes no status: it never reached the target, and a
    // status would create a target database (SQLite) or folder just to say so.
    if let Some(status) = status {
        status.finish(result.as_ref().err().map(ToString::to_string).as_deref());
    }
    result
}

fn run_stages(
    pipeline: &LoadedPipeline,
    options: &RunOptions,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    status: &mut Option<StatusWriter>,
) -> Result<RunSummary, PipelineError> {
    let started = Instant::now();
    let mut transforms = TransformChain::load(pipeline).map_err(PipelineError::Plugin)?;
    if let Some(replay) = &options.replay {
        transforms = match replay.pass.transforms() {
            Transforms::All => transforms,
            Transforms::From(name) => transforms.and_then(|chain| chain.starting_at(&name)),
            Transforms::None => None,
        };
    }
    let mut sink = sink::build(pipeline, metrics.clone())?;
    metrics.watch_plugins(
        transforms
            .iter()
            .flat_map(TransformChain::stats)
            .chain(sink.plugin_stats()),
    );
    let resumed_from = sink.committed()?;
    // Started once the sink has prepared its own tables (the status is stored beside
    // them, and two sessions creating one schema at once make one of them fail).
    // A replay leaves the pipeline's status (its state, its source's positions) as the
    // pipeline's own runs left it.
    if options.replay.is_none() {
        *status = Some(StatusWriter::start(pipeline, metrics.clone()));
    }
    let start = resumed_from.clone().unwrap_or_default();
    let format = match &options.replay {
        Some(replay) => replay.pass.format(pipeline.format()),
        None => pipeline.format(),
    };
    let past_the_decoder = options
        .replay
        .as_ref()
        .is_some_and(|replay| replay.pass.past_the_decoder());
    let mut decoding = match &pipeline.config.tables {
        None => {
            let mut table = pipeline.table_spec();
            table.target_types = sink.target_types()?;
            if let Some(chain) = transforms.as_mut() {
                chain.set_target_types(table.target_types.clone());
            }
            if past_the_decoder {
                table = table.with_declared_as_hints();
            }
            Decoding::One(Box::new(Decoder::new(table, format)))
        }
        Some(tables) => {
            let targets = sink.target_tables()?;
            let keys_required = pipeline.config.sink.capabilities().applies_by_key;
            let mut many = ManyTables::new(
                tables,
                format,
                targets,
                keys_required,
                pipeline.config.batch.max_tables,
            )
            .map_err(PipelineError::Setup)?;
            if past_the_decoder {
                many.set_declared_as_hints();
            }
            Decoding::Many(Box::new(many))
        }
    };
    let mut source = match &options.replay {
        Some(replay) => Box::new(ReplaySource::open(
            pipeline,
            replay.pass.clone(),
            replay.since,
            replay.counts.clone(),
            &replay.end,
        )?),
        None => source::build(pipeline, metrics.clone())?,
    };
    let native = source.native_tables();
    decoding.set_native(native.clone());
    if let Some(reader) = sink.stored_positions() {
        source.read_stored_positions_with(reader);
    }
    source.seek(&start)?;
    if metrics.lifecycle.current_phase().is_none() {
        // A source without phases of its own (a file, Kafka) streams from the start.
        metrics.lifecycle.phase(
            crate::lifecycle::State::Streaming,
            format!("reading {}", source.describe()),
        );
    }
    let committer = source.committer();
    tracing::info!(
        pipeline = %pipeline.config.name,
        source = %source.describe(),
        sink = %sink.describe(),
        resume = ?resumed_from,
        "starting"
    );
    let letters = Letters {
        sink: Arc::new(Mutex::new(
            dead_letter::build(pipeline, metrics.clone()).map_err(|e| {
                PipelineError::DeadLetter {
                    path: "dead-letter output".into(),
                    error: e,
                }
            })?,
        )),
        metrics: metrics.clone(),
        native,
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    let limits = PollLimits {
        max_records: pipeline.config.batch.max_events,
        max_bytes: pipeline.config.batch.max_bytes,
        max_wait: pipeline.config.batch.max_wait.0,
    };
    // Batches queued between stages. A many-table batch holds many tables' data, each with
    // a fixed cost in every stage (its arrays, its prepared COPY text), so its stages hand
    // over without a queue: three batches in flight (decoding, preparing, applying), not
    // six (docs/benchmarks.md, "Many tables against one"). Its reader decodes several
    // polls into one batch, so one spare poll buffer keeps the fetcher busy.
    let many = pipeline.config.tables.is_some();
    let queued = |one_table: usize| if many { 0 } else { one_table };
    let (fetched_tx, fetched) = sync_channel::<Fetched>(queued(1));
    // Emptied raw batches go back to the fetcher, so their buffers are reused.
    let (spare, spares) = sync_channel::<RawBatch>(if many { 1 } else { 2 });
    let fetcher = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("weir-fetch".into())
            .spawn(move || fetch(source, limits, &stop, &fetched_tx, &spares))
            .expect("spawn the fetch thread")
    };
    let (tx, rx) = sync_channel::<Message>(queued(2));
    let reader = {
        let mut reader = Reader {
            limits,
            max_total_events: pipeline.config.batch.max_total_events,
            max_record_bytes: pipeline.config.batch.max_record_bytes,
            stop_when_idle: options.stop_when_idle,
            decoding,
            fetched,
            spare,
            checkpoint: start.clone(),
            sent: start,
            assignment: 0,
            letters: letters.clone(),
            letters_pending: false,
            metrics: metrics.clone(),
            stop: stop.clone(),
            tx,
        };
        let interrupted = interrupted.clone();
        std::thread::Builder::new()
            .name("weir-reader".into())
            .spawn(move || match reader.run() {
                Ok(()) => interrupted.store(reader.stop.load(Ordering::Relaxed), Ordering::Relaxed),
                Err(e) => {
                    let _ = reader.tx.send(Err(e));
                }
            })
            .expect("spawn the reader thread")
    };
    let (rx, transformer) = match transforms {
        Some(chain) => {
            let (transformed_tx, transformed_rx) = sync_channel::<Message>(queued(1));
            let letters = letters.clone();
            let thread = std::thread::Builder::new()
                .name("weir-transform".into())
                .spawn(move || transform(chain, letters, rx, transformed_tx))
                .expect("spawn the transform thread");
            (transformed_rx, Some(thread))
        }
        None => (rx, None),
    };
    let (rx, preparer) = match sink.preparer() {
        Some(prepare) => {
            let (prepared_tx, prepared_rx) = sync_channel::<Message>(queued(1));
            let thread = std::thread::Builder::new()
                .name("weir-prepare".into())
                .spawn(move || {
                    for message in rx {
                        crate::fault::panic_if_injected("prepare");
                        let message = message.map(|(work, _)| {
                            let prepared = match work.batches.as_slice() {
                                [batch] if !work.many => prepare(batch),
                                batches => {
                                    let each: sink::PreparedTables =
                                        batches.iter().map(|b| prepare(b)).collect();
                                    Some(Box::new(each) as Prepared)
                                }
                            };
                            (work, prepared)
                        });
                        if prepared_tx.send(message).is_err() {
                            break;
                        }
                    }
                })
                .expect("spawn the prepare thread");
            (prepared_rx, Some(thread))
        }
        None => (rx, None),
    };
    let mut applier = Applier {
        sink: &mut *sink,
        committer,
        letters,
        metrics: &metrics,
        stop: &stop,
    };
    // A panic in the applier is caught like the other stages' (it runs on the caller's
    // thread), so every stage that dies is reported the same way.
    let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| applier.run(rx)))
        .unwrap_or_else(|panic| {
            Err(PipelineError::Panicked {
                stage: "apply",
                thread: std::thread::current().name().unwrap_or("main").to_string(),
                message: crate::fault::panic_message(panic.as_ref()),
            })
        });
    // Whatever happened, let the reader finish (it stops when the channel closes).
    stop.store(true, Ordering::Relaxed);
    // A stage that died closed its channel, which the applier read as the end of the
    // input: the join results tell a panic from an end, and a panic fails the run.
    let mut panicked = None;
    let mut join = |stage: &'static str, thread: std::thread::JoinHandle<()>| {
        let name = thread.thread().name().unwrap_or("unnamed").to_string();
        if let Err(panic) = thread.join() {
            panicked.get_or_insert(PipelineError::Panicked {
                stage,
                thread: name,
                message: crate::fault::panic_message(panic.as_ref()),
            });
        }
    };
    join("read", reader);
    // The fetcher stops at its next poll (within `batch.max_wait`), or at once when it is
    // waiting to hand over records, since the reader is gone.
    join("fetch", fetcher);
    if let Some(transformer) = transformer {
        join("transform", transformer);
    }
    if let Some(preparer) = preparer {
        join("prepare", preparer);
    }
    let checkpoint = match (applied, panicked) {
        (Err(e @ PipelineError::Panicked { .. }), _) | (_, Some(e)) => return Err(e),
        (applied, None) => applied?,
    };
    Ok(RunSummary {
        resumed_from,
        checkpoint,
        elapsed: started.elapsed(),
        interrupted: interrupted.load(Ordering::Relaxed),
    })
}

/// The applier: every batch goes to the sink in order; the last durable checkpoint is
/// returned after a final flush.
struct Applier<'a> {
    sink: &'a mut dyn Sink,
    committer: Option<Box<dyn Committer>>,
    letters: Letters,
    metrics: &'a Metrics,
    stop: &'a AtomicBool,
}

/// Backoff for a sink that keeps failing: doubling from 100 ms to 10 s, with jitter so
/// several pipelines do not retry in step.
fn backoff(attempt: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << attempt.min(7)).min(10_000);
    let jitter = rand::rng().random_range(0..=base / 2);
    Duration::from_millis(base / 2 + jitter)
}

impl Applier<'_> {
    fn run(&mut self, rx: Receiver<Message>) -> Result<Option<Checkpoint>, PipelineError> {
        let mut durable = None;
        for message in rx {
            crate::fault::panic_if_injected("apply");
            let (work, prepared) = match message {
                Ok(work) => work,
                Err(e) => {
                    // Make what was applied before the error durable, then report it.
                    self.flush(&mut durable)?;
                    return Err(e);
                }
            };
            if self.revoked(&work) {
                continue;
            }
            let applying = Instant::now();
            let Some(applied) = self.apply_with_retry(&work, prepared.as_ref())? else {
                continue;
            };
            self.metrics
                .apply_seconds
                .0
                .observe(applying.elapsed().as_secs_f64());
            let rows: usize = work.batches.iter().map(ChangeBatch::num_rows).sum();
            Metrics::add(&self.metrics.rows_applied, rows as u64);
            if work.many && rows > 0 {
                self.metrics.add_table_counts(
                    work.batches
                        .iter()
                        .map(|batch| {
                            let counts = crate::metrics::TableCounts {
                                applied: batch.num_rows() as u64,
                                ..Default::default()
                            };
                            (batch.table.name.clone(), counts)
                        })
                        .collect(),
                );
            }
            Metrics::add(&self.metrics.upserts, applied.upserts);
            Metrics::add(&self.metrics.deletes, applied.deletes);
            Metrics::add(&self.metrics.truncates, applied.truncates);
            Metrics::add(&self.metrics.appended, applied.appended);
            Metrics::add(&self.metrics.conflicts_skipped, applied.skipped);
            Metrics::add(&self.metrics.conflicts_merged, applied.merged);
            Metrics::add(&self.metrics.echoes_dropped, applied.echoes);
            Metrics::add(&self.metrics.duplicates_skipped, applied.duplicates);
            Metrics::add(&self.metrics.already_applied, applied.already_applied);
            Metrics::add(&self.metrics.batches, 1);
            if let Some(newest) = work.batches.iter().filter_map(newest_source_time).max() {
                self.metrics.lifecycle.changes_applied(newest);
            }
            if let Some(checkpoint) = applied.durable {
                if let Some(committer) = &self.committer {
                    committer.commit(&checkpoint);
                }
                self.metrics.lifecycle.durable(&checkpoint);
                durable = Some(checkpoint);
            }
        }
        self.flush(&mut durable)?;
        Ok(durable)
    }

    /// Whether `work` was read under an assignment the source has lost since (a consumer
    /// group revoked its partitions): it is abandoned, and its partitions' next owner
    /// starts at the sink's stored position. Never half a stream: every later batch of
    /// that assignment is abandoned too.
    fn revoked(&self, work: &Work) -> bool {
        let Some(committer) = &self.committer else {
            return false;
        };
        if work.assignment == committer.assignment() {
            return false;
        }
        let events: usize = work.batches.iter().map(ChangeBatch::num_rows).sum();
        Metrics::add(&self.metrics.events_abandoned, events as u64);
        tracing::debug!(
            events,
            "abandoning a batch read before the partitions were revoked"
        );
        true
    }

    fn flush(&mut self, durable: &mut Option<Checkpoint>) -> Result<(), PipelineError> {
        if let Some(flushed) = self.sink.flush()? {
            *durable = Some(flushed);
        }
        if let Some(checkpoint) = durable.as_ref() {
            if let Some(committer) = &self.committer {
                committer.commit_sync(checkpoint);
            }
            self.metrics.lifecycle.durable(checkpoint);
        }
        Ok(())
    }

    /// Applies a batch, retrying while the sink reports a retryable error (a lost
    /// connection). Nothing is committed meanwhile, and the bounded channel stops the
    /// reader, so no position moves while the sink is down.
    /// `None` when the batch was abandoned between attempts (its partitions were
    /// revoked meanwhile).
    fn apply_with_retry(
        &mut self,
        work: &Work,
        prepared: Option<&Prepared>,
    ) -> Result<Option<sink::Applied>, PipelineError> {
        let component = "sink";
        let mut attempt = 0;
        loop {
            let applied = match work.batches.as_slice() {
                [batch] if !work.many => {
                    self.sink.apply_prepared(batch, prepared, &mut self.letters)
                }
                batches => {
                    self.sink
                        .apply_tables(batches, prepared, &work.checkpoint, &mut self.letters)
                }
            };
            match applied {
                Ok(applied) => {
                    self.metrics.health.ok(component);
                    return Ok(Some(applied));
                }
                Err(e) if e.retryable && !self.stop.load(Ordering::Relaxed) => {
                    self.metrics.health.failing(component, &e.to_string());
                    Metrics::add(&self.metrics.sink_retries, 1);
                    std::thread::sleep(backoff(attempt));
                    attempt += 1;
                    if self.revoked(work) {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The transform stage: every batch through the plugins, in order. Dead letters are
/// flushed before the batch that covers them goes on, as the reader does.
fn transform(
    mut chain: TransformChain,
    mut letters: Letters,
    rx: Receiver<Message>,
    tx: SyncSender<Message>,
) {
    /// Notes whether this batch produced dead letters, so only those batches flush them.
    struct Noting<'a> {
        letters: &'a mut Letters,
        wrote: bool,
    }
    impl RejectRow<PipelineError> for Noting<'_> {
        fn reject(
            &mut self,
            batch: &ChangeBatch,
            row: usize,
            error: &str,
        ) -> Result<(), PipelineError> {
            self.wrote = true;
            self.letters.reject_row(batch, row, error)
        }
    }
    for message in rx {
        crate::fault::panic_if_injected("transform");
        let message = message.and_then(|(mut work, prepared)| {
            let mut noting = Noting {
                letters: &mut letters,
                wrote: false,
            };
            // One table per call: each table's batch goes through the plugins alone.
            work.batches = std::mem::take(&mut work.batches)
                .into_iter()
                .map(|batch| chain.run(batch, &mut noting))
                .collect::<Result<_, _>>()?;
            if noting.wrote {
                letters.flush()?;
            }
            Ok((work, prepared))
        });
        let failed = message.is_err();
        if tx.send(message).is_err() || failed {
            return;
        }
    }
}

/// The fetcher: polls the source until it ends, fails, the pipeline stops, or the reader
/// is gone. Polling runs ahead of decoding by at most one raw batch.
/// How often a source that keeps its connection alive is asked to, while it waits.
const KEEP_ALIVE_EVERY: Duration = Duration::from_millis(100);

fn fetch(
    mut source: Box<dyn Source>,
    limits: PollLimits,
    stop: &AtomicBool,
    fetched: &SyncSender<Fetched>,
    spares: &Receiver<RawBatch>,
) {
    while !stop.load(Ordering::Relaxed) {
        crate::fault::panic_if_injected("fetch");
        let mut raw = spares.try_recv().unwrap_or_default();
        raw.clear();
        let polled = source.poll(&mut raw, &limits);
        let last = matches!(polled, Ok(PollStatus::End) | Err(_));
        let mut message = polled.map(|status| (raw, status));
        if !source.keeps_alive() {
            if fetched.send(message).is_err() || last {
                return;
            }
            continue;
        }
        // While the next stage is full, the source keeps its connection alive. The hand-over
        // is retried every millisecond: the channel may be a rendezvous, which takes a
        // message only while the reader waits.
        let mut kept = Instant::now();
        loop {
            match fetched.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(back)) => {
                    message = back;
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if kept.elapsed() >= KEEP_ALIVE_EVERY {
                        source.keep_alive();
                        kept = Instant::now();
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        if last {
            return;
        }
    }
}

/// Writes a record's dead letter; `pending` says letters await a flush.
fn write_letter(
    letters: &mut Letters,
    pending: &mut bool,
    stage: Stage,
    table: Option<&str>,
    record: crate::decode::RawRecord<'_>,
    position: &Position,
    error: &str,
) -> Result<(), PipelineError> {
    letters.write(&DeadLetter {
        stage,
        error,
        table,
        position: Some(position),
        key: record.key,
        raw: record.value,
    })?;
    *pending = true;
    Ok(())
}

/// What decoded records came to, for the metrics, with a log line for each schema change
/// and ignored event.
#[derive(Debug, Default)]
struct DecodedCounts {
    rows: u64,
    tombstones: u64,
    schema_changes: u64,
    ignored: u64,
}

impl DecodedCounts {
    fn count(&mut self, outcome: &Outcome, position: &Position) {
        match outcome {
            Outcome::Row => self.rows += 1,
            Outcome::Tombstone => self.tombstones += 1,
            Outcome::SchemaChange(info) => {
                self.schema_changes += 1;
                tracing::info!(at = %position, ddl = ?info.ddl, tables = ?info.table_changes, "schema change event");
            }
            Outcome::Ignored(what) => {
                self.ignored += 1;
                tracing::debug!(at = %position, "ignored a {what}");
            }
        }
    }

    fn publish(&self, metrics: &Metrics) {
        for (counter, n) in [
            (&metrics.rows_decoded, self.rows),
            (&metrics.tombstones, self.tombstones),
            (&metrics.schema_changes, self.schema_changes),
            (&metrics.ignored, self.ignored),
        ] {
            if n > 0 {
                Metrics::add(counter, n);
            }
        }
    }
}

/// The reader: fetched records → decoder → channel, with dead letters for what cannot be
/// decoded.
struct Reader {
    limits: PollLimits,
    /// `batch.max_total_events`: most events of a many-table batch.
    max_total_events: usize,
    max_record_bytes: usize,
    stop_when_idle: Option<Duration>,
    decoding: Decoding,
    fetched: Receiver<Fetched>,
    spare: SyncSender<RawBatch>,
    /// Where to resume after everything read so far.
    checkpoint: Checkpoint,
    /// The checkpoint of the last batch sent.
    sent: Checkpoint,
    /// The source's assignment of the records decoded since the last batch sent.
    assignment: u64,
    letters: Letters,
    letters_pending: bool,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    tx: SyncSender<Message>,
}

impl Reader {
    /// Sends the rows decoded so far (or just the checkpoint's advance). Returns false when
    /// the applier has gone.
    fn send(&mut self) -> Result<bool, PipelineError> {
        if self.decoding.rows() == 0 && self.checkpoint == self.sent {
            return Ok(true);
        }
        if self.letters_pending {
            self.letters.flush()?;
            self.letters_pending = false;
        }
        let work = self
            .decoding
            .finish(self.checkpoint.clone(), self.assignment, &self.metrics);
        self.sent = self.checkpoint.clone();
        Ok(self.tx.send(Ok((work, None))).is_ok())
    }

    fn run(&mut self) -> Result<(), PipelineError> {
        let mut last_activity = Instant::now();
        let mut last_fetched = Instant::now();
        // Idle time is what the reader saw while it ran: across a long gap between two
        // polls (the process was stopped, a VM paused) nothing was seen, so the source
        // gets a fresh chance rather than a stop.
        let stalled = (self.limits.max_wait * 10).max(Duration::from_secs(5));
        while !self.stop.load(Ordering::Relaxed) {
            // The fetcher only goes away after sending `End` or an error, or on a stop.
            let Ok(fetched) = self.fetched.recv() else {
                break;
            };
            if last_fetched.elapsed() > stalled {
                last_activity = Instant::now();
            }
            last_fetched = Instant::now();
            let (raw, status) = fetched?;
            match status {
                PollStatus::End => break,
                PollStatus::Idle => {
                    let _ = self.spare.try_send(raw);
                    if !self.send()? {
                        return Ok(());
                    }
                    if self
                        .stop_when_idle
                        .is_some_and(|idle| last_activity.elapsed() >= idle)
                    {
                        tracing::info!("source idle; stopping");
                        break;
                    }
                    continue;
                }
                PollStatus::Waiting => {
                    // Not idle: e.g. the group is still assigning partitions.
                    let _ = self.spare.try_send(raw);
                    last_activity = Instant::now();
                    if !self.send()? {
                        return Ok(());
                    }
                    continue;
                }
                PollStatus::Records => last_activity = Instant::now(),
                PollStatus::Heartbeats => {}
            }
            if raw.assignment != self.assignment && !self.reassigned(raw.assignment)? {
                return Ok(());
            }
            crate::fault::panic_if_injected("read");
            Metrics::add(&self.metrics.events_read, raw.len() as u64);
            Metrics::add(&self.metrics.bytes_read, raw.bytes() as u64);
            if self.decode_grouped(&raw)? {
                if self.decoding.full(&self.limits, self.max_total_events) && !self.send()? {
                    return Ok(());
                }
            } else {
                for (record, position) in raw.iter() {
                    self.decode(record, position)?;
                    self.checkpoint.advance(position);
                    if self.decoding.full(&self.limits, self.max_total_events) && !self.send()? {
                        return Ok(());
                    }
                }
            }
            let poll_was_full = self.limits.filled(&raw);
            let _ = self.spare.try_send(raw);
            if self.decoding.ends_with_poll(poll_was_full) && !self.send()? {
                return Ok(());
            }
        }
        self.send()?;
        Ok(())
    }

    /// The source lost its streams and was given some again (a consumer group
    /// rebalanced): what was decoded before goes on in a batch of its own (which the
    /// applier abandons), and the checkpoint starts afresh, so no later batch carries the
    /// position of a partition another process may own now. Returns false when the
    /// applier has gone.
    fn reassigned(&mut self, assignment: u64) -> Result<bool, PipelineError> {
        if !self.send()? {
            return Ok(false);
        }
        self.assignment = assignment;
        self.checkpoint = Checkpoint::default();
        self.sent = Checkpoint::default();
        Ok(true)
    }

    /// Decodes a poll of a many-table pipeline grouped by table ([`ManyTables::plan`]),
    /// when it fits in the batch whole. Dead letters are written in the stream's order.
    /// Returns false, with nothing changed, when the poll is to be decoded record by
    /// record instead (and so also when an event must stop the pipeline: exactly the
    /// events before it are applied).
    fn decode_grouped(&mut self, raw: &RawBatch) -> Result<bool, PipelineError> {
        let Decoding::Many(many) = &mut self.decoding else {
            return Ok(false);
        };
        let records: Vec<_> = raw.iter().collect();
        let limits = GroupLimits {
            max_events: self.limits.max_records,
            max_total: self.max_total_events,
            max_bytes: self.limits.max_bytes,
            max_record_bytes: self.max_record_bytes,
        };
        let Some(plan) = many.plan(&records, &limits) else {
            return Ok(false);
        };
        let mark = many.mark();
        let mut letters: Vec<(u32, Stage, String, Option<String>)> = Vec::new();
        // Published once the poll is decoded: a rewound poll counts nothing.
        let mut counts = DecodedCounts::default();
        for &i in &plan.order {
            let (record, position) = records[i as usize];
            let result = match many.decode_planned(plan.guesses[i as usize], record, position) {
                Planned::Decoded(result) => result,
                Planned::Redo => {
                    many.rewind(mark);
                    return Ok(false);
                }
            };
            match result {
                Ok(outcome) => counts.count(&outcome, position),
                Err(DecodeError::Record(e)) => {
                    let table = many.current_table().map(str::to_string);
                    letters.push((i, Stage::Decode, e.message, table));
                }
                Err(DecodeError::OtherTable(reason)) => {
                    let table = many.current_table().map(str::to_string);
                    letters.push((i, Stage::Route, reason, table));
                }
                Err(DecodeError::Fatal(_)) => unreachable!("a fatal event asks for a redo"),
            }
        }
        counts.publish(&self.metrics);
        letters.sort_unstable_by_key(|(i, ..)| *i);
        for (i, stage, error, table) in &letters {
            let (record, position) = records[*i as usize];
            write_letter(
                &mut self.letters,
                &mut self.letters_pending,
                *stage,
                table.as_deref(),
                record,
                position,
                error,
            )?;
        }
        for (_, position) in &records {
            self.checkpoint.advance(position);
        }
        Ok(true)
    }

    /// A dead letter of the record decoded last (its table, if it named one).
    fn dead_letter(
        &mut self,
        stage: Stage,
        record: crate::decode::RawRecord<'_>,
        position: &Position,
        error: &str,
    ) -> Result<(), PipelineError> {
        write_letter(
            &mut self.letters,
            &mut self.letters_pending,
            stage,
            self.decoding.table(),
            record,
            position,
            error,
        )
    }

    fn decode(
        &mut self,
        record: crate::decode::RawRecord<'_>,
        position: &Position,
    ) -> Result<(), PipelineError> {
        let size = record.value.map_or(0, <[u8]>::len);
        if size > self.max_record_bytes {
            let error = format!(
                "the record has {size} bytes, more than batch.max_record_bytes ({}); raise \
                 the limit to decode it",
                self.max_record_bytes
            );
            return self.dead_letter(Stage::Decode, record, position, &error);
        }
        let mut decoded = self.decoding.decode(record, position);
        if self.decoding.take_deferred() {
            // The record's table would be one too many for this batch (one transaction):
            // apply the batch, then decode the record into the next.
            self.send()?;
            decoded = self.decoding.decode(record, position);
        }
        match decoded {
            Ok(outcome) => {
                let mut counts = DecodedCounts::default();
                counts.count(&outcome, position);
                counts.publish(&self.metrics);
            }
            Err(DecodeError::Record(e)) => {
                self.dead_letter(Stage::Decode, record, position, &e.message)?
            }
            Err(DecodeError::OtherTable(reason)) => {
                self.dead_letter(Stage::Route, record, position, &reason)?
            }
            Err(DecodeError::Fatal(change)) => {
                // Apply everything before this event, then stop.
                let table = match &self.decoding {
                    Decoding::One(_) => None,
                    Decoding::Many(many) => many.current_table().map(str::to_string),
                };
                self.send()?;
                return Err(PipelineError::IncompatibleSchema {
                    change,
                    table,
                    position: Box::new(position.clone()),
                });
            }
        }
        Ok(())
    }
}
