//! Change events as weir's own `postgres-cdc` source hands them to the decoder: the
//! values of a Debezium event without the document around them.
//!
//! Writing every change as a Debezium JSON document (its schema block, its keys, its
//! `source` block) and reading it back was most of weir's CPU per change in a copy or a
//! catch-up (docs/benchmarks.md). A native event carries the same values, as PostgreSQL
//! printed them, and the decoder makes the same batches of them as of the document (see
//! below); what it drops is the framing. The table's schema block, column names and
//! column kinds are registered once ([`NativeTables`]), not repeated per event.
//!
//! An event begins with [`MARK`], then each header field preceded by `FIELD` (0x1f): the
//! table's id, `op`, then the `source` block's `name`, `db`, `schema`, `table`, `ts_ms`,
//! `snapshot`, `txId` and `lsn`, then the event's `ts_ms`, all as JSON values (JSON text
//! never holds a raw 0x1e or 0x1f, so a header field cannot be confused with the framing).
//! Then the `before` and the `after` image, each preceded by `IMAGE` (0x1e): `n` when
//! absent, else `r` and one value per column, in the registered order.
//!
//! A value is a tag byte: [`VALUE_NULL`]; or [`VALUE_TEXT`] or [`VALUE_UNREADABLE`], then
//! the length of the value's bytes (4 bytes, little-endian) and the bytes. A value is
//! PostgreSQL's text output of the column, as the source read it: not its JSON form. The
//! decoder converts the common pairs of a column's kind and type ([`append_text`])
//! straight into the column; any other value is written as the JSON text the Debezium
//! document would hold ([`Kind::write_value`]) and read by the same code as that document,
//! so both give the same batch. Writing every value as JSON, and reading it back, was most
//! of the copy's CPU after the framing went (docs/benchmarks.md).
//!
//! Only a decoder given the source's registry reads native events; to any other, the
//! text is not JSON and the record is refused like any malformed event. Where an event
//! leaves weir (a dead letter) it is written out as the Debezium document
//! ([`NativeTables::render`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::builder::ColumnBuilder;
use super::json::Json;
use super::route::Fields;
use super::*;
use crate::source::postgres_cdc::values::{Kind, write_json_string};

/// How every native event begins: a byte no JSON document begins with, and a version.
pub const MARK: &[u8] = b"\x1eweir2";
/// Precedes each header field.
pub const FIELD: u8 = 0x1f;
/// Precedes each image.
pub const IMAGE: u8 = 0x1e;
/// A value that is SQL NULL.
pub const VALUE_NULL: u8 = b'n';
/// A value in PostgreSQL's text output, followed by its length and its bytes.
pub const VALUE_TEXT: u8 = b't';
/// A value the source could not read as text (not UTF-8), followed by its length and
/// what it reads as (invalid bytes replaced): the decoder refuses the event with the
/// reason; a dead letter shows the text.
pub const VALUE_UNREADABLE: u8 = b'!';

/// Appends a value of text or unreadable (`tag`) to a native event.
pub fn write_value(out: &mut Vec<u8>, tag: u8, text: &str) -> Result<(), String> {
    let len = u32::try_from(text.len())
        .map_err(|_| format!("a value of {} bytes (at most 4 GiB)", text.len()))?;
    out.push(tag);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

/// A table's Debezium form, registered once by the source.
#[derive(Debug)]
pub struct NativeTable {
    /// `{"schema":…,"payload":`, as every Debezium event of the table begins.
    head: String,
    /// The column names as JSON string contents (escaped, without quotes), in the order
    /// of an image's values.
    keys: Vec<String>,
    /// How each column's text becomes its JSON value, in the same order.
    kinds: Vec<Kind>,
}

const HEAD_START: &str = r#"{"schema":"#;
const HEAD_END: &str = r#","payload":"#;

impl NativeTable {
    /// `head` must be `{"schema":<block>,"payload":`; `keys` and `kinds` are the
    /// columns', in an image's order.
    pub fn new(head: String, keys: Vec<String>, kinds: Vec<Kind>) -> NativeTable {
        debug_assert!(head.starts_with(HEAD_START) && head.ends_with(HEAD_END));
        debug_assert_eq!(keys.len(), kinds.len());
        NativeTable { head, keys, kinds }
    }

    /// The `schema` block.
    fn block(&self) -> &[u8] {
        let bytes = self.head.as_bytes();
        bytes
            .get(HEAD_START.len()..bytes.len().saturating_sub(HEAD_END.len()))
            .unwrap_or_default()
    }
}

/// The tables a source has described, by id. Shared between the source (which adds)
/// and the decoders (which read); a table described again (a new column) is a new id.
#[derive(Debug, Default)]
pub struct NativeTables {
    inner: RwLock<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    tables: Vec<Arc<NativeTable>>,
    /// Ids by a hash of the table's form: PostgreSQL describes a table again on every
    /// new replication session and after cache invalidations, and an unchanged
    /// description keeps its id instead of growing the registry.
    by_form: HashMap<u64, Vec<u32>>,
}

impl NativeTables {
    /// The id of a table of this form: its existing one, else a new one.
    pub fn register(&self, table: NativeTable) -> u32 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (&table.head, &table.keys, &table.kinds).hash(&mut hasher);
        let form = hasher.finish();
        let mut registry = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let Registry { tables, by_form } = &mut *registry;
        let ids = by_form.entry(form).or_default();
        if let Some(&id) = ids.iter().find(|&&id| {
            let known = &tables[id as usize];
            known.head == table.head && known.keys == table.keys && known.kinds == table.kinds
        }) {
            return id;
        }
        tables.push(Arc::new(table));
        let id = (tables.len() - 1) as u32;
        ids.push(id);
        id
    }

    pub fn get(&self, id: u32) -> Option<Arc<NativeTable>> {
        let registry = self.inner.read().unwrap_or_else(|e| e.into_inner());
        registry.tables.get(id as usize).cloned()
    }

    /// How many distinct tables are registered.
    pub fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .tables
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The Debezium document of a native event (`None` for anything else, or an event
    /// that does not parse): what a dead letter holds.
    pub fn render(&self, value: &[u8]) -> Option<Vec<u8>> {
        let event = NativeEvent::parse(value)?;
        let table = self.get(event.id)?;
        let mut out = Vec::with_capacity(table.head.len() + value.len() * 2);
        out.extend_from_slice(table.head.as_bytes());
        out.extend_from_slice(br#"{"before":"#);
        render_image(&mut out, &table, event.before)?;
        out.extend_from_slice(br#","after":"#);
        render_image(&mut out, &table, event.after)?;
        out.extend_from_slice(br#","source":{"#);
        for (i, (name, value)) in event.source_block().into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(name);
            out.extend_from_slice(b"\":");
            out.extend_from_slice(value);
        }
        out.extend_from_slice(br#"},"op":""#);
        out.extend_from_slice(event.op);
        out.extend_from_slice(br#"","ts_ms":"#);
        out.extend_from_slice(event.event_ts_ms);
        out.extend_from_slice(b"}}");
        Some(out)
    }
}

fn render_image(out: &mut Vec<u8>, table: &NativeTable, image: Option<&[u8]>) -> Option<()> {
    let Some(image) = image else {
        out.extend_from_slice(b"null");
        return Some(());
    };
    out.push(b'{');
    let mut values = Values::new(image);
    let mut json = String::new();
    for (i, (key, kind)) in table.keys.iter().zip(&table.kinds).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        json.clear();
        values.next()?.ok()?.write_json(*kind, &mut json);
        out.extend_from_slice(json.as_bytes());
    }
    if values.next().is_some() {
        return None;
    }
    out.push(b'}');
    Some(())
}

/// One value of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NativeValue<'a> {
    Null,
    Text(&'a str),
    Unreadable(&'a str),
}

impl NativeValue<'_> {
    /// The value's JSON form in the Debezium document. A value without an exact form of
    /// its kind (a `NaN` numeric, an infinite date) is written as a JSON string, which a
    /// column of the kind's type refuses (a text column takes it as it is), so its event
    /// becomes a dead letter instead of stopping the source at it for good.
    fn write_json(self, kind: Kind, out: &mut String) {
        match self {
            NativeValue::Null => out.push_str("null"),
            NativeValue::Unreadable(text) => write_json_string(out, text),
            NativeValue::Text(text) => {
                let start = out.len();
                if kind.write_value(out, text).is_err() {
                    out.truncate(start);
                    write_json_string(out, text);
                }
            }
        }
    }
}

/// The values of an image, in column order; an item is `Err` where the bytes are not a
/// well-formed value (after which the iterator ends).
struct Values<'a> {
    rest: &'a [u8],
}

impl<'a> Values<'a> {
    fn new(image: &'a [u8]) -> Self {
        Values { rest: image }
    }

    /// The value at the start of `rest`, and what follows it.
    fn split(rest: &'a [u8]) -> Option<(NativeValue<'a>, &'a [u8])> {
        let (&tag, rest) = rest.split_first()?;
        if tag == VALUE_NULL {
            return Some((NativeValue::Null, rest));
        }
        if tag != VALUE_TEXT && tag != VALUE_UNREADABLE {
            return None;
        }
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let bytes = rest.get(4..4usize.checked_add(len)?)?;
        let text = std::str::from_utf8(bytes).ok()?;
        let value = if tag == VALUE_TEXT {
            NativeValue::Text(text)
        } else {
            NativeValue::Unreadable(text)
        };
        Some((value, &rest[4 + len..]))
    }
}

impl<'a> Iterator for Values<'a> {
    type Item = Result<NativeValue<'a>, ()>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match Self::split(self.rest) {
            Some((value, rest)) => {
                self.rest = rest;
                Some(Ok(value))
            }
            None => {
                self.rest = &[];
                Some(Err(()))
            }
        }
    }
}

/// The values of an image at the start of `part`: up to the ␞ that begins the next
/// image, or the end. `None` when a value is malformed.
fn image_values(part: &[u8]) -> Option<&[u8]> {
    let mut rest = part;
    // A tag is never ␞, so a ␞ where a value would begin ends the image.
    while rest.first().is_some_and(|&b| b != IMAGE) {
        rest = Values::split(rest)?.1;
    }
    Some(&part[..part.len() - rest.len()])
}

/// The contents of a JSON string literal without escapes (`None` for anything else).
fn plain_string(value: &[u8]) -> Option<&str> {
    let inner = value.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if memchr::memchr2(b'"', b'\\', inner).is_some() || inner.iter().any(|b| *b < 0x20) {
        return None;
    }
    std::str::from_utf8(inner).ok()
}

/// The table id of a native event, read without the rest of its header.
pub fn table_id(value: &[u8]) -> Option<u32> {
    let rest = value.strip_prefix(MARK)?.strip_prefix(&[FIELD])?;
    let end = memchr::memchr(FIELD, rest)?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Whether a record's value is a native event.
pub fn is_native(value: &[u8]) -> bool {
    value.starts_with(MARK)
}

/// A native event's parts: the header's, each a JSON value; the images', their values
/// (read with [`Values`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct NativeEvent<'a> {
    pub id: u32,
    pub op: &'a [u8],
    pub server: &'a [u8],
    pub db: &'a [u8],
    pub schema: &'a [u8],
    pub table: &'a [u8],
    pub ts_ms: &'a [u8],
    pub snapshot: &'a [u8],
    pub tx_id: &'a [u8],
    pub lsn: &'a [u8],
    pub event_ts_ms: &'a [u8],
    pub before: Option<&'a [u8]>,
    pub after: Option<&'a [u8]>,
    /// The header's bytes from `server` to `lsn`: the fields of the `source` block.
    pub source_span: &'a [u8],
}

/// A `source` block as the decoder last read it from a native event: its bytes, and the
/// values it gave the envelope's columns.
#[derive(Debug, Default)]
pub struct NativeSource {
    span: Vec<u8>,
    /// Whether the values below are those of `span`.
    filled: bool,
    texts: Vec<Option<String>>,
    time: Option<i64>,
}

impl<'a> NativeEvent<'a> {
    pub fn parse(value: &'a [u8]) -> Option<NativeEvent<'a>> {
        let (mut event, images) = Self::parse_header(value)?;
        // `images` is `<before>␞<after>`; a value may hold any byte, so each image is
        // read value by value to find where it ends.
        let (before, rest) = image(images)?;
        let (after, rest) = image(rest.strip_prefix(&[IMAGE])?)?;
        if !rest.is_empty() {
            return None;
        }
        event.before = before;
        event.after = after;
        Some(event)
    }

    /// The header alone (the images are left unread and unchecked), and what follows
    /// the ␞ that ends it.
    fn parse_header(value: &'a [u8]) -> Option<(NativeEvent<'a>, &'a [u8])> {
        let rest = value.strip_prefix(MARK)?;
        let end = memchr::memchr(IMAGE, rest)?;
        let mut fields = rest[..end].strip_prefix(&[FIELD])?.split(|&b| b == FIELD);
        let mut next = || fields.next();
        let id = std::str::from_utf8(next()?).ok()?.parse().ok()?;
        let mut event = NativeEvent {
            id,
            op: next()?,
            server: next()?,
            db: next()?,
            schema: next()?,
            table: next()?,
            ts_ms: next()?,
            snapshot: next()?,
            tx_id: next()?,
            lsn: next()?,
            event_ts_ms: next()?,
            before: None,
            after: None,
            source_span: &[],
        };
        if next().is_some() {
            return None;
        }
        // `server` to `lsn` are one run of the header's bytes.
        let offset = |field: &[u8]| field.as_ptr() as usize - value.as_ptr() as usize;
        event.source_span = &value[offset(event.server)..offset(event.lsn) + event.lsn.len()];
        Some((event, &rest[end + 1..]))
    }

    /// The event's `source` block, field by field in Debezium's order: each name and
    /// its JSON value. The decoder reads it and the Debezium document is written from it.
    fn source_block(&self) -> [(&'static [u8], &'a [u8]); 11] {
        [
            (b"version", br#""weir""#),
            (b"connector", br#""postgresql""#),
            (b"name", self.server),
            (b"ts_ms", self.ts_ms),
            (b"snapshot", self.snapshot),
            (b"db", self.db),
            (b"schema", self.schema),
            (b"table", self.table),
            (b"txId", self.tx_id),
            (b"lsn", self.lsn),
            (b"xmin", b"null"),
        ]
    }

    /// The fields that say which table an event is for, from its header.
    pub fn table_fields(value: &'a [u8]) -> Option<Fields<'a>> {
        Self::parse_header(value)?.0.fields()
    }

    /// The fields that say which table the event is for.
    pub fn fields(&self) -> Option<Fields<'a>> {
        let text = |value: &'a [u8]| -> Option<Cow<'a, str>> { Json::new(value).str().ok() };
        Some(Fields {
            db: Some(text(self.db)?),
            schema: Some(text(self.schema)?),
            table: Some(text(self.table)?),
        })
    }
}

/// An image at the start of `part`: `None` for `n` (no image), its values for `r`; and
/// the bytes after it. `None` for a malformed image.
fn image(part: &[u8]) -> Option<(Option<&[u8]>, &[u8])> {
    match part.split_first()? {
        (b'n', rest) => Some((None, rest)),
        (b'r', rest) => {
            let values = image_values(rest)?;
            Some((Some(values), &rest[values.len()..]))
        }
        _ => None,
    }
}

impl Decoder {
    /// Lets the decoder read native events of these tables.
    pub fn set_native(&mut self, tables: Option<Arc<NativeTables>>) {
        self.native = tables;
    }

    pub(super) fn reads_native(&self, value: &[u8]) -> bool {
        self.native.is_some() && is_native(value)
    }

    /// Decodes a native event as [`Self::decode_envelope_document`] decodes its Debezium
    /// document: the same fields, in the same order, through the same code per value.
    pub(super) fn decode_native(
        &mut self,
        value: &[u8],
        key: Option<&[u8]>,
    ) -> Result<Outcome, DecodeError> {
        let malformed = || reject("a malformed change event from weir's own source");
        let event = NativeEvent::parse(value).ok_or_else(malformed)?;
        let table = self
            .native
            .as_ref()
            .and_then(|tables| tables.get(event.id))
            .ok_or_else(malformed)?;
        let schema = self.native_schema(event.id, &table)?;
        let mut state = EventState::default();
        for (which, image) in [(Which::Before, event.before), (Which::After, event.after)] {
            let present = match image {
                None => false,
                Some(values) => {
                    let sources = self.source_types(Some(schema))?;
                    self.decode_native_row(values, &table, which, sources.as_deref())?;
                    true
                }
            };
            match which {
                Which::Before => state.before = Some(present),
                Which::After => state.after = Some(present),
            }
        }
        let row = self.rows();
        match self.native_source.take() {
            // Each event of a copy, and of one transaction of the stream, repeats the
            // `source` block of the one before: its values are those of the row before.
            // (A streamed change carries its own `lsn`, so there the block differs each
            // time: a miss keeps only the bytes, and the values are kept at a second
            // event with the same bytes.)
            Some(known) if known.span == event.source_span && known.filled => {
                self.repeat_source(&known, row)?;
                self.native_source = Some(known);
            }
            Some(known) if known.span == event.source_span => {
                self.read_source(&event, row)?;
                self.native_source = Some(self.source_of(row, known));
            }
            known => {
                self.read_source(&event, row)?;
                let mut known = known.unwrap_or_default();
                known.span.clear();
                known.span.extend_from_slice(event.source_span);
                known.filled = false;
                self.native_source = Some(known);
            }
        }
        let op = std::str::from_utf8(event.op).map_err(|_| malformed())?;
        state.op = Some(Op::parse(op).ok_or_else(|| {
            reject(format!(
                "unknown operation `{op}`; Debezium uses c, u, d, r and t"
            ))
        })?);
        let mut j = Json::new(event.event_ts_ms);
        state.event_time = debezium::read_epoch_micros(&mut j, Key::TsMs)?;
        j.finish()?;
        self.finish_event(state, key)
    }

    /// Reads the `source` block of `event` into row `row`'s envelope columns.
    fn read_source(&mut self, event: &NativeEvent<'_>, row: usize) -> Result<(), DecodeError> {
        self.scratch.clear();
        let mut source_time = None;
        for (name, value) in event.source_block() {
            let key = SourceKey::of(name);
            if let (SourceKey::Text(column), Some(text)) = (key, plain_string(value)) {
                // A string without escapes, as nearly all names are: its bytes as they are.
                let builder = &mut self.envelope.texts[column];
                if builder.len() == row {
                    builder.push_str(text)?;
                }
                continue;
            }
            let mut j = Json::new(value);
            self.source_field(key, &mut j, row, &mut source_time)?;
            j.finish()?;
        }
        self.end_source(row, source_time)
    }

    /// What [`Self::read_source`] wrote into row `row` from `source`'s bytes, kept to
    /// repeat for the next events whose `source` block is the same.
    fn source_of(&self, row: usize, mut source: NativeSource) -> NativeSource {
        source.filled = true;
        source.texts.resize(self.envelope.texts.len(), None);
        for (kept, builder) in source.texts.iter_mut().zip(&self.envelope.texts) {
            let text = (builder.len() > row)
                .then(|| builder.text_at(row))
                .flatten();
            match (kept, text) {
                (Some(kept), Some(text)) => {
                    kept.clear();
                    kept.push_str(text);
                }
                (kept, text) => *kept = text.map(str::to_string),
            }
        }
        let time = &self.envelope.source_time;
        source.time = (time.len() > row).then(|| time.i64_at(row)).flatten();
        source
    }

    /// Writes a kept `source` block into row `row`, as [`Self::read_source`] wrote it.
    fn repeat_source(&mut self, source: &NativeSource, row: usize) -> Result<(), DecodeError> {
        for (text, builder) in source.texts.iter().zip(&mut self.envelope.texts) {
            if let Some(text) = text
                && builder.len() == row
            {
                builder.push_str(text)?;
            }
        }
        if let Some(time) = source.time
            && self.envelope.source_time.len() == row
        {
            self.envelope.source_time.push_i64(time);
        }
        Ok(())
    }

    /// The cache index of a native table's schema block, parsed once per id.
    fn native_schema(&mut self, id: u32, table: &NativeTable) -> Result<usize, DecodeError> {
        match self.schemas.iter().rposition(|s| s.native == Some(id)) {
            Some(index) => self.checked_schema(index),
            None => {
                let index = self.schema_entry(table.block())?;
                self.schemas[index].native = Some(id);
                Ok(index)
            }
        }
    }

    /// An image's values, as [`Self::decode_row`] reads an image object whose keys are
    /// the registered column names: each straight into its column where
    /// [`append_text`] knows the pair of kind and type, else through its JSON form.
    fn decode_native_row(
        &mut self,
        values: &[u8],
        table: &NativeTable,
        which: Which,
        sources: Option<&Vec<Option<ColumnType>>>,
    ) -> Result<(), DecodeError> {
        let row = self.image_mut(which).rows();
        let mut hint = 0;
        let mut values = Values::new(values);
        let mut json = std::mem::take(&mut self.scratch);
        for (key, &kind) in table.keys.iter().zip(&table.kinds) {
            let value = match values.next() {
                Some(Ok(value)) => value,
                Some(Err(())) => {
                    return Err(reject("a malformed change event from weir's own source"));
                }
                None => {
                    return Err(reject(
                        "a change event from weir's own source lacks a value",
                    ));
                }
            };
            if let NativeValue::Unreadable(_) = value {
                return Err(reject(format!(
                    "the value of column `{key}` is not UTF-8 (the source database's encoding \
                     may be SQL_ASCII, holding bytes of another); weir reads text as UTF-8 only"
                )));
            }
            if let Some(i) = self.table.find_bytes(key.as_bytes(), hint)
                && self.append_native(which, i, row, kind, value, sources)?
            {
                hint = i + 1;
                continue;
            }
            json.clear();
            value.write_json(kind, &mut json);
            let mut j = Json::new(json.as_bytes());
            if let Some(i) = self.column_of_key(key.as_bytes(), hint, &mut j)? {
                self.decode_value(&mut j, which, i, row, sources)?;
                hint = i + 1;
            }
            j.finish()?;
        }
        self.scratch = json;
        if values.next().is_some() {
            return Err(reject(
                "a change event from weir's own source has more values than columns",
            ));
        }
        self.image_mut(which).end_row();
        Ok(())
    }

    /// Appends `value` to column `index` without its JSON form, as
    /// [`Self::decode_value`] would append that form; false (nothing appended) where
    /// the value needs the JSON path: an inferred column, a value seen twice in the row,
    /// or a pair of kind and type [`append_text`] does not know.
    fn append_native(
        &mut self,
        which: Which,
        index: usize,
        row: usize,
        kind: Kind,
        value: NativeValue<'_>,
        sources: Option<&Vec<Option<ColumnType>>>,
    ) -> Result<bool, DecodeError> {
        if self.table.inferred[index] {
            return Ok(false);
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
        if builder.len() > row {
            return Ok(false);
        }
        match value {
            NativeValue::Null => {
                builder.append_null();
                Ok(true)
            }
            NativeValue::Text(text) => append_text(builder, kind, text, source).map_err(|e| {
                reject(format!(
                    "column `{}`: {}",
                    self.table.columns[index].name, e.0
                ))
            }),
            NativeValue::Unreadable(_) => Ok(false),
        }
    }
}

/// Appends `text`, a value of `kind` in PostgreSQL's text output, to `builder` as
/// [`ColumnBuilder::append_json`] appends its JSON form ([`Kind::write_value`]), for the
/// pairs of kind and column type a copy or a stream meets most; false (nothing
/// appended) for any other pair or form, which then goes through the JSON form. A test
/// holds both paths to the same columns.
pub(super) fn append_text(
    builder: &mut ColumnBuilder,
    kind: Kind,
    text: &str,
    source: &ColumnType,
) -> Result<bool, super::builder::ValueError> {
    use super::builder::{convert_unit, nanos_to_unit, unit_of};
    use crate::source::postgres_cdc::{datetime, values};
    use chrono::{Datelike, NaiveDate, Timelike};
    match (kind, &builder.def.ty) {
        // A leading zero is no JSON number; PostgreSQL prints none, but the JSON path
        // would refuse one, so it goes there.
        (
            Kind::Integer(_),
            ColumnType::Int8 | ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64,
        ) if values::is_integer(text) && !leading_zero(text) => {
            let Ok(i) = text.parse::<i64>() else {
                return Ok(false);
            };
            builder.push_integer(i)?;
        }
        (Kind::Text | Kind::Named(_), ColumnType::String) => builder.push_str(text)?,
        (Kind::Boolean, ColumnType::Boolean) => match text {
            "t" => builder.push_bool(true),
            "f" => builder.push_bool(false),
            _ => return Ok(false),
        },
        (Kind::Decimal { .. }, ColumnType::Decimal { precision, .. })
            if *precision <= 38 && values::is_number(text) && !leading_zero(text) =>
        {
            builder.push_decimal_number(text.as_bytes())?;
        }
        (Kind::Date, ColumnType::Date) => {
            let Some(date) = datetime::date(text) else {
                return Ok(false);
            };
            let days = date.signed_duration_since(NaiveDate::default()).num_days();
            let Ok(days) = i32::try_from(days) else {
                return Ok(false);
            };
            builder.push_i32(days);
        }
        (
            Kind::ZonedTimestamp,
            &ColumnType::ZonedTimestamp { unit } | &ColumnType::Timestamp { unit, .. },
        ) => {
            let Some(at) = datetime::zoned(text) else {
                return Ok(false);
            };
            if !(0..=9999).contains(&at.year()) || at.nanosecond() >= 1_000_000_000 {
                return Ok(false);
            }
            let at = at.and_utc();
            let nanos = i128::from(at.timestamp()) * 1_000_000_000
                + i128::from(at.timestamp_subsec_nanos());
            builder.push_i64(nanos_to_unit(nanos, unit)?);
        }
        (Kind::Timestamp { millis }, &ColumnType::Timestamp { unit, .. }) => {
            let Some((at, "")) = datetime::date_time(text) else {
                return Ok(false);
            };
            let at = at.and_utc();
            let value = if millis {
                at.timestamp_millis()
            } else {
                at.timestamp_micros()
            };
            builder.push_i64(convert_unit(value, unit_of(source).unwrap_or(unit), unit)?);
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Whether a number's integer part has a leading zero (`007`, `-01.5`), which JSON's
/// grammar does not allow.
fn leading_zero(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text).as_bytes();
    digits.len() > 1 && digits[0] == b'0' && digits[1].is_ascii_digit()
}
