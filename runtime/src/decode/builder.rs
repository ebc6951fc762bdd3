//! Arrow column builders fed straight from a JSON pull parser.
//!
//! Arrow's own builders are append-only. These keep their values in plain vectors, so a row
//! that fails halfway (a bad value in its seventh column) is rolled back with `truncate`,
//! and a column can be widened in place when the schema evolves mid-batch.

use std::sync::Arc;

use super::json::{Json, JsonError, Token, key_string};
use arrow::array::ArrayData;
use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, make_array};
use arrow::buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, i256};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::decimal::{self, Rescale};
use super::temporal;
use super::types::{ColumnDef, ColumnType, Unit};

/// A value that does not fit its column. The caller adds the column name and position.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueError(pub String);

impl From<JsonError> for ValueError {
    fn from(e: JsonError) -> Self {
        ValueError(format!("invalid JSON: {e}"))
    }
}

impl From<decimal::DecimalError> for ValueError {
    fn from(e: decimal::DecimalError) -> Self {
        ValueError(e.to_string())
    }
}

#[derive(Debug)]
enum Data {
    Null,
    Bool(Vec<bool>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    I128(Vec<i128>),
    I256(Vec<i256>),
    Bytes {
        offsets: Vec<i32>,
        values: Vec<u8>,
    },
    Struct(Vec<ColumnBuilder>),
    List {
        offsets: Vec<i32>,
        child: Box<ColumnBuilder>,
    },
}

#[derive(Debug)]
pub struct ColumnBuilder {
    pub def: ColumnDef,
    valid: Vec<bool>,
    data: Data,
}

fn kind(peek: Token) -> &'static str {
    peek.describe()
}

fn wrong(expected: &str, peek: Token) -> ValueError {
    ValueError(format!("expected {expected}, found {}", kind(peek)))
}

impl ColumnBuilder {
    pub fn new(def: ColumnDef) -> Self {
        let data = Self::empty_data(&def.ty, 0, 0);
        ColumnBuilder {
            def,
            valid: Vec::new(),
            data,
        }
    }

    /// Empty storage for `ty`, with room for `rows` values and `bytes` bytes of text (the
    /// size of the previous batch, so a steady stream does not regrow its vectors).
    fn empty_data(ty: &ColumnType, rows: usize, bytes: usize) -> Data {
        match ty {
            ColumnType::Null => Data::Null,
            ColumnType::Boolean => Data::Bool(Vec::with_capacity(rows)),
            ColumnType::Int8 => Data::I8(Vec::with_capacity(rows)),
            ColumnType::Int16 => Data::I16(Vec::with_capacity(rows)),
            ColumnType::Int32 | ColumnType::Date | ColumnType::Time(Unit::Millis) => {
                Data::I32(Vec::with_capacity(rows))
            }
            ColumnType::Int64
            | ColumnType::Time(_)
            | ColumnType::Timestamp { .. }
            | ColumnType::ZonedTimestamp { .. }
            | ColumnType::ZonedTime
            | ColumnType::Duration(_) => Data::I64(Vec::with_capacity(rows)),
            ColumnType::Float32 => Data::F32(Vec::with_capacity(rows)),
            ColumnType::Float64 => Data::F64(Vec::with_capacity(rows)),
            ColumnType::Decimal { precision, .. } if *precision <= 38 => {
                Data::I128(Vec::with_capacity(rows))
            }
            ColumnType::Decimal { .. } => Data::I256(Vec::with_capacity(rows)),
            ColumnType::String
            | ColumnType::Bytes
            | ColumnType::VariableScaleDecimal
            | ColumnType::JsonText => {
                let mut offsets = Vec::with_capacity(rows + 1);
                offsets.push(0);
                Data::Bytes {
                    offsets,
                    values: Vec::with_capacity(bytes),
                }
            }
            ColumnType::Struct(fields) => {
                Data::Struct(fields.iter().cloned().map(ColumnBuilder::new).collect())
            }
            ColumnType::List(item) => Data::List {
                offsets: vec![0],
                child: Box::new(ColumnBuilder::new(ColumnDef::new("item", (**item).clone()))),
            },
        }
    }

    pub fn len(&self) -> usize {
        self.valid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.valid.is_empty()
    }

    pub fn append_null(&mut self) {
        self.valid.push(false);
        match &mut self.data {
            Data::Null => {}
            Data::Bool(v) => v.push(false),
            Data::I8(v) => v.push(0),
            Data::I16(v) => v.push(0),
            Data::I32(v) => v.push(0),
            Data::I64(v) => v.push(0),
            Data::F32(v) => v.push(0.0),
            Data::F64(v) => v.push(0.0),
            Data::I128(v) => v.push(0),
            Data::I256(v) => v.push(i256::ZERO),
            Data::Bytes { offsets, values } => offsets.push(values.len() as i32),
            Data::Struct(children) => children.iter_mut().for_each(ColumnBuilder::append_null),
            Data::List { offsets, child } => offsets.push(child.len() as i32),
        }
    }

    /// Rolls back to `len` rows (used when a later part of the same record fails).
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len() {
            return;
        }
        self.valid.truncate(len);
        match &mut self.data {
            Data::Null => {}
            Data::Bool(v) => v.truncate(len),
            Data::I8(v) => v.truncate(len),
            Data::I16(v) => v.truncate(len),
            Data::I32(v) => v.truncate(len),
            Data::I64(v) => v.truncate(len),
            Data::F32(v) => v.truncate(len),
            Data::F64(v) => v.truncate(len),
            Data::I128(v) => v.truncate(len),
            Data::I256(v) => v.truncate(len),
            Data::Bytes { offsets, values } => {
                offsets.truncate(len + 1);
                values.truncate(offsets[len] as usize);
            }
            Data::Struct(children) => children.iter_mut().for_each(|c| c.truncate(len)),
            Data::List { offsets, child } => {
                offsets.truncate(len + 1);
                child.truncate(offsets[len] as usize);
            }
        }
    }

    /// Nested struct fields, for row-image decoding.
    pub fn children_mut(&mut self) -> Option<&mut Vec<ColumnBuilder>> {
        match &mut self.data {
            Data::Struct(children) => Some(children),
            _ => None,
        }
    }

    /// Marks the struct row valid after its fields were appended by the caller.
    pub fn append_struct_valid(&mut self) {
        self.valid.push(true);
    }

    /// The text of row `row` of a string column, if it holds one.
    pub fn text_at(&self, row: usize) -> Option<&str> {
        let Data::Bytes { offsets, values } = &self.data else {
            return None;
        };
        if !*self.valid.get(row)? {
            return None;
        }
        let (start, end) = (*offsets.get(row)? as usize, *offsets.get(row + 1)? as usize);
        std::str::from_utf8(values.get(start..end)?).ok()
    }

    /// The value of row `row` of a column of 64-bit integers (times included), unless null.
    pub fn i64_at(&self, row: usize) -> Option<i64> {
        let Data::I64(values) = &self.data else {
            return None;
        };
        if !*self.valid.get(row)? {
            return None;
        }
        values.get(row).copied()
    }

    pub fn last_is_valid(&self) -> bool {
        self.valid.last().copied().unwrap_or(false)
    }

    /// Appends bytes to a binary column.
    pub fn push_binary(&mut self, bytes: &[u8]) -> Result<(), ValueError> {
        self.push_bytes(bytes)
    }

    /// Appends text to a string column.
    pub fn push_str(&mut self, s: &str) -> Result<(), ValueError> {
        self.push_bytes(s.as_bytes())
    }

    /// Appends an integer to a 64-bit integer, time or timestamp column.
    pub fn push_i64(&mut self, value: i64) {
        match &mut self.data {
            Data::I64(v) => v.push(value),
            _ => unreachable!("push_i64 on a non-i64 column"),
        }
        self.valid.push(true);
    }

    pub fn push_f64(&mut self, value: f64) {
        match &mut self.data {
            Data::F64(v) => v.push(value),
            _ => unreachable!("push_f64 on a non-f64 column"),
        }
        self.valid.push(true);
    }

    fn push_bytes(&mut self, bytes: &[u8]) -> Result<(), ValueError> {
        let Data::Bytes { offsets, values } = &mut self.data else {
            unreachable!("push_bytes on a non-bytes column")
        };
        values.extend_from_slice(bytes);
        let end = i32::try_from(values.len()).map_err(|_| {
            ValueError("the batch holds more than 2 GiB of text in one column".into())
        })?;
        offsets.push(end);
        self.valid.push(true);
        Ok(())
    }

    /// An integer into an integer column of any width, refused when it does not fit.
    pub(super) fn push_integer(&mut self, i: i64) -> Result<(), ValueError> {
        let out_of_range = || ValueError(format!("{i} does not fit {}", self.def.ty.name()));
        match &mut self.data {
            Data::I8(v) => v.push(i8::try_from(i).map_err(|_| out_of_range())?),
            Data::I16(v) => v.push(i16::try_from(i).map_err(|_| out_of_range())?),
            Data::I32(v) => v.push(i32::try_from(i).map_err(|_| out_of_range())?),
            Data::I64(v) => v.push(i),
            _ => unreachable!("push_integer on a non-integer column"),
        }
        self.valid.push(true);
        Ok(())
    }

    pub(super) fn push_bool(&mut self, value: bool) {
        let Data::Bool(v) = &mut self.data else {
            unreachable!("push_bool on a non-boolean column")
        };
        v.push(value);
        self.valid.push(true);
    }

    /// A decimal's digits (`-12.50`, `3e-5`) into a decimal column of at most 38 digits:
    /// the common case, without a big integer or an allocation.
    pub(super) fn push_decimal_number(&mut self, raw: &[u8]) -> Result<(), ValueError> {
        let ColumnType::Decimal { precision, scale } = self.def.ty else {
            unreachable!("push_decimal_number on a non-decimal column")
        };
        let rescale_mode = if self.def.declared {
            Rescale::RoundHalfUp
        } else {
            Rescale::Exact
        };
        let value = match decimal::from_text_fast(raw, scale) {
            Some(v) => v,
            None => decimal::from_text(raw, scale, rescale_mode)?.as_i128(),
        };
        decimal::check_precision_i128(value, precision, decimal::POW10[precision as usize])?;
        let Data::I128(v) = &mut self.data else {
            unreachable!("push_decimal_number on a wide decimal column")
        };
        v.push(value);
        self.valid.push(true);
        Ok(())
    }

    pub(super) fn push_i32(&mut self, value: i32) {
        match &mut self.data {
            Data::I32(v) => v.push(value),
            _ => unreachable!("push_i32 on a non-i32 column"),
        }
        self.valid.push(true);
    }

    /// Reads one JSON value (whose first token is `peek`) into the column. `source` is the
    /// type the event says the value has (its schema block), which may be narrower than the
    /// column after evolution, or differ in decimal scale.
    pub fn append_json(
        &mut self,
        j: &mut Json,
        peek: Token,
        source: &ColumnType,
    ) -> Result<(), ValueError> {
        if peek == Token::Null {
            j.null()?;
            self.append_null();
            return Ok(());
        }
        let ty = &self.def.ty;
        match ty {
            ColumnType::Null => {
                j.skip()?;
                return Err(ValueError(
                    "internal: a value reached a column of unknown type".into(),
                ));
            }
            ColumnType::Boolean => {
                let b = match peek {
                    Token::True | Token::False => j.boolean()?,
                    _ if (peek == Token::Number) => match read_i64(j, peek)? {
                        0 => false,
                        1 => true,
                        _ => return Err(ValueError("expected a boolean, 0 or 1".into())),
                    },
                    _ => return Err(wrong("a boolean", peek)),
                };
                let Data::Bool(v) = &mut self.data else {
                    unreachable!()
                };
                v.push(b);
                self.valid.push(true);
            }
            ColumnType::Int8 | ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64 => {
                if !(peek == Token::Number) {
                    return Err(wrong("an integer", peek));
                }
                let i = read_i64(j, peek)?;
                self.push_integer(i)?;
            }
            ColumnType::Float32 | ColumnType::Float64 => {
                let f = if peek == Token::Number {
                    j.float()?
                } else if peek == Token::String {
                    match &*j.str()? {
                        "NaN" => f64::NAN,
                        "Infinity" => f64::INFINITY,
                        "-Infinity" => f64::NEG_INFINITY,
                        _ => return Err(ValueError("expected a number, found a string".into())),
                    }
                } else {
                    return Err(wrong("a number", peek));
                };
                match &mut self.data {
                    Data::F32(v) => v.push(f as f32),
                    Data::F64(v) => v.push(f),
                    _ => unreachable!(),
                }
                self.valid.push(true);
            }
            ColumnType::String => {
                match peek {
                    Token::String => {
                        let s = j.str()?;
                        // `s` borrows the parser; copy before the next call.
                        self.push_bytes(s.as_bytes())?;
                    }
                    _ => {
                        // Numbers, booleans and JSON documents are kept as their JSON text.
                        let raw = j.skip_slice()?;
                        let text = std::str::from_utf8(raw)
                            .map_err(|_| ValueError("the value is not valid UTF-8".into()))?;
                        self.push_bytes(text.trim().as_bytes())?;
                    }
                }
            }
            ColumnType::JsonText => {
                let raw = j.skip_slice()?;
                let text = std::str::from_utf8(raw)
                    .map_err(|_| ValueError("the value is not valid UTF-8".into()))?;
                self.push_bytes(text.trim().as_bytes())?;
            }
            ColumnType::Bytes => {
                if peek != Token::String {
                    return Err(wrong("base64 text", peek));
                }
                let text = &j.str_bytes()?;
                let decoded = BASE64
                    .decode(text)
                    .map_err(|_| ValueError("the value is not valid base64".into()))?;
                self.push_bytes(&decoded)?;
            }
            ColumnType::Decimal { precision, scale } => {
                let (precision, scale) = (*precision, *scale);
                let rescale_mode = if self.def.declared {
                    Rescale::RoundHalfUp
                } else {
                    Rescale::Exact
                };
                if (peek == Token::Number) && precision <= 38 {
                    return self.push_decimal_number(j.number()?);
                }
                let value = if peek == Token::String {
                    let raw = decimal::from_base64(&j.str_bytes()?)?;
                    let source_scale = match source {
                        ColumnType::Decimal { scale, .. } => *scale,
                        _ => scale,
                    };
                    decimal::rescale(raw, source_scale, scale, rescale_mode)?
                } else if peek == Token::Number {
                    decimal::from_text(j.number()?, scale, rescale_mode)?
                } else {
                    return Err(wrong("a decimal (base64 or a number)", peek));
                };
                decimal::check_precision(value, precision)?;
                match &mut self.data {
                    Data::I128(v) => v.push(value.as_i128()),
                    Data::I256(v) => v.push(value),
                    _ => unreachable!(),
                }
                self.valid.push(true);
            }
            ColumnType::VariableScaleDecimal => {
                if peek != Token::Object {
                    return Err(wrong("an object with scale and value", peek));
                }
                let text = read_variable_scale_decimal(j)?;
                self.push_bytes(text.as_bytes())?;
            }
            ColumnType::Date => {
                let days = match peek {
                    Token::String => {
                        let s = j.str()?;
                        let s: &str = &s;
                        temporal::parse_date(s).ok_or_else(|| {
                            ValueError(format!("`{s}` is not a date (YYYY-MM-DD)"))
                        })?
                    }
                    _ if (peek == Token::Number) => {
                        let i = read_i64(j, peek)?;
                        i32::try_from(i)
                            .map_err(|_| ValueError(format!("{i} days is out of range")))?
                    }
                    _ => return Err(wrong("a date", peek)),
                };
                self.push_i32(days);
            }
            ColumnType::Time(unit) => {
                let unit = *unit;
                let value = match peek {
                    Token::String => {
                        let s = j.str()?;
                        let s: &str = &s;
                        let nanos = temporal::parse_time_nanos(s)
                            .ok_or_else(|| ValueError(format!("`{s}` is not a time of day")))?;
                        nanos_to_unit(nanos as i128, unit)?
                    }
                    _ if (peek == Token::Number) => {
                        let i = read_i64(j, peek)?;
                        convert_unit(i, unit_of(source).unwrap_or(unit), unit)?
                    }
                    _ => return Err(wrong("a time", peek)),
                };
                if unit == Unit::Millis {
                    self.push_i32(
                        i32::try_from(value).map_err(|_| ValueError("time out of range".into()))?,
                    );
                } else {
                    self.push_i64(value);
                }
            }
            ColumnType::ZonedTime => {
                if peek != Token::String {
                    return Err(wrong("a time with offset", peek));
                }
                let s = j.str()?;
                let s: &str = &s;
                let nanos = temporal::parse_time_nanos(s)
                    .ok_or_else(|| ValueError(format!("`{s}` is not a time of day")))?;
                self.push_i64(nanos);
            }
            ColumnType::Timestamp { unit, .. } | ColumnType::ZonedTimestamp { unit } => {
                let unit = *unit;
                let value = match peek {
                    Token::String => {
                        let s = j.str()?;
                        let s: &str = &s;
                        let nanos = temporal::parse_timestamp_nanos(s, true).ok_or_else(|| {
                            ValueError(format!("`{s}` is not an ISO-8601 timestamp"))
                        })?;
                        nanos_to_unit(nanos, unit)?
                    }
                    _ if (peek == Token::Number) => {
                        let i = read_i64(j, peek)?;
                        convert_unit(i, unit_of(source).unwrap_or(unit), unit)?
                    }
                    _ => return Err(wrong("a timestamp", peek)),
                };
                self.push_i64(value);
            }
            ColumnType::Duration(unit) => {
                if !(peek == Token::Number) {
                    return Err(wrong("an integer duration", peek));
                }
                let unit = *unit;
                let i = read_i64(j, peek)?;
                let value = convert_unit(i, unit_of(source).unwrap_or(unit), unit)?;
                self.push_i64(value);
            }
            ColumnType::Struct(_) => {
                if peek != Token::Object {
                    return Err(wrong("an object", peek));
                }
                let source_fields = match source {
                    ColumnType::Struct(f) => Some(f.clone()),
                    _ => None,
                };
                self.append_object(j, source_fields.as_deref())?;
            }
            ColumnType::List(_) => {
                if peek != Token::Array {
                    return Err(wrong("a list", peek));
                }
                let source_item = match source {
                    ColumnType::List(item) => (**item).clone(),
                    other => other.clone(),
                };
                let Data::List { offsets, child } = &mut self.data else {
                    unreachable!()
                };
                let mut next = j.array_first()?;
                while let Some(item_peek) = next {
                    child.append_json(j, item_peek, &source_item)?;
                    next = j.array_next()?;
                }
                offsets.push(child.len() as i32);
                self.valid.push(true);
            }
        }
        Ok(())
    }

    /// Reads a nested JSON object into this struct column. Fields it lacks become null.
    fn append_object(
        &mut self,
        j: &mut Json,
        source: Option<&[ColumnDef]>,
    ) -> Result<(), ValueError> {
        let Data::Struct(children) = &mut self.data else {
            unreachable!()
        };
        let row = self.valid.len();
        let mut key = j.object_first()?.map(key_string);
        while let Some(name) = key {
            let Some(child) = children.iter_mut().find(|c| c.def.name == name) else {
                return Err(ValueError(format!(
                    "unexpected field `{name}` in a nested struct"
                )));
            };
            if child.len() > row {
                return Err(ValueError(format!("field `{name}` appears twice")));
            }
            let source_ty = source
                .and_then(|s| s.iter().find(|f| f.name == name))
                .map(|f| f.ty.clone())
                .unwrap_or_else(|| child.def.ty.clone());
            let peek = j.peek()?;
            child
                .append_json(j, peek, &source_ty)
                .map_err(|e| ValueError(format!("field `{name}`: {}", e.0)))?;
            key = j.object_next()?.map(key_string);
        }
        for child in children.iter_mut() {
            if child.len() == row {
                child.append_null();
            }
        }
        self.valid.push(true);
        Ok(())
    }

    /// Changes the column to a wider type, converting the values already appended.
    pub fn widen(&mut self, to: ColumnDef) -> Result<(), ValueError> {
        if let (ColumnType::Struct(_), ColumnType::Struct(new_fields)) = (&self.def.ty, &to.ty) {
            let rows = self.len();
            let Data::Struct(children) = &mut self.data else {
                unreachable!()
            };
            for field in new_fields {
                match children.iter_mut().find(|c| c.def.name == field.name) {
                    Some(child) if child.def.ty != field.ty => child.widen(field.clone())?,
                    Some(_) => {}
                    None => {
                        let mut child = ColumnBuilder::new(field.clone());
                        (0..rows).for_each(|_| child.append_null());
                        children.push(child);
                    }
                }
            }
            self.def = to;
            return Ok(());
        }
        let array = self.finish();
        let field = to.arrow_field();
        let cast = arrow::compute::cast(&array, field.data_type()).map_err(|e| {
            ValueError(format!(
                "cannot widen {} to {}: {e}",
                self.def.ty.name(),
                to.ty.name()
            ))
        })?;
        *self = ColumnBuilder::new(to);
        self.extend_from_array(&cast);
        Ok(())
    }

    /// Appends every value of an array of this column's Arrow type.
    fn extend_from_array(&mut self, array: &ArrayRef) {
        let n = array.len();
        let valid: Vec<bool> = (0..n).map(|i| array.is_valid(i)).collect();
        match &mut self.data {
            Data::Null => {}
            Data::Bool(v) => v.extend(array.as_boolean().values().iter()),
            Data::I8(v) => v.extend(raw_values::<i8>(array)),
            Data::I16(v) => v.extend(raw_values::<i16>(array)),
            Data::I32(v) => v.extend(raw_values::<i32>(array)),
            Data::I64(v) => v.extend(raw_values::<i64>(array)),
            Data::F32(v) => v.extend(raw_values::<f32>(array)),
            Data::F64(v) => v.extend(raw_values::<f64>(array)),
            Data::I128(v) => v.extend(raw_values::<i128>(array)),
            Data::I256(v) => v.extend(raw_values::<i256>(array)),
            Data::Bytes { offsets, values } => {
                let data = array.to_data();
                let array_offsets = &data.buffer::<i32>(0)[..n + 1];
                let base = array_offsets[0];
                let bytes = &data.buffers()[1].as_slice()[base as usize..array_offsets[n] as usize];
                let shift = values.len() as i32 - base;
                values.extend_from_slice(bytes);
                offsets.extend(array_offsets[1..].iter().map(|o| o + shift));
            }
            Data::Struct(children) => {
                let s = array.as_struct();
                for child in children.iter_mut() {
                    match s.column_by_name(&child.def.name) {
                        Some(values) => child.extend_from_array(values),
                        None => (0..n).for_each(|_| child.append_null()),
                    }
                }
            }
            Data::List { offsets, child } => {
                let list = array.as_list::<i32>();
                for i in 0..n {
                    if list.is_valid(i) {
                        child.extend_from_array(&list.value(i));
                    }
                    offsets.push(child.len() as i32);
                }
            }
        }
        self.valid.extend(valid);
    }

    /// Builds the Arrow array and empties the builder.
    pub fn finish(&mut self) -> ArrayRef {
        let len = self.valid.len();
        let valid = std::mem::replace(&mut self.valid, Vec::with_capacity(len));
        let nulls = if valid.iter().all(|v| *v) {
            None
        } else {
            Some(NullBuffer::from(valid))
        };
        let data_type = self.def.ty.arrow_type();
        let bytes = match &self.data {
            Data::Bytes { values, .. } => values.len(),
            _ => 0,
        };
        let data = std::mem::replace(&mut self.data, Self::empty_data(&self.def.ty, len, bytes));
        fn primitive<T: arrow::datatypes::ArrowNativeType>(
            data_type: DataType,
            len: usize,
            values: Vec<T>,
            nulls: Option<NullBuffer>,
        ) -> ArrayRef {
            let data = ArrayData::builder(data_type)
                .len(len)
                .add_buffer(Buffer::from_vec(values))
                .nulls(nulls)
                .build()
                .expect("primitive values match their type");
            make_array(data)
        }
        match data {
            Data::Null => Arc::new(arrow::array::NullArray::new(len)),
            Data::Bool(v) => Arc::new(BooleanArray::new(BooleanBuffer::from(v), nulls)),
            Data::I8(v) => primitive(data_type, len, v, nulls),
            Data::I16(v) => primitive(data_type, len, v, nulls),
            Data::I32(v) => primitive(data_type, len, v, nulls),
            Data::I64(v) => primitive(data_type, len, v, nulls),
            Data::F32(v) => primitive(data_type, len, v, nulls),
            Data::F64(v) => primitive(data_type, len, v, nulls),
            Data::I128(v) => primitive(data_type, len, v, nulls),
            Data::I256(v) => primitive(data_type, len, v, nulls),
            Data::Bytes { offsets, values } => {
                let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
                let values = Buffer::from_vec(values);
                if data_type == DataType::Binary {
                    Arc::new(arrow::array::BinaryArray::new(offsets, values, nulls))
                } else {
                    // SAFETY: every append wrote a `&str` or bytes checked with
                    // `str::from_utf8`, so the values are valid UTF-8 at every offset.
                    Arc::new(unsafe {
                        arrow::array::StringArray::new_unchecked(offsets, values, nulls)
                    })
                }
            }
            Data::Struct(mut children) => {
                let DataType::Struct(fields) = data_type else {
                    unreachable!()
                };
                let arrays = children.iter_mut().map(ColumnBuilder::finish).collect();
                let array = arrow::array::StructArray::new(fields, arrays, nulls);
                self.data = Data::Struct(children);
                Arc::new(array)
            }
            Data::List { offsets, mut child } => {
                let DataType::List(field) = data_type else {
                    unreachable!()
                };
                let values = child.finish();
                let array = arrow::array::ListArray::new(
                    field,
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    values,
                    nulls,
                );
                self.data = Data::List {
                    offsets: vec![0],
                    child,
                };
                Arc::new(array)
            }
        }
    }
}

/// Reads an integer that must fit 64 bits, from the number's text.
pub fn read_i64(j: &mut Json, peek: Token) -> Result<i64, ValueError> {
    if !(peek == Token::Number) {
        return Err(wrong("an integer", peek));
    }
    let raw = j.number()?;
    parse_i64(raw).ok_or_else(|| {
        let text = String::from_utf8_lossy(raw);
        if raw.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) {
            ValueError(format!("expected an integer, found {text}"))
        } else {
            ValueError(format!(
                "{text} does not fit a 64-bit integer; declare the column as decimal(p,0)"
            ))
        }
    })
}

/// Decimal digits with an optional minus sign, checked for overflow; `None` otherwise.
#[inline]
fn parse_i64(raw: &[u8]) -> Option<i64> {
    let (negative, digits) = match raw.first() {
        Some(b'-') => (true, &raw[1..]),
        _ => (false, raw),
    };
    if digits.is_empty() {
        return None;
    }
    let mut magnitude: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude.checked_mul(10)?.checked_add((b - b'0') as u64)?;
    }
    if negative {
        if magnitude <= i64::MAX as u64 + 1 {
            Some((magnitude as i64).wrapping_neg())
        } else {
            None
        }
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// The values of a primitive array (widening is rare, so a copy is fine).
fn raw_values<T: arrow::datatypes::ArrowNativeType>(array: &ArrayRef) -> Vec<T> {
    let data = array.to_data();
    data.buffer::<T>(0)[..array.len()].to_vec()
}

pub(super) fn unit_of(ty: &ColumnType) -> Option<Unit> {
    match ty {
        ColumnType::Time(u)
        | ColumnType::Timestamp { unit: u, .. }
        | ColumnType::ZonedTimestamp { unit: u }
        | ColumnType::Duration(u) => Some(*u),
        ColumnType::ZonedTime => Some(Unit::Nanos),
        _ => None,
    }
}

/// Converts an integer between units; refuses to drop precision.
pub(super) fn convert_unit(value: i64, from: Unit, to: Unit) -> Result<i64, ValueError> {
    let (f, t) = (from.per_second(), to.per_second());
    if f == t {
        Ok(value)
    } else if t > f {
        value
            .checked_mul(t / f)
            .ok_or_else(|| ValueError(format!("{value} is out of range for the column")))
    } else if value % (f / t) == 0 {
        Ok(value / (f / t))
    } else {
        Err(ValueError(format!(
            "{value} has more precision than the column keeps"
        )))
    }
}

pub(super) fn nanos_to_unit(nanos: i128, unit: Unit) -> Result<i64, ValueError> {
    let divisor = 1_000_000_000 / unit.per_second() as i128;
    if nanos % divisor != 0 {
        return Err(ValueError(
            "the value has more sub-second precision than the column keeps; declare the column \
             with a _nanos type to keep it"
                .into(),
        ));
    }
    i64::try_from(nanos / divisor).map_err(|_| ValueError("the timestamp is out of range".into()))
}

/// `{"scale": 2, "value": "AeI="}` to `4.82`.
fn read_variable_scale_decimal(j: &mut Json) -> Result<String, ValueError> {
    let mut scale: Option<i64> = None;
    let mut unscaled: Option<i256> = None;
    let mut key = j.object_first()?.map(key_string);
    while let Some(k) = key {
        match k.as_str() {
            "scale" => {
                let peek = j.peek()?;
                let s = read_i64(j, peek)?;
                scale = Some(s);
            }
            "value" => unscaled = Some(decimal::from_base64(&j.str_bytes()?)?),
            _ => j.skip()?,
        }
        key = j.object_next()?.map(key_string);
    }
    match (scale, unscaled) {
        (Some(s), Some(v)) if (-128..=127).contains(&s) => Ok(decimal::format(v, s as i8)),
        _ => Err(ValueError(
            "a variable-scale decimal needs `scale` and `value`".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Decimal128Array, Int64Array, StringArray};

    fn feed(builder: &mut ColumnBuilder, json: &str) -> Result<(), ValueError> {
        let mut j = Json::new(json.as_bytes());
        let peek = j.peek().unwrap();
        let source = builder.def.ty.clone();
        builder.append_json(&mut j, peek, &source)
    }

    #[test]
    fn integers_parse_exactly() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"9223372036854775808"), None);
        assert_eq!(
            parse_i64(b"1596010986047123456"),
            Some(1_596_010_986_047_123_456)
        );
        assert_eq!(parse_i64(b"1.5"), None);
        assert_eq!(parse_i64(b"-"), None);
    }

    #[test]
    fn rollback_removes_partial_rows() {
        let mut b = ColumnBuilder::new(ColumnDef::new("s", ColumnType::String));
        feed(&mut b, "\"a\"").unwrap();
        feed(&mut b, "\"bc\"").unwrap();
        b.truncate(1);
        feed(&mut b, "\"d\"").unwrap();
        let a = b.finish();
        let s = a.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>(), [Some("a"), Some("d")]);
    }

    #[test]
    fn widening_keeps_existing_values() {
        let mut b = ColumnBuilder::new(ColumnDef::new("n", ColumnType::Int32));
        feed(&mut b, "7").unwrap();
        b.append_null();
        b.widen(ColumnDef::new("n", ColumnType::Int64)).unwrap();
        feed(&mut b, "9000000000").unwrap();
        let a = b.finish();
        let n = a.as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(
            n.iter().collect::<Vec<_>>(),
            [Some(7), None, Some(9_000_000_000)]
        );
    }

    #[test]
    fn null_columns_become_typed() {
        let mut b = ColumnBuilder::new(ColumnDef::new("x", ColumnType::Null));
        b.append_null();
        b.widen(ColumnDef::new("x", ColumnType::String)).unwrap();
        feed(&mut b, "\"v\"").unwrap();
        let a = b.finish();
        assert_eq!(a.null_count(), 1);
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn decimals_accept_base64_and_numbers() {
        let ty = ColumnType::Decimal {
            precision: 8,
            scale: 4,
        };
        let mut b = ColumnBuilder::new(ColumnDef::new("d", ty));
        feed(&mut b, "\"EtaH\"").unwrap();
        feed(&mut b, "123.4567").unwrap();
        assert!(
            feed(&mut b, "123.45678").is_err(),
            "schema-typed decimals are exact"
        );
        assert!(
            feed(&mut b, "12345.1").is_err(),
            "precision 8 holds 4 integer digits"
        );
        let a = b.finish();
        let d = a.as_any().downcast_ref::<Decimal128Array>().unwrap();
        assert_eq!(d.value_as_string(0), "123.4567");
        assert_eq!(d.value(0), d.value(1));
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        let mut b = ColumnBuilder::new(ColumnDef::new("i", ColumnType::Int32));
        assert_eq!(
            feed(&mut b, "\"x\"").unwrap_err().0,
            "expected an integer, found a string"
        );
        assert!(
            feed(&mut b, "3000000000")
                .unwrap_err()
                .0
                .contains("does not fit int32")
        );
        assert!(feed(&mut b, "1.5").is_err());
        assert_eq!(b.len(), 0, "failed values append nothing");
    }

    #[test]
    fn timestamps_convert_between_units_without_loss() {
        let ty = ColumnType::Timestamp {
            unit: Unit::Micros,
            utc: false,
        };
        let mut b = ColumnBuilder::new(ColumnDef::new("t", ty));
        let mut j = Json::new(b"1595008822123");
        let peek = j.peek().unwrap();
        b.append_json(
            &mut j,
            peek,
            &ColumnType::Timestamp {
                unit: Unit::Millis,
                utc: false,
            },
        )
        .unwrap();
        feed(&mut b, "\"2020-07-17T18:00:22.123456Z\"").unwrap();
        let a = b.finish();
        let t = a.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        assert_eq!(t.value(0), 1_595_008_822_123_000);
        assert_eq!(t.value(1), 1_595_008_822_123_456);
    }

    #[test]
    fn nested_structs_and_lists() {
        let point = ColumnType::Struct(vec![
            ColumnDef::new("x", ColumnType::Float64),
            ColumnDef::new("wkb", ColumnType::Bytes),
            ColumnDef::new("srid", ColumnType::Int32),
        ]);
        let mut b = ColumnBuilder::new(ColumnDef::new("p", point));
        feed(&mut b, r#"{"x": 1.0, "wkb": "AQE=", "srid": null}"#).unwrap();
        feed(&mut b, r#"{"x": 2.5}"#).unwrap();
        assert!(feed(&mut b, r#"{"z": 1}"#).is_err());
        let a = b.finish();
        let s = a.as_struct();
        assert_eq!(s.len(), 2);
        assert_eq!(s.column(1).null_count(), 1);

        let mut l = ColumnBuilder::new(ColumnDef::new(
            "tags",
            ColumnType::List(Box::new(ColumnType::String)),
        ));
        feed(&mut l, r#"["a", "b"]"#).unwrap();
        feed(&mut l, "[]").unwrap();
        l.append_null();
        let a = l.finish();
        let list = a.as_list::<i32>();
        assert_eq!(list.value(0).len(), 2);
        assert!(list.is_null(2));
    }
}
