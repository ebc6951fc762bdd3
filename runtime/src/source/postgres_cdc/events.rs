//! Debezium change events for PostgreSQL rows: the envelope the Debezium decoder reads,
//! with its schema block, so snapshot rows and streamed changes become the same change
//! batches as events captured by Debezium itself.

use std::fmt::Write as _;

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
}

/// A column's value in one row image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Null,
    Text(&'a str),
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
        }
    }

    /// `schema.table`, as tables are named in pipelines.
    pub fn name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// Writes the change event (value) for `op` (`r`, `c`, `u`, `d`, `t`) into `value`,
    /// and its record key (`{"id":1}`, schemaless) into `key`. An image's values are in
    /// column order. A value with no exact JSON form is an error naming the column.
    pub fn write_event(
        &self,
        value: &mut String,
        key: &mut String,
        op: &str,
        before: Option<&[Value<'_>]>,
        after: Option<&[Value<'_>]>,
        source: &SourceInfo<'_>,
    ) -> Result<(), String> {
        value.clear();
        key.clear();
        value.push_str(&self.head);
        value.push_str(r#"{"before":"#);
        self.write_image(value, before)?;
        value.push_str(r#","after":"#);
        self.write_image(value, after)?;
        value.push_str(r#","source":{"version":"weir","connector":"postgresql","name":"#);
        write_json_string(value, source.server);
        let _ = write!(
            value,
            r#","ts_ms":{},"snapshot":"{}","db":"#,
            source.ts_ms, source.snapshot
        );
        write_json_string(value, source.db);
        value.push_str(r#","schema":"#);
        write_json_string(value, &self.schema);
        value.push_str(r#","table":"#);
        write_json_string(value, &self.table);
        match source.tx_id {
            Some(tx) => {
                let _ = write!(value, r#","txId":{tx}"#);
            }
            None => value.push_str(r#","txId":null"#),
        }
        let _ = write!(
            value,
            r#","lsn":{},"xmin":null}},"op":"{op}","ts_ms":{}}}}}"#,
            source.lsn,
            chrono::Utc::now().timestamp_millis()
        );
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
        let Some(image) = image else {
            out.push_str("null");
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
        out.push('{');
        for (i, (column, v)) in self.columns.iter().zip(image).enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_json_string(out, &column.name);
            out.push(':');
            self.write_value(out, column, *v)?;
        }
        out.push('}');
        Ok(())
    }

    fn write_value(&self, out: &mut String, column: &Column, v: Value<'_>) -> Result<(), String> {
        match v {
            Value::Null => {
                out.push_str("null");
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

    #[test]
    fn an_event_is_a_debezium_envelope_with_its_schema() {
        let relation = Relation::new(
            "shop",
            "public".into(),
            "orders".into(),
            vec![
                Column {
                    name: "id".into(),
                    kind: Kind::of(oid::INT8, -1),
                    key: true,
                },
                Column {
                    name: "price".into(),
                    kind: Kind::of(oid::NUMERIC, ((10 << 16) | 2) + 4),
                    key: false,
                },
            ],
        );
        let (mut value, mut key) = (String::new(), String::new());
        let source = SourceInfo {
            server: "shop",
            db: "app",
            ts_ms: 5,
            snapshot: "false",
            tx_id: Some(7),
            lsn: 99,
        };
        let after = [Value::Text("1"), Value::Text("9.50")];
        relation
            .write_event(&mut value, &mut key, "c", None, Some(&after), &source)
            .unwrap();
        let event: serde_json::Value = serde_json::from_str(&value).unwrap();
        assert_eq!(key, r#"{"id":1}"#);
        assert!(value.contains(r#""price":9.50}"#), "exact digits: {value}");
        assert_eq!(event["payload"]["source"]["lsn"], 99);
        assert_eq!(event["payload"]["source"]["txId"], 7);
        assert_eq!(event["payload"]["source"]["table"], "orders");
        assert_eq!(event["payload"]["op"], "c");
        let fields = &event["schema"]["fields"][1]["fields"];
        assert_eq!(fields[1]["name"], "org.apache.kafka.connect.data.Decimal");
        assert_eq!(fields[1]["parameters"]["scale"], "2");
        // No exact form: written as text, which the decoder refuses with its reason.
        let bad = [Value::Text("1"), Value::Text("NaN")];
        relation
            .write_event(&mut value, &mut key, "c", None, Some(&bad), &source)
            .unwrap();
        assert!(value.contains(r#""price":"NaN"}"#), "{value}");
    }
}
