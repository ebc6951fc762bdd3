//! The copy of the selected tables' rows, before the stream starts.
//!
//! One REPEATABLE READ transaction reads every table: in the snapshot the new slot
//! exported (so the stream then starts exactly where the copy ends), or, when a copy is
//! resumed after a restart, in a new snapshot. A resumed copy is later than the slot's
//! consistent point; the stream then replays every change since that point over it, and
//! since each change sets a whole row by key (or deletes it), the target still ends equal
//! to the source. Each table is read through a cursor in primary key order, a chunk of
//! `chunk_rows` at a time.
//!
//! A table whose primary key is one integer column resumes after the last row the sink
//! applied: its rows are placed by their key in the stream `postgres-snapshot:<table>`.
//! Other tables are copied again from the start after a restart, under a stream named for
//! that copy (`…@<LSN>`), so no row of the new copy counts as applied. A table's last row
//! resumes at `i64::MAX`: the table is done.

use std::collections::VecDeque;
use std::sync::Arc;

use postgres::{Client, SimpleQueryMessage, SimpleQueryRow};

use super::catalog::{SourceTable, describe_error};
use super::events::{Relation, SourceInfo, Value};
use super::{PostgresCdcSourceConfig, SnapshotMode, connect, lsn_text};
use crate::lifecycle::State;
use crate::metrics::Metrics;
use crate::position::{Checkpoint, Position, ResumePoint};
use crate::sink::postgres::quote;
use crate::source::{PollLimits, RawBatch};

/// How the checkpoint stream of every table's copy begins.
const COPY_STREAM: &str = "postgres-snapshot:";

/// The checkpoint stream of a table's copy, without a copy suffix.
pub fn table_stream(table: &str) -> String {
    format!("{COPY_STREAM}{table}")
}

/// Whether a checkpoint stream is a table's copy (not the replication stream).
pub fn is_copy_stream(stream: &str) -> bool {
    stream.starts_with(COPY_STREAM)
}

/// Resume point of a table whose copy is finished.
const DONE: i64 = i64::MAX;

struct Plan {
    table: SourceTable,
    relation: Relation,
    stream: Arc<str>,
    /// The integer key column, when the copy is placed by key.
    key: Option<usize>,
    /// Resume after this key (a copy resumed by key).
    after: Option<i64>,
    /// The source's estimate of its rows.
    estimated: Option<u64>,
    /// Empty the target table first (a resync: rows deleted while the stream was lost
    /// must go too).
    truncate: bool,
}

/// Where a copy stands against the stream.
pub struct CopyPoint<'a> {
    /// The snapshot the new slot exported, to read in.
    pub exported: Option<&'a str>,
    /// The position the copy is as of: the slot's consistent point, or the current LSN.
    pub lsn: u64,
    /// A resync's copy, named for the new slot's start.
    pub resync_at: Option<u64>,
    /// A copy of tables added to the publication while streaming, as of a temporary
    /// slot's point: every table is copied whole under a name of its own (`…@<LSN>`),
    /// since an earlier copy of it (before it left the publication, or cut short) is
    /// older than the stream it now joins.
    pub late: bool,
}

/// Whether a table's newest copy has finished (`Some(true)`), begun and not finished
/// (`Some(false)`), or left no position (`None`: never begun, or an empty table). Copies
/// are named `…`, `…@<LSN>` or `…@<LSN>+<LSN>`; the greatest LSNs are the newest.
pub fn copy_finished(checkpoint: &Checkpoint, table: &str) -> Option<bool> {
    let base = table_stream(table);
    let generation = |stream: &str| -> Option<(u64, u64)> {
        if stream == base {
            return Some((0, 0));
        }
        let suffix = stream.strip_prefix(base.as_str())?.strip_prefix('@')?;
        let (first, second) = suffix.split_once('+').unwrap_or((suffix, "0/0"));
        Some((super::parse_lsn(first)?, super::parse_lsn(second)?))
    };
    checkpoint
        .streams
        .iter()
        .filter_map(|(stream, resume)| Some((generation(stream)?, resume.next == DONE)))
        .max_by_key(|(generation, _)| *generation)
        .map(|(_, finished)| finished)
}

pub struct Context<'a> {
    pub server: &'a str,
    pub db: &'a str,
    pub native: &'a crate::decode::native::NativeTables,
    /// When the poll began, in epoch milliseconds: the events' own `ts_ms`.
    pub now_ms: i64,
}

pub struct Snapshot {
    client: Client,
    plans: VecDeque<Plan>,
    current: Option<Plan>,
    /// Rows fetched and not yet emitted; one is kept back until the next fetch says
    /// whether it is the table's last.
    /// Kept as the server sent them: a value is read in place, not copied out.
    rows: VecDeque<SimpleQueryRow>,
    exhausted: bool,
    ordinal: i64,
    chunk_rows: usize,
    lsn: u64,
    ts_ms: i64,
    /// The copy's `txId`: the first transaction its snapshot does not see (every row it
    /// reads was written before it). Debezium's snapshot events carry one too.
    tx_id: Option<u32>,
    value: Vec<u8>,
    key: String,
    /// Every table of the copy, those finished by an earlier run included.
    names: Vec<String>,
    /// Rows of the current table read in this run.
    copied: u64,
    /// Tables whose copy has begun, of `total`.
    started: usize,
    total: usize,
    metrics: Arc<Metrics>,
}

impl Snapshot {
    /// Opens the copy's transaction and plans the tables still to copy.
    pub fn start(
        config: &PostgresCdcSourceConfig,
        server: &str,
        tables: Vec<SourceTable>,
        checkpoint: &Checkpoint,
        at: CopyPoint<'_>,
        metrics: Arc<Metrics>,
    ) -> Result<Snapshot, String> {
        let CopyPoint {
            exported,
            lsn,
            resync_at,
            late,
        } = at;
        let mut client = connect(config.url.expose())?;
        client
            // The transaction may wait idle for the stream to reach its point (a copy
            // while streaming): a server-wide idle timeout must not end it.
            .batch_execute(
                "SET idle_in_transaction_session_timeout = 0;
                 BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            )
            .map_err(|e| describe_error(&e))?;
        if let Some(name) = exported {
            if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(format!(
                    "the server exported a snapshot with an odd name: {name}"
                ));
            }
            client
                .batch_execute(&format!("SET TRANSACTION SNAPSHOT '{name}'"))
                .map_err(|e| {
                    format!("cannot read in the slot's snapshot: {}", describe_error(&e))
                })?;
        }
        // txid_* (not pg_snapshot_*) still works on PostgreSQL before 13; the low 32 bits
        // are the xid, as pgoutput sends transactions' ids.
        let tx_id = client
            .query_one(
                "SELECT (txid_snapshot_xmax(txid_current_snapshot()) % 4294967296)::bigint",
                &[],
            )
            .ok()
            .and_then(|row| row.get::<_, Option<i64>>(0))
            .and_then(|xid| u32::try_from(xid).ok());
        // A slot created now, where an earlier slot's copy had begun: that copy's rows
        // are older than this slot's stream, so every table is copied again.
        let earlier_copy = checkpoint
            .streams
            .keys()
            .any(|s| s.starts_with("postgres-snapshot:"));
        let again =
            config.snapshot == SnapshotMode::Always || late || (exported.is_some() && earlier_copy);
        let mut plans = VecDeque::new();
        let lifecycle = &metrics.lifecycle;
        let mut names = Vec::new();
        for table in tables {
            let name = table.name();
            names.push(name.clone());
            let base = table_stream(&name);
            // A resync's copies are named for the new slot's start; only theirs count.
            let generation = resync_at.map(|at| format!("{base}@{}", lsn_text(at)));
            let prefix = match &generation {
                Some(generation) => generation.clone(),
                None => format!("{base}@"),
            };
            let done = checkpoint.streams.iter().any(|(stream, resume)| {
                (stream.starts_with(&prefix) || (generation.is_none() && stream == &base))
                    && resume.next == DONE
            });
            if done && (!again || generation.is_some()) {
                lifecycle.table(&name, |t| {
                    t.state = Some(State::Snapshotting);
                    t.copied = true;
                    t.resumed_after = None;
                });
                continue;
            }
            let key = table.integer_key();
            let (stream, after, truncate) = match (&generation, key) {
                // A resync copy resumes by key where the sink stopped; a table it has
                // not reached yet is emptied first.
                (Some(generation), Some(_)) => match checkpoint.get(generation) {
                    Some(r) => (generation.clone(), Some(r.next), false),
                    None => (generation.clone(), None, true),
                },
                // A table without an integer key cannot resume its copy: emptied and
                // copied again from its start, under a name of its own.
                (Some(generation), None) => match checkpoint.get(generation) {
                    Some(_) => (format!("{generation}+{}", lsn_text(lsn)), None, true),
                    None => (generation.clone(), None, true),
                },
                (None, Some(_)) if !again => {
                    (base.clone(), checkpoint.get(&base).map(|r| r.next), false)
                }
                (None, _) => (format!("{base}@{}", lsn_text(lsn)), None, false),
            };
            let relation = Relation::new(
                server,
                table.schema.clone(),
                table.table.clone(),
                table.columns.clone(),
            );
            let estimated = estimate_rows(&mut client, &table);
            lifecycle.copy_planned(&name, &stream, DONE);
            lifecycle.table(&name, |t| {
                t.state = Some(State::SnapshotPending);
                t.copied = false;
                t.rows_copied = 0;
                t.rows_estimated = estimated;
                t.resumed_after = after.map(|key| key.to_string());
            });
            plans.push_back(Plan {
                table,
                relation,
                stream: stream.into(),
                key,
                after,
                estimated,
                truncate,
            });
        }
        let total = plans.len();
        lifecycle.phase(
            State::SnapshotPending,
            format!("{total} of {} tables to copy", names.len()),
        );
        tracing::info!(
            tables = plans.len(),
            lsn = %lsn_text(lsn),
            exported = exported.is_some(),
            "copying tables"
        );
        Ok(Snapshot {
            client,
            plans,
            current: None,
            rows: VecDeque::new(),
            exhausted: false,
            ordinal: 0,
            chunk_rows: config.chunk_rows.max(1),
            lsn,
            ts_ms: chrono::Utc::now().timestamp_millis(),
            tx_id,
            value: Vec::new(),
            key: String::new(),
            names,
            copied: 0,
            started: 0,
            total,
            metrics,
        })
    }

    /// Reports the current table's progress, and the rows left to copy, for `weir status`.
    fn report(&self) {
        let lifecycle = &self.metrics.lifecycle;
        let mut left = self.plans.iter().filter_map(|p| p.estimated).sum::<u64>();
        if let Some(plan) = &self.current {
            let copied = self.copied;
            lifecycle.table(&plan.table.name(), |t| t.rows_copied = copied);
            left += plan.estimated.unwrap_or(0).saturating_sub(copied);
        }
        lifecycle.lag_events(Some(left));
    }

    /// The current table's copy has been read (it is copied once the sink has applied
    /// its last row: [`crate::lifecycle::Lifecycle::durable`]).
    fn close_table(&mut self) {
        self.report();
        if let Some(plan) = self.current.take()
            && self.copied == 0
        {
            let lifecycle = &self.metrics.lifecycle;
            if plan.truncate {
                // Only the truncate to apply.
                lifecycle.copy_planned(&plan.table.name(), &plan.stream, i64::MIN);
            } else {
                // Nothing to apply: an empty table (or one whose last row was applied).
                lifecycle.copy_applied(&plan.table.name());
            }
        }
    }

    /// Adds copied rows to `batch` up to the limits. False once every table is copied.
    pub fn poll(
        &mut self,
        batch: &mut RawBatch,
        limits: &PollLimits,
        context: &Context<'_>,
    ) -> Result<bool, String> {
        loop {
            if limits.filled(batch) {
                self.report();
                return Ok(true);
            }
            if self.current.is_none() {
                let Some(plan) = self.plans.pop_front() else {
                    return Ok(false);
                };
                self.open(&plan)?;
                if plan.truncate {
                    self.emit_truncate(batch, &plan, context)?;
                }
                self.current = Some(plan);
            }
            if self.rows.len() < 2 && !self.exhausted {
                self.fetch()?;
            }
            let Some(row) = self.rows.pop_front() else {
                // An empty table, or its last row emitted.
                self.close_table();
                continue;
            };
            let last = self.exhausted && self.rows.is_empty();
            self.emit(batch, row, last, context)?;
            if last {
                self.close_table();
            }
        }
    }

    fn open(&mut self, plan: &Plan) -> Result<(), String> {
        let columns: Vec<String> = plan.table.columns.iter().map(|c| quote(&c.name)).collect();
        let keys: Vec<String> = plan
            .table
            .columns
            .iter()
            .filter(|c| c.key)
            .map(|c| quote(&c.name))
            .collect();
        let mut sql = format!(
            "DECLARE weir_copy NO SCROLL CURSOR FOR SELECT {} FROM {}",
            columns.join(", "),
            plan.table.quoted()
        );
        if let (Some(after), Some(key)) = (plan.after, plan.key) {
            sql.push_str(&format!(
                " WHERE {} > {after}",
                quote(&plan.table.columns[key].name)
            ));
        }
        if !keys.is_empty() {
            sql.push_str(&format!(" ORDER BY {}", keys.join(", ")));
        }
        self.client
            .batch_execute(&sql)
            .map_err(|e| format!("cannot copy {}: {}", plan.table.name(), describe_error(&e)))?;
        self.rows.clear();
        self.exhausted = false;
        self.ordinal = 0;
        self.copied = 0;
        self.started += 1;
        let name = plan.table.name();
        tracing::info!(table = %name, after = ?plan.after, "copying");
        let lifecycle = &self.metrics.lifecycle;
        lifecycle.table(&name, |t| t.state = Some(State::Snapshotting));
        lifecycle.phase(
            State::Snapshotting,
            format!("copying {name} (table {} of {})", self.started, self.total),
        );
        // Recorded now: a short copy would otherwise end before the next refresh, and
        // the transitions would not show that a resync copied anything.
        lifecycle.refresh(&self.metrics.health);
        Ok(())
    }

    fn fetch(&mut self) -> Result<(), String> {
        let messages = self
            .client
            .simple_query(&format!("FETCH FORWARD {} FROM weir_copy", self.chunk_rows))
            .map_err(|e| format!("copy: {}", describe_error(&e)))?;
        let mut fetched = 0;
        for message in messages {
            if let SimpleQueryMessage::Row(row) = message {
                fetched += 1;
                self.rows.push_back(row);
            }
        }
        if fetched < self.chunk_rows {
            self.exhausted = true;
            self.client
                .batch_execute("CLOSE weir_copy")
                .map_err(|e| format!("copy: {}", describe_error(&e)))?;
        }
        Ok(())
    }

    fn emit(
        &mut self,
        batch: &mut RawBatch,
        row: SimpleQueryRow,
        last: bool,
        context: &Context<'_>,
    ) -> Result<(), String> {
        let plan = self.current.as_ref().expect("a table is open");
        let values = (0..row.len())
            .map(|i| match row.try_get(i) {
                Ok(value) => Ok(value.map_or(Value::Null, Value::Text)),
                Err(e) => Err(format!("a row of {}: {e}", plan.table.name())),
            })
            .collect::<Result<Vec<Value<'_>>, String>>()?;
        let source = self.source_info(context);
        plan.relation.write_event(
            context.native,
            &mut self.value,
            &mut self.key,
            "r",
            None,
            Some(&values),
            &source,
        )?;
        self.ordinal += 1;
        self.copied += 1;
        let at = match plan.key {
            Some(i) => match values.get(i) {
                Some(Value::Text(key)) => Some(*key),
                _ => None,
            }
            .and_then(|v| v.parse::<i64>().ok())
            .ok_or_else(|| format!("a row of {} without its key", plan.table.name()))?,
            None => self.ordinal,
        };
        let resume = if last {
            ResumePoint {
                next: DONE,
                line: 0,
            }
        } else {
            ResumePoint { next: at, line: 1 }
        };
        let position = Position::Postgres {
            stream: plan.stream.clone(),
            at,
            seq: 0,
            resume,
            lsn: self.lsn,
        };
        batch.push(
            (!self.key.is_empty()).then_some(self.key.as_bytes()),
            Some(&self.value),
            position,
        );
        Ok(())
    }

    /// The `source` block of the copy's events: all as of the copy's snapshot.
    fn source_info<'a>(&self, context: &Context<'a>) -> SourceInfo<'a> {
        SourceInfo {
            server: context.server,
            db: context.db,
            ts_ms: self.ts_ms,
            snapshot: "true",
            tx_id: self.tx_id,
            lsn: self.lsn,
            now_ms: context.now_ms,
        }
    }

    /// An event emptying the target table before a resync copies it again, placed
    /// before every row of the copy.
    fn emit_truncate(
        &mut self,
        batch: &mut RawBatch,
        plan: &Plan,
        context: &Context<'_>,
    ) -> Result<(), String> {
        let source = self.source_info(context);
        plan.relation.write_event(
            context.native,
            &mut self.value,
            &mut self.key,
            "t",
            None,
            None,
            &source,
        )?;
        let position = Position::Postgres {
            stream: plan.stream.clone(),
            at: i64::MIN,
            seq: 0,
            resume: ResumePoint {
                next: i64::MIN,
                line: 1,
            },
            lsn: self.lsn,
        };
        batch.push(None, Some(&self.value), position);
        Ok(())
    }

    /// Ends the copy's transaction; returns every table of the copy.
    pub fn finish(mut self) -> Result<Vec<String>, String> {
        self.client
            .batch_execute("COMMIT")
            .map_err(|e| format!("copy: {}", describe_error(&e)))?;
        Ok(std::mem::take(&mut self.names))
    }
}

/// The planner's estimate of a table's rows (over its partitions), if it has one: the
/// table may never have been analysed.
/// Asked under a savepoint: an error must not abort the copy's transaction.
fn estimate_rows(client: &mut Client, table: &SourceTable) -> Option<u64> {
    client.batch_execute("SAVEPOINT weir_estimate").ok()?;
    let row = client.query_one(
        "SELECT sum(reltuples)::float8 FROM pg_class
         WHERE reltuples >= 0 AND (oid = $1::text::regclass
             OR oid IN (SELECT relid FROM pg_partition_tree($1::text::regclass)))",
        &[&table.quoted()],
    );
    if let Err(e) = &row {
        tracing::debug!(table = %table.name(), error = %describe_error(e), "no row estimate");
    }
    let undo = if row.is_ok() {
        "RELEASE SAVEPOINT weir_estimate"
    } else {
        "ROLLBACK TO SAVEPOINT weir_estimate"
    };
    client.batch_execute(undo).ok()?;
    row.ok()?
        .get::<_, Option<f64>>(0)
        .map(|n| n.max(0.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_table_s_newest_copy_says_whether_it_is_copied() {
        let mut checkpoint = Checkpoint::default();
        let mut set = |stream: &str, next: i64| {
            checkpoint
                .streams
                .insert(stream.to_string(), ResumePoint { next, line: 0 });
        };
        set("postgres-snapshot:public.a", DONE);
        set("postgres-snapshot:public.b", 40);
        // `c` was copied, then copied again while streaming, cut short at key 7.
        set("postgres-snapshot:public.c", DONE);
        set("postgres-snapshot:public.c@0/2008818", 7);
        // `d`'s later copy (a greater LSN, not a greater text) finished.
        set("postgres-snapshot:public.d@0/1D50CE8", 3);
        set("postgres-snapshot:public.d@0/2008818", DONE);
        set("postgres-snapshot:public.d@0/1D50CE8+0/9", 5);
        // Another table whose name begins the same way.
        set("postgres-snapshot:public.ab", 1);
        assert_eq!(copy_finished(&checkpoint, "public.a"), Some(true));
        assert_eq!(copy_finished(&checkpoint, "public.b"), Some(false));
        assert_eq!(copy_finished(&checkpoint, "public.c"), Some(false));
        assert_eq!(copy_finished(&checkpoint, "public.d"), Some(true));
        assert_eq!(copy_finished(&checkpoint, "public.e"), None);
    }
}
