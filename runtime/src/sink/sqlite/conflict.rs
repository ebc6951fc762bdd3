//! The built-in conflict strategies in the SQLite sink (docs/sync.md).
//!
//! The same steps as in the PostgreSQL sink ([`crate::sink::versioned`]), inside the
//! batch's `BEGIN IMMEDIATE` transaction: read what the target holds for the batch's keys
//! (the row's version and origin, or the key's tombstone), keep the winning changes,
//! apply them, and record the tombstones of the deletes applied. The transaction holds
//! SQLite's write lock from its start, so no other writer can change a row between the
//! read and the write: unlike PostgreSQL, no count check is needed.
//!
//! Tombstones live in `"_weir_tombstones.<table>"`, keyed by the target's key columns with
//! their declared types. A trigger on the target records a tombstone for every delete made
//! there, by applications too, so a late, older update cannot bring back a row deleted at
//! this site.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arrow::array::Array;
use rusqlite::types::Value;

use super::{SqliteSink, quote, sql_value};
use crate::envelope::{ChangeBatch, Op};
use crate::sink::versioned::{Incoming, StoredWrite, StoredWrites, Tombstone, Versioning};
use crate::sink::{Applied, Rejects, Sink, SinkError};

/// Tombstones older than the horizon are removed at most this often.
const COLLECT_EVERY: Duration = Duration::from_secs(60);

/// `'text'` as an SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Seconds since the Unix epoch, with their fraction (as SQLite's
/// `unixepoch('now', 'subsec')`).
fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A stored value's text form, as the versions of incoming changes are compared.
fn value_text(value: Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::Integer(i) => Some(i.to_string()),
        Value::Real(f) => Some(f.to_string()),
        Value::Text(t) => Some(t),
        Value::Blob(b) => Some(String::from_utf8_lossy(&b).into_owned()),
    }
}

impl SqliteSink {
    fn tombstone_table(&self) -> String {
        quote(&format!("_weir_tombstones.{}", self.table))
    }

    /// Creates the tombstone table and the trigger that records deletes made at the target,
    /// if missing. A target table that does not exist yet is left for the first batch,
    /// which creates it (`create: true`) and calls this again.
    pub(super) fn prepare_tombstones(&mut self, key: &[String]) -> Result<(), SinkError> {
        let Some(versioning) = &self.versioning else {
            return Ok(());
        };
        if self.tombstones_ready || !versioning.compares_versions() {
            return Ok(());
        }
        let declared = self
            .read_declarations()
            .map_err(|e| self.error(e.to_string()))?;
        if declared.is_empty() {
            return Ok(());
        }
        let typed = key
            .iter()
            .map(|k| match declared.iter().find(|(name, _)| name == k) {
                Some((name, ty)) => Ok(format!("{} {ty}", quote(name))),
                None => Err(self.error(format!("key column {} is missing", quote(k)))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let keys: Vec<String> = key.iter().map(|k| quote(k)).collect();
        let old: Vec<String> = key.iter().map(|k| format!("OLD.{}", quote(k))).collect();
        let version = quote(versioning.version_column.as_deref().unwrap_or_default());
        let site = literal(versioning.site.as_deref().unwrap_or_default());
        let trigger = quote(&format!("_weir_tombstone.{}", self.table));
        self.conn
            .execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS {tombstones} (
                     {typed},
                     _weir_version TEXT NOT NULL,
                     _weir_origin TEXT NOT NULL,
                     _weir_deleted_at REAL NOT NULL,
                     PRIMARY KEY ({keys})
                 ) WITHOUT ROWID;
                 CREATE TRIGGER IF NOT EXISTS {trigger} AFTER DELETE ON {table}
                 WHEN OLD.{version} IS NOT NULL
                 BEGIN
                     INSERT OR REPLACE INTO {tombstones}
                         ({keys}, _weir_version, _weir_origin, _weir_deleted_at)
                     VALUES ({old}, CAST(OLD.{version} AS TEXT), {site},
                             unixepoch('now', 'subsec'));
                 END;",
                tombstones = self.tombstone_table(),
                table = quote(&self.table),
                typed = typed.join(", "),
                keys = keys.join(", "),
                old = old.join(", "),
            ))
            .map_err(|e| {
                self.error(format!(
                    "cannot create the tombstone table and trigger: {e}"
                ))
            })?;
        self.tombstones_ready = true;
        Ok(())
    }

    /// Applies a batch under a built-in strategy (see the module's documentation).
    pub(super) fn apply_versioned(
        &mut self,
        batch: &ChangeBatch,
        include: Option<&[bool]>,
        applied: &mut Applied,
        rejects: &mut dyn Rejects,
    ) -> Result<(), SinkError> {
        let versioning = self.versioning.clone().expect("a built-in strategy");
        let (filled, outcome) = versioning.decide_batch(
            batch,
            include,
            rejects,
            &self.describe(),
            applied,
            |batch, incoming| self.read_stored(&versioning, batch, incoming),
        )?;
        let batch = filled.as_ref().unwrap_or(batch);
        if outcome.include.iter().any(|x| *x) {
            self.write_compacted(batch, Some(&outcome.include), applied, rejects)?;
        }
        if !outcome.tombstones.is_empty() {
            self.record_tombstones(batch, &outcome.tombstones)?;
        }
        self.collect_tombstones(&versioning)
    }

    /// Reads the version and origin of the row of each incoming key, or its tombstone when
    /// it has no row. Both maps are by key index.
    fn read_stored(
        &self,
        versioning: &Versioning,
        batch: &ChangeBatch,
        incoming: &Incoming,
    ) -> Result<(StoredWrites, StoredWrites), SinkError> {
        let sql_error = |e: rusqlite::Error| self.error(format!("reading the current rows: {e}"));
        let key = &batch.table.primary_key;
        let on: Vec<String> = key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{} = ?{}", quote(k), i + 1))
            .collect();
        let on = on.join(" AND ");
        let version = quote(versioning.version_column.as_deref().unwrap_or_default());
        let origin = versioning
            .origin_column
            .as_deref()
            .map_or("NULL".to_string(), quote);
        let mut row_of = self
            .conn
            .prepare_cached(&format!(
                "SELECT {version}, {origin} FROM {} WHERE {on}",
                quote(&self.table)
            ))
            .map_err(sql_error)?;
        let mut tombstone_of = self
            .conn
            .prepare_cached(&format!(
                "SELECT _weir_version, _weir_origin FROM {} WHERE {on}",
                self.tombstone_table()
            ))
            .map_err(sql_error)?;
        let keys_before = self.key_columns(batch, batch.before())?;
        let keys_after = self.key_columns(batch, batch.after())?;
        let ops: Vec<Op> = batch.ops().collect();
        let (mut rows, mut tombstones) = (HashMap::new(), HashMap::new());
        for (index, row) in incoming.first_rows().into_iter().enumerate() {
            let key = match ops[row] {
                Op::Delete => &keys_before,
                _ => &keys_after,
            };
            if let Some(stored) = stored_write(&mut row_of, key, row, false).map_err(sql_error)? {
                rows.insert(index, stored);
            } else if let Some(stored) =
                stored_write(&mut tombstone_of, key, row, true).map_err(sql_error)?
            {
                tombstones.insert(index, stored);
            }
        }
        Ok((rows, tombstones))
    }

    /// Records the tombstones of the applied deletes, replacing any the key had: the
    /// delete beat it. The trigger has already written one for each row the delete
    /// removed, with this site as origin; this one carries the change's.
    fn record_tombstones(
        &self,
        batch: &ChangeBatch,
        deletes: &[Tombstone],
    ) -> Result<(), SinkError> {
        let sql_error =
            |e: rusqlite::Error| self.error(format!("cannot record the tombstones: {e}"));
        let key = &batch.table.primary_key;
        let names: Vec<String> = key.iter().map(|k| quote(k)).collect();
        let n = key.len();
        let placeholders: Vec<String> = (1..=n + 3).map(|i| format!("?{i}")).collect();
        let mut insert = self
            .conn
            .prepare_cached(&format!(
                "INSERT OR REPLACE INTO {} ({}, _weir_version, _weir_origin, _weir_deleted_at)
                 VALUES ({})",
                self.tombstone_table(),
                names.join(", "),
                placeholders.join(", ")
            ))
            .map_err(sql_error)?;
        let keys_before = self.key_columns(batch, batch.before())?;
        let now = unix_seconds();
        for tombstone in deletes {
            for (i, column) in keys_before.iter().enumerate() {
                insert
                    .raw_bind_parameter(i + 1, sql_value(*column, tombstone.row))
                    .map_err(sql_error)?;
            }
            insert
                .raw_bind_parameter(n + 1, &tombstone.version)
                .and_then(|_| insert.raw_bind_parameter(n + 2, &tombstone.origin))
                .and_then(|_| insert.raw_bind_parameter(n + 3, now))
                .and_then(|_| insert.raw_execute())
                .map_err(sql_error)?;
        }
        Ok(())
    }

    /// Removes tombstones older than the horizon, at most once a minute.
    fn collect_tombstones(&mut self, versioning: &Versioning) -> Result<(), SinkError> {
        if !self.tombstones_ready
            || self
                .tombstones_collected
                .is_some_and(|at| at.elapsed() < COLLECT_EVERY)
        {
            return Ok(());
        }
        let removed = self
            .conn
            .execute(
                &format!(
                    "DELETE FROM {} WHERE _weir_deleted_at < ?1",
                    self.tombstone_table()
                ),
                [unix_seconds() - versioning.horizon.as_secs_f64()],
            )
            .map_err(|e| self.error(format!("cannot remove old tombstones: {e}")))?;
        if removed > 0 {
            tracing::info!(removed, "removed tombstones past the horizon");
        }
        self.tombstones_collected = Some(Instant::now());
        Ok(())
    }
}

/// The version and origin `select` finds for the key of row `row`, if any.
fn stored_write(
    select: &mut rusqlite::CachedStatement<'_>,
    key: &[&dyn Array],
    row: usize,
    deleted: bool,
) -> rusqlite::Result<Option<StoredWrite>> {
    for (i, column) in key.iter().enumerate() {
        select.raw_bind_parameter(i + 1, sql_value(*column, row))?;
    }
    let mut result = select.raw_query();
    let Some(found) = result.next()? else {
        return Ok(None);
    };
    Ok(Some(StoredWrite {
        version: value_text(found.get(0)?),
        origin: value_text(found.get(1)?),
        deleted,
    }))
}
