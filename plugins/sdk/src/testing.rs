//! Native test support: build change batches and run a transform on them with plain
//! `cargo test`, without wasm. The batch goes through the same IPC encoding the host uses.

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, StructArray, new_null_array};
use arrow_buffer::NullBuffer;
use arrow_schema::{DataType, Field, Fields};
use serde_json::Value as Json;

use crate::change::{Value, build_array};
use crate::envelope::{self, AFTER, BEFORE, OP};
use crate::{CURRENT, Output, Resolve, Resolved, Transform, ipc};

/// A nullable row column.
pub fn column(name: &str, ty: DataType) -> Field {
    Field::new(name, ty, true)
}

/// Builds a change batch with weir's envelope from JSON row images.
pub struct ChangeBatchBuilder {
    fields: Fields,
    changes: Vec<(String, Option<Json>, Option<Json>)>,
}

impl ChangeBatchBuilder {
    pub fn new(columns: Vec<Field>) -> Self {
        ChangeBatchBuilder {
            fields: Fields::from(columns),
            changes: Vec::new(),
        }
    }

    /// Adds a change: `op` is `c`, `u`, `d`, `r` or `t`; images are JSON objects.
    pub fn change(mut self, op: &str, before: Option<Json>, after: Option<Json>) -> Self {
        self.changes.push((op.to_string(), before, after));
        self
    }

    pub fn build(&self) -> RecordBatch {
        let schema = envelope::schema(self.fields.clone());
        let rows = self.changes.len();
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|field| match field.name().as_str() {
                OP => Arc::new(StringArray::from_iter_values(
                    self.changes.iter().map(|c| c.0.as_str()),
                )) as ArrayRef,
                BEFORE => Arc::new(self.image(|c| c.1.as_ref())),
                AFTER => Arc::new(self.image(|c| c.2.as_ref())),
                envelope::HEADERS => envelope::empty_headers(rows),
                _ => new_null_array(field.data_type(), rows),
            })
            .collect();
        RecordBatch::try_new(schema, columns).expect("a valid change batch")
    }

    /// The `current` batch a resolver receives: for each change, in order, the target's
    /// row as a JSON object, or `None` where the target has no row for its key.
    pub fn current(&self, rows: &[Option<Json>]) -> RecordBatch {
        let current = ChangeBatchBuilder {
            fields: self.fields.clone(),
            changes: rows
                .iter()
                .map(|row| (String::new(), None, row.clone()))
                .collect(),
        }
        .image(|c| c.2.as_ref());
        let field = Field::new(CURRENT, current.data_type().clone(), true);
        RecordBatch::try_new(
            Arc::new(arrow_schema::Schema::new(vec![field])),
            vec![Arc::new(current) as ArrayRef],
        )
        .expect("a valid current batch")
    }

    fn image(
        &self,
        pick: impl Fn(&(String, Option<Json>, Option<Json>)) -> Option<&Json>,
    ) -> StructArray {
        let present: Vec<bool> = self.changes.iter().map(|c| pick(c).is_some()).collect();
        let columns = self
            .fields
            .iter()
            .map(|field| {
                let values: Vec<Value> = self
                    .changes
                    .iter()
                    .map(|c| json_value(pick(c).and_then(|row| row.get(field.name()))))
                    .collect();
                build_array(field.data_type(), values.iter())
                    .unwrap_or_else(|e| panic!("column `{}`: {e}", field.name()))
            })
            .collect();
        StructArray::new(
            self.fields.clone(),
            columns,
            Some(NullBuffer::from(present)),
        )
    }
}

fn json_value(value: Option<&Json>) -> Value {
    match value {
        None | Some(Json::Null) => Value::Null,
        Some(Json::Bool(b)) => Value::Bool(*b),
        Some(Json::Number(n)) => n
            .as_i64()
            .map(Value::Int)
            .unwrap_or_else(|| Value::Float(n.as_f64().unwrap_or(f64::NAN))),
        Some(Json::String(s)) => Value::Text(s.clone()),
        Some(other) => Value::Text(other.to_string()),
    }
}

/// Runs a transform as the host would: `init` with `config`, then the batch through IPC
/// in and out.
pub fn run_transform<T: Transform>(config: Json, batch: &RecordBatch) -> Result<Output, String> {
    let mut plugin = T::init(&config)?;
    let input = ipc::read(ipc::write(batch)?)?;
    let mut output = plugin.transform(input)?;
    output.batch = ipc::read(ipc::write(&output.batch)?)?;
    Ok(output)
}

/// Runs a resolver as the host would: `init` with `config`, then both batches through IPC.
pub fn run_resolver<R: Resolve>(
    config: Json,
    incoming: &RecordBatch,
    current: &RecordBatch,
) -> Result<Resolved, String> {
    let mut plugin = R::init(&config)?;
    let incoming = ipc::read(ipc::write(incoming)?)?;
    let current = ipc::read(ipc::write(current)?)?;
    let mut resolved = plugin.resolve(incoming, current)?;
    if let Some(merged) = resolved.merged.take() {
        resolved.merged = Some(ipc::read(ipc::write(&merged)?)?);
    }
    Ok(resolved)
}
