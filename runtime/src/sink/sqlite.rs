//! The SQLite sink: upserts by primary key, deletes, and the source position in the same
//! transaction.
//!
//! Each batch is one `BEGIN IMMEDIATE … COMMIT`: compacted upserts
//! (`INSERT … ON CONFLICT (pk) DO UPDATE`), deletes, and the checkpoint row in
//! `_weir_checkpoints`. A run killed at any moment leaves the table and the checkpoint in
//! agreement, so the restarted run neither loses nor repeats a change. The database runs
//! in WAL mode with `synchronous=FULL`, so a committed batch survives power loss.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::PathBuf;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{
    DataType, Field, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, TimeUnit,
};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, ToSql, params};
use schemars::JsonSchema;
use serde::Deserialize;

mod conflict;
mod many;
mod resolved;

use super::compact::compact;
use super::versioned::Versioning;
use super::{Applied, Rejects, Sink, SinkError};
use crate::config::LoadedPipeline;
use crate::conflict::ConflictConfig;
use crate::decode::types::{ColumnType, from_sql_declaration};
use crate::encode;
use crate::envelope::{ChangeBatch, Op};
use crate::plugin::resolver::ResolverPlugin;
use crate::position::{Checkpoint, ResumePoint};

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqliteSinkConfig {
    /// Path of the database file; created if missing. Relative paths resolve against the
    /// pipeline file's directory.
    pub path: PathBuf,
    /// Target table. Defaults to `table.name`.
    #[serde(default)]
    pub table: Option<String>,
    /// Create the table if it does not exist, and add columns that new events bring
    /// (weir then owns the table's DDL).
    #[serde(default)]
    pub create: bool,
}

impl SqliteSinkConfig {
    pub fn capabilities(&self) -> super::Capabilities {
        super::Capabilities {
            reads_target_rows: true,
            lanes: false,
            stores_checkpoint: true,
            many_tables: true,
            applies_by_key: true,
        }
    }
}

pub struct SqliteSink {
    conn: Connection,
    path: PathBuf,
    table: String,
    pipeline: String,
    create: bool,
    /// Columns the target table has, as last read.
    columns: Vec<String>,
    checked: bool,
    /// The `conflict: { strategy: wasm }` resolver, called with the current rows.
    resolver: Option<ResolverPlugin>,
    /// How long identities of decided changes are kept in `_weir_applied`.
    applied_horizon: std::time::Duration,
    /// When identities past the horizon were last removed.
    applied_pruned: Option<std::time::Instant>,
    /// A built-in conflict strategy (`conflict:` in the pipeline), if any: of the current
    /// table, in a many-table pipeline.
    versioning: Option<std::sync::Arc<Versioning>>,
    /// Each table's strategy, in a many-table pipeline.
    versionings: crate::sink::versioned::VersioningByTable,
    /// Whether the tombstone table and trigger are in place.
    tombstones_ready: bool,
    /// When tombstones past the horizon were last removed.
    tombstones_collected: Option<std::time::Instant>,
    /// What it knows of the other target tables of a many-table pipeline.
    parked: std::collections::HashMap<String, many::Parked>,
}

/// Seconds since the Unix epoch.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// Decimals up to this precision keep every digit in SQLite's NUMERIC affinity, which
/// stores them as INTEGER or REAL (a REAL keeps 15 significant digits; an integer beyond
/// 64 bits becomes a lossy REAL).
const SQLITE_EXACT_NUMERIC_DIGITS: u8 = 15;

/// The declared SQLite type for an Arrow type. Affinity matters: decimals are bound as
/// exact text, into NUMERIC affinity (`DECIMAL(p,s)`) when that keeps every digit, else
/// into TEXT affinity (`DECIMAL TEXT(p,s)`); temporal values are ISO-8601 text, nested
/// values JSON text.
pub fn sqlite_type(data_type: &DataType) -> Cow<'static, str> {
    match data_type {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => "INTEGER".into(),
        DataType::Float32 | DataType::Float64 => "REAL".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s)
            if *p <= SQLITE_EXACT_NUMERIC_DIGITS =>
        {
            format!("DECIMAL({p},{s})").into()
        }
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => {
            format!("DECIMAL TEXT({p},{s})").into()
        }
        DataType::Binary | DataType::LargeBinary | DataType::FixedSizeBinary(_) => "BLOB".into(),
        DataType::Date32 => "DATE".into(),
        DataType::Time32(_) | DataType::Time64(_) => "TIME".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMPTZ".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP".into(),
        DataType::Duration(_) => "INTEGER".into(),
        _ => "TEXT".into(),
    }
}

/// One value bound to a statement, borrowing from the Arrow arrays where it can.
enum SqlValue<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(Cow<'a, str>),
    Blob(&'a [u8]),
}

impl ToSql for SqlValue<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            SqlValue::Null => ValueRef::Null,
            SqlValue::Integer(i) => ValueRef::Integer(*i),
            SqlValue::Real(f) => ValueRef::Real(*f),
            SqlValue::Text(t) => ValueRef::Text(t.as_bytes()),
            SqlValue::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn sql_value(array: &dyn Array, row: usize) -> SqlValue<'_> {
    if array.is_null(row) {
        return SqlValue::Null;
    }
    match array.data_type() {
        DataType::Boolean => SqlValue::Integer(array.as_boolean().value(row) as i64),
        DataType::Int8 => SqlValue::Integer(array.as_primitive::<Int8Type>().value(row) as i64),
        DataType::Int16 => SqlValue::Integer(array.as_primitive::<Int16Type>().value(row) as i64),
        DataType::Int32 => SqlValue::Integer(array.as_primitive::<Int32Type>().value(row) as i64),
        DataType::Int64 => SqlValue::Integer(array.as_primitive::<Int64Type>().value(row)),
        DataType::Duration(TimeUnit::Microsecond) => SqlValue::Integer(
            array
                .as_primitive::<arrow::datatypes::DurationMicrosecondType>()
                .value(row),
        ),
        DataType::Duration(TimeUnit::Nanosecond) => SqlValue::Integer(
            array
                .as_primitive::<arrow::datatypes::DurationNanosecondType>()
                .value(row),
        ),
        DataType::Float32 => SqlValue::Real(encode::f32_as_f64(
            array.as_primitive::<Float32Type>().value(row),
        )),
        DataType::Float64 => SqlValue::Real(array.as_primitive::<Float64Type>().value(row)),
        DataType::Binary => SqlValue::Blob(array.as_binary::<i32>().value(row)),
        _ => match encode::text(array, row) {
            Some(text) => SqlValue::Text(text),
            None => SqlValue::Null,
        },
    }
}

impl SqliteSink {
    pub fn open(pipeline: &LoadedPipeline, config: &SqliteSinkConfig) -> Result<Self, SinkError> {
        let path = pipeline.resolve(&config.path);
        let name = format!("sqlite sink {}", path.display());
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                SinkError::new(&name, format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let conn = Connection::open(&path).map_err(|e| SinkError::new(&name, e.to_string()))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             PRAGMA busy_timeout=10000;
             CREATE TABLE IF NOT EXISTS _weir_checkpoints (
                 pipeline TEXT NOT NULL,
                 stream TEXT NOT NULL,
                 next INTEGER NOT NULL,
                 line INTEGER NOT NULL,
                 updated_at TEXT NOT NULL,
                 PRIMARY KEY (pipeline, stream)
             );",
        )
        .map_err(|e| SinkError::new(&name, format!("cannot prepare the database: {e}")))?;
        let table = config
            .table
            .clone()
            .unwrap_or_else(|| pipeline.table().map(|t| t.name.clone()).unwrap_or_default());
        let (resolver, applied_horizon) = match &pipeline.config.conflict {
            Some(ConflictConfig::Wasm(config)) => {
                // The identities of the changes the resolver decided (docs/sync.md).
                conn.execute_batch(
                    "CREATE TABLE IF NOT EXISTS _weir_applied (
                         target TEXT NOT NULL,
                         identity TEXT NOT NULL,
                         applied_at INTEGER NOT NULL,
                         PRIMARY KEY (target, identity)
                     ) WITHOUT ROWID;",
                )
                .map_err(|e| SinkError::new(&name, format!("cannot prepare _weir_applied: {e}")))?;
                let plugin = ResolverPlugin::load(config.spec(pipeline))
                    .map_err(|e| SinkError::new(&name, e))?;
                (Some(plugin), config.applied_horizon.0)
            }
            _ => (None, Default::default()),
        };
        let mut sink = SqliteSink {
            conn,
            path,
            table,
            pipeline: pipeline.config.name.clone(),
            create: config.create,
            columns: Vec::new(),
            checked: false,
            resolver,
            applied_horizon,
            applied_pruned: None,
            versioning: pipeline
                .config
                .conflict
                .as_ref()
                .and_then(Versioning::from_config)
                .map(std::sync::Arc::new),
            versionings: crate::sink::versioned::VersioningByTable::new(&pipeline.config),
            tombstones_ready: false,
            tombstones_collected: None,
            parked: Default::default(),
        };
        // Deletes applications make before weir's first batch must leave tombstones too.
        if let Some(table) = pipeline.table() {
            sink.prepare_tombstones(&table.primary_key)?;
        }
        Ok(sink)
    }

    fn error(&self, message: impl Into<String>) -> SinkError {
        SinkError::new(self.describe(), message)
    }

    /// `(name, declared type)` of every column of the target table.
    fn read_declarations(&self) -> rusqlite::Result<Vec<(String, String)>> {
        let mut stmt = self
            .conn
            .prepare(&format!("PRAGMA table_info({})", quote(&self.table)))?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?;
        rows.collect()
    }

    fn read_columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<(String, bool)>> {
        let mut stmt = conn.prepare(&format!("PRAGMA table_info({})", quote(table)))?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(1)?, r.get::<_, i64>(5)? > 0))
        })?;
        rows.collect()
    }

    /// Makes sure the table exists with every column of the batch and a key to upsert on.
    fn ensure_table(&mut self, batch: &ChangeBatch) -> Result<(), SinkError> {
        let fields = batch.row_fields();
        let wanted: Vec<&Field> = fields.iter().map(|f| f.as_ref()).collect();
        if self.checked
            && wanted
                .iter()
                .all(|f| self.columns.iter().any(|c| c == f.name()))
        {
            return Ok(());
        }
        let existing =
            Self::read_columns(&self.conn, &self.table).map_err(|e| self.error(e.to_string()))?;
        let key = &batch.table.primary_key;
        if existing.is_empty() {
            if !self.create {
                return Err(self.error(format!(
                    "table {} does not exist; create it, or set `create: true` on the sink",
                    quote(&self.table)
                )));
            }
            if wanted.is_empty() {
                return Ok(());
            }
            let columns: Vec<String> = wanted
                .iter()
                .map(|f| format!("{} {}", quote(f.name()), sqlite_type(f.data_type())))
                .collect();
            let key_list: Vec<String> = key.iter().map(|k| quote(k)).collect();
            let ddl = format!(
                "CREATE TABLE {} ({}, PRIMARY KEY ({}))",
                quote(&self.table),
                columns.join(", "),
                key_list.join(", ")
            );
            self.conn
                .execute_batch(&ddl)
                .map_err(|e| self.error(format!("cannot create the table: {e}")))?;
        } else {
            for field in &wanted {
                if existing.iter().any(|(name, _)| name == field.name()) {
                    continue;
                }
                if !self.create {
                    return Err(self.error(format!(
                        "the events have a column {} that table {} lacks; add it, or set \
                         `create: true` to let weir add new columns",
                        quote(field.name()),
                        quote(&self.table)
                    )));
                }
                let ddl = format!(
                    "ALTER TABLE {} ADD COLUMN {} {}",
                    quote(&self.table),
                    quote(field.name()),
                    sqlite_type(field.data_type())
                );
                self.conn
                    .execute_batch(&ddl)
                    .map_err(|e| self.error(format!("cannot add a column: {e}")))?;
                tracing::info!(table = %self.table, column = %field.name(), "added column");
            }
            if !self.checked {
                self.check_key(&existing, key)?;
            }
        }
        self.columns = Self::read_columns(&self.conn, &self.table)
            .map_err(|e| self.error(e.to_string()))?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        self.checked = true;
        Ok(())
    }

    /// `ON CONFLICT (key)` needs the key to be the primary key or a unique index.
    fn check_key(&self, existing: &[(String, bool)], key: &[String]) -> Result<(), SinkError> {
        let conn = &self.conn;
        let mut pk: Vec<&str> = existing
            .iter()
            .filter(|(_, p)| *p)
            .map(|(n, _)| n.as_str())
            .collect();
        pk.sort();
        let mut wanted: Vec<&str> = key.iter().map(String::as_str).collect();
        wanted.sort();
        if pk == wanted {
            return Ok(());
        }
        let unique = (|| -> rusqlite::Result<bool> {
            let mut indexes =
                conn.prepare(&format!("PRAGMA index_list({})", quote(&self.table)))?;
            let names: Vec<(String, bool)> = indexes
                .query_map([], |r| {
                    Ok((r.get::<_, String>(1)?, r.get::<_, i64>(2)? == 1))
                })?
                .collect::<Result<_, _>>()?;
            for (index, is_unique) in names.into_iter().filter(|(_, u)| *u) {
                let _ = is_unique;
                let mut info = conn.prepare(&format!("PRAGMA index_info({})", quote(&index)))?;
                let mut columns: Vec<String> = info
                    .query_map([], |r| r.get::<_, String>(2))?
                    .collect::<Result<_, _>>()?;
                columns.sort();
                if columns
                    .iter()
                    .map(String::as_str)
                    .eq(wanted.iter().copied())
                {
                    return Ok(true);
                }
            }
            Ok(false)
        })()
        .map_err(|e| self.error(e.to_string()))?;
        if unique {
            Ok(())
        } else {
            Err(self.error(format!(
                "table {} has no primary key or unique index on ({}); weir applies changes \
                 by that key",
                quote(&self.table),
                key.join(", ")
            )))
        }
    }

    fn store_checkpoint(&self, checkpoint: &Checkpoint) -> rusqlite::Result<()> {
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO _weir_checkpoints (pipeline, stream, next, line, updated_at)
             VALUES (?1, ?2, ?3, ?4, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
             ON CONFLICT (pipeline, stream) DO UPDATE SET
                 next = CASE WHEN (excluded.next, excluded.line) > (next, line)
                             THEN excluded.next ELSE next END,
                 line = CASE WHEN (excluded.next, excluded.line) > (next, line)
                             THEN excluded.line ELSE line END,
                 updated_at = excluded.updated_at",
        )?;
        for (stream, resume) in &checkpoint.streams {
            stmt.execute(params![
                self.pipeline,
                stream,
                resume.next,
                resume.line as i64
            ])?;
        }
        Ok(())
    }

    /// The checkpoint this database holds for the batch's streams.
    fn stored(&self, batch: &ChangeBatch) -> rusqlite::Result<Checkpoint> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT next, line FROM _weir_checkpoints WHERE pipeline = ?1 AND stream = ?2",
        )?;
        let mut stored = Checkpoint::default();
        for stream in batch.checkpoint.streams.keys() {
            let row = stmt
                .query_row(params![self.pipeline, stream], |r| {
                    Ok(ResumePoint {
                        next: r.get(0)?,
                        line: r.get::<_, i64>(1)? as u64,
                    })
                })
                .optional()?;
            if let Some(point) = row {
                stored.streams.insert(stream.clone(), point);
            }
        }
        Ok(stored)
    }

    /// The upsert and delete statements for the batch's columns.
    fn statements(&self, batch: &ChangeBatch) -> Statements {
        let fields = batch.row_fields();
        let key = &batch.table.primary_key;
        let table = quote(&self.table);
        let names: Vec<String> = fields.iter().map(|f| quote(f.name())).collect();
        let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
        let updates: Vec<String> = fields
            .iter()
            .filter(|f| !key.contains(f.name()))
            .map(|f| format!("{0} = excluded.{0}", quote(f.name())))
            .collect();
        let key_list: Vec<String> = key.iter().map(|k| quote(k)).collect();
        let upsert = format!(
            "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT ({}) DO {}",
            names.join(", "),
            placeholders.join(", "),
            key_list.join(", "),
            if updates.is_empty() {
                "NOTHING".to_string()
            } else {
                format!("UPDATE SET {}", updates.join(", "))
            }
        );
        let conditions: Vec<String> = key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{} = ?{}", quote(k), i + 1))
            .collect();
        let delete = format!("DELETE FROM {table} WHERE {}", conditions.join(" AND "));
        let select = format!(
            "SELECT {} FROM {table} WHERE {}",
            names.join(", "),
            conditions.join(" AND ")
        );
        Statements {
            upsert,
            delete,
            select,
            truncate: format!("DELETE FROM {table}"),
        }
    }

    fn apply_rows(
        &mut self,
        batch: &ChangeBatch,
        applied: &mut Applied,
        rejects: &mut dyn Rejects,
    ) -> Result<(), SinkError> {
        // Rows this database already holds (a batch delivered twice) are skipped.
        let stored = self.stored(batch).map_err(|e| self.error(e.to_string()))?;
        let include = super::unapplied(batch, &stored);
        if let Some(mask) = &include {
            applied.already_applied += mask.iter().filter(|x| !**x).count() as u64;
        }
        if self.resolver.is_some() {
            return self.apply_resolved(batch, include.as_deref(), applied, rejects);
        }
        if self.versioning.is_some() {
            self.prepare_tombstones(&batch.table.primary_key)?;
            return self.apply_versioned(batch, include.as_deref(), applied, rejects);
        }
        self.write_compacted(batch, include.as_deref(), applied, rejects)
    }

    /// Applies the included rows, compacted to one action per key. A row whose values the
    /// table refuses goes to `rejects`; the others apply.
    fn write_compacted(
        &self,
        batch: &ChangeBatch,
        include: Option<&[bool]>,
        applied: &mut Applied,
        rejects: &mut dyn Rejects,
    ) -> Result<(), SinkError> {
        let tx = &self.conn;
        let segments = compact(batch, include).map_err(|e| self.error(e))?;
        if segments.is_empty() {
            return Ok(());
        }
        let statements = self.statements(batch);
        let after = batch.after();
        let key_before = self.key_columns(batch, batch.before())?;
        let sql_error = |e: rusqlite::Error| self.error(e.to_string());
        let mut refusals = Refusals::compacted(self, batch, include, &segments);
        for segment in &segments {
            if segment.truncate_first {
                tx.execute(&statements.truncate, []).map_err(sql_error)?;
                applied.truncates += 1;
            }
            // An update that moved its key deletes the old key and writes the new one
            // together (below), so a refused write cannot leave the old key deleted.
            let moved: HashSet<usize> = segment
                .deletes
                .iter()
                .filter(|r| segment.upserts.binary_search(r).is_ok())
                .copied()
                .collect();
            let mut delete = tx.prepare_cached(&statements.delete).map_err(sql_error)?;
            for &row in segment.deletes.iter().filter(|r| !moved.contains(r)) {
                let written = execute(&mut delete, &key_before, row);
                if !refusals.refused(written, row, rejects)? {
                    applied.deletes += 1;
                }
            }
            let mut upsert = tx.prepare_cached(&statements.upsert).map_err(sql_error)?;
            let columns: Vec<&dyn Array> = after.columns().iter().map(|c| c.as_ref()).collect();
            for &row in &segment.upserts {
                let written = match moved.contains(&row) {
                    false => execute(&mut upsert, &columns, row),
                    true => in_savepoint(tx, || {
                        execute(&mut delete, &key_before, row)?;
                        execute(&mut upsert, &columns, row)
                    }),
                };
                if !refusals.refused(written, row, rejects)? {
                    applied.upserts += 1;
                    applied.deletes += u64::from(moved.contains(&row));
                }
            }
        }
        Ok(())
    }

    /// The primary key columns of a row image, in key order.
    fn key_columns<'a>(
        &self,
        batch: &ChangeBatch,
        image: &'a arrow::array::StructArray,
    ) -> Result<Vec<&'a dyn Array>, SinkError> {
        batch
            .table
            .primary_key
            .iter()
            .map(|k| image.column_by_name(k).map(|c| c.as_ref()))
            .collect::<Option<_>>()
            .ok_or_else(|| self.error("the batch lacks a primary key column"))
    }
}

/// Whether SQLite refused a row's values (a constraint, a type it will not store in the
/// column, a value too big), rather than failing as a database: SQLite then undoes that
/// statement alone, and the row can go to the dead-letter output while the batch goes on.
fn refuses_row(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::{ConstraintViolation, TooBig, TypeMismatch};
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, ConstraintViolation | TypeMismatch | TooBig))
}

/// Runs `write` under a savepoint: when it fails, what it did is undone.
fn in_savepoint(
    conn: &Connection,
    write: impl FnOnce() -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    conn.execute_batch("SAVEPOINT weir_row")?;
    match write() {
        Ok(()) => conn.execute_batch("RELEASE weir_row"),
        Err(e) => {
            // A ROLLBACK conflict clause may have ended the transaction, and the savepoint
            // with it: the caller sees that in `is_autocommit`.
            let _ = conn.execute_batch("ROLLBACK TO weir_row; RELEASE weir_row");
            Err(e)
        }
    }
}

/// Rows the target refuses, sent to the dead-letter output with what they carry.
pub(super) struct Refusals<'a> {
    sink: &'a SqliteSink,
    batch: &'a ChangeBatch,
    /// How the batch was compacted, when it was: what a refused row carries with it.
    compaction: Option<Compaction<'a>>,
}

/// A compacted batch's rows, for finding the changes folded into a refused one.
struct Compaction<'a> {
    include: Option<&'a [bool]>,
    /// The rows with an action of their own (the others were compacted into one).
    actions: HashSet<usize>,
    /// The batch's operations and keys, read at the first refusal.
    read: std::cell::OnceCell<Option<(Vec<Op>, super::compact::Keys)>>,
}

impl<'a> Refusals<'a> {
    /// For a batch applied as `segments`, the compaction of its `include`d rows.
    pub(super) fn compacted(
        sink: &'a SqliteSink,
        batch: &'a ChangeBatch,
        include: Option<&'a [bool]>,
        segments: &[super::compact::Segment],
    ) -> Self {
        let actions = segments
            .iter()
            .flat_map(|s| s.deletes.iter().chain(&s.upserts).copied())
            .collect();
        Refusals {
            sink,
            batch,
            compaction: Some(Compaction {
                include,
                actions,
                read: std::cell::OnceCell::new(),
            }),
        }
    }

    /// For changes applied one by one, with nothing compacted into them.
    pub(super) fn uncompacted(sink: &'a SqliteSink, batch: &'a ChangeBatch) -> Self {
        Refusals {
            sink,
            batch,
            compaction: None,
        }
    }

    /// Sends row `row` to the dead-letter output if `written` is a refusal of its values,
    /// with the earlier changes compacted into it; returns whether it did. Other errors
    /// fail the batch, and so does a refusal that ended the transaction (a `ROLLBACK`
    /// conflict clause or trigger): the batch cannot be applied around it.
    pub(super) fn refused(
        &mut self,
        written: rusqlite::Result<()>,
        row: usize,
        rejects: &mut dyn Rejects,
    ) -> Result<bool, SinkError> {
        let e = match written {
            Ok(()) => return Ok(false),
            Err(e) if refuses_row(&e) => e,
            Err(e) => return Err(self.sink.error(e.to_string())),
        };
        if self.sink.conn.is_autocommit() {
            return Err(self.sink.error(format!(
                "the target rolled the batch's transaction back when it refused a row ({e}): \
                 a ROLLBACK conflict clause or trigger; weir cannot apply the batch around it"
            )));
        }
        rejects.reject(self.batch, row, &format!("the target refused the row: {e}"))?;
        let Some(compaction) = &self.compaction else {
            return Ok(true);
        };
        let batch = self.batch;
        let read = compaction.read.get_or_init(|| {
            let keys = super::compact::keys(batch).ok()?;
            Some((batch.ops().collect(), keys))
        });
        if let Some((ops, keys)) = read {
            let at = batch
                .positions
                .get(row)
                .map_or(String::new(), |p| format!(" ({p})"));
            let reason = format!(
                "compacted into a later change of the same key{at}, which the target refused: {e}"
            );
            let folded = super::compact::folded_into(
                batch,
                ops,
                keys,
                compaction.include,
                &compaction.actions,
                row,
            );
            for folded in folded {
                rejects.reject(batch, folded, &reason)?;
            }
        }
        Ok(true)
    }
}

/// The statements a batch is applied with.
struct Statements {
    upsert: String,
    delete: String,
    select: String,
    truncate: String,
}

/// Binds row `row` of `columns` to the statement's parameters, in order, and runs it.
fn execute(
    statement: &mut rusqlite::CachedStatement<'_>,
    columns: &[&dyn Array],
    row: usize,
) -> rusqlite::Result<()> {
    for (i, column) in columns.iter().enumerate() {
        statement.raw_bind_parameter(i + 1, sql_value(*column, row))?;
    }
    statement.raw_execute().map(|_| ())
}

impl SqliteSink {
    fn apply_in_transaction(
        &mut self,
        batch: &ChangeBatch,
        rejects: &mut dyn Rejects,
    ) -> Result<Applied, SinkError> {
        let mut applied = Applied::default();
        if batch.num_rows() > 0 {
            self.ensure_table(batch)?;
            self.apply_rows(batch, &mut applied, rejects)?;
        }
        self.store_checkpoint(&batch.checkpoint)
            .map_err(|e| self.error(format!("cannot store the checkpoint: {e}")))?;
        Ok(applied)
    }
}

/// The checkpoint stored under `pipeline` (empty when there is none).
pub(super) fn stored_checkpoint(conn: &Connection, pipeline: &str) -> rusqlite::Result<Checkpoint> {
    let mut stmt =
        conn.prepare("SELECT stream, next, line FROM _weir_checkpoints WHERE pipeline = ?1")?;
    let streams = stmt
        .query_map([pipeline], |r| {
            Ok((
                r.get::<_, String>(0)?,
                ResumePoint {
                    next: r.get(1)?,
                    line: r.get::<_, i64>(2)? as u64,
                },
            ))
        })?
        .collect::<Result<_, _>>()?;
    Ok(Checkpoint { streams })
}

impl Sink for SqliteSink {
    fn committed(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        let checkpoint =
            stored_checkpoint(&self.conn, &self.pipeline).map_err(|e| self.error(e.to_string()))?;
        Ok((!checkpoint.streams.is_empty()).then_some(checkpoint))
    }

    fn apply(
        &mut self,
        batch: &ChangeBatch,
        rejects: &mut dyn Rejects,
    ) -> Result<Applied, SinkError> {
        // IMMEDIATE takes the write lock up front, so the batch cannot fail half-way on a
        // lock another writer holds.
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| self.error(format!("cannot begin a transaction: {e}")))?;
        match self.apply_in_transaction(batch, rejects) {
            Ok(mut applied) => {
                self.conn
                    .execute_batch("COMMIT")
                    .map_err(|e| self.error(format!("commit failed: {e}")))?;
                applied.durable = Some(batch.checkpoint.clone());
                Ok(applied)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                // The rollback took back any table, column or tombstone table the batch
                // created: read the target again before the retry.
                self.checked = false;
                self.tombstones_ready = false;
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> Result<Option<Checkpoint>, SinkError> {
        self.committed()
    }

    fn apply_tables(
        &mut self,
        batches: &[ChangeBatch],
        _prepared: Option<&super::Prepared>,
        checkpoint: &Checkpoint,
        rejects: &mut dyn Rejects,
    ) -> Result<Applied, SinkError> {
        self.apply_many(batches, checkpoint, rejects)
    }

    fn target_tables(
        &mut self,
    ) -> Result<std::collections::HashMap<String, crate::tables::TargetTable>, SinkError> {
        self.existing_tables()
    }

    fn target_types(&mut self) -> Result<Vec<(String, ColumnType)>, SinkError> {
        let declarations = self
            .read_declarations()
            .map_err(|e| self.error(e.to_string()))?;
        Ok(declarations
            .into_iter()
            .filter_map(|(name, declared)| from_sql_declaration(&declared).map(|t| (name, t)))
            .collect())
    }

    fn plugin_stats(&self) -> Vec<std::sync::Arc<crate::plugin::stats::PluginStats>> {
        self.resolver.iter().map(ResolverPlugin::stats).collect()
    }

    fn describe(&self) -> String {
        format!("sqlite sink {} table {}", self.path.display(), self.table)
    }
}

/// The checkpoint for `pipeline` in a SQLite database, if it has one (used by tests and
/// `weir status`).
pub fn read_checkpoint(path: &std::path::Path, pipeline: &str) -> rusqlite::Result<Option<i64>> {
    let conn = Connection::open(path)?;
    conn.query_row(
        "SELECT max(next) FROM _weir_checkpoints WHERE pipeline = ?1",
        [pipeline],
        |r| r.get(0),
    )
    .optional()
    .map(Option::flatten)
}

#[cfg(test)]
mod tests {
    use super::refuses_row;

    #[test]
    fn a_rows_values_refused_are_told_from_a_failing_database() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL CHECK (n >= 0),
                             s INTEGER) STRICT",
        )
        .unwrap();
        let insert = |sql: &str| conn.execute(sql, []).map(drop);
        for refused in [
            "INSERT INTO t VALUES ('k2001', 1, 1)", // datatype mismatch (the rowid key)
            "INSERT INTO t VALUES (1, -1, 1)",      // CHECK
            "INSERT INTO t VALUES (1, NULL, 1)",    // NOT NULL
            "INSERT INTO t VALUES (1, 1, 'text')",  // STRICT column type
        ] {
            let error = insert(refused).unwrap_err();
            assert!(refuses_row(&error), "{refused}: {error}");
        }
        let error = insert("INSERT INTO missing VALUES (1)").unwrap_err();
        assert!(!refuses_row(&error), "{error}");
    }
}
