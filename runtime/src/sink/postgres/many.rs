//! Many tables in one PostgreSQL schema: every table a batch touches, and the checkpoint,
//! in one transaction (`tables:` pipelines).
//!
//! The sink keeps what it knows of one target table at a time in its own fields (the
//! one-table code path, unchanged); switching tables parks that state here by name. Each
//! target table gets its own staging tables (`weir_rows_<n>`, `weir_keys_<n>`), created
//! once per session, so alternating tables costs no catalog writes.

use std::collections::{BTreeMap, HashMap};

use postgres::Client;

use super::{PostgresSink, PreparedUpsert, describe_error, from_pg_declaration};
use crate::envelope::ChangeBatch;
use crate::position::{Checkpoint, Position};
use crate::sink::{Applied, Prepared, PreparedTables, Rejects, SinkError};
use crate::tables::TargetTable;

/// What the sink knows of a target table it is not applying right now.
#[derive(Debug, Default)]
pub(super) struct Parked {
    columns: BTreeMap<String, String>,
    casts: BTreeMap<String, String>,
    target_key: Vec<String>,
    checked: Option<arrow::datatypes::Fields>,
    staged: Option<String>,
    staging_created: Option<String>,
    staging_dirty: bool,
    stage: usize,
    conflict_ready: bool,
    tombstones_collected: Option<std::time::Instant>,
    applied_pruned: Option<std::time::Instant>,
}

/// A new session: no staging table survives it, and every table is read again.
pub(super) fn forget_session(parked: &mut HashMap<String, Parked>) {
    for table in parked.values_mut() {
        table.staged = None;
        table.staging_created = None;
        table.checked = None;
        table.columns.clear();
        table.casts.clear();
        table.conflict_ready = false;
    }
}

impl PostgresSink {
    /// Makes `target` the table the one-table code applies to.
    fn switch_to(&mut self, target: &str) {
        if self.table == target {
            return;
        }
        let parked = Parked {
            columns: std::mem::take(&mut self.columns),
            casts: std::mem::take(&mut self.casts),
            target_key: std::mem::take(&mut self.target_key),
            checked: self.checked.take(),
            staged: self.staged.take(),
            staging_created: self.staging_created.take(),
            staging_dirty: self.staging_dirty.get(),
            stage: self.stage,
            conflict_ready: self.conflict_ready,
            tombstones_collected: self.tombstones_collected.get(),
            applied_pruned: self.applied_pruned.get(),
        };
        self.parked.insert(std::mem::take(&mut self.table), parked);
        let next_stage = self.parked.len() + 1;
        let Parked {
            columns,
            casts,
            target_key,
            checked,
            staged,
            staging_created,
            staging_dirty,
            stage,
            conflict_ready,
            tombstones_collected,
            applied_pruned,
        } = self.parked.remove(target).unwrap_or(Parked {
            stage: next_stage,
            ..Parked::default()
        });
        self.table = target.to_string();
        self.columns = columns;
        self.casts = casts;
        self.target_key = target_key;
        self.checked = checked;
        self.staged.replace(staged);
        self.staging_created.replace(staging_created);
        self.staging_dirty.set(staging_dirty);
        self.stage = stage;
        self.conflict_ready = conflict_ready;
        self.tombstones_collected.set(tombstones_collected);
        self.applied_pruned.set(applied_pruned);
    }

    /// No staging table holds rows of this transaction yet, and none is new in it.
    fn begin_transaction(&mut self) {
        self.staging_created.replace(None);
        self.staging_dirty.set(false);
        for table in self.parked.values_mut() {
            table.staging_created = None;
            table.staging_dirty = false;
        }
    }

    /// Applies the per-table state of every table at the end of a transaction:
    /// committed, the staging tables it created stay; rolled back, they and any table or
    /// column it created are gone, so every table is read again.
    fn end_transaction(&mut self, committed: bool) {
        let end = |staged: &mut Option<String>,
                   created: &mut Option<String>,
                   checked: &mut Option<arrow::datatypes::Fields>| {
            match (committed, created.take()) {
                (true, Some(created)) => *staged = Some(created),
                (true, None) => {}
                (false, _) => *checked = None,
            }
        };
        let mut staged = self.staged.take();
        let mut created = self.staging_created.take();
        end(&mut staged, &mut created, &mut self.checked);
        self.staged.replace(staged);
        self.staging_dirty.set(false);
        for table in self.parked.values_mut() {
            end(
                &mut table.staged,
                &mut table.staging_created,
                &mut table.checked,
            );
            table.staging_dirty = false;
        }
    }

    pub(super) fn apply_many(
        &mut self,
        batches: &[ChangeBatch],
        prepared: Option<&Prepared>,
        checkpoint: &Checkpoint,
        rejects: &mut dyn Rejects,
    ) -> Result<Applied, SinkError> {
        // First without savepoints; a refused row means the whole transaction again, with
        // them, so the refused row is isolated and dead-lettered.
        self.optimistic.set(true);
        self.refused_optimistically.set(false);
        let first = self.apply_many_once(batches, prepared, checkpoint, rejects);
        self.optimistic.set(false);
        match first {
            Err(_) if self.refused_optimistically.get() => {
                self.refused_optimistically.set(false);
                self.apply_many_once(batches, prepared, checkpoint, rejects)
            }
            other => other,
        }
    }

    fn apply_many_once(
        &mut self,
        batches: &[ChangeBatch],
        prepared: Option<&Prepared>,
        checkpoint: &Checkpoint,
        rejects: &mut dyn Rejects,
    ) -> Result<Applied, SinkError> {
        let prepared = prepared.and_then(|p| p.downcast_ref::<PreparedTables>());
        let mut applied = Applied::default();
        let mut client = match self.client.take() {
            Some(c) if !c.is_closed() => c,
            _ => {
                self.client()?;
                self.client.take().expect("connected")
            }
        };
        self.begin_transaction();
        let copy_only = copy_only(batches);
        let mut unflushed = false;
        let result = (|| {
            // Each table's strategy, once per batch. Tombstone tables and triggers are made
            // before the batch's transaction, as for one table.
            let strategies = batches
                .iter()
                .map(|batch| self.versionings.for_batch(batch))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.error(e))?;
            if self.mode == super::PostgresMode::Upsert {
                for (batch, versioning) in batches.iter().zip(&strategies) {
                    let Some(versioning) = versioning.clone() else {
                        continue;
                    };
                    if batch.num_rows() == 0 {
                        continue;
                    }
                    let table = &batch.table;
                    self.switch_to(table.target.as_deref().unwrap_or(&table.name));
                    self.versioning = Some(versioning.clone());
                    let key = &batch.table.primary_key;
                    self.prepare_conflict_tables(&mut client, Some(batch), key, &versioning)?;
                }
            }
            let mut tx = client
                .transaction()
                .map_err(|e| self.pg_error("cannot begin a transaction", &e))?;
            let stored = self.lock_checkpoint(&mut tx, checkpoint)?;
            self.check_unflushed(&stored, checkpoint)?;
            if copy_only && moves_copies_only(checkpoint, &stored) {
                // Rows of a copy only, and no other stream moved (a heartbeat read
                // between two copied rows moves the replication stream, which the
                // source is told of): the commit need not wait for the WAL flush
                // (docs/decisions.md). Losing it in a crash of the target's server loses
                // its checkpoint with it, so the copy resumes before it; and no
                // acknowledgement to the source depends on it. A later transaction that
                // waits flushes it too.
                tx.batch_execute("SET LOCAL synchronous_commit = off")
                    .map_err(|e| self.pg_error("cannot turn synchronous_commit off", &e))?;
                unflushed = true;
            }
            for (i, batch) in batches.iter().enumerate() {
                if batch.num_rows() == 0 {
                    continue;
                }
                let table = &batch.table;
                self.switch_to(table.target.as_deref().unwrap_or(&table.name));
                self.versioning = strategies[i].clone();
                let prepared = prepared
                    .and_then(|p| p.get(i))
                    .and_then(Option::as_ref)
                    .and_then(|p| p.downcast_ref::<PreparedUpsert>());
                self.apply_rows_in(&mut tx, batch, &stored, prepared, rejects, &mut applied)?;
            }
            self.store_checkpoint(&mut tx, checkpoint)?;
            tx.commit().map_err(|e| self.pg_error("commit failed", &e))
        })();
        self.end_transaction(result.is_ok());
        if result.is_err() {
            // One of the statements kept prepared may have been dropped under the
            // connection: prepare them again.
            self.statements.borrow_mut().clear();
        }
        if !client.is_closed() {
            self.client = Some(client);
        }
        result?;
        self.unflushed = unflushed.then(|| checkpoint.clone());
        applied.durable = Some(checkpoint.clone());
        Ok(applied)
    }

    /// Refuses to go on when the target no longer holds a transaction committed without
    /// waiting for its flush: its server restarted and lost it. Applying the next batch
    /// over that would skip the lost rows for good; stopping lets the next run resume
    /// from the checkpoint the target does hold.
    fn check_unflushed(&self, stored: &Checkpoint, current: &Checkpoint) -> Result<(), SinkError> {
        let Some(committed) = &self.unflushed else {
            return Ok(());
        };
        for (stream, resume) in &committed.streams {
            // A negative resume point (a negative key, a resync's start) is never
            // stored: the table's placeholder (-1) compares above it.
            if resume.next < 0 || !current.streams.contains_key(stream) {
                continue;
            }
            let held = stored.streams.get(stream);
            if held.is_none_or(|held| (held.next, held.line) < (resume.next, resume.line)) {
                return Err(self.error(format!(
                    "the target no longer holds rows weir copied into it: its checkpoint of \
                     `{stream}` is at {}, and weir had committed up to {}. A copy commits \
                     without waiting for the target's WAL flush, so a restart of the \
                     target's server can lose its last transactions; run weir again, and \
                     the copy resumes from the target's checkpoint",
                    held.map_or("the start".to_string(), |h| h.next.to_string()),
                    resume.next
                )));
            }
        }
        Ok(())
    }

    /// The schema's tables, with their primary keys and column types.
    pub(super) fn existing_tables(&mut self) -> Result<HashMap<String, TargetTable>, SinkError> {
        let schema = self.schema.clone();
        let client: &mut Client = self.client()?;
        let rows = client
            .query(
                "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
                        -- `indkey` is an int2vector, whose subscripts start at 0: the
                        -- position within the key is counted from 1 here.
                        coalesce(array_position(i.indkey::int2[], a.attnum)
                                 - array_lower(i.indkey::int2[], 1) + 1, 0)
                 FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                 LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
                 ORDER BY c.relname, a.attnum",
                &[&schema],
            )
            .map_err(|e| SinkError::new("postgres sink", describe_error(&e)))?;
        let mut tables: HashMap<String, (TargetTable, Vec<(i32, String)>)> = HashMap::new();
        for row in rows {
            let (table, column, declared, key_position): (String, String, String, i32) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            let entry = tables.entry(table).or_default();
            if key_position > 0 {
                entry.1.push((key_position, column.clone()));
            }
            if let Some(ty) = from_pg_declaration(&declared) {
                entry.0.types.push((column, ty));
            }
        }
        Ok(tables
            .into_iter()
            .map(|(name, (mut table, mut key))| {
                key.sort();
                table.primary_key = key.into_iter().map(|(_, c)| c).collect();
                (name, table)
            })
            .collect())
    }
}

/// Whether every row of `batches` comes from a copy of weir's own PostgreSQL source (and
/// none from its replication stream, whose acknowledgement waits for the commit).
fn copy_only(batches: &[ChangeBatch]) -> bool {
    let mut rows = 0;
    let copied = batches.iter().all(|batch| {
        rows += batch.positions.len();
        batch.positions.iter().all(|position| {
            matches!(position, Position::Postgres { stream, .. }
                if crate::source::postgres_cdc::is_copy_stream(stream))
        })
    });
    copied && rows > 0
}

/// Whether `checkpoint` moves no stream but copies' past what the target holds
/// (`stored`): a stream the target does not hold yet counts as moved.
fn moves_copies_only(checkpoint: &Checkpoint, stored: &Checkpoint) -> bool {
    checkpoint.streams.iter().all(|(stream, resume)| {
        crate::source::postgres_cdc::is_copy_stream(stream)
            || stored.streams.get(stream) == Some(resume)
    })
}
