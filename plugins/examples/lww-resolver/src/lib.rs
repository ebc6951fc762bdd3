//! lww-resolver: last write wins, on a version column the application maintains.
//!
//! ```yaml
//! conflict:
//!   strategy: wasm
//!   wasm: ../plugins/examples/lww-resolver/lww_resolver.wasm
//!   config: { version_column: version }
//! ```
//!
//! For each incoming change and the target's current row for its key:
//! - an incoming change without a version is refused (dead-lettered): there is nothing to
//!   order it by;
//! - no current row: apply (an insert inserts; a delete of a missing key does nothing);
//! - the incoming version (from `after`, or from `before` for a delete) is greater than
//!   the current row's: apply;
//! - a delete whose `before` version equals the current row's: apply (it deletes the
//!   version it saw, so it is newer than that version);
//! - otherwise skip, so the newer row stands. **Any other tie keeps the current row**: a
//!   change delivered twice is then applied once, and two sites with the same version
//!   never overwrite each other back and forth;
//! - a current row without a version loses to any versioned change.
//!
//! Versions are integers (or timestamps), floats, or text compared byte-wise.

use std::cmp::Ordering;

use serde::Deserialize;
use weir_plugin::{Change, Resolution, Row, Value};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The column holding the row's version.
    pub version_column: String,
}

pub fn last_write_wins(
    change: &Change,
    current: Option<&Row>,
    config: &Config,
) -> Result<Resolution, String> {
    let column = &config.version_column;
    let incoming = change.row().ok_or("a change without a row image")?;
    let theirs = incoming.get(column)?;
    if theirs.is_null() {
        return Err(format!(
            "the change has no `{column}`, so it cannot be compared with the target row"
        ));
    }
    let Some(current) = current else {
        return Ok(Resolution::Apply);
    };
    let ours = current.get(column)?;
    if ours.is_null() {
        return Ok(Resolution::Apply);
    }
    match compare(theirs, ours, column)? {
        Ordering::Greater => Ok(Resolution::Apply),
        // A delete carries the version it removed (its `before` image), so on a tie it
        // is the newer event.
        Ordering::Equal if change.op() == "d" => Ok(Resolution::Apply),
        Ordering::Equal | Ordering::Less => Ok(Resolution::Skip),
    }
}

fn compare(a: &Value, b: &Value, column: &str) -> Result<Ordering, String> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Ok(x.cmp(y)),
        (Value::Text(x), Value::Text(y)) | (Value::Other(x), Value::Other(y)) => Ok(x.cmp(y)),
        _ => match (a.as_float(), b.as_float()) {
            (Some(x), Some(y)) => x
                .partial_cmp(&y)
                .ok_or_else(|| format!("`{column}` is NaN")),
            _ => Err(format!(
                "`{column}` values {a:?} and {b:?} cannot be compared"
            )),
        },
    }
}

weir_plugin::row_resolver!(last_write_wins, Config);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use weir_plugin::Decision;
    use weir_plugin::arrow_schema::DataType;
    use weir_plugin::testing::{ChangeBatchBuilder, column, run_resolver};

    fn builder() -> ChangeBatchBuilder {
        ChangeBatchBuilder::new(vec![
            column("id", DataType::Int64),
            column("name", DataType::Utf8),
            column("version", DataType::Int64),
        ])
    }

    #[test]
    fn the_higher_version_wins_and_a_tie_keeps_the_target_unless_it_deletes() {
        let b = builder()
            .change(
                "c",
                None,
                Some(json!({"id": 1, "name": "new", "version": 5})),
            )
            .change(
                "u",
                None,
                Some(json!({"id": 2, "name": "old", "version": 3})),
            )
            .change(
                "u",
                None,
                Some(json!({"id": 3, "name": "same", "version": 4})),
            )
            .change("d", Some(json!({"id": 4, "version": 9})), None)
            .change("d", Some(json!({"id": 5, "version": 1})), None)
            .change(
                "c",
                None,
                Some(json!({"id": 6, "name": "fresh", "version": 1})),
            )
            .change("d", Some(json!({"id": 7, "version": 6})), None);
        let current = b.current(&[
            Some(json!({"id": 1, "name": "stored", "version": 4})),
            Some(json!({"id": 2, "name": "stored", "version": 4})),
            Some(json!({"id": 3, "name": "stored", "version": 4})),
            Some(json!({"id": 4, "name": "stored", "version": 8})),
            Some(json!({"id": 5, "name": "stored", "version": 2})),
            None,
            Some(json!({"id": 7, "name": "stored", "version": 6})),
        ]);
        let config = json!({"version_column": "version"});
        let resolved = run_resolver::<WeirRowResolver>(config, &b.build(), &current).unwrap();
        use Decision::*;
        assert_eq!(
            resolved.decisions,
            [Apply, Skip, Skip, Apply, Skip, Apply, Apply]
        );
        assert!(resolved.merged.is_none());
        assert!(resolved.errors.is_empty());
    }

    #[test]
    fn a_change_without_a_version_is_refused() {
        let b = builder().change("u", None, Some(json!({"id": 1, "name": "x"})));
        let current = b.current(&[Some(json!({"id": 1, "version": 1}))]);
        let config = json!({"version_column": "version"});
        let resolved = run_resolver::<WeirRowResolver>(config, &b.build(), &current).unwrap();
        assert_eq!(resolved.errors.len(), 1);
        assert!(resolved.errors[0].message.contains("no `version`"));
    }

    #[test]
    fn a_config_without_the_column_is_rejected() {
        let b = builder();
        let error =
            run_resolver::<WeirRowResolver>(json!({}), &b.build(), &b.current(&[])).unwrap_err();
        assert!(error.contains("version_column"), "{error}");
    }
}
