//! The row API: a typed view of one change, for transforms written row by row.
//!
//! [`map_rows`] turns each row of a change batch into a [`Change`] (its operation and its
//! `before` and `after` rows as [`Value`]s), calls a function, and builds the output batch
//! from what the function kept and changed. Convenient, and fast enough for most
//! transforms; for the fastest, work on the Arrow batch itself ([`crate::Transform`]).

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, LargeBinaryBuilder, LargeStringBuilder, PrimitiveBuilder, StringBuilder,
};
use arrow_array::types::*;
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float32Array, Float64Array, RecordBatch, StructArray,
    UInt32Array, cast::AsArray,
};
use arrow_schema::{DataType, Field, Fields, TimeUnit};

use crate::envelope::{self, AFTER, BEFORE, OP};
use crate::{Output, RowError};

/// One value of a row, as the row API sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// Integers; also dates (days since 1970-01-01) and timestamps (in the column's unit
    /// since 1970-01-01 UTC).
    Int(i64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
    /// A value of a type the row API only shows (decimals as their exact text, others as
    /// their type name); it cannot be set.
    Other(String),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) | Value::Other(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Text(_) => "text",
            Value::Bytes(_) => "bytes",
            Value::Other(_) => "an opaque value",
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Text(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// The columns of a row image, shared by every row of a batch.
#[derive(Debug)]
struct Columns {
    fields: Fields,
}

/// One row image (`before` or `after`).
#[derive(Debug, Clone)]
pub struct Row {
    columns: Arc<Columns>,
    values: Vec<Value>,
    changed: bool,
}

impl Row {
    fn index(&self, name: &str) -> Result<usize, String> {
        self.columns
            .fields
            .iter()
            .position(|f| f.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self.column_names().collect();
                format!("no column `{name}` (the row has {})", names.join(", "))
            })
    }

    /// The value of a column.
    pub fn get(&self, name: &str) -> Result<&Value, String> {
        Ok(&self.values[self.index(name)?])
    }

    /// Sets a column. The value must suit the column's type: an error says why not.
    pub fn set(&mut self, name: &str, value: impl Into<Value>) -> Result<(), String> {
        let index = self.index(name)?;
        let value = value.into();
        let field = &self.columns.fields[index];
        check_writable(field, &value)?;
        self.values[index] = value;
        self.changed = true;
        Ok(())
    }

    pub fn column_names(&self) -> impl Iterator<Item = &str> {
        self.columns.fields.iter().map(|f| f.name().as_str())
    }
}

/// One change: its operation and row images.
#[derive(Debug, Clone)]
pub struct Change {
    op: String,
    before: Option<Row>,
    after: Option<Row>,
}

impl Change {
    /// `c`, `u`, `d`, `r` or `t`, as Debezium spells it.
    pub fn op(&self) -> &str {
        &self.op
    }
    pub fn before(&self) -> Option<&Row> {
        self.before.as_ref()
    }
    pub fn after(&self) -> Option<&Row> {
        self.after.as_ref()
    }
    pub fn before_mut(&mut self) -> Option<&mut Row> {
        self.before.as_mut()
    }
    pub fn after_mut(&mut self) -> Option<&mut Row> {
        self.after.as_mut()
    }
    /// The row that describes the change's result: `after`, or `before` for a delete.
    pub fn row(&self) -> Option<&Row> {
        self.after.as_ref().or(self.before.as_ref())
    }
}

/// Whether a change stays in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Yes,
    No,
}

impl Keep {
    pub fn when(keep: bool) -> Keep {
        if keep { Keep::Yes } else { Keep::No }
    }
}

/// Runs `f` over every change of `batch`: kept changes (with what `f` set) make the output,
/// dropped ones leave it, and an `Err` becomes that row's [`RowError`].
pub fn map_rows(
    batch: &RecordBatch,
    mut f: impl FnMut(&mut Change) -> Result<Keep, String>,
) -> Result<Output, String> {
    let before = envelope::image(batch, BEFORE)?;
    let after = envelope::image(batch, AFTER)?;
    let ops = batch
        .column_by_name(OP)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or("the batch has no `op` text column")?;
    let columns = Arc::new(Columns {
        fields: after.fields().clone(),
    });
    let mut kept: Vec<u32> = Vec::new();
    let mut changes: Vec<Change> = Vec::new();
    let mut errors = Vec::new();
    let mut changed = false;
    for i in 0..batch.num_rows() {
        let mut change = Change {
            op: ops.value(i).to_string(),
            before: read_row(before, i, &columns),
            after: read_row(after, i, &columns),
        };
        match f(&mut change) {
            Ok(Keep::Yes) => {
                changed |= change.before.as_ref().is_some_and(|r| r.changed)
                    || change.after.as_ref().is_some_and(|r| r.changed);
                kept.push(i as u32);
                changes.push(change);
            }
            Ok(Keep::No) => {}
            Err(message) => errors.push(RowError {
                row: i as u32,
                message,
            }),
        }
    }
    let indices = UInt32Array::from(kept.clone());
    let mut output = arrow_select::take::take_record_batch(batch, &indices)
        .map_err(|e| format!("selecting the kept rows: {e}"))?;
    if changed {
        let before = rebuild_image(
            envelope::image(&output, BEFORE)?,
            changes.iter().map(|c| c.before.as_ref()),
        )?;
        let after = rebuild_image(
            envelope::image(&output, AFTER)?,
            changes.iter().map(|c| c.after.as_ref()),
        )?;
        output = envelope::with_images(&output, before, after)?;
    }
    let one_for_one = kept.len() == batch.num_rows();
    Ok(Output {
        batch: output,
        source_rows: (!one_for_one).then_some(kept),
        errors,
    })
}

/// What a row resolver decides for one incoming change.
#[derive(Debug, Clone)]
pub enum Resolution {
    /// Apply the change as it is.
    Apply,
    /// Leave the target row as it is.
    Skip,
    /// Write this row instead: usually the incoming `after` (or the current row) with
    /// some columns set. It must keep the change's key. Columns the row API cannot set
    /// (decimals, say) are taken from the incoming `after`, or from the current row for a
    /// delete.
    Merge(Row),
}

/// Runs `f` over every incoming change with the target's current row for its key (`None`
/// where the target has none) and collects the decisions and merged rows.
pub fn resolve_rows(
    incoming: &RecordBatch,
    current: &RecordBatch,
    mut f: impl FnMut(&Change, Option<&Row>) -> Result<Resolution, String>,
) -> Result<crate::Resolved, String> {
    let before = envelope::image(incoming, BEFORE)?;
    let after = envelope::image(incoming, AFTER)?;
    let ops = incoming
        .column_by_name(OP)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or("the batch has no `op` text column")?;
    let now = envelope::image(current, crate::CURRENT)?;
    if now.len() != incoming.num_rows() {
        return Err(format!(
            "{} current rows for {} incoming changes",
            now.len(),
            incoming.num_rows()
        ));
    }
    let columns = Arc::new(Columns {
        fields: after.fields().clone(),
    });
    let mut decisions = Vec::with_capacity(incoming.num_rows());
    let mut merged: Vec<(usize, Row)> = Vec::new();
    let mut errors = Vec::new();
    for i in 0..incoming.num_rows() {
        let change = Change {
            op: ops.value(i).to_string(),
            before: read_row(before, i, &columns),
            after: read_row(after, i, &columns),
        };
        let current_row = read_row(now, i, &columns);
        match f(&change, current_row.as_ref()) {
            Ok(Resolution::Apply) => decisions.push(crate::Decision::Apply),
            Ok(Resolution::Skip) => decisions.push(crate::Decision::Skip),
            Ok(Resolution::Merge(row)) => {
                decisions.push(crate::Decision::Merge);
                merged.push((i, row));
            }
            Err(message) => {
                // The host ignores the decision of a refused row.
                decisions.push(crate::Decision::Skip);
                errors.push(RowError {
                    row: i as u32,
                    message,
                });
            }
        }
    }
    let merged = if merged.is_empty() {
        None
    } else {
        Some(merged_rows(after, now, &merged)?)
    };
    Ok(crate::Resolved {
        decisions,
        merged,
        errors,
    })
}

/// The merged rows as a batch of the table's columns: settable columns from the rows'
/// values, the others from the incoming `after` (or the current row for a delete).
fn merged_rows(
    after: &StructArray,
    current: &StructArray,
    rows: &[(usize, Row)],
) -> Result<RecordBatch, String> {
    let fields = after.fields().clone();
    let mut columns = Vec::with_capacity(fields.len());
    for (index, field) in fields.iter().enumerate() {
        let ty = field.data_type();
        if writable(ty) {
            columns.push(build_array(ty, rows.iter().map(|(_, r)| &r.values[index]))?);
        } else {
            let sources = [after.column(index).as_ref(), current.column(index).as_ref()];
            let picks: Vec<(usize, usize)> = rows
                .iter()
                .map(|(i, _)| (if after.is_valid(*i) { 0 } else { 1 }, *i))
                .collect();
            columns.push(
                arrow_select::interleave::interleave(&sources, &picks)
                    .map_err(|e| format!("column `{}`: {e}", field.name()))?,
            );
        }
    }
    let schema = Arc::new(arrow_schema::Schema::new(
        fields
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    RecordBatch::try_new(schema, columns).map_err(|e| e.to_string())
}

fn read_row(image: &StructArray, row: usize, columns: &Arc<Columns>) -> Option<Row> {
    if image.is_null(row) {
        return None;
    }
    let values = image.columns().iter().map(|c| read_value(c, row)).collect();
    Some(Row {
        columns: columns.clone(),
        values,
        changed: false,
    })
}

fn read_value(array: &ArrayRef, i: usize) -> Value {
    if array.is_null(i) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(i)),
        DataType::Int8 => Value::Int(array.as_primitive::<Int8Type>().value(i).into()),
        DataType::Int16 => Value::Int(array.as_primitive::<Int16Type>().value(i).into()),
        DataType::Int32 => Value::Int(array.as_primitive::<Int32Type>().value(i).into()),
        DataType::Int64 => Value::Int(array.as_primitive::<Int64Type>().value(i)),
        DataType::UInt8 => Value::Int(array.as_primitive::<UInt8Type>().value(i).into()),
        DataType::UInt16 => Value::Int(array.as_primitive::<UInt16Type>().value(i).into()),
        DataType::UInt32 => Value::Int(array.as_primitive::<UInt32Type>().value(i).into()),
        DataType::Float32 => Value::Float(array.as_primitive::<Float32Type>().value(i).into()),
        DataType::Float64 => Value::Float(array.as_primitive::<Float64Type>().value(i)),
        DataType::Utf8 => Value::Text(array.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Value::Text(array.as_string::<i64>().value(i).to_string()),
        DataType::Binary => Value::Bytes(array.as_binary::<i32>().value(i).to_vec()),
        DataType::LargeBinary => Value::Bytes(array.as_binary::<i64>().value(i).to_vec()),
        DataType::Date32 => Value::Int(array.as_primitive::<Date32Type>().value(i).into()),
        DataType::Timestamp(unit, _) => Value::Int(match unit {
            TimeUnit::Second => array.as_primitive::<TimestampSecondType>().value(i),
            TimeUnit::Millisecond => array.as_primitive::<TimestampMillisecondType>().value(i),
            TimeUnit::Microsecond => array.as_primitive::<TimestampMicrosecondType>().value(i),
            TimeUnit::Nanosecond => array.as_primitive::<TimestampNanosecondType>().value(i),
        }),
        DataType::Decimal128(precision, scale) => Value::Other(Decimal128Type::format_decimal(
            array.as_primitive::<Decimal128Type>().value(i),
            *precision,
            *scale,
        )),
        other => Value::Other(other.to_string()),
    }
}

fn check_writable(field: &Field, value: &Value) -> Result<(), String> {
    let name = field.name();
    let ty = field.data_type();
    let fits = match (ty, value) {
        (_, Value::Null) => true,
        (DataType::Boolean, Value::Bool(_)) => true,
        (DataType::Int8, Value::Int(i)) => i8::try_from(*i).is_ok(),
        (DataType::Int16, Value::Int(i)) => i16::try_from(*i).is_ok(),
        (DataType::Int32 | DataType::Date32, Value::Int(i)) => i32::try_from(*i).is_ok(),
        (DataType::UInt8, Value::Int(i)) => u8::try_from(*i).is_ok(),
        (DataType::UInt16, Value::Int(i)) => u16::try_from(*i).is_ok(),
        (DataType::UInt32, Value::Int(i)) => u32::try_from(*i).is_ok(),
        (DataType::Int64 | DataType::Timestamp(..), Value::Int(_)) => true,
        (DataType::Float32 | DataType::Float64, Value::Float(_) | Value::Int(_)) => true,
        (DataType::Utf8 | DataType::LargeUtf8, Value::Text(_)) => true,
        (DataType::Binary | DataType::LargeBinary, Value::Bytes(_) | Value::Text(_)) => true,
        _ if !writable(ty) => {
            return Err(format!(
                "the row API cannot set column `{name}` of type {ty}; transform the Arrow \
                 batch instead (weir_plugin::Transform)"
            ));
        }
        _ => false,
    };
    if fits {
        Ok(())
    } else {
        Err(format!(
            "column `{name}` holds {ty}, which cannot take {} ({value:?})",
            value.kind()
        ))
    }
}

fn writable(ty: &DataType) -> bool {
    matches!(
        ty,
        DataType::Boolean
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::Float32
            | DataType::Float64
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::Date32
            | DataType::Timestamp(..)
    )
}

/// A row image rebuilt from the rows the function saw: writable columns from their values,
/// the others as they were.
fn rebuild_image<'a>(
    taken: &StructArray,
    rows: impl Iterator<Item = Option<&'a Row>> + Clone,
) -> Result<StructArray, String> {
    let (fields, mut columns, nulls) = taken.clone().into_parts();
    for (index, field) in fields.iter().enumerate() {
        let ty = field.data_type();
        if !writable(ty) {
            continue;
        }
        let values = rows
            .clone()
            .map(|row| row.map_or(&Value::Null, |r| &r.values[index]));
        columns[index] = build_array(ty, values)?;
    }
    StructArray::try_new(fields, columns, nulls).map_err(|e| e.to_string())
}

pub(crate) fn build_array<'a>(
    ty: &DataType,
    values: impl Iterator<Item = &'a Value>,
) -> Result<ArrayRef, String> {
    fn ints<T: ArrowPrimitiveType>(
        values: impl Iterator<Item = Option<i64>>,
        ty: &DataType,
    ) -> Result<ArrayRef, String>
    where
        T::Native: TryFrom<i64>,
    {
        let mut builder = PrimitiveBuilder::<T>::new().with_data_type(ty.clone());
        for value in values {
            match value {
                Some(v) => builder.append_value(
                    T::Native::try_from(v).map_err(|_| format!("{v} does not fit {ty}"))?,
                ),
                None => builder.append_null(),
            }
        }
        Ok(Arc::new(builder.finish()))
    }
    let int = |v: &Value| v.as_int();
    let text = |v: &'a Value| match v {
        Value::Text(s) => Some(s.as_bytes()),
        Value::Bytes(b) => Some(b.as_slice()),
        _ => None,
    };
    Ok(match ty {
        DataType::Boolean => Arc::new(values.map(Value::as_bool).collect::<BooleanArray>()),
        DataType::Int8 => ints::<Int8Type>(values.map(int), ty)?,
        DataType::Int16 => ints::<Int16Type>(values.map(int), ty)?,
        DataType::Int32 => ints::<Int32Type>(values.map(int), ty)?,
        DataType::Int64 => ints::<Int64Type>(values.map(int), ty)?,
        DataType::UInt8 => ints::<UInt8Type>(values.map(int), ty)?,
        DataType::UInt16 => ints::<UInt16Type>(values.map(int), ty)?,
        DataType::UInt32 => ints::<UInt32Type>(values.map(int), ty)?,
        DataType::Date32 => ints::<Date32Type>(values.map(int), ty)?,
        DataType::Timestamp(unit, _) => match unit {
            TimeUnit::Second => ints::<TimestampSecondType>(values.map(int), ty)?,
            TimeUnit::Millisecond => ints::<TimestampMillisecondType>(values.map(int), ty)?,
            TimeUnit::Microsecond => ints::<TimestampMicrosecondType>(values.map(int), ty)?,
            TimeUnit::Nanosecond => ints::<TimestampNanosecondType>(values.map(int), ty)?,
        },
        DataType::Float32 => Arc::new(
            values
                .map(|v| v.as_float().map(|f| f as f32))
                .collect::<Float32Array>(),
        ),
        DataType::Float64 => Arc::new(values.map(Value::as_float).collect::<Float64Array>()),
        DataType::Utf8 => {
            let mut b = StringBuilder::new();
            values.for_each(|v| b.append_option(v.as_text()));
            Arc::new(b.finish())
        }
        DataType::LargeUtf8 => {
            let mut b = LargeStringBuilder::new();
            values.for_each(|v| b.append_option(v.as_text()));
            Arc::new(b.finish())
        }
        DataType::Binary => {
            let mut b = BinaryBuilder::new();
            values.for_each(|v| b.append_option(text(v)));
            Arc::new(b.finish())
        }
        DataType::LargeBinary => {
            let mut b = LargeBinaryBuilder::new();
            values.for_each(|v| b.append_option(text(v)));
            Arc::new(b.finish())
        }
        other => return Err(format!("the row API cannot build a {other} column")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ChangeBatchBuilder, column};

    fn batch() -> RecordBatch {
        ChangeBatchBuilder::new(vec![
            column("id", DataType::Int64),
            column("email", DataType::Utf8),
            column("score", DataType::Float64),
        ])
        .change(
            "c",
            None,
            Some(serde_json::json!({"id": 1, "email": "a@x.org", "score": 1.5})),
        )
        .change(
            "u",
            Some(serde_json::json!({"id": 2, "email": "b@x.org", "score": 2.0})),
            Some(serde_json::json!({"id": 2, "email": "b@y.org", "score": null})),
        )
        .change(
            "d",
            Some(serde_json::json!({"id": 3, "email": "c@x.org", "score": 3.0})),
            None,
        )
        .build()
    }

    #[test]
    fn dropped_rows_leave_and_their_source_rows_are_recorded() {
        let output = map_rows(&batch(), |c| Ok(Keep::when(c.op() != "u"))).unwrap();
        assert_eq!(output.batch.num_rows(), 2);
        assert_eq!(output.source_rows, Some(vec![0, 2]));
        let ops = output.batch.column(0).as_string::<i32>();
        assert_eq!((ops.value(0), ops.value(1)), ("c", "d"));
    }

    #[test]
    fn set_values_reach_the_output_and_untouched_rows_keep_theirs() {
        let output = map_rows(&batch(), |c| {
            if let Some(row) = c.after_mut() {
                row.set("email", "redacted")?;
            }
            Ok(Keep::Yes)
        })
        .unwrap();
        assert_eq!(output.source_rows, None);
        let after = envelope::image(&output.batch, AFTER).unwrap();
        let emails = after.column(1).as_string::<i32>();
        assert_eq!(emails.value(0), "redacted");
        assert_eq!(emails.value(1), "redacted");
        assert!(after.is_null(2), "a delete keeps its absent after image");
        let before = envelope::image(&output.batch, BEFORE).unwrap();
        assert_eq!(before.column(1).as_string::<i32>().value(2), "c@x.org");
        assert!(after.column(2).is_null(1), "a null stays null");
    }

    #[test]
    fn a_row_error_names_the_row_and_the_rest_proceeds() {
        let output = map_rows(&batch(), |c| {
            let row = c.row().unwrap();
            if row.get("id")?.as_int() == Some(2) {
                return Err("id 2 is cursed".into());
            }
            Ok(Keep::Yes)
        })
        .unwrap();
        assert_eq!(
            output.errors,
            vec![RowError {
                row: 1,
                message: "id 2 is cursed".into()
            }]
        );
        assert_eq!(output.source_rows, Some(vec![0, 2]));
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused_with_the_column_named() {
        let error = map_rows(&batch(), |c| {
            if let Some(row) = c.after_mut() {
                row.set("id", "one")?;
            }
            Ok(Keep::Yes)
        })
        .unwrap()
        .errors
        .remove(0)
        .message;
        assert!(error.contains("column `id` holds Int64"), "{error}");
        let missing = batch();
        let error = map_rows(&missing, |c| {
            c.row().unwrap().get("nope").map(|_| Keep::Yes)
        })
        .unwrap()
        .errors
        .remove(0)
        .message;
        assert!(
            error.contains("no column `nope` (the row has id, email, score)"),
            "{error}"
        );
    }
}
