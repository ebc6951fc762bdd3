//! max-merge: a merge resolver that is not last-write-wins. Counter columns keep the
//! largest value either side has seen, so a counter that only grows (a high-water mark,
//! a total of events, a sequence) never goes back, whichever write arrives last.
//!
//! ```yaml
//! conflict:
//!   strategy: wasm
//!   wasm: ../plugins/examples/max-merge/max_merge.wasm
//!   config: { columns: [views] }
//! ```
//!
//! For each incoming change and the target's current row for its key:
//! - no current row, or a delete: apply it;
//! - otherwise the incoming `after`, with each listed column set to the larger of its
//!   incoming and current values (a null loses to any value). When no column changes,
//!   the change applies as it is; when one does, the merged row is written.
//!
//! Applying the same change twice gives the same row: max is idempotent, so duplicated
//! delivery cannot inflate a counter.

use serde::Deserialize;
use weir_plugin::{Change, Resolution, Row, Value};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Columns merged by taking the maximum (integers or floats).
    pub columns: Vec<String>,
}

pub fn merge_max(
    change: &Change,
    current: Option<&Row>,
    config: &Config,
) -> Result<Resolution, String> {
    let (Some(current), Some(incoming)) = (current, change.after()) else {
        return Ok(Resolution::Apply);
    };
    let mut merged = incoming.clone();
    let mut changed = false;
    for column in &config.columns {
        let theirs = incoming.get(column)?;
        let ours = current.get(column)?;
        if larger(ours, theirs, column)? {
            merged.set(column, ours.clone())?;
            changed = true;
        }
    }
    Ok(if changed {
        Resolution::Merge(merged)
    } else {
        Resolution::Apply
    })
}

/// Whether `a` is larger than `b` (a null is smaller than any value).
fn larger(a: &Value, b: &Value, column: &str) -> Result<bool, String> {
    match (a, b) {
        (Value::Null, _) => Ok(false),
        (_, Value::Null) => Ok(true),
        (Value::Int(x), Value::Int(y)) => Ok(x > y),
        _ => match (a.as_float(), b.as_float()) {
            (Some(x), Some(y)) => Ok(x > y),
            _ => Err(format!(
                "`{column}` must be a number to merge by maximum, not {a:?}"
            )),
        },
    }
}

weir_plugin::row_resolver!(merge_max, Config);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use weir_plugin::Decision;
    use weir_plugin::arrow_array::cast::AsArray;
    use weir_plugin::arrow_array::types::Int64Type;
    use weir_plugin::arrow_schema::DataType;
    use weir_plugin::testing::{ChangeBatchBuilder, column, run_resolver};

    #[test]
    fn counters_keep_the_larger_value_and_other_columns_come_from_the_change() {
        let b = ChangeBatchBuilder::new(vec![
            column("id", DataType::Int64),
            column("page", DataType::Utf8),
            column("views", DataType::Int64),
        ])
        .change("u", None, Some(json!({"id": 1, "page": "/a2", "views": 3})))
        .change("u", None, Some(json!({"id": 2, "page": "/b", "views": 9})))
        .change("c", None, Some(json!({"id": 3, "page": "/c", "views": 1})))
        .change("d", Some(json!({"id": 4, "views": 1})), None);
        let current = b.current(&[
            Some(json!({"id": 1, "page": "/a", "views": 7})),
            Some(json!({"id": 2, "page": "/b", "views": 8})),
            None,
            Some(json!({"id": 4, "page": "/d", "views": 5})),
        ]);
        let resolved =
            run_resolver::<WeirRowResolver>(json!({"columns": ["views"]}), &b.build(), &current)
                .unwrap();
        use Decision::*;
        assert_eq!(resolved.decisions, [Merge, Apply, Apply, Apply]);
        let merged = resolved.merged.unwrap();
        assert_eq!(merged.num_rows(), 1);
        let views = merged.column_by_name("views").unwrap();
        assert_eq!(views.as_primitive::<Int64Type>().value(0), 7);
        let pages = merged.column_by_name("page").unwrap();
        assert_eq!(pages.as_string::<i32>().value(0), "/a2");
    }

    #[test]
    fn a_non_numeric_counter_is_refused() {
        let b = ChangeBatchBuilder::new(vec![
            column("id", DataType::Int64),
            column("views", DataType::Utf8),
        ])
        .change("u", None, Some(json!({"id": 1, "views": "x"})));
        let current = b.current(&[Some(json!({"id": 1, "views": "y"}))]);
        let resolved =
            run_resolver::<WeirRowResolver>(json!({"columns": ["views"]}), &b.build(), &current)
                .unwrap();
        assert_eq!(resolved.errors.len(), 1);
        assert!(resolved.errors[0].message.contains("must be a number"));
    }
}
