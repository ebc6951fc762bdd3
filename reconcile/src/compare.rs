//! Full comparison: every row of `source` against `target`, by key, in one DataFusion
//! query (a full outer join that keeps only the rows that differ).
//!
//! Columns pair up by name (or `reconcile.columns`). Where the two sides hold a column in
//! different Arrow types, the target's is cast to the source's, so `12.50` in a decimal
//! column and `12.5` read from SQLite compare equal while `12.51` does not. Values compare
//! with `IS DISTINCT FROM`: exact for decimals and timestamps, NULL equal only to NULL
//! (so NULL and '' differ). Floats may take an absolute tolerance.

use arrow::array::{Array, BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, Schema};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use indexmap::IndexMap;

use crate::ReconcileError;
use crate::report::{Cell, Difference, Mismatch, Mismatches, Rows};

/// How the two tables' columns pair up.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `(source column, target column, target expression)` for the key, then for the
    /// compared columns.
    pub key: Vec<Pair>,
    pub compared: Vec<Pair>,
    pub missing_in_target: Vec<String>,
    pub only_in_target: Vec<String>,
    pub float_tolerance: Option<f64>,
    /// The consistent cut, if any: `(source column, target expression, cutoff literal)`.
    /// Keys whose row on either side changed after the cutoff are left out.
    pub cut: Option<Cut>,
}

#[derive(Debug, Clone)]
pub struct Cut {
    pub source: String,
    pub target: String,
    target_expression: String,
    literal: String,
    /// The cutoff as text (the column's form), for the report and for PostgreSQL.
    pub cutoff: String,
}

#[derive(Debug, Clone)]
pub struct Pair {
    pub source: String,
    pub target: String,
    /// The target column as the source's type.
    target_expression: String,
    float: bool,
}

/// `"name"`, quoted for DataFusion's SQL.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Plan {
    /// Pairs the columns of `source` and `target`.
    pub fn new(
        source: &Schema,
        target: &Schema,
        key: &[String],
        ignore: &[String],
        renamed: &IndexMap<String, String>,
        float_tolerance: Option<f64>,
    ) -> Result<Plan, ReconcileError> {
        let pair = |column: &str| -> Option<Pair> {
            let field = source.field_with_name(column).ok()?;
            let name = mapped_name(renamed, column);
            let other = target.field_with_name(name).ok()?;
            let t = format!("t.{}", ident(name));
            let target_expression = if other.data_type() == field.data_type() {
                t
            } else {
                format!("arrow_cast({t}, '{}')", field.data_type())
            };
            Some(Pair {
                source: column.to_string(),
                target: name.to_string(),
                target_expression,
                float: matches!(
                    field.data_type(),
                    DataType::Float16 | DataType::Float32 | DataType::Float64
                ),
            })
        };
        let mut key_pairs = Vec::new();
        for column in key {
            if source.field_with_name(column).is_err() {
                return Err(ReconcileError::new(format!(
                    "the source has no key column `{column}` (it has {})",
                    names(source)
                )));
            }
            key_pairs.push(pair(column).ok_or_else(|| {
                ReconcileError::new(format!(
                    "the target has no key column `{}` (it has {}); map it with \
                     `reconcile.columns`",
                    mapped_name(renamed, column),
                    names(target)
                ))
            })?);
        }
        let mut compared = Vec::new();
        let mut missing_in_target = Vec::new();
        for field in source.fields() {
            let column = field.name();
            if key.contains(column) || ignore.contains(column) {
                continue;
            }
            match pair(column) {
                Some(p) => compared.push(p),
                None => missing_in_target.push(column.clone()),
            }
        }
        let mapped: Vec<&str> = source
            .fields()
            .iter()
            .map(|f| mapped_name(renamed, f.name()))
            .collect();
        let only_in_target = target
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|name| !mapped.contains(&name.as_str()) && !ignore.contains(name))
            .collect();
        Ok(Plan {
            key: key_pairs,
            compared,
            missing_in_target,
            only_in_target,
            float_tolerance,
            cut: None,
        })
    }

    /// Leaves out keys whose row changed after `cutoff`, by compared column `column`.
    pub fn with_cut(
        mut self,
        source: &Schema,
        column: &str,
        cutoff: chrono::DateTime<chrono::Utc>,
    ) -> Result<Plan, ReconcileError> {
        let pair = self
            .compared
            .iter()
            .find(|p| p.source == column)
            .ok_or_else(|| {
                ReconcileError::new(format!(
                    "the cut's column `{column}` is not a compared column of both sides"
                ))
            })?;
        let ty = source
            .field_with_name(column)
            .map_err(|e| ReconcileError::new(e.to_string()))?
            .data_type()
            .clone();
        let cutoff = match &ty {
            DataType::Timestamp(_, Some(_)) => cutoff.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
            DataType::Timestamp(_, None) => cutoff.format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
            DataType::Date32 | DataType::Date64 => cutoff.format("%Y-%m-%d").to_string(),
            other => {
                return Err(ReconcileError::new(format!(
                    "the cut's column `{column}` is {other}; it must be a timestamp or a date"
                )));
            }
        };
        self.cut = Some(Cut {
            source: pair.source.clone(),
            target: pair.target.clone(),
            target_expression: pair.target_expression.clone(),
            literal: format!("arrow_cast('{cutoff}', '{ty}')"),
            cutoff,
        });
        Ok(self)
    }

    /// Whether a compared column differs, as SQL.
    fn differs(&self, pair: &Pair) -> String {
        let s = format!("s.{}", ident(&pair.source));
        let t = &pair.target_expression;
        match self.float_tolerance {
            Some(tolerance) if pair.float => format!(
                "(CASE WHEN {s} IS NULL OR {t} IS NULL THEN {s} IS DISTINCT FROM {t} \
                 ELSE abs({s} - {t}) > {tolerance:e} END)"
            ),
            _ => format!("({s} IS DISTINCT FROM {t})"),
        }
    }

    /// The query listing every differing row: source values `s0…`, target values `t0…`
    /// (key first, then compared columns), and a flag `d0…` per compared column.
    pub fn diff_sql(&self) -> String {
        let pairs: Vec<&Pair> = self.key.iter().chain(&self.compared).collect();
        let mut select = Vec::new();
        for (i, pair) in pairs.iter().enumerate() {
            select.push(format!("s.{} AS s{i}", ident(&pair.source)));
        }
        for (i, pair) in pairs.iter().enumerate() {
            select.push(format!("{} AS t{i}", pair.target_expression));
        }
        let flags: Vec<String> = self.compared.iter().map(|p| self.differs(p)).collect();
        for (i, flag) in flags.iter().enumerate() {
            select.push(format!("{flag} AS d{i}"));
        }
        let on: Vec<String> = self
            .key
            .iter()
            .map(|p| format!("s.{} = {}", ident(&p.source), p.target_expression))
            .collect();
        let first = &self.key[0];
        let mut filter = vec![
            format!("s.{} IS NULL", ident(&first.source)),
            format!("t.{} IS NULL", ident(&first.target)),
        ];
        filter.extend(flags);
        let cut = match &self.cut {
            Some(cut) => format!(
                " AND NOT (coalesce(s.{} > {literal}, false) OR coalesce({} > {literal}, false))",
                ident(&cut.source),
                cut.target_expression,
                literal = cut.literal
            ),
            None => String::new(),
        };
        format!(
            "SELECT {} FROM source s FULL OUTER JOIN target t ON {} WHERE ({}){cut}",
            select.join(", "),
            on.join(" AND "),
            filter.join(" OR ")
        )
    }
}

/// The target's name for source column `column`.
fn mapped_name<'a>(renamed: &'a IndexMap<String, String>, column: &'a str) -> &'a str {
    renamed.get(column).map_or(column, String::as_str)
}

fn names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("`{}`", f.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The text of row `row` of `array`; `None` for NULL.
pub fn cell(array: &dyn Array, row: usize) -> Result<Cell, ReconcileError> {
    if array.is_null(row) {
        return Ok(None);
    }
    let formatter = ArrayFormatter::try_new(array, &FormatOptions::default())
        .map_err(|e| ReconcileError::new(e.to_string()))?;
    Ok(Some(formatter.value(row).to_string()))
}

/// What the full comparison found.
#[derive(Debug, Default)]
pub struct Found {
    pub missing: Rows,
    pub extra: Rows,
    pub mismatched: Mismatches,
}

/// Runs the full comparison, keeping the first `limit` rows of each kind; hands every
/// batch of differing rows to `repair` too, when a repair script is being written.
pub async fn full(
    ctx: &SessionContext,
    plan: &Plan,
    limit: usize,
    mut repair: Option<&mut crate::repair::Writer<'_>>,
) -> Result<Found, ReconcileError> {
    let sql = plan.diff_sql();
    tracing::debug!(%sql, "full comparison");
    let df = ctx
        .sql(&sql)
        .await
        .map_err(|e| ReconcileError::new(format!("cannot plan the comparison: {e}")))?;
    let mut stream = df
        .execute_stream()
        .await
        .map_err(|e| ReconcileError::new(format!("the comparison failed: {e}")))?;
    let keys = plan.key.len();
    let columns: Vec<String> = plan
        .key
        .iter()
        .chain(&plan.compared)
        .map(|p| p.source.clone())
        .collect();
    let mut found = Found {
        missing: Rows {
            columns: columns.clone(),
            ..Rows::default()
        },
        extra: Rows {
            columns: plan
                .key
                .iter()
                .chain(&plan.compared)
                .map(|p| p.target.clone())
                .collect(),
            ..Rows::default()
        },
        mismatched: Mismatches {
            by_column: plan
                .compared
                .iter()
                .map(|p| (p.source.clone(), 0))
                .collect(),
            ..Mismatches::default()
        },
    };
    while let Some(batch) = stream.next().await {
        let batch =
            batch.map_err(|e| ReconcileError::new(format!("the comparison failed: {e}")))?;
        classify(&batch, columns.len(), keys, plan, limit, &mut found)?;
        if let Some(repair) = repair.as_deref_mut() {
            repair.add(&batch);
        }
    }
    found.mismatched.by_column.retain(|(_, n)| *n > 0);
    Ok(found)
}

fn classify(
    batch: &RecordBatch,
    width: usize,
    keys: usize,
    plan: &Plan,
    limit: usize,
    found: &mut Found,
) -> Result<(), ReconcileError> {
    let s = |i: usize| batch.column(i).as_ref();
    let t = |i: usize| batch.column(width + i).as_ref();
    let flags: Vec<&BooleanArray> = (0..plan.compared.len())
        .map(|i| {
            batch
                .column(2 * width + i)
                .as_any()
                .downcast_ref::<BooleanArray>()
                .expect("flags are boolean")
        })
        .collect();
    let row_of = |offset: usize, row: usize| {
        (0..width)
            .map(|i| cell(batch.column(offset + i).as_ref(), row))
            .collect::<Result<Vec<_>, _>>()
    };
    for row in 0..batch.num_rows() {
        if t(0).is_null(row) {
            found.missing.count += 1;
            if found.missing.rows.len() < limit {
                found.missing.rows.push(row_of(0, row)?);
            }
        } else if s(0).is_null(row) {
            found.extra.count += 1;
            if found.extra.rows.len() < limit {
                found.extra.rows.push(row_of(width, row)?);
            }
        } else {
            found.mismatched.count += 1;
            let differing: Vec<usize> = (0..plan.compared.len())
                .filter(|&i| flags[i].is_valid(row) && flags[i].value(row))
                .collect();
            for &i in &differing {
                found.mismatched.by_column[i].1 += 1;
            }
            if found.mismatched.rows.len() < limit {
                let key = (0..keys)
                    .map(|i| cell(s(i), row))
                    .collect::<Result<Vec<_>, _>>()?;
                let columns = differing
                    .iter()
                    .map(|&i| {
                        Ok(Difference {
                            column: plan.compared[i].source.clone(),
                            source: cell(s(keys + i), row)?,
                            target: cell(t(keys + i), row)?,
                        })
                    })
                    .collect::<Result<Vec<_>, ReconcileError>>()?;
                found.mismatched.rows.push(Mismatch { key, columns });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;

    fn schema(fields: &[(&str, DataType)]) -> Schema {
        Schema::new(
            fields
                .iter()
                .map(|(name, ty)| Field::new(*name, ty.clone(), true))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn columns_pair_by_name_or_mapping_and_the_target_takes_the_source_s_type() {
        let source = schema(&[
            ("id", DataType::Int64),
            ("price", DataType::Decimal128(12, 2)),
            ("customer", DataType::Utf8),
            ("note", DataType::Utf8),
            ("loaded_at", DataType::Int64),
            ("lost", DataType::Utf8),
        ]);
        let target = schema(&[
            ("id", DataType::Int64),
            ("price", DataType::Float64),
            ("customer_name", DataType::Utf8),
            ("note", DataType::Utf8),
            ("loaded_at", DataType::Int64),
            ("added", DataType::Utf8),
        ]);
        let renamed = IndexMap::from([("customer".to_string(), "customer_name".to_string())]);
        let plan = Plan::new(
            &source,
            &target,
            &["id".into()],
            &["loaded_at".into()],
            &renamed,
            None,
        )
        .unwrap();
        let compared: Vec<(&str, &str)> = plan
            .compared
            .iter()
            .map(|p| (p.source.as_str(), p.target.as_str()))
            .collect();
        assert_eq!(
            compared,
            vec![
                ("price", "price"),
                ("customer", "customer_name"),
                ("note", "note")
            ]
        );
        assert_eq!(plan.missing_in_target, vec!["lost"]);
        assert_eq!(plan.only_in_target, vec!["added"]);
        let sql = plan.diff_sql();
        assert!(
            sql.contains(r#"arrow_cast(t."price", 'Decimal128(12, 2)')"#),
            "{sql}"
        );
        assert!(
            sql.contains(r#"(s."note" IS DISTINCT FROM t."note")"#),
            "{sql}"
        );
        // A key the target lacks is an error that says how to map it.
        let error = Plan::new(
            &source,
            &target,
            &["customer".into()],
            &[],
            &IndexMap::new(),
            None,
        )
        .unwrap_err();
        assert!(error.to_string().contains("reconcile.columns"), "{error}");
    }
}
