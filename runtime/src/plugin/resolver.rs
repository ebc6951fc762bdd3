//! A conflict resolver plugin: given incoming changes and the target's current rows for
//! their keys, it decides per change to apply it, skip it, or write a merged row.
//!
//! The sink calls it inside its transaction, after reading the current rows (see
//! `sink::resolve`). What the plugin returns is checked here: one decision per change, one
//! merged row per `merge` with exactly the table's columns and the incoming key.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StructArray, make_comparator};
use arrow::compute::SortOptions;
use arrow::datatypes::{Field, Schema};

use super::instance::Plugin;
use super::{Failure, PluginSpec, capped};
use crate::envelope::{AFTER, BEFORE, OP};
use weir_envelope::{ipc, untrusted};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../plugins/wit",
        world: "resolver",
    });
}

use bindings::weir::plugin::types::{Decision, Resolved};
use bindings::{Resolver, ResolverPre};

/// The name of the one column of the `current` batch.
pub const CURRENT: &str = "current";

super::instance::world!(Resolver, ResolverPre, "resolver");

/// The decision for one incoming change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Apply the change as it is.
    Apply,
    /// Leave the target row as it is.
    Skip,
    /// Write row `n` of [`Resolution::merged`] instead.
    Merge(usize),
    /// The plugin could not decide for this change; it goes to the dead-letter output.
    Rejected(String),
}

/// What a resolver call decided.
#[derive(Debug)]
pub struct Resolution {
    /// One per incoming change, in order.
    pub verdicts: Vec<Verdict>,
    /// The merged rows, with the table's row columns in the order of `after`.
    pub merged: RecordBatch,
}

/// A loaded resolver plugin.
pub struct ResolverPlugin {
    plugin: Plugin<Resolver>,
}

impl ResolverPlugin {
    pub fn load(spec: PluginSpec) -> Result<ResolverPlugin, String> {
        Ok(ResolverPlugin {
            plugin: Plugin::load(spec)?,
        })
    }

    pub fn name(&self) -> &str {
        self.plugin.name()
    }

    /// Its calls by outcome, and their time.
    pub fn stats(&self) -> std::sync::Arc<super::stats::PluginStats> {
        self.plugin.stats()
    }

    /// Resolves `incoming` (change-envelope rows) against `current` (the target's row for
    /// each, null where absent). `key` is the table's primary key.
    pub fn call(
        &mut self,
        incoming: &RecordBatch,
        current: StructArray,
        key: &[String],
    ) -> Result<Resolution, Failure> {
        let host = |e| self.plugin.host_failure(e);
        let incoming_bytes = ipc::write(incoming).map_err(host)?;
        let current = current_batch(current).map_err(host)?;
        let current_bytes = ipc::write(&current).map_err(host)?;
        self.plugin.call(
            |bindings, store| bindings.call_resolve(store, &incoming_bytes, &current_bytes),
            |output| check_resolved(incoming, key, output),
        )
    }
}

/// The `current` argument: one nullable struct column.
pub fn current_batch(current: StructArray) -> Result<RecordBatch, String> {
    let field = Field::new(CURRENT, current.data_type().clone(), true);
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![field])),
        vec![Arc::new(current) as ArrayRef],
    )
    .map_err(|e| e.to_string())
}

fn bad(message: impl Into<String>) -> Failure {
    Failure::BadOutput(message.into())
}

fn check_resolved(
    incoming: &RecordBatch,
    key: &[String],
    output: Resolved,
) -> Result<Resolution, Failure> {
    let rows = incoming.num_rows();
    if output.decisions.len() != rows {
        return Err(bad(format!(
            "{} decisions for {rows} incoming changes",
            output.decisions.len()
        )));
    }
    let mut verdicts: Vec<Verdict> = Vec::with_capacity(rows);
    let mut merges = 0;
    for decision in &output.decisions {
        verdicts.push(match decision {
            Decision::Apply => Verdict::Apply,
            Decision::Skip => Verdict::Skip,
            Decision::Merge => {
                merges += 1;
                Verdict::Merge(merges - 1)
            }
        });
    }
    for error in output.errors {
        let row = error.row as usize;
        if row >= rows {
            return Err(bad(format!(
                "a row error names row {row}, but {rows} changes came in"
            )));
        }
        verdicts[row] = Verdict::Rejected(capped(error.message));
    }
    let after = incoming
        .column_by_name(AFTER)
        .map(|c| c.as_struct())
        .ok_or_else(|| Failure::Host("the incoming batch has no `after`".into()))?;
    // No merges may come back as no stream at all. The stream is untrusted: its schema
    // must be the table's columns before any of it is decoded.
    let merged = if output.merged.is_empty() {
        None
    } else {
        let check = |schema: &Schema| {
            let merged = RecordBatch::new_empty(Arc::new(schema.clone()));
            table_columns(after, &merged)
                .map(drop)
                .map_err(|f| match f {
                    Failure::BadOutput(detail) => detail,
                    other => other.reason(),
                })
        };
        Some(untrusted::read(output.merged, &check, merges).map_err(bad)?)
    };
    let returned = merged.as_ref().map_or(0, |m| m.num_rows());
    if returned != merges {
        return Err(bad(format!(
            "{returned} merged rows for {merges} `merge` decisions"
        )));
    }
    let merged = match merged {
        Some(merged) if merges > 0 => table_columns(after, &merged)?,
        _ => RecordBatch::new_empty(Arc::new(Schema::new(after.fields().clone()))),
    };
    check_merged_keys(incoming, key, &verdicts, &merged)?;
    Ok(Resolution { verdicts, merged })
}

/// The merged rows with exactly the table's columns, in the order of `after`.
fn table_columns(after: &StructArray, merged: &RecordBatch) -> Result<RecordBatch, Failure> {
    let wanted = after.fields();
    let names = || {
        wanted
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(extra) = merged
        .schema()
        .fields()
        .iter()
        .find(|f| wanted.find(f.name()).is_none())
    {
        return Err(bad(format!(
            "merged rows have a column `{}` the table lacks (it has {})",
            extra.name(),
            names()
        )));
    }
    let mut columns = Vec::with_capacity(wanted.len());
    for field in wanted {
        let column = merged.column_by_name(field.name()).ok_or_else(|| {
            bad(format!(
                "merged rows lack column `{}` (the table has {})",
                field.name(),
                names()
            ))
        })?;
        if column.data_type() != field.data_type() {
            return Err(bad(format!(
                "merged column `{}` is {}, the table's is {}",
                field.name(),
                column.data_type(),
                field.data_type()
            )));
        }
        columns.push(column.clone());
    }
    RecordBatch::try_new(Arc::new(Schema::new(wanted.clone())), columns)
        .map_err(|e| bad(e.to_string()))
}

/// A merged row must keep its change's key (the `before` key for a delete).
fn check_merged_keys(
    incoming: &RecordBatch,
    key: &[String],
    verdicts: &[Verdict],
    merged: &RecordBatch,
) -> Result<(), Failure> {
    let image = |name: &str| {
        incoming
            .column_by_name(name)
            .map(|c| c.as_struct())
            .ok_or_else(|| Failure::Host(format!("the incoming batch has no `{name}`")))
    };
    let (before, after) = (image(BEFORE)?, image(AFTER)?);
    let ops = incoming
        .column_by_name(OP)
        .map(|c| c.as_string::<i32>())
        .ok_or_else(|| Failure::Host("the incoming batch has no `op`".into()))?;
    for column in key {
        let mine = merged
            .column_by_name(column)
            .ok_or_else(|| bad(format!("merged rows lack key column `{column}`")))?;
        let compare = |image: &StructArray| {
            let theirs = image
                .column_by_name(column)
                .ok_or_else(|| Failure::Host(format!("no key column `{column}`")))?;
            make_comparator(theirs.as_ref(), mine.as_ref(), SortOptions::default())
                .map_err(|e| Failure::Host(e.to_string()))
        };
        let (with_before, with_after) = (compare(before)?, compare(after)?);
        for (row, verdict) in verdicts.iter().enumerate() {
            let Verdict::Merge(m) = verdict else { continue };
            let same = if ops.value(row) == "d" {
                with_before(row, *m).is_eq()
            } else {
                with_after(row, *m).is_eq()
            };
            if !same {
                return Err(bad(format!(
                    "the merged row for change {row} changes its key column `{column}`"
                )));
            }
        }
    }
    Ok(())
}
