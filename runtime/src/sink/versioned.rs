//! The built-in conflict strategies (`last-write-wins`, `first-write-wins`,
//! `source-priority`) over a change batch.
//!
//! A sink applies a batch in three steps inside its transaction:
//! 1. [`Versioning::incoming`] stamps each change (version, delete or not, origin) and
//!    drops the ones whose origin is the target's own site;
//! 2. the sink reads, with row locks, what the target holds for those keys: the row's
//!    version and origin, or the key's tombstone;
//! 3. [`Versioning::decide`] goes through the changes in order and keeps those that win
//!    (`crate::conflict`'s rule). The winners form a chain per key, each beating the one
//!    before, so applying only them — compacted, as the sink always does — leaves every
//!    key with its winning write.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, StructArray};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Decimal128Type, Decimal256Type, Field, Int64Type};

use super::{Applied, Rejects, SinkError};
use crate::conflict::{ConflictConfig, Decision, Stamp, Strategy, Version};
use crate::encode;
use crate::envelope::{AFTER, ChangeBatch, ORIGIN, Op};

/// A built-in strategy with its columns and sites.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioning {
    pub strategy: Strategy,
    pub version_column: Option<String>,
    pub origin_column: Option<String>,
    /// The site the sink writes to: changes from it are echoes, and rows without an
    /// origin were written here.
    pub site: Option<String>,
    pub source_site: Option<String>,
    pub horizon: Duration,
}

/// Each target table's strategy in a many-table pipeline: a source table's
/// `tables.overrides.<name>.conflict`, else the pipeline's `conflict` section. Source
/// tables merged into one target (shards) must agree, since the target's tombstones and
/// stored versions are kept one way.
#[derive(Debug, Default)]
pub struct VersioningByTable {
    default: Option<Arc<Versioning>>,
    /// By source table name.
    overrides: HashMap<String, Arc<Versioning>>,
    /// By target table: the source table that first chose its strategy, and the strategy.
    chosen: HashMap<String, (String, Option<Arc<Versioning>>)>,
}

impl VersioningByTable {
    pub fn new(pipeline: &crate::config::PipelineConfig) -> Self {
        let overrides = pipeline.tables.iter().flat_map(|tables| {
            tables.overrides.iter().filter_map(|(name, table)| {
                let versioning = Versioning::from_config(table.conflict.as_ref()?)?;
                Some((name.clone(), Arc::new(versioning)))
            })
        });
        VersioningByTable {
            default: pipeline
                .conflict
                .as_ref()
                .and_then(Versioning::from_config)
                .map(Arc::new),
            overrides: overrides.collect(),
            chosen: HashMap::new(),
        }
    }

    /// The strategy for `batch`'s table: an error when a shard merged into the same
    /// target has another.
    pub fn for_batch(&mut self, batch: &ChangeBatch) -> Result<Option<Arc<Versioning>>, String> {
        let source = &batch.table.name;
        let target = batch.table.target.as_deref().unwrap_or(source);
        let versioning = self
            .overrides
            .get(source)
            .or(self.default.as_ref())
            .cloned();
        let (first, chosen) = self
            .chosen
            .entry(target.to_string())
            .or_insert_with(|| (source.clone(), versioning.clone()));
        if *chosen != versioning {
            return Err(format!(
                "source tables `{first}` and `{source}` both go to target table `{target}` \
                 with different conflict strategies (`tables.overrides`); tables merged into \
                 one target must share one"
            ));
        }
        Ok(versioning)
    }
}

/// What the target holds for a key, as read inside the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWrite {
    /// The version's text form; `None` when the row has no version (it loses to any
    /// change).
    pub version: Option<String>,
    pub origin: Option<String>,
    /// A tombstone, not a row.
    pub deleted: bool,
}

/// The changes of a batch, stamped.
#[derive(Debug, Default)]
pub struct Incoming {
    /// Per batch row: its key (an index into `keys`) and stamp, for the rows to decide.
    changes: Vec<Option<(usize, Stamp)>>,
    /// Rows still to apply before deciding: included, not echoes, not rejected.
    include: Vec<bool>,
    /// The distinct keys, as the text of each key column, in the order first seen.
    pub keys: Vec<Vec<String>>,
    pub echoes: u64,
}

impl Incoming {
    /// The first row that changes each key, by key index: a row whose image holds the key
    /// with its original types (`before` for a delete, `after` otherwise).
    pub fn first_rows(&self) -> Vec<usize> {
        let mut first = vec![usize::MAX; self.keys.len()];
        for (row, change) in self.changes.iter().enumerate() {
            if let Some((key, _)) = change {
                first[*key] = first[*key].min(row);
            }
        }
        first
    }
}

/// What the target holds, by key index (rows, or tombstones).
pub type StoredWrites = HashMap<usize, StoredWrite>;

/// A delete's tombstone, to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    /// The batch row of the delete.
    pub row: usize,
    /// The key's index in [`Incoming::keys`] (and [`Outcome::key_of`]).
    pub key_index: usize,
    /// The text of each key column.
    pub key: Vec<String>,
    /// The version's text form (as the `before` image holds it).
    pub version: String,
    pub origin: String,
}

/// What [`Versioning::decide`] found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The rows to apply.
    pub include: Vec<bool>,
    /// Per row: whether its key had a row in the target when the batch began (false after
    /// a truncate in the batch). Lets the sink check that nothing appeared meanwhile.
    pub present: Vec<bool>,
    /// The tombstones the sink records: the last applied delete of each key that no
    /// later applied change brought back.
    pub tombstones: Vec<Tombstone>,
    /// Per row: the index of its key, for the rows that were stamped.
    pub key_of: Vec<Option<usize>>,
    /// Changes that lost to the stored write.
    pub skipped: u64,
    /// Changes dropped because they came from the target's own site.
    pub echoes: u64,
}

impl Versioning {
    pub fn from_config(config: &ConflictConfig) -> Option<Versioning> {
        let (strategy, builtin) = config.builtin()?;
        Some(Versioning {
            strategy,
            version_column: builtin.version_column.clone(),
            origin_column: builtin.origin_column.clone(),
            site: builtin.site.clone(),
            source_site: builtin.source_site.clone(),
            horizon: builtin.tombstones.horizon.0,
        })
    }

    /// Whether deciding needs what the target holds (with no version column, the source's
    /// order is the version and every change applies).
    pub fn compares_versions(&self) -> bool {
        self.version_column.is_some()
    }

    /// The batch with `origin_column` filled with `source_site` where the `after` image
    /// has none, so the row weir writes says where it came from. `None` when nothing
    /// needs filling.
    pub fn fill_origins(&self, batch: &ChangeBatch) -> Result<Option<ChangeBatch>, String> {
        let (Some(column), Some(site)) = (&self.origin_column, &self.source_site) else {
            return Ok(None);
        };
        let after = batch.after();
        let Some(index) = after.fields().iter().position(|f| f.name() == column) else {
            return Err(format!(
                "the events have no column `{column}` (conflict.origin_column)"
            ));
        };
        let origins = after.column(index);
        // Rows without an `after` image (deletes) keep their nulls; they write no row.
        let needs = (0..after.len()).any(|row| after.is_valid(row) && origins.is_null(row));
        if !needs {
            return Ok(None);
        }
        let text = cast_with_options(origins, &DataType::Utf8, &CastOptions::default())
            .map_err(|e| e.to_string())?;
        let text = text.as_string::<i32>();
        let filled: StringArray = (0..after.len())
            .map(|row| match text.is_valid(row) {
                true => Some(text.value(row)),
                false if after.is_valid(row) => Some(site.as_str()),
                false => None,
            })
            .collect();
        let filled = cast_with_options(
            &(Arc::new(filled) as ArrayRef),
            origins.data_type(),
            &CastOptions::default(),
        )
        .map_err(|e| e.to_string())?;
        let mut columns = after.columns().to_vec();
        columns[index] = filled;
        let after = StructArray::try_new(after.fields().clone(), columns, after.nulls().cloned())
            .map_err(|e| e.to_string())?;
        let schema = batch.data.schema();
        let at = schema.index_of(AFTER).map_err(|e| e.to_string())?;
        let mut data = batch.data.columns().to_vec();
        data[at] = Arc::new(after);
        Ok(Some(ChangeBatch {
            data: RecordBatch::try_new(schema, data).map_err(|e| e.to_string())?,
            ..batch.clone()
        }))
    }

    /// Stamps the rows `include` selects. A change without a usable key or version goes to
    /// the dead-letter output with the reason.
    pub fn incoming(
        &self,
        batch: &ChangeBatch,
        include: Option<&[bool]>,
        rejects: &mut dyn Rejects,
        sink: &str,
    ) -> Result<Incoming, SinkError> {
        let rows = batch.num_rows();
        let mut incoming = Incoming {
            changes: vec![None; rows],
            include: (0..rows).map(|r| include.is_none_or(|m| m[r])).collect(),
            ..Incoming::default()
        };
        let (before, after) = (batch.before(), batch.after());
        let column = |image: &'_ StructArray, name: &str| image.column_by_name(name).cloned();
        let key_columns = |image: &StructArray| {
            super::compact::key_columns(batch, image).map_err(|e| SinkError::new(sink, e))
        };
        let (keys_before, keys_after) = (key_columns(before)?, key_columns(after)?);
        let versions = match &self.version_column {
            Some(name) => Some(
                column(before, name)
                    .map(Versions::new)
                    .zip(column(after, name).map(Versions::new))
                    .ok_or_else(|| {
                        SinkError::new(
                            sink,
                            format!("the events have no column `{name}` (conflict.version_column)"),
                        )
                    })?,
            ),
            None => None,
        };
        let origins = self
            .origin_column
            .as_ref()
            .and_then(|name| column(after, name));
        let envelope_origin = batch
            .data
            .column_by_name(ORIGIN)
            .map(|c| c.as_string::<i32>().clone());
        let mut key_index: HashMap<Vec<String>, usize> = HashMap::new();
        for (row, op) in batch.ops().enumerate() {
            if !incoming.include[row] || op == Op::Truncate {
                continue;
            }
            let delete = op == Op::Delete;
            // A change's origin: the row's origin column (a delete's is the deleting site,
            // not its old row's), the envelope's, or the source's site.
            let origin = origins
                .as_ref()
                .filter(|_| !delete)
                .and_then(|o| encode::text(o.as_ref(), row).map(Cow::into_owned))
                .or_else(|| {
                    envelope_origin
                        .as_ref()
                        .filter(|o| o.is_valid(row))
                        .map(|o| o.value(row).to_string())
                })
                .or_else(|| self.source_site.clone())
                .unwrap_or_default();
            if self.site.as_deref() == Some(origin.as_str()) {
                incoming.include[row] = false;
                incoming.echoes += 1;
                continue;
            }
            let Some(versions) = &versions else { continue };
            let (keys, image) = match delete {
                true => (&keys_before, &versions.0),
                false => (&keys_after, &versions.1),
            };
            let key: Option<Vec<String>> = keys
                .iter()
                .map(|k| encode::text(k.as_ref(), row).map(Cow::into_owned))
                .collect();
            let problem = match (key, image.get(row)) {
                (None, _) => Some("a primary key column is null".to_string()),
                (_, Err(e)) => Some(e),
                (_, Ok(None)) => Some(format!(
                    "its version (`{}`) is null, so it cannot be ordered against other \
                     writes; give every write a version",
                    self.version_column.as_deref().unwrap_or_default()
                )),
                (Some(key), Ok(Some(version))) => {
                    let next = key_index.len();
                    let index = *key_index.entry(key.clone()).or_insert(next);
                    if index == next {
                        incoming.keys.push(key);
                    }
                    let stamp = Stamp {
                        version,
                        deleted: delete,
                        origin,
                    };
                    incoming.changes[row] = Some((index, stamp));
                    None
                }
            };
            if let Some(problem) = problem {
                incoming.include[row] = false;
                rejects.reject(batch, row, &format!("conflict_unordered: {problem}"))?;
            }
        }
        Ok(incoming)
    }

    /// Steps 1–3 for one batch, in a sink's transaction: fills origins, stamps the rows
    /// `include` selects, reads what the target holds for their keys with `read` (only
    /// when versions are compared), decides, and counts skips and echoes in `applied`.
    /// Returns the batch with origins filled, when any were, and the outcome; the sink
    /// applies `outcome.include` of that batch and records its tombstones.
    pub fn decide_batch(
        &self,
        batch: &ChangeBatch,
        include: Option<&[bool]>,
        rejects: &mut dyn Rejects,
        sink: &str,
        applied: &mut Applied,
        read: impl FnOnce(&ChangeBatch, &Incoming) -> Result<(StoredWrites, StoredWrites), SinkError>,
    ) -> Result<(Option<ChangeBatch>, Outcome), SinkError> {
        let filled = self
            .fill_origins(batch)
            .map_err(|e| SinkError::new(sink, e))?;
        let batch = filled.as_ref().unwrap_or(batch);
        let incoming = self.incoming(batch, include, rejects, sink)?;
        let (rows, tombstones) = match self.compares_versions() {
            true => read(batch, &incoming)?,
            false => Default::default(),
        };
        let outcome = self
            .decide(batch, incoming, &rows, &tombstones)
            .map_err(|e| SinkError::new(sink, e))?;
        applied.skipped += outcome.skipped;
        applied.echoes += outcome.echoes;
        Ok((filled, outcome))
    }

    /// Decides the stamped changes in order against what the target holds: `rows` and
    /// `tombstones` by key index (a key in neither has never been written).
    pub fn decide(
        &self,
        batch: &ChangeBatch,
        incoming: Incoming,
        rows: &HashMap<usize, StoredWrite>,
        tombstones: &HashMap<usize, StoredWrite>,
    ) -> Result<Outcome, String> {
        let n = batch.num_rows();
        let mut outcome = Outcome {
            include: incoming.include,
            present: vec![false; n],
            echoes: incoming.echoes,
            ..Outcome::default()
        };
        if !self.compares_versions() {
            return Ok(outcome);
        }
        let field = self.version_field(batch)?;
        let stored = |index: usize| -> Result<Option<Stamp>, String> {
            let Some(write) = rows.get(&index).or_else(|| tombstones.get(&index)) else {
                return Ok(None);
            };
            let Some(text) = &write.version else {
                return Ok(None);
            };
            Ok(Some(Stamp {
                version: parse_version(&field, text)?,
                deleted: write.deleted,
                origin: write
                    .origin
                    .clone()
                    .or_else(|| self.site.clone())
                    .unwrap_or_default(),
            }))
        };
        // The winning write so far of each key this batch touched.
        let mut current: HashMap<usize, Option<Stamp>> = HashMap::new();
        let mut tombstone_of: HashMap<usize, (usize, String)> = HashMap::new();
        let mut truncated = false;
        let ops: Vec<Op> = batch.ops().collect();
        outcome.key_of = incoming
            .changes
            .iter()
            .map(|c| c.as_ref().map(|(key, _)| *key))
            .collect();
        for (row, change) in incoming.changes.iter().enumerate() {
            if ops[row] == Op::Truncate && outcome.include[row] {
                truncated = true;
                current.clear();
                tombstone_of.clear();
                continue;
            }
            let Some((key, stamp)) = change else { continue };
            let (key, stamp) = (*key, stamp.clone());
            if let std::collections::hash_map::Entry::Vacant(entry) = current.entry(key) {
                entry.insert(if truncated { None } else { stored(key)? });
            }
            outcome.present[row] = !truncated && rows.contains_key(&key);
            let winner = current.get_mut(&key).expect("inserted above");
            match self.strategy.decide(&stamp, winner.as_ref()) {
                Decision::Apply => {
                    if stamp.deleted {
                        tombstone_of.insert(key, (row, stamp.origin.clone()));
                    } else {
                        tombstone_of.remove(&key);
                    }
                    *winner = Some(stamp);
                }
                Decision::Skip => {
                    outcome.include[row] = false;
                    outcome.skipped += 1;
                }
            }
        }
        let before_versions = batch
            .before()
            .column_by_name(self.version_column.as_deref().unwrap_or_default())
            .cloned();
        let mut tombstones: Vec<Tombstone> = tombstone_of
            .into_iter()
            .filter_map(|(key, (row, origin))| {
                let version = encode::text(before_versions.as_ref()?.as_ref(), row)?;
                Some(Tombstone {
                    row,
                    key_index: key,
                    key: incoming.keys[key].clone(),
                    version: version.into_owned(),
                    origin,
                })
            })
            .collect();
        tombstones.sort_by_key(|t| t.row);
        outcome.tombstones = tombstones;
        Ok(outcome)
    }

    /// The version column's field in the batch's rows.
    pub fn version_field(&self, batch: &ChangeBatch) -> Result<Field, String> {
        let name = self.version_column.as_deref().unwrap_or_default();
        batch
            .row_fields()
            .find(name)
            .map(|(_, f)| f.as_ref().clone())
            .ok_or_else(|| format!("the events have no column `{name}` (conflict.version_column)"))
    }
}

/// A version column, read for a whole batch: integer, date and timestamp columns are cast
/// to their count of units once, not row by row.
pub struct Versions {
    array: ArrayRef,
    /// `array` as 64-bit counts (null where a value does not fit), for integer and
    /// temporal columns; the cast's error if it has none.
    counts: Option<Result<ArrayRef, String>>,
}

impl Versions {
    pub fn new(array: ArrayRef) -> Versions {
        let ty = array.data_type();
        let counts = (ty.is_integer() || ty.is_temporal()).then(|| {
            cast_with_options(&array, &DataType::Int64, &CastOptions::default())
                .map_err(|e| format!("its version cannot be read as a number: {e}"))
        });
        Versions { array, counts }
    }

    /// The version in row `row`; `None` when it is null.
    pub fn get(&self, row: usize) -> Result<Option<Version>, String> {
        let array = self.array.as_ref();
        if array.is_null(row) {
            return Ok(None);
        }
        let int = |v: i128| Ok(Some(Version::Int(v)));
        if let Some(counts) = &self.counts {
            let counts = counts.as_ref().map_err(Clone::clone)?;
            return match counts.is_valid(row) {
                true => int(counts.as_primitive::<Int64Type>().value(row) as i128),
                false => Err("its version does not fit in 64 bits".into()),
            };
        }
        match array.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                Ok(encode::text(array, row).map(|t| Version::Text(t.into_owned())))
            }
            DataType::Decimal128(..) => int(array.as_primitive::<Decimal128Type>().value(row)),
            DataType::Decimal256(..) => {
                match array.as_primitive::<Decimal256Type>().value(row).to_i128() {
                    Some(v) => int(v),
                    None => Err("its version is a decimal beyond 38 digits".into()),
                }
            }
            other => Err(format!(
                "its version column is {other}; versions must be integers, decimals, dates, \
                 timestamps or text"
            )),
        }
    }
}

/// A stored version's text form read back as the column's type.
pub fn parse_version(field: &Field, text: &str) -> Result<Version, String> {
    let target = match field.data_type() {
        // The zone only affects display; the instant parses the same without it.
        DataType::Timestamp(unit, Some(_)) => DataType::Timestamp(*unit, None),
        other => other.clone(),
    };
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    let array: ArrayRef = Arc::new(StringArray::from(vec![text]));
    let typed = cast_with_options(&array, &target, &options).map_err(|e| {
        format!(
            "the stored version `{text}` of column `{}` does not read as {target}: {e}",
            field.name()
        )
    })?;
    Versions::new(typed)
        .get(0)?
        .ok_or_else(|| format!("the stored version of `{}` is null", field.name()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::compact::tests::batch;

    struct Collect(Vec<(usize, String)>);

    impl Rejects for Collect {
        fn reject(&mut self, _: &ChangeBatch, row: usize, error: &str) -> Result<(), SinkError> {
            self.0.push((row, error.to_string()));
            Ok(())
        }
    }

    fn lww(site: Option<&str>) -> Versioning {
        Versioning {
            strategy: Strategy::LastWriteWins,
            version_column: Some("v".into()),
            origin_column: Some("o".into()),
            site: site.map(Into::into),
            source_site: Some("b".into()),
            horizon: Duration::from_secs(60),
        }
    }

    fn stored(version: &str, origin: &str, deleted: bool) -> StoredWrite {
        StoredWrite {
            version: Some(version.into()),
            origin: Some(origin.into()),
            deleted,
        }
    }

    #[test]
    fn winners_form_a_chain_and_echoes_are_dropped() {
        let b = batch(&[
            r#"{"op":"u","after":{"id":1,"v":3,"o":"b"}}"#,
            r#"{"op":"u","after":{"id":1,"v":2,"o":"b"}}"#,
            r#"{"op":"u","after":{"id":2,"v":9,"o":"a"}}"#,
            r#"{"op":"d","before":{"id":3,"v":4,"o":"a"}}"#,
            r#"{"op":"c","after":{"id":4,"v":1,"o":"b"}}"#,
            r#"{"op":"u","after":{"id":5,"v":null,"o":"b"}}"#,
        ]);
        let versioning = lww(Some("a"));
        let mut rejects = Collect(Vec::new());
        let incoming = versioning.incoming(&b, None, &mut rejects, "test").unwrap();
        // Row 2 comes from site a, the target: an echo. Row 5 has no version.
        assert_eq!(incoming.echoes, 1);
        assert_eq!(rejects.0.len(), 1);
        assert_eq!(rejects.0[0].0, 5);
        assert!(rejects.0[0].1.contains("null"), "{}", rejects.0[0].1);
        // Keys in the order first seen: 1, 3, 4.
        assert_eq!(incoming.keys, vec![vec!["1"], vec!["3"], vec!["4"]]);
        let rows = HashMap::from([(0, stored("2", "a", false)), (1, stored("4", "a", false))]);
        let tombstones = HashMap::from([(2, stored("5", "c", true))]);
        let outcome = versioning.decide(&b, incoming, &rows, &tombstones).unwrap();
        // Key 1: v3 beats the stored v2, then v2 loses to v3. Key 3: the delete carries
        // v4, which beats the row's v4 (a delete wins at an equal version). Key 4: the
        // tombstone's v5 beats the insert's v1.
        assert_eq!(
            outcome.include,
            vec![true, false, false, true, false, false]
        );
        assert_eq!(outcome.skipped, 2);
        let tombstone = Tombstone {
            row: 3,
            key_index: 1,
            key: vec!["3".into()],
            version: "4".into(),
            origin: "b".into(),
        };
        assert_eq!(outcome.tombstones, vec![tombstone]);
        assert_eq!(outcome.present, vec![true, true, false, true, false, false]);
        assert_eq!(
            outcome.key_of,
            vec![Some(0), Some(0), None, Some(1), Some(2), None]
        );
    }

    #[test]
    fn origins_are_filled_from_the_source_site() {
        let b = batch(&[
            r#"{"op":"c","after":{"id":1,"v":1,"o":null}}"#,
            r#"{"op":"c","after":{"id":2,"v":1,"o":"c"}}"#,
        ]);
        let filled = lww(None).fill_origins(&b).unwrap().expect("a null origin");
        let origins = filled
            .after()
            .column_by_name("o")
            .unwrap()
            .as_string::<i32>()
            .clone();
        assert_eq!((origins.value(0), origins.value(1)), ("b", "c"));
        assert!(lww(None).fill_origins(&filled).unwrap().is_none());
    }

    #[test]
    fn stored_versions_read_back_in_the_column_s_order() {
        let field = Field::new(
            "v",
            DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into())),
            true,
        );
        let early = parse_version(&field, "2026-11-22T10:00:00+00:00").unwrap();
        let late = parse_version(&field, "2026-11-22T10:00:00.000001Z").unwrap();
        assert!(late > early);
        let field = Field::new("v", DataType::Decimal128(10, 2), true);
        assert_eq!(parse_version(&field, "12.5").unwrap(), Version::Int(1250));
        assert!(parse_version(&field, "twelve").is_err());
    }
}
