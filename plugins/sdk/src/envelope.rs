//! The change batch envelope (weir's `docs/data-model.md`): the operation, times, source
//! coordinates, origin tag and headers, then the row images `before` and `after` as
//! struct columns with the table's columns.

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch, StructArray, cast::AsArray};
use arrow_schema::{Field, Fields, Schema};

pub use weir_envelope::{
    AFTER, BEFORE, EVENT_TIME, HEADERS, OP, ORIGIN, SOURCE_TABLE, SOURCE_TEXT_COLUMNS, SOURCE_TIME,
    empty_headers, headers_type, schema,
};

/// A row image column (`before` or `after`) of a change batch.
pub fn image<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StructArray, String> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_struct_opt())
        .ok_or_else(|| format!("the batch has no `{name}` struct column"))
}

/// `batch` with its row images replaced (the schema follows their fields).
pub fn with_images(
    batch: &RecordBatch,
    before: StructArray,
    after: StructArray,
) -> Result<RecordBatch, String> {
    let schema = batch.schema();
    let mut fields: Vec<Field> = Vec::with_capacity(schema.fields().len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        let replacement = match field.name().as_str() {
            BEFORE => Some(&before),
            AFTER => Some(&after),
            _ => None,
        };
        match replacement {
            Some(image) => {
                fields.push(Field::new(field.name(), image.data_type().clone(), true));
                columns.push(Arc::new(image.clone()));
            }
            None => {
                fields.push(field.as_ref().clone());
                columns.push(column.clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| e.to_string())
}

/// Replaces one column of a row image, keeping its nulls.
pub fn replace_field(
    image: &StructArray,
    name: &str,
    column: ArrayRef,
) -> Result<StructArray, String> {
    let (fields, mut columns, nulls) = image.clone().into_parts();
    let index = fields
        .iter()
        .position(|f| f.name() == name)
        .ok_or_else(|| format!("no column `{name}`"))?;
    let mut new_fields: Vec<Field> = fields.iter().map(|f| f.as_ref().clone()).collect();
    new_fields[index] = Field::new(name, column.data_type().clone(), true);
    columns[index] = column;
    StructArray::try_new(Fields::from(new_fields), columns, nulls).map_err(|e| e.to_string())
}
