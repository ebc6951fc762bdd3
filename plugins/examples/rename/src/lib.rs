//! rename: renames columns of the row images, and the table the changes name.
//!
//! ```yaml
//! transforms:
//!   - name: to-new-schema
//!     wasm: plugins/examples/rename/rename.wasm
//!     config:
//!       columns: { name: title, price: unit_price }
//!       table: catalogue          # optional: the `source_table` of every change
//! ```
//!
//! Columns are renamed in `before` and `after` alike; values and types are untouched, so
//! it costs no copy of the data. The sink then writes the new names (a SQLite or
//! PostgreSQL sink with `create: true` creates them). `table` rewrites the envelope's
//! `source_table`, which change-log sinks (Parquet, JSONL, Kafka) record, so a migration
//! can present changes under the target's table name.
//!
//! Mistakes fail the batch with a message naming the column: renaming a column the rows do
//! not have, or to a name another column already has. Renaming a primary key column is
//! refused by weir (the rows must keep the table's key).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use weir_plugin::arrow_array::{ArrayRef, RecordBatch, StringArray, StructArray};
use weir_plugin::arrow_schema::{Field, Fields};
use weir_plugin::envelope::{self, AFTER, BEFORE, SOURCE_TABLE};
use weir_plugin::{JsonValue, Output, Transform, typed_config};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Old column name -> new column name.
    #[serde(default)]
    columns: BTreeMap<String, String>,
    /// The table name every change carries from here on.
    #[serde(default)]
    table: Option<String>,
}

pub struct Rename {
    config: Config,
}

impl Transform for Rename {
    fn init(config: &JsonValue) -> Result<Self, String> {
        let config: Config = typed_config(config)?;
        if config.columns.is_empty() && config.table.is_none() {
            return Err("nothing to rename: give `columns` (old: new) or `table`".into());
        }
        let mut targets: Vec<&String> = config.columns.values().collect();
        targets.sort();
        if let Some(twice) = targets.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("two columns are renamed to `{}`", twice[0]));
        }
        Ok(Rename { config })
    }

    fn transform(&mut self, batch: RecordBatch) -> Result<Output, String> {
        let mut output = batch.clone();
        if !self.config.columns.is_empty() {
            let before = self.rename(envelope::image(&batch, BEFORE)?)?;
            let after = self.rename(envelope::image(&batch, AFTER)?)?;
            output = envelope::with_images(&output, before, after)?;
        }
        if let Some(table) = &self.config.table {
            output = with_table(&output, table)?;
        }
        Ok(Output::rows(output))
    }
}

impl Rename {
    fn rename(&self, image: &StructArray) -> Result<StructArray, String> {
        let (fields, columns, nulls) = image.clone().into_parts();
        for old in self.config.columns.keys() {
            if fields.find(old).is_none() {
                return Err(format!("no column `{old}` to rename"));
            }
        }
        let renamed: Vec<Field> = fields
            .iter()
            .map(|f| match self.config.columns.get(f.name()) {
                Some(new) => f.as_ref().clone().with_name(new),
                None => f.as_ref().clone(),
            })
            .collect();
        let mut names: Vec<&str> = renamed.iter().map(|f| f.name().as_str()).collect();
        names.sort();
        if let Some(twice) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!(
                "renaming would give two columns the name `{}`",
                twice[0]
            ));
        }
        StructArray::try_new(Fields::from(renamed), columns, nulls).map_err(|e| e.to_string())
    }
}

/// `batch` with every change's `source_table` set to `table`.
fn with_table(batch: &RecordBatch, table: &str) -> Result<RecordBatch, String> {
    let index = batch
        .schema()
        .index_of(SOURCE_TABLE)
        .map_err(|_| format!("the batch has no `{SOURCE_TABLE}` column"))?;
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns[index] = Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
        table,
        batch.num_rows(),
    )));
    RecordBatch::try_new(batch.schema(), columns).map_err(|e| e.to_string())
}

weir_plugin::export_transform!(Rename);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use weir_plugin::arrow_array::cast::AsArray;
    use weir_plugin::arrow_schema::DataType;
    use weir_plugin::testing::{ChangeBatchBuilder, column, run_transform};

    fn batch() -> RecordBatch {
        ChangeBatchBuilder::new(vec![
            column("id", DataType::Int64),
            column("name", DataType::Utf8),
        ])
        .change("c", None, Some(json!({"id": 1, "name": "a"})))
        .change("d", Some(json!({"id": 2, "name": "b"})), None)
        .build()
    }

    #[test]
    fn columns_are_renamed_in_both_images_with_their_values() {
        let config = json!({"columns": {"name": "title"}, "table": "catalogue"});
        let output = run_transform::<Rename>(config, &batch()).unwrap();
        assert_eq!(output.source_rows, None);
        let after = envelope::image(&output.batch, AFTER).unwrap();
        let before = envelope::image(&output.batch, BEFORE).unwrap();
        for image in [after, before] {
            let names: Vec<&str> = image.fields().iter().map(|f| f.name().as_str()).collect();
            assert_eq!(names, ["id", "title"]);
        }
        assert_eq!(after.column(1).as_string::<i32>().value(0), "a");
        assert_eq!(before.column(1).as_string::<i32>().value(1), "b");
        let tables = output.batch.column_by_name(SOURCE_TABLE).unwrap();
        assert_eq!(tables.as_string::<i32>().value(1), "catalogue");
    }

    #[test]
    fn mistakes_name_the_column() {
        let missing = run_transform::<Rename>(json!({"columns": {"nme": "x"}}), &batch());
        assert!(missing.unwrap_err().contains("no column `nme`"));
        let clash = run_transform::<Rename>(json!({"columns": {"name": "id"}}), &batch());
        assert!(clash.unwrap_err().contains("two columns the name `id`"));
        let nothing = run_transform::<Rename>(json!({}), &batch());
        assert!(nothing.unwrap_err().contains("nothing to rename"));
    }
}
