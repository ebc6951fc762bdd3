//! Resolver plugins (`conflict: { strategy: wasm }`) in the PostgreSQL sink (docs/sync.md).
//!
//! Inside the batch's transaction, round by round (a round holds each key once; see
//! [`crate::sink::resolve`]): lock and read the target's rows for the round's keys
//! (`SELECT … FOR UPDATE`), hand them to the resolver with the incoming changes, and
//! write what it decided through the sink's usual staged merge. A key without a row is
//! not locked; if an application inserts it between the read and the write, the merge's
//! count check fails the batch as retryable and the retry reads the new row.
//!
//! Once-only apply: the identity of every decided change is kept in `weir.applied`, in
//! the same transaction, and a copy delivered again under another position is skipped
//! (`duplicates_skipped`), as in the SQLite sink.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, StringArray, StructArray, UInt32Array};
use arrow::compute::{interleave, take_record_batch};
use arrow::datatypes::{DataType, Field, TimeUnit};
use postgres::Transaction;
use postgres::types::ToSql;
use rusqlite::types::Value;

use super::conflict::key_columns;
use super::{PostgresSink, quote};
use crate::encode;
use crate::envelope::{AFTER, ChangeBatch, Op};
use crate::plugin::resolver::{ResolverPlugin, Verdict};
use crate::sink::compact::keys;
use crate::sink::resolve::{Round, current_rows, resolve_round, rounds};
use crate::sink::{Applied, Rejects, SinkError, applied};

/// Identities past the horizon are removed at most this often.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// How a column is read back for the resolver: the SQL expression over `t.<column>` and
/// the form its value comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Integer,
    Real,
    Boolean,
    Bytes,
    Text,
}

/// The expression that reads column `name` of the target row `t` in the form
/// [`crate::sink::resolve::arrow_column`] reads back as `field`'s type.
fn read_expression(field: &Field) -> (String, Form) {
    let column = format!("t.{}", quote(field.name()));
    let per_second = |unit: &TimeUnit| match unit {
        TimeUnit::Second => 1,
        TimeUnit::Millisecond => 1_000,
        TimeUnit::Microsecond => 1_000_000,
        TimeUnit::Nanosecond => 1_000_000_000,
    };
    match field.data_type() {
        t if t.is_integer() => (format!("{column}::bigint"), Form::Integer),
        DataType::Duration(unit) => (
            format!(
                "(extract(epoch FROM {column}::interval) * {})::bigint",
                per_second(unit)
            ),
            Form::Integer,
        ),
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            (format!("{column}::float8"), Form::Real)
        }
        DataType::Boolean => (format!("{column}::boolean"), Form::Boolean),
        DataType::Binary | DataType::LargeBinary | DataType::FixedSizeBinary(_) => {
            (format!("{column}::bytea"), Form::Bytes)
        }
        // Instants as UTC text ending in `Z`, whatever the session's time zone.
        DataType::Timestamp(_, Some(_)) => (
            format!(
                "to_char({column}::timestamptz AT TIME ZONE 'UTC', \
                 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
            ),
            Form::Text,
        ),
        DataType::Timestamp(_, None) => (
            format!("to_char({column}::timestamp, 'YYYY-MM-DD\"T\"HH24:MI:SS.US')"),
            Form::Text,
        ),
        DataType::Date32 | DataType::Date64 => {
            (format!("to_char({column}::date, 'YYYY-MM-DD')"), Form::Text)
        }
        DataType::Time32(_) | DataType::Time64(_) => (format!("{column}::time::text"), Form::Text),
        // Decimals as exact numeric text; text, JSON and UUIDs as their text.
        _ => (format!("{column}::text"), Form::Text),
    }
}

/// Value `i` of a row, in its form.
fn value(row: &postgres::Row, i: usize, form: Form) -> Result<Value, postgres::Error> {
    Ok(match form {
        Form::Integer => row.try_get::<_, Option<i64>>(i)?.map(Value::Integer),
        Form::Real => row.try_get::<_, Option<f64>>(i)?.map(Value::Real),
        Form::Boolean => row
            .try_get::<_, Option<bool>>(i)?
            .map(|b| Value::Integer(b as i64)),
        Form::Bytes => row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob),
        Form::Text => row.try_get::<_, Option<String>>(i)?.map(Value::Text),
    }
    .unwrap_or(Value::Null))
}

/// Remembers the rows the target refused, passing them on.
struct Noting<'a> {
    inner: &'a mut dyn Rejects,
    rows: HashSet<usize>,
}

impl Rejects for Noting<'_> {
    fn reject(&mut self, batch: &ChangeBatch, row: usize, error: &str) -> Result<(), SinkError> {
        self.rows.insert(row);
        self.inner.reject(batch, row, error)
    }
}

impl PostgresSink {
    /// The name changes are recorded under in `weir.applied`.
    fn applied_target(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// Creates `weir.applied`, which holds the identities of the changes a resolver
    /// decided, for every target of this database.
    pub(super) fn prepare_applied(client: &mut postgres::Client) -> Result<(), postgres::Error> {
        super::run_ddl(
            client,
            "CREATE TABLE IF NOT EXISTS weir.applied (
                 target text NOT NULL,
                 identity text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (target, identity)
             )",
        )
    }

    /// Applies a batch through the resolver (see the module's documentation).
    pub(super) fn upsert_resolved(
        &self,
        tx: &mut Transaction<'_>,
        resolver: &mut ResolverPlugin,
        batch: &ChangeBatch,
        include: Option<&[bool]>,
        rejects: &mut dyn Rejects,
        applied: &mut Applied,
    ) -> Result<(), SinkError> {
        let target = self.applied_target();
        if self
            .applied_pruned
            .get()
            .is_none_or(|at| at.elapsed() >= PRUNE_EVERY)
        {
            tx.execute(
                "DELETE FROM weir.applied
                 WHERE target = $1 AND applied_at < now() - make_interval(secs => $2)",
                &[&target, &self.applied_horizon.as_secs_f64()],
            )
            .map_err(|e| self.pg_error("cannot prune weir.applied", &e))?;
            self.applied_pruned.set(Some(Instant::now()));
        }
        // A change whose identity is held was decided before, under another position:
        // deciding it again would apply it twice. Copies within the batch count too.
        let identities = applied::identities(batch).map_err(|e| self.error(e))?;
        let mut include: Vec<bool> = (0..batch.num_rows())
            .map(|row| include.is_none_or(|m| m[row]))
            .collect();
        let candidates: Vec<&str> = (identities.iter().zip(&include))
            .filter_map(|(identity, included)| identity.as_deref().filter(|_| *included))
            .collect();
        let known: HashSet<String> = tx
            .query(
                "SELECT identity FROM weir.applied WHERE target = $1 AND identity = ANY($2)",
                &[&target, &candidates],
            )
            .map_err(|e| self.pg_error("cannot read weir.applied", &e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        applied.duplicates += applied::skip_known(&identities, &mut include, |id| {
            Ok::<_, SinkError>(known.contains(id))
        })?;
        let mut decided: Vec<&str> = Vec::new();
        let keys = keys(batch).map_err(|e| self.error(e))?;
        for round in rounds(batch, &keys, Some(&include)) {
            let rows = match round {
                Round::Truncate => {
                    tx.batch_execute(&format!("DELETE FROM {}", self.target()))
                        .map_err(|e| self.pg_error("cannot truncate", &e))?;
                    applied.truncates += 1;
                    continue;
                }
                Round::Changes(rows) => rows,
            };
            let written = self.resolve_round(tx, resolver, batch, &rows, rejects, applied)?;
            decided.extend(
                rows.iter()
                    .zip(written)
                    .filter(|(_, decided)| *decided)
                    .filter_map(|(&row, _)| identities[row].as_deref()),
            );
        }
        if !decided.is_empty() {
            tx.execute(
                "INSERT INTO weir.applied (target, identity)
                 SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
                &[&target, &decided],
            )
            .map_err(|e| self.pg_error("cannot record in weir.applied", &e))?;
        }
        Ok(())
    }

    /// Resolves and writes one round; per row, whether its change was decided (applied,
    /// skipped or merged) rather than sent to the dead-letter output.
    fn resolve_round(
        &self,
        tx: &mut Transaction<'_>,
        resolver: &mut ResolverPlugin,
        batch: &ChangeBatch,
        rows: &[usize],
        rejects: &mut dyn Rejects,
        applied: &mut Applied,
    ) -> Result<Vec<bool>, SinkError> {
        let (current, present) = self.read_current(tx, batch, rows)?;
        let error = |e| self.error(e);
        let Some(resolution) = resolve_round(resolver, batch, rows, current, rejects, error)?
        else {
            return Ok(vec![false; rows.len()]);
        };
        // The rows to write: applied changes as they came, merged rows as inserts of the
        // merged image (the sink upserts them by key).
        let mut write: Vec<usize> = Vec::new();
        let mut merged_at: Vec<(usize, usize)> = Vec::new();
        let mut decided = vec![true; rows.len()];
        for (i, (&row, verdict)) in rows.iter().zip(&resolution.verdicts).enumerate() {
            match verdict {
                Verdict::Apply => write.push(i),
                Verdict::Merge(m) => {
                    merged_at.push((write.len(), *m));
                    write.push(i);
                }
                Verdict::Skip => applied.skipped += 1,
                Verdict::Rejected(message) => {
                    decided[i] = false;
                    let reason = format!(
                        "plugin_row_error: {} (resolver `{}`)",
                        crate::redact::redact(message),
                        resolver.name()
                    );
                    rejects.reject(batch, row, &reason)?;
                }
            }
        }
        if write.is_empty() {
            return Ok(decided);
        }
        let batch_rows: Vec<usize> = write.iter().map(|&i| rows[i]).collect();
        let to_write = self.round_batch(batch, &batch_rows, &merged_at, &resolution.merged)?;
        let present: Vec<bool> = write.iter().map(|&i| present[i]).collect();
        let mut noting = Noting {
            inner: rejects,
            rows: HashSet::new(),
        };
        let mut done = Applied::default();
        self.upsert(
            tx,
            &to_write,
            None,
            None,
            &mut noting,
            &mut done,
            Some(&present),
        )?;
        let merges = merged_at
            .iter()
            .filter(|(at, _)| !noting.rows.contains(at))
            .count() as u64;
        applied.upserts += done.upserts.saturating_sub(merges);
        applied.merged += merges;
        applied.deletes += done.deletes;
        // A change the target refused went to the dead-letter output: not decided.
        for (at, &i) in write.iter().enumerate() {
            if noting.rows.contains(&at) {
                decided[i] = false;
            }
        }
        Ok(decided)
    }

    /// Locks and reads the target's row for the key of each of `rows` (`before`'s for a
    /// delete, `after`'s otherwise), as the resolver's `current` argument, with whether
    /// each key had a row.
    fn read_current(
        &self,
        tx: &mut Transaction<'_>,
        batch: &ChangeBatch,
        rows: &[usize],
    ) -> Result<(StructArray, Vec<bool>), SinkError> {
        let key = &batch.table.primary_key;
        let keys_before =
            crate::sink::compact::key_columns(batch, batch.before()).map_err(|e| self.error(e))?;
        let keys_after =
            crate::sink::compact::key_columns(batch, batch.after()).map_err(|e| self.error(e))?;
        let ops: Vec<Op> = batch.ops().collect();
        let texts: Vec<Vec<String>> = rows
            .iter()
            .map(|&row| {
                let image = match ops[row] {
                    Op::Delete => &keys_before,
                    _ => &keys_after,
                };
                image
                    .iter()
                    .map(|c| encode::text(c.as_ref(), row).map(|t| t.into_owned()))
                    .collect::<Option<Vec<String>>>()
                    .ok_or_else(|| self.error("a change has a null primary key column"))
            })
            .collect::<Result<_, _>>()?;
        let columns = key_columns(key.len(), &texts);
        let ordinals: Vec<i32> = (0..rows.len() as i32).collect();
        let mut params: Vec<&(dyn ToSql + Sync)> =
            columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        params.push(&ordinals);
        let (unnest, on) = self.numbered_keys(key)?;
        let fields = batch.row_fields();
        let (expressions, forms): (Vec<String>, Vec<Form>) =
            fields.iter().map(|f| read_expression(f)).unzip();
        let found = tx
            .query(
                &format!(
                    "SELECT k.i, {} FROM {} t JOIN {unnest} ON {on} ORDER BY k.i FOR UPDATE OF t",
                    expressions.join(", "),
                    self.target()
                ),
                &params,
            )
            .map_err(|e| self.pg_error("cannot read the current rows", &e))?;
        let mut values: Vec<Vec<Value>> = vec![vec![Value::Null; rows.len()]; fields.len()];
        let mut present = vec![false; rows.len()];
        for row in found {
            let i = row.get::<_, i32>(0) as usize;
            present[i] = true;
            for (column, form) in forms.iter().enumerate() {
                values[column][i] = value(&row, column + 1, *form)
                    .map_err(|e| self.pg_error("cannot read the current rows", &e))?;
            }
        }
        let current = current_rows(&fields, &values, present.clone())
            .map_err(|e| self.error(format!("reading the current rows: {e}")))?;
        Ok((current, present))
    }

    /// The changes to write for a round: rows `rows` of `batch`, where `merged_at` names
    /// positions (in `rows`) to replace by an insert of row `m` of `merged`.
    fn round_batch(
        &self,
        batch: &ChangeBatch,
        rows: &[usize],
        merged_at: &[(usize, usize)],
        merged: &arrow::array::RecordBatch,
    ) -> Result<ChangeBatch, SinkError> {
        let error = |e: arrow::error::ArrowError| self.error(e.to_string());
        let indices = UInt32Array::from_iter_values(rows.iter().map(|&r| r as u32));
        let data = take_record_batch(&batch.data, &indices).map_err(error)?;
        let positions = rows.iter().map(|&r| batch.positions[r].clone()).collect();
        let data = if merged_at.is_empty() {
            data
        } else {
            let schema = data.schema();
            let after_at = schema.index_of(AFTER).map_err(error)?;
            let after = data.column(after_at).as_struct();
            let merged =
                StructArray::try_new(after.fields().clone(), merged.columns().to_vec(), None)
                    .map_err(error)?;
            let mut from: Vec<(usize, usize)> = (0..rows.len()).map(|i| (0, i)).collect();
            let mut ops: Vec<String> = data
                .column(0)
                .as_string::<i32>()
                .iter()
                .map(|op| op.unwrap_or_default().to_string())
                .collect();
            for &(at, m) in merged_at {
                from[at] = (1, m);
                ops[at] = Op::Create.as_str().to_string();
            }
            let after = interleave(&[after as &dyn Array, &merged], &from).map_err(error)?;
            let mut columns = data.columns().to_vec();
            columns[after_at] = after;
            columns[0] = Arc::new(StringArray::from(ops)) as ArrayRef;
            arrow::array::RecordBatch::try_new(schema, columns).map_err(error)?
        };
        Ok(ChangeBatch {
            data,
            positions: Arc::new(positions),
            checkpoint: batch.checkpoint.clone(),
            table: batch.table.clone(),
        })
    }
}
