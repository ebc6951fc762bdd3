//! `weir dlq replay`: the dead letters sent back through the pipeline
//! ([`weir_runtime::dead_letter::replay`]), pass by pass, with a report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use clap::Args;
use weir_runtime::config::{self, LoadedPipeline};
use weir_runtime::dead_letter::Stage;
use weir_runtime::dead_letter::replay::{Pass, PassCounts, survey};
use weir_runtime::metrics::Metrics;
use weir_runtime::pipeline::{self, ReplayRun, RunOptions};

const SIGNALS: [i32; 2] = [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM];

#[derive(Args)]
pub struct ReplayArgs {
    /// The pipeline file (its `dead_letter` output is read, its sink written).
    pipeline: PathBuf,
    /// Replay only the letters of these stages: source, route, decode, transform, sink
    /// (repeat, or separate with commas).
    #[arg(long, value_delimiter = ',', value_parser = stage)]
    stage: Vec<Stage>,
    /// Replay only letters written at or after this time: an RFC 3339 time
    /// (`2026-12-06T09:00:00Z`) or a duration before now (`2h`). Older letters of a stage
    /// are passed over for good once a newer one of that stage is replayed.
    #[arg(long)]
    since: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn stage(name: &str) -> Result<Stage, String> {
    Stage::from_name(name)
        .ok_or_else(|| format!("`{name}` is not a stage: source, route, decode, transform or sink"))
}

/// What one pass did.
#[derive(Default, serde::Serialize)]
struct PassReport {
    pass: String,
    /// The pass's letters read from the output.
    letters: u64,
    /// Sent back through the pipeline.
    replayed: u64,
    /// Rows the sink applied (several letters of one key in a batch apply as one).
    rows_applied: u64,
    /// Sent by an earlier replay (the sink holds them).
    done_before: u64,
    /// Letters holding a record another letter already holds (a pipeline that crashed
    /// wrote them again): sent once.
    duplicates: u64,
    /// Letters another pipeline wrote to the same output: left for its replay.
    other_pipeline: u64,
    /// Refused again: written to the dead-letter output again, with the new reason.
    failed_again: u64,
    /// Older than `--since`.
    older: u64,
    /// No record to send (a tombstone, a record cut short, a plugin that is gone).
    not_replayable: u64,
}

fn since(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let ago = humantime::parse_duration(text).map_err(|_| {
        format!(
            "--since {text}: neither an RFC 3339 time (2026-12-06T09:00:00Z) nor a duration \
             (2h)"
        )
    })?;
    chrono::Duration::from_std(ago)
        .ok()
        .and_then(|ago| Utc::now().checked_sub_signed(ago))
        .ok_or_else(|| format!("--since {text}: too long ago"))
}

fn load(args: &ReplayArgs) -> Result<(LoadedPipeline, Option<DateTime<Utc>>), String> {
    let pipeline = config::load(&args.pipeline).map_err(|e| e.to_string())?;
    let since = args.since.as_deref().map(since).transpose()?;
    if !pipeline.config.sink.capabilities().stores_checkpoint {
        return Err(format!(
            "pipeline `{}`: its {} sink keeps no checkpoint with its data, so a replay killed \
             midway could apply letters twice; weir replays only into sinks that store one \
             (sqlite, postgres, jsonl, parquet)",
            pipeline.config.name,
            pipeline.config.sink.kind()
        ));
    }
    Ok((pipeline, since))
}

pub fn replay(args: &ReplayArgs) -> ExitCode {
    let (pipeline, since) = match load(args) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // A signal stops the pass running (a second one exits at once) and the replay.
    let signalled = Arc::new(AtomicBool::new(false));
    for signal in SIGNALS {
        let _ = signal_hook::flag::register_conditional_shutdown(signal, 130, signalled.clone());
        let _ = signal_hook::flag::register(signal, signalled.clone());
    }
    let stages = &args.stage;
    let output = pipeline.dead_letter().describe(&pipeline);
    let mut reports = Vec::new();
    let mut unreadable = 0;
    let mut failure = None;
    let passes = Pass::plan(&pipeline, stages);
    let (end, letters) = match survey(&pipeline, &passes) {
        Ok(surveyed) => surveyed,
        Err(e) => {
            eprintln!("error: pipeline `{}`: {e}", pipeline.config.name);
            return ExitCode::from(2);
        }
    };
    for (pass, letters) in passes.into_iter().zip(letters) {
        if letters == 0 {
            // Nothing of this pass's: not worth loading its plugins and opening the sink.
            reports.push(PassReport {
                pass: pass.describe(),
                ..Default::default()
            });
            continue;
        }
        let counts = Arc::new(PassCounts::default());
        let metrics = Arc::new(Metrics::default());
        let options = RunOptions {
            stop_when_idle: None,
            replay: Some(ReplayRun {
                pass: pass.clone(),
                since,
                end: end.clone(),
                counts: counts.clone(),
            }),
        };
        tracing::info!(pass = %pass.describe(), %output, "replaying dead letters");
        // Each run raises its stop flag when it ends: a flag per pass, raised by the
        // signals (registered before the flag takes one that came first).
        let stop = Arc::new(AtomicBool::new(false));
        let registered: Vec<_> = SIGNALS
            .iter()
            .filter_map(|&signal| signal_hook::flag::register(signal, stop.clone()).ok())
            .collect();
        if signalled.load(Ordering::Relaxed) {
            stop.store(true, Ordering::Relaxed);
        }
        let result = pipeline::run(&pipeline, &options, metrics.clone(), stop);
        for id in registered {
            signal_hook::low_level::unregister(id);
        }
        let applied = metrics.snapshot();
        let report = PassReport {
            pass: pass.describe(),
            letters: PassCounts::get(&counts.read),
            replayed: PassCounts::get(&counts.sent),
            rows_applied: applied.rows_applied,
            done_before: PassCounts::get(&counts.done_before),
            duplicates: PassCounts::get(&counts.duplicates),
            other_pipeline: PassCounts::get(&counts.other_pipeline),
            failed_again: applied.dead_letters,
            older: PassCounts::get(&counts.older),
            not_replayable: PassCounts::get(&counts.not_replayable),
        };
        tracing::info!(
            pass = %report.pass,
            letters = report.letters,
            replayed = report.replayed,
            failed_again = report.failed_again,
            "replay pass done"
        );
        unreadable = unreadable.max(PassCounts::get(&counts.unreadable));
        reports.push(report);
        match result {
            Ok(_) if signalled.load(Ordering::Relaxed) => {
                failure = Some("interrupted; run the replay again to go on".to_string());
                break;
            }
            Ok(_) => {}
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    let failed_again: u64 = reports.iter().map(|r| r.failed_again).sum();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "pipeline": pipeline.config.name,
                "dead_letters": output,
                "passes": reports,
                "unreadable": unreadable,
                "error": failure,
            })
        );
    } else {
        print!(
            "{}",
            report_text(&pipeline.config.name, &output, &reports, unreadable)
        );
    }
    match failure {
        Some(e) => {
            eprintln!(
                "error: the replay of pipeline `{}` stopped: {e}",
                pipeline.config.name
            );
            ExitCode::from(2)
        }
        None if failed_again > 0 => ExitCode::FAILURE,
        None => ExitCode::SUCCESS,
    }
}

fn report_text(name: &str, output: &str, reports: &[PassReport], unreadable: u64) -> String {
    let mut text = format!("replay of pipeline `{name}`'s dead letters ({output})\n");
    text.push_str(&format!(
        "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
        "stage", "letters", "replayed", "applied", "failed", "older", "skipped", "earlier", "twice"
    ));
    for r in reports {
        text.push_str(&format!(
            "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            r.pass,
            r.letters,
            r.replayed,
            r.rows_applied,
            r.failed_again,
            r.older,
            r.not_replayable,
            r.done_before,
            r.duplicates
        ));
    }
    let foreign: u64 = reports.iter().map(|r| r.other_pipeline).sum();
    if foreign > 0 {
        text.push_str(&format!(
            "{foreign} letters of other pipelines sharing the output were left for their replays\n"
        ));
    }
    if unreadable > 0 {
        text.push_str(&format!(
            "{unreadable} entries of the output are not dead letters weir wrote; they were left\n"
        ));
    }
    text.push_str(
        "applied: rows the sink applied; failed: refused again, back in the dead-letter output \
         with the new reason; older: before --since; skipped: nothing to send (a tombstone, a \
         record cut short, a plugin that is gone); earlier: replayed by an earlier replay; \
         twice: a record another letter holds too (written again after a crash), sent once\n",
    );
    text
}
