//! The PostgreSQL sink.
//!
//! Each batch is one transaction:
//! 1. lock this pipeline's checkpoint rows in `weir.checkpoints` (a placeholder row is
//!    inserted first, so the lock always has a row; two processes that both believe they
//!    own a partition during a rebalance are serialised here);
//! 2. skip the rows the table already holds (at or before the stored checkpoint);
//! 3. compact to one action per key; apply with `DELETE` and `INSERT … ON CONFLICT (key)
//!    DO UPDATE` from array parameters, one per column, or (a segment of many rows) from
//!    rows COPYed into temporary staging tables (`upsert` mode); or COPY every change
//!    into a change-log table (`append` mode);
//! 4. store the new checkpoint (never moving it backwards) and commit.
//!
//! A row the table refuses (a value out of range, a NOT NULL or CHECK violation) is found
//! by bisecting under a savepoint and goes to the dead-letter output before the commit;
//! the rest of the batch applies. A lost connection is retryable: the transaction rolls
//! back, nothing is half-applied, and the pipeline retries the batch on a new connection.
//! Identifiers are always quoted; values travel only as COPY data or parameters.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{
    DataType, Field, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, TimeUnit,
};
use postgres::error::SqlState;
use postgres::{Client, NoTls, Transaction};
use schemars::JsonSchema;
use serde::Deserialize;

mod arrays;
mod binary;
mod bisect;
mod checkpoint;
mod config;
mod conflict;
mod copy;
mod many;
mod merge;
mod resolved;
mod table;
mod types;

use super::compact::compact;
use super::versioned::Versioning;
use super::{Applied, Prepared, Preparer, Rejects, Sink, SinkError, unapplied};
use crate::config::LoadedPipeline;
use crate::decode::types::{ColumnType, SEMANTIC_KEY, Unit};
use crate::encode;
use crate::envelope::{self, ChangeBatch, Op};
use crate::plugin::resolver::ResolverPlugin;
use crate::position::{Checkpoint, ResumePoint};
use crate::redact::Secret;

pub(in crate::sink) use checkpoint::checkpoint_of;
pub use config::{PostgresMode, PostgresSinkConfig};
pub use types::{from_pg_declaration, pg_type, quote};

use binary::{Encoder, encoders, write_tuple};
use config::APPEND_COLUMNS;
use copy::*;
use merge::*;
use types::widens;

/// Whether an error may go away by itself (connection trouble, a deadlock, a restart).
fn retryable(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        None => true, // I/O and protocol errors: the connection is gone
        Some(code) => {
            let c = code.code();
            c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57P")
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                // `lock_timeout`: another session held the rows (a stopped process, see
                // `idle_transaction_timeout`); the batch is applied again.
                || *code == SqlState::LOCK_NOT_AVAILABLE
                // A statement cancelled (`statement_timeout`, an operator's
                // `pg_cancel_backend`): nothing was applied; the batch is applied again.
                || *code == SqlState::QUERY_CANCELED
                // A statement kept prepared was dropped under the connection (`DISCARD
                // ALL`, a pooler): the batch fails, the kept statements are forgotten, and
                // the retry prepares them again.
                || *code == SqlState::INVALID_SQL_STATEMENT_NAME
                // The server ended a session left idle inside its transaction
                // (`idle_transaction_timeout`: a process stopped mid-batch, then resumed)
                // or over `transaction_timeout` (PostgreSQL 17): the connection is gone,
                // nothing of the batch was committed, and the batch is applied again on
                // a new one.
                || c == "25P03"
                || c == "25P04"
        }
    }
}

/// Whether a DDL statement failed because another session ran the same one at the same
/// moment: `CREATE … IF NOT EXISTS` and `ADD COLUMN IF NOT EXISTS` are not safe against
/// each other (one fails on the catalog's unique index), and several processes of one
/// pipeline start together. A second attempt finds the object made.
fn concurrent_ddl(e: &postgres::Error) -> bool {
    e.code().is_some_and(|code| {
        [
            SqlState::UNIQUE_VIOLATION,
            SqlState::DUPLICATE_TABLE,
            SqlState::DUPLICATE_SCHEMA,
            SqlState::DUPLICATE_COLUMN,
            SqlState::DUPLICATE_OBJECT,
        ]
        .contains(code)
    })
}

/// Runs DDL that another weir session may run at the same moment, once more if that
/// session won the race ([`concurrent_ddl`]).
fn run_ddl(client: &mut Client, sql: &str) -> Result<(), postgres::Error> {
    match client.batch_execute(sql) {
        Err(e) if concurrent_ddl(&e) => client.batch_execute(sql),
        other => other,
    }
}

/// Whether an error is about the data of some row (so bisecting finds the culprit).
fn data_error(e: &postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
}

pub(crate) fn describe_error(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{} ({})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(&format!(": {detail}"));
            }
            if let Some(column) = db.column() {
                text.push_str(&format!(" [column {column}]"));
            }
            text
        }
        None => e.to_string(),
    }
}

pub struct PostgresSink {
    url: Secret,
    client: Option<Client>,
    /// The replication origin this sink's sessions mark their transactions with
    /// (`origin`; a lane's own, since one origin serves one session at a time).
    origin: Option<String>,
    schema: String,
    table: String,
    pipeline: String,
    mode: PostgresMode,
    create: bool,
    /// Target columns and their declared types, as last read.
    columns: BTreeMap<String, String>,
    /// Primary key columns of the target (upsert mode), as last read.
    target_key: Vec<String>,
    /// The row fields of the last batch whose columns were checked against the table.
    checked: Option<arrow::datatypes::Fields>,
    /// The staging tables this connection holds (their column list), created once per
    /// session with `ON COMMIT DELETE ROWS`: creating them per batch costs catalog writes.
    staged: RefCell<Option<String>>,
    /// Staging tables created in the current transaction, recorded in `staged` once it
    /// commits (a rollback takes them away again).
    staging_created: RefCell<Option<String>>,
    /// Whether the staging tables may hold rows from an earlier merge of this transaction.
    staging_dirty: Cell<bool>,
    /// Each target column's base type without its modifier (`character varying` for
    /// `varchar(5)`, `bpchar` for `char(3)`, a domain's base type; `table.rs`), which
    /// values sent as text are cast to.
    casts: BTreeMap<String, String>,
    /// Statements prepared on this connection, by their text (`arrays.rs`, `statement`).
    statements: RefCell<std::collections::HashMap<String, postgres::Statement>>,
    /// A built-in conflict strategy (`conflict:` in the pipeline), if any.
    versioning: Option<Arc<Versioning>>,
    /// Each table's strategy, in a many-table pipeline.
    versionings: crate::sink::versioned::VersioningByTable,
    /// Whether this connection has made sure of the tombstone table and trigger.
    conflict_ready: bool,
    /// When tombstones past the horizon were last removed.
    tombstones_collected: Cell<Option<std::time::Instant>>,
    /// The `conflict: { strategy: wasm }` resolver, called with the current rows.
    resolver: Option<ResolverPlugin>,
    /// How long identities of decided changes are kept in `weir.applied`.
    applied_horizon: std::time::Duration,
    /// When identities past the horizon were last removed.
    applied_pruned: Cell<Option<std::time::Instant>>,
    /// Which staging tables this table uses: 0 is `weir_rows`/`weir_keys`; a many-table
    /// pipeline gives each target table its own (`weir_rows_<n>`).
    stage: usize,
    /// What it knows of the other target tables of a many-table pipeline.
    parked: std::collections::HashMap<String, many::Parked>,
    /// Writes without savepoints, for a first attempt at a many-table transaction.
    optimistic: Cell<bool>,
    /// Set when an optimistic write was refused: the transaction is applied again with
    /// savepoints, which isolate the refused row.
    refused_optimistically: Cell<bool>,
    /// Target tables where a COPY of new rows straight into the table was refused (a key
    /// was there already): their rows go through staging from then on (`merge.rs`).
    direct_refused: RefCell<std::collections::HashSet<String>>,
    /// The checkpoint of the last transaction committed without waiting for its WAL
    /// flush (a copy's, `many.rs`), until a transaction that waits makes it durable.
    unflushed: Option<Checkpoint>,
    /// `idle_transaction_timeout`, set on every session.
    idle_transaction_timeout: std::time::Duration,
}

impl PostgresSink {
    pub fn open(pipeline: &LoadedPipeline, config: &PostgresSinkConfig) -> Result<Self, SinkError> {
        Self::open_as(pipeline, config, &pipeline.config.name)
    }

    /// Opens the sink storing its checkpoint under `checkpoint_name` (a lane's name).
    pub fn open_as(
        pipeline: &LoadedPipeline,
        config: &PostgresSinkConfig,
        checkpoint_name: &str,
    ) -> Result<Self, SinkError> {
        let qualified = config
            .table
            .clone()
            .unwrap_or_else(|| pipeline.table().map(|t| t.name.clone()).unwrap_or_default());
        let (schema, table) = match qualified.split_once('.') {
            Some((s, t)) => (s.to_string(), t.to_string()),
            None => (
                config.schema.clone().unwrap_or_else(|| "public".into()),
                qualified,
            ),
        };
        let origin = config.origin.as_ref().map(|origin| {
            // A lane's checkpoint name is the pipeline's plus ` /lane i of n`.
            let lane = checkpoint_name
                .strip_prefix(pipeline.config.name.as_str())
                .unwrap_or("");
            format!("{origin}{lane}")
        });
        let mut sink = PostgresSink {
            url: config.url.clone(),
            client: None,
            origin,
            schema,
            table,
            pipeline: checkpoint_name.to_string(),
            mode: config.mode,
            create: config.create,
            columns: BTreeMap::new(),
            target_key: Vec::new(),
            checked: None,
            staged: RefCell::new(None),
            staging_created: RefCell::new(None),
            staging_dirty: Cell::new(false),
            direct_refused: RefCell::new(Default::default()),
            casts: BTreeMap::new(),
            statements: RefCell::new(Default::default()),
            versioning: pipeline
                .config
                .conflict
                .as_ref()
                .and_then(Versioning::from_config)
                .map(Arc::new),
            versionings: crate::sink::versioned::VersioningByTable::new(&pipeline.config),
            conflict_ready: false,
            tombstones_collected: Cell::new(None),
            resolver: None,
            applied_horizon: Default::default(),
            applied_pruned: Cell::new(None),
            stage: 0,
            parked: Default::default(),
            optimistic: Cell::new(false),
            refused_optimistically: Cell::new(false),
            unflushed: None,
            idle_transaction_timeout: config.idle_transaction_timeout.0,
        };
        // Connect now, so a wrong URL or password fails the start, clearly.
        sink.client()?;
        if let Some(crate::conflict::ConflictConfig::Wasm(config)) = &pipeline.config.conflict {
            let client = sink.client.as_mut().expect("connected above");
            if let Err(e) = Self::prepare_applied(client) {
                return Err(sink.pg_error("cannot prepare weir.applied", &e));
            }
            sink.resolver =
                Some(ResolverPlugin::load(config.spec(pipeline)).map_err(|e| sink.error(e))?);
            sink.applied_horizon = config.applied_horizon.0;
        }
        // A many-table pipeline makes each table's when the table first comes.
        if let Some(versioning) = sink.versioning.clone()
            && sink.mode == PostgresMode::Upsert
            && pipeline.config.tables.is_none()
        {
            let mut client = sink.client.take().expect("connected above");
            let key = &pipeline.table_spec().primary_key;
            let prepared = sink.prepare_conflict_tables(&mut client, None, key, &versioning);
            sink.client = Some(client);
            prepared?;
        }
        Ok(sink)
    }

    fn error(&self, message: impl Into<String>) -> SinkError {
        SinkError::new(self.describe(), message)
    }

    /// [`pg_error`](Self::pg_error) for DDL inside a batch's transaction: when another
    /// session made the same object at the same moment, the batch is applied again.
    fn ddl_error(&self, context: &str, e: &postgres::Error) -> SinkError {
        SinkError {
            retryable: retryable(e) || concurrent_ddl(e),
            ..self.pg_error(context, e)
        }
    }

    fn pg_error(&self, context: &str, e: &postgres::Error) -> SinkError {
        SinkError {
            retryable: retryable(e),
            ..SinkError::new(self.describe(), format!("{context}: {}", describe_error(e)))
        }
    }

    /// The staging tables of the current target table: rows, and keys to delete.
    fn staging_names(&self) -> (String, String) {
        match self.stage {
            0 => ("weir_rows".into(), "weir_keys".into()),
            n => (format!("weir_rows_{n}"), format!("weir_keys_{n}")),
        }
    }

    fn target(&self) -> String {
        format!("{}.{}", quote(&self.schema), quote(&self.table))
    }

    /// The connection, made (again) if there is none.
    fn client(&mut self) -> Result<&mut Client, SinkError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            let mut client =
                crate::postgres_client::connect(self.url.expose()).map_err(|e| SinkError {
                    retryable: retryable(&e) || e.as_db_error().is_none(),
                    ..self.error(format!("cannot connect: {}", describe_error(&e)))
                })?;
            run_ddl(
                &mut client,
                &format!(
                    // A process stopped inside a transaction (SIGSTOP, a VM paused) holds
                    // its partitions' checkpoint rows until the server ends its idle
                    // transaction; a session waiting for rows gives up after as long
                    // (and its batch is applied again), so no wait holds another's.
                    // The server's side of weir's network defaults: a session whose
                    // client vanished mid-batch, holding its rows, is ended within about
                    // a minute rather than the server's two hours of keepalive silence
                    // (on TCP; ignored on a Unix socket).
                    "SET idle_in_transaction_session_timeout = {0};
                     SET lock_timeout = {0};
                     SET tcp_keepalives_idle = {1};
                     SET tcp_keepalives_interval = {2};
                     SET tcp_keepalives_count = {3};
                     SET tcp_user_timeout = {4};
                     CREATE SCHEMA IF NOT EXISTS weir;
                     CREATE TABLE IF NOT EXISTS weir.checkpoints (
                         pipeline text NOT NULL,
                         stream text NOT NULL,
                         next bigint NOT NULL,
                         line bigint NOT NULL,
                         updated_at timestamptz NOT NULL DEFAULT now(),
                         PRIMARY KEY (pipeline, stream)
                     );",
                    self.idle_transaction_timeout.as_millis(),
                    crate::postgres_client::KEEPALIVES_IDLE.as_secs(),
                    crate::postgres_client::KEEPALIVES_INTERVAL.as_secs(),
                    crate::postgres_client::KEEPALIVES_RETRIES,
                    crate::postgres_client::TCP_USER_TIMEOUT.as_millis(),
                ),
            )
            .map_err(|e| self.pg_error("cannot prepare weir.checkpoints", &e))?;
            if let Some(origin) = &self.origin {
                mark_with_origin(&mut client, origin).map_err(|e| SinkError {
                    // Still held by this sink's previous session, which the server has
                    // not noticed is gone: a later attempt gets it.
                    retryable: e.code() == Some(&postgres::error::SqlState::OBJECT_IN_USE),
                    ..self.error(format!(
                        "cannot mark this session's writes with replication origin \
                         `{origin}` (it needs a superuser, or EXECUTE on \
                         pg_replication_origin_create and \
                         pg_replication_origin_session_setup): {}",
                        describe_error(&e)
                    ))
                })?;
            }
            self.client = Some(client);
            self.columns.clear();
            self.casts.clear();
            self.checked = None;
            self.statements.borrow_mut().clear();
            self.staged.replace(None);
            self.conflict_ready = false;
            // A new session has none of the other tables' staging tables either.
            many::forget_session(&mut self.parked);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }
}

impl Sink for PostgresSink {
    fn stored_positions(&self) -> Option<crate::sink::StoredPositions> {
        let url = self.url.clone();
        let pipeline = self.pipeline.clone();
        let describe = self.describe();
        let mut client: Option<Client> = None;
        Some(Box::new(move |streams: &[String]| {
            let error = |context: &str, e: &postgres::Error| SinkError {
                retryable: true,
                ..SinkError::new(&describe, format!("{context}: {}", describe_error(e)))
            };
            if client.as_ref().is_none_or(Client::is_closed) {
                let mut config = crate::postgres_client::config(url.expose())
                    .map_err(|e| error("cannot read the stored positions", &e))?;
                // Called while the consumer group waits for this process: never for long.
                config.connect_timeout(std::time::Duration::from_secs(10));
                client = Some(
                    config
                        .connect(NoTls)
                        .map_err(|e| error("cannot read the stored positions", &e))?,
                );
            }
            let rows = client
                .as_mut()
                .expect("connected above")
                .query(
                    "SELECT stream, next, line FROM weir.checkpoints
                     WHERE pipeline = $1 AND stream = ANY($2) AND next >= 0",
                    &[&pipeline, &streams],
                )
                .map_err(|e| error("cannot read the stored positions", &e))?;
            Ok(checkpoint_of(&rows))
        }))
    }

    fn committed(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        let pipeline = self.pipeline.clone();
        let rows = self
            .client()?
            .query(
                "SELECT stream, next, line FROM weir.checkpoints WHERE pipeline = $1 AND next >= 0",
                &[&pipeline],
            )
            .map_err(|e| SinkError::new("postgres sink", describe_error(&e)))?;
        let checkpoint = checkpoint_of(&rows);
        Ok((!checkpoint.streams.is_empty()).then_some(checkpoint))
    }

    fn apply(
        &mut self,
        batch: &ChangeBatch,
        rejects: &mut dyn Rejects,
    ) -> Result<Applied, SinkError> {
        self.apply_prepared(batch, None, rejects)
    }

    fn preparer(&self) -> Option<Preparer> {
        // Under a conflict strategy the rows to apply are known only inside the
        // transaction, so there is nothing to prepare ahead.
        let plain = self.versioning.is_none() && self.resolver.is_none();
        (self.mode == PostgresMode::Upsert && plain).then(|| -> Preparer {
            Arc::new(|batch: &ChangeBatch| {
                // A batch that cannot be prepared is prepared again, and fails with its
                // error, when it is applied.
                // The target's types are not known here: the segments are prepared for
                // the types weir creates, and prepared again if the target's differ.
                let layout = layout(batch, |_| None);
                let segments = prepare_upsert(batch, None, layout.as_ref()).ok()?;
                Some(Box::new(PreparedUpsert { segments, layout }) as Prepared)
            })
        })
    }

    fn apply_prepared(
        &mut self,
        batch: &ChangeBatch,
        prepared: Option<&Prepared>,
        rejects: &mut dyn Rejects,
    ) -> Result<Applied, SinkError> {
        let prepared = prepared.and_then(|p| p.downcast_ref::<PreparedUpsert>());
        let mut applied = Applied::default();
        let mut client = match self.client.take() {
            Some(c) if !c.is_closed() => c,
            _ => {
                self.client()?;
                self.client.take().expect("connected")
            }
        };
        self.staging_dirty.set(false);
        self.staging_created.replace(None);
        let result = (|| {
            if let Some(versioning) = self.versioning.clone()
                && batch.num_rows() > 0
                && self.mode == PostgresMode::Upsert
            {
                let key = &batch.table.primary_key;
                self.prepare_conflict_tables(&mut client, Some(batch), key, &versioning)?;
            }
            let mut tx = client
                .transaction()
                .map_err(|e| self.pg_error("cannot begin a transaction", &e))?;
            self.apply_in(&mut tx, batch, prepared, rejects, &mut applied)?;
            tx.commit().map_err(|e| self.pg_error("commit failed", &e))
        })();
        if result.is_ok()
            && let Some(created) = self.staging_created.take()
        {
            self.staged.replace(Some(created));
        }
        if result.is_err() {
            // The rollback took back any table or column the batch created: read the
            // target again before the retry. And prepare statements again: one may have
            // been dropped under the connection.
            self.checked = None;
            self.statements.borrow_mut().clear();
        }
        if !client.is_closed() {
            self.client = Some(client);
        }
        result?;
        applied.durable = Some(batch.checkpoint.clone());
        Ok(applied)
    }

    fn flush(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        self.committed()
    }

    fn apply_tables(
        &mut self,
        batches: &[ChangeBatch],
        prepared: Option<&Prepared>,
        checkpoint: &Checkpoint,
        rejects: &mut dyn Rejects,
    ) -> Result<Applied, SinkError> {
        self.apply_many(batches, prepared, checkpoint, rejects)
    }

    fn target_tables(
        &mut self,
    ) -> Result<std::collections::HashMap<String, crate::tables::TargetTable>, SinkError> {
        self.existing_tables()
    }

    fn target_types(&mut self) -> Result<Vec<(String, ColumnType)>, SinkError> {
        let (schema, table) = (self.schema.clone(), self.table.clone());
        let rows = self
            .client()?
            .query(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod)
                 FROM pg_attribute a
                 JOIN pg_class c ON c.oid = a.attrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
                &[&schema, &table],
            )
            .map_err(|e| SinkError::new("postgres sink", describe_error(&e)))?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let name: String = r.get(0);
                if name.starts_with("_weir_") {
                    return None;
                }
                from_pg_declaration(&r.get::<_, String>(1)).map(|t| (name, t))
            })
            .collect())
    }

    fn plugin_stats(&self) -> Vec<std::sync::Arc<crate::plugin::stats::PluginStats>> {
        self.resolver.iter().map(ResolverPlugin::stats).collect()
    }

    fn describe(&self) -> String {
        format!("postgres sink {}", self.target())
    }
}

/// Marks every transaction of this session with replication origin `origin`, created if
/// missing: logical decoding then tells weir's writes from others'.
fn mark_with_origin(client: &mut Client, origin: &str) -> Result<(), postgres::Error> {
    let create = |client: &mut Client| {
        client.execute(
            "SELECT pg_replication_origin_create($1) WHERE pg_replication_origin_oid($1) IS NULL",
            &[&origin],
        )
    };
    // Two lanes' sessions may create it at once: the loser finds it the second time.
    create(client).or_else(|_| create(client))?;
    client.execute("SELECT pg_replication_origin_session_setup($1)", &[&origin])?;
    Ok(())
}
