//! Which table an event is for, and whether that is the pipeline's table.
//!
//! A change stream can carry more tables than the one a pipeline applies: a file holding a
//! whole capture, a topic an SMT routed several tables into. An event is only ever applied
//! to the table it came from, so each event's table is compared with `table.name` before
//! the event can change anything; an event for another table goes to the dead-letter
//! output (stage `route`) and never reaches the sink.
//!
//! The event's table is a path of up to three names, `db.schema.table`:
//! - from the envelope's `source` block: `db`, `schema` (absent for MySQL) and `table`
//!   (`collection` for MongoDB);
//! - for flattened rows (`debezium-json-unwrapped`), from `__db`, `__schema` and `__table`
//!   when the unwrap added them;
//! - else from a Kafka topic named the Debezium way, `<prefix>.<schema>.<table>`: its last
//!   segment is the table. A topic name without a dot names no table.
//!
//! `table.name` is a path too (`customers`, `public.customers`, `shop.public.customers`).
//! The two are compared from the right, part by part, where both have a part: `customers`
//! accepts `customers` in any schema and database, `public.customers` only in schema
//! `public` (or an event that names no schema). Names compare exactly, or ignoring ASCII
//! case with `table.case_insensitive: true`. An event without any table information is
//! decoded as before, and so is an event that is not a row change (a schema change, a
//! logical-decoding message), unless it would change the table's schema.
//!
//! Reading the table must cost little beside decoding, and must happen before anything
//! of the event can change the table. So the decoder decodes as usual, reading the
//! `source` block with the rest, and [`TableFilter::judge`]s every row it decoded by the
//! table it read (a comparison per event). Before anything would change the table's
//! schema (add or widen a column, merge a schema block), which happens rarely for the
//! table's own events, the decoder stops and the event is read again with
//! [`TableFilter::scan`]: one pass over its structure that finds the top-level `source`
//! block and skips everything else without validating it. An event whose table `scan`
//! cannot read is refused there rather than let through; the decoder's own reading
//! decides for every row it decodes, so the two readings never need to agree for an
//! event to be refused. In both, the first `source` block and the first of each of its
//! fields count, as in the decoder.

use std::borrow::Cow;

use super::Format;
use crate::position::Position;

/// The pipeline's table, as a path to compare events' tables with.
#[derive(Debug, Clone)]
pub struct TableFilter {
    parts: Vec<String>,
    name: String,
    case_insensitive: bool,
    /// Compare whole names, as `tables:` pipelines name source tables, rather than parts
    /// from the right.
    exact: bool,
}

/// What [`TableFilter::scan`] makes of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// This table's, or no table is named.
    Accept,
    /// Another table's, with the reason naming both.
    Refuse(String),
    /// The record names a table, but not in a form the scan can read.
    Unreadable,
}

impl TableFilter {
    pub fn new(name: &str, case_insensitive: bool) -> TableFilter {
        TableFilter {
            parts: name.split('.').map(str::to_string).collect(),
            name: name.to_string(),
            case_insensitive,
            exact: false,
        }
    }

    /// Accepts an event only when its source table, named as a `tables:` pipeline names
    /// it ([`crate::tables::source_table`]), is exactly `name`.
    pub fn exact(name: &str) -> TableFilter {
        TableFilter {
            exact: true,
            ..TableFilter::new(name, false)
        }
    }

    /// Judges a row by the table the decoder read for it: `[db, schema, table]`, each part
    /// `None` (or empty) where the event has none. Without a table the topic decides.
    /// `Err(reason)` for another table's row.
    pub fn judge(&self, path: [Option<&str>; 3], position: &Position) -> Result<(), String> {
        if self.exact {
            return match crate::tables::source_table_parts(path, position) {
                Some(parts) if parts.is(&self.name) => Ok(()),
                Some(parts) => Err(self.refusal(&parts.to_string(), None)),
                None => Err(format!(
                    "the event names no table, so it is not for table `{}`",
                    self.name
                )),
            };
        }
        let path = path.map(|part| part.filter(|p| !p.is_empty()));
        if path[2].is_some() {
            let parts = path.iter().flatten().copied();
            if self.accepts(parts.clone()) {
                return Ok(());
            }
            return Err(self.refusal(&parts.collect::<Vec<_>>().join("."), None));
        }
        match topic_table(position) {
            Some((topic, table)) if !self.accepts([table]) => Err(self.refusal(table, Some(topic))),
            _ => Ok(()),
        }
    }

    /// Reads the table of a record that has not been decoded (`value` is `None` for a
    /// tombstone: only the topic can name its table). `native`: the record may be a
    /// native event of weir's own source ([`super::native`]).
    pub fn scan(
        &self,
        value: Option<&[u8]>,
        format: Format,
        native: bool,
        position: &Position,
    ) -> Verdict {
        let fields = match value {
            None => Fields::default(),
            Some(value) if value.trim_ascii().is_empty() || value.trim_ascii() == b"null" => {
                Fields::default()
            }
            Some(value) => match Fields::read(value, format, native) {
                Some(fields) => fields,
                None => return Verdict::Unreadable,
            },
        };
        let path = [
            fields.db.as_deref(),
            fields.schema.as_deref(),
            fields.table.as_deref(),
        ];
        match self.judge(path, position) {
            Ok(()) => Verdict::Accept,
            Err(reason) => Verdict::Refuse(reason),
        }
    }

    /// The reason a row of table `theirs` is refused.
    fn refusal(&self, theirs: &str, topic: Option<&str>) -> String {
        let from = match topic {
            Some(topic) => format!(" (from its topic `{topic}`)"),
            None => String::new(),
        };
        format!(
            "the event is for table `{theirs}`{from}, not this pipeline's table `{}`; it was \
             not applied",
            self.name
        )
    }

    /// The reason an event whose table cannot be read is refused.
    pub fn unreadable(&self) -> String {
        format!(
            "weir cannot read which table the event is for (its `source` block is not \
             well-formed JSON), so it was not applied to this pipeline's table `{}`",
            self.name
        )
    }

    /// Whether an event of table `path` (its parts, outermost first) belongs to this
    /// pipeline: compared from the right, where both have a part.
    fn accepts<'p>(
        &self,
        path: impl IntoIterator<Item = &'p str, IntoIter: DoubleEndedIterator>,
    ) -> bool {
        self.parts
            .iter()
            .rev()
            .zip(path.into_iter().rev())
            .all(|(mine, theirs)| {
                if self.case_insensitive {
                    mine.eq_ignore_ascii_case(theirs)
                } else {
                    mine == theirs
                }
            })
    }
}

/// A Kafka topic named the Debezium way, and its last segment: the table.
pub(crate) fn topic_table(position: &Position) -> Option<(&str, &str)> {
    let Position::Kafka { topic, .. } = position else {
        return None;
    };
    let (_, table) = topic.rsplit_once('.')?;
    (!table.is_empty()).then_some((topic, table))
}

/// The fields of an event that say which table it is for (the first of each).
#[derive(Default)]
pub(crate) struct Fields<'a> {
    pub(crate) db: Option<Cow<'a, str>>,
    pub(crate) schema: Option<Cow<'a, str>>,
    pub(crate) table: Option<Cow<'a, str>>,
}

impl<'a> Fields<'a> {
    /// Reads them in one pass over the event's structure, without validating what it
    /// skips. `None` when the event is not a JSON object as far as the pass reads.
    /// `native`: the record may be a native event of weir's own source, whose header
    /// names its table (never trusted from any other source).
    pub(crate) fn read(value: &'a [u8], format: Format, native: bool) -> Option<Fields<'a>> {
        if native && format == Format::DebeziumJson && super::native::is_native(value) {
            return super::native::NativeEvent::table_fields(value);
        }
        let mut scan = Scan {
            bytes: value,
            at: 0,
        };
        let mut fields = Fields::default();
        match format {
            Format::DebeziumJson => {
                scan.object(|scan, key| match key {
                    b"payload" if scan.peek() == Some(b'{') => {
                        scan.object(|scan, key| fields.envelope_field(scan, key))
                    }
                    _ => fields.envelope_field(scan, key),
                })?;
            }
            Format::DebeziumJsonUnwrapped => {
                // Only `__` fields carry the table: the row's own columns may have any name.
                scan.object(|scan, key| match key {
                    b"__db" => scan.text_into(&mut fields.db),
                    b"__schema" => scan.text_into(&mut fields.schema),
                    b"__table" => scan.text_into(&mut fields.table),
                    _ => scan.skip(),
                })?;
            }
        }
        Some(fields)
    }

    /// Reads a `source` block alone (`block` starts at its `{`).
    pub(crate) fn read_source(block: &'a [u8]) -> Option<Fields<'a>> {
        let mut scan = Scan {
            bytes: block,
            at: 0,
        };
        let mut fields = Fields::default();
        scan.object(|scan, key| fields.source_field(scan, key))?;
        Some(fields)
    }

    fn envelope_field(&mut self, scan: &mut Scan<'a>, key: &[u8]) -> Option<()> {
        match key {
            b"source" if scan.peek() == Some(b'{') => {
                scan.object(|scan, key| self.source_field(scan, key))
            }
            _ => scan.skip(),
        }
    }

    fn source_field(&mut self, scan: &mut Scan<'a>, key: &[u8]) -> Option<()> {
        match key {
            b"db" => scan.text_into(&mut self.db),
            b"schema" => scan.text_into(&mut self.schema),
            b"table" | b"collection" => scan.text_into(&mut self.table),
            _ => scan.skip(),
        }
    }
}

/// A forward pass over JSON that finds keys and skips values without validating them.
/// Every method returns `None` on anything unexpected, which ends the pass.
struct Scan<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scan<'a> {
    fn whitespace(&mut self) {
        while self
            .bytes
            .get(self.at)
            .is_some_and(|b| b.is_ascii_whitespace())
        {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.whitespace();
        self.bytes.get(self.at).copied()
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// The raw bytes of a string (escapes left as they are), after its closing quote.
    fn raw_string(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let start = self.at;
        loop {
            let found = memchr::memchr2(b'"', b'\\', self.bytes.get(self.at..)?)?;
            self.at += found;
            if self.bytes[self.at] == b'\\' {
                self.at += 2;
                continue;
            }
            let raw = &self.bytes[start..self.at];
            self.at += 1;
            return Some(raw);
        }
    }

    /// Reads a string into `into`, unless it already holds one (the first counts);
    /// `null` leaves it alone.
    fn text_into(&mut self, into: &mut Option<Cow<'a, str>>) -> Option<()> {
        if self.peek()? != b'"' {
            return self.skip();
        }
        let start = self.at;
        let raw = self.raw_string()?;
        let text = if raw.contains(&b'\\') {
            Cow::Owned(serde_json::from_slice(&self.bytes[start..self.at]).ok()?)
        } else {
            Cow::Borrowed(std::str::from_utf8(raw).ok()?)
        };
        into.get_or_insert(text);
        Some(())
    }

    /// Calls `field` with each key of an object, positioned at its value; `field` must
    /// consume the value.
    fn object(&mut self, mut field: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.expect(b'{')?;
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            let key = self.raw_string()?;
            self.expect(b':')?;
            field(self, key)?;
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Skips one value: strings by their quotes, objects and arrays by counting brackets.
    fn skip(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.raw_string().map(drop),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match *self.bytes.get(self.at)? {
                        b'"' => {
                            self.raw_string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.at += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.at += 1;
                }
            }
            _ => {
                while self
                    .bytes
                    .get(self.at)
                    .is_some_and(|&b| !matches!(b, b',' | b'}' | b']') && !b.is_ascii_whitespace())
                {
                    self.at += 1;
                }
                Some(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Position {
        Position::File {
            stream: "file:events.jsonl".into(),
            line: 1,
            offset: 0,
            next: 10,
        }
    }

    fn kafka(topic: &str) -> Position {
        Position::Kafka {
            stream: format!("kafka:{topic}/0").into(),
            topic: topic.into(),
            partition: 0,
            offset: 0,
        }
    }

    fn verdict(
        filter: &TableFilter,
        event: &str,
        format: Format,
        at: &Position,
    ) -> Result<(), String> {
        match filter.scan(Some(event.as_bytes()), format, false, at) {
            Verdict::Accept => Ok(()),
            Verdict::Refuse(reason) => Err(reason),
            Verdict::Unreadable => Err("unreadable".into()),
        }
    }

    fn check(name: &str, event: &str, position: &Position) -> Result<(), String> {
        verdict(
            &TableFilter::new(name, false),
            event,
            Format::DebeziumJson,
            position,
        )
    }

    const PG: &str = r#"{"before":null,"after":{"id":1,"source":"web","op":"x"},
        "source":{"connector":"postgresql","db":"shop","schema":"public","table":"orders"},"op":"c"}"#;
    const MYSQL: &str = r#"{"schema":{"type":"struct","fields":[{"field":"source"}]},
        "payload":{"op":"u","after":{"id":1},"source":{"db":"inventory","table":"orders"}}}"#;

    #[test]
    fn names_compare_from_the_right_where_both_have_a_part() {
        for accepted in ["orders", "public.orders", "shop.public.orders"] {
            assert_eq!(check(accepted, PG, &file()), Ok(()), "{accepted}");
        }
        for refused in [
            "customers",
            "private.orders",
            "other.public.orders",
            "Orders",
        ] {
            let error = check(refused, PG, &file()).unwrap_err();
            assert!(
                error.contains("`shop.public.orders`") && error.contains(&format!("`{refused}`")),
                "{error}"
            );
        }
        assert_eq!(check("inventory.orders", MYSQL, &file()), Ok(()));
        assert!(check("public.orders", MYSQL, &file()).is_err());
        // The decoder's reading, judged the same way.
        let filter = TableFilter::new("public.orders", false);
        assert_eq!(
            filter.judge([Some("shop"), Some("public"), Some("orders")], &file()),
            Ok(())
        );
        assert!(
            filter
                .judge([Some("inventory"), None, Some("orders")], &file())
                .is_err()
        );
    }

    #[test]
    fn case_is_ignored_only_when_asked() {
        let filter = TableFilter::new("Public.ORDERS", true);
        assert_eq!(verdict(&filter, PG, Format::DebeziumJson, &file()), Ok(()));
    }

    #[test]
    fn without_a_table_in_the_event_a_debezium_topic_names_it() {
        let bare = r#"{"op":"c","after":{"id":1}}"#;
        assert_eq!(
            check("customers", bare, &file()),
            Ok(()),
            "no table information"
        );
        assert_eq!(
            check("customers", bare, &kafka("customers")),
            Ok(()),
            "no dot"
        );
        assert_eq!(
            check("customers", bare, &kafka("db1.inventory.customers")),
            Ok(())
        );
        let error = check("customers", bare, &kafka("db1.inventory.orders")).unwrap_err();
        assert!(
            error.contains("`orders` (from its topic `db1.inventory.orders`)"),
            "{error}"
        );
        // The event's own source block wins over the topic.
        assert_eq!(check("orders", PG, &kafka("db1.public.customers")), Ok(()));
        // A tombstone (a flattened delete carries its key there) has only the topic.
        let filter = TableFilter::new("customers", false);
        let topic = kafka("db1.inventory.orders");
        for value in [None, Some(&b""[..]), Some(&b"null"[..])] {
            assert!(matches!(
                filter.scan(value, Format::DebeziumJsonUnwrapped, false, &topic),
                Verdict::Refuse(_)
            ));
        }
        assert!(filter.judge([None; 3], &topic).is_err());
    }

    #[test]
    fn the_scan_reads_the_table_whatever_the_op() {
        // The decoder only asks before an event would change the table's schema, which
        // another table's event may not do, whatever it is.
        let message = r#"{"op":"m","source":{"db":"shop","schema":"public","table":"orders"}}"#;
        let ddl = r#"{"source":{"db":"inventory","table":"orders"},"ddl":"ALTER TABLE orders"}"#;
        let twice = r#"{"op":"c","after":{"id":7},"source":{"table":"orders"},"op":null}"#;
        for event in [message, ddl, twice] {
            assert!(check("customers", event, &file()).is_err(), "{event}");
        }
    }

    #[test]
    fn the_first_source_block_and_field_count() {
        let first = r#"{"op":"c","source":{"table":"customers","table":"orders"},
            "source":{"table":"orders"}}"#;
        assert_eq!(check("customers", first, &file()), Ok(()));
        let mongo = r#"{"op":"c","source":{"db":"shop","collection":"orders"}}"#;
        assert!(check("customers", mongo, &file()).is_err());
    }

    #[test]
    fn the_word_source_elsewhere_in_an_event_changes_nothing() {
        let value = r#"{"op":"c","after":{"id":1,"note":"source"}}"#;
        assert_eq!(check("customers", value, &file()), Ok(()));
        assert!(check("customers", value, &kafka("db1.inventory.orders")).is_err());
        let nested = r#"{"op":"c","after":{"id":1,"source":{"table":"customers"}},
            "source":{"db":"shop","table":"orders"}}"#;
        assert!(check("customers", nested, &file()).is_err());
        let nested = r#"{"op":"c","after":{"id":1,"source":{"table":"orders"}},
            "source":{"db":"shop","table":"customers"}}"#;
        assert_eq!(check("customers", nested, &file()), Ok(()));
    }

    #[test]
    fn flattened_rows_name_their_table_only_in_double_underscore_fields() {
        let filter = TableFilter::new("customers", false);
        let unwrapped =
            |event: &str| verdict(&filter, event, Format::DebeziumJsonUnwrapped, &file());
        assert_eq!(
            unwrapped(r#"{"id":1,"table":"orders","source":"x"}"#),
            Ok(())
        );
        assert!(unwrapped(r#"{"id":1,"__table":"orders","__db":"shop"}"#).is_err());
        assert_eq!(unwrapped(r#"{"id":1,"__table":"customers"}"#), Ok(()));
    }

    #[test]
    fn escaped_names_are_read_and_unreadable_events_are_said_so() {
        let escaped = r#"{"op":"c","source":{"schema":"p\u0075blic","table":"ord\"ers"}}"#;
        let error = check("orders", escaped, &file()).unwrap_err();
        assert!(error.contains("`public.ord\"ers`"), "{error}");
        // Never accepted for want of reading them: the caller decides.
        for malformed in ["{", "[1,2]", r#"{"op":"c","source":{"table":"#, "nul"] {
            assert_eq!(
                check("orders", malformed, &file()),
                Err("unreadable".into()),
                "{malformed}"
            );
        }
        let control = "{\"op\":\"c\",\"source\":{\"db\":\"a\u{1}\\u0062\",\"table\":\"orders\"}}";
        assert_eq!(
            check("customers", control, &file()),
            Err("unreadable".into())
        );
    }
}
