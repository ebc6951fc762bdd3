//! PostgreSQL snapshots: a table, or the rows of a query, read into memory. Each column's
//! Arrow type comes from its declared type (`format_type`, so `numeric(12,2)` keeps its
//! scale); values travel as text in exact forms (numeric text, timestamps in UTC) and are
//! cast to that type, so decimals and timestamps compare exactly.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use postgres::Client;
use weir_runtime::config::reconcile::PostgresSnapshot;
use weir_runtime::decode::types::ColumnType;
use weir_runtime::sink::postgres::{from_pg_declaration, quote};

use super::BATCH_ROWS;
use crate::ReconcileError;

pub fn register(
    ctx: &SessionContext,
    name: &str,
    config: &PostgresSnapshot,
) -> Result<String, ReconcileError> {
    let description = match (&config.table, &config.query) {
        (Some(table), _) => format!("postgres table {table}"),
        (None, _) => "postgres query".to_string(),
    };
    let fail = |e: String| ReconcileError::new(format!("{name}: {description}: {e}"));
    let mut client = crate::pool::connect(config.url.expose())
        .map_err(|e| fail(format!("cannot connect: {e}")))?;
    let relation = match (&config.table, &config.query) {
        (Some(table), _) => qualified(table),
        (None, Some(query)) => format!("({query}) AS q"),
        (None, None) => return Err(fail("give `table` or `query`".into())),
    };
    register_relation(ctx, name, &mut client, &relation).map_err(fail)?;
    Ok(description)
}

/// Reads `relation` (a quoted table, or `(query) AS q`) and registers its rows as `name`.
pub fn register_relation(
    ctx: &SessionContext,
    name: &str,
    client: &mut Client,
    relation: &str,
) -> Result<u64, String> {
    let (schema, batches) = read(client, relation)?;
    let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
    let table = MemTable::try_new(schema, vec![batches]).map_err(|e| e.to_string())?;
    ctx.register_table(name, Arc::new(table))
        .map_err(|e| e.to_string())?;
    Ok(rows)
}

/// The Arrow schema of `relation`, from its declared types, and each column's type
/// without its modifiers (`numeric`, not `numeric(12,2)`), without reading rows.
pub fn schema(
    client: &mut Client,
    relation: &str,
) -> Result<(Arc<Schema>, BTreeMap<String, String>), String> {
    let mut tx = client.transaction().map_err(|e| describe(&e))?;
    let declared = declared_columns(&mut tx, relation)?;
    let types = declared
        .iter()
        .map(|c| (c.name.clone(), c.base_type.clone()))
        .collect();
    Ok((arrow_schema(&declared), types))
}

/// A column as the catalog declares it.
struct Declared {
    name: String,
    /// With modifiers: `numeric(12,2)`.
    declared: String,
    /// Without: `numeric`.
    base_type: String,
}

fn arrow_schema(declared: &[Declared]) -> Arc<Schema> {
    // An unknown type (an enum, an array, JSON) compares as its text.
    let fields: Vec<Field> = declared
        .iter()
        .map(|column| {
            let ty = from_pg_declaration(&column.declared).unwrap_or(ColumnType::String);
            Field::new(&column.name, ty.arrow_type(), true)
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// `schema.table` (or `table`) quoted.
pub fn qualified(table: &str) -> String {
    match table.split_once('.') {
        Some((schema, table)) => format!("{}.{}", quote(schema), quote(table)),
        None => quote(table),
    }
}

/// The declared type of each column of `relation`: read from a temporary view over it, so
/// a query's columns keep their modifiers too.
fn declared_columns(
    tx: &mut postgres::Transaction<'_>,
    relation: &str,
) -> Result<Vec<Declared>, String> {
    tx.batch_execute(&format!(
        "CREATE TEMP VIEW weir_reconcile_columns AS SELECT * FROM {relation}"
    ))
    .map_err(|e| describe(&e))?;
    let rows = tx
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod),
                    a.atttypid::regtype::text
             FROM pg_attribute a
             WHERE a.attrelid = 'weir_reconcile_columns'::regclass AND a.attnum > 0
             ORDER BY a.attnum",
            &[],
        )
        .map_err(|e| describe(&e))?;
    Ok(rows
        .iter()
        .map(|r| Declared {
            name: r.get(0),
            declared: r.get(1),
            base_type: r.get(2),
        })
        .collect())
}

fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// The expression that reads `column` as text in a form Arrow's cast reads back exactly
/// as `ty`.
fn text_expression(column: &str, ty: &DataType) -> String {
    let c = quote(column);
    match ty {
        DataType::Timestamp(_, Some(_)) => {
            format!("to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
        }
        DataType::Timestamp(_, None) => {
            format!("to_char({c}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US')")
        }
        DataType::Date32 => format!("to_char({c}, 'YYYY-MM-DD')"),
        DataType::Boolean => format!("CASE WHEN {c} THEN 'true' ELSE 'false' END"),
        DataType::Binary => format!("encode({c}, 'hex')"),
        _ => format!("{c}::text"),
    }
}

fn read(client: &mut Client, relation: &str) -> Result<(Arc<Schema>, Vec<RecordBatch>), String> {
    let mut tx = client.transaction().map_err(|e| describe(&e))?;
    let declared = declared_columns(&mut tx, relation)?;
    let schema = arrow_schema(&declared);
    let expressions: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| text_expression(f.name(), f.data_type()))
        .collect();
    let portal = tx
        .bind(
            &format!("SELECT {} FROM {relation}", expressions.join(", ")),
            &[],
        )
        .map_err(|e| describe(&e))?;
    let mut batches = Vec::new();
    loop {
        let rows = tx
            .query_portal(&portal, BATCH_ROWS as i32)
            .map_err(|e| describe(&e))?;
        if rows.is_empty() && !batches.is_empty() {
            break;
        }
        let done = rows.len() < BATCH_ROWS;
        let arrays = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, field)| {
                let text: StringArray = rows.iter().map(|r| r.get::<_, Option<&str>>(i)).collect();
                typed(field, Arc::new(text))
            })
            .collect::<Result<Vec<_>, _>>()?;
        batches.push(RecordBatch::try_new(schema.clone(), arrays).map_err(|e| e.to_string())?);
        if done {
            break;
        }
    }
    Ok((schema, batches))
}

/// A text column as `field`'s type.
fn typed(field: &Field, text: ArrayRef) -> Result<ArrayRef, String> {
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    let fail = |e: arrow::error::ArrowError| {
        format!(
            "column `{}` does not read as {}: {e}",
            field.name(),
            field.data_type()
        )
    };
    match field.data_type() {
        DataType::Binary => {
            let text = text.as_any().downcast_ref::<StringArray>().expect("text");
            let bytes: arrow::array::BinaryArray = text
                .iter()
                .map(|hex| hex.map(decode_hex).transpose())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("column `{}`: {e}", field.name()))?;
            Ok(Arc::new(bytes))
        }
        DataType::Timestamp(unit, Some(zone)) => {
            // UTC text parses without a zone; the zone is the column's display setting.
            let naive = cast_with_options(&text, &DataType::Timestamp(*unit, None), &options)
                .map_err(fail)?;
            cast_with_options(
                &naive,
                &DataType::Timestamp(*unit, Some(zone.clone())),
                &options,
            )
            .map_err(fail)
        }
        ty => cast_with_options(&text, ty, &options).map_err(fail),
    }
}

fn decode_hex(hex: &str) -> Result<Vec<u8>, String> {
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(|| format!("`{hex}` is not hex"))
        })
        .collect()
}
