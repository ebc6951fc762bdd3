//! weir's change envelope, the one definition the host runtime and the plugin SDK share:
//! the Arrow schema of a change batch (documented in `docs/data-model.md`) and how batches
//! cross the plugin boundary (an Arrow IPC stream). Both sides build from this crate, so a
//! plugin and the host cannot disagree on a column's name or type.

pub mod ipc;
pub mod untrusted;

use std::sync::Arc;

use arrow_array::ArrayRef;
use arrow_array::builder::{BinaryBuilder, MapBuilder, MapFieldNames, StringBuilder};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

pub const OP: &str = "op";
pub const EVENT_TIME: &str = "event_time";
pub const SOURCE_TIME: &str = "source_time";
pub const SOURCE_CONNECTOR: &str = "source_connector";
pub const SOURCE_NAME: &str = "source_name";
pub const SOURCE_DB: &str = "source_db";
pub const SOURCE_SCHEMA: &str = "source_schema";
pub const SOURCE_TABLE: &str = "source_table";
pub const SOURCE_POSITION: &str = "source_position";
pub const SOURCE_TXID: &str = "source_txid";
pub const SOURCE_SNAPSHOT: &str = "source_snapshot";
pub const ORIGIN: &str = "origin";
pub const HEADERS: &str = "headers";
pub const BEFORE: &str = "before";
pub const AFTER: &str = "after";

/// The envelope's text columns after `op` and the two times, in order.
pub const SOURCE_TEXT_COLUMNS: [&str; 9] = [
    SOURCE_CONNECTOR,
    SOURCE_NAME,
    SOURCE_DB,
    SOURCE_SCHEMA,
    SOURCE_TABLE,
    SOURCE_POSITION,
    SOURCE_TXID,
    SOURCE_SNAPSHOT,
    ORIGIN,
];

/// The type of the `headers` column: Kafka record headers as a map from name to bytes.
pub fn headers_type() -> DataType {
    let entries = Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ]);
    DataType::Map(
        Arc::new(Field::new("entries", DataType::Struct(entries), false)),
        false,
    )
}

/// A `headers` column of `rows` rows, none with a header.
pub fn empty_headers(rows: usize) -> ArrayRef {
    let names = MapFieldNames {
        entry: "entries".into(),
        key: "key".into(),
        value: "value".into(),
    };
    let mut maps = MapBuilder::new(Some(names), StringBuilder::new(), BinaryBuilder::new());
    for _ in 0..rows {
        maps.append(true).expect("an empty map");
    }
    Arc::new(maps.finish())
}

/// The envelope schema for a table whose rows have `row_fields`.
pub fn schema(row_fields: Fields) -> SchemaRef {
    let utc_micros = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let mut fields = vec![
        Field::new(OP, DataType::Utf8, false),
        Field::new(EVENT_TIME, utc_micros.clone(), true),
        Field::new(SOURCE_TIME, utc_micros, true),
    ];
    fields.extend(
        SOURCE_TEXT_COLUMNS
            .iter()
            .map(|name| Field::new(*name, DataType::Utf8, true)),
    );
    fields.push(Field::new(HEADERS, headers_type(), false));
    fields.push(Field::new(
        BEFORE,
        DataType::Struct(row_fields.clone()),
        true,
    ));
    fields.push(Field::new(AFTER, DataType::Struct(row_fields), true));
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_is_fixed() {
        let s = schema(Fields::from(vec![Field::new("id", DataType::Int64, true)]));
        let names: Vec<&str> = s.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "op",
                "event_time",
                "source_time",
                "source_connector",
                "source_name",
                "source_db",
                "source_schema",
                "source_table",
                "source_position",
                "source_txid",
                "source_snapshot",
                "origin",
                "headers",
                "before",
                "after"
            ]
        );
    }

    #[test]
    fn empty_headers_have_the_headers_type() {
        let headers = empty_headers(3);
        assert_eq!(headers.data_type(), &headers_type());
        assert_eq!(headers.len(), 3);
    }
}
