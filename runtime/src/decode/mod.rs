//! Debezium JSON change events into change batches.
//!
//! One pass with a pull scanner (`json`) over each event writes values straight into Arrow
//! column builders; there is no intermediate JSON tree. The `schema` block, when present, is
//! parsed once per distinct schema (events of one table repeat it byte for byte) and
//! skipped otherwise. Column types come from that block, else from `table.columns`, else by
//! inference from the values; new columns and widenings evolve the table as events arrive.
//!
//! A record that cannot be decoded is rolled back out of the batch and returned as a
//! [`RecordError`] for the dead-letter output; an incompatible schema change is a
//! [`DecodeError::Fatal`] that stops the pipeline.
//!
//! This module holds the decoder's state and the finishing of each event and batch;
//! `debezium` reads Debezium envelopes, `schema` merges and evolves row schemas, and
//! `unwrapped` reads flattened rows.

pub mod builder;
mod debezium;
pub mod decimal;
pub mod json;
pub mod native;
pub mod route;
mod schema;
pub mod table;
pub mod temporal;
pub mod types;
mod unwrapped;

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Fields, SchemaRef};
use json::{Json, JsonError, Token, key_string};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value as JsonValue;

use crate::envelope::{self, ChangeBatch, Op, SOURCE_TEXT_COLUMNS, TableInfo};
use crate::position::{Checkpoint, Position};
use builder::{ColumnBuilder, ValueError};
use table::{Image, IncompatibleChange, SourceTypes, TableSchema, TableSpec, UnknownColumns};
use types::{ColumnDef, ColumnType, Unit};

/// The shape of the records a source delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Debezium change events: `{"schema":…,"payload":…}`, `{"payload":…}`, or the bare
    /// payload `{"op":…,"before":…,"after":…,"source":…}`.
    #[default]
    DebeziumJson,
    /// Rows flattened by Debezium's `ExtractNewRecordState` transform: each record is the
    /// row itself; `__deleted: "true"` (or a tombstone with a key) deletes it, and `__op`,
    /// `__db`, `__schema`, `__table`, `__source_ts_ms` fill the envelope when present.
    DebeziumJsonUnwrapped,
}

/// One record from a source: the Kafka key, value (`None` for a tombstone) and headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawRecord<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Headers<'a>,
}

/// A byte range in a source's buffer.
pub type Span = (usize, usize);

/// A record's headers, as name and value ranges into the buffer they were read into.
#[derive(Debug, Clone, Copy, Default)]
pub struct Headers<'a> {
    pub buf: &'a [u8],
    pub items: &'a [(Span, Option<Span>)],
}

impl<'a> Headers<'a> {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// `(name, value)` pairs; a name that is not UTF-8 is read lossily.
    pub fn iter(&self) -> impl Iterator<Item = (std::borrow::Cow<'a, str>, Option<&'a [u8]>)> + '_ {
        self.items.iter().map(|(name, value)| {
            (
                String::from_utf8_lossy(&self.buf[name.0..name.1]),
                value.map(|(a, b)| &self.buf[a..b]),
            )
        })
    }
}

/// What became of a record that was not rejected.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// One row was added to the batch.
    Row,
    /// A Kafka tombstone (null or empty value): nothing to apply.
    Tombstone,
    /// A schema-change event (DDL history), which carries no row.
    SchemaChange(SchemaChangeInfo),
    /// An event that is valid but not a row change (a logical-decoding message).
    Ignored(&'static str),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SchemaChangeInfo {
    pub ddl: Option<String>,
    /// `(type, table id)` of each table change, e.g. `("ALTER", "db.t1")`.
    pub table_changes: Vec<(String, String)>,
}

/// A record that cannot be decoded; it goes to the dead-letter output.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordError {
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DecodeError {
    Record(RecordError),
    /// A row change of another table than the pipeline's (see [`route`]): the reason,
    /// naming both tables. It goes to the dead-letter output with stage `route`.
    OtherTable(String),
    /// The stream changed a column's type in a way weir cannot follow without losing data.
    Fatal(IncompatibleChange),
}

impl From<ValueError> for DecodeError {
    fn from(e: ValueError) -> Self {
        DecodeError::Record(RecordError { message: e.0 })
    }
}

impl From<JsonError> for DecodeError {
    fn from(e: JsonError) -> Self {
        DecodeError::Record(RecordError {
            message: format!("invalid JSON: {e}"),
        })
    }
}

fn reject(message: impl Into<String>) -> DecodeError {
    DecodeError::Record(RecordError {
        message: message.into(),
    })
}

/// Counts of records that produced no row, for the run summary and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    pub rows: u64,
    pub tombstones: u64,
    pub schema_changes: u64,
    pub ignored: u64,
    pub rejected: u64,
    pub other_tables: u64,
}

/// Where a [`Decoder`]'s batch stood ([`Decoder::mark`]).
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    rows: usize,
    columns: usize,
    bytes: usize,
    stats: DecodeStats,
}

impl Mark {
    /// The mark of an empty batch with the same columns.
    pub fn clear(&mut self) {
        self.rows = 0;
        self.bytes = 0;
        self.stats = DecodeStats::default();
    }
}

/// The `headers` column: a map per row, built from flat keys and values.
struct HeadersBuilder {
    offsets: Vec<i32>,
    keys: ColumnBuilder,
    values: ColumnBuilder,
}

impl HeadersBuilder {
    fn new() -> Self {
        HeadersBuilder {
            offsets: vec![0],
            keys: ColumnBuilder::new(ColumnDef::new("key", ColumnType::String)),
            values: ColumnBuilder::new(ColumnDef::new("value", ColumnType::Bytes)),
        }
    }

    fn push(&mut self, headers: Headers<'_>) -> Result<(), DecodeError> {
        for (name, value) in headers.iter() {
            self.keys.push_str(&name)?;
            match value {
                Some(v) => self.values.push_binary(v)?,
                None => self.values.append_null(),
            }
        }
        self.offsets.push(self.keys.len() as i32);
        Ok(())
    }

    /// Keeps the headers of the first `rows` rows.
    fn truncate(&mut self, rows: usize) {
        if rows + 1 >= self.offsets.len() {
            return;
        }
        self.offsets.truncate(rows + 1);
        let entries = self.offsets[rows] as usize;
        self.keys.truncate(entries);
        self.values.truncate(entries);
    }

    fn finish(&mut self) -> ArrayRef {
        let offsets = std::mem::replace(&mut self.offsets, vec![0]);
        let keys = self.keys.finish();
        let values = self.values.finish();
        let arrow::datatypes::DataType::Map(entries_field, _) = envelope::headers_type() else {
            unreachable!("headers are a map")
        };
        let arrow::datatypes::DataType::Struct(fields) = entries_field.data_type().clone() else {
            unreachable!("map entries are a struct")
        };
        let entries = arrow::array::StructArray::new(fields, vec![keys, values], None);
        Arc::new(arrow::array::MapArray::new(
            entries_field,
            arrow::buffer::OffsetBuffer::new(offsets.into()),
            entries,
            None,
            false,
        ))
    }
}

/// Envelope column builders, in envelope order.
struct EnvelopeBuilders {
    op: ColumnBuilder,
    event_time: ColumnBuilder,
    source_time: ColumnBuilder,
    texts: Vec<ColumnBuilder>,
}

impl EnvelopeBuilders {
    fn new() -> Self {
        let time = || ColumnType::ZonedTimestamp { unit: Unit::Micros };
        EnvelopeBuilders {
            op: ColumnBuilder::new(ColumnDef::new(envelope::OP, ColumnType::String)),
            event_time: ColumnBuilder::new(ColumnDef::new(envelope::EVENT_TIME, time())),
            source_time: ColumnBuilder::new(ColumnDef::new(envelope::SOURCE_TIME, time())),
            texts: SOURCE_TEXT_COLUMNS
                .iter()
                .map(|name| ColumnBuilder::new(ColumnDef::new(*name, ColumnType::String)))
                .collect(),
        }
    }

    fn all(&mut self) -> impl Iterator<Item = &mut ColumnBuilder> {
        [&mut self.op, &mut self.event_time, &mut self.source_time]
            .into_iter()
            .chain(self.texts.iter_mut())
    }
}

const TEXT_CONNECTOR: usize = 0;
const TEXT_NAME: usize = 1;
const TEXT_DB: usize = 2;
const TEXT_SCHEMA: usize = 3;
const TEXT_TABLE: usize = 4;
const TEXT_POSITION: usize = 5;
const TEXT_TXID: usize = 6;
const TEXT_SNAPSHOT: usize = 7;
/// `source.origin`: not Debezium's, but the field a change capture fills with the site
/// that made the write (multi-site sync, docs/sync.md).
const TEXT_ORIGIN: usize = 8;

/// Source-block fields that together locate an event in the source's log.
const POSITION_KEYS: [&str; 12] = [
    "file",
    "pos",
    "row",
    "gtid",
    "lsn",
    "change_lsn",
    "commit_lsn",
    "event_serial_no",
    "scn",
    "commit_scn",
    "ord",
    "sequence",
];

/// A parsed `schema` block, remembered by its exact bytes.
struct SchemaEntry {
    raw: Vec<u8>,
    /// The row fields the schema declares (from its `after`/`before` struct).
    row: Vec<ColumnDef>,
    merged_at: Option<u64>,
    source_types: SourceTypes,
    /// Set when the schema names a column that `unknown_columns: reject` refuses.
    rejected: Option<String>,
    /// The native table ([`native::NativeTables`]) whose block this is, once looked up.
    native: Option<u32>,
}

/// Which row image a value is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Before,
    After,
}

#[derive(Default)]
struct EventState {
    op: Option<Op>,
    message_op: bool,
    before: Option<bool>,
    after: Option<bool>,
    event_time: Option<i64>,
    schema_change: Option<SchemaChangeInfo>,
}

/// Top-level keys of an envelope, classified so the parser borrow ends before the value
/// is read.
#[derive(Clone, Copy)]
enum Key {
    Schema,
    Payload,
    Op,
    Before,
    After,
    Source,
    TsMs,
    TsUs,
    TsNs,
    Transaction,
    HistoryRecord,
    Ddl,
    TableChanges,
    Other,
}

impl Key {
    /// Classifies a raw key. Keys with escapes never match, which is right: Debezium's
    /// envelope keys have none.
    fn of(name: &[u8]) -> Key {
        match name {
            b"schema" => Key::Schema,
            b"payload" => Key::Payload,
            b"op" => Key::Op,
            b"before" => Key::Before,
            b"after" => Key::After,
            b"source" => Key::Source,
            b"ts_ms" => Key::TsMs,
            b"ts_us" => Key::TsUs,
            b"ts_ns" => Key::TsNs,
            b"transaction" => Key::Transaction,
            b"historyRecord" => Key::HistoryRecord,
            b"ddl" => Key::Ddl,
            b"tableChanges" => Key::TableChanges,
            _ => Key::Other,
        }
    }
}

/// Keys of the `source` block that weir keeps.
#[derive(Clone, Copy)]
enum SourceKey {
    Text(usize),
    Time(Key),
    Position(&'static str),
    Other,
}

impl SourceKey {
    fn of(name: &[u8]) -> SourceKey {
        match name {
            b"connector" => SourceKey::Text(TEXT_CONNECTOR),
            b"name" => SourceKey::Text(TEXT_NAME),
            b"db" => SourceKey::Text(TEXT_DB),
            b"schema" => SourceKey::Text(TEXT_SCHEMA),
            b"table" | b"collection" => SourceKey::Text(TEXT_TABLE),
            b"snapshot" => SourceKey::Text(TEXT_SNAPSHOT),
            b"txId" => SourceKey::Text(TEXT_TXID),
            b"origin" => SourceKey::Text(TEXT_ORIGIN),
            b"ts_ms" => SourceKey::Time(Key::TsMs),
            b"ts_us" => SourceKey::Time(Key::TsUs),
            b"ts_ns" => SourceKey::Time(Key::TsNs),
            _ => match POSITION_KEYS.iter().find(|k| k.as_bytes() == name) {
                Some(k) => SourceKey::Position(k),
                None => SourceKey::Other,
            },
        }
    }
}

pub struct Decoder {
    spec: Arc<TableSpec>,
    format: Format,
    /// Set when events of other tables are to be refused (`TableSpec::table_check`).
    filter: Option<route::TableFilter>,
    /// Whether the event being decoded is known to be this table's (or need not be).
    table_confirmed: bool,
    /// Set when decoding stopped before changing the table's schema, to check first
    /// that the event is this table's ([`Decoder::guard_schema_change`]).
    table_check_asked: bool,
    table: TableSchema,
    before: Image,
    after: Image,
    envelope: EnvelopeBuilders,
    headers: HeadersBuilder,
    positions: Vec<Position>,
    bytes: usize,
    schemas: Vec<SchemaEntry>,
    scratch: String,
    table_info: Arc<TableInfo>,
    table_info_version: Option<u64>,
    /// The row fields and batch schema of the last finish, and the table version they
    /// were built for: a table's columns rarely change, and rebuilding them for every
    /// batch of every table of a many-table pipeline was a good part of its allocations.
    finished_schema: Option<(u64, Fields, SchemaRef)>,
    /// The tables of weir's own source, whose native events this decoder reads.
    native: Option<Arc<native::NativeTables>>,
    /// The `source` block of the last native event read, repeated by the next events
    /// that carry the same one.
    native_source: Option<native::NativeSource>,
    pub stats: DecodeStats,
}

impl Decoder {
    pub fn new(spec: TableSpec, format: Format) -> Self {
        let table = TableSchema::new(&spec);
        let before = Image::new(&table.columns);
        let after = Image::new(&table.columns);
        let table_info = Arc::new(TableInfo {
            name: spec.name.clone(),
            primary_key: spec.primary_key.clone(),
            target: spec.target.clone(),
        });
        let filter = match spec.table_check {
            table::TableCheck::Off => None,
            table::TableCheck::Named => {
                Some(route::TableFilter::new(&spec.name, spec.case_insensitive))
            }
            table::TableCheck::Exact => Some(route::TableFilter::exact(&spec.name)),
        };
        Decoder {
            spec: Arc::new(spec),
            format,
            filter,
            table_confirmed: false,
            table_check_asked: false,
            table,
            before,
            after,
            envelope: EnvelopeBuilders::new(),
            headers: HeadersBuilder::new(),
            positions: Vec::new(),
            bytes: 0,
            schemas: Vec::new(),
            scratch: String::new(),
            table_info,
            table_info_version: None,
            finished_schema: None,
            native: None,
            native_source: None,
            stats: DecodeStats::default(),
        }
    }

    /// Rows in the batch being built.
    pub fn rows(&self) -> usize {
        self.positions.len()
    }

    /// Input bytes of the rows in the batch being built.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The table's name (as the pipeline gives it).
    pub fn table_name(&self) -> &str {
        &self.spec.name
    }

    /// The table's columns as decoded so far.
    pub fn columns(&self) -> &[ColumnDef] {
        &self.table.columns
    }

    /// Decodes one record. On `Ok(Outcome::Row)` the row is in the batch; on any other
    /// result the batch is exactly as before the call.
    pub fn decode(
        &mut self,
        record: RawRecord<'_>,
        position: &Position,
    ) -> Result<Outcome, DecodeError> {
        let rows = self.rows();
        let columns = self.table.columns.len();
        self.table_confirmed = self.filter.is_none();
        let mut result = self.decode_record(record);
        if self.table_check_asked {
            // Decoding stopped before changing the table's schema: an event of another
            // table must not widen a column, add one, or stop the pipeline with a type.
            // Read its table, then decode again from the start.
            self.table_check_asked = false;
            self.rollback(rows, columns);
            self.scan_table(record, position, true)?;
            self.table_confirmed = true;
            result = self.decode_record(record);
        }
        // Every decoded row is judged by the table the decoder read for it (a comparison);
        // a record that failed to decode is read again only to tell why it is refused.
        match &result {
            Ok(Outcome::Row) => {
                if let Err(reason) = self.judge_decoded(rows, position) {
                    self.rollback(rows, columns);
                    self.stats.other_tables += 1;
                    return Err(DecodeError::OtherTable(reason));
                }
            }
            Err(DecodeError::Record(_)) if self.filter.is_some() => {
                if let Err(other) = self.scan_table(record, position, false) {
                    self.rollback(rows, columns);
                    return Err(other);
                }
            }
            _ => {}
        }
        if result == Ok(Outcome::Row)
            && let Err(e) = self.headers.push(record.headers)
        {
            result = Err(e);
        }
        match &result {
            Ok(Outcome::Row) => {
                self.positions.push(position.clone());
                self.bytes += record.value.map_or(0, <[u8]>::len);
                self.stats.rows += 1;
            }
            other => {
                self.rollback(rows, columns);
                match other {
                    Ok(Outcome::Tombstone) => self.stats.tombstones += 1,
                    Ok(Outcome::SchemaChange(_)) => self.stats.schema_changes += 1,
                    Ok(Outcome::Ignored(_)) => self.stats.ignored += 1,
                    Err(DecodeError::Record(_)) => self.stats.rejected += 1,
                    _ => {}
                }
            }
        }
        result
    }

    /// Reads the table of a record that is not (fully) decoded and refuses it if it is
    /// another's. A record whose table cannot be read is refused too when `strict` (it
    /// is about to change the table's schema), else left to its decode error.
    fn scan_table(
        &mut self,
        record: RawRecord<'_>,
        position: &Position,
        strict: bool,
    ) -> Result<(), DecodeError> {
        let Some(filter) = &self.filter else {
            return Ok(());
        };
        let reason = match filter.scan(record.value, self.format, self.native.is_some(), position) {
            route::Verdict::Accept => return Ok(()),
            route::Verdict::Unreadable if !strict => return Ok(()),
            route::Verdict::Unreadable => filter.unreadable(),
            route::Verdict::Refuse(reason) => reason,
        };
        self.stats.other_tables += 1;
        Err(DecodeError::OtherTable(reason))
    }

    /// Judges row `row` by the table the decoder read for it (from the event's `source`
    /// block, else from a Debezium-style topic name).
    fn judge_decoded(&self, row: usize, position: &Position) -> Result<(), String> {
        let Some(filter) = &self.filter else {
            return Ok(());
        };
        let text = |column: usize| self.envelope.texts[column].text_at(row);
        filter.judge(
            [text(TEXT_DB), text(TEXT_SCHEMA), text(TEXT_TABLE)],
            position,
        )
    }

    /// Called before anything changes the table's schema while decoding an event: until
    /// the event is known to be this table's, stop decoding (the caller checks it, then
    /// decodes again). Returns an error only to unwind; `decode` handles it.
    fn guard_schema_change(&mut self) -> Result<(), DecodeError> {
        if self.table_confirmed {
            return Ok(());
        }
        self.table_check_asked = true;
        Err(reject("checking the event's table first"))
    }

    /// Where the batch being built stands, to [`rewind`](Self::rewind) to.
    pub fn mark(&self) -> Mark {
        Mark {
            rows: self.rows(),
            columns: self.table.columns.len(),
            bytes: self.bytes,
            stats: self.stats,
        }
    }

    /// Drops the rows decoded since `mark`, and the columns they added. A column whose
    /// type they widened keeps its wider type (the batch's rows hold either).
    pub fn rewind(&mut self, mark: Mark) {
        self.rollback(mark.rows, mark.columns);
        self.headers.truncate(mark.rows);
        self.positions.truncate(mark.rows);
        self.bytes = mark.bytes;
        self.stats = mark.stats;
    }

    fn rollback(&mut self, rows: usize, columns: usize) {
        self.table.truncate(columns);
        self.before.truncate(rows, columns);
        self.after.truncate(rows, columns);
        for builder in self.envelope.all() {
            builder.truncate(rows);
        }
    }

    /// Builds the batch from the rows decoded since the last call. `checkpoint` is where to
    /// resume once it is applied (it covers records that produced no row, too).
    pub fn finish(&mut self, checkpoint: Checkpoint) -> ChangeBatch {
        let (fields, schema) = match &self.finished_schema {
            Some((version, fields, schema)) if *version == self.table.version => {
                (fields.clone(), schema.clone())
            }
            _ => {
                let fields = self.table.fields();
                let schema = envelope::schema(fields.clone());
                let mut metadata: HashMap<String, String> = [
                    ("weir.table".to_string(), self.spec.name.clone()),
                    (
                        "weir.primary_key".to_string(),
                        self.table_info().primary_key.join(","),
                    ),
                ]
                .into();
                if let Some(target) = &self.spec.target {
                    metadata.insert("weir.target".into(), target.clone());
                }
                let schema = Arc::new(schema.as_ref().clone().with_metadata(metadata));
                self.finished_schema = Some((self.table.version, fields.clone(), schema.clone()));
                (fields, schema)
            }
        };
        let mut columns: Vec<ArrayRef> = self.envelope.all().map(|b| b.finish()).collect();
        columns.push(self.headers.finish());
        columns.push(Arc::new(self.before.finish(&fields)));
        columns.push(Arc::new(self.after.finish(&fields)));
        let data =
            RecordBatch::try_new(schema, columns).expect("builders match the envelope schema");
        self.bytes = 0;
        ChangeBatch {
            data,
            positions: Arc::new(std::mem::take(&mut self.positions)),
            checkpoint,
            table: self.table_info(),
        }
    }

    /// The table name and primary key columns as spelt in the data.
    pub fn table_info(&mut self) -> Arc<TableInfo> {
        if self.table_info_version != Some(self.table.version) {
            let primary_key = self
                .spec
                .primary_key
                .iter()
                .map(|k| match self.table.find(k, 0) {
                    Some(i) => self.table.columns[i].name.clone(),
                    None => k.clone(),
                })
                .collect();
            self.table_info = Arc::new(TableInfo {
                name: self.spec.name.clone(),
                primary_key,
                target: self.spec.target.clone(),
            });
            self.table_info_version = Some(self.table.version);
        }
        self.table_info.clone()
    }

    /// Checks the event is complete and consistent, then completes the row.
    fn finish_event(
        &mut self,
        mut state: EventState,
        key: Option<&[u8]>,
    ) -> Result<Outcome, DecodeError> {
        let row = self.rows();
        if let Some(info) = state.schema_change.take()
            && state.op.is_none()
        {
            return Ok(Outcome::SchemaChange(info));
        }
        if state.message_op {
            return Ok(Outcome::Ignored("logical decoding message"));
        }
        let Some(op) = state.op else {
            return Err(reject(
                "the event has no `op` field; expected a Debezium change event \
                 (set `format: debezium-json-unwrapped` for flattened rows)",
            ));
        };
        let has_before = state.before == Some(true);
        let has_after = state.after == Some(true);
        match op {
            Op::Create | Op::Read | Op::Update if !has_after => {
                return Err(reject(format!(
                    "`op` is `{}` but the event has no `after` image",
                    op.as_str()
                )));
            }
            Op::Delete if !has_before => match key {
                Some(key) if !key.trim_ascii().is_empty() => {
                    self.decode_key_into_before(key)?;
                }
                _ => {
                    return Err(reject(
                        "a delete without a `before` image and without a record key: weir \
                         cannot tell which row to delete (for PostgreSQL sources, give the \
                         table a primary key or REPLICA IDENTITY FULL)",
                    ));
                }
            },
            _ => {}
        }
        if self.before.rows() == row {
            self.before.null_row();
        }
        if self.after.rows() == row {
            self.after.null_row();
        }
        if op != Op::Truncate {
            self.check_primary_key(op)?;
        }
        self.envelope.op.push_str(op.as_str())?;
        if let Some(t) = state.event_time {
            self.envelope.event_time.push_i64(t);
        }
        for builder in self.envelope.all() {
            if builder.len() == row {
                builder.append_null();
            }
        }
        Ok(Outcome::Row)
    }

    fn check_primary_key(&mut self, op: Op) -> Result<(), DecodeError> {
        let row = self.rows();
        let (image, image_name) = match op {
            Op::Delete => (&self.before, "before"),
            _ => (&self.after, "after"),
        };
        for key in &self.spec.primary_key {
            let present = self.table.find(key, 0).is_some_and(|i| {
                image.columns[i].len() > row && is_valid_at(&image.columns[i], row)
            });
            if !present {
                return Err(reject(format!(
                    "primary key column `{key}` is missing or null in the `{image_name}` image"
                )));
            }
        }
        Ok(())
    }
}

fn is_valid_at(builder: &ColumnBuilder, row: usize) -> bool {
    builder.len() == row + 1 && builder.last_is_valid()
}

#[cfg(test)]
mod tests;
