//! Repair: the SQL that brings the target to the source, in the target database's
//! dialect (PostgreSQL or SQLite), from the same differences the report lists — an
//! `INSERT` per missing row, a `DELETE` per extra row, and an `UPDATE` of the differing
//! columns per mismatched row, in one transaction.
//!
//! Identifiers are always quoted. Values are literals in the forms weir's sinks write:
//! numbers bare (PostgreSQL decimals too; SQLite decimals as exact text, as its sink
//! binds them), booleans as the dialect spells them, binary as hex, everything else
//! (text, timestamps, dates, JSON) as a string literal with quotes doubled — backslashes,
//! newlines and any Unicode stand as they are, and NULL is `NULL`. Ignored columns are
//! left alone: they differ by design.

use std::fmt::Write;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float32Type, Float64Type};
use weir_runtime::config::reconcile::SnapshotConfig;
use weir_runtime::encode;

use crate::ReconcileError;
use crate::compare::{Plan, ident};

/// The target database's SQL dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

/// The dialect and quoted table name of a target that can be repaired.
pub fn target_table(target: &SnapshotConfig) -> Result<(Dialect, String), ReconcileError> {
    match target {
        SnapshotConfig::Sqlite(config) => match &config.table {
            Some(table) => Ok((Dialect::Sqlite, ident(table))),
            None => Err(ReconcileError::new(
                "repair needs the target's table (`reconcile.target.table`)",
            )),
        },
        SnapshotConfig::Postgres(config) => match &config.table {
            Some(table) => Ok((Dialect::Postgres, crate::tables::postgres_table(table))),
            None => Err(ReconcileError::new(
                "the target is a postgres query; repair needs a table (`reconcile.target.table`)",
            )),
        },
        _ => Err(ReconcileError::new(
            "repair writes to a database: the target must be a `sqlite` or `postgres` table",
        )),
    }
}

/// What a repair script holds.
#[derive(Debug, Clone, Default)]
pub struct Script {
    pub sql: String,
    pub inserts: u64,
    pub deletes: u64,
    pub updates: u64,
}

impl Script {
    pub fn statements(&self) -> u64 {
        self.inserts + self.deletes + self.updates
    }
}

/// A value as a literal of `dialect`.
pub fn literal(array: &dyn Array, row: usize, dialect: Dialect) -> String {
    if array.is_null(row) {
        return "NULL".into();
    }
    let quoted = |text: &str| format!("'{}'", text.replace('\'', "''"));
    let float = |value: f64| match (value.is_nan(), value.is_infinite(), dialect) {
        (true, _, Dialect::Postgres) => "'NaN'".to_string(),
        (_, true, Dialect::Postgres) if value > 0.0 => "'Infinity'".into(),
        (_, true, Dialect::Postgres) => "'-Infinity'".into(),
        // SQLite reads an overflowing literal as infinity, and stores NaN as NULL.
        (true, _, Dialect::Sqlite) => "NULL".into(),
        (_, true, Dialect::Sqlite) if value > 0.0 => "9e999".into(),
        (_, true, Dialect::Sqlite) => "-9e999".into(),
        _ => format!("{value:?}"),
    };
    match array.data_type() {
        DataType::Boolean => {
            let value = array
                .as_any()
                .downcast_ref::<BooleanArray>()
                .expect("boolean")
                .value(row);
            match (dialect, value) {
                (Dialect::Postgres, true) => "TRUE".into(),
                (Dialect::Postgres, false) => "FALSE".into(),
                (Dialect::Sqlite, true) => "1".into(),
                (Dialect::Sqlite, false) => "0".into(),
            }
        }
        t if t.is_integer() => encode_display(array, row),
        DataType::Float32 => float(array.as_primitive::<Float32Type>().value(row) as f64),
        DataType::Float64 => float(array.as_primitive::<Float64Type>().value(row)),
        DataType::Decimal128(..) | DataType::Decimal256(..) => {
            let text = encode::text(array, row).unwrap_or_default();
            match dialect {
                Dialect::Postgres => text.into_owned(),
                Dialect::Sqlite => quoted(&text),
            }
        }
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            let binary = cast(&array.slice(row, 1), &DataType::Binary).expect("binary casts");
            let bytes = binary.as_binary::<i32>().value(0);
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            match dialect {
                Dialect::Postgres => format!("'\\x{hex}'"),
                Dialect::Sqlite => format!("X'{hex}'"),
            }
        }
        DataType::Utf8View => {
            let text = array.as_string_view().value(row);
            quoted(text)
        }
        _ => quoted(&encode::text(array, row).unwrap_or_default()),
    }
}

fn encode_display(array: &dyn Array, row: usize) -> String {
    let as_i64 = cast(&array.slice(row, 1), &DataType::Int64);
    match as_i64 {
        Ok(values) if values.is_valid(0) => values
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0)
            .to_string(),
        _ => cast(&array.slice(row, 1), &DataType::Utf8)
            .map(|t| t.as_string::<i32>().value(0).to_string())
            .unwrap_or_default(),
    }
}

/// Builds the script that repairs the differences `plan` finds, from the rows of the
/// comparison's own query ([`crate::compare::full`] hands each batch to [`Writer::add`]),
/// so the tables are joined once whether or not a repair is asked for.
pub struct Writer<'a> {
    plan: &'a Plan,
    dialect: Dialect,
    table: String,
    /// The target's column names, quoted: the key's, then the compared columns'.
    names: Vec<String>,
    script: Script,
}

impl<'a> Writer<'a> {
    pub fn new(plan: &'a Plan, dialect: Dialect, table: String) -> Writer<'a> {
        let names = plan
            .key
            .iter()
            .chain(&plan.compared)
            .map(|p| ident(&p.target))
            .collect();
        let mut script = Script::default();
        let _ = writeln!(
            script.sql,
            "-- weir reconcile: brings {table} to the source ({} dialect)",
            match dialect {
                Dialect::Postgres => "PostgreSQL",
                Dialect::Sqlite => "SQLite",
            }
        );
        script.sql.push_str("BEGIN;\n");
        Writer {
            plan,
            dialect,
            table,
            names,
            script,
        }
    }

    /// Adds the statements for a batch of the comparison's rows (`plan.diff_sql()`).
    pub fn add(&mut self, batch: &RecordBatch) {
        let (plan, dialect, table, names) = (self.plan, self.dialect, &self.table, &self.names);
        let keys = plan.key.len();
        let width = names.len();
        let script = &mut self.script;
        let out = &mut script.sql;
        let column = |i: usize| -> ArrayRef { batch.column(i).clone() };
        let flags: Vec<ArrayRef> = (0..plan.compared.len())
            .map(|i| column(2 * width + i))
            .collect();
        let condition = |side: usize, row: usize| {
            (0..keys)
                .map(|i| {
                    format!(
                        "{} = {}",
                        names[i],
                        literal(column(side + i).as_ref(), row, dialect)
                    )
                })
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        for row in 0..batch.num_rows() {
            if column(width).is_null(row) {
                // Missing in the target.
                let values: Vec<String> = (0..width)
                    .map(|i| literal(column(i).as_ref(), row, dialect))
                    .collect();
                let _ = writeln!(
                    out,
                    "INSERT INTO {table} ({}) VALUES ({});",
                    names.join(", "),
                    values.join(", ")
                );
                script.inserts += 1;
            } else if column(0).is_null(row) {
                let _ = writeln!(out, "DELETE FROM {table} WHERE {};", condition(width, row));
                script.deletes += 1;
            } else {
                let sets: Vec<String> = (0..plan.compared.len())
                    .filter(|&i| {
                        let flag = flags[i].as_boolean();
                        flag.is_valid(row) && flag.value(row)
                    })
                    .map(|i| {
                        format!(
                            "{} = {}",
                            names[keys + i],
                            literal(column(keys + i).as_ref(), row, dialect)
                        )
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "UPDATE {table} SET {} WHERE {};",
                    sets.join(", "),
                    condition(0, row)
                );
                script.updates += 1;
            }
        }
    }

    /// The script, closed.
    pub fn finish(mut self) -> Script {
        self.script.sql.push_str("COMMIT;\n");
        self.script
    }
}

/// Runs `script` against the target, in its one transaction.
pub fn apply(
    target: &SnapshotConfig,
    script: &Script,
    pipeline: &weir_runtime::config::LoadedPipeline,
) -> Result<(), ReconcileError> {
    match target {
        SnapshotConfig::Sqlite(config) => {
            let path = pipeline.resolve(&config.path);
            let conn = rusqlite::Connection::open(&path)
                .map_err(|e| ReconcileError::new(format!("target {}: {e}", path.display())))?;
            conn.busy_timeout(std::time::Duration::from_secs(10))
                .and_then(|_| conn.execute_batch(&script.sql))
                .map_err(|e| {
                    ReconcileError::new(format!("the repair failed (nothing applied): {e}"))
                })
        }
        SnapshotConfig::Postgres(config) => {
            let mut client = weir_runtime::postgres_client::connect(config.url.expose())
                .map_err(|e| ReconcileError::new(format!("target: cannot connect: {e}")))?;
            client.batch_execute(&script.sql).map_err(|e| {
                ReconcileError::new(format!("the repair failed (nothing applied): {e}"))
            })
        }
        _ => Err(ReconcileError::new(
            "repair needs a sqlite or postgres target",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        BinaryArray, BooleanArray, Decimal128Array, Float64Array, Int32Array, StringArray,
    };

    fn both(array: &dyn Array, row: usize) -> (String, String) {
        (
            literal(array, row, Dialect::Postgres),
            literal(array, row, Dialect::Sqlite),
        )
    }

    #[test]
    fn values_become_literals_of_each_dialect() {
        let text = StringArray::from(vec![Some("it's \\ a\nb ünï"), None, Some("")]);
        assert_eq!(
            both(&text, 0),
            ("'it''s \\ a\nb ünï'".into(), "'it''s \\ a\nb ünï'".into())
        );
        assert_eq!(both(&text, 1), ("NULL".into(), "NULL".into()));
        assert_eq!(both(&text, 2), ("''".into(), "''".into()));
        let flags = BooleanArray::from(vec![true, false]);
        assert_eq!(both(&flags, 0), ("TRUE".into(), "1".into()));
        assert_eq!(both(&flags, 1), ("FALSE".into(), "0".into()));
        let prices = Decimal128Array::from(vec![1250, -5])
            .with_precision_and_scale(12, 2)
            .unwrap();
        assert_eq!(both(&prices, 0), ("12.50".into(), "'12.50'".into()));
        assert_eq!(both(&prices, 1), ("-0.05".into(), "'-0.05'".into()));
        let ints = Int32Array::from(vec![-7]);
        assert_eq!(both(&ints, 0), ("-7".into(), "-7".into()));
        let floats = Float64Array::from(vec![0.1, f64::NAN, f64::INFINITY]);
        assert_eq!(both(&floats, 0), ("0.1".into(), "0.1".into()));
        assert_eq!(both(&floats, 1), ("'NaN'".into(), "NULL".into()));
        assert_eq!(both(&floats, 2), ("'Infinity'".into(), "9e999".into()));
        let bytes = BinaryArray::from(vec![&[0u8, 0xff, 0x27][..]]);
        assert_eq!(both(&bytes, 0), ("'\\x00ff27'".into(), "X'00ff27'".into()));
    }
}
