//! filter: keeps the changes whose row matches a predicate, written row by row.
//!
//! ```yaml
//! transforms:
//!   - name: only-paid
//!     wasm: plugins/examples/filter/filter.wasm
//!     config: { column: status, op: in, values: [paid, shipped] }
//! ```
//!
//! `op` is one of `eq`, `ne`, `lt`, `le`, `gt`, `ge` (with `value`), `in`, `not-in` (with
//! `values`), `null`, `not-null`. The row tested is `after`, or `before` for a delete.
//! A change with neither image (a truncate) is kept: dropping it would hide it from the
//! target. Numbers compare as numbers, text as text; a value of another type than the
//! column's is a row error (it goes to the dead-letter output), not a silent mismatch.

use std::cmp::Ordering;

use serde::Deserialize;
use serde_json::Value as Json;
use weir_plugin::{Change, Keep, Value};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    column: String,
    op: Op,
    #[serde(default)]
    value: Option<Json>,
    #[serde(default)]
    values: Vec<Json>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
    Null,
    NotNull,
}

pub fn keep_matching(change: &mut Change, config: &Config) -> Result<Keep, String> {
    let Some(row) = change.row() else {
        return Ok(Keep::Yes);
    };
    let value = row.get(&config.column)?;
    let expected = || {
        config
            .value
            .as_ref()
            .ok_or_else(|| format!("filter: `op: {:?}` needs a `value`", config.op))
    };
    let keep = match config.op {
        Op::Null => value.is_null(),
        Op::NotNull => !value.is_null(),
        Op::In | Op::NotIn => {
            let mut found = false;
            for candidate in &config.values {
                found |= compare(value, candidate)? == Some(Ordering::Equal);
            }
            found == (config.op == Op::In)
        }
        op => match compare(value, expected()?)? {
            // A null matches nothing but `ne`.
            None => op == Op::Ne,
            Some(ordering) => match op {
                Op::Eq => ordering.is_eq(),
                Op::Ne => ordering.is_ne(),
                Op::Lt => ordering.is_lt(),
                Op::Le => ordering.is_le(),
                Op::Gt => ordering.is_gt(),
                _ => ordering.is_ge(),
            },
        },
    };
    Ok(Keep::when(keep))
}

/// Compares a column value with a config value; `None` when the column is null.
fn compare(value: &Value, expected: &Json) -> Result<Option<Ordering>, String> {
    let mismatch = || format!("filter: cannot compare {value:?} with {expected}");
    Ok(match (value, expected) {
        (Value::Null, _) => None,
        (Value::Int(a), Json::Number(b)) => match b.as_i64() {
            Some(b) => Some(a.cmp(&b)),
            None => (*a as f64).partial_cmp(&b.as_f64().ok_or_else(mismatch)?),
        },
        (Value::Float(a), Json::Number(b)) => a.partial_cmp(&b.as_f64().ok_or_else(mismatch)?),
        (Value::Text(a) | Value::Other(a), Json::String(b)) => Some(a.as_str().cmp(b.as_str())),
        (Value::Bool(a), Json::Bool(b)) => Some(a.cmp(b)),
        _ => return Err(mismatch()),
    })
}

weir_plugin::row_transform!(keep_matching, Config);

#[cfg(test)]
mod tests {
    use serde_json::json;
    use weir_plugin::Output;
    use weir_plugin::arrow_array::RecordBatch;
    use weir_plugin::arrow_schema::DataType;
    use weir_plugin::testing::{ChangeBatchBuilder, column, run_transform};

    use super::*;

    fn orders() -> RecordBatch {
        ChangeBatchBuilder::new(vec![
            column("id", DataType::Int64),
            column("status", DataType::Utf8),
            column("total", DataType::Float64),
        ])
        .change(
            "c",
            None,
            Some(json!({"id": 1, "status": "paid", "total": 10.0})),
        )
        .change(
            "c",
            None,
            Some(json!({"id": 2, "status": "open", "total": 99.5})),
        )
        .change(
            "d",
            Some(json!({"id": 3, "status": "paid", "total": 5.0})),
            None,
        )
        .change("t", None, None)
        .change(
            "c",
            None,
            Some(json!({"id": 4, "status": null, "total": 1.0})),
        )
        .build()
    }

    fn kept(config: serde_json::Value) -> Output {
        run_transform::<WeirRowTransform>(config, &orders()).unwrap()
    }

    #[test]
    fn keeps_what_matches_deletes_by_their_before_image_and_truncates_always() {
        let out = kept(json!({"column": "status", "op": "eq", "value": "paid"}));
        assert_eq!(out.source_rows, Some(vec![0, 2, 3]));
        let out = kept(json!({"column": "status", "op": "in", "values": ["open", "paid"]}));
        assert_eq!(out.source_rows, Some(vec![0, 1, 2, 3]));
        let out = kept(json!({"column": "total", "op": "gt", "value": 9}));
        assert_eq!(out.source_rows, Some(vec![0, 1, 3]));
        let out = kept(json!({"column": "status", "op": "null"}));
        assert_eq!(out.source_rows, Some(vec![3, 4]));
        let out = kept(json!({"column": "status", "op": "ne", "value": "paid"}));
        assert_eq!(out.source_rows, Some(vec![1, 3, 4]), "null is not `paid`");
        assert_eq!(out.batch.num_rows(), 3);
    }

    #[test]
    fn a_type_mismatch_is_a_row_error_not_a_silent_drop() {
        let out = kept(json!({"column": "id", "op": "eq", "value": "one"}));
        assert_eq!(out.errors.len(), 4, "{:?}", out.errors);
        assert!(
            out.errors[0]
                .message
                .contains("cannot compare Int(1) with \"one\"")
        );
        let error =
            run_transform::<WeirRowTransform>(json!({"column": "id"}), &orders()).unwrap_err();
        assert!(error.contains("missing field `op`"), "{error}");
    }
}
