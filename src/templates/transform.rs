//! A weir transform, row by row: the function sees each change (its op and its `before`
//! and `after` rows), may set values, and keeps or drops it. For whole Arrow batches,
//! implement `weir_plugin::Transform` and use `export_transform!` instead.

use serde::Deserialize;
use weir_plugin::{Change, Keep};

/// The plugin's `config:` from the pipeline YAML.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Changes whose row has this column null are dropped.
    pub required: Option<String>,
}

pub fn transform(change: &mut Change, config: &Config) -> Result<Keep, String> {
    let Some(column) = &config.required else {
        return Ok(Keep::Yes);
    };
    let row = change.row().ok_or("a change without a row")?;
    Ok(Keep::when(!row.get(column)?.is_null()))
}

weir_plugin::row_transform!(transform, Config);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use weir_plugin::arrow_schema::DataType;
    use weir_plugin::testing::{ChangeBatchBuilder, column, run_transform};

    #[test]
    fn changes_without_the_required_column_are_dropped() {
        let batch = ChangeBatchBuilder::new(vec![
            column("id", DataType::Int64),
            column("email", DataType::Utf8),
        ])
        .change("c", None, Some(json!({"id": 1, "email": "a@example.org"})))
        .change("c", None, Some(json!({"id": 2, "email": null})))
        .build();
        let output =
            run_transform::<WeirRowTransform>(json!({"required": "email"}), &batch).unwrap();
        assert_eq!(output.source_rows, Some(vec![0]));
    }
}
