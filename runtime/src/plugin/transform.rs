//! A transform plugin: one instance at a time, called once per change batch.
//!
//! The batch crosses the boundary as Arrow IPC. The output is checked before anything
//! downstream sees it (the envelope columns unchanged in name and type, the row images
//! alike, the primary key present, the source rows in range and in order); every output
//! row gets the source position of the input row it came from, so checkpoints and dead
//! letters stay exact whatever the plugin drops or repeats.

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Schema};

use super::instance::Plugin;
use super::{Failure, PluginSpec};
use crate::envelope::{AFTER, BEFORE, ChangeBatch, Op};
use weir_envelope::ipc;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../plugins/wit",
        world: "transform",
    });
}

use bindings::{Transform, TransformPre};

super::instance::world!(Transform, TransformPre, "transform");

/// What a call made of a batch.
#[derive(Debug)]
pub struct Transformed {
    pub batch: ChangeBatch,
    /// Input rows the plugin refused, with its reason.
    pub rejected: Vec<(usize, String)>,
}

/// A loaded transform plugin.
pub struct TransformPlugin {
    plugin: Plugin<Transform>,
}

impl TransformPlugin {
    /// Compiles (or loads from the cache) and links the plugin, and starts an instance, so
    /// a bad config fails at start.
    pub fn load(spec: PluginSpec) -> Result<TransformPlugin, String> {
        Ok(TransformPlugin {
            plugin: Plugin::load(spec)?,
        })
    }

    pub fn name(&self) -> &str {
        self.plugin.name()
    }

    /// Instances started so far, including the first (a new one after each failure).
    pub fn instances(&self) -> u64 {
        self.plugin.instances
    }

    /// Transforms one batch. On a failure the next call starts a fresh instance.
    pub fn call(&mut self, input: &ChangeBatch) -> Result<Transformed, Failure> {
        let bytes = ipc::write(&input.data).map_err(Failure::Host)?;
        self.plugin.call(
            |bindings, store| bindings.call_transform(store, &bytes),
            |output| check_output(input, output),
        )
    }
}

fn bad(message: impl Into<String>) -> Failure {
    Failure::BadOutput(message.into())
}

/// Checks what the plugin returned and builds the output change batch.
fn check_output(
    input: &ChangeBatch,
    output: bindings::weir::plugin::types::Transformed,
) -> Result<Transformed, Failure> {
    let inputs = input.num_rows();
    let data = ipc::read(output.batch).map_err(bad)?;
    let in_schema = input.data.schema();
    let out_schema = data.schema();
    // The envelope columns, in order, with their types; only the row images may change.
    if out_schema.fields().len() != in_schema.fields().len() {
        return Err(bad(format!(
            "the batch has {} columns, the change envelope has {} ({})",
            out_schema.fields().len(),
            in_schema.fields().len(),
            names(&in_schema)
        )));
    }
    for (out, inp) in out_schema.fields().iter().zip(in_schema.fields()) {
        if out.name() != inp.name() {
            return Err(bad(format!(
                "column `{}` where the envelope has `{}` ({})",
                out.name(),
                inp.name(),
                names(&in_schema)
            )));
        }
        let image = out.name() == BEFORE || out.name() == AFTER;
        if !image && out.data_type() != inp.data_type() {
            return Err(bad(format!(
                "envelope column `{}` is {}, not {}",
                out.name(),
                out.data_type(),
                inp.data_type()
            )));
        }
    }
    let before = out_schema
        .field_with_name(BEFORE)
        .expect("checked")
        .data_type();
    let after = out_schema
        .field_with_name(AFTER)
        .expect("checked")
        .data_type();
    let DataType::Struct(row_fields) = after else {
        return Err(bad(format!("`after` is {after}, not a struct")));
    };
    if before != after {
        return Err(bad("`before` and `after` have different columns"));
    }
    for key in &input.table.primary_key {
        if row_fields.find(key).is_none() {
            return Err(bad(format!("the rows lost primary key column `{key}`")));
        }
    }
    let ops = data.column(0).as_string::<i32>();
    if let Some(i) = (0..ops.len()).find(|&i| ops.is_null(i) || Op::parse(ops.value(i)).is_none()) {
        return Err(bad(format!("row {i} has no valid `op`")));
    }
    let outputs = data.num_rows();
    let mut rejected = Vec::with_capacity(output.errors.len());
    for error in output.errors {
        let row = error.row as usize;
        if row >= inputs {
            return Err(bad(format!(
                "a row error names row {row}, but the batch has {inputs} rows"
            )));
        }
        rejected.push((row, error.message));
    }
    let positions = if output.source_rows.is_empty() && outputs == 0 {
        // Every row dropped or refused: nothing to map.
        Default::default()
    } else if output.source_rows.is_empty() {
        if outputs != inputs || !rejected.is_empty() {
            return Err(bad(format!(
                "{outputs} output rows for {inputs} input rows ({} refused) without `source-rows`",
                rejected.len()
            )));
        }
        input.positions.clone()
    } else {
        if output.source_rows.len() != outputs {
            return Err(bad(format!(
                "`source-rows` has {} entries for {outputs} output rows",
                output.source_rows.len()
            )));
        }
        let mut previous = 0;
        let mut positions = Vec::with_capacity(outputs);
        for &row in &output.source_rows {
            let row = row as usize;
            if row >= inputs || row < previous {
                return Err(bad(format!(
                    "`source-rows` must be input rows (< {inputs}) in non-decreasing order; found {row} after {previous}"
                )));
            }
            if rejected.iter().any(|(r, _)| *r == row) {
                return Err(bad(format!(
                    "input row {row} is both refused and in the output"
                )));
            }
            previous = row;
            positions.push(input.positions[row].clone());
        }
        Arc::new(positions)
    };
    // Keep the table metadata the decoder put on the schema.
    let schema = Arc::new(Schema::new_with_metadata(
        out_schema.fields().clone(),
        in_schema.metadata().clone(),
    ));
    let data = data.with_schema(schema).map_err(|e| bad(e.to_string()))?;
    Ok(Transformed {
        batch: ChangeBatch {
            data,
            positions,
            checkpoint: input.checkpoint.clone(),
            table: input.table.clone(),
        },
        rejected,
    })
}

fn names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
