//! The change batch: weir's one data contract between stages.
//!
//! A [`ChangeBatch`] is an Arrow `RecordBatch` with a fixed envelope (documented in
//! `docs/data-model.md`): the operation, event and source times, source coordinates, an
//! optional origin tag, and the row images `before` and `after` as struct columns typed from
//! the table's schema. Source positions travel beside the data (one per row, plus the
//! checkpoint for the whole batch), so a later stage may drop or rewrite rows without
//! breaking checkpoints.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StructArray};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

use crate::position::{Checkpoint, Position};

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

/// The change operation, as Debezium spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Create,
    Update,
    Delete,
    Read,
    Truncate,
}

impl Op {
    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "c" => Some(Op::Create),
            "u" => Some(Op::Update),
            "d" => Some(Op::Delete),
            "r" => Some(Op::Read),
            "t" => Some(Op::Truncate),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
        }
    }
}

/// What the sinks need to know about the table a batch belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub name: String,
    /// Primary key columns, spelt as they appear in the row images.
    pub primary_key: Vec<String>,
}

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

/// A batch of changes for one table, with the source position of every row and the
/// checkpoint to store once the batch is durably applied.
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    pub data: RecordBatch,
    pub positions: Vec<Position>,
    pub checkpoint: Checkpoint,
    pub table: Arc<TableInfo>,
}

impl ChangeBatch {
    pub fn num_rows(&self) -> usize {
        self.data.num_rows()
    }

    pub fn ops(&self) -> impl Iterator<Item = Op> + '_ {
        let ops = self.data.column(0).as_string::<i32>();
        (0..ops.len()).map(move |i| Op::parse(ops.value(i)).unwrap_or(Op::Read))
    }

    pub fn before(&self) -> &StructArray {
        self.image(BEFORE)
    }

    pub fn after(&self) -> &StructArray {
        self.image(AFTER)
    }

    fn image(&self, name: &str) -> &StructArray {
        let index = self
            .data
            .schema()
            .index_of(name)
            .expect("envelope has row images");
        self.data.column(index).as_struct()
    }

    /// The row fields (columns of the table) in this batch.
    pub fn row_fields(&self) -> Fields {
        match self
            .data
            .schema()
            .field_with_name(AFTER)
            .map(|f| f.data_type().clone())
        {
            Ok(DataType::Struct(fields)) => fields,
            _ => Fields::empty(),
        }
    }
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
        for op in ["c", "u", "d", "r", "t"] {
            assert_eq!(Op::parse(op).unwrap().as_str(), op);
        }
        assert_eq!(Op::parse("x"), None);
    }
}
