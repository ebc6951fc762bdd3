//! Change events for PostgreSQL rows, written as native events
//! (`crate::decode::native`): the values of the Debezium envelope, whose schema block is
//! built once per table, so snapshot rows and streamed changes become the same change
//! batches as events captured by Debezium itself. Where an event leaves weir (a dead
//! letter) it is rendered as that Debezium document.

use std::fmt::Write as _;
use std::sync::OnceLock;

use crate::decode::native::{MARK, NativeTable, NativeTables};

use super::values::{Kind, write_json_string};

/// The framing bytes of a native event, as characters.
const FIELD: char = crate::decode::native::FIELD as char;
const IMAGE: char = crate::decode::native::IMAGE as char;

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
    /// the event, which becomes a dead letter (`decode::native::UNREADABLE`).
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
            tables.register(NativeTable::new(self.head.clone(), keys))
        })
    }

    /// Writes the change event for `op` (`r`, `c`, `u`, `d`, `t`) into `value` as a
    /// native event of `tables` (`crate::decode::native`: the Debezium event's values
    /// without its document), and its record key (`{"id":1}`, schemaless) into `key`.
    /// An image's values are in column order. A value with no exact JSON form is written
    /// as its text, which the decoder refuses with the reason.
    #[allow(clippy::too_many_arguments)]
    pub fn write_event(
        &self,
        tables: &NativeTables,
        value: &mut String,
        key: &mut String,
        op: &str,
        before: Option<&[Value<'_>]>,
        after: Option<&[Value<'_>]>,
        source: &SourceInfo<'_>,
    ) -> Result<(), String> {
        value.clear();
        key.clear();
        let id = self.native_id(tables);
        // SAFETY of the framing: every field is a JSON value, and JSON text holds no raw
        // 0x1e or 0x1f.
        value.push_str(std::str::from_utf8(MARK).expect("ASCII"));
        // Written without the formatter: it showed in the copy's profile.
        let mut digits = itoa::Buffer::new();
        value.push(FIELD);
        value.push_str(digits.format(id));
        value.push(FIELD);
        value.push_str(op);
        value.push(FIELD);
        write_json_string(value, source.server);
        value.push(FIELD);
        write_json_string(value, source.db);
        value.push(FIELD);
        write_json_string(value, &self.schema);
        value.push(FIELD);
        write_json_string(value, &self.table);
        value.push(FIELD);
        value.push_str(digits.format(source.ts_ms));
        value.push(FIELD);
        write_json_string(value, source.snapshot);
        value.push(FIELD);
        match source.tx_id {
            Some(tx) => value.push_str(digits.format(tx)),
            None => value.push_str("null"),
        }
        value.push(FIELD);
        value.push_str(digits.format(source.lsn));
        value.push(FIELD);
        value.push_str(digits.format(source.now_ms));
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

    fn write_image(&self, out: &mut String, image: Option<&[Value<'_>]>) -> Result<(), String> {
        out.push(IMAGE);
        let Some(image) = image else {
            out.push('n');
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
        out.push('r');
        for (column, v) in self.columns.iter().zip(image) {
            out.push(FIELD);
            self.write_value(out, column, *v)?;
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
                out.push(crate::decode::native::UNREADABLE as char);
                write_json_string(out, text);
                Ok(())
            }
            Value::Text(text) => {
                // A value with no exact form (a NaN numeric, an infinite date) goes as its
                // text: the decoder refuses it, and the event becomes a dead letter with
                // the reason, instead of stopping the source at it for good.
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
    ) -> Result<(String, String), String> {
        let (mut value, mut key) = (String::new(), String::new());
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
        assert!(crate::decode::native::is_native(value.as_bytes()));
        let document = tables.render(value.as_bytes()).unwrap();
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
        let text = String::from_utf8(tables.render(value.as_bytes()).unwrap()).unwrap();
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
            rendered.push((key.clone(), tables.render(value.as_bytes()).unwrap()));
            native.push((key, value.into_bytes()));
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
            ids.push(crate::decode::native::table_id(value.as_bytes()).unwrap());
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
        assert_ne!(
            crate::decode::native::table_id(value.as_bytes()),
            Some(ids[0])
        );
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
            crate::decode::route::Fields::read(value.as_bytes(), Format::DebeziumJson, native)
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
        let whole = value.into_bytes();
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
        let after = whole.iter().rposition(|&b| b == IMAGE as u8).unwrap();
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
