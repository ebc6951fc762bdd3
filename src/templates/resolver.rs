//! A weir conflict resolver, row by row: the function sees each incoming change with the
//! target's current row for its key (`None` where there is none) and decides to apply
//! it, skip it, or write a merged row. For whole Arrow batches, implement
//! `weir_plugin::Resolve` and use `export_resolver!` instead.

use serde::Deserialize;
use weir_plugin::{Change, Resolution, Row};

/// The plugin's `config:` from the pipeline YAML.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The column ordering writes: the higher value wins, a tie keeps the target row.
    pub version_column: String,
}

pub fn resolve(
    change: &Change,
    current: Option<&Row>,
    config: &Config,
) -> Result<Resolution, String> {
    let Some(current) = current else {
        return Ok(Resolution::Apply);
    };
    let incoming = change.row().ok_or("a change without a row")?;
    let theirs = incoming.get(&config.version_column)?.as_int();
    let ours = current.get(&config.version_column)?.as_int();
    // A delete carries the version it removed, so it wins a tie.
    Ok(if theirs > ours || (change.op() == "d" && theirs == ours) {
        Resolution::Apply
    } else {
        Resolution::Skip
    })
}

weir_plugin::row_resolver!(resolve, Config);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use weir_plugin::Decision;
    use weir_plugin::arrow_schema::DataType;
    use weir_plugin::testing::{ChangeBatchBuilder, column, run_resolver};

    #[test]
    fn the_higher_version_wins() {
        let changes = ChangeBatchBuilder::new(vec![
            column("id", DataType::Int64),
            column("version", DataType::Int64),
        ])
        .change("u", None, Some(json!({"id": 1, "version": 2})))
        .change("u", None, Some(json!({"id": 2, "version": 2})));
        let current = changes.current(&[
            Some(json!({"id": 1, "version": 1})),
            Some(json!({"id": 2, "version": 3})),
        ]);
        let config = json!({"version_column": "version"});
        let resolved = run_resolver::<WeirRowResolver>(config, &changes.build(), &current).unwrap();
        assert_eq!(resolved.decisions, [Decision::Apply, Decision::Skip]);
    }
}
