//! counter-add: a resolver that is not idempotent, for weir's once-only tests. Each
//! change carries increments in the listed columns; a change to a key with a row writes
//! the row with each listed column set to the stored value plus the incoming one. A
//! change applied twice would count twice, so only weir's applied-change table
//! (docs/sync.md) keeps the totals right under duplicated delivery.
//!
//! ```yaml
//! conflict:
//!   strategy: wasm
//!   wasm: plugins/testing/counter-add/counter_add.wasm
//!   config: { columns: [hits] }
//! ```
//!
//! No current row, or a delete: apply. A null counts as zero.

use serde::Deserialize;
use weir_plugin::{Change, Resolution, Row, Value};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Integer columns whose incoming values are added to the stored ones.
    pub columns: Vec<String>,
}

pub fn add_counts(
    change: &Change,
    current: Option<&Row>,
    config: &Config,
) -> Result<Resolution, String> {
    let (Some(current), Some(incoming)) = (current, change.after()) else {
        return Ok(Resolution::Apply);
    };
    let mut merged = incoming.clone();
    for column in &config.columns {
        let count = |value: &Value| match value {
            Value::Null => Ok(0),
            Value::Int(i) => Ok(*i),
            other => Err(format!(
                "`{column}` must be an integer to add, not {other:?}"
            )),
        };
        let total = count(current.get(column)?)?
            .checked_add(count(incoming.get(column)?)?)
            .ok_or_else(|| format!("`{column}` overflows"))?;
        merged.set(column, total)?;
    }
    Ok(Resolution::Merge(merged))
}

weir_plugin::row_resolver!(add_counts, Config);

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
    fn increments_add_to_the_stored_counts() {
        let b = ChangeBatchBuilder::new(vec![
            column("id", DataType::Int64),
            column("hits", DataType::Int64),
        ])
        .change("u", None, Some(json!({"id": 1, "hits": 3})))
        .change("c", None, Some(json!({"id": 2, "hits": 4})))
        .change("d", Some(json!({"id": 3, "hits": 1})), None);
        let current = b.current(&[Some(json!({"id": 1, "hits": 10})), None, None]);
        let resolved =
            run_resolver::<WeirRowResolver>(json!({"columns": ["hits"]}), &b.build(), &current)
                .unwrap();
        use Decision::*;
        assert_eq!(resolved.decisions, [Merge, Apply, Apply]);
        let merged = resolved.merged.unwrap();
        let hits = merged.column_by_name("hits").unwrap();
        assert_eq!(hits.as_primitive::<Int64Type>().value(0), 13);
    }
}
