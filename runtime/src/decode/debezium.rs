//! Debezium envelopes: the record, its `schema`/`payload` document, the `source` and
//! `transaction` blocks, the row images and their values.

use super::*;

impl Decoder {
    pub(super) fn decode_record(&mut self, record: RawRecord<'_>) -> Result<Outcome, DecodeError> {
        let value = record.value.map(<[u8]>::trim_ascii).unwrap_or_default();
        if value.is_empty() || value == b"null" {
            return self.tombstone(record.key);
        }
        match self.format {
            Format::DebeziumJson if self.reads_native(value) => {
                self.decode_native(value, record.key)
            }
            Format::DebeziumJson => self.decode_envelope_document(value, record.key),
            Format::DebeziumJsonUnwrapped => self.decode_unwrapped(value),
        }
    }

    pub(super) fn tombstone(&mut self, key: Option<&[u8]>) -> Result<Outcome, DecodeError> {
        // For flattened rows, a tombstone with a key is how a delete arrives.
        match (self.format, key) {
            (Format::DebeziumJsonUnwrapped, Some(key)) if !key.trim_ascii().is_empty() => {
                let mut state = EventState {
                    op: Some(Op::Delete),
                    ..EventState::default()
                };
                self.decode_key_into_before(key)?;
                state.before = Some(true);
                self.finish_event(state, None)
            }
            _ => Ok(Outcome::Tombstone),
        }
    }

    pub(super) fn decode_envelope_document(
        &mut self,
        bytes: &[u8],
        key: Option<&[u8]>,
    ) -> Result<Outcome, DecodeError> {
        let mut j = Json::new(bytes);
        let peek = j.peek()?;
        if peek != Token::Object {
            return Err(reject(format!(
                "expected a JSON object for a Debezium event, found {}",
                peek.describe()
            )));
        }
        let mut state = EventState::default();
        let mut schema: Option<usize> = None;
        let mut deferred_payload: Option<&[u8]> = None;
        let mut payload_null = false;
        let mut saw_payload = false;
        let mut name = j.object_first()?.map(Key::of);
        while let Some(k) = name {
            match k {
                Key::Schema => {
                    // Debezium repeats the same block in every event of a table: a block
                    // seen before is matched by its bytes, not read again.
                    if let Some(index) = self.schemas.iter().rposition(|s| j.skip_known(&s.raw)) {
                        schema = Some(self.checked_schema(index)?);
                    } else {
                        let raw = j.skip_slice()?;
                        if raw != b"null" {
                            schema = Some(self.schema_entry(raw)?);
                        }
                    }
                }
                Key::Payload => {
                    saw_payload = true;
                    if j.peek()? == Token::Null {
                        j.null()?;
                        payload_null = true;
                    } else if schema.is_some() {
                        self.decode_payload(&mut j, &mut state, schema)?;
                    } else {
                        // The schema may come after the payload; read the payload last.
                        deferred_payload = Some(j.skip_slice()?);
                    }
                }
                other => self.envelope_field(other, &mut j, &mut state, schema)?,
            }
            name = j.object_next()?.map(Key::of);
        }
        j.finish()?;
        if let Some(payload) = deferred_payload {
            let mut pj = Json::new(payload);
            self.decode_payload(&mut pj, &mut state, schema)?;
        }
        if payload_null {
            return self.tombstone(key);
        }
        if saw_payload && state.op.is_none() && state.schema_change.is_none() && !state.message_op {
            return Err(reject("the event's `payload` has no `op` field"));
        }
        self.finish_event(state, key)
    }

    pub(super) fn decode_payload(
        &mut self,
        j: &mut Json,
        state: &mut EventState,
        schema: Option<usize>,
    ) -> Result<(), DecodeError> {
        let peek = j.peek()?;
        if peek != Token::Object {
            return Err(reject(format!(
                "`payload` must be an object, found {}",
                peek.describe()
            )));
        }
        let mut name = j.object_first()?.map(Key::of);
        while let Some(k) = name {
            self.envelope_field(k, j, state, schema)?;
            name = j.object_next()?.map(Key::of);
        }
        Ok(())
    }

    pub(super) fn envelope_field(
        &mut self,
        key: Key,
        j: &mut Json,
        state: &mut EventState,
        schema: Option<usize>,
    ) -> Result<(), DecodeError> {
        let row = self.rows();
        match key {
            Key::Op => {
                let peek = j.peek()?;
                if peek == Token::Null {
                    j.null()?;
                    return Ok(());
                }
                if peek != Token::String {
                    return Err(reject(format!(
                        "`op` must be a string, found {}",
                        peek.describe()
                    )));
                }
                let op = j.str()?;
                match Op::parse(&op) {
                    Some(op) => state.op = Some(op),
                    None if op == "m" => state.message_op = true,
                    None => {
                        return Err(reject(format!(
                            "unknown operation `{op}`; Debezium uses c, u, d, r and t"
                        )));
                    }
                }
            }
            Key::Before | Key::After => {
                let which = if matches!(key, Key::Before) {
                    Which::Before
                } else {
                    Which::After
                };
                let peek = j.peek()?;
                let present = match peek {
                    Token::Null => {
                        j.null()?;
                        false
                    }
                    Token::Object => {
                        let sources = self.source_types(schema)?;
                        self.decode_row(j, which, sources.as_deref())?;
                        true
                    }
                    other => {
                        return Err(reject(format!(
                            "`{}` must be an object or null, found {}",
                            if which == Which::Before {
                                "before"
                            } else {
                                "after"
                            },
                            other.describe()
                        )));
                    }
                };
                match which {
                    Which::Before => state.before = Some(present),
                    Which::After => state.after = Some(present),
                }
            }
            Key::Source => self.decode_source(j, row)?,
            Key::TsMs | Key::TsUs | Key::TsNs => {
                let micros = read_epoch_micros(j, key)?;
                // Prefer the finest resolution the event offers.
                if micros.is_some() && (state.event_time.is_none() || !matches!(key, Key::TsMs)) {
                    state.event_time = micros;
                }
            }
            Key::Transaction => self.decode_transaction(j, row)?,
            Key::HistoryRecord | Key::Ddl | Key::TableChanges => {
                let info = state
                    .schema_change
                    .get_or_insert_with(SchemaChangeInfo::default);
                match key {
                    Key::HistoryRecord if j.peek()? == Token::String => {
                        let text = j.str()?.to_string();
                        read_history_record(&text, info);
                    }
                    Key::Ddl if j.peek()? == Token::String => info.ddl = Some(j.str()?.to_string()),
                    _ => j.skip()?,
                }
            }
            Key::Schema | Key::Payload | Key::Other => j.skip()?,
        }
        Ok(())
    }

    /// Reads the `source` block: coordinates, time, and a readable log position.
    pub(super) fn decode_source(&mut self, j: &mut Json, row: usize) -> Result<(), DecodeError> {
        let peek = j.peek()?;
        if peek == Token::Null {
            j.null()?;
            return Ok(());
        }
        if peek != Token::Object {
            return Err(reject(format!(
                "`source` must be an object, found {}",
                peek.describe()
            )));
        }
        self.scratch.clear();
        let mut source_time: Option<i64> = None;
        let mut key = j.object_first()?.map(SourceKey::of);
        while let Some(k) = key {
            self.source_field(k, j, row, &mut source_time)?;
            key = j.object_next()?.map(SourceKey::of);
        }
        self.end_source(row, source_time)
    }

    /// One field of the `source` block (`scratch` gathers the log position).
    pub(super) fn source_field(
        &mut self,
        key: SourceKey,
        j: &mut Json,
        row: usize,
        source_time: &mut Option<i64>,
    ) -> Result<(), DecodeError> {
        match key {
            SourceKey::Text(column) => {
                let builder = &mut self.envelope.texts[column];
                if builder.len() == row {
                    push_scalar_text(j, builder)?;
                } else {
                    j.skip()?;
                }
            }
            SourceKey::Time(which) => {
                let micros = read_epoch_micros(j, which)?;
                if micros.is_some() && (source_time.is_none() || !matches!(which, Key::TsMs)) {
                    *source_time = micros;
                }
            }
            SourceKey::Position(name) => {
                let mark = self.scratch.len();
                if !self.scratch.is_empty() {
                    self.scratch.push(',');
                }
                self.scratch.push_str(name);
                self.scratch.push('=');
                let value_start = self.scratch.len();
                append_scalar_text(j, &mut self.scratch)?;
                if self.scratch.len() == value_start {
                    // null or empty: leave it out
                    self.scratch.truncate(mark);
                }
            }
            SourceKey::Other => j.skip()?,
        }
        Ok(())
    }

    /// Ends the `source` block: its time and the log position gathered in `scratch`.
    pub(super) fn end_source(
        &mut self,
        row: usize,
        source_time: Option<i64>,
    ) -> Result<(), DecodeError> {
        if let Some(t) = source_time
            && self.envelope.source_time.len() == row
        {
            self.envelope.source_time.push_i64(t);
        }
        if !self.scratch.is_empty() && self.envelope.texts[TEXT_POSITION].len() == row {
            self.envelope.texts[TEXT_POSITION].push_str(&self.scratch)?;
        }
        Ok(())
    }

    pub(super) fn decode_transaction(
        &mut self,
        j: &mut Json,
        row: usize,
    ) -> Result<(), DecodeError> {
        let peek = j.peek()?;
        if peek != Token::Object {
            j.skip()?;
            return Ok(());
        }
        let mut key = j.object_first()?.map(|k| k == b"id");
        while let Some(is_id) = key {
            if is_id && self.envelope.texts[TEXT_TXID].len() == row {
                push_scalar_text(j, &mut self.envelope.texts[TEXT_TXID])?;
            } else {
                j.skip()?;
            }
            key = j.object_next()?.map(|k| k == b"id");
        }
        Ok(())
    }

    /// Reads a row image object into `before` or `after`.
    pub(super) fn decode_row(
        &mut self,
        j: &mut Json,
        which: Which,
        sources: Option<&Vec<Option<ColumnType>>>,
    ) -> Result<(), DecodeError> {
        let row = self.image_mut(which).rows();
        let mut hint = 0;
        // Keys are matched as raw bytes; columns arrive in the same order in most events,
        // so the next column is tried first.
        let mut key = j.object_first()?;
        while let Some(raw) = key {
            if let Some(i) = self.column_of_key(raw, hint, j)? {
                self.decode_value(j, which, i, row, sources)?;
                hint = i + 1;
            }
            key = j.object_next()?;
        }
        self.image_mut(which).end_row();
        Ok(())
    }

    /// The column of a row field named by its raw (escaped) key, trying from `hint` on;
    /// a field the table does not have goes to [`Self::unknown_column`] (`j` is at its
    /// value, which is skipped when the field is ignored).
    pub(super) fn column_of_key(
        &mut self,
        raw: &[u8],
        hint: usize,
        j: &mut Json,
    ) -> Result<Option<usize>, DecodeError> {
        if let Some(i) = self.table.find_bytes(raw, hint) {
            return Ok(Some(i));
        }
        // Rare: a key with escapes (compared once decoded), or a new column.
        let name = key_string(raw);
        match self.table.find(&name, hint) {
            Some(i) => Ok(Some(i)),
            None => self.unknown_column(&name, j),
        }
    }

    /// A row field the table does not have: add, ignore or reject it per `unknown_columns`.
    pub(super) fn unknown_column(
        &mut self,
        name: &str,
        j: &mut Json,
    ) -> Result<Option<usize>, DecodeError> {
        match self.spec.unknown_columns {
            UnknownColumns::Ignore => {
                j.skip()?;
                Ok(None)
            }
            UnknownColumns::Reject => Err(reject(format!(
                "column `{name}` is not declared in `table.columns` (unknown_columns: reject)"
            ))),
            UnknownColumns::Add => {
                self.guard_schema_change()?;
                // A column the target already has keeps the target's type; otherwise the
                // values decide.
                let (ty, inferred) = match self.spec.target_type(name) {
                    Some(ty) => (ty.clone(), false),
                    None => (ColumnType::Null, true),
                };
                let index = self.table.push(ColumnDef::new(name, ty), inferred);
                let def = self.table.columns[index].clone();
                self.before.add_column(def.clone());
                self.after.add_column(def);
                Ok(Some(index))
            }
        }
    }

    pub(super) fn decode_value(
        &mut self,
        j: &mut Json,
        which: Which,
        index: usize,
        row: usize,
        sources: Option<&Vec<Option<ColumnType>>>,
    ) -> Result<(), DecodeError> {
        if self.image_mut(which).columns[index].len() > row {
            return Err(reject(format!(
                "column `{}` appears twice in the same row",
                self.table.columns[index].name
            )));
        }
        let peek = j.peek()?;
        if self.table.inferred[index] && peek != Token::Null {
            return self.decode_inferred(j, which, index, peek);
        }
        let column_type = &self.table.columns[index].ty;
        let source = sources
            .and_then(|s| s.get(index))
            .and_then(Option::as_ref)
            .unwrap_or(column_type);
        let builder = match which {
            Which::Before => &mut self.before.columns[index],
            Which::After => &mut self.after.columns[index],
        };
        builder.append_json(j, peek, source).map_err(|e| {
            reject(format!(
                "column `{}`: {}",
                self.table.columns[index].name, e.0
            ))
        })
    }

    /// A value for a column whose type was inferred: the first value fixes the type, and an
    /// integer column widens to float64 at its first fractional value.
    pub(super) fn decode_inferred(
        &mut self,
        j: &mut Json,
        which: Which,
        index: usize,
        peek: Token,
    ) -> Result<(), DecodeError> {
        let name = self.table.columns[index].name.clone();
        let current = self.table.columns[index].ty.clone();
        if (peek == Token::Number)
            && matches!(
                current,
                ColumnType::Null | ColumnType::Int64 | ColumnType::Float64
            )
        {
            let raw = j.number()?;
            let text = std::str::from_utf8(raw).unwrap_or_default();
            let is_integer = !raw.iter().any(|b| matches!(b, b'.' | b'e' | b'E'));
            let wanted = match (&current, is_integer) {
                (ColumnType::Float64, _) | (_, false) => ColumnType::Float64,
                _ => ColumnType::Int64,
            };
            if wanted == ColumnType::Int64 {
                let value: i64 = text.parse().map_err(|_| {
                    reject(format!(
                        "column `{name}`: {text} does not fit int64; declare the column as \
                         decimal(p,0) in `table.columns`"
                    ))
                })?;
                self.retype(index, ColumnType::Int64)?;
                self.image_mut(which).columns[index].push_i64(value);
            } else {
                let value: f64 = text
                    .parse()
                    .map_err(|_| reject(format!("column `{name}`: `{text}` is not a number")))?;
                self.retype(index, ColumnType::Float64)?;
                self.image_mut(which).columns[index].push_f64(value);
            }
            return Ok(());
        }
        if current == ColumnType::Null {
            let ty = match peek {
                Token::String => ColumnType::String,
                Token::True | Token::False => ColumnType::Boolean,
                _ => ColumnType::JsonText,
            };
            self.retype(index, ty)?;
        }
        let ty = self.table.columns[index].ty.clone();
        self.image_mut(which).columns[index]
            .append_json(j, peek, &ty)
            .map_err(|e| {
                reject(format!(
                    "column `{name}` (inferred as {} from earlier events): {}",
                    ty.name(),
                    e.0
                ))
            })
    }
}

/// A scalar as text (strings as is, numbers as written, booleans as true/false); `None`
/// for null. Objects and arrays are skipped.
pub(super) fn read_scalar_text(j: &mut Json) -> Result<Option<String>, DecodeError> {
    let peek = j.peek()?;
    Ok(match peek {
        Token::Null => {
            j.null()?;
            None
        }
        Token::String => Some(j.str()?.to_string()),
        Token::True | Token::False => Some(j.boolean()?.to_string()),
        _ if (peek == Token::Number) => Some(String::from_utf8_lossy(j.number()?).into_owned()),
        _ => {
            j.skip()?;
            None
        }
    })
}

/// Appends a scalar's text to a string column without an intermediate allocation; null
/// appends nothing.
pub(super) fn push_scalar_text(
    j: &mut Json,
    builder: &mut ColumnBuilder,
) -> Result<(), DecodeError> {
    let peek = j.peek()?;
    match peek {
        Token::Null => j.null()?,
        Token::String => builder.push_str(&j.str()?)?,
        Token::True => {
            j.boolean()?;
            builder.push_str("true")?
        }
        Token::False => {
            j.boolean()?;
            builder.push_str("false")?
        }
        _ if (peek == Token::Number) => {
            let raw = j.number()?;
            builder.push_str(std::str::from_utf8(raw).unwrap_or_default())?
        }
        _ => j.skip()?,
    }
    Ok(())
}

/// Like [`push_scalar_text`], into a string.
pub(super) fn append_scalar_text(j: &mut Json, out: &mut String) -> Result<(), DecodeError> {
    let peek = j.peek()?;
    match peek {
        Token::Null => j.null()?,
        Token::String => out.push_str(&j.str()?),
        Token::True | Token::False => out.push_str(if j.boolean()? { "true" } else { "false" }),
        _ if (peek == Token::Number) => {
            out.push_str(std::str::from_utf8(j.number()?).unwrap_or_default())
        }
        _ => j.skip()?,
    }
    Ok(())
}

/// `ts_ms`, `ts_us` or `ts_ns` as microseconds.
pub(super) fn read_epoch_micros(j: &mut Json, key: Key) -> Result<Option<i64>, DecodeError> {
    let peek = j.peek()?;
    if !(peek == Token::Number) {
        j.skip()?;
        return Ok(None);
    }
    let v = builder::read_i64(j, peek)?;
    Ok(Some(match key {
        Key::TsMs => v.saturating_mul(1000),
        Key::TsNs => v / 1000,
        _ => v,
    }))
}

/// Reads the DDL and table changes out of a Debezium schema-history record.
pub(super) fn read_history_record(text: &str, info: &mut SchemaChangeInfo) {
    let Ok(record) = serde_json::from_str::<JsonValue>(text) else {
        return;
    };
    if let Some(ddl) = record.get("ddl").and_then(JsonValue::as_str) {
        info.ddl = Some(ddl.to_string());
    }
    for change in record
        .get("tableChanges")
        .and_then(JsonValue::as_array)
        .into_iter()
        .flatten()
    {
        let kind = change
            .get("type")
            .and_then(JsonValue::as_str)
            .unwrap_or("?");
        let id = change
            .get("id")
            .and_then(JsonValue::as_str)
            .unwrap_or("?")
            .replace('"', "");
        info.table_changes.push((kind.to_string(), id));
    }
}
