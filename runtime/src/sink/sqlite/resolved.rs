//! Resolver plugins in the SQLite sink (docs/plugins.md): the batch is applied round by
//! round (each key once per round), and for each round the current rows are read, the
//! resolver called once, and its decisions written, all inside the `BEGIN IMMEDIATE`
//! transaction `apply` opened, which holds SQLite's write lock: no other writer can change
//! a row between the read and the write.

use arrow::array::Array;
use rusqlite::params;

use super::{Refusals, SqliteSink, execute, in_savepoint, sql_value, unix_now};
use crate::envelope::{ChangeBatch, Op};
use crate::plugin::resolver::{ResolverPlugin, Verdict};
use crate::sink::compact::keys;
use crate::sink::resolve::{Round, resolve_round, rounds};
use crate::sink::{Applied, Rejects, SinkError};

/// Identities past the horizon are removed at most this often.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl SqliteSink {
    /// Applies a batch through the resolver, round by round: a round holds each key once,
    /// so the current rows read for it are exact. The whole batch runs in the transaction
    /// `apply` opened with `BEGIN IMMEDIATE`, which holds SQLite's write lock: no other
    /// writer can change a row between the read and the write.
    pub(super) fn apply_resolved(
        &mut self,
        batch: &ChangeBatch,
        include: Option<&[bool]>,
        applied: &mut Applied,
        rejects: &mut dyn Rejects,
    ) -> Result<(), SinkError> {
        if self
            .applied_pruned
            .is_none_or(|at| at.elapsed() >= PRUNE_EVERY)
        {
            let horizon = self.applied_horizon.as_secs().min(i64::MAX as u64) as i64;
            self.conn
                .execute(
                    "DELETE FROM _weir_applied WHERE target = ?1 AND applied_at < ?2",
                    params![self.table, unix_now().saturating_sub(horizon)],
                )
                .map_err(|e| self.error(format!("_weir_applied: {e}")))?;
            self.applied_pruned = Some(std::time::Instant::now());
        }
        let sql_error = |e: rusqlite::Error| self.error(format!("_weir_applied: {e}"));
        // A change whose identity is held was decided before, under another position:
        // deciding it again would apply it twice. Copies within the batch count too.
        let identities = crate::sink::applied::identities(batch).map_err(|e| self.error(e))?;
        let mut include: Vec<bool> = (0..batch.num_rows())
            .map(|row| include.is_none_or(|m| m[row]))
            .collect();
        {
            let mut known = self
                .conn
                .prepare_cached("SELECT 1 FROM _weir_applied WHERE target = ?1 AND identity = ?2")
                .map_err(sql_error)?;
            applied.duplicates +=
                crate::sink::applied::skip_known(&identities, &mut include, |id| {
                    known.exists(params![self.table, id]).map_err(sql_error)
                })?;
        }
        let mut resolver = self.resolver.take().expect("a resolver");
        let result = self.resolve_rounds(
            &mut resolver,
            batch,
            &include,
            &identities,
            applied,
            rejects,
        );
        self.resolver = Some(resolver);
        result
    }

    fn resolve_rounds(
        &self,
        resolver: &mut ResolverPlugin,
        batch: &ChangeBatch,
        include: &[bool],
        identities: &[Option<String>],
        applied: &mut Applied,
        rejects: &mut dyn Rejects,
    ) -> Result<(), SinkError> {
        let keys = keys(batch).map_err(|e| self.error(e))?;
        let statements = self.statements(batch);
        let (before, after) = (batch.before(), batch.after());
        let key_before = self.key_columns(batch, before)?;
        let key_after = self.key_columns(batch, after)?;
        let after_columns: Vec<&dyn Array> = after.columns().iter().map(|c| c.as_ref()).collect();
        let sql_error = |e: rusqlite::Error| self.error(e.to_string());
        let mut refusals = Refusals::uncompacted(self, batch);
        let fields = batch.row_fields();
        let ops: Vec<Op> = batch.ops().collect();
        let now = unix_now();
        for round in rounds(batch, &keys, Some(include)) {
            let rows = match round {
                Round::Truncate => {
                    self.conn
                        .execute(&statements.truncate, [])
                        .map_err(sql_error)?;
                    applied.truncates += 1;
                    continue;
                }
                Round::Changes(rows) => rows,
            };
            let key_of = |row: usize| {
                if ops[row] == Op::Delete {
                    &key_before
                } else {
                    &key_after
                }
            };
            let current = {
                let mut select = self
                    .conn
                    .prepare_cached(&statements.select)
                    .map_err(sql_error)?;
                read_current(&mut select, &fields, rows.iter().map(|&r| (key_of(r), r)))
                    .map_err(|e| self.error(format!("reading the current rows: {e}")))?
            };
            let error = |e| self.error(e);
            let Some(resolution) = resolve_round(resolver, batch, &rows, current, rejects, error)?
            else {
                continue;
            };
            let mut delete = self
                .conn
                .prepare_cached(&statements.delete)
                .map_err(sql_error)?;
            let mut upsert = self
                .conn
                .prepare_cached(&statements.upsert)
                .map_err(sql_error)?;
            let merged: Vec<&dyn Array> = resolution
                .merged
                .columns()
                .iter()
                .map(|c| c.as_ref())
                .collect();
            let mut record = self
                .conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO _weir_applied (target, identity, applied_at)
                     VALUES (?1, ?2, ?3)",
                )
                .map_err(sql_error)?;
            for (&row, verdict) in rows.iter().zip(&resolution.verdicts) {
                let written = match verdict {
                    Verdict::Apply if ops[row] == Op::Delete => {
                        execute(&mut delete, &key_before, row).map(|()| applied.deletes += 1)
                    }
                    Verdict::Apply if keys.moved(batch, row, ops[row]) => {
                        // An update that moved its key deletes the old key and writes the
                        // new one together: a refused write leaves the old key.
                        in_savepoint(&self.conn, || {
                            execute(&mut delete, &key_before, row)?;
                            execute(&mut upsert, &after_columns, row)
                        })
                        .map(|()| {
                            applied.deletes += 1;
                            applied.upserts += 1;
                        })
                    }
                    Verdict::Apply => {
                        execute(&mut upsert, &after_columns, row).map(|()| applied.upserts += 1)
                    }
                    Verdict::Skip => {
                        applied.skipped += 1;
                        Ok(())
                    }
                    Verdict::Merge(m) => {
                        execute(&mut upsert, &merged, *m).map(|()| applied.merged += 1)
                    }
                    Verdict::Rejected(message) => {
                        let reason = format!(
                            "plugin_row_error: {} (resolver `{}`)",
                            crate::redact::redact(message),
                            resolver.name()
                        );
                        rejects.reject(batch, row, &reason)?;
                        continue;
                    }
                };
                if !refusals.refused(written, row, rejects)? {
                    // A decided change (applied, skipped or merged) is remembered; a
                    // refused one is not: it went to the dead-letter output, and a copy
                    // is decided anew.
                    if let Some(identity) = &identities[row] {
                        record
                            .execute(params![self.table, identity, now])
                            .map_err(sql_error)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The target's row for each `(key columns, row)`, as a struct of the batch's row columns,
/// null where the table has no row with that key.
fn read_current<'a>(
    select: &mut rusqlite::CachedStatement<'_>,
    fields: &arrow::datatypes::Fields,
    keys: impl Iterator<Item = (&'a Vec<&'a dyn Array>, usize)>,
) -> Result<arrow::array::StructArray, String> {
    let mut values: Vec<Vec<rusqlite::types::Value>> = vec![Vec::new(); fields.len()];
    let mut found = Vec::new();
    for (key, row) in keys {
        for (i, column) in key.iter().enumerate() {
            select
                .raw_bind_parameter(i + 1, sql_value(*column, row))
                .map_err(|e| e.to_string())?;
        }
        let mut result = select.raw_query();
        match result.next().map_err(|e| e.to_string())? {
            Some(current) => {
                for (i, column) in values.iter_mut().enumerate() {
                    column.push(current.get(i).map_err(|e| e.to_string())?);
                }
                found.push(true);
            }
            None => {
                for column in values.iter_mut() {
                    column.push(rusqlite::types::Value::Null);
                }
                found.push(false);
            }
        }
    }
    crate::sink::resolve::current_rows(fields, &values, found)
}
