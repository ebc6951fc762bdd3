//! SQLite snapshots: a table read into memory, each column as the Arrow type its declared
//! type names (the types weir's SQLite sink declares read back exactly: decimals and
//! timestamps from their text).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use rusqlite::types::Value;
use weir_runtime::config::LoadedPipeline;
use weir_runtime::config::reconcile::SqliteSnapshot;
use weir_runtime::decode::types::{ColumnType, from_sql_declaration};
use weir_runtime::sink::resolve::arrow_column;
use weir_runtime::sink::sqlite::quote;

use super::BATCH_ROWS;
use crate::ReconcileError;

pub fn register(
    ctx: &SessionContext,
    name: &str,
    config: &SqliteSnapshot,
    pipeline: &LoadedPipeline,
) -> Result<String, ReconcileError> {
    let path = pipeline.resolve(&config.path);
    let table_name = config.table.as_deref().unwrap_or_default();
    let description = format!("sqlite {} table {table_name}", path.display());
    let fail = |e: String| ReconcileError::new(format!("{name}: {description}: {e}"));
    if !path.exists() {
        return Err(fail(format!(
            "the file does not exist; check `reconcile.{name}.path`"
        )));
    }
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| fail(e.to_string()))?;
    // The file may come from outside weir: the SQL stored in it (a view's, a trigger's)
    // may not call functions that are not harmless.
    conn.pragma_update(None, "trusted_schema", false)
        .map_err(|e| fail(e.to_string()))?;
    let batches = read(&conn, table_name).map_err(fail)?;
    let schema = batches.0;
    let table = MemTable::try_new(schema, vec![batches.1]).map_err(|e| fail(e.to_string()))?;
    ctx.register_table(name, Arc::new(table))
        .map_err(|e| fail(e.to_string()))?;
    Ok(description)
}

/// The table's schema and rows.
fn read(
    conn: &rusqlite::Connection,
    table: &str,
) -> Result<(Arc<Schema>, Vec<RecordBatch>), String> {
    let mut info = conn
        .prepare(&format!("PRAGMA table_info({})", quote(table)))
        .map_err(|e| e.to_string())?;
    let declared: Vec<(String, String)> = info
        .query_map([], |r| Ok((r.get(1)?, r.get(2)?)))
        .and_then(|rows| rows.collect())
        .map_err(|e| e.to_string())?;
    if declared.is_empty() {
        return Err(format!(
            "there is no table {}; check the table name",
            quote(table)
        ));
    }
    // A column without a known declared type is read as text.
    let fields: Vec<Field> = declared
        .iter()
        .map(|(column, ty)| {
            let ty = from_sql_declaration(ty).unwrap_or(ColumnType::String);
            Field::new(column, ty.arrow_type(), true)
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let columns: Vec<String> = declared.iter().map(|(c, _)| quote(c)).collect();
    let mut select = conn
        .prepare(&format!(
            "SELECT {} FROM {}",
            columns.join(", "),
            quote(table)
        ))
        .map_err(|e| e.to_string())?;
    let mut rows = select.query([]).map_err(|e| e.to_string())?;
    let mut batches = Vec::new();
    let mut values: Vec<Vec<Value>> = vec![Vec::new(); columns.len()];
    let flush = |values: &mut Vec<Vec<Value>>, batches: &mut Vec<RecordBatch>| {
        let arrays = schema
            .fields()
            .iter()
            .zip(values.iter())
            .map(|(field, values)| arrow_column(field, values))
            .collect::<Result<Vec<_>, _>>()?;
        batches.push(RecordBatch::try_new(schema.clone(), arrays).map_err(|e| e.to_string())?);
        values.iter_mut().for_each(Vec::clear);
        Ok::<_, String>(())
    };
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        for (i, column) in values.iter_mut().enumerate() {
            column.push(row.get(i).map_err(|e| e.to_string())?);
        }
        if values[0].len() == BATCH_ROWS {
            flush(&mut values, &mut batches)?;
        }
    }
    if !values[0].is_empty() || batches.is_empty() {
        flush(&mut values, &mut batches)?;
    }
    Ok((schema, batches))
}
