//! The built-in conflict strategies in the PostgreSQL sink (docs/sync.md).
//!
//! Inside the batch's transaction the sink locks the target rows of the batch's keys
//! (`SELECT … FOR UPDATE`) and reads their versions and origins, reads the tombstones of
//! keys without a row, lets [`Versioning::decide`] keep the winning changes, applies them
//! as any batch, and records the tombstones of the deletes it applied.
//!
//! Tombstones live in `weir."<schema>.<table>.tombstones"`, keyed by the target's key
//! columns with their types. A trigger on the target records a tombstone for every delete
//! made there — by applications too, whose deletes weir never sees as changes of this
//! sink — so a late, older update cannot bring back a row deleted at this site.
//!
//! A key without a row is not locked by `FOR UPDATE`. If an application inserts it
//! between the read and the write, the sink's count of inserted (or deleted) rows does
//! not match what it read, and the batch fails as retryable: it is applied again and sees
//! the new row.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use postgres::Transaction;
use postgres::types::ToSql;

use super::{PostgresSink, quote};
use crate::envelope::ChangeBatch;
use crate::sink::versioned::{Outcome, StoredWrite, StoredWrites, Tombstone, Versioning};
use crate::sink::{Applied, Rejects, Sink, SinkError};

/// Tombstones older than the horizon are removed at most this often.
const COLLECT_EVERY: Duration = Duration::from_secs(60);

/// PostgreSQL's limit on identifier length, in bytes.
const MAX_IDENTIFIER: usize = 63;

/// `'text'` as an SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

impl PostgresSink {
    /// The tombstone table's name (quoted, in schema `weir`).
    pub(super) fn tombstone_table(&self) -> Result<String, SinkError> {
        let name = format!("{}.{}.tombstones", self.schema, self.table);
        if name.len() > MAX_IDENTIFIER {
            return Err(self.error(format!(
                "the tombstone table's name `{name}` is longer than PostgreSQL's 63 bytes; \
                 give the target table a shorter name"
            )));
        }
        Ok(format!("weir.{}", quote(&name)))
    }

    /// Creates the tombstone table and the trigger that records deletes made at the
    /// target, once per connection. Runs in its own transaction, before the batch's, under
    /// an advisory lock: lanes start together, and DDL on one table must not race.
    ///
    /// The sink calls it when it opens (`batch` is `None`) so that deletes applications
    /// make before weir's first batch leave tombstones too; then a table that does not
    /// exist yet is left for the first batch, which creates it (`create: true`).
    pub(super) fn prepare_conflict_tables(
        &mut self,
        client: &mut postgres::Client,
        batch: Option<&ChangeBatch>,
        key: &[String],
        versioning: &Versioning,
    ) -> Result<(), SinkError> {
        if self.conflict_ready || !versioning.compares_versions() {
            return Ok(());
        }
        let mut tx = client
            .transaction()
            .map_err(|e| self.pg_error("cannot begin a transaction", &e))?;
        tx.query(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&format!("weir.ddl {}", self.target())],
        )
        .map_err(|e| self.pg_error("cannot lock for DDL", &e))?;
        match batch {
            Some(batch) => self.ensure_table(&mut tx, batch)?,
            None => {
                self.read_columns(&mut tx)?;
                if self.columns.is_empty() {
                    return Ok(());
                }
            }
        }
        let tombstones = self.tombstone_table()?;
        let typed = key
            .iter()
            .map(|k| Ok(format!("{} {}", quote(k), self.key_type(k)?)))
            .collect::<Result<Vec<_>, SinkError>>()?;
        let keys: Vec<String> = key.iter().map(|k| quote(k)).collect();
        let old: Vec<String> = key.iter().map(|k| format!("OLD.{}", quote(k))).collect();
        let version = quote(versioning.version_column.as_deref().unwrap_or_default());
        let site = literal(versioning.site.as_deref().unwrap_or_default());
        let function = format!(
            "weir.{}",
            quote(&format!("{}.{}.tombstone", self.schema, self.table))
        );
        let target = self.target();
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {tombstones} (
                 {typed},
                 _weir_version text NOT NULL,
                 _weir_origin text NOT NULL,
                 _weir_deleted_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY ({keys})
             );
             CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
             LANGUAGE plpgsql AS $weir$
             BEGIN
                 INSERT INTO {tombstones} ({keys}, _weir_version, _weir_origin)
                 VALUES ({old}, to_jsonb(OLD.{version}) #>> '{{}}', {site})
                 ON CONFLICT ({keys}) DO UPDATE SET
                     _weir_version = excluded._weir_version,
                     _weir_origin = excluded._weir_origin,
                     _weir_deleted_at = now();
                 RETURN NULL;
             END
             $weir$;",
            typed = typed.join(", "),
            keys = keys.join(", "),
            old = old.join(", "),
        ))
        .map_err(|e| self.pg_error("cannot create the tombstone table and trigger", &e))?;
        // Creating a trigger locks the table against writes, and waits for every open
        // transaction on it: only when it is missing, not at every start.
        let installed = tx
            .query_opt(
                "SELECT 1 FROM pg_trigger t
                 JOIN pg_class c ON c.oid = t.tgrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2 AND t.tgname = 'weir_tombstone'",
                &[&self.schema, &self.table],
            )
            .map_err(|e| self.pg_error("cannot read the target's triggers", &e))?
            .is_some();
        if !installed {
            tx.batch_execute(&format!(
                "CREATE TRIGGER weir_tombstone AFTER DELETE ON {target}
                     FOR EACH ROW WHEN (OLD.{version} IS NOT NULL) EXECUTE FUNCTION {function}();"
            ))
            .map_err(|e| self.pg_error("cannot create the tombstone trigger", &e))?;
        }
        tx.commit()
            .map_err(|e| self.pg_error("cannot create the tombstone table and trigger", &e))?;
        self.conflict_ready = true;
        Ok(())
    }

    /// Applies a batch under a built-in strategy (see the module's documentation).
    pub(super) fn upsert_versioned(
        &self,
        tx: &mut Transaction<'_>,
        versioning: &Versioning,
        batch: &ChangeBatch,
        include: Option<&[bool]>,
        rejects: &mut dyn Rejects,
        applied: &mut Applied,
    ) -> Result<(), SinkError> {
        let (filled, outcome) = versioning.decide_batch(
            batch,
            include,
            rejects,
            &self.describe(),
            applied,
            |batch, incoming| self.read_stored(tx, versioning, batch, &incoming.keys),
        )?;
        let batch = filled.as_ref().unwrap_or(batch);
        if outcome.include.iter().any(|x| *x) {
            let present = versioning
                .compares_versions()
                .then_some(outcome.present.as_slice());
            let groups = delete_groups(&outcome);
            for (origin, include) in &groups {
                if let Some(origin) = origin {
                    tx.execute("SELECT set_config('weir.origin', $1, true)", &[origin])
                        .map_err(|e| self.pg_error("cannot set weir.origin", &e))?;
                }
                self.upsert(tx, batch, Some(include), None, rejects, applied, present)?;
            }
            if groups.iter().any(|(origin, _)| origin.is_some()) {
                tx.execute("SELECT set_config('weir.origin', '', true)", &[])
                    .map_err(|e| self.pg_error("cannot reset weir.origin", &e))?;
            }
        }
        if !outcome.tombstones.is_empty() {
            self.record_tombstones(tx, batch, &outcome.tombstones)?;
        }
        self.collect_tombstones(tx, versioning)
    }

    /// The declared type of key column `k` in the target.
    fn key_type(&self, k: &str) -> Result<&str, SinkError> {
        self.columns
            .get(k)
            .map(String::as_str)
            .ok_or_else(|| self.error(format!("key column {} is missing", quote(k))))
    }

    /// `unnest($1::text[], …) AS k(c0, …, <extra>…)`: the key columns as text, then one
    /// array per `(name, type)` of `extra`, as parameters in that order; and the key
    /// columns cast to their types (`k.c0::bigint`, …).
    pub(super) fn unnest_keys(
        &self,
        key: &[String],
        extra: &[(&str, &str)],
    ) -> Result<(String, Vec<String>), SinkError> {
        let mut arrays = Vec::new();
        let mut names = Vec::new();
        let mut typed = Vec::new();
        for (i, k) in key.iter().enumerate() {
            arrays.push(format!("${}::text[]", i + 1));
            names.push(format!("c{i}"));
            typed.push(format!("k.c{i}::{}", self.key_type(k)?));
        }
        for (name, ty) in extra {
            arrays.push(format!("${}::{ty}[]", arrays.len() + 1));
            names.push(name.to_string());
        }
        let unnest = format!("unnest({}) AS k({})", arrays.join(", "), names.join(", "));
        Ok((unnest, typed))
    }

    /// `unnest(…) AS k(c0, …, i)` over the key columns' text arrays and an ordinal array
    /// (the parameters, in that order), and the join condition `t.<key> = k.c0::<type> AND
    /// …` that matches the target's rows to them.
    pub(super) fn numbered_keys(&self, key: &[String]) -> Result<(String, String), SinkError> {
        let (unnest, typed) = self.unnest_keys(key, &[("i", "int")])?;
        let on = key
            .iter()
            .zip(&typed)
            .map(|(k, value)| format!("t.{} = {value}", quote(k)))
            .collect::<Vec<_>>()
            .join(" AND ");
        Ok((unnest, on))
    }

    /// Locks and reads the rows of `keys`, then reads the tombstones of the keys without
    /// one. Both maps are by key index.
    fn read_stored(
        &self,
        tx: &mut Transaction<'_>,
        versioning: &Versioning,
        batch: &ChangeBatch,
        keys: &[Vec<String>],
    ) -> Result<(StoredWrites, StoredWrites), SinkError> {
        let mut rows = HashMap::new();
        let mut tombstones = HashMap::new();
        if keys.is_empty() {
            return Ok((rows, tombstones));
        }
        let key = &batch.table.primary_key;
        let columns = key_columns(key.len(), keys);
        let ordinals: Vec<i32> = (0..keys.len() as i32).collect();
        let mut params: Vec<&(dyn ToSql + Sync)> =
            columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        params.push(&ordinals);
        let (unnest, on) = self.numbered_keys(key)?;
        let version = quote(versioning.version_column.as_deref().unwrap_or_default());
        let origin = versioning
            .origin_column
            .as_ref()
            .map_or("NULL::text".to_string(), |c| {
                format!("t.{}::text", quote(c))
            });
        let locked = tx
            .query(
                &format!(
                    "SELECT k.i, to_jsonb(t.{version}) #>> '{{}}', {origin}
                     FROM {} t JOIN {unnest} ON {on} ORDER BY k.i FOR UPDATE OF t",
                    self.target()
                ),
                &params,
            )
            .map_err(|e| self.pg_error("cannot read the current rows", &e))?;
        for row in locked {
            rows.insert(
                row.get::<_, i32>(0) as usize,
                StoredWrite {
                    version: row.get(1),
                    origin: row.get(2),
                    deleted: false,
                },
            );
        }
        if rows.len() == keys.len() {
            return Ok((rows, tombstones));
        }
        let deleted = tx
            .query(
                &format!(
                    "SELECT k.i, t._weir_version, t._weir_origin
                     FROM {} t JOIN {unnest} ON {on}",
                    self.tombstone_table()?
                ),
                &params,
            )
            .map_err(|e| self.pg_error("cannot read the tombstones", &e))?;
        for row in deleted {
            let index = row.get::<_, i32>(0) as usize;
            if !rows.contains_key(&index) {
                tombstones.insert(
                    index,
                    StoredWrite {
                        version: Some(row.get(1)),
                        origin: Some(row.get(2)),
                        deleted: true,
                    },
                );
            }
        }
        Ok((rows, tombstones))
    }

    /// Records the tombstones of the applied deletes, replacing any the key had: the
    /// delete beat it. The trigger has already written one for each row the delete
    /// removed, with this site as origin; this one carries the change's.
    fn record_tombstones(
        &self,
        tx: &mut Transaction<'_>,
        batch: &ChangeBatch,
        deletes: &[Tombstone],
    ) -> Result<(), SinkError> {
        let key = &batch.table.primary_key;
        let columns = key_columns(key.len(), deletes.iter().map(|t| &t.key));
        let versions: Vec<&str> = deletes.iter().map(|t| t.version.as_str()).collect();
        let origins: Vec<&str> = deletes.iter().map(|t| t.origin.as_str()).collect();
        let mut params: Vec<&(dyn ToSql + Sync)> =
            columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        params.extend([
            &versions as &(dyn ToSql + Sync),
            &origins as &(dyn ToSql + Sync),
        ]);
        let keys: Vec<String> = key.iter().map(|k| quote(k)).collect();
        let (unnest, typed) = self.unnest_keys(key, &[("version", "text"), ("origin", "text")])?;
        tx.execute(
            &format!(
                "INSERT INTO {} ({keys}, _weir_version, _weir_origin)
                 SELECT {typed}, k.version, k.origin FROM {unnest}
                 ON CONFLICT ({keys}) DO UPDATE SET
                     _weir_version = excluded._weir_version,
                     _weir_origin = excluded._weir_origin,
                     _weir_deleted_at = now()",
                self.tombstone_table()?,
                keys = keys.join(", "),
                typed = typed.join(", "),
            ),
            &params,
        )
        .map_err(|e| self.pg_error("cannot record the tombstones", &e))?;
        Ok(())
    }

    /// Removes tombstones older than the horizon, at most once a minute.
    fn collect_tombstones(
        &self,
        tx: &mut Transaction<'_>,
        versioning: &Versioning,
    ) -> Result<(), SinkError> {
        if !versioning.compares_versions()
            || self
                .tombstones_collected
                .get()
                .is_some_and(|at| at.elapsed() < COLLECT_EVERY)
        {
            return Ok(());
        }
        let horizon = versioning.horizon.as_secs_f64();
        let removed = tx
            .execute(
                &format!(
                    "DELETE FROM {} WHERE _weir_deleted_at < now() - make_interval(secs => $1)",
                    self.tombstone_table()?
                ),
                &[&horizon],
            )
            .map_err(|e| self.pg_error("cannot remove old tombstones", &e))?;
        if removed > 0 {
            tracing::info!(removed, "removed tombstones past the horizon");
        }
        self.tombstones_collected.set(Some(Instant::now()));
        Ok(())
    }
}

/// The rows to apply, split so that every `DELETE` weir runs removes the rows of one
/// origin, with that origin (`weir.origin` is set to it for the statement, so a capture
/// trigger at this site can tell who deleted the row; docs/sync.md). A key goes to the
/// group of the origin of its last applied delete; keys that end with a row go to the
/// first group. With one origin (or none) there is one group: the usual single write.
fn delete_groups(outcome: &Outcome) -> Vec<(Option<&str>, Vec<bool>)> {
    let mut origins: Vec<&str> = Vec::new();
    let mut group_of: HashMap<usize, usize> = HashMap::new();
    for tombstone in &outcome.tombstones {
        let group = match origins.iter().position(|o| *o == tombstone.origin) {
            Some(group) => group,
            None => {
                origins.push(&tombstone.origin);
                origins.len() - 1
            }
        };
        group_of.insert(tombstone.key_index, group);
    }
    // A row without a key (a truncate) must stay in order with the rest: no split.
    let unkeyed = (outcome.include.iter().zip(&outcome.key_of)).any(|(i, k)| *i && k.is_none());
    if origins.len() <= 1 || unkeyed {
        let origin = (origins.len() == 1).then(|| origins[0]);
        return vec![(origin, outcome.include.clone())];
    }
    origins
        .iter()
        .enumerate()
        .map(|(group, origin)| {
            let include = outcome
                .include
                .iter()
                .zip(&outcome.key_of)
                .map(|(included, key)| {
                    *included && key.and_then(|k| group_of.get(&k).copied()).unwrap_or(0) == group
                })
                .collect();
            (Some(*origin), include)
        })
        .collect()
}

/// The key values of `keys` as one text array per key column, the parameters
/// [`PostgresSink::unnest_keys`] expects first.
pub(super) fn key_columns<'a>(
    columns: usize,
    keys: impl IntoIterator<Item = &'a Vec<String>>,
) -> Vec<Vec<&'a str>> {
    let mut arrays: Vec<Vec<&str>> = vec![Vec::new(); columns];
    for values in keys {
        for (array, value) in arrays.iter_mut().zip(values) {
            array.push(value);
        }
    }
    arrays
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tombstone(row: usize, key_index: usize, origin: &str) -> Tombstone {
        Tombstone {
            row,
            key_index,
            key: vec![key_index.to_string()],
            version: "1".into(),
            origin: origin.into(),
        }
    }

    #[test]
    fn deletes_are_grouped_by_origin_and_rows_stay_with_their_key() {
        // Keys 0..3; key 1 ends deleted by b, key 2 by c, keys 0 and 3 end with a row.
        let outcome = Outcome {
            include: vec![true, true, true, true, false],
            key_of: vec![Some(0), Some(1), Some(2), Some(1), Some(3)],
            tombstones: vec![tombstone(3, 1, "b"), tombstone(2, 2, "c")],
            ..Outcome::default()
        };
        let groups = delete_groups(&outcome);
        assert_eq!(
            groups,
            vec![
                (Some("b"), vec![true, true, false, true, false]),
                (Some("c"), vec![false, false, true, false, false]),
            ]
        );
        // One origin: one group, the whole batch.
        let one = Outcome {
            tombstones: vec![tombstone(3, 1, "b")],
            ..outcome
        };
        assert_eq!(
            delete_groups(&one),
            vec![(Some("b"), vec![true, true, true, true, false])]
        );
    }

    #[test]
    fn a_truncate_keeps_the_batch_in_one_write() {
        let outcome = Outcome {
            include: vec![true, true, true],
            key_of: vec![Some(0), None, Some(1)],
            tombstones: vec![tombstone(0, 0, "b"), tombstone(2, 1, "c")],
            ..Outcome::default()
        };
        assert_eq!(delete_groups(&outcome), vec![(None, vec![true; 3])]);
    }
}
