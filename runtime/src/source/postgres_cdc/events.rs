//! Change events for PostgreSQL rows, written as native events
//! (`crate::decode::native`): the values of the Debezium envelope, whose schema block is
//! built once per table, so snapshot rows and streamed changes become the same change
//! batches as events captured by Debezium itself. Where an event leaves weir (a dead
//! letter) it is rendered as that Debezium document.

use std::fmt::Write as _;
use std::sync::OnceLock;

use crate::decode::native::{
    FIELD, IMAGE, MARK, NativeTable, NativeTables, VALUE_NULL, VALUE_TEXT, VALUE_UNREADABLE,
};

use super::values::{Kind, write_json_string};

/// One column of a table, as the source describes it.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub kind: Kind,
    /// Part of the primary key (or replica identity).
    pub key: bool,
}

/// A table as the source last described it, with its envelope schema built once.
#[derive(Debug)]
pub struct Relation {
    pub schema: String,
    pub table: String,
    pub columns: Vec<Column>,
    /// `{"schema":{…},"payload":`: the start of every event of this table.
    head: String,
    /// Its id among the source's native tables, once registered.
    native: OnceLock<u32>,
}

/// A column's value in one row image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Null,
    Text(&'a str),
    /// A value that is not UTF-8 (invalid bytes replaced): written so the decoder refuses
    /// the event, which becomes a dead letter (`decode::native::VALUE_UNREADABLE`).
    Unreadable(&'a str),
}

/// What the `source` block says besides the table.
#[derive(Debug, Clone, Copy)]
pub struct SourceInfo<'a> {
    /// Debezium's logical server name: the topic prefix.
    pub server: &'a str,
    pub db: &'a str,
    /// Commit time of the change (or the snapshot's start), in epoch milliseconds.
    pub ts_ms: i64,
    /// `"true"` for a snapshot row, `"last"` for the snapshot's last, else `"false"`.
    pub snapshot: &'a str,
    pub tx_id: Option<u32>,
    pub lsn: u64,
    /// When weir read the change, in epoch milliseconds (the event's own `ts_ms`).
    pub now_ms: i64,
}

const SOURCE_SCHEMA: &str = r#"{"type":"struct","fields":[{"type":"string","optional":false,"field":"version"},{"type":"string","optional":false,"field":"connector"},{"type":"string","optional":false,"field":"name"},{"type":"int64","optional":false,"field":"ts_ms"},{"type":"string","optional":true,"name":"io.debezium.data.Enum","version":1,"parameters":{"allowed":"true,last,false,incremental"},"default":"false","field":"snapshot"},{"type":"string","optional":false,"field":"db"},{"type":"string","optional":false,"field":"schema"},{"type":"string","optional":false,"field":"table"},{"type":"int64","optional":true,"field":"txId"},{"type":"int64","optional":true,"field":"lsn"},{"type":"int64","optional":true,"field":"xmin"}],"optional":false,"name":"io.debezium.connector.postgresql.Source","field":"source"}"#;

impl Relation {
    pub fn new(server: &str, schema: String, table: String, columns: Vec<Column>) -> Relation {
        let name = format!("{server}.{schema}.{table}");
        let mut row = String::new();
        for (i, column) in columns.iter().enumerate() {
            if i > 0 {
                row.push(',');
            }
            column
                .kind
                .write_schema(&mut row, &column.name, !column.key);
        }
        let mut head = String::from(r#"{"schema":{"type":"struct","fields":["#);
        for image in ["before", "after"] {
            head.push_str(r#"{"type":"struct","fields":["#);
            head.push_str(&row);
            head.push_str(r#"],"optional":true,"name":"#);
            write_json_string(&mut head, &format!("{name}.Value"));
            let _ = write!(head, r#","field":"{image}"}},"#);
        }
        head.push_str(SOURCE_SCHEMA);
        head.push_str(r#",{"type":"string","optional":false,"field":"op"},{"type":"int64","optional":true,"field":"ts_ms"}],"optional":false,"name":"#);
        write_json_string(&mut head, &format!("{name}.Envelope"));
        head.push_str(r#"},"payload":"#);
        Relation {
            schema,
            table,
            columns,
            head,
            native: OnceLock::new(),
        }
    }

    /// `schema.table`, as tables are named in pipelines.
    pub fn name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// This table's id in `tables`, registered the first time it is asked for.
    fn native_id(&self, tables: &NativeTables) -> u32 {
        *self.native.get_or_init(|| {
            let keys = self
                .columns
                .iter()
                .map(|c| {
                    let mut quoted = String::new();
                    write_json_string(&mut quoted, &c.name);
                    quoted[1..quoted.len() - 1].to_string()
                })
                .collect();
            let kinds = self.columns.iter().map(|c| c.kind).collect();
            tables.register(NativeTable::new(self.head.clone(), keys, kinds))
        })
    }

    /// Writes the change event for `op` (`r`, `c`, `u`, `d`, `t`) into `value` as a
    /// native event of `tables` (`crate::decode::native`: the Debezium event's values
    /// without its document), and its record key (`{"id":1}`, schemaless) into `key`.
    /// An image's values are in column order, each as the text PostgreSQL gave.
    #[allow(clippy::too_many_arguments)]
    pub fn write_event(
        &self,
        tables: &NativeTables,
        value: &mut Vec<u8>,
        key: &mut String,
        op: &str,
        before: Option<&[Value<'_>]>,
        after: Option<&[Value<'_>]>,
        source: &SourceInfo<'_>,
    ) -> Result<(), String> {
        value.clear();
        key.clear();
        let id = self.native_id(tables);
        // The header: every field is a JSON value, and JSON text holds no raw 0x1e or
        // 0x1f, so the framing cannot be confused by a field. Written as text into the
        // value's own buffer (empty here, so nothing to check).
        let mut header = String::from_utf8(std::mem::take(value)).unwrap_or_default();
        header.push_str(std::str::from_utf8(MARK).expect("ASCII"));
        let raw = |header: &mut String, text: &str| {
            header.push(FIELD as char);
            header.push_str(text);
        };
        let json = |header: &mut String, text: &str| {
            header.push(FIELD as char);
            write_json_string(header, text);
        };
        // Written without the formatter: it showed in the copy's profile.
        let mut digits = itoa::Buffer::new();
        raw(&mut header, digits.format(id));
        raw(&mut header, op);
        json(&mut header, source.server);
        json(&mut header, source.db);
        json(&mut header, &self.schema);
        json(&mut header, &self.table);
        raw(&mut header, digits.format(source.ts_ms));
        json(&mut header, source.snapshot);
        match source.tx_id {
            Some(tx) => raw(&mut header, digits.format(tx)),
            None => raw(&mut header, "null"),
        }
        raw(&mut header, digits.format(source.lsn));
        raw(&mut header, digits.format(source.now_ms));
        *value = header.into_bytes();
        self.write_image(value, before)?;
        self.write_image(value, after)?;
        // The key comes from the image that has it: the row after, or before a delete.
        if let Some(image) = after.or(before) {
            key.push('{');
            let mut first = true;
            for (column, v) in self.columns.iter().zip(image) {
                if !column.key {
                    continue;
                }
                if !first {
                    key.push(',');
                }
                first = false;
                write_json_string(key, &column.name);
                key.push(':');
                self.write_value(key, column, *v)?;
            }
            key.push('}');
            if first {
                key.clear();
            }
        }
        Ok(())
    }

    fn write_image(&self, out: &mut Vec<u8>, image: Option<&[Value<'_>]>) -> Result<(), String> {
        out.push(IMAGE);
        let Some(image) = image else {
            out.push(b'n');
            return Ok(());
        };
        if image.len() != self.columns.len() {
            return Err(format!(
                "a row of {} values for table {} of {} columns",
                image.len(),
                self.name(),
                self.columns.len()
            ));
        }
        out.push(b'r');
        for v in image {
            match *v {
                Value::Null => out.push(VALUE_NULL),
                Value::Text(text) => crate::decode::native::write_value(out, VALUE_TEXT, text)?,
                Value::Unreadable(text) => {
                    crate::decode::native::write_value(out, VALUE_UNREADABLE, text)?
                }
            }
        }
        Ok(())
    }

    fn write_value(&self, out: &mut String, column: &Column, v: Value<'_>) -> Result<(), String> {
        match v {
            Value::Null => {
                out.push_str("null");
                Ok(())
            }
            Value::Unreadable(text) => {
                write_json_string(out, text);
                Ok(())
            }
            Value::Text(text) => {
                // A key value with no exact form (a NaN numeric, an infinite date) goes as
                // its text, as such a value does in the event's Debezium document
                // (`decode::native`).
                let start = out.len();
                if column.kind.write_value(out, text).is_err() {
                    out.truncate(start);
                    write_json_string(out, text);
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::values::oid;
    use super::*;
    use crate::decode::table::TableSpec;
    use crate::decode::{Decoder, Format, RawRecord};
    use crate::position::Position;
    use std::sync::Arc;

    fn orders() -> Relation {
        let column = |name: &str, oid: u32, typmod: i32, key: bool| Column {
            name: name.into(),
            kind: Kind::of(oid, typmod),
            key,
        };
        Relation::new(
            "shop",
            "public".into(),
            "orders".into(),
            vec![
                column("id", oid::INT8, -1, true),
                column("price", oid::NUMERIC, ((10 << 16) | 2) + 4, false),
                column("note \"q\"", 25, -1, false),
                column("placed", oid::TIMESTAMPTZ, -1, false),
                column("day", oid::DATE, -1, false),
                column("ok", oid::BOOL, -1, false),
                column("raw", oid::BYTEA, -1, false),
                column("ratio", oid::FLOAT8, -1, false),
                column("doc", oid::JSONB, -1, false),
            ],
        )
    }

    fn source(tx_id: Option<u32>, snapshot: &str) -> SourceInfo<'_> {
        SourceInfo {
            server: "shop",
            db: "app",
            ts_ms: 5,
            snapshot,
            tx_id,
            lsn: 99,
            now_ms: 1_000,
        }
    }

    /// `relation`'s event, as the source writes it: its native value and its key.
    fn written(
        relation: &Relation,
        tables: &NativeTables,
        op: &str,
        before: Option<&[Value<'_>]>,
        after: Option<&[Value<'_>]>,
        source: SourceInfo<'_>,
    ) -> Result<(Vec<u8>, String), String> {
        let (mut value, mut key) = (Vec::new(), String::new());
        relation.write_event(tables, &mut value, &mut key, op, before, after, &source)?;
        Ok((value, key))
    }

    #[test]
    fn an_event_renders_as_a_debezium_envelope_with_its_schema() {
        let tables = NativeTables::default();
        let relation = orders();
        let mut after = [Value::Null; 9];
        after[0] = Value::Text("1");
        after[1] = Value::Text("9.50");
        let (value, key) = written(
            &relation,
            &tables,
            "c",
            None,
            Some(&after),
            source(Some(7), "false"),
        )
        .unwrap();
        assert!(crate::decode::native::is_native(&value[..]));
        let document = tables.render(&value[..]).unwrap();
        let text = String::from_utf8(document).unwrap();
        let event: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(key, r#"{"id":1}"#);
        assert!(text.contains(r#""price":9.50,"#), "exact digits: {text}");
        assert_eq!(event["payload"]["before"], serde_json::Value::Null);
        assert_eq!(
            event["payload"]["after"]["note \"q\""],
            serde_json::Value::Null
        );
        assert_eq!(event["payload"]["source"]["lsn"], 99);
        assert_eq!(event["payload"]["source"]["txId"], 7);
        assert_eq!(event["payload"]["source"]["table"], "orders");
        assert_eq!(event["payload"]["op"], "c");
        let fields = &event["schema"]["fields"][1]["fields"];
        assert_eq!(fields[1]["name"], "org.apache.kafka.connect.data.Decimal");
        assert_eq!(fields[1]["parameters"]["scale"], "2");
        // No exact form: written as text, which the decoder refuses with its reason.
        after[1] = Value::Text("NaN");
        let (value, _) = written(
            &relation,
            &tables,
            "c",
            None,
            Some(&after),
            source(Some(7), "false"),
        )
        .unwrap();
        let text = String::from_utf8(tables.render(&value[..]).unwrap()).unwrap();
        assert!(text.contains(r#""price":"NaN","#), "{text}");
    }

    fn position() -> Position {
        Position::File {
            stream: "test".into(),
            line: 1,
            offset: 0,
            next: 1,
        }
    }

    /// A row of `orders()` with a value in every column, each of which decodes.
    fn full_row() -> [Value<'static>; 9] {
        [
            Value::Text("1"),
            Value::Text("12345678.91"),
            Value::Text("tab\t \u{1f}unit \u{1e}record \"quoted\" \\ é"),
            Value::Text("2024-05-01 12:30:00.25+05:30"),
            Value::Text("2024-02-29"),
            Value::Text("t"),
            Value::Text("\\x00ff10"),
            Value::Text("-1.5e-7"),
            Value::Text(r#"{"a": [1, "x\u001f"]}"#),
        ]
    }

    /// What a decoder makes of `records`: each record's outcome (or error), then the
    /// batch of the rows.
    fn decoded(
        tables: Option<Arc<NativeTables>>,
        records: &[(Option<String>, Vec<u8>)],
    ) -> (Vec<String>, arrow::array::RecordBatch) {
        let mut decoder = Decoder::new(
            TableSpec::new("public.orders", &["id"]),
            Format::DebeziumJson,
        );
        decoder.set_native(tables);
        let outcomes = records
            .iter()
            .map(|(key, value)| {
                let record = RawRecord {
                    key: key.as_deref().map(str::as_bytes),
                    value: Some(value),
                    ..RawRecord::default()
                };
                format!("{:?}", decoder.decode(record, &position()))
            })
            .collect();
        (outcomes, decoder.finish(Default::default()).data)
    }

    /// The native events are a faster form of the Debezium documents, nothing more: a
    /// decoder given both makes the same batch, and refuses the same events with the
    /// same reasons.
    #[test]
    fn native_events_decode_exactly_as_their_debezium_documents() {
        let tables = Arc::new(NativeTables::default());
        let relation = orders();
        let full = full_row();
        let mut nulls = [Value::Null; 9];
        nulls[0] = Value::Text("2");
        let mut bad = full;
        bad[1] = Value::Text("NaN");
        let mut bad_date = full;
        bad_date[4] = Value::Text("infinity");
        // op, before, after, txId, snapshot
        type Event<'a> = (
            &'a str,
            Option<&'a [Value<'a>]>,
            Option<&'a [Value<'a>]>,
            Option<u32>,
            &'a str,
        );
        let events: [Event<'_>; 8] = [
            ("r", None, Some(&full), None, "true"),
            ("c", None, Some(&nulls), Some(7), "false"),
            ("u", Some(&nulls), Some(&full), Some(8), "false"),
            ("c", None, Some(&bad), Some(9), "false"),
            ("c", None, Some(&bad_date), Some(9), "false"),
            ("d", Some(&full), None, Some(10), "false"),
            ("t", None, None, Some(11), "last"),
            ("c", None, Some(&full[..3]), Some(12), "false"),
        ];
        let (mut native, mut rendered) = (Vec::new(), Vec::new());
        for (op, before, after, tx_id, snapshot) in events {
            let Ok((value, key)) = written(
                &relation,
                &tables,
                op,
                before,
                after,
                source(tx_id, snapshot),
            ) else {
                // A row of the wrong width is the source's own error, before any event.
                assert_eq!(after.map(<[_]>::len), Some(3));
                continue;
            };
            let key = (!key.is_empty()).then_some(key);
            rendered.push((key.clone(), tables.render(&value[..]).unwrap()));
            native.push((key, value));
        }
        assert_eq!(native.len(), 7);
        let (native_outcomes, native_batch) = decoded(Some(tables.clone()), &native);
        let (document_outcomes, document_batch) = decoded(None, &rendered);
        assert_eq!(native_outcomes, document_outcomes);
        assert_eq!(
            native_outcomes
                .iter()
                .filter(|o| o.starts_with("Err"))
                .count(),
            2,
            "{native_outcomes:?}"
        );
        assert_eq!(native_batch.num_rows(), 5);
        assert_eq!(native_batch, document_batch);
        // A decoder not given the source's tables refuses native events as malformed.
        let (outcomes, batch) = decoded(None, &native[..1]);
        assert!(outcomes[0].starts_with("Err"), "{outcomes:?}");
        assert_eq!(batch.num_rows(), 0);
    }

    /// Each value goes into its column without its JSON form where the decoder knows the
    /// pair of kind and column type: the batch must be the one the Debezium documents
    /// make, for every form PostgreSQL prints, with or without a target's own types.
    #[test]
    fn values_read_straight_into_columns_decode_as_their_documents() {
        use crate::decode::types::{ColumnType, Unit};
        let column = |name: &str, oid: u32, typmod: i32| Column {
            name: name.into(),
            kind: Kind::of(oid, typmod),
            key: name == "id",
        };
        let relation = Relation::new(
            "shop",
            "public".into(),
            "orders".into(),
            vec![
                column("id", oid::INT8, -1),
                column("small", oid::INT2, -1),
                column("price", oid::NUMERIC, ((12 << 16) | 2) + 4),
                column("note", 25, -1),
                column("placed", oid::TIMESTAMPTZ, -1),
                column("placed_ms", oid::TIMESTAMPTZ, 3),
                column("local", oid::TIMESTAMP, -1),
                column("local_ms", oid::TIMESTAMP, 3),
                column("day", oid::DATE, -1),
                column("ok", oid::BOOL, -1),
                column("tag", oid::UUID, -1),
            ],
        );
        let rows: &[[&str; 11]] = &[
            [
                "1",
                "-32768",
                "0.01",
                "",
                "1970-01-01 00:00:00+00",
                "1969-12-31 23:59:59.999+00",
                "1969-12-31 23:59:59.5",
                "0001-01-01 00:00:00",
                "1969-12-31",
                "f",
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            ],
            [
                "2",
                "32767",
                "-9999999999.99",
                "é \t \u{1e}\u{1f} \"q\"",
                "2024-05-01 12:30:00.123456-03:30",
                "0001-01-01 00:00:00+00",
                "2262-04-11 23:47:16.854776",
                "9999-12-31 23:59:59.999",
                "0001-01-01",
                "t",
                "00000000-0000-0000-0000-000000000000",
            ],
            [
                "3",
                "0",
                "12.5",
                "x",
                "9999-12-31 23:59:59.999999+00",
                "1900-06-30 11:00:00.1+10:30:15",
                "2024-02-29 00:00:00.000001",
                "2000-01-01 00:00:00",
                "9999-12-31",
                "t",
                "ffffffff-ffff-ffff-ffff-ffffffffffff",
            ],
            [
                "4",
                "-1",
                "7",
                "y",
                "infinity",
                "12345-01-01 00:00:00+00",
                "-infinity",
                "0044-03-15 12:00:00 BC",
                "infinity",
                "t",
                "not-a-uuid",
            ],
            [
                "5",
                "1",
                "NaN",
                "z",
                "2024-05-01 12:30:00+00",
                "2024-05-01 12:30:00+00",
                "2024-05-01 12:30:00",
                "2024-05-01 12:30:00",
                "2024-05-01",
                "f",
                "0e0",
            ],
        ];
        let targets: [Vec<(String, ColumnType)>; 2] = [
            Vec::new(),
            vec![
                ("small".into(), ColumnType::Int64),
                (
                    "price".into(),
                    ColumnType::Decimal {
                        precision: 20,
                        scale: 4,
                    },
                ),
                (
                    "local".into(),
                    ColumnType::Timestamp {
                        unit: Unit::Nanos,
                        utc: false,
                    },
                ),
                (
                    "local_ms".into(),
                    ColumnType::Timestamp {
                        unit: Unit::Micros,
                        utc: false,
                    },
                ),
            ],
        ];
        let tables = Arc::new(NativeTables::default());
        let (mut native, mut rendered) = (Vec::new(), Vec::new());
        for (i, row) in rows.iter().enumerate() {
            let values = row.map(Value::Text);
            let op = if i % 2 == 0 { "r" } else { "c" };
            // The decoder repeats a `source` block seen in the event before; the last
            // rows change it.
            let source = match i {
                0..2 => source(None, "true"),
                _ => source(Some(7 + i as u32), "last"),
            };
            let (value, key) =
                written(&relation, &tables, op, None, Some(&values), source).unwrap();
            rendered.push((Some(key.clone()), tables.render(&value).unwrap()));
            native.push((Some(key), value));
        }
        for target in targets {
            let decode = |tables: Option<Arc<NativeTables>>,
                          records: &[(Option<String>, Vec<u8>)]| {
                let mut spec = TableSpec::new("public.orders", &["id"]);
                spec.target_types = target.clone();
                let mut decoder = Decoder::new(spec, Format::DebeziumJson);
                decoder.set_native(tables);
                let outcomes: Vec<String> = records
                    .iter()
                    .map(|(key, value)| {
                        let record = RawRecord {
                            key: key.as_deref().map(str::as_bytes),
                            value: Some(value),
                            ..RawRecord::default()
                        };
                        format!("{:?}", decoder.decode(record, &position()))
                    })
                    .collect();
                (outcomes, decoder.finish(Default::default()).data)
            };
            let (native_outcomes, native_batch) = decode(Some(tables.clone()), &native);
            let (document_outcomes, document_batch) = decode(None, &rendered);
            assert_eq!(
                native_outcomes, document_outcomes,
                "target types {target:?}"
            );
            assert_eq!(native_batch, document_batch, "target types {target:?}");
            assert!(native_batch.num_rows() >= 2, "{native_outcomes:?}");
        }
    }

    /// PostgreSQL describes a table again on every replication session: an unchanged
    /// description keeps its id, a changed one gets a new id.
    #[test]
    fn a_table_described_again_unchanged_keeps_its_id() {
        let tables = NativeTables::default();
        let after = [Value::Text("1"); 9];
        let mut ids = Vec::new();
        for relation in [orders(), orders()] {
            let (value, _) = written(
                &relation,
                &tables,
                "c",
                None,
                Some(&after),
                source(None, "false"),
            )
            .unwrap();
            ids.push(crate::decode::native::table_id(&value[..]).unwrap());
        }
        assert_eq!(ids[0], ids[1]);
        assert_eq!(tables.len(), 1);
        let mut columns = orders().columns;
        columns.pop();
        let narrower = Relation::new("shop", "public".into(), "orders".into(), columns);
        let (value, _) = written(
            &narrower,
            &tables,
            "c",
            None,
            Some(&after[..8]),
            source(None, "false"),
        )
        .unwrap();
        assert_ne!(crate::decode::native::table_id(&value[..]), Some(ids[0]));
        assert_eq!(tables.len(), 2);
    }

    /// Only a reader that has the source's tables takes a native header's word for the
    /// table: from any other source the same bytes name nothing.
    #[test]
    fn a_native_header_is_read_only_for_weir_s_own_source() {
        let tables = NativeTables::default();
        let (value, _) = written(
            &orders(),
            &tables,
            "d",
            Some(&[Value::Text("1"); 9]),
            None,
            source(None, "false"),
        )
        .unwrap();
        let read = |native| {
            crate::decode::route::Fields::read(&value[..], Format::DebeziumJson, native)
                .map(|f| f.table.map(|t| t.into_owned()))
        };
        assert_eq!(read(true), Some(Some("orders".to_string())));
        assert_eq!(read(false), None);
    }

    #[test]
    fn a_malformed_native_event_is_refused_without_a_panic() {
        let tables = Arc::new(NativeTables::default());
        let (value, _) = written(
            &orders(),
            &tables,
            "c",
            None,
            Some(&full_row()),
            source(None, "false"),
        )
        .unwrap();
        let whole = value;
        let (outcomes, _) = decoded(Some(tables.clone()), &[(None, whole.clone())]);
        assert_eq!(outcomes, ["Ok(Row)"], "the whole event decodes");
        let mut cases: Vec<Vec<u8>> = (1..whole.len()).map(|n| whole[..n].to_vec()).collect();
        let mut unknown_id = whole.clone();
        unknown_id[MARK.len() + 1] = b'9';
        cases.push(unknown_id);
        let mut extra = whole.clone();
        extra.extend_from_slice(b"\x1f1");
        cases.push(extra);
        // Bytes before an image's first value.
        let after = whole.iter().rposition(|&b| b == IMAGE).unwrap();
        let mut stray = whole.clone();
        stray.insert(after + 2, b'x');
        cases.push(stray);
        for case in cases {
            let (outcomes, batch) = decoded(Some(tables.clone()), &[(None, case.clone())]);
            assert!(
                outcomes[0].starts_with("Err"),
                "{:?}: {outcomes:?}",
                String::from_utf8_lossy(&case)
            );
            assert_eq!(batch.num_rows(), 0);
        }
    }
}
