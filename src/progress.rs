//! Progress on a terminal while a pipeline runs, and the summary when it ends.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;

use weir_runtime::metrics::{Metrics, Snapshot, TableCounts};
use weir_runtime::pipeline::RunSummary;
use weir_runtime::position::Checkpoint;

pub struct Display {
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Display {
    /// Shows a live status line on standard error when it is a terminal; otherwise nothing.
    pub fn start(name: &str, metrics: Arc<Metrics>) -> Display {
        let done = Arc::new(AtomicBool::new(false));
        if !std::io::stderr().is_terminal() {
            return Display { done, thread: None };
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix} {msg}").expect("valid template"),
        );
        bar.set_prefix(name.to_string());
        let flag = done.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut last = (Instant::now(), 0u64);
            let mut rate = 0.0;
            while !flag.load(Ordering::Relaxed) {
                let s = metrics.snapshot();
                let now = Instant::now();
                let dt = now.duration_since(last.0).as_secs_f64();
                if dt >= 0.5 {
                    rate = (s.events_read - last.1) as f64 / dt;
                    last = (now, s.events_read);
                }
                let tables = match metrics.tables.lock().map(|t| t.len()) {
                    Ok(0) | Err(_) => String::new(),
                    Ok(n) => format!("{n} tables, "),
                };
                bar.set_message(format!(
                    "{tables}{} events in, {} rows applied, {} dead letters, {:.0} events/s, {:.0}s",
                    s.events_read,
                    s.rows_applied,
                    s.dead_letters,
                    rate,
                    started.elapsed().as_secs_f64()
                ));
                bar.tick();
                std::thread::sleep(Duration::from_millis(150));
            }
            bar.finish_and_clear();
        });
        Display {
            done,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn describe_checkpoint(checkpoint: &Option<Checkpoint>) -> String {
    match checkpoint {
        None => "none".into(),
        Some(c) => c
            .streams
            .iter()
            .map(|(stream, resume)| {
                if let Some(file) = stream.strip_prefix("file:") {
                    format!("{file} after line {}", resume.line)
                } else {
                    format!("{stream} at offset {}", resume.next)
                }
            })
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Tables listed one per line in the text summary; `--json` lists every table.
const TABLES_LISTED: usize = 40;

/// The per-table part of the text summary of a many-table pipeline.
fn tables_text(tables: &BTreeMap<String, TableCounts>) -> String {
    let applied = tables.values().filter(|t| !t.target.is_empty()).count();
    let skipped = tables.values().filter(|t| t.skipped > 0).count();
    let mut out = format!("  tables        {applied} applied, {skipped} skipped\n");
    for (table, counts) in tables.iter().take(TABLES_LISTED) {
        out += &match counts.target.as_str() {
            "" if counts.skipped > 0 => format!("    {table}: skipped {} events\n", counts.skipped),
            "" => format!(
                "    {table}: not applied, {} dead letters\n",
                counts.dead_letters
            ),
            target => format!(
                "    {table} -> {target}: {} changes, {} applied, {} dead letters\n",
                counts.rows, counts.applied, counts.dead_letters
            ),
        };
    }
    if tables.len() > TABLES_LISTED {
        out += &format!(
            "    … and {} more (`weir run --json` lists every table)\n",
            tables.len() - TABLES_LISTED
        );
    }
    out
}

pub fn summary_text(
    name: &str,
    summary: &RunSummary,
    s: &Snapshot,
    tables: &BTreeMap<String, TableCounts>,
    dead_letters: &str,
) -> String {
    let secs = summary.elapsed.as_secs_f64();
    let mut out = format!(
        "weir: pipeline `{name}` {} in {secs:.2}s\n",
        if summary.interrupted {
            "stopped"
        } else {
            "finished"
        }
    );
    if let Some(from) = &summary.resumed_from {
        out += &format!(
            "  resumed from  {}\n",
            describe_checkpoint(&Some(from.clone()))
        );
    }
    out += &format!(
        "  read          {} events ({:.1} MB), {:.0} events/s\n",
        s.events_read,
        s.bytes_read as f64 / 1e6,
        s.events_read as f64 / secs.max(1e-9)
    );
    if s.appended > 0 {
        out += &format!(
            "  applied       {} changes, appended to the change log\n",
            s.rows_applied
        );
    } else {
        out += &format!(
            "  applied       {} changes: {} upserts, {} deletes, {} truncates (after compaction)\n",
            s.rows_applied, s.upserts, s.deletes, s.truncates
        );
    }
    if s.conflicts_skipped + s.conflicts_merged > 0 {
        out += &format!(
            "  resolved      {} changes skipped, {} merged (conflict resolution)\n",
            s.conflicts_skipped, s.conflicts_merged
        );
    }
    if s.duplicates_skipped > 0 {
        out += &format!(
            "  duplicates    {} changes skipped: applied before (same source position)\n",
            s.duplicates_skipped
        );
    }
    if s.echoes_dropped > 0 {
        out += &format!(
            "  echoes        {} changes dropped: they came from this target's own site\n",
            s.echoes_dropped
        );
    }
    out += &format!(
        "  skipped       {} tombstones, {} schema-change events, {} other\n",
        s.tombstones, s.schema_changes, s.ignored
    );
    if !tables.is_empty() {
        out += &tables_text(tables);
    }
    out += &format!("  dead letters  {}", s.dead_letters);
    if s.dead_letters > 0 {
        out += &format!(" -> {dead_letters}");
    }
    out += "\n";
    out += &format!(
        "  checkpoint    {}\n",
        describe_checkpoint(&summary.checkpoint)
    );
    out
}

pub fn summary_json(
    name: &str,
    summary: &RunSummary,
    s: &Snapshot,
    tables: &BTreeMap<String, TableCounts>,
    dead_letters: &str,
) -> String {
    serde_json::json!({
        "pipeline": name,
        "interrupted": summary.interrupted,
        "elapsed_seconds": summary.elapsed.as_secs_f64(),
        "resumed_from": summary.resumed_from,
        "checkpoint": summary.checkpoint,
        "events_read": s.events_read,
        "bytes_read": s.bytes_read,
        "rows_decoded": s.rows_decoded,
        "rows_applied": s.rows_applied,
        "batches": s.batches,
        "upserts": s.upserts,
        "deletes": s.deletes,
        "truncates": s.truncates,
        "appended": s.appended,
        "conflicts_skipped": s.conflicts_skipped,
        "conflicts_merged": s.conflicts_merged,
        "echoes_dropped": s.echoes_dropped,
        "duplicates_skipped": s.duplicates_skipped,
        "already_applied": s.already_applied,
        "events_abandoned": s.events_abandoned,
        "partitions_revoked": s.revocations,
        "sink_retries": s.sink_retries,
        "tombstones": s.tombstones,
        "schema_changes": s.schema_changes,
        "ignored": s.ignored,
        "dead_letters": s.dead_letters,
        "dead_letter_output": dead_letters,
        "tables": tables,
    })
    .to_string()
}
