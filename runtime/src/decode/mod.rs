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

pub mod builder;
pub mod decimal;
pub mod json;
pub mod route;
pub mod table;
pub mod temporal;
pub mod types;

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
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
    /// Set when events of other tables are to be refused (`TableSpec::only_its_table`).
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
        let filter = spec
            .only_its_table
            .then(|| route::TableFilter::new(&spec.name, spec.case_insensitive));
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
        let reason = match filter.scan(record.value, self.format, position) {
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

    fn decode_record(&mut self, record: RawRecord<'_>) -> Result<Outcome, DecodeError> {
        let value = record.value.map(<[u8]>::trim_ascii).unwrap_or_default();
        if value.is_empty() || value == b"null" {
            return self.tombstone(record.key);
        }
        match self.format {
            Format::DebeziumJson => self.decode_envelope_document(value, record.key),
            Format::DebeziumJsonUnwrapped => self.decode_unwrapped(value),
        }
    }

    fn tombstone(&mut self, key: Option<&[u8]>) -> Result<Outcome, DecodeError> {
        // For flattened rows, a tombstone with a key is how a delete arrives.
        match (self.format, key) {
            (Format::DebeziumJsonUnwrapped, Some(key)) if !key.trim_ascii().is_empty() => {
                let mut state = EventState {
                    op: Some(Op::Delete),
                    ..EventState::default()
                };
                self.decode_key_into_before(key)?;
                state.before = Some(true);
                self.finish_event(state, None)
            }
            _ => Ok(Outcome::Tombstone),
        }
    }

    fn decode_envelope_document(
        &mut self,
        bytes: &[u8],
        key: Option<&[u8]>,
    ) -> Result<Outcome, DecodeError> {
        let mut j = Json::new(bytes);
        let peek = j.peek()?;
        if peek != Token::Object {
            return Err(reject(format!(
                "expected a JSON object for a Debezium event, found {}",
                peek.describe()
            )));
        }
        let mut state = EventState::default();
        let mut schema: Option<usize> = None;
        let mut deferred_payload: Option<&[u8]> = None;
        let mut payload_null = false;
        let mut saw_payload = false;
        let mut name = j.object_first()?.map(Key::of);
        while let Some(k) = name {
            match k {
                Key::Schema => {
                    let raw = j.skip_slice()?;
                    if raw != b"null" {
                        schema = Some(self.schema_entry(raw)?);
                    }
                }
                Key::Payload => {
                    saw_payload = true;
                    if j.peek()? == Token::Null {
                        j.null()?;
                        payload_null = true;
                    } else if schema.is_some() {
                        self.decode_payload(&mut j, &mut state, schema)?;
                    } else {
                        // The schema may come after the payload; read the payload last.
                        deferred_payload = Some(j.skip_slice()?);
                    }
                }
                other => self.envelope_field(other, &mut j, &mut state, schema)?,
            }
            name = j.object_next()?.map(Key::of);
        }
        j.finish()?;
        if let Some(payload) = deferred_payload {
            let mut pj = Json::new(payload);
            self.decode_payload(&mut pj, &mut state, schema)?;
        }
        if payload_null {
            return self.tombstone(key);
        }
        if saw_payload && state.op.is_none() && state.schema_change.is_none() && !state.message_op {
            return Err(reject("the event's `payload` has no `op` field"));
        }
        self.finish_event(state, key)
    }

    fn decode_payload(
        &mut self,
        j: &mut Json,
        state: &mut EventState,
        schema: Option<usize>,
    ) -> Result<(), DecodeError> {
        let peek = j.peek()?;
        if peek != Token::Object {
            return Err(reject(format!(
                "`payload` must be an object, found {}",
                peek.describe()
            )));
        }
        let mut name = j.object_first()?.map(Key::of);
        while let Some(k) = name {
            self.envelope_field(k, j, state, schema)?;
            name = j.object_next()?.map(Key::of);
        }
        Ok(())
    }

    fn envelope_field(
        &mut self,
        key: Key,
        j: &mut Json,
        state: &mut EventState,
        schema: Option<usize>,
    ) -> Result<(), DecodeError> {
        let row = self.rows();
        match key {
            Key::Op => {
                let peek = j.peek()?;
                if peek == Token::Null {
                    j.null()?;
                    return Ok(());
                }
                if peek != Token::String {
                    return Err(reject(format!(
                        "`op` must be a string, found {}",
                        peek.describe()
                    )));
                }
                let op = j.str()?;
                match Op::parse(&op) {
                    Some(op) => state.op = Some(op),
                    None if op == "m" => state.message_op = true,
                    None => {
                        return Err(reject(format!(
                            "unknown operation `{op}`; Debezium uses c, u, d, r and t"
                        )));
                    }
                }
            }
            Key::Before | Key::After => {
                let which = if matches!(key, Key::Before) {
                    Which::Before
                } else {
                    Which::After
                };
                let peek = j.peek()?;
                let present = match peek {
                    Token::Null => {
                        j.null()?;
                        false
                    }
                    Token::Object => {
                        let sources = self.source_types(schema)?;
                        self.decode_row(j, which, sources.as_deref())?;
                        true
                    }
                    other => {
                        return Err(reject(format!(
                            "`{}` must be an object or null, found {}",
                            if which == Which::Before {
                                "before"
                            } else {
                                "after"
                            },
                            other.describe()
                        )));
                    }
                };
                match which {
                    Which::Before => state.before = Some(present),
                    Which::After => state.after = Some(present),
                }
            }
            Key::Source => self.decode_source(j, row)?,
            Key::TsMs | Key::TsUs | Key::TsNs => {
                let micros = read_epoch_micros(j, key)?;
                // Prefer the finest resolution the event offers.
                if micros.is_some() && (state.event_time.is_none() || !matches!(key, Key::TsMs)) {
                    state.event_time = micros;
                }
            }
            Key::Transaction => self.decode_transaction(j, row)?,
            Key::HistoryRecord | Key::Ddl | Key::TableChanges => {
                let info = state
                    .schema_change
                    .get_or_insert_with(SchemaChangeInfo::default);
                match key {
                    Key::HistoryRecord if j.peek()? == Token::String => {
                        let text = j.str()?.to_string();
                        read_history_record(&text, info);
                    }
                    Key::Ddl if j.peek()? == Token::String => info.ddl = Some(j.str()?.to_string()),
                    _ => j.skip()?,
                }
            }
            Key::Schema | Key::Payload | Key::Other => j.skip()?,
        }
        Ok(())
    }

    /// Reads the `source` block: coordinates, time, and a readable log position.
    fn decode_source(&mut self, j: &mut Json, row: usize) -> Result<(), DecodeError> {
        let peek = j.peek()?;
        if peek == Token::Null {
            j.null()?;
            return Ok(());
        }
        if peek != Token::Object {
            return Err(reject(format!(
                "`source` must be an object, found {}",
                peek.describe()
            )));
        }
        self.scratch.clear();
        let mut source_time: Option<i64> = None;
        let mut key = j.object_first()?.map(SourceKey::of);
        while let Some(k) = key {
            match k {
                SourceKey::Text(column) => {
                    let builder = &mut self.envelope.texts[column];
                    if builder.len() == row {
                        push_scalar_text(j, builder)?;
                    } else {
                        j.skip()?;
                    }
                }
                SourceKey::Time(which) => {
                    let micros = read_epoch_micros(j, which)?;
                    if micros.is_some() && (source_time.is_none() || !matches!(which, Key::TsMs)) {
                        source_time = micros;
                    }
                }
                SourceKey::Position(name) => {
                    let mark = self.scratch.len();
                    if !self.scratch.is_empty() {
                        self.scratch.push(',');
                    }
                    self.scratch.push_str(name);
                    self.scratch.push('=');
                    let value_start = self.scratch.len();
                    append_scalar_text(j, &mut self.scratch)?;
                    if self.scratch.len() == value_start {
                        // null or empty: leave it out
                        self.scratch.truncate(mark);
                    }
                }
                SourceKey::Other => j.skip()?,
            }
            key = j.object_next()?.map(SourceKey::of);
        }
        if let Some(t) = source_time
            && self.envelope.source_time.len() == row
        {
            self.envelope.source_time.push_i64(t);
        }
        if !self.scratch.is_empty() && self.envelope.texts[TEXT_POSITION].len() == row {
            self.envelope.texts[TEXT_POSITION].push_str(&self.scratch)?;
        }
        Ok(())
    }

    fn decode_transaction(&mut self, j: &mut Json, row: usize) -> Result<(), DecodeError> {
        let peek = j.peek()?;
        if peek != Token::Object {
            j.skip()?;
            return Ok(());
        }
        let mut key = j.object_first()?.map(|k| k == b"id");
        while let Some(is_id) = key {
            if is_id && self.envelope.texts[TEXT_TXID].len() == row {
                push_scalar_text(j, &mut self.envelope.texts[TEXT_TXID])?;
            } else {
                j.skip()?;
            }
            key = j.object_next()?.map(|k| k == b"id");
        }
        Ok(())
    }

    /// Reads a row image object into `before` or `after`.
    fn decode_row(
        &mut self,
        j: &mut Json,
        which: Which,
        sources: Option<&Vec<Option<ColumnType>>>,
    ) -> Result<(), DecodeError> {
        let row = match which {
            Which::Before => self.before.rows(),
            Which::After => self.after.rows(),
        };
        let mut hint = 0;
        // Keys are matched as raw bytes; columns arrive in the same order in most events,
        // so the next column is tried first.
        let mut key = j.object_first()?;
        while let Some(raw) = key {
            let index = match self.table.find_bytes(raw, hint) {
                Some(i) => Some(i),
                None => {
                    // Rare: a key with escapes (compared once decoded), or a new column.
                    let name = key_string(raw);
                    match self.table.find(&name, hint) {
                        Some(i) => Some(i),
                        None => self.unknown_column(&name, j)?,
                    }
                }
            };
            if let Some(i) = index {
                self.decode_value(j, which, i, row, sources)?;
                hint = i + 1;
            }
            key = j.object_next()?;
        }
        match which {
            Which::Before => self.before.end_row(),
            Which::After => self.after.end_row(),
        }
        Ok(())
    }

    /// A row field the table does not have: add, ignore or reject it per `unknown_columns`.
    fn unknown_column(&mut self, name: &str, j: &mut Json) -> Result<Option<usize>, DecodeError> {
        match self.spec.unknown_columns {
            UnknownColumns::Ignore => {
                j.skip()?;
                Ok(None)
            }
            UnknownColumns::Reject => Err(reject(format!(
                "column `{name}` is not declared in `table.columns` (unknown_columns: reject)"
            ))),
            UnknownColumns::Add => {
                self.guard_schema_change()?;
                // A column the target already has keeps the target's type; otherwise the
                // values decide.
                let (ty, inferred) = match self.spec.target_type(name) {
                    Some(ty) => (ty.clone(), false),
                    None => (ColumnType::Null, true),
                };
                let index = self.table.push(ColumnDef::new(name, ty), inferred);
                let def = self.table.columns[index].clone();
                self.before.add_column(def.clone());
                self.after.add_column(def);
                Ok(Some(index))
            }
        }
    }

    fn decode_value(
        &mut self,
        j: &mut Json,
        which: Which,
        index: usize,
        row: usize,
        sources: Option<&Vec<Option<ColumnType>>>,
    ) -> Result<(), DecodeError> {
        let image = match which {
            Which::Before => &mut self.before,
            Which::After => &mut self.after,
        };
        if image.columns[index].len() > row {
            return Err(reject(format!(
                "column `{}` appears twice in the same row",
                self.table.columns[index].name
            )));
        }
        let peek = j.peek()?;
        if self.table.inferred[index] && peek != Token::Null {
            return self.decode_inferred(j, which, index, peek);
        }
        let column_type = &self.table.columns[index].ty;
        let source = sources
            .and_then(|s| s.get(index))
            .and_then(Option::as_ref)
            .unwrap_or(column_type);
        let builder = match which {
            Which::Before => &mut self.before.columns[index],
            Which::After => &mut self.after.columns[index],
        };
        builder.append_json(j, peek, source).map_err(|e| {
            reject(format!(
                "column `{}`: {}",
                self.table.columns[index].name, e.0
            ))
        })
    }

    /// A value for a column whose type was inferred: the first value fixes the type, and an
    /// integer column widens to float64 at its first fractional value.
    fn decode_inferred(
        &mut self,
        j: &mut Json,
        which: Which,
        index: usize,
        peek: Token,
    ) -> Result<(), DecodeError> {
        let name = self.table.columns[index].name.clone();
        let current = self.table.columns[index].ty.clone();
        if (peek == Token::Number)
            && matches!(
                current,
                ColumnType::Null | ColumnType::Int64 | ColumnType::Float64
            )
        {
            let raw = j.number()?;
            let text = std::str::from_utf8(raw).unwrap_or_default();
            let is_integer = !raw.iter().any(|b| matches!(b, b'.' | b'e' | b'E'));
            let wanted = match (&current, is_integer) {
                (ColumnType::Float64, _) | (_, false) => ColumnType::Float64,
                _ => ColumnType::Int64,
            };
            if wanted == ColumnType::Int64 {
                let value: i64 = text.parse().map_err(|_| {
                    reject(format!(
                        "column `{name}`: {text} does not fit int64; declare the column as \
                         decimal(p,0) in `table.columns`"
                    ))
                })?;
                self.retype(index, ColumnType::Int64)?;
                self.image_mut(which).columns[index].push_i64(value);
            } else {
                let value: f64 = text
                    .parse()
                    .map_err(|_| reject(format!("column `{name}`: `{text}` is not a number")))?;
                self.retype(index, ColumnType::Float64)?;
                self.image_mut(which).columns[index].push_f64(value);
            }
            return Ok(());
        }
        if current == ColumnType::Null {
            let ty = match peek {
                Token::String => ColumnType::String,
                Token::True | Token::False => ColumnType::Boolean,
                _ => ColumnType::JsonText,
            };
            self.retype(index, ty)?;
        }
        let ty = self.table.columns[index].ty.clone();
        self.image_mut(which).columns[index]
            .append_json(j, peek, &ty)
            .map_err(|e| {
                reject(format!(
                    "column `{name}` (inferred as {} from earlier events): {}",
                    ty.name(),
                    e.0
                ))
            })
    }

    fn image_mut(&mut self, which: Which) -> &mut Image {
        match which {
            Which::Before => &mut self.before,
            Which::After => &mut self.after,
        }
    }

    /// Changes an inferred column's type, widening both images' builders.
    fn retype(&mut self, index: usize, ty: ColumnType) -> Result<(), DecodeError> {
        if self.table.columns[index].ty == ty {
            return Ok(());
        }
        self.guard_schema_change()?;
        let mut def = self.table.columns[index].clone();
        def.ty = ty;
        self.before.widen(index, def.clone())?;
        self.after.widen(index, def.clone())?;
        self.table.set(index, def);
        Ok(())
    }

    /// Parses a `schema` block (or finds it among recent ones) and merges its columns into
    /// the table. Returns the cache index.
    fn schema_entry(&mut self, raw: &[u8]) -> Result<usize, DecodeError> {
        let index = match self.schemas.iter().position(|s| s.raw == raw) {
            Some(i) => i,
            None => {
                let parsed: JsonValue = serde_json::from_slice(raw)
                    .map_err(|e| reject(format!("the `schema` block is not valid JSON: {e}")))?;
                let row =
                    row_columns(&parsed).map_err(|e| reject(format!("the `schema` block: {e}")))?;
                if self.schemas.len() >= 8 {
                    self.schemas.remove(0);
                }
                self.schemas.push(SchemaEntry {
                    raw: raw.to_vec(),
                    row,
                    merged_at: None,
                    source_types: Arc::new(Vec::new()),
                    rejected: None,
                });
                self.schemas.len() - 1
            }
        };
        if self.schemas[index].merged_at != Some(self.table.version) {
            self.merge_schema(index)?;
        }
        if let Some(reason) = &self.schemas[index].rejected {
            return Err(reject(reason.clone()));
        }
        Ok(index)
    }

    /// Merges a schema block's columns into the table. Each change to the table is
    /// guarded ([`Self::guard_schema_change`]); merging a block that changes nothing
    /// (another schema of this table, seen again) is not.
    fn merge_schema(&mut self, entry: usize) -> Result<(), DecodeError> {
        let row = self.schemas[entry].row.clone();
        let mut rejected = None;
        let mut ignored = Vec::new();
        for column in &row {
            let index = match self.table.find(&column.name, 0) {
                Some(i) => i,
                None => match self.spec.unknown_columns {
                    UnknownColumns::Add => {
                        self.guard_schema_change()?;
                        let column = self.with_target_type(column)?;
                        let i = self.table.push(column.clone(), false);
                        self.before.add_column(column.clone());
                        self.after.add_column(column);
                        i
                    }
                    UnknownColumns::Ignore => {
                        ignored.push(column.name.clone());
                        continue;
                    }
                    UnknownColumns::Reject => {
                        rejected = Some(format!(
                            "column `{}` is not declared in `table.columns` (unknown_columns: reject)",
                            column.name
                        ));
                        continue;
                    }
                },
            };
            if self.table.inferred[index] {
                // A schema is more trustworthy than inference: adopt its type if the values
                // seen so far convert.
                self.guard_schema_change()?;
                self.table.inferred[index] = false;
            }
            match self.table.merge_type(index, column) {
                Ok(None) => {}
                Ok(Some(widened)) => {
                    self.guard_schema_change()?;
                    self.before.widen(index, widened.clone())?;
                    self.after.widen(index, widened.clone())?;
                    self.table.set(index, widened);
                }
                Err(change) => {
                    self.guard_schema_change()?;
                    return Err(DecodeError::Fatal(change));
                }
            }
        }
        let mut sources = vec![None; self.table.columns.len()];
        for column in &row {
            if let Some(i) = self.table.find(&column.name, 0) {
                sources[i] = Some(column.ty.clone());
            }
        }
        let entry = &mut self.schemas[entry];
        entry.source_types = Arc::new(sources);
        entry.rejected = rejected;
        entry.merged_at = Some(self.table.version);
        Ok(())
    }

    /// A column new to this run, typed from the event's schema, checked against the type
    /// the target already holds it in (the wider of the two wins).
    fn with_target_type(&self, column: &ColumnDef) -> Result<ColumnDef, DecodeError> {
        let Some(target) = self.spec.target_type(&column.name) else {
            return Ok(column.clone());
        };
        let mut merged = column.clone();
        match types::merge(target, &column.ty, false) {
            types::Merge::Keep => merged.ty = target.clone(),
            types::Merge::Widen(ty) => merged.ty = ty,
            types::Merge::Incompatible => {
                return Err(DecodeError::Fatal(IncompatibleChange {
                    column: column.name.clone(),
                    from: target.name(),
                    to: column.ty.name(),
                }));
            }
        }
        Ok(merged)
    }

    fn source_types(&self, schema: Option<usize>) -> Result<Option<SourceTypes>, DecodeError> {
        Ok(schema.map(|i| self.schemas[i].source_types.clone()))
    }

    /// For a delete without a `before` image: the record key (`{"id": 1}`, with or without
    /// its own schema wrapper) supplies the primary key.
    fn decode_key_into_before(&mut self, key: &[u8]) -> Result<(), DecodeError> {
        let key = key.trim_ascii();
        let mut j = Json::new(key);
        if j.peek()? != Token::Object {
            return Err(reject("the record key is not a JSON object"));
        }
        // A key with a schema wrapper: use its payload.
        let parsed: JsonValue = serde_json::from_slice(key)
            .map_err(|e| reject(format!("the record key is not valid JSON: {e}")))?;
        let payload = match parsed.get("payload") {
            Some(p) if parsed.get("schema").is_some() => p.clone(),
            _ => parsed,
        };
        let text = payload.to_string();
        let mut j = Json::new(text.as_bytes());
        if j.peek()? != Token::Object {
            return Err(reject("the record key's payload is not a JSON object"));
        }
        self.decode_row(&mut j, Which::Before, None)
    }

    /// Flattened rows: the record is the row; `__`-prefixed fields fill the envelope.
    fn decode_unwrapped(&mut self, bytes: &[u8]) -> Result<Outcome, DecodeError> {
        let mut state = EventState::default();
        let deleted = unwrapped_is_deleted(bytes)?;
        let which = if deleted { Which::Before } else { Which::After };
        let mut j = Json::new(bytes);
        let peek = j.peek()?;
        if peek != Token::Object {
            return Err(reject(format!(
                "expected a JSON object (a flattened row), found {}",
                peek.describe()
            )));
        }
        let row = self.rows();
        let image_row = self.image_mut(which).rows();
        let mut name = j.object_first()?.map(key_string);
        let mut hint = 0;
        while let Some(k) = name {
            match k.as_str() {
                "__deleted" => j.skip()?,
                "__op" => {
                    if let Some(op) = read_scalar_text(&mut j)? {
                        state.op = Op::parse(&op);
                    }
                }
                "__table" | "__db" | "__schema" | "__source_ts_ms" | "__ts_ms" | "__lsn" => {
                    let text = read_scalar_text(&mut j)?;
                    let target = match k.as_str() {
                        "__table" => Some(TEXT_TABLE),
                        "__db" => Some(TEXT_DB),
                        "__schema" => Some(TEXT_SCHEMA),
                        "__lsn" => Some(TEXT_POSITION),
                        _ => None,
                    };
                    match (target, text) {
                        (Some(column), Some(text)) => {
                            let text = if column == TEXT_POSITION {
                                format!("lsn={text}")
                            } else {
                                text
                            };
                            if self.envelope.texts[column].len() == row {
                                self.envelope.texts[column].push_str(&text)?;
                            }
                        }
                        (None, Some(text)) => {
                            let micros = text.parse::<i64>().ok().map(|ms| ms * 1000);
                            if k == "__source_ts_ms" {
                                if let (Some(m), true) =
                                    (micros, self.envelope.source_time.len() == row)
                                {
                                    self.envelope.source_time.push_i64(m);
                                }
                            } else {
                                state.event_time = micros;
                            }
                        }
                        _ => {}
                    }
                }
                _ => {
                    let index = match self.table.find(&k, hint) {
                        Some(i) => Some(i),
                        None => self.unknown_column(&k, &mut j)?,
                    };
                    if let Some(i) = index {
                        self.decode_value(&mut j, which, i, image_row, None)?;
                        hint = i + 1;
                    }
                }
            }
            name = j.object_next()?.map(key_string);
        }
        j.finish()?;
        self.image_mut(which).end_row();
        if deleted {
            state.op = Some(Op::Delete);
            state.before = Some(true);
        } else {
            state.op = Some(match state.op {
                Some(Op::Delete) | None => Op::Update,
                Some(op) => op,
            });
            state.after = Some(true);
        }
        self.finish_event(state, None)
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

/// The row fields of a Debezium envelope schema (its `after` or `before` struct), or of a
/// row schema (flattened records).
fn row_columns(schema: &JsonValue) -> Result<Vec<ColumnDef>, String> {
    let fields = schema
        .get("fields")
        .and_then(JsonValue::as_array)
        .ok_or("expected a struct schema with `fields`")?;
    let image = ["after", "before"].iter().find_map(|name| {
        fields
            .iter()
            .find(|f| f.get("field").and_then(JsonValue::as_str) == Some(name))
    });
    let row_fields = match image {
        Some(image) => image
            .get("fields")
            .and_then(JsonValue::as_array)
            .ok_or("the row image schema has no `fields`")?,
        // No before/after: a schema-change event, or a flattened row schema.
        None if fields
            .iter()
            .any(|f| f.get("field").and_then(JsonValue::as_str) == Some("source")) =>
        {
            return Ok(Vec::new());
        }
        None => fields,
    };
    row_fields.iter().map(types::from_connect_schema).collect()
}

/// A scalar as text (strings as is, numbers as written, booleans as true/false); `None`
/// for null. Objects and arrays are skipped.
fn read_scalar_text(j: &mut Json) -> Result<Option<String>, DecodeError> {
    let peek = j.peek()?;
    Ok(match peek {
        Token::Null => {
            j.null()?;
            None
        }
        Token::String => Some(j.str()?.to_string()),
        Token::True | Token::False => Some(j.boolean()?.to_string()),
        _ if (peek == Token::Number) => Some(String::from_utf8_lossy(j.number()?).into_owned()),
        _ => {
            j.skip()?;
            None
        }
    })
}

/// Appends a scalar's text to a string column without an intermediate allocation; null
/// appends nothing.
fn push_scalar_text(j: &mut Json, builder: &mut ColumnBuilder) -> Result<(), DecodeError> {
    let peek = j.peek()?;
    match peek {
        Token::Null => j.null()?,
        Token::String => builder.push_str(&j.str()?)?,
        Token::True => {
            j.boolean()?;
            builder.push_str("true")?
        }
        Token::False => {
            j.boolean()?;
            builder.push_str("false")?
        }
        _ if (peek == Token::Number) => {
            let raw = j.number()?;
            builder.push_str(std::str::from_utf8(raw).unwrap_or_default())?
        }
        _ => j.skip()?,
    }
    Ok(())
}

/// Like [`push_scalar_text`], into a string.
fn append_scalar_text(j: &mut Json, out: &mut String) -> Result<(), DecodeError> {
    let peek = j.peek()?;
    match peek {
        Token::Null => j.null()?,
        Token::String => out.push_str(&j.str()?),
        Token::True | Token::False => out.push_str(if j.boolean()? { "true" } else { "false" }),
        _ if (peek == Token::Number) => {
            out.push_str(std::str::from_utf8(j.number()?).unwrap_or_default())
        }
        _ => j.skip()?,
    }
    Ok(())
}

/// `ts_ms`, `ts_us` or `ts_ns` as microseconds.
fn read_epoch_micros(j: &mut Json, key: Key) -> Result<Option<i64>, DecodeError> {
    let peek = j.peek()?;
    if !(peek == Token::Number) {
        j.skip()?;
        return Ok(None);
    }
    let v = builder::read_i64(j, peek)?;
    Ok(Some(match key {
        Key::TsMs => v.saturating_mul(1000),
        Key::TsNs => v / 1000,
        _ => v,
    }))
}

/// Reads the DDL and table changes out of a Debezium schema-history record.
fn read_history_record(text: &str, info: &mut SchemaChangeInfo) {
    let Ok(record) = serde_json::from_str::<JsonValue>(text) else {
        return;
    };
    if let Some(ddl) = record.get("ddl").and_then(JsonValue::as_str) {
        info.ddl = Some(ddl.to_string());
    }
    for change in record
        .get("tableChanges")
        .and_then(JsonValue::as_array)
        .into_iter()
        .flatten()
    {
        let kind = change
            .get("type")
            .and_then(JsonValue::as_str)
            .unwrap_or("?");
        let id = change
            .get("id")
            .and_then(JsonValue::as_str)
            .unwrap_or("?")
            .replace('"', "");
        info.table_changes.push((kind.to_string(), id));
    }
}

/// Whether a flattened row carries `__deleted: "true"` (or `true`).
fn unwrapped_is_deleted(bytes: &[u8]) -> Result<bool, DecodeError> {
    if !bytes.windows(11).any(|w| w == b"\"__deleted\"") {
        return Ok(false);
    }
    let mut j = Json::new(bytes);
    let mut name = j.object_first()?.map(|k| k == b"__deleted");
    while let Some(is_deleted) = name {
        if is_deleted {
            return Ok(matches!(read_scalar_text(&mut j)?.as_deref(), Some("true")));
        }
        j.skip()?;
        name = j.object_next()?.map(|k| k == b"__deleted");
    }
    Ok(false)
}

#[cfg(test)]
mod tests;
