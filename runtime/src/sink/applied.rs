//! Change identities for once-only apply under resolver plugins (docs/sync.md).
//!
//! A resolver may not be idempotent — a counter that adds — so a change delivered twice
//! must be recognised even when it arrives under a new position of the stream (a producer
//! retry, a replayed topic), which the checkpoint cannot see. A change's identity is
//! where its source wrote it: the source's coordinates (`source_connector`,
//! `source_name`, `source_db`), its table (`source_schema`, `source_table`), its key and
//! its position in the source's log (`source_position`). The sink keeps the identities
//! of the changes it decided, in the same transaction as the writes, and skips a change
//! whose identity it holds.

use std::borrow::Cow;

use arrow::array::{Array, AsArray};

use super::compact::key_columns;
use crate::encode;
use crate::envelope::{
    ChangeBatch, Op, SOURCE_CONNECTOR, SOURCE_DB, SOURCE_NAME, SOURCE_POSITION, SOURCE_SCHEMA,
    SOURCE_TABLE,
};

/// Each row's identity, as JSON text (unambiguous, and readable in the table), or `None`
/// when the row has no source position — such a change relies on the checkpoint alone —
/// or is a truncate.
pub fn identities(batch: &ChangeBatch) -> Result<Vec<Option<String>>, String> {
    let text_column = |name: &str| {
        batch
            .data
            .column_by_name(name)
            .map(|c| c.as_string::<i32>())
    };
    let position = text_column(SOURCE_POSITION);
    let coordinates: Vec<_> = [
        SOURCE_CONNECTOR,
        SOURCE_NAME,
        SOURCE_DB,
        SOURCE_SCHEMA,
        SOURCE_TABLE,
    ]
    .iter()
    .map(|name| text_column(name))
    .collect();
    let keys_before = key_columns(batch, batch.before())?;
    let keys_after = key_columns(batch, batch.after())?;
    let identities = batch
        .ops()
        .enumerate()
        .map(|(row, op)| {
            let position = position.filter(|p| p.is_valid(row))?.value(row);
            let keys = match op {
                Op::Truncate => return None,
                Op::Delete => &keys_before,
                _ => &keys_after,
            };
            let key: Vec<Option<Cow<'_, str>>> =
                keys.iter().map(|k| encode::text(k.as_ref(), row)).collect();
            let source: Vec<Option<&str>> = coordinates
                .iter()
                .map(|c| c.filter(|c| c.is_valid(row)).map(|c| c.value(row)))
                .collect();
            Some(serde_json::json!([source, key, position]).to_string())
        })
        .collect();
    Ok(identities)
}

/// Leaves out of `include` every row whose identity `known` reports as applied before,
/// or that repeats the identity of a row earlier in the batch, and returns how many rows
/// it left out.
pub fn skip_known<E>(
    identities: &[Option<String>],
    include: &mut [bool],
    mut known: impl FnMut(&str) -> Result<bool, E>,
) -> Result<u64, E> {
    let mut seen = std::collections::HashSet::new();
    let mut skipped = 0;
    for (row, identity) in identities.iter().enumerate() {
        let Some(identity) = identity.as_deref().filter(|_| include[row]) else {
            continue;
        };
        if !seen.insert(identity) || known(identity)? {
            include[row] = false;
            skipped += 1;
        }
    }
    Ok(skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::compact::tests::batch;

    #[test]
    fn a_change_is_identified_by_its_source_table_key_and_position() {
        let source = |lsn: u32| {
            format!(
                r#""source":{{"connector":"postgresql","name":"srv","db":"app","schema":"s","table":"t","lsn":{lsn}}}"#
            )
        };
        let lines = [
            format!(r#"{{"op":"u","after":{{"id":1,"n":5}},{}}}"#, source(10)),
            format!(r#"{{"op":"u","after":{{"id":1,"n":5}},{}}}"#, source(10)),
            format!(r#"{{"op":"u","after":{{"id":2,"n":5}},{}}}"#, source(10)),
            format!(r#"{{"op":"d","before":{{"id":1,"n":5}},{}}}"#, source(11)),
            r#"{"op":"u","after":{"id":1,"n":5}}"#.to_string(),
        ];
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let batch = batch(&lines);
        let ids = identities(&batch).unwrap();
        assert_eq!(
            ids[0].as_deref(),
            Some(r#"[["postgresql","srv","app","s","t"],["1"],"lsn=10"]"#)
        );
        assert_eq!(ids[0], ids[1], "the same change delivered twice");
        assert_ne!(ids[0], ids[2], "another key at the same position");
        assert!(ids[3].as_deref().unwrap().contains(r#"["1"],"lsn=11""#));
        assert_eq!(ids[4], None, "no source position: no identity");
    }

    #[test]
    fn known_identities_and_copies_in_the_batch_are_left_out() {
        let ids: Vec<Option<String>> = ["a", "b", "a", "c", "d"]
            .iter()
            .map(|i| Some(i.to_string()))
            .chain([None])
            .collect();
        // Row 4 is excluded already; row 5 has no identity.
        let mut include = vec![true, true, true, true, false, true];
        let skipped =
            skip_known(&ids, &mut include, |id| Ok::<_, ()>(id == "c" || id == "d")).unwrap();
        assert_eq!(skipped, 2);
        assert_eq!(include, vec![true, true, false, false, false, true]);
    }
}
