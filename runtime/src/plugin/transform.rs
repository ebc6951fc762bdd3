//! A transform plugin: one instance at a time, called once per change batch.
//!
//! The batch crosses the boundary as Arrow IPC. What comes back is untrusted: it is read
//! with `weir_envelope::untrusted` (framing, buffers, no compression, validity, then
//! arrow's full validation; a panic inside is caught), its schema checked before any of
//! it is decoded ([`check_schema`]: the envelope columns unchanged, the row images alike,
//! the primary key kept with its exact type, other columns changed only as the table's
//! schema evolution allows), then its rows ([`check_output`]: valid `op`s, keys present,
//! the source rows in range and in order). Every output row gets the source position of
//! the input row it came from, so checkpoints and dead letters stay exact whatever the
//! plugin drops or repeats.

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Schema};

use super::instance::Plugin;
use super::{Failure, PluginSpec, capped};
use crate::decode::types::{self, ColumnType, Merge};
use crate::envelope::{AFTER, BEFORE, ChangeBatch, Op};
use weir_envelope::{ipc, untrusted};

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

/// The table rules a transform's output is held to beyond the input's own types: the
/// types the target already has for columns the plugin adds.
#[derive(Debug, Clone, Default)]
pub struct TableRules {
    pub target_types: Vec<(String, ColumnType)>,
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

    /// Its calls by outcome, and their time.
    pub fn stats(&self) -> std::sync::Arc<super::stats::PluginStats> {
        self.plugin.stats()
    }

    /// Instances started so far, including the first (a new one after each failure).
    pub fn instances(&self) -> u64 {
        self.plugin.instances
    }

    /// Transforms one batch. On a failure the next call starts a fresh instance.
    pub fn call(&mut self, input: &ChangeBatch) -> Result<Transformed, Failure> {
        self.call_with(input, &TableRules::default())
    }

    /// Transforms one batch, holding the output to `rules` as well.
    pub fn call_with(
        &mut self,
        input: &ChangeBatch,
        rules: &TableRules,
    ) -> Result<Transformed, Failure> {
        let bytes = ipc::write(&input.data).map_err(|e| self.plugin.host_failure(e))?;
        self.plugin.call(
            |bindings, store| bindings.call_transform(store, &bytes),
            |output| {
                let errors = output
                    .errors
                    .into_iter()
                    .map(|e| (e.row, e.message))
                    .collect();
                check_output(input, rules, output.batch, &output.source_rows, errors)
            },
        )
    }
}

fn bad(message: impl Into<String>) -> Failure {
    Failure::BadOutput(message.into())
}

/// Reads what the plugin returned (`batch`, an IPC stream; `source_rows`; row `errors`)
/// and builds the output change batch, or says why it is not one.
pub fn check_output(
    input: &ChangeBatch,
    rules: &TableRules,
    batch: Vec<u8>,
    source_rows: &[u32],
    errors: Vec<(u32, String)>,
) -> Result<Transformed, Failure> {
    let inputs = input.num_rows();
    // One output row per source row, or the input rows one for one.
    let max_rows = if source_rows.is_empty() {
        inputs
    } else {
        source_rows.len()
    };
    let data = untrusted::read(
        batch,
        &|schema| check_schema(input, rules, schema),
        max_rows,
    )
    .map_err(bad)?;
    let in_schema = input.data.schema();
    let ops = data.column(0).as_string::<i32>();
    if let Some(i) = (0..ops.len()).find(|&i| ops.is_null(i) || Op::parse(ops.value(i)).is_none()) {
        return Err(bad(format!("row {i} has no valid `op`")));
    }
    check_keys(input, &data)?;
    let outputs = data.num_rows();
    // One dead letter per refused input row: several errors for one row are joined
    // (within the message cap). Rows are found by index, not by search: the lists come
    // from the plugin and may be long.
    let mut refused: Vec<Option<usize>> = vec![None; inputs];
    let mut rejected: Vec<(usize, String)> = Vec::new();
    for (row, message) in errors {
        let row = row as usize;
        if row >= inputs {
            return Err(bad(format!(
                "a row error names row {row}, but the batch has {inputs} rows"
            )));
        }
        match refused[row] {
            Some(at) => {
                let joined = &mut rejected[at].1;
                if joined.len() <= super::MAX_MESSAGE {
                    joined.push_str("; ");
                    joined.push_str(&message);
                }
            }
            None => {
                refused[row] = Some(rejected.len());
                rejected.push((row, message));
            }
        }
    }
    for (_, message) in &mut rejected {
        *message = capped(std::mem::take(message));
    }
    let positions = if source_rows.is_empty() && outputs == 0 {
        // Every row dropped or refused: nothing to map.
        Default::default()
    } else if source_rows.is_empty() {
        if outputs != inputs || !rejected.is_empty() {
            return Err(bad(format!(
                "{outputs} output rows for {inputs} input rows ({} refused) without `source-rows`",
                rejected.len()
            )));
        }
        input.positions.clone()
    } else {
        if source_rows.len() != outputs {
            return Err(bad(format!(
                "`source-rows` has {} entries for {outputs} output rows",
                source_rows.len()
            )));
        }
        let mut previous = 0;
        let mut positions = Vec::with_capacity(outputs);
        for &row in source_rows {
            let row = row as usize;
            if row >= inputs || row < previous {
                return Err(bad(format!(
                    "`source-rows` must be input rows (< {inputs}) in non-decreasing order; found {row} after {previous}"
                )));
            }
            if refused[row].is_some() {
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
        data.schema().fields().clone(),
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

/// The output's schema, checked before any of its data is decoded: the envelope columns
/// as the input has them, `before` and `after` alike, every row column of a type weir
/// handles, the key columns there with their exact types, and the other columns the
/// input or the target has changed only as schema evolution allows (widened, not
/// retyped).
fn check_schema(input: &ChangeBatch, rules: &TableRules, out: &Schema) -> Result<(), String> {
    let in_schema = input.data.schema();
    if out.fields().len() != in_schema.fields().len() {
        return Err(format!(
            "the batch has {} columns, the change envelope has {} ({})",
            out.fields().len(),
            in_schema.fields().len(),
            names(&in_schema)
        ));
    }
    for (out, inp) in out.fields().iter().zip(in_schema.fields()) {
        if out.name() != inp.name() {
            return Err(format!(
                "column `{}` where the envelope has `{}` ({})",
                out.name(),
                inp.name(),
                names(&in_schema)
            ));
        }
        let image = out.name() == BEFORE || out.name() == AFTER;
        if !image && out.data_type() != inp.data_type() {
            return Err(format!(
                "envelope column `{}` is {}, not {}",
                out.name(),
                out.data_type(),
                inp.data_type()
            ));
        }
    }
    let before = out.field_with_name(BEFORE).map_err(|e| e.to_string())?;
    let after = out.field_with_name(AFTER).map_err(|e| e.to_string())?;
    let DataType::Struct(rows) = after.data_type() else {
        return Err(format!("`after` is {}, not a struct", after.data_type()));
    };
    if before.data_type() != after.data_type() {
        return Err("`before` and `after` have different columns".into());
    }
    let columns = count_fields(rows);
    if columns > MAX_ROW_COLUMNS {
        return Err(format!(
            "the rows have {columns} columns (nested ones counted), more than the \
             {MAX_ROW_COLUMNS} weir applies"
        ));
    }
    let input_rows = input.row_fields();
    let key = &input.table.primary_key;
    let mut seen = std::collections::HashSet::with_capacity(rows.len());
    for field in rows.iter() {
        let name = field.name();
        if !seen.insert(name.as_str()) {
            return Err(format!("the rows have two columns `{name}`"));
        }
        let Some(ty) = types::from_arrow(field.data_type()) else {
            return Err(format!(
                "column `{name}` is {}, a type weir cannot apply",
                field.data_type()
            ));
        };
        let was = input_rows.find(name).map(|(_, f)| f);
        if key.iter().any(|k| k == name) {
            if let Some(was) = was
                && field.data_type() != was.data_type()
            {
                return Err(format!(
                    "key column `{name}` is {} where the table's is {}: a transform may not \
                     change a key's type",
                    field.data_type(),
                    was.data_type()
                ));
            }
            continue;
        }
        let known = match was {
            Some(was) => types::from_arrow(was.data_type()),
            None => rules
                .target_types
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.clone()),
        };
        if let Some(known) = known
            && types::merge(&known, &ty, false) == Merge::Incompatible
        {
            return Err(format!(
                "column `{name}` is {} where the table's is {}, which weir cannot convert \
                 without losing data",
                ty.name(),
                known.name()
            ));
        }
    }
    if let Some(lost) = key.iter().find(|k| rows.find(k).is_none()) {
        return Err(format!("the rows lost primary key column `{lost}`"));
    }
    Ok(())
}

/// The most columns a transform's rows may have, nested struct fields counted: enough for
/// any table a database holds (PostgreSQL allows 1,600), and a bound on the work a plugin's
/// schema can ask of the host.
pub const MAX_ROW_COLUMNS: usize = 4096;

/// Fields of `fields`, nested struct and list fields counted.
fn count_fields(fields: &arrow::datatypes::Fields) -> usize {
    fields
        .iter()
        .map(|f| {
            1 + match f.data_type() {
                DataType::Struct(children) => count_fields(children),
                DataType::List(item) | DataType::LargeList(item) | DataType::Map(item, _) => {
                    count_fields(&arrow::datatypes::Fields::from(vec![item.clone()]))
                }
                _ => 0,
            }
        })
        .sum()
}

/// Every output row has its key: in `before` for a delete, in `after` otherwise (a
/// truncate has none).
fn check_keys(input: &ChangeBatch, data: &arrow::array::RecordBatch) -> Result<(), Failure> {
    let ops = data.column(0).as_string::<i32>();
    let image = |name| {
        data.column_by_name(name)
            .map(|c| c.as_struct())
            .ok_or_else(|| bad(format!("no `{name}`")))
    };
    let (before, after) = (image(BEFORE)?, image(AFTER)?);
    for key in &input.table.primary_key {
        let (in_before, in_after) = (
            before.column_by_name(key).expect("checked"),
            after.column_by_name(key).expect("checked"),
        );
        if in_before.null_count() == 0 && in_after.null_count() == 0 {
            continue;
        }
        for row in 0..data.num_rows() {
            let column = match Op::parse(ops.value(row)) {
                Some(Op::Truncate) => continue,
                Some(Op::Delete) => in_before,
                _ => in_after,
            };
            if column.is_null(row) {
                return Err(bad(format!(
                    "row {row} has no value for its primary key column `{key}`"
                )));
            }
        }
    }
    Ok(())
}

fn names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
