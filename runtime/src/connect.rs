//! Kafka Connect JSON with schemas (what Kafka Connect's `JsonConverter` writes with
//! `schemas.enable=true`, and what Debezium topics usually hold): the Connect schema of
//! Arrow columns, and values in Connect's native encodings. Dates are epoch days,
//! times and zone-less timestamps are epoch integers in their unit, decimals are base64
//! two's-complement bytes with the scale in the schema. weir's decoder reads these back to
//! exactly the Arrow types they came from, which the plain JSON form cannot promise (a
//! decimal there is a JSON number, a date an ISO string).
//!
//! A column keeps the Debezium semantic name it was read with (`weir.semantic`), so a
//! `io.debezium.time.MicroTimestamp` leaves weir as one; columns without one get the name
//! Debezium would give their Arrow type.

use arrow::array::{Array, AsArray, StructArray};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Decimal256Type, Field, Fields, Time32MillisecondType,
    Time32SecondType, Time64MicrosecondType, Time64NanosecondType, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, i256,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value as Json, json};
use std::fmt::Write;

use crate::decode::decimal::{self, Rescale};
use crate::decode::types::{EXTENSION_KEY, SEMANTIC_KEY};
use crate::encode::{self, write_json, write_json_string};

const CONNECT_DECIMAL: &str = "org.apache.kafka.connect.data.Decimal";
const CONNECT_TIMESTAMP: &str = "org.apache.kafka.connect.data.Timestamp";
const VARIABLE_SCALE_DECIMAL: &str = "io.debezium.data.VariableScaleDecimal";
const ZONED_TIME: &str = "io.debezium.time.ZonedTime";

/// How one column's values are written.
#[derive(Debug, Clone)]
enum Encoding {
    /// As plain JSON (booleans, integers, floats, strings, base64 bytes, durations).
    Plain,
    /// Epoch days (`Date32`).
    EpochDays,
    /// A time of day as an integer in its unit, times `scale` (seconds become millis).
    TimeOfDay {
        scale: i64,
    },
    /// A timestamp as an epoch integer in its unit, times `scale`.
    Epoch {
        scale: i64,
    },
    /// An ISO-8601 string in UTC (`ZonedTimestamp`).
    IsoTimestamp,
    /// An ISO-8601 time with a `Z` offset (`ZonedTime`, stored as UTC nanoseconds).
    IsoZonedTime,
    /// Base64 big-endian two's-complement bytes of the unscaled value.
    DecimalBytes,
    /// `{"scale": s, "value": base64}` from exact decimal text.
    VariableScale,
    Struct(Vec<Column>),
    List(Box<Column>),
    /// Types weir's decoder never produces, written as display text.
    Text,
}

/// One column: its name, how its values are written, and its Connect schema.
#[derive(Debug, Clone)]
pub struct Column {
    name: String,
    encoding: Encoding,
    schema: Json,
}

impl Column {
    /// The Connect schema of this column, with `"field"` set to its name.
    pub fn schema(&self) -> &Json {
        &self.schema
    }
}

/// The columns of a row image, planned once per batch schema.
#[derive(Debug, Clone)]
pub struct RowEncoder {
    columns: Vec<Column>,
}

impl RowEncoder {
    pub fn new(fields: &Fields) -> Self {
        RowEncoder {
            columns: fields.iter().map(|f| column(f)).collect(),
        }
    }

    /// A Connect struct schema named `name` for the row (`optional` as given).
    pub fn struct_schema(&self, name: &str, field: Option<&str>, optional: bool) -> Json {
        let mut schema = json!({
            "type": "struct",
            "fields": self.columns.iter().map(|c| c.schema.clone()).collect::<Vec<_>>(),
            "optional": optional,
            "name": name,
        });
        if let Some(field) = field {
            schema["field"] = json!(field);
        }
        schema
    }

    /// Only the named columns (a key), in the order given. `None` if one is missing.
    pub fn select(&self, names: &[String]) -> Option<RowEncoder> {
        let columns = names
            .iter()
            .map(|n| self.columns.iter().find(|c| &c.name == n).cloned())
            .collect::<Option<Vec<_>>>()?;
        Some(RowEncoder { columns })
    }

    /// Appends one row as a JSON object in native encodings (`null` for a null row).
    pub fn write_row(&self, out: &mut String, row_array: &StructArray, row: usize) {
        if row_array.is_null(row) {
            out.push_str("null");
            return;
        }
        write_struct(out, &self.columns, row_array, row, None);
    }

    /// Appends the named-subset row (see [`select`](Self::select)) of `row_array`.
    pub fn write_selected(&self, out: &mut String, row_array: &StructArray, row: usize) {
        let indices: Vec<Option<usize>> = self
            .columns
            .iter()
            .map(|c| row_array.fields().iter().position(|f| f.name() == &c.name))
            .collect();
        write_struct(out, &self.columns, row_array, row, Some(&indices));
    }
}

/// The Connect schema of a Debezium change event whose row images are `row`, matching
/// what [`crate::encode::write_change_with`] writes.
pub fn envelope_schema(topic: &str, row: &RowEncoder) -> Json {
    let value_name = format!("{topic}.Value");
    let text = |field: &str| json!({"type": "string", "optional": true, "field": field});
    let int64 = |field: &str| json!({"type": "int64", "optional": true, "field": field});
    json!({
        "type": "struct",
        "name": format!("{topic}.Envelope"),
        "optional": false,
        "fields": [
            row.struct_schema(&value_name, Some("before"), true),
            row.struct_schema(&value_name, Some("after"), true),
            {"type": "string", "optional": false, "field": "op"},
            {"type": "int64", "optional": true, "field": "ts_ms"},
            {"type": "int64", "optional": true, "field": "ts_us"},
            {
                "type": "struct",
                "name": "io.weir.connector.Source",
                "optional": false,
                "field": "source",
                "fields": [
                    {"type": "string", "optional": false, "field": "version"},
                    {"type": "int64", "optional": true, "field": "ts_ms"},
                    {"type": "int64", "optional": true, "field": "ts_us"},
                    text("connector"),
                    text("name"),
                    text("db"),
                    text("schema"),
                    text("table"),
                    text("snapshot"),
                    // Debezium's PostgreSQL connector: numbers (other sources' text
                    // transaction ids do not fit it).
                    int64("txId"),
                    text("file"),
                    int64("pos"),
                    int64("row"),
                    text("gtid"),
                    int64("lsn"),
                    text("change_lsn"),
                    text("commit_lsn"),
                    int64("event_serial_no"),
                    text("scn"),
                    text("commit_scn"),
                    int64("ord"),
                    text("sequence"),
                    int64("xmin"),
                    text("weir_position"),
                ],
            },
            {
                "type": "struct",
                "optional": true,
                "field": "transaction",
                "fields": [
                    {"type": "string", "optional": false, "field": "id"},
                    {"type": "int64", "optional": false, "field": "total_order"},
                    {"type": "int64", "optional": false, "field": "data_collection_order"},
                ],
            },
            text("origin"),
        ],
    })
}

fn write_struct(
    out: &mut String,
    columns: &[Column],
    array: &StructArray,
    row: usize,
    indices: Option<&[Option<usize>]>,
) {
    out.push('{');
    for (i, column) in columns.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_string(out, &column.name);
        out.push(':');
        let index = match indices {
            Some(indices) => indices[i],
            None => Some(i),
        };
        match index {
            Some(index) => write_value(out, column, array.column(index).as_ref(), row),
            None => out.push_str("null"),
        }
    }
    out.push('}');
}

fn column(field: &Field) -> Column {
    let semantic = field.metadata().get(SEMANTIC_KEY).map(String::as_str);
    let json_text = field.metadata().get(EXTENSION_KEY).map(String::as_str) == Some("arrow.json");
    let mut parameters = None;
    let mut fields = None;
    let mut items = None;
    let (kind, default_name, encoding) = match field.data_type() {
        DataType::Boolean => ("boolean", None, Encoding::Plain),
        DataType::Int8 => ("int8", None, Encoding::Plain),
        DataType::Int16 | DataType::UInt8 => ("int16", None, Encoding::Plain),
        DataType::Int32 | DataType::UInt16 => ("int32", None, Encoding::Plain),
        // UInt64 has no Connect type; its JSON number stays exact for readers that keep it.
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => ("int64", None, Encoding::Plain),
        DataType::Float32 => ("float", None, Encoding::Plain),
        DataType::Float64 => ("double", None, Encoding::Plain),
        DataType::Utf8 | DataType::LargeUtf8 if semantic == Some(VARIABLE_SCALE_DECIMAL) => {
            fields = Some(json!([
                {"type": "int32", "optional": false, "field": "scale"},
                {"type": "bytes", "optional": false, "field": "value"},
            ]));
            ("struct", None, Encoding::VariableScale)
        }
        DataType::Utf8 | DataType::LargeUtf8 => (
            "string",
            json_text.then_some("io.debezium.data.Json"),
            Encoding::Plain,
        ),
        DataType::Binary | DataType::LargeBinary | DataType::FixedSizeBinary(_) => {
            ("bytes", None, Encoding::Plain)
        }
        DataType::Decimal128(precision, scale) | DataType::Decimal256(precision, scale) => {
            parameters = Some(json!({
                "scale": scale.to_string(),
                "connect.decimal.precision": precision.to_string(),
            }));
            ("bytes", Some(CONNECT_DECIMAL), Encoding::DecimalBytes)
        }
        DataType::Date32 => ("int32", Some("io.debezium.time.Date"), Encoding::EpochDays),
        DataType::Time32(TimeUnit::Second) => (
            "int32",
            Some("io.debezium.time.Time"),
            Encoding::TimeOfDay { scale: 1000 },
        ),
        DataType::Time32(_) => (
            "int32",
            Some("io.debezium.time.Time"),
            Encoding::TimeOfDay { scale: 1 },
        ),
        DataType::Time64(TimeUnit::Nanosecond) if semantic == Some(ZONED_TIME) => {
            ("string", None, Encoding::IsoZonedTime)
        }
        DataType::Time64(TimeUnit::Microsecond) => (
            "int64",
            Some("io.debezium.time.MicroTime"),
            Encoding::TimeOfDay { scale: 1 },
        ),
        DataType::Time64(_) => (
            "int64",
            Some("io.debezium.time.NanoTime"),
            Encoding::TimeOfDay { scale: 1 },
        ),
        DataType::Timestamp(unit, None) => {
            let (name, scale) = match unit {
                TimeUnit::Second => ("io.debezium.time.Timestamp", 1000),
                TimeUnit::Millisecond => ("io.debezium.time.Timestamp", 1),
                TimeUnit::Microsecond => ("io.debezium.time.MicroTimestamp", 1),
                TimeUnit::Nanosecond => ("io.debezium.time.NanoTimestamp", 1),
            };
            ("int64", Some(name), Encoding::Epoch { scale })
        }
        // An instant in milliseconds is Connect's own Timestamp (an exact epoch integer);
        // finer ones travel as ISO text, like Debezium's ZonedTimestamp.
        DataType::Timestamp(unit @ (TimeUnit::Second | TimeUnit::Millisecond), Some(_))
            if semantic.is_none_or(|s| s == CONNECT_TIMESTAMP) =>
        {
            let scale = if *unit == TimeUnit::Second { 1000 } else { 1 };
            ("int64", Some(CONNECT_TIMESTAMP), Encoding::Epoch { scale })
        }
        DataType::Timestamp(_, Some(_)) => (
            "string",
            Some("io.debezium.time.ZonedTimestamp"),
            Encoding::IsoTimestamp,
        ),
        DataType::Duration(TimeUnit::Microsecond) => (
            "int64",
            Some("io.debezium.time.MicroDuration"),
            Encoding::Plain,
        ),
        DataType::Duration(TimeUnit::Nanosecond) => (
            "int64",
            Some("io.debezium.time.NanoDuration"),
            Encoding::Plain,
        ),
        DataType::Duration(_) => ("int64", None, Encoding::Plain),
        DataType::Struct(children) => {
            let columns: Vec<Column> = children.iter().map(|f| column(f)).collect();
            fields = Some(Json::Array(
                columns.iter().map(|c| c.schema.clone()).collect(),
            ));
            ("struct", None, Encoding::Struct(columns))
        }
        DataType::List(item) | DataType::LargeList(item) => {
            let mut item = column(item);
            if let Some(schema) = item.schema.as_object_mut() {
                schema.remove("field");
            }
            items = Some(item.schema.clone());
            ("array", None, Encoding::List(Box::new(item)))
        }
        _ => ("string", None, Encoding::Text),
    };
    let mut schema = json!({"type": kind, "optional": true});
    // A semantic name is kept only where it describes the same encoding.
    let name = match (&encoding, semantic) {
        (Encoding::DecimalBytes, _) => Some(CONNECT_DECIMAL),
        (Encoding::VariableScale, _) => Some(VARIABLE_SCALE_DECIMAL),
        (Encoding::IsoZonedTime, _) => Some(ZONED_TIME),
        (Encoding::Plain | Encoding::Struct(_), Some(s)) => Some(s),
        _ => default_name,
    };
    if let Some(name) = name {
        schema["name"] = json!(name);
    }
    if let Some(parameters) = parameters {
        schema["parameters"] = parameters;
    }
    if let Some(fields) = fields {
        schema["fields"] = fields;
    }
    if let Some(items) = items {
        schema["items"] = items;
    }
    schema["field"] = json!(field.name());
    Column {
        name: field.name().clone(),
        encoding,
        schema,
    }
}

fn write_value(out: &mut String, column: &Column, array: &dyn Array, row: usize) {
    if array.is_null(row) {
        out.push_str("null");
        return;
    }
    match &column.encoding {
        Encoding::Plain => write_json(out, array, row),
        Encoding::EpochDays => {
            let _ = write!(out, "{}", array.as_primitive::<Date32Type>().value(row));
        }
        Encoding::TimeOfDay { scale } => {
            let value = match array.data_type() {
                DataType::Time32(TimeUnit::Second) => {
                    array.as_primitive::<Time32SecondType>().value(row) as i64
                }
                DataType::Time32(_) => {
                    array.as_primitive::<Time32MillisecondType>().value(row) as i64
                }
                DataType::Time64(TimeUnit::Microsecond) => {
                    array.as_primitive::<Time64MicrosecondType>().value(row)
                }
                _ => array.as_primitive::<Time64NanosecondType>().value(row),
            };
            let _ = write!(out, "{}", value * scale);
        }
        Encoding::Epoch { scale } => {
            let value = match array.data_type() {
                DataType::Timestamp(TimeUnit::Second, _) => {
                    array.as_primitive::<TimestampSecondType>().value(row)
                }
                DataType::Timestamp(TimeUnit::Millisecond, _) => {
                    array.as_primitive::<TimestampMillisecondType>().value(row)
                }
                DataType::Timestamp(TimeUnit::Microsecond, _) => {
                    array.as_primitive::<TimestampMicrosecondType>().value(row)
                }
                _ => array.as_primitive::<TimestampNanosecondType>().value(row),
            };
            let _ = write!(out, "{}", value * scale);
        }
        Encoding::IsoTimestamp => {
            write_json_string(out, &encode::text(array, row).unwrap_or_default())
        }
        Encoding::IsoZonedTime => {
            let mut text = encode::text(array, row).unwrap_or_default().into_owned();
            text.push('Z');
            write_json_string(out, &text);
        }
        Encoding::DecimalBytes => {
            let unscaled = match array.data_type() {
                DataType::Decimal128(..) => {
                    i256::from_i128(array.as_primitive::<Decimal128Type>().value(row))
                }
                _ => array.as_primitive::<Decimal256Type>().value(row),
            };
            write_json_string(out, &BASE64.encode(twos_complement(unscaled)));
        }
        Encoding::VariableScale => {
            let text = encode::text(array, row).unwrap_or_default();
            match variable_scale(&text) {
                Some((scale, unscaled)) => {
                    let _ = write!(out, "{{\"scale\":{scale},\"value\":");
                    write_json_string(out, &BASE64.encode(twos_complement(unscaled)));
                    out.push('}');
                }
                // Not decimal text (a plugin wrote something else): keep it visible.
                None => write_json_string(out, &text),
            }
        }
        Encoding::Struct(columns) => write_struct(out, columns, array.as_struct(), row, None),
        Encoding::List(item) => {
            let values = match array.data_type() {
                DataType::LargeList(_) => array.as_list::<i64>().value(row),
                _ => array.as_list::<i32>().value(row),
            };
            out.push('[');
            for i in 0..values.len() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item, values.as_ref(), i);
            }
            out.push(']');
        }
        Encoding::Text => {
            let text = arrow::util::display::array_value_to_string(array, row).unwrap_or_default();
            write_json_string(out, &text);
        }
    }
}

/// The shortest big-endian two's-complement bytes of `value` (what Connect's `Decimal`
/// and Java's `BigInteger.toByteArray` produce).
fn twos_complement(value: i256) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let negative = value.is_negative();
    let mut start = 0;
    while start < bytes.len() - 1 {
        let (current, next) = (bytes[start], bytes[start + 1]);
        let redundant = if negative {
            current == 0xff && next & 0x80 != 0
        } else {
            current == 0 && next & 0x80 == 0
        };
        if !redundant {
            break;
        }
        start += 1;
    }
    bytes[start..].to_vec()
}

/// The scale and unscaled value of exact decimal text (`-12.340` is scale 3, -12340).
fn variable_scale(text: &str) -> Option<(i8, i256)> {
    let scale = text.split_once('.').map_or(0, |(_, frac)| frac.len());
    let scale = i8::try_from(scale).ok()?;
    let unscaled = decimal::from_text(text.as_bytes(), scale, Rescale::Exact).ok()?;
    Some((scale, unscaled))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::types::{ColumnDef, ColumnType, Unit, from_connect_schema};
    use arrow::array::{ArrayRef, Date32Array, Decimal128Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn decimals_are_minimal_twos_complement() {
        for (value, bytes) in [
            (0i128, vec![0u8]),
            (127, vec![0x7f]),
            (128, vec![0x00, 0x80]),
            (-1, vec![0xff]),
            (-128, vec![0x80]),
            (-129, vec![0xff, 0x7f]),
            (12345, vec![0x30, 0x39]),
        ] {
            let encoded = twos_complement(i256::from_i128(value));
            assert_eq!(encoded, bytes, "{value}");
            assert_eq!(
                decimal::from_twos_complement(&encoded).unwrap(),
                i256::from_i128(value)
            );
        }
        assert_eq!(
            variable_scale("-12.340"),
            Some((3, i256::from_i128(-12340)))
        );
        assert_eq!(variable_scale("7"), Some((0, i256::from_i128(7))));
        assert_eq!(variable_scale("seven"), None);
    }

    /// Every column type the decoder produces maps to a Connect schema that the decoder
    /// maps back to the same type.
    #[test]
    fn schemas_read_back_as_the_same_types() {
        let types = [
            ColumnType::Boolean,
            ColumnType::Int8,
            ColumnType::Int16,
            ColumnType::Int32,
            ColumnType::Int64,
            ColumnType::Float32,
            ColumnType::Float64,
            ColumnType::String,
            ColumnType::Bytes,
            ColumnType::Decimal {
                precision: 10,
                scale: 2,
            },
            ColumnType::Decimal {
                precision: 65,
                scale: 30,
            },
            ColumnType::Date,
            ColumnType::Time(Unit::Millis),
            ColumnType::Time(Unit::Micros),
            ColumnType::Time(Unit::Nanos),
            ColumnType::Timestamp {
                unit: Unit::Millis,
                utc: false,
            },
            ColumnType::Timestamp {
                unit: Unit::Micros,
                utc: false,
            },
            ColumnType::Timestamp {
                unit: Unit::Nanos,
                utc: false,
            },
            ColumnType::Timestamp {
                unit: Unit::Millis,
                utc: true,
            },
            ColumnType::ZonedTimestamp { unit: Unit::Micros },
            ColumnType::Duration(Unit::Micros),
            ColumnType::Duration(Unit::Nanos),
            ColumnType::Struct(vec![
                ColumnDef::new("x", ColumnType::Float64),
                ColumnDef::new("y", ColumnType::Float64),
            ]),
            ColumnType::List(Box::new(ColumnType::Int32)),
        ];
        for ty in types {
            let def = ColumnDef::new("c", ty.clone());
            let schema = column(&def.arrow_field()).schema;
            let back = from_connect_schema(&schema).unwrap();
            assert_eq!(back.ty, ty, "{schema}");
        }
        for semantic in [
            VARIABLE_SCALE_DECIMAL,
            ZONED_TIME,
            "io.debezium.data.Json",
            "io.debezium.time.ZonedTimestamp",
        ] {
            let ty = match semantic {
                VARIABLE_SCALE_DECIMAL => ColumnType::VariableScaleDecimal,
                ZONED_TIME => ColumnType::ZonedTime,
                "io.debezium.time.ZonedTimestamp" => {
                    ColumnType::ZonedTimestamp { unit: Unit::Micros }
                }
                _ => ColumnType::String,
            };
            let def = ColumnDef::new("c", ty.clone()).with_semantic(semantic);
            let schema = column(&def.arrow_field()).schema;
            assert_eq!(schema["name"], semantic);
            assert_eq!(from_connect_schema(&schema).unwrap().ty, ty, "{schema}");
        }
    }

    #[test]
    fn values_use_native_encodings() {
        let columns: Vec<ColumnDef> = vec![
            ColumnDef::new("d", ColumnType::Date),
            ColumnDef::new(
                "amount",
                ColumnType::Decimal {
                    precision: 10,
                    scale: 2,
                },
            ),
            ColumnDef::new("v", ColumnType::VariableScaleDecimal)
                .with_semantic(VARIABLE_SCALE_DECIMAL),
        ];
        let fields = crate::decode::types::struct_fields(&columns);
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(Date32Array::from(vec![Some(18_000), None])),
            Arc::new(
                Decimal128Array::from(vec![Some(-12_345), Some(0)])
                    .with_precision_and_scale(10, 2)
                    .unwrap(),
            ),
            Arc::new(StringArray::from(vec![Some("1.5"), None])),
        ];
        let rows = StructArray::new(fields.clone(), arrays, None);
        let encoder = RowEncoder::new(&fields);
        let mut out = String::new();
        encoder.write_row(&mut out, &rows, 0);
        assert_eq!(
            out,
            r#"{"d":18000,"amount":"z8c=","v":{"scale":1,"value":"Dw=="}}"#
        );
        let mut out = String::new();
        encoder.write_row(&mut out, &rows, 1);
        assert_eq!(out, r#"{"d":null,"amount":"AA==","v":null}"#);

        let key = encoder.select(&["amount".to_string()]).unwrap();
        let mut out = String::new();
        key.write_selected(&mut out, &rows, 0);
        assert_eq!(out, r#"{"amount":"z8c="}"#);
        assert!(encoder.select(&["nope".to_string()]).is_none());
    }
}
