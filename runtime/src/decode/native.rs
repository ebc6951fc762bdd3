//! Change events as weir's own `postgres-cdc` source hands them to the decoder: the
//! values of a Debezium event without the document around them.
//!
//! Writing every change as a Debezium JSON document (its schema block, its keys, its
//! `source` block) and reading it back was most of weir's CPU per change in a copy or a
//! catch-up (docs/benchmarks.md). A native event carries the same values, each as the
//! JSON text the document would hold, so the decoder reads them with the same code and
//! the batches are the same; what it drops is the framing. The table's schema block and
//! column names are registered once ([`NativeTables`]), not repeated per event.
//!
//! An event is UTF-8 text: [`MARK`], then each header field preceded by `FIELD` (0x1f):
//! the table's id, `op`, then the `source` block's `name`, `db`, `schema`, `table`,
//! `ts_ms`, `snapshot`, `txId` and `lsn`, then the event's `ts_ms`, all as JSON values.
//! Then the `before` and the `after` image, each preceded by `IMAGE` (0x1e): `n` when
//! absent, else `r` and one `FIELD`-prefixed JSON value per column, in the registered
//! order. JSON text never holds a raw 0x1e or 0x1f (control characters are escaped in
//! strings and allowed nowhere else), so the framing cannot be confused by a value.
//!
//! Only a decoder given the source's registry reads native events; to any other, the
//! text is not JSON and the record is refused like any malformed event. Where an event
//! leaves weir (a dead letter) it is written out as the Debezium document
//! ([`NativeTables::render`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::json::Json;
use super::route::Fields;
use super::*;

/// How every native event begins: a byte no JSON document begins with, and a version.
pub const MARK: &[u8] = b"\x1eweir1";
/// Precedes each header field and each value of an image.
pub const FIELD: u8 = 0x1f;
/// Precedes each image.
pub const IMAGE: u8 = 0x1e;
/// Marks a value the source could not read as text (not UTF-8), followed by what it
/// reads as (a JSON string, invalid bytes replaced): the decoder refuses the event with
/// the reason; a dead letter shows the string. No JSON value begins with it.
pub const UNREADABLE: u8 = b'!';

/// A table's Debezium form, registered once by the source.
#[derive(Debug)]
pub struct NativeTable {
    /// `{"schema":…,"payload":`, as every Debezium event of the table begins.
    head: String,
    /// The column names as JSON string contents (escaped, without quotes), in the order
    /// of an image's values.
    keys: Vec<String>,
}

const HEAD_START: &str = r#"{"schema":"#;
const HEAD_END: &str = r#","payload":"#;

impl NativeTable {
    /// `head` must be `{"schema":<block>,"payload":`.
    pub fn new(head: String, keys: Vec<String>) -> NativeTable {
        debug_assert!(head.starts_with(HEAD_START) && head.ends_with(HEAD_END));
        NativeTable { head, keys }
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
        (&table.head, &table.keys).hash(&mut hasher);
        let form = hasher.finish();
        let mut registry = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let Registry { tables, by_form } = &mut *registry;
        let ids = by_form.entry(form).or_default();
        if let Some(&id) = ids.iter().find(|&&id| {
            let known = &tables[id as usize];
            known.head == table.head && known.keys == table.keys
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
    let mut values = cells(image);
    for (i, key) in table.keys.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        let value = values.next()?;
        out.extend_from_slice(value.strip_prefix(&[UNREADABLE]).unwrap_or(value));
    }
    if values.next().is_some() {
        return None;
    }
    out.push(b'}');
    Some(())
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

/// A native event's parts, each a JSON value (the images: their `FIELD`-prefixed values).
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
}

impl<'a> NativeEvent<'a> {
    pub fn parse(value: &'a [u8]) -> Option<NativeEvent<'a>> {
        let (mut event, images) = Self::parse_header(value)?;
        // `images` is `<before>␞<after>`, and neither holds a ␞.
        let split = memchr::memchr(IMAGE, images)?;
        let after = &images[split + 1..];
        if memchr::memchr(IMAGE, after).is_some() {
            return None;
        }
        event.before = image(&images[..split])?;
        event.after = image(after)?;
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
        let event = NativeEvent {
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
        };
        next().is_none().then_some((event, &rest[end + 1..]))
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

/// An image's part: `None` for `n` (no image), its values for `r`; `Some(None)` is
/// returned as the outer `Option` of a malformed part.
fn image(part: &[u8]) -> Option<Option<&[u8]>> {
    match part.split_first()? {
        (b'n', []) => Some(None),
        // Nothing before the first value's ␟ (an image of no columns is empty).
        (b'r', values) if values.first().is_none_or(|&b| b == FIELD) => Some(Some(values)),
        _ => None,
    }
}

/// The values of an image, in column order.
fn cells(image: &[u8]) -> impl Iterator<Item = &[u8]> {
    // Each value runs from just after its ␟ to the next ␟ (or the end); a non-empty
    // image begins with a ␟ ([`image`] checks it). One pass over the bytes.
    let mut start = (!image.is_empty()).then_some(1);
    let mut ends = memchr::memchr_iter(FIELD, image).skip(1);
    std::iter::from_fn(move || {
        let from = start?;
        let end = ends.next();
        start = end.map(|end| end + 1);
        Some(&image[from..end.unwrap_or(image.len())])
    })
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
                    self.decode_native_row(values, &table.keys, which, sources.as_deref())?;
                    true
                }
            };
            match which {
                Which::Before => state.before = Some(present),
                Which::After => state.after = Some(present),
            }
        }
        let row = self.rows();
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
        self.end_source(row, source_time)?;
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
    /// the registered column names.
    fn decode_native_row(
        &mut self,
        values: &[u8],
        keys: &[String],
        which: Which,
        sources: Option<&Vec<Option<ColumnType>>>,
    ) -> Result<(), DecodeError> {
        let row = self.image_mut(which).rows();
        let mut hint = 0;
        let mut values = cells(values);
        for key in keys {
            let value = values
                .next()
                .ok_or_else(|| reject("a change event from weir's own source lacks a value"))?;
            if value.first() == Some(&UNREADABLE) {
                return Err(reject(format!(
                    "the value of column `{key}` is not UTF-8 (the source database's encoding \
                     may be SQL_ASCII, holding bytes of another); weir reads text as UTF-8 only"
                )));
            }
            let mut j = Json::new(value);
            if let Some(i) = self.column_of_key(key.as_bytes(), hint, &mut j)? {
                self.decode_value(&mut j, which, i, row, sources)?;
                hint = i + 1;
            }
            j.finish()?;
        }
        if values.next().is_some() {
            return Err(reject(
                "a change event from weir's own source has more values than columns",
            ));
        }
        self.image_mut(which).end_row();
        Ok(())
    }
}
