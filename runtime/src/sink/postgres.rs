//! The PostgreSQL sink.
//!
//! Each batch is one transaction:
//! 1. lock this pipeline's checkpoint rows in `weir.checkpoints` (a placeholder row is
//!    inserted first, so the lock always has a row; two processes that both believe they
//!    own a partition during a rebalance are serialised here);
//! 2. skip the rows the table already holds (at or before the stored checkpoint);
//! 3. compact to one action per key; COPY the rows into a temporary staging table; apply
//!    with `DELETE … USING` and `INSERT … ON CONFLICT (key) DO UPDATE` (`upsert` mode), or
//!    COPY every change into a change-log table (`append` mode);
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

mod conflict;
mod many;
mod resolved;

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

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// Connection URL, `postgres://user:password@host:port/database`. Take the password
    /// from the environment: `postgres://weir:${PG_PASSWORD}@db:5432/app`, or the whole URL
    /// with `${PG_URL}`.
    pub url: Secret,
    /// Target table, `schema.table` or `table` (in `schema`). Defaults to `table.name`.
    #[serde(default)]
    pub table: Option<String>,
    /// The schema of an unqualified `table`, and of every target table of a many-table
    /// pipeline (`tables:`). Default `public`.
    #[serde(default)]
    pub schema: Option<String>,
    /// `upsert` applies changes by primary key; `append` writes every change to a
    /// change-log table.
    #[serde(default)]
    pub mode: PostgresMode,
    /// Create the table if it does not exist, add columns new events bring, and widen
    /// integer, float and numeric columns when the stream widens them (weir then owns the
    /// table's DDL).
    #[serde(default)]
    pub create: bool,
}

impl PostgresSinkConfig {
    pub fn capabilities(&self) -> super::Capabilities {
        let upsert = self.mode == PostgresMode::Upsert;
        super::Capabilities {
            reads_target_rows: upsert,
            lanes: upsert,
            stores_checkpoint: true,
            many_tables: true,
            applies_by_key: upsert,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PostgresMode {
    #[default]
    Upsert,
    Append,
}

/// The envelope columns an `append` table holds before the row's own columns.
const APPEND_COLUMNS: [(&str, &str); 7] = [
    ("_weir_op", "text NOT NULL"),
    ("_weir_event_time", "timestamptz"),
    ("_weir_source_time", "timestamptz"),
    ("_weir_source_position", "text"),
    ("_weir_txid", "text"),
    ("_weir_stream", "text NOT NULL"),
    ("_weir_offset", "bigint NOT NULL"),
];

pub fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// The PostgreSQL type for an Arrow field (see docs/types.md).
pub fn pg_type(field: &Field) -> String {
    let semantic = field.metadata().get(SEMANTIC_KEY).map(String::as_str);
    match field.data_type() {
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::Int16 => "smallint".into(),
        DataType::Int32 => "integer".into(),
        DataType::Int64 => "bigint".into(),
        DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("numeric({p},{s})"),
        DataType::Utf8 if semantic == Some("io.debezium.data.Json") => "jsonb".into(),
        DataType::Utf8 if semantic == Some("io.debezium.data.Uuid") => "uuid".into(),
        DataType::Binary => "bytea".into(),
        DataType::Date32 => "date".into(),
        DataType::Time32(_) | DataType::Time64(_) => "time".into(),
        DataType::Timestamp(_, None) => "timestamp".into(),
        DataType::Timestamp(_, Some(_)) => "timestamptz".into(),
        DataType::Duration(_) => "interval".into(),
        DataType::Struct(_) | DataType::List(_) => "jsonb".into(),
        _ => "text".into(),
    }
}

/// The weir type of a column the target already has, from `format_type`.
pub fn from_pg_declaration(declaration: &str) -> Option<ColumnType> {
    let d = declaration.trim().to_ascii_lowercase();
    if let Some(args) = d.strip_prefix("numeric(").and_then(|a| a.strip_suffix(')')) {
        let mut parts = args.split(',').map(str::trim);
        let precision: u8 = parts.next()?.parse().ok()?;
        let scale: i8 = parts.next().unwrap_or("0").parse().ok()?;
        return (precision <= 76).then_some(ColumnType::Decimal { precision, scale });
    }
    Some(match d.as_str() {
        "boolean" => ColumnType::Boolean,
        "smallint" => ColumnType::Int16,
        "integer" => ColumnType::Int32,
        "bigint" => ColumnType::Int64,
        "real" => ColumnType::Float32,
        "double precision" => ColumnType::Float64,
        "text" | "jsonb" | "json" | "uuid" => ColumnType::String,
        "bytea" => ColumnType::Bytes,
        "date" => ColumnType::Date,
        "time without time zone" => ColumnType::Time(Unit::Micros),
        "timestamp without time zone" => ColumnType::Timestamp {
            unit: Unit::Micros,
            utc: false,
        },
        "timestamp with time zone" => ColumnType::ZonedTimestamp { unit: Unit::Micros },
        _ if d.starts_with("character varying") || d.starts_with("character(") => {
            ColumnType::String
        }
        _ => return None,
    })
}

/// Appends one value in COPY's text format (`\N` for null; tab, newline and backslash
/// escaped).
fn copy_value(out: &mut Vec<u8>, array: &dyn Array, row: usize) {
    if array.is_null(row) {
        out.extend_from_slice(b"\\N");
        return;
    }
    let value: std::borrow::Cow<'_, str> = match array.data_type() {
        DataType::Boolean => if array.as_boolean().value(row) {
            "t"
        } else {
            "f"
        }
        .into(),
        DataType::Int8 => array
            .as_primitive::<Int8Type>()
            .value(row)
            .to_string()
            .into(),
        DataType::Int16 => array
            .as_primitive::<Int16Type>()
            .value(row)
            .to_string()
            .into(),
        DataType::Int32 => array
            .as_primitive::<Int32Type>()
            .value(row)
            .to_string()
            .into(),
        DataType::Int64 => array
            .as_primitive::<Int64Type>()
            .value(row)
            .to_string()
            .into(),
        DataType::Float32 => {
            let v = array.as_primitive::<Float32Type>().value(row);
            float_text(v as f64, || v.to_string()).into()
        }
        DataType::Float64 => {
            let v = array.as_primitive::<Float64Type>().value(row);
            float_text(v, || v.to_string()).into()
        }
        DataType::Binary => {
            let bytes = array.as_binary::<i32>().value(row);
            // bytea hex input; the backslash itself is escaped for COPY.
            out.extend_from_slice(b"\\\\x");
            for b in bytes {
                let _ = write!(out, "{b:02x}");
            }
            return;
        }
        DataType::Duration(TimeUnit::Microsecond) => {
            let micros = array
                .as_primitive::<arrow::datatypes::DurationMicrosecondType>()
                .value(row);
            format!("{micros} microseconds").into()
        }
        DataType::Duration(TimeUnit::Nanosecond) => {
            let nanos = array
                .as_primitive::<arrow::datatypes::DurationNanosecondType>()
                .value(row);
            format!("{} microseconds", nanos / 1000).into()
        }
        DataType::Duration(TimeUnit::Millisecond) => {
            let millis = array
                .as_primitive::<arrow::datatypes::DurationMillisecondType>()
                .value(row);
            format!("{millis} milliseconds").into()
        }
        DataType::Duration(TimeUnit::Second) => {
            let seconds = array
                .as_primitive::<arrow::datatypes::DurationSecondType>()
                .value(row);
            format!("{seconds} seconds").into()
        }
        _ => encode::text(array, row).unwrap_or_default(),
    };
    for &b in value.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.push(b),
        }
    }
}

fn float_text(value: f64, shortest: impl FnOnce() -> String) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        }
    } else {
        shortest()
    }
}

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
        }
    }
}

/// Whether an error is about the data of some row (so bisecting finds the culprit).
fn data_error(e: &postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
}

pub(super) fn describe_error(e: &postgres::Error) -> String {
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
    /// A built-in conflict strategy (`conflict:` in the pipeline), if any.
    versioning: Option<Arc<Versioning>>,
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
        let mut sink = PostgresSink {
            url: config.url.clone(),
            client: None,
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
            versioning: pipeline
                .config
                .conflict
                .as_ref()
                .and_then(Versioning::from_config)
                .map(Arc::new),
            conflict_ready: false,
            tombstones_collected: Cell::new(None),
            resolver: None,
            applied_horizon: Default::default(),
            applied_pruned: Cell::new(None),
            stage: 0,
            parked: Default::default(),
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
        if let Some(versioning) = sink.versioning.clone()
            && sink.mode == PostgresMode::Upsert
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
            let mut client = Client::connect(self.url.expose(), NoTls).map_err(|e| SinkError {
                retryable: retryable(&e) || e.as_db_error().is_none(),
                ..self.error(format!("cannot connect: {}", describe_error(&e)))
            })?;
            client
                .batch_execute(
                    "CREATE SCHEMA IF NOT EXISTS weir;
                     CREATE TABLE IF NOT EXISTS weir.checkpoints (
                         pipeline text NOT NULL,
                         stream text NOT NULL,
                         next bigint NOT NULL,
                         line bigint NOT NULL,
                         updated_at timestamptz NOT NULL DEFAULT now(),
                         PRIMARY KEY (pipeline, stream)
                     );",
                )
                .map_err(|e| self.pg_error("cannot prepare weir.checkpoints", &e))?;
            self.client = Some(client);
            self.columns.clear();
            self.checked = None;
            self.staged.replace(None);
            self.conflict_ready = false;
            // A new session has none of the other tables' staging tables either.
            many::forget_session(&mut self.parked);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    fn read_columns(&mut self, tx: &mut Transaction<'_>) -> Result<(), SinkError> {
        let rows = tx
            .query(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod)
                 FROM pg_attribute a
                 JOIN pg_class c ON c.oid = a.attrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
                 ORDER BY a.attnum",
                &[&self.schema, &self.table],
            )
            .map_err(|e| self.pg_error("cannot read the table's columns", &e))?;
        self.columns = rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect();
        let key = tx
            .query(
                "SELECT a.attname
                 FROM pg_index i
                 JOIN pg_class c ON c.oid = i.indrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey)
                 WHERE n.nspname = $1 AND c.relname = $2 AND i.indisprimary",
                &[&self.schema, &self.table],
            )
            .map_err(|e| self.pg_error("cannot read the table's key", &e))?;
        self.target_key = key.iter().map(|r| r.get::<_, String>(0)).collect();
        Ok(())
    }

    /// Makes sure the table exists with every column of the batch, creating, adding or
    /// widening when `create` is set.
    fn ensure_table(
        &mut self,
        tx: &mut Transaction<'_>,
        batch: &ChangeBatch,
    ) -> Result<(), SinkError> {
        let fields = batch.row_fields();
        if self.checked.as_ref() == Some(&fields) && !self.columns.is_empty() {
            return Ok(());
        }
        self.read_columns(tx)?;
        let target = self.target();
        let key = &batch.table.primary_key;
        if self.columns.is_empty() {
            if !self.create {
                return Err(self.error(format!(
                    "table {target} does not exist; create it, or set `create: true` on the sink"
                )));
            }
            let mut columns: Vec<String> = Vec::new();
            if self.mode == PostgresMode::Append {
                columns.extend(
                    APPEND_COLUMNS
                        .iter()
                        .map(|(n, t)| format!("{} {t}", quote(n))),
                );
            }
            columns.extend(
                fields
                    .iter()
                    .map(|f| format!("{} {}", quote(f.name()), pg_type(f))),
            );
            if self.mode == PostgresMode::Upsert {
                let key: Vec<String> = key.iter().map(|k| quote(k)).collect();
                columns.push(format!("PRIMARY KEY ({})", key.join(", ")));
            }
            tx.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {target} ({})",
                columns.join(", ")
            ))
            .map_err(|e| self.pg_error("cannot create the table", &e))?;
            tracing::info!(table = %target, "created the table");
            self.checked = Some(fields.clone());
            return self.read_columns(tx);
        }
        for field in fields.iter() {
            let wanted = pg_type(field);
            match self.columns.get(field.name()) {
                None if self.create => {
                    tx.batch_execute(&format!(
                        "ALTER TABLE {target} ADD COLUMN IF NOT EXISTS {} {wanted}",
                        quote(field.name())
                    ))
                    .map_err(|e| self.pg_error("cannot add a column", &e))?;
                    tracing::info!(table = %target, column = %field.name(), "added column");
                }
                None => {
                    return Err(self.error(format!(
                        "the events have a column {} that table {target} lacks; add it, or set \
                         `create: true` to let weir add new columns",
                        quote(field.name())
                    )));
                }
                Some(existing) if self.create && widens(existing, &wanted) => {
                    tx.batch_execute(&format!(
                        "ALTER TABLE {target} ALTER COLUMN {} TYPE {wanted}",
                        quote(field.name())
                    ))
                    .map_err(|e| self.pg_error("cannot widen a column", &e))?;
                    tracing::info!(table = %target, column = %field.name(), from = %existing, to = %wanted, "widened column");
                }
                Some(_) => {}
            }
        }
        if self.mode == PostgresMode::Upsert {
            let mut have = self.target_key.clone();
            have.sort();
            let mut want = key.clone();
            want.sort();
            if have != want {
                return Err(self.error(format!(
                    "table {target} has primary key ({}), but the pipeline's key is ({}); \
                     weir applies changes by that key",
                    self.target_key.join(", "),
                    key.join(", ")
                )));
            }
        }
        self.checked = Some(fields.clone());
        self.read_columns(tx)
    }

    /// Locks and reads this pipeline's checkpoint rows for the streams of `checkpoint`.
    fn lock_checkpoint(
        &self,
        tx: &mut Transaction<'_>,
        checkpoint: &Checkpoint,
    ) -> Result<Checkpoint, SinkError> {
        let streams: Vec<String> = checkpoint.streams.keys().cloned().collect();
        tx.execute(
            "INSERT INTO weir.checkpoints (pipeline, stream, next, line)
             SELECT $1, s, -1, 0 FROM unnest($2::text[]) s
             ON CONFLICT DO NOTHING",
            &[&self.pipeline, &streams],
        )
        .map_err(|e| self.pg_error("cannot lock the checkpoint", &e))?;
        let rows = tx
            .query(
                "SELECT stream, next, line FROM weir.checkpoints
                 WHERE pipeline = $1 AND stream = ANY($2) ORDER BY stream FOR UPDATE",
                &[&self.pipeline, &streams],
            )
            .map_err(|e| self.pg_error("cannot lock the checkpoint", &e))?;
        let mut stored = Checkpoint::default();
        for row in rows {
            let next: i64 = row.get(1);
            if next >= 0 {
                stored.streams.insert(
                    row.get(0),
                    ResumePoint {
                        next,
                        line: row.get::<_, i64>(2) as u64,
                    },
                );
            }
        }
        Ok(stored)
    }

    fn store_checkpoint(
        &self,
        tx: &mut Transaction<'_>,
        checkpoint: &Checkpoint,
    ) -> Result<(), SinkError> {
        for (stream, resume) in &checkpoint.streams {
            tx.execute(
                "INSERT INTO weir.checkpoints (pipeline, stream, next, line, updated_at)
                 VALUES ($1, $2, $3, $4, now())
                 ON CONFLICT (pipeline, stream) DO UPDATE SET
                     next = GREATEST(weir.checkpoints.next, excluded.next),
                     line = CASE WHEN excluded.next > weir.checkpoints.next
                                 THEN excluded.line ELSE weir.checkpoints.line END,
                     updated_at = now()",
                &[&self.pipeline, stream, &resume.next, &(resume.line as i64)],
            )
            .map_err(|e| self.pg_error("cannot store the checkpoint", &e))?;
        }
        Ok(())
    }

    fn apply_in(
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
    fn apply_rows_in(
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
            tracing::debug!(
                skipped = mask.iter().filter(|x| !**x).count(),
                "skipping rows the table already holds"
            );
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
    fn upsert(
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
        let owned;
        let segments = match (include, prepared) {
            (None, Some(prepared)) => &prepared.segments,
            _ => {
                owned = prepare_upsert(batch, include).map_err(|e| self.error(e))?;
                &owned
            }
        };
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
        let target = self.target();
        for segment in segments {
            if segment.truncate_first {
                tx.batch_execute(&format!("DELETE FROM {target}"))
                    .map_err(|e| self.pg_error("cannot truncate", &e))?;
                applied.truncates += 1;
            }
            let mut merge = |tx: &mut Transaction<'_>, actions: &[Action]| {
                self.merge(tx, batch, segment, actions, present)
            };
            self.isolating(tx, batch, &segment.actions, &mut merge, rejects, applied)?;
        }
        Ok(())
    }

    /// Writes `items` with `write` under a savepoint and counts what it applied. When the
    /// target refuses the data of some item, halves the items until the refused one stands
    /// alone, rejects its row and writes the rest.
    fn isolating<T: Isolatable>(
        &self,
        tx: &mut Transaction<'_>,
        batch: &ChangeBatch,
        items: &[T],
        write: &mut WriteItems<'_, T>,
        rejects: &mut dyn Rejects,
        applied: &mut Applied,
    ) -> Result<(), SinkError> {
        if items.is_empty() {
            return Ok(());
        }
        let mut savepoint = tx
            .savepoint(T::SAVEPOINT)
            .map_err(|e| self.pg_error("cannot start a savepoint", &e))?;
        match write(&mut savepoint, items) {
            Ok(done) => {
                savepoint
                    .commit()
                    .map_err(|e| self.pg_error("cannot release a savepoint", &e))?;
                applied.upserts += done.upserts;
                applied.deletes += done.deletes;
                applied.appended += done.appended;
                Ok(())
            }
            Err(MergeError::Pg(e)) if data_error(&e) => {
                drop(savepoint);
                if let [item] = items {
                    let message =
                        format!("the target refused the {}: {}", T::NOUN, describe_error(&e));
                    return rejects.reject(batch, item.row(), &message);
                }
                let (left, right) = items.split_at(items.len() / 2);
                self.isolating(tx, batch, left, write, rejects, applied)?;
                self.isolating(tx, batch, right, write, rejects, applied)
            }
            Err(MergeError::Pg(e)) => Err(self.pg_error(T::FAILED, &e)),
            Err(MergeError::Raced(message)) => Err(SinkError {
                retryable: true,
                ..self.error(message)
            }),
            Err(MergeError::Io(e)) => Err(SinkError {
                retryable: true,
                ..self.error(format!("writing COPY data failed: {e}"))
            }),
        }
    }

    /// COPYs the prepared lines of `actions` (a run of the segment's) into the staging
    /// tables, then deletes and upserts.
    fn merge(
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
        if let Some(span) = span(false) {
            done.deletes = actions.iter().filter(|a| !a.upsert).count() as u64;
            let mut writer = tx.copy_in(&format!(
                "COPY {stage_keys} ({}) FROM STDIN",
                key_names.join(", ")
            ))?;
            writer.write_all(&segment.keys[span])?;
            writer.finish()?;
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
                // One round trip when the count is not needed.
                None => tx.batch_execute(&format!("{NESTED_LOOP}; {delete}; {RESET}"))?,
                Some(present) => {
                    tx.batch_execute(NESTED_LOOP)?;
                    let deleted = tx.execute(&delete, &[])?;
                    tx.batch_execute(RESET)?;
                    // A delete of a key that was present removes one row; one of a key that
                    // was not, none; the old key of an update that moved it, either.
                    let ops: Vec<Op> = batch.ops().collect();
                    let deletes = actions.iter().filter(|a| !a.upsert);
                    let least = deletes
                        .clone()
                        .filter(|a| ops[a.row] == Op::Delete && present[a.row])
                        .count() as u64;
                    let moved = deletes.filter(|a| ops[a.row] != Op::Delete).count() as u64;
                    if !(least..=least + moved).contains(&deleted) {
                        return Err(MergeError::Raced(format!(
                            "the batch deleted {deleted} rows where {least} were read under \
                             lock; another writer changed these keys meanwhile, so the batch \
                             is applied again"
                        )));
                    }
                }
            }
        }
        if let Some(span) = span(true) {
            done.upserts = actions.iter().filter(|a| a.upsert).count() as u64;
            let mut writer = tx.copy_in(&format!(
                "COPY {stage_rows} ({}) FROM STDIN",
                names.join(", ")
            ))?;
            writer.write_all(&segment.rows[span])?;
            writer.finish()?;
            let updates: Vec<String> = names
                .iter()
                .zip(fields.iter())
                .filter(|(_, f)| !key.contains(f.name()))
                .map(|(n, _)| format!("{n} = EXCLUDED.{n}"))
                .collect();
            let action = if updates.is_empty() {
                "NOTHING".to_string()
            } else {
                format!("UPDATE SET {}", updates.join(", "))
            };
            let insert = format!(
                "INSERT INTO {target} ({cols}) SELECT {cols} FROM {stage_rows} ON CONFLICT ({keys}) DO {action}",
                cols = names.join(", "),
                keys = key_names.join(", ")
            );
            match present {
                None => tx.batch_execute(&insert)?,
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
                    let expected = actions
                        .iter()
                        .filter(|a| a.upsert && !present[a.row])
                        .count() as i64;
                    if inserted != expected {
                        return Err(MergeError::Raced(format!(
                            "the batch inserted {inserted} rows where {expected} keys had none \
                             when read under lock; another writer inserted some meanwhile, so \
                             the batch is applied again"
                        )));
                    }
                }
            }
        }
        Ok(done)
    }

    fn append(
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
    fn copy_changes(
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

/// Writes some items inside a transaction and says what it applied.
type WriteItems<'a, T> = dyn FnMut(&mut Transaction<'_>, &[T]) -> Result<Applied, MergeError> + 'a;

/// What [`PostgresSink::isolating`] writes: upsert actions, or change-log rows.
trait Isolatable {
    /// What an item is, in a refusal's message.
    const NOUN: &'static str;
    /// The error context when writing fails for another reason.
    const FAILED: &'static str;
    const SAVEPOINT: &'static str;
    /// The batch row the item comes from.
    fn row(&self) -> usize;
}

impl Isolatable for Action {
    const NOUN: &'static str = "row";
    const FAILED: &'static str = "cannot apply the batch";
    const SAVEPOINT: &'static str = "weir_rows";
    fn row(&self) -> usize {
        self.row
    }
}

/// A change-log row: its batch row.
impl Isolatable for usize {
    const NOUN: &'static str = "change";
    const FAILED: &'static str = "cannot append the batch";
    const SAVEPOINT: &'static str = "weir_append";
    fn row(&self) -> usize {
        *self
    }
}

/// One action of a compacted segment: upsert the row's after image, or delete its key;
/// `line` is where its COPY line lies in the segment's `rows` or `keys` buffer.
struct Action {
    row: usize,
    upsert: bool,
    line: std::ops::Range<usize>,
}

/// A compacted segment with its COPY text, ready to send.
struct PreparedSegment {
    truncate_first: bool,
    /// In row order.
    actions: Vec<Action>,
    rows: Vec<u8>,
    keys: Vec<u8>,
}

/// An upsert batch compacted and encoded as COPY text ahead of its turn.
struct PreparedUpsert {
    segments: Vec<PreparedSegment>,
}

/// Compacts `batch` (the rows `include` selects) and encodes each segment's rows and
/// deleted keys as COPY text. Depends on the batch alone, so it can run on another thread
/// while the previous batch is being applied.
fn prepare_upsert(
    batch: &ChangeBatch,
    include: Option<&[bool]>,
) -> Result<Vec<PreparedSegment>, String> {
    let after = batch.after();
    let before = batch.before();
    let key_columns: Vec<&dyn Array> = batch
        .table
        .primary_key
        .iter()
        .map(|k| {
            before
                .column_by_name(k)
                .map(|c| c.as_ref())
                .ok_or_else(|| format!("primary key column `{k}` is not in the rows"))
        })
        .collect::<Result<_, _>>()?;
    let row_columns: Vec<&dyn Array> = after.columns().iter().map(|c| c.as_ref()).collect();
    let mut prepared = Vec::new();
    for segment in compact(batch, include)? {
        let mut order: Vec<(usize, bool)> = segment
            .deletes
            .iter()
            .map(|r| (*r, false))
            .chain(segment.upserts.iter().map(|r| (*r, true)))
            .collect();
        order.sort();
        let mut out = PreparedSegment {
            truncate_first: segment.truncate_first,
            actions: Vec::with_capacity(order.len()),
            rows: Vec::new(),
            keys: Vec::new(),
        };
        for (row, upsert) in order {
            let (buffer, columns) = if upsert {
                (&mut out.rows, &row_columns)
            } else {
                (&mut out.keys, &key_columns)
            };
            let start = buffer.len();
            for (i, column) in columns.iter().enumerate() {
                if i > 0 {
                    buffer.push(b'\t');
                }
                copy_value(buffer, *column, row);
            }
            buffer.push(b'\n');
            out.actions.push(Action {
                row,
                upsert,
                line: start..buffer.len(),
            });
        }
        prepared.push(out);
    }
    Ok(prepared)
}

/// A failure while merging: from the server, or writing COPY data (the connection).
enum MergeError {
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

/// True when changing a column from `from` to `to` only widens it.
fn widens(from: &str, to: &str) -> bool {
    let rank = |t: &str| match t {
        "smallint" => Some(1),
        "integer" => Some(2),
        "bigint" => Some(3),
        _ => None,
    };
    if let (Some(a), Some(b)) = (rank(from), rank(to)) {
        return b > a;
    }
    if from == "real" && to == "double precision" {
        return true;
    }
    let numeric = |t: &str| -> Option<(i32, i32)> {
        let args = t.strip_prefix("numeric(")?.strip_suffix(')')?;
        let (p, s) = args.split_once(',')?;
        Some((p.trim().parse().ok()?, s.trim().parse().ok()?))
    };
    match (numeric(from), numeric(to)) {
        (Some((p1, s1)), Some((p2, s2))) => s2 >= s1 && p2 - s2 >= p1 - s1 && (p2, s2) != (p1, s1),
        _ => false,
    }
}

/// A checkpoint from `(stream, next, line)` rows.
pub(super) fn checkpoint_of(rows: &[postgres::Row]) -> Checkpoint {
    Checkpoint {
        streams: rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    ResumePoint {
                        next: r.get(1),
                        line: r.get::<_, i64>(2) as u64,
                    },
                )
            })
            .collect(),
    }
}

impl Sink for PostgresSink {
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
                let segments = prepare_upsert(batch, None).ok()?;
                Some(Box::new(PreparedUpsert { segments }) as Prepared)
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
            // target again before the retry.
            self.checked = None;
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

    fn describe(&self) -> String {
        format!("postgres sink {}", self.target())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BinaryArray, Float64Array, StringArray};

    fn copied(array: &dyn Array, row: usize) -> String {
        let mut out = Vec::new();
        copy_value(&mut out, array, row);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn copy_text_escapes_and_encodes() {
        let s = StringArray::from(vec![Some("a\tb\nc\\d"), None]);
        assert_eq!(copied(&s, 0), "a\\tb\\nc\\\\d");
        assert_eq!(copied(&s, 1), "\\N");
        let b = BinaryArray::from(vec![&[0x01u8, 0xff][..]]);
        assert_eq!(copied(&b, 0), "\\\\x01ff");
        let f = Float64Array::from(vec![f64::NAN, 0.1]);
        assert_eq!(copied(&f, 0), "NaN");
        assert_eq!(copied(&f, 1), "0.1");
    }

    #[test]
    fn prepared_segments_hold_each_action_s_copy_line_in_row_order() {
        let lines = |s: &PreparedSegment| -> Vec<(usize, bool, String)> {
            s.actions
                .iter()
                .map(|a| {
                    let buffer = if a.upsert { &s.rows } else { &s.keys };
                    let line = String::from_utf8(buffer[a.line.clone()].to_vec()).unwrap();
                    (a.row, a.upsert, line)
                })
                .collect()
        };
        let batch = crate::sink::compact::tests::batch(&[
            r#"{"op":"c","after":{"id":1,"v":"a"}}"#,
            r#"{"op":"c","after":{"id":2,"v":"b"}}"#,
            r#"{"op":"u","before":{"id":1,"v":"a"},"after":{"id":1,"v":"a\tb"}}"#,
            r#"{"op":"d","before":{"id":2,"v":"b"}}"#,
            r#"{"op":"c","after":{"id":3,"v":null}}"#,
            r#"{"op":"d","before":{"id":4,"v":"x"}}"#,
        ]);
        let segments = prepare_upsert(&batch, None).unwrap();
        assert_eq!(segments.len(), 1);
        assert!(!segments[0].truncate_first);
        assert_eq!(
            lines(&segments[0]),
            vec![
                (2, true, "1\ta\\tb\n".into()),
                (3, false, "2\n".into()),
                (4, true, "3\t\\N\n".into()),
                (5, false, "4\n".into()),
            ]
        );
        // Skipping rows prepares the rest only.
        let include = [true, true, false, false, true, true];
        let segments = prepare_upsert(&batch, Some(&include)).unwrap();
        assert_eq!(
            lines(&segments[0]),
            vec![
                (0, true, "1\ta\n".into()),
                (1, true, "2\tb\n".into()),
                (4, true, "3\t\\N\n".into()),
                (5, false, "4\n".into()),
            ]
        );
        // A truncate starts the segment over.
        let batch = crate::sink::compact::tests::batch(&[
            r#"{"op":"c","after":{"id":1,"v":"a"}}"#,
            r#"{"op":"t","source":{"table":"t"}}"#,
            r#"{"op":"c","after":{"id":2,"v":"b"}}"#,
        ]);
        let segments = prepare_upsert(&batch, None).unwrap();
        assert_eq!(segments.len(), 1);
        assert!(segments[0].truncate_first);
        assert_eq!(lines(&segments[0]), vec![(2, true, "2\tb\n".into())]);
    }

    #[test]
    fn widening_rules() {
        assert!(widens("integer", "bigint"));
        assert!(!widens("bigint", "integer"));
        assert!(widens("numeric(10,2)", "numeric(12,4)"));
        assert!(!widens("numeric(10,2)", "numeric(10,4)"));
        assert!(!widens("text", "bigint"));
        assert_eq!(
            from_pg_declaration("numeric(10,2)"),
            Some(ColumnType::Decimal {
                precision: 10,
                scale: 2
            })
        );
        assert_eq!(
            from_pg_declaration("character varying(20)"),
            Some(ColumnType::String)
        );
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }
}
