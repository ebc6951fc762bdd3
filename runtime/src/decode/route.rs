//! Which table an event is for, and whether that is the pipeline's table.
//!
//! A change stream can carry more tables than the one a pipeline applies: a file holding a
//! whole capture, a topic an SMT routed several tables into. An event is only ever applied
//! to the table it came from, so before an event is decoded, its table is read from it and
//! compared with `table.name`; an event for another table goes to the dead-letter output
//! (stage `route`) and never reaches the sink.
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
//! case with `table.case_insensitive: true`. An event without any table information, and
//! an event that is not a row change (a schema change, a logical-decoding message), is
//! decoded as before.
//!
//! Reading the table is one pass over the event that neither validates nor decodes it
//! (the decoder does both right after, for events of this table), so a malformed event is
//! left to the decoder to reject.

use std::borrow::Cow;

use super::Format;
use crate::position::Position;

/// The pipeline's table, as a path to compare events' tables with.
#[derive(Debug, Clone)]
pub struct TableFilter {
    parts: Vec<String>,
    name: String,
    case_insensitive: bool,
}

impl TableFilter {
    pub fn new(name: &str, case_insensitive: bool) -> TableFilter {
        TableFilter {
            parts: name.split('.').map(str::to_string).collect(),
            name: name.to_string(),
            case_insensitive,
        }
    }

    /// `Err(reason)` when the record is a row change of another table.
    pub fn check(&self, value: &[u8], format: Format, position: &Position) -> Result<(), String> {
        let Some(event) = EventTable::read(value, format, position) else {
            return Ok(());
        };
        if self.accepts(&event.path) {
            return Ok(());
        }
        let from = match event.topic {
            Some(topic) => format!(" (from its topic `{topic}`)"),
            None => String::new(),
        };
        Err(format!(
            "the event is for table `{}`{from}, not this pipeline's table `{}`; it was not \
             applied",
            event.path.join("."),
            self.name
        ))
    }

    /// Whether an event of table `path` belongs to this pipeline.
    pub fn accepts(&self, path: &[Cow<'_, str>]) -> bool {
        self.parts
            .iter()
            .rev()
            .zip(path.iter().rev())
            .all(|(mine, theirs)| {
                if self.case_insensitive {
                    mine.eq_ignore_ascii_case(theirs)
                } else {
                    mine == theirs
                }
            })
    }
}

/// The table an event names.
struct EventTable<'a> {
    /// `[db, schema, table]`, with the parts the event has.
    path: Vec<Cow<'a, str>>,
    /// The topic the table was read from, when the event itself names none.
    topic: Option<&'a str>,
}

impl<'a> EventTable<'a> {
    /// `None` for an event that names no table, or is not a row change.
    fn read(value: &'a [u8], format: Format, position: &'a Position) -> Option<EventTable<'a>> {
        let fields = Fields::read(value, format)?;
        if !fields.row_change {
            return None;
        }
        if let Some(table) = fields.table {
            let path = [fields.db, fields.schema, Some(table)]
                .into_iter()
                .flatten()
                .filter(|p| !p.is_empty())
                .collect();
            return Some(EventTable { path, topic: None });
        }
        let Position::Kafka { topic, .. } = position else {
            return None;
        };
        let (_, table) = topic.rsplit_once('.')?;
        (!table.is_empty()).then(|| EventTable {
            path: vec![Cow::Borrowed(table)],
            topic: Some(topic),
        })
    }
}

/// The fields of an event that say which table it is for.
#[derive(Default)]
struct Fields<'a> {
    db: Option<Cow<'a, str>>,
    schema: Option<Cow<'a, str>>,
    table: Option<Cow<'a, str>>,
    /// False for an event with an `op` that is no row change (`m`), or with no `op`.
    row_change: bool,
}

impl<'a> Fields<'a> {
    fn read(value: &'a [u8], format: Format) -> Option<Fields<'a>> {
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
                // Every flattened record is a row (or a delete); only `__` fields carry
                // the table, since the row's own columns may have any name.
                fields.row_change = true;
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

    fn envelope_field(&mut self, scan: &mut Scan<'a>, key: &[u8]) -> Option<()> {
        match key {
            b"op" => {
                let mut op = None;
                scan.text_into(&mut op)?;
                self.row_change = matches!(op.as_deref(), Some("c" | "u" | "d" | "r" | "t"));
                Some(())
            }
            b"source" if scan.peek() == Some(b'{') => scan.object(|scan, key| match key {
                b"db" => scan.text_into(&mut self.db),
                b"schema" => scan.text_into(&mut self.schema),
                b"table" | b"collection" => scan.text_into(&mut self.table),
                _ => scan.skip(),
            }),
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

    /// Reads a string (or `null`, leaving `into` alone) into `into`.
    fn text_into(&mut self, into: &mut Option<Cow<'a, str>>) -> Option<()> {
        if self.peek()? != b'"' {
            return self.skip();
        }
        let start = self.at;
        let raw = self.raw_string()?;
        *into = Some(if raw.contains(&b'\\') {
            Cow::Owned(serde_json::from_slice(&self.bytes[start..self.at]).ok()?)
        } else {
            Cow::Borrowed(std::str::from_utf8(raw).ok()?)
        });
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

    fn check(name: &str, event: &str, position: &Position) -> Result<(), String> {
        TableFilter::new(name, false).check(event.as_bytes(), Format::DebeziumJson, position)
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
    }

    #[test]
    fn case_is_ignored_only_when_asked() {
        let filter = TableFilter::new("Public.ORDERS", true);
        assert_eq!(
            filter.check(PG.as_bytes(), Format::DebeziumJson, &file()),
            Ok(())
        );
    }

    #[test]
    fn without_a_source_block_a_debezium_topic_names_the_table() {
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
    }

    #[test]
    fn only_row_changes_are_routed() {
        let message = r#"{"op":"m","source":{"db":"shop","schema":"public","table":"orders"}}"#;
        let ddl = r#"{"source":{"db":"inventory","table":"orders"},"ddl":"ALTER TABLE orders"}"#;
        for event in [message, ddl] {
            assert_eq!(check("customers", event, &file()), Ok(()), "{event}");
        }
        let truncate = r#"{"op":"t","source":{"db":"shop","schema":"public","table":"orders"}}"#;
        assert!(check("customers", truncate, &file()).is_err());
    }

    #[test]
    fn flattened_rows_name_their_table_only_in_double_underscore_fields() {
        let filter = TableFilter::new("customers", false);
        let unwrapped =
            |event: &str| filter.check(event.as_bytes(), Format::DebeziumJsonUnwrapped, &file());
        assert_eq!(
            unwrapped(r#"{"id":1,"table":"orders","source":"x"}"#),
            Ok(())
        );
        assert!(unwrapped(r#"{"id":1,"__table":"orders","__db":"shop"}"#).is_err());
        assert_eq!(unwrapped(r#"{"id":1,"__table":"customers"}"#), Ok(()));
    }

    #[test]
    fn escaped_names_and_malformed_events_are_read_safely() {
        let escaped = r#"{"op":"c","source":{"schema":"p\u0075blic","table":"ord\"ers"}}"#;
        let error = check("orders", escaped, &file()).unwrap_err();
        assert!(error.contains("`public.ord\"ers`"), "{error}");
        for malformed in ["", "{", "[1,2]", r#"{"op":"c","source":{"table":"#, "nul"] {
            assert_eq!(check("orders", malformed, &file()), Ok(()), "{malformed}");
        }
    }
}
