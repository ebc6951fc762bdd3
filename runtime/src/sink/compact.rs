//! Compaction: several changes to one key inside a batch become the last one.
//!
//! Upsert sinks apply one action per key per batch. Applying only the last change is
//! equivalent because row images are full rows. This also avoids PostgreSQL's "ON CONFLICT
//! DO UPDATE command cannot affect row a second time". A truncate is a barrier: what comes
//! before it in the batch is dropped, and the batch is applied as a truncate followed by
//! what comes after. An update that changes the primary key deletes the old key.

use std::collections::HashMap;

use arrow::array::{Array, ArrayRef};
use arrow::row::{RowConverter, Rows, SortField};

use crate::envelope::{ChangeBatch, Op};

/// One action per key, with truncates as barriers between segments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Segment {
    /// Truncate the table before applying this segment.
    pub truncate_first: bool,
    /// Rows whose `after` image is upserted, in batch order.
    pub upserts: Vec<usize>,
    /// Rows whose key is deleted, in batch order. For a delete the key is in `before`;
    /// for an update that moved its key, it is the old key in `before`.
    pub deletes: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Upsert(usize),
    Delete(usize),
}

fn action_row(a: Action) -> usize {
    match a {
        Action::Upsert(i) | Action::Delete(i) => i,
    }
}

/// Key columns of one row image, in primary-key order.
pub fn key_columns(
    batch: &ChangeBatch,
    image: &arrow::array::StructArray,
) -> Result<Vec<ArrayRef>, String> {
    batch
        .table
        .primary_key
        .iter()
        .map(|k| {
            image
                .column_by_name(k)
                .cloned()
                .ok_or_else(|| format!("primary key column `{k}` is not in the batch"))
        })
        .collect()
}

/// Encodes the primary key of both row images as comparable byte strings.
pub struct Keys {
    pub before: Rows,
    pub after: Rows,
}

impl Keys {
    /// Whether change `row` (of operation `op`) moves its row to another key: an update
    /// whose complete `before` key differs from its `after` key. A partial `before` (some
    /// connectors send only changed columns) has a null key and moves nothing.
    pub fn moved(&self, batch: &ChangeBatch, row: usize, op: Op) -> bool {
        op == Op::Update
            && batch.before().is_valid(row)
            && self.before.row(row) != self.after.row(row)
            && key_is_complete(batch, row)
    }
}

pub fn keys(batch: &ChangeBatch) -> Result<Keys, String> {
    let after = key_columns(batch, batch.after())?;
    let before = key_columns(batch, batch.before())?;
    let fields = after
        .iter()
        .map(|c| SortField::new(c.data_type().clone()))
        .collect();
    let converter = RowConverter::new(fields).map_err(|e| e.to_string())?;
    Ok(Keys {
        after: converter
            .convert_columns(&after)
            .map_err(|e| e.to_string())?,
        before: converter
            .convert_columns(&before)
            .map_err(|e| e.to_string())?,
    })
}

/// Compacts the rows of `batch` that `include` marks (all rows when `None`).
pub fn compact(batch: &ChangeBatch, include: Option<&[bool]>) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    if batch.num_rows() == 0 {
        return Ok(segments);
    }
    let keys = keys(batch)?;
    let mut latest: HashMap<&[u8], Action> = HashMap::with_capacity(batch.num_rows());
    let mut truncate_first = false;
    let close = |latest: &mut HashMap<&[u8], Action>,
                 truncate_first: bool,
                 segments: &mut Vec<Segment>| {
        let mut actions: Vec<Action> = latest.drain().map(|(_, a)| a).collect();
        actions.sort_by_key(|a| action_row(*a));
        let mut segment = Segment {
            truncate_first,
            ..Segment::default()
        };
        for action in actions {
            match action {
                Action::Upsert(i) => segment.upserts.push(i),
                Action::Delete(i) => segment.deletes.push(i),
            }
        }
        if segment.truncate_first || !segment.upserts.is_empty() || !segment.deletes.is_empty() {
            segments.push(segment);
        }
    };
    for (i, op) in batch.ops().enumerate() {
        if include.is_some_and(|mask| !mask[i]) {
            continue;
        }
        match op {
            Op::Truncate => {
                latest.clear();
                truncate_first = true;
            }
            Op::Delete => {
                latest.insert(keys.before.row(i).data(), Action::Delete(i));
            }
            Op::Create | Op::Read | Op::Update => {
                if keys.moved(batch, i, op) {
                    latest.insert(keys.before.row(i).data(), Action::Delete(i));
                }
                latest.insert(keys.after.row(i).data(), Action::Upsert(i));
            }
        }
    }
    close(&mut latest, truncate_first, &mut segments);
    Ok(segments)
}

/// The included rows before `row` (back to the last truncate) whose changes compaction
/// folded into `row`'s action: earlier changes of a key `row` writes or deletes, that have
/// no action of their own (`actions`: the rows that do). They reach the target only
/// through `row`'s action, so when the target refuses it they go to the dead-letter
/// output with it. `ops` and `keys` are the batch's.
pub fn folded_into(
    batch: &ChangeBatch,
    ops: &[Op],
    keys: &Keys,
    include: Option<&[bool]>,
    actions: &std::collections::HashSet<usize>,
    row: usize,
) -> Vec<usize> {
    // The keys a change writes or deletes: none for a truncate, two for a moved key.
    let keys_of = |i: usize| -> [Option<&[u8]>; 2] {
        match ops[i] {
            Op::Truncate => [None, None],
            Op::Delete => [Some(keys.before.row(i).data()), None],
            op if keys.moved(batch, i, op) => [
                Some(keys.before.row(i).data()),
                Some(keys.after.row(i).data()),
            ],
            _ => [Some(keys.after.row(i).data()), None],
        }
    };
    let mine = keys_of(row);
    let mut folded = Vec::new();
    for i in (0..row).rev() {
        if include.is_some_and(|mask| !mask[i]) {
            continue;
        }
        if ops[i] == Op::Truncate {
            break;
        }
        if !actions.contains(&i)
            && keys_of(i)
                .iter()
                .flatten()
                .any(|k| mine.contains(&Some(*k)))
        {
            folded.push(i);
        }
    }
    folded.reverse();
    folded
}

fn key_is_complete(batch: &ChangeBatch, row: usize) -> bool {
    let before = batch.before();
    batch
        .table
        .primary_key
        .iter()
        .all(|k| before.column_by_name(k).is_some_and(|c| c.is_valid(row)))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::decode::table::TableSpec;
    use crate::decode::{Decoder, Format, RawRecord};
    use crate::position::{Checkpoint, Position};

    /// Decodes `events` (Debezium JSON) into a batch of table `t` keyed by `id`.
    pub(in crate::sink) fn batch(events: &[&str]) -> ChangeBatch {
        let mut decoder = Decoder::new(TableSpec::new("t", &["id"]), Format::DebeziumJson);
        for (i, e) in events.iter().enumerate() {
            let position = Position::File {
                stream: "file:x".into(),
                line: i as u64 + 1,
                offset: 0,
                next: 0,
            };
            decoder
                .decode(
                    RawRecord {
                        headers: Default::default(),
                        key: None,
                        value: Some(e.as_bytes()),
                    },
                    &position,
                )
                .unwrap();
        }
        decoder.finish(Checkpoint::default())
    }

    #[test]
    fn the_last_change_per_key_wins() {
        let b = batch(&[
            r#"{"op":"c","after":{"id":1,"v":"a"}}"#,
            r#"{"op":"c","after":{"id":2,"v":"b"}}"#,
            r#"{"op":"u","before":{"id":1,"v":"a"},"after":{"id":1,"v":"a2"}}"#,
            r#"{"op":"d","before":{"id":2,"v":"b"}}"#,
            r#"{"op":"r","after":{"id":3,"v":"c"}}"#,
        ]);
        let segments = compact(&b, None).unwrap();
        assert_eq!(
            segments,
            [Segment {
                truncate_first: false,
                upserts: vec![2, 4],
                deletes: vec![3]
            }]
        );
    }

    #[test]
    fn excluded_rows_are_left_out() {
        let b = batch(&[
            r#"{"op":"c","after":{"id":1,"v":"old"}}"#,
            r#"{"op":"u","before":{"id":1,"v":"old"},"after":{"id":1,"v":"new"}}"#,
            r#"{"op":"c","after":{"id":2}}"#,
        ]);
        let segments = compact(&b, Some(&[false, false, true])).unwrap();
        assert_eq!(segments[0].upserts, [2]);
    }

    #[test]
    fn a_truncate_drops_what_came_before_it() {
        let b = batch(&[
            r#"{"op":"c","after":{"id":1}}"#,
            r#"{"op":"t","source":{"table":"t"}}"#,
            r#"{"op":"c","after":{"id":2}}"#,
        ]);
        assert_eq!(
            compact(&b, None).unwrap(),
            [Segment {
                truncate_first: true,
                upserts: vec![2],
                deletes: vec![]
            }]
        );
    }

    #[test]
    fn an_update_that_moves_the_key_deletes_the_old_one() {
        let b = batch(&[
            r#"{"op":"u","before":{"id":1,"v":"x"},"after":{"id":9,"v":"x"}}"#,
            r#"{"op":"u","before":{"v":"partial"},"after":{"id":5,"v":"y"}}"#,
        ]);
        assert_eq!(
            compact(&b, None).unwrap(),
            [Segment {
                truncate_first: false,
                upserts: vec![0, 1],
                deletes: vec![0]
            }]
        );
    }
}
