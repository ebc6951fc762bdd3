//! The table a decoder fills: its current columns (which evolve as events arrive) and the
//! builders for the `before` and `after` row images.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, StructArray};
use arrow::buffer::NullBuffer;
use arrow::datatypes::Fields;
use schemars::JsonSchema;
use serde::Deserialize;

use super::builder::{ColumnBuilder, ValueError};
use super::types::{ColumnDef, ColumnType, Merge, merge};

/// What to do with a column that the table does not know yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownColumns {
    /// Add it as a new nullable column (schema evolution).
    #[default]
    Add,
    /// Drop its values.
    Ignore,
    /// Send the event to the dead-letter output.
    Reject,
}

/// Which events a decoder refuses as another table's (`decode::route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TableCheck {
    /// None: the stream is known to hold this table only.
    #[default]
    Off,
    /// Events naming another table, compared with `name` from the right where both have
    /// a part (`table:` pipelines: `orders` accepts `public.orders`).
    Named,
    /// Events whose source table, named as `tables:` pipelines name tables
    /// (`<schema>.<table>`, `<db>.<table>`, or from the topic), is not exactly `name`.
    Exact,
}

/// The table as the pipeline declares it.
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub name: String,
    pub primary_key: Vec<String>,
    pub declared: Vec<ColumnDef>,
    pub case_insensitive: bool,
    pub unknown_columns: UnknownColumns,
    /// Types of the columns the target already has (from the sink). A column that first
    /// appears in this run is held to its target type, so a restarted pipeline still
    /// notices an incompatible change. They do not add columns: a target column the
    /// stream never carries is left alone.
    pub target_types: Vec<(String, ColumnType)>,
    /// Whether row changes of another source table than `name` are refused
    /// (`decode::route`). Pipelines set it; decoding a stream known to hold one table
    /// need not.
    pub table_check: TableCheck,
    /// The target table, when the pipeline routes tables (`tables:`); `None` leaves it to
    /// the sink's configuration.
    pub target: Option<String>,
}

impl TableSpec {
    /// A table with these key columns and otherwise the defaults: no declared columns,
    /// exact-case names, new columns added.
    pub fn new(name: &str, primary_key: &[&str]) -> Self {
        TableSpec {
            name: name.to_string(),
            primary_key: primary_key.iter().map(|k| k.to_string()).collect(),
            declared: Vec::new(),
            case_insensitive: false,
            unknown_columns: UnknownColumns::Add,
            target_types: Vec::new(),
            table_check: TableCheck::Off,
            target: None,
        }
    }

    /// For changes as a transform or the sink saw them (dead letters replayed past the
    /// decoder): the plugins may have renamed, dropped or added columns, so the declared
    /// columns only type the columns the changes carry, after the target's own types,
    /// and do not add the others; a column the plugins added is taken.
    pub fn with_declared_as_hints(mut self) -> TableSpec {
        for column in std::mem::take(&mut self.declared) {
            if self.target_type(&column.name).is_none() {
                self.target_types.push((column.name, column.ty));
            }
        }
        self.unknown_columns = UnknownColumns::Add;
        self
    }

    /// The target's type for `name`, if it reported one.
    pub fn target_type(&self, name: &str) -> Option<&ColumnType> {
        self.target_types
            .iter()
            .find(|(n, _)| {
                if self.case_insensitive {
                    n.eq_ignore_ascii_case(name)
                } else {
                    n == name
                }
            })
            .map(|(_, t)| t)
    }
}

/// A column type change that cannot be made without losing data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncompatibleChange {
    pub column: String,
    pub from: String,
    pub to: String,
}

/// The table's current columns.
#[derive(Debug)]
pub struct TableSchema {
    pub columns: Vec<ColumnDef>,
    /// Column i was typed by inference (not by a schema block or a declaration), which
    /// relaxes one widening rule (int64 to float64).
    pub inferred: Vec<bool>,
    lookup: HashMap<String, usize>,
    case_insensitive: bool,
    /// Bumped at every change, so cached merges know to re-run.
    pub version: u64,
}

impl TableSchema {
    pub fn new(spec: &TableSpec) -> Self {
        let mut table = TableSchema {
            columns: Vec::new(),
            inferred: Vec::new(),
            lookup: HashMap::new(),
            case_insensitive: spec.case_insensitive,
            version: 0,
        };
        for column in &spec.declared {
            table.push(column.clone(), false);
        }
        table
    }

    fn key(&self, name: &str) -> String {
        if self.case_insensitive {
            name.to_lowercase()
        } else {
            name.to_string()
        }
    }

    /// Finds a column by name; `hint` is the index to try first (columns usually arrive in
    /// the same order in every event, so this avoids hashing).
    /// Like [`find`](Self::find), for a key as raw JSON bytes (without escapes).
    #[inline]
    pub fn find_bytes(&self, name: &[u8], hint: usize) -> Option<usize> {
        if let Some(c) = self.columns.get(hint) {
            let column = c.name.as_bytes();
            if same_bytes(column, name)
                || (self.case_insensitive && column.eq_ignore_ascii_case(name))
            {
                return Some(hint);
            }
        }
        self.find(std::str::from_utf8(name).ok()?, hint)
    }

    #[inline]
    pub fn find(&self, name: &str, hint: usize) -> Option<usize> {
        if let Some(c) = self.columns.get(hint)
            && (c.name == name || (self.case_insensitive && c.name.eq_ignore_ascii_case(name)))
        {
            return Some(hint);
        }
        if self.case_insensitive {
            self.lookup.get(&name.to_lowercase()).copied()
        } else {
            self.lookup.get(name).copied()
        }
    }

    pub fn push(&mut self, column: ColumnDef, inferred: bool) -> usize {
        let index = self.columns.len();
        self.lookup.insert(self.key(&column.name), index);
        self.columns.push(column);
        self.inferred.push(inferred);
        self.version += 1;
        index
    }

    /// Drops columns from `len` on (used to undo a failed event's additions).
    pub fn truncate(&mut self, len: usize) {
        if len >= self.columns.len() {
            return;
        }
        for column in self.columns.drain(len..) {
            let key = if self.case_insensitive {
                column.name.to_lowercase()
            } else {
                column.name
            };
            self.lookup.remove(&key);
        }
        self.inferred.truncate(len);
        self.version += 1;
    }

    /// Decides how column `index` changes when an event types it as `incoming`.
    pub fn merge_type(
        &self,
        index: usize,
        incoming: &ColumnDef,
    ) -> Result<Option<ColumnDef>, IncompatibleChange> {
        let current = &self.columns[index];
        match merge(&current.ty, &incoming.ty, self.inferred[index]) {
            Merge::Keep => Ok(None),
            Merge::Widen(ty) => {
                let mut widened = current.clone();
                widened.ty = ty;
                if widened.semantic.is_none() {
                    widened.semantic = incoming.semantic.clone();
                }
                Ok(Some(widened))
            }
            Merge::Incompatible => Err(IncompatibleChange {
                column: current.name.clone(),
                from: current.ty.name(),
                to: incoming.ty.name(),
            }),
        }
    }

    pub fn set(&mut self, index: usize, column: ColumnDef) {
        self.columns[index] = column;
        self.version += 1;
    }

    pub fn fields(&self) -> Fields {
        super::types::struct_fields(&self.columns)
    }
}

/// Byte equality without a `memcmp` call for the short strings column names are.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// Builders for one row image (`before` or `after`) of every row in the batch.
#[derive(Debug, Default)]
pub struct Image {
    pub columns: Vec<ColumnBuilder>,
    valid: Vec<bool>,
}

impl Image {
    pub fn new(columns: &[ColumnDef]) -> Self {
        Image {
            columns: columns.iter().cloned().map(ColumnBuilder::new).collect(),
            valid: Vec::new(),
        }
    }

    /// Rows completed so far (the row being decoded is not counted until `end_row`).
    pub fn rows(&self) -> usize {
        self.valid.len()
    }

    pub fn add_column(&mut self, def: ColumnDef) {
        let mut builder = ColumnBuilder::new(def);
        for _ in 0..self.valid.len() {
            builder.append_null();
        }
        self.columns.push(builder);
    }

    pub fn widen(&mut self, index: usize, def: ColumnDef) -> Result<(), ValueError> {
        self.columns[index].widen(def)
    }

    /// Completes the current row: columns the event did not mention become null.
    pub fn end_row(&mut self) {
        let row = self.valid.len();
        for column in &mut self.columns {
            if column.len() == row {
                column.append_null();
            }
        }
        self.valid.push(true);
    }

    /// A row without this image (an insert has no `before`).
    pub fn null_row(&mut self) {
        let row = self.valid.len();
        for column in &mut self.columns {
            if column.len() == row {
                column.append_null();
            }
        }
        self.valid.push(false);
    }

    pub fn truncate(&mut self, rows: usize, columns: usize) {
        self.columns.truncate(columns);
        self.valid.truncate(rows);
        for column in &mut self.columns {
            column.truncate(rows);
        }
    }

    /// True when the current (unfinished) row has a non-null value in column `index`.
    pub fn current_is_set(&self, index: usize) -> bool {
        self.columns
            .get(index)
            .is_some_and(|c| c.len() > self.valid.len() && c.last_is_valid())
    }

    pub fn finish(&mut self, fields: &Fields) -> StructArray {
        let rows = self.valid.len();
        let valid = std::mem::take(&mut self.valid);
        let nulls = (!valid.iter().all(|v| *v)).then(|| NullBuffer::from(valid));
        if fields.is_empty() {
            return StructArray::new_empty_fields(rows, nulls);
        }
        let arrays: Vec<ArrayRef> = self.columns.iter_mut().map(ColumnBuilder::finish).collect();
        StructArray::new(fields.clone(), arrays, nulls)
    }
}

/// Column types as the event's own schema block gives them, indexed like the table's
/// columns, so values are read with the event's scale and units.
pub type SourceTypes = Arc<Vec<Option<ColumnType>>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TableSpec {
        TableSpec {
            declared: vec![ColumnDef::new("Id", ColumnType::Int64)],
            case_insensitive: true,
            ..TableSpec::new("t", &["id"])
        }
    }

    #[test]
    fn lookup_is_case_insensitive_when_asked() {
        let mut t = TableSchema::new(&spec());
        assert_eq!(t.find("ID", 5), Some(0));
        assert_eq!(t.find("id", 0), Some(0));
        let i = t.push(ColumnDef::new("Name", ColumnType::String), true);
        assert_eq!(t.find("NAME", 0), Some(i));
        t.truncate(1);
        assert_eq!(t.find("name", 0), None);
    }

    #[test]
    fn incompatible_changes_name_both_types() {
        let t = TableSchema::new(&spec());
        let err = t
            .merge_type(0, &ColumnDef::new("Id", ColumnType::String))
            .unwrap_err();
        assert_eq!(
            err,
            IncompatibleChange {
                column: "Id".into(),
                from: "int64".into(),
                to: "string".into()
            }
        );
    }
}
