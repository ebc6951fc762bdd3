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
use arrow::datatypes::{DataType, Fields};

use crate::position::{Checkpoint, Position};

pub use weir_envelope::{
    AFTER, BEFORE, EVENT_TIME, HEADERS, OP, ORIGIN, SOURCE_CONNECTOR, SOURCE_DB, SOURCE_NAME,
    SOURCE_POSITION, SOURCE_SCHEMA, SOURCE_SNAPSHOT, SOURCE_TABLE, SOURCE_TEXT_COLUMNS,
    SOURCE_TIME, SOURCE_TXID, empty_headers, headers_type, schema,
};

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
    /// The target table a many-table pipeline routes it to (`None`: the sink's own).
    pub target: Option<String>,
}

/// A batch of changes for one table, with the source position of every row and the
/// checkpoint to store once the batch is durably applied.
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    pub data: RecordBatch,
    /// Shared, so a transform that keeps every row passes them on without a copy.
    pub positions: Arc<Vec<Position>>,
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
    fn ops_round_trip() {
        for op in ["c", "u", "d", "r", "t"] {
            assert_eq!(Op::parse(op).unwrap().as_str(), op);
        }
        assert_eq!(Op::parse("x"), None);
    }
}
