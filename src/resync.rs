//! Resync after a gap in a Kafka source: the broker no longer holds changes weir had not
//! applied (retention deleted them while the pipeline was stopped). The changes are gone,
//! so the target is repaired from the database they came from: the pipeline's `reconcile`
//! section compares its `source` with the target, and the repair is applied (the same as
//! `weir reconcile --repair apply`). The run then goes on from where each partition now
//! begins.
//!
//! Why this order ends equal: the repair brings every row to the source's state when the
//! repair read it. Every change the partitions still hold is older than that read, or
//! newer and still to come; each key's changes stay in order in its partition, so
//! replaying them can move a row back for a moment, never leave it there: the last change
//! of each key is applied last. The pipeline is stopped during the repair, so the repair
//! and the sink never write one row at once. docs/decisions.md records the choice.

use std::sync::Arc;

use weir_runtime::config::LoadedPipeline;
use weir_runtime::lifecycle::State;
use weir_runtime::lifecycle::writer::StatusWriter;
use weir_runtime::metrics::Metrics;

/// Repairs the target after the gaps the last run found, then marks them repaired so the
/// next run goes on. Returns what was repaired, for the log.
pub fn repair_after_gap(
    pipeline: &LoadedPipeline,
    metrics: &Arc<Metrics>,
) -> Result<String, String> {
    let gaps = metrics.lifecycle.gaps();
    let streams: Vec<String> = gaps.keys().cloned().collect();
    metrics.lifecycle.phase(
        State::Snapshotting,
        format!(
            "repairing the target from the reconcile source after a gap in {}",
            streams.join(", ")
        ),
    );
    let status = StatusWriter::start(pipeline, metrics.clone());
    let result = repair(pipeline);
    status.finish(result.as_ref().err().map(String::as_str));
    let repaired = result?;
    metrics.lifecycle.gaps_repaired();
    metrics.lifecycle.phase(
        State::Streaming,
        format!("streaming after the resync ({repaired})"),
    );
    Ok(repaired)
}

fn repair(pipeline: &LoadedPipeline) -> Result<String, String> {
    if pipeline.config.reconcile.is_none() {
        return Err(
            "a resync repairs the target from the pipeline's `reconcile` source, and the \
             pipeline has no `reconcile:` section"
                .into(),
        );
    }
    let options = weir_reconcile::Options {
        repair: true,
        ..weir_reconcile::Options::default()
    };
    let describe = |inserts: u64, deletes: u64, updates: u64| {
        format!("{inserts} inserted, {deletes} deleted, {updates} updated")
    };
    if pipeline.config.tables.is_some() {
        let outcome = weir_reconcile::database::reconcile_tables(pipeline, &options)
            .map_err(|e| e.to_string())?;
        if outcome.report.errors > 0 {
            return Err(format!(
                "{} tables could not be compared, so they cannot be repaired",
                outcome.report.errors
            ));
        }
        let applied =
            weir_reconcile::database::apply_repairs(&outcome).map_err(|e| e.to_string())?;
        return Ok(format!(
            "{} tables repaired: {}",
            applied.tables,
            describe(applied.inserts, applied.deletes, applied.updates)
        ));
    }
    let outcome = weir_reconcile::reconcile(pipeline, &options).map_err(|e| e.to_string())?;
    let Some(script) = outcome.repair else {
        return Ok("nothing to repair".into());
    };
    if script.statements() > 0 {
        weir_reconcile::apply_repair(pipeline, &script).map_err(|e| e.to_string())?;
    }
    Ok(describe(script.inserts, script.deletes, script.updates))
}
