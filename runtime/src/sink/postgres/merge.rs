//! Applying a batch: the rows the target lacks, compacted, upserted (`upsert`; a segment
//! of many actions is COPYed into staging tables and merged from there, a smaller one from
//! array parameters, `arrays.rs`); or COPYed into the change-log table (`append`).

use super::*;

impl PostgresSink {
    pub(super) fn apply_in(
        &mut self,
        tx: &mut Transaction<'_>,
        batch: &ChangeBatch,
        prepared: Option<&PreparedUpsert>,
        rejects: &mut dyn Rejects,
        applied: &mut Applied,
    ) -> Result<(), SinkError> {
        let stored = self.lock_checkpoint(tx, &batch.checkpoint)?;
        self.apply_rows_in(tx, batch, &stored, prepared, rejects, applied)?;
        self.store_checkpoint(tx, &batch.checkpoint)
    }

    /// Applies the batch's rows that `stored` (the checkpoint read under lock) does not
    /// cover yet.
    pub(super) fn apply_rows_in(
        &mut self,
        tx: &mut Transaction<'_>,
        batch: &ChangeBatch,
        stored: &Checkpoint,
        prepared: Option<&PreparedUpsert>,
        rejects: &mut dyn Rejects,
        applied: &mut Applied,
    ) -> Result<(), SinkError> {
        let include = unapplied(batch, stored);
        if let Some(mask) = &include {
            let skipped = mask.iter().filter(|x| !**x).count();
            tracing::debug!(skipped, "skipping rows the table already holds");
            applied.already_applied += skipped as u64;
        }
        if batch.num_rows() > 0 && include.as_ref().is_none_or(|m| m.iter().any(|x| *x)) {
            self.ensure_table(tx, batch)?;
            match (self.mode, self.versioning.as_deref()) {
                (PostgresMode::Upsert, _) if self.resolver.is_some() => {
                    let mut resolver = self.resolver.take().expect("a resolver");
                    let result = self.upsert_resolved(
                        tx,
                        &mut resolver,
                        batch,
                        include.as_deref(),
                        rejects,
                        applied,
                    );
                    self.resolver = Some(resolver);
                    result?
                }
                (PostgresMode::Upsert, Some(versioning)) => self.upsert_versioned(
                    tx,
                    versioning,
                    batch,
                    include.as_deref(),
                    rejects,
                    applied,
                )?,
                (PostgresMode::Upsert, None) => self.upsert(
                    tx,
                    batch,
                    include.as_deref(),
                    prepared,
                    rejects,
                    applied,
                    None,
                )?,
                (PostgresMode::Append, _) => {
                    self.append(tx, batch, include.as_deref(), rejects, applied)?
                }
            }
        }
        Ok(())
    }

    /// Applies the included rows, compacted. With `present` (per row: whether its key had
    /// a row when the batch began, as read under lock), checks that the rows inserted and
    /// deleted are exactly those: a key that appeared meanwhile fails the batch as
    /// retryable, rather than being overwritten unread.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn upsert(
        &self,
        tx: &mut Transaction<'_>,
        batch: &ChangeBatch,
        include: Option<&[bool]>,
        prepared: Option<&PreparedUpsert>,
        rejects: &mut dyn Rejects,
        applied: &mut Applied,
        present: Option<&[bool]>,
    ) -> Result<(), SinkError> {
        // Prepared ahead (on another thread) assuming every row is new; rows to skip mean
        // preparing again without them.
        // Staged segments go as COPY binary when every column has an exact binary form
        // for the target's declared type (`binary.rs`).
        let layout = layout(batch, |name| self.columns.get(name).cloned());
        let owned;
        let segments = match (include, prepared) {
            (None, Some(prepared))
                if prepared.layout == layout || prepared.segments.iter().all(|s| !s.staged) =>
            {
                &prepared.segments
            }
            _ => {
                owned =
                    prepare_upsert(batch, include, layout.as_ref()).map_err(|e| self.error(e))?;
                &owned
            }
        };
        let statements = self.merge_statements(batch)?;
        if segments.iter().any(|s| s.staged) {
            self.ensure_staging(tx, batch)?;
        }
        let target = self.target();
        for segment in segments {
            if segment.truncate_first {
                tx.batch_execute(&format!("DELETE FROM {target}"))
                    .map_err(|e| self.pg_error("cannot truncate", &e))?;
                applied.truncates += 1;
            }
            let mut merge = |tx: &mut Transaction<'_>, actions: &[Action]| {
                if segment.staged {
                    self.merge_staged(tx, batch, segment, actions, present)
                } else {
                    self.merge(tx, batch, &statements, segment, actions, present)
                }
            };
            self.isolating(tx, batch, &segment.actions, &mut merge, rejects, applied)?;
        }
        Ok(())
    }

    /// Makes sure this table's staging tables exist with the batch's columns.
    fn ensure_staging(
        &self,
        tx: &mut Transaction<'_>,
        batch: &ChangeBatch,
    ) -> Result<(), SinkError> {
        let fields = batch.row_fields();
        let key = &batch.table.primary_key;
        let typed = |name: &str| -> Result<String, SinkError> {
            self.columns
                .get(name)
                .map(|t| format!("{} {t}", quote(name)))
                .ok_or_else(|| {
                    self.error(format!("column {} is missing from the target", quote(name)))
                })
        };
        let stage_columns = fields
            .iter()
            .map(|f| typed(f.name()))
            .collect::<Result<Vec<_>, _>>()?;
        let key_columns = key
            .iter()
            .map(|k| typed(k))
            .collect::<Result<Vec<_>, _>>()?;
        let signature = format!("{} | {}", stage_columns.join(", "), key_columns.join(", "));
        let current = self
            .staging_created
            .borrow()
            .clone()
            .or(self.staged.borrow().clone());
        if current.as_deref() != Some(signature.as_str()) {
            let (rows, keys) = self.staging_names();
            tx.batch_execute(&format!(
                "DROP TABLE IF EXISTS pg_temp.{rows}, pg_temp.{keys};
                 CREATE TEMP TABLE {rows} ({}) ON COMMIT DELETE ROWS;
                 CREATE TEMP TABLE {keys} ({}) ON COMMIT DELETE ROWS;",
                stage_columns.join(", "),
                key_columns.join(", ")
            ))
            .map_err(|e| self.pg_error("cannot create the staging tables", &e))?;
            self.staging_created.replace(Some(signature));
            self.staging_dirty.set(false);
        }
        Ok(())
    }

    /// COPYs the prepared lines of `actions` (a run of the segment's) into the staging
    /// tables, then deletes and upserts.
    pub(super) fn merge_staged(
        &self,
        tx: &mut Transaction<'_>,
        batch: &ChangeBatch,
        segment: &PreparedSegment,
        actions: &[Action],
        present: Option<&[bool]>,
    ) -> Result<Applied, MergeError> {
        let fields = batch.row_fields();
        let key = &batch.table.primary_key;
        let target = self.target();
        let names: Vec<String> = fields.iter().map(|f| quote(f.name())).collect();
        let key_names: Vec<String> = key.iter().map(|k| quote(k)).collect();
        let (stage_rows, stage_keys) = self.staging_names();
        if present.is_none() && self.copies_directly(batch, actions) {
            let first = actions.first().map_or(0, |a| a.line.start);
            let last = actions.last().map_or(0, |a| a.line.end);
            if self.copy_direct(tx, &names, segment, first..last)? {
                return Ok(Applied {
                    upserts: actions.len() as u64,
                    ..Applied::default()
                });
            }
        }
        if self.staging_dirty.get() {
            // A second merge in one transaction (after a truncate, or while bisecting).
            // DELETE, not TRUNCATE: TRUNCATE gives the table a new file, a catalog write.
            tx.batch_execute(&format!(
                "DELETE FROM {stage_rows}; DELETE FROM {stage_keys}"
            ))?;
        }
        // From here the staging tables may hold rows until the transaction ends (or the
        // savepoint rolls back, which makes the next DELETE above merely unneeded).
        self.staging_dirty.set(true);
        // The lines of one kind for a run of actions are contiguous in their buffer.
        let span = |upsert: bool| {
            let first = actions.iter().find(|a| a.upsert == upsert)?;
            let last = actions.iter().rfind(|a| a.upsert == upsert)?;
            Some(first.line.start..last.line.end)
        };
        let mut done = Applied::default();
        // Statements that need no answer, sent together once the staging tables are full.
        let mut pending: Vec<String> = Vec::new();
        if let Some(span) = span(false) {
            done.deletes = actions.iter().filter(|a| !a.upsert).count() as u64;
            copy_lines(
                tx,
                &format!("{stage_keys} ({})", key_names.join(", ")),
                segment,
                &segment.keys[span],
            )?;
            let on: Vec<String> = key_names.iter().map(|k| format!("t.{k} = k.{k}")).collect();
            // The staging table has no statistics, so the planner may pick a hash join,
            // which reads the whole target for every batch. A nested loop over the few
            // staged keys with the key index is always the right plan here.
            let delete = format!(
                "DELETE FROM {target} t USING {stage_keys} k WHERE {}",
                on.join(" AND ")
            );
            const NESTED_LOOP: &str =
                "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off";
            const RESET: &str = "RESET enable_hashjoin; RESET enable_mergejoin";
            match present {
                // Sent with the insert below, in one round trip, when no count is needed.
                None => pending.push(format!("{NESTED_LOOP}; {delete}; {RESET}")),
                Some(present) => {
                    tx.batch_execute(NESTED_LOOP)?;
                    let deleted = tx.execute(&delete, &[])?;
                    tx.batch_execute(RESET)?;
                    let deletes: Vec<&Action> = actions.iter().filter(|a| !a.upsert).collect();
                    check_deleted(batch, &deletes, present, deleted)?;
                }
            }
        }
        if let Some(span) = span(true) {
            done.upserts = actions.iter().filter(|a| a.upsert).count() as u64;
            copy_lines(
                tx,
                &format!("{stage_rows} ({})", names.join(", ")),
                segment,
                &segment.rows[span],
            )?;
            let action = conflict_action(&fields, key);
            let insert = format!(
                "INSERT INTO {target} ({cols}) SELECT {cols} FROM {stage_rows} ON CONFLICT ({keys}) DO {action}",
                cols = names.join(", "),
                keys = key_names.join(", ")
            );
            match present {
                None => pending.push(insert),
                Some(present) => {
                    // `xmax = 0` marks a row this statement inserted rather than updated.
                    let inserted: i64 = tx
                        .query_one(
                            &format!(
                                "WITH written AS ({insert} RETURNING (xmax = 0) AS inserted)
                                 SELECT count(*) FILTER (WHERE inserted) FROM written"
                            ),
                            &[],
                        )?
                        .get(0);
                    let upserts: Vec<&Action> = actions.iter().filter(|a| a.upsert).collect();
                    check_inserted(&upserts, present, inserted)?;
                }
            }
        }
        if !pending.is_empty() {
            tx.batch_execute(&pending.join(";\n"))?;
        }
        Ok(done)
    }

    /// Whether `actions` are all inserts or copied rows, of a table where a direct COPY
    /// has not been refused. Such rows are nearly always new (a copy into an empty
    /// target, or inserts streamed after it), so they are COPYed straight into the target,
    /// without staging them and merging (half the server's work per row).
    fn copies_directly(&self, batch: &ChangeBatch, actions: &[Action]) -> bool {
        if actions.is_empty() || self.direct_refused.borrow().contains(&self.table) {
            return false;
        }
        let ops = arrow::array::AsArray::as_string::<i32>(batch.data.column(0));
        actions
            .iter()
            .all(|a| a.upsert && matches!(Op::parse(ops.value(a.row)), Some(Op::Create | Op::Read)))
    }

    /// COPYs the segment's `rows` (staging lines, in the target's column order `names`)
    /// into the target.
    /// A refusal (a key already there, or any other) is undone, the table's rows go
    /// through staging from then on, and false says to merge them that way: the merge
    /// then updates, or isolates the row at fault. Without savepoints (`optimistic`), the
    /// refusal fails the transaction instead, which is applied again with them.
    fn copy_direct(
        &self,
        tx: &mut Transaction<'_>,
        names: &[String],
        segment: &PreparedSegment,
        rows: std::ops::Range<usize>,
    ) -> Result<bool, MergeError> {
        const SAVEPOINT: &str = "weir_direct_copy";
        if segment.binary && !self.declared_types_hold(tx)? {
            // Binary tuples straight into a table whose column types changed under weir
            // would be read as the new types; staging (the types weir knows) and the
            // merge's casts apply or refuse them as COPY text would.
            self.direct_refused.borrow_mut().insert(self.table.clone());
            tracing::warn!(
                table = %self.table,
                "the target table's column types changed while weir ran; merging through staging"
            );
            return Ok(false);
        }
        let optimistic = self.optimistic.get();
        if !optimistic {
            tx.batch_execute(&format!("SAVEPOINT {SAVEPOINT}"))?;
        }
        let into = format!("{} ({})", self.target(), names.join(", "));
        let copied = copy_lines(tx, &into, segment, &segment.rows[rows]);
        let Err(refusal) = copied else {
            if !optimistic {
                tx.batch_execute(&format!("RELEASE SAVEPOINT {SAVEPOINT}"))?;
            }
            return Ok(true);
        };
        self.direct_refused.borrow_mut().insert(self.table.clone());
        tracing::debug!(table = %self.table, "a direct COPY was refused; merging through staging");
        if optimistic {
            return Err(refusal);
        }
        match tx.batch_execute(&format!(
            "ROLLBACK TO SAVEPOINT {SAVEPOINT}; RELEASE SAVEPOINT {SAVEPOINT}"
        )) {
            Ok(()) => Ok(false),
            Err(_) => Err(refusal),
        }
    }

    pub(super) fn append(
        &self,
        tx: &mut Transaction<'_>,
        batch: &ChangeBatch,
        include: Option<&[bool]>,
        rejects: &mut dyn Rejects,
        applied: &mut Applied,
    ) -> Result<(), SinkError> {
        let rows: Vec<usize> = (0..batch.num_rows())
            .filter(|i| include.is_none_or(|m| m[*i]))
            .collect();
        let mut copy = |tx: &mut Transaction<'_>, rows: &[usize]| {
            Ok(Applied {
                appended: self.copy_changes(tx, batch, rows)?,
                ..Applied::default()
            })
        };
        self.isolating(tx, batch, &rows, &mut copy, rejects, applied)
    }

    /// COPYs changes into the change-log table: envelope columns, then the row (the
    /// `before` image for deletes).
    pub(super) fn copy_changes(
        &self,
        tx: &mut Transaction<'_>,
        batch: &ChangeBatch,
        rows: &[usize],
    ) -> Result<u64, MergeError> {
        let fields = batch.row_fields();
        let mut names: Vec<String> = APPEND_COLUMNS.iter().map(|(n, _)| quote(n)).collect();
        names.extend(fields.iter().map(|f| quote(f.name())));
        let data = &batch.data;
        let column = |name: &str| {
            data.column(data.schema().index_of(name).expect("envelope column"))
                .clone()
        };
        let envelope_columns = [
            column(envelope::OP),
            column(envelope::EVENT_TIME),
            column(envelope::SOURCE_TIME),
            column(envelope::SOURCE_POSITION),
            column(envelope::SOURCE_TXID),
        ];
        let ops: Vec<Op> = batch.ops().collect();
        let mut out = Vec::new();
        for &row in rows {
            for c in &envelope_columns {
                copy_value(&mut out, c.as_ref(), row);
                out.push(b'\t');
            }
            let position = &batch.positions[row];
            out.extend_from_slice(position.stream_key().as_bytes());
            let _ = write!(out, "\t{}", position.offset());
            let image = if ops[row] == Op::Delete {
                batch.before()
            } else {
                batch.after()
            };
            for c in image.columns() {
                out.push(b'\t');
                copy_value(&mut out, c.as_ref(), row);
            }
            out.push(b'\n');
        }
        let mut writer = tx.copy_in(&format!(
            "COPY {} ({}) FROM STDIN",
            self.target(),
            names.join(", ")
        ))?;
        writer.write_all(&out)?;
        writer.finish()?;
        Ok(rows.len() as u64)
    }
}

/// What `ON CONFLICT (key) DO …` does for rows of `fields`: update every non-key column
/// from the proposed row, or nothing when all columns are key columns.
pub(super) fn conflict_action(fields: &arrow::datatypes::Fields, key: &[String]) -> String {
    let updates: Vec<String> = fields
        .iter()
        .filter(|f| !key.contains(f.name()))
        .map(|f| {
            let name = quote(f.name());
            format!("{name} = EXCLUDED.{name}")
        })
        .collect();
    if updates.is_empty() {
        "NOTHING".to_string()
    } else {
        format!("UPDATE SET {}", updates.join(", "))
    }
}

/// With `present` (per row: whether its key had a row when read under lock), checks that
/// deleting the keys of `deletes` removed as many rows as it should have.
pub(super) fn check_deleted(
    batch: &ChangeBatch,
    deletes: &[&Action],
    present: &[bool],
    deleted: u64,
) -> Result<(), MergeError> {
    // A delete of a key that was present removes one row; one of a key that was not,
    // none; the old key of an update that moved it, either.
    let ops: Vec<Op> = batch.ops().collect();
    let least = deletes
        .iter()
        .filter(|a| ops[a.row] == Op::Delete && present[a.row])
        .count() as u64;
    let moved = deletes.iter().filter(|a| ops[a.row] != Op::Delete).count() as u64;
    if !(least..=least + moved).contains(&deleted) {
        return Err(MergeError::Raced(format!(
            "the batch deleted {deleted} rows where {least} were read under lock; another \
             writer changed these keys meanwhile, so the batch is applied again"
        )));
    }
    Ok(())
}

/// Checks that upserting `upserts` inserted a row exactly for the keys that had none.
pub(super) fn check_inserted(
    upserts: &[&Action],
    present: &[bool],
    inserted: i64,
) -> Result<(), MergeError> {
    let expected = upserts.iter().filter(|a| !present[a.row]).count() as i64;
    if inserted != expected {
        return Err(MergeError::Raced(format!(
            "the batch inserted {inserted} rows where {expected} keys had none when read \
             under lock; another writer inserted some meanwhile, so the batch is applied \
             again"
        )));
    }
    Ok(())
}

impl PostgresSink {
    /// Whether the target's columns still have the types weir read (`columns`), checked
    /// under a lock that keeps them so until the transaction ends: an `ALTER TABLE` by
    /// someone else since weir read them is seen here, one after waits for the commit.
    fn declared_types_hold(&self, tx: &mut Transaction<'_>) -> Result<bool, MergeError> {
        let target = self.target();
        tx.batch_execute(&format!("LOCK TABLE {target} IN ROW EXCLUSIVE MODE"))?;
        let rows = tx.query(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped",
            &[&target],
        )?;
        let now: BTreeMap<String, String> = rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect();
        Ok(now == self.columns)
    }
}

/// COPYs `lines` of `segment` (text lines, or binary tuples between the binary format's
/// header and trailer) into `into` (a table and its columns).
fn copy_lines(
    tx: &mut Transaction<'_>,
    into: &str,
    segment: &PreparedSegment,
    lines: &[u8],
) -> Result<(), MergeError> {
    let format = if segment.binary {
        " WITH (FORMAT binary)"
    } else {
        ""
    };
    let mut writer = tx.copy_in(&format!("COPY {into} FROM STDIN{format}"))?;
    if segment.binary {
        writer.write_all(super::binary::HEADER)?;
    }
    writer.write_all(lines)?;
    if segment.binary {
        writer.write_all(super::binary::TRAILER)?;
    }
    writer.finish()?;
    Ok(())
}

/// A failure while merging: from the server, or writing COPY data (the connection).
pub(super) enum MergeError {
    Pg(postgres::Error),
    Io(std::io::Error),
    /// Another writer changed a key between the locked read and the write.
    Raced(String),
}

impl From<postgres::Error> for MergeError {
    fn from(e: postgres::Error) -> Self {
        MergeError::Pg(e)
    }
}

impl From<std::io::Error> for MergeError {
    fn from(e: std::io::Error) -> Self {
        MergeError::Io(e)
    }
}
