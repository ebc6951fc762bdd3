//! Row schemas: the `schema` block of each event merged into the table's, column types
//! widened or held to the target's, incompatible changes refused.

use super::*;

impl Decoder {
    pub(super) fn image_mut(&mut self, which: Which) -> &mut Image {
        match which {
            Which::Before => &mut self.before,
            Which::After => &mut self.after,
        }
    }

    /// Changes an inferred column's type, widening both images' builders.
    pub(super) fn retype(&mut self, index: usize, ty: ColumnType) -> Result<(), DecodeError> {
        if self.table.columns[index].ty == ty {
            return Ok(());
        }
        self.guard_schema_change()?;
        let mut def = self.table.columns[index].clone();
        def.ty = ty;
        self.before.widen(index, def.clone())?;
        self.after.widen(index, def.clone())?;
        self.table.set(index, def);
        Ok(())
    }

    /// Parses a `schema` block (or finds it among recent ones) and merges its columns into
    /// the table. Returns the cache index.
    pub(super) fn schema_entry(&mut self, raw: &[u8]) -> Result<usize, DecodeError> {
        let index = match self.schemas.iter().position(|s| s.raw == raw) {
            Some(i) => i,
            None => {
                let parsed: JsonValue = serde_json::from_slice(raw)
                    .map_err(|e| reject(format!("the `schema` block is not valid JSON: {e}")))?;
                let row =
                    row_columns(&parsed).map_err(|e| reject(format!("the `schema` block: {e}")))?;
                if self.schemas.len() >= 8 {
                    self.schemas.remove(0);
                }
                self.schemas.push(SchemaEntry {
                    raw: raw.to_vec(),
                    row,
                    merged_at: None,
                    source_types: Arc::new(Vec::new()),
                    rejected: None,
                    native: None,
                });
                self.schemas.len() - 1
            }
        };
        self.checked_schema(index)
    }

    /// A cached schema block, merged into the table as it now stands, or its refusal.
    pub(super) fn checked_schema(&mut self, index: usize) -> Result<usize, DecodeError> {
        if self.schemas[index].merged_at != Some(self.table.version) {
            self.merge_schema(index)?;
        }
        if let Some(reason) = &self.schemas[index].rejected {
            return Err(reject(reason.clone()));
        }
        Ok(index)
    }

    /// Merges a schema block's columns into the table. Each change to the table is
    /// guarded ([`Self::guard_schema_change`]); merging a block that changes nothing
    /// (another schema of this table, seen again) is not.
    pub(super) fn merge_schema(&mut self, entry: usize) -> Result<(), DecodeError> {
        let row = self.schemas[entry].row.clone();
        let mut rejected = None;
        let mut ignored = Vec::new();
        for column in &row {
            let index = match self.table.find(&column.name, 0) {
                Some(i) => i,
                None => match self.spec.unknown_columns {
                    UnknownColumns::Add => {
                        self.guard_schema_change()?;
                        let column = self.with_target_type(column)?;
                        let i = self.table.push(column.clone(), false);
                        self.before.add_column(column.clone());
                        self.after.add_column(column);
                        i
                    }
                    UnknownColumns::Ignore => {
                        ignored.push(column.name.clone());
                        continue;
                    }
                    UnknownColumns::Reject => {
                        rejected = Some(format!(
                            "column `{}` is not declared in `table.columns` (unknown_columns: reject)",
                            column.name
                        ));
                        continue;
                    }
                },
            };
            if self.table.inferred[index] {
                // A schema is more trustworthy than inference: adopt its type if the values
                // seen so far convert.
                self.guard_schema_change()?;
                self.table.inferred[index] = false;
            }
            match self.table.merge_type(index, column) {
                Ok(None) => {}
                Ok(Some(widened)) => {
                    self.guard_schema_change()?;
                    self.before.widen(index, widened.clone())?;
                    self.after.widen(index, widened.clone())?;
                    self.table.set(index, widened);
                }
                Err(change) => {
                    self.guard_schema_change()?;
                    return Err(DecodeError::Fatal(change));
                }
            }
        }
        let mut sources = vec![None; self.table.columns.len()];
        for column in &row {
            if let Some(i) = self.table.find(&column.name, 0) {
                sources[i] = Some(column.ty.clone());
            }
        }
        let entry = &mut self.schemas[entry];
        entry.source_types = Arc::new(sources);
        entry.rejected = rejected;
        entry.merged_at = Some(self.table.version);
        Ok(())
    }

    /// A column new to this run, typed from the event's schema, checked against the type
    /// the target already holds it in (the wider of the two wins).
    pub(super) fn with_target_type(&self, column: &ColumnDef) -> Result<ColumnDef, DecodeError> {
        let Some(target) = self.spec.target_type(&column.name) else {
            return Ok(column.clone());
        };
        let mut merged = column.clone();
        match types::merge(target, &column.ty, false) {
            types::Merge::Keep => merged.ty = target.clone(),
            types::Merge::Widen(ty) => merged.ty = ty,
            types::Merge::Incompatible => {
                return Err(DecodeError::Fatal(IncompatibleChange {
                    column: column.name.clone(),
                    from: target.name(),
                    to: column.ty.name(),
                }));
            }
        }
        Ok(merged)
    }

    pub(super) fn source_types(
        &self,
        schema: Option<usize>,
    ) -> Result<Option<SourceTypes>, DecodeError> {
        Ok(schema.map(|i| self.schemas[i].source_types.clone()))
    }
}

/// The row fields of a Debezium envelope schema (its `after` or `before` struct), or of a
/// row schema (flattened records).
pub(super) fn row_columns(schema: &JsonValue) -> Result<Vec<ColumnDef>, String> {
    let fields = schema
        .get("fields")
        .and_then(JsonValue::as_array)
        .ok_or("expected a struct schema with `fields`")?;
    let image = ["after", "before"].iter().find_map(|name| {
        fields
            .iter()
            .find(|f| f.get("field").and_then(JsonValue::as_str) == Some(name))
    });
    let row_fields = match image {
        Some(image) => image
            .get("fields")
            .and_then(JsonValue::as_array)
            .ok_or("the row image schema has no `fields`")?,
        // No before/after: a schema-change event, or a flattened row schema.
        None if fields
            .iter()
            .any(|f| f.get("field").and_then(JsonValue::as_str) == Some("source")) =>
        {
            return Ok(Vec::new());
        }
        None => fields,
    };
    row_fields.iter().map(types::from_connect_schema).collect()
}
