//! `weir status PIPELINE.yaml`: the state a pipeline persisted in its target, as text or
//! JSON. It reads only the target, so it works from any machine that can reach it, while
//! the pipeline runs or after it has stopped.

use std::fmt::Write;
use std::path::Path;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use weir_runtime::config;
use weir_runtime::lifecycle::{Process, Status, store};
use weir_runtime::source::postgres_cdc::lsn_text;

/// A running process rewrites its status every second: older than this, it is likely gone.
const STALE_AFTER_SECONDS: i64 = 10;

/// Exit code when no status can be shown (none stored, or the target cannot be read).
const NO_STATUS: u8 = 2;

pub fn status(path: &Path, json: bool) -> ExitCode {
    let pipeline = match config::load(path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(NO_STATUS);
        }
    };
    let name = &pipeline.config.name;
    let Some(mut store) = store::open(&pipeline) else {
        eprintln!(
            "error: pipeline `{name}` keeps no status: its sink (Kafka) has no place to \
             store one. See docs/status.md"
        );
        return ExitCode::from(NO_STATUS);
    };
    match store.load(name) {
        Ok(Some(status)) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status).expect("a status is plain data")
                );
            } else {
                print!("{}", text(&status, Utc::now()));
            }
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!(
                "error: no status of pipeline `{name}` in {}: it has not run yet against this \
                 target",
                store.describe()
            );
            ExitCode::from(NO_STATUS)
        }
        Err(e) => {
            eprintln!(
                "error: cannot read the status of pipeline `{name}` from {}: {e}",
                store.describe()
            );
            ExitCode::from(NO_STATUS)
        }
    }
}

fn age(at: &str, now: DateTime<Utc>) -> Option<i64> {
    DateTime::parse_from_rfc3339(at)
        .ok()
        .map(|t| (now - t.to_utc()).num_seconds().max(0))
}

fn duration(seconds: i64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

/// A stored position as a person reads it: an LSN for the replication stream, a key for
/// a table's copy.
fn position(stream: &str, next: i64, line: u64) -> String {
    if stream.starts_with("postgres:") {
        format!("{} (line {line})", lsn_text(next.max(0) as u64))
    } else if stream.starts_with("postgres-snapshot:") {
        if next == i64::MAX {
            "copied".into()
        } else {
            format!("after key {next}")
        }
    } else {
        format!("next {next}, line {line}")
    }
}

pub fn text(status: &Status, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let since = age(&status.since, now).map_or(String::new(), |s| format!(", for {}", duration(s)));
    let _ = writeln!(
        out,
        "pipeline {}: {}{since}\n  reason: {}",
        status.pipeline, status.state, status.reason
    );
    let updated = age(&status.updated_at, now).unwrap_or(0);
    let process = match status.process {
        Process::Running if updated > STALE_AFTER_SECONDS => format!(
            "running (pid {}) by its last word, but its status was last written {} ago: \
             the process may have been killed",
            status.pid,
            duration(updated)
        ),
        Process::Running => format!("running (pid {})", status.pid),
        Process::Stopped => format!("stopped {} ago", duration(updated)),
        Process::Failed => format!("failed {} ago", duration(updated)),
    };
    let _ = writeln!(out, "  process: {process}");
    let mut lag = Vec::new();
    if let Some(seconds) = status.lag.seconds {
        lag.push(format!("{seconds:.1}s behind the source"));
    }
    if let Some(events) = status.lag.events {
        lag.push(format!("{events} events to go"));
    }
    if let Some(bytes) = status.lag.wal_bytes {
        lag.push(format!("{bytes} bytes of WAL"));
    }
    if !lag.is_empty() {
        let _ = writeln!(out, "  lag: {}", lag.join(", "));
    }
    let _ = writeln!(
        out,
        "  last heartbeat: {}",
        status.last_heartbeat.as_deref().unwrap_or("none")
    );
    let _ = writeln!(
        out,
        "  this run: {} events read, {} rows applied, {} dead letters",
        status.events_read, status.rows_applied, status.dead_letters
    );
    if let Some(error) = &status.last_error {
        let _ = writeln!(out, "  last error ({}): {}", error.at, error.message);
    }
    if !status.tables.is_empty() {
        let width = status
            .tables
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(5)
            .max(5);
        let _ = writeln!(
            out,
            "tables:\n  {:width$}  {:22}  {:>10}  {:>10}  {:>10}",
            "TABLE", "STATE", "COPIED", "ESTIMATED", "APPLIED"
        );
        for (name, table) in &status.tables {
            let state = match (table.state, table.copied) {
                (Some(s), true) if s != weir_runtime::lifecycle::State::Streaming => {
                    format!("{s} (copied)")
                }
                (Some(s), _) => s.to_string(),
                (None, _) => "-".into(),
            };
            let estimated = table
                .rows_estimated
                .map_or("-".to_string(), |n| n.to_string());
            let _ = writeln!(
                out,
                "  {name:width$}  {state:22}  {:>10}  {estimated:>10}  {:>10}",
                table.rows_copied, table.rows_applied
            );
        }
    }
    if !status.positions.is_empty() {
        let _ = writeln!(out, "positions (applied and durable):");
        for (stream, p) in &status.positions {
            let _ = writeln!(out, "  {stream}: {}", position(stream, p.next, p.line));
        }
    }
    if !status.transitions.is_empty() {
        let _ = writeln!(out, "transitions (latest last):");
        for t in &status.transitions {
            let from = t.from.map_or("start".to_string(), |s| s.to_string());
            let _ = writeln!(out, "  {} {from} -> {}: {}", t.at, t.to, t.reason);
        }
    }
    out
}
