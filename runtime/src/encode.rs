//! Rendering Arrow values for the outside world: as JSON (the JSONL sink, dead letters) and
//! as canonical text (SQL sinks). Both keep values exact: decimals print every digit of their
//! scale, timestamps print as ISO-8601, and nothing goes through `f64` that was not already
//! a float.

use std::borrow::Cow;
use std::fmt::Write;

use arrow::array::{Array, AsArray, StructArray};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Decimal256Type, DurationMicrosecondType,
    DurationMillisecondType, DurationNanosecondType, DurationSecondType, Float32Type, Float64Type,
    Int8Type, Int16Type, Int32Type, Int64Type, Time32MillisecondType, Time32SecondType,
    Time64MicrosecondType, Time64NanosecondType, TimeUnit, UInt8Type, UInt16Type, UInt32Type,
    UInt64Type, i256,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::decode::{decimal, temporal};
use crate::envelope::{self, ChangeBatch};

/// The text form of a scalar value for SQL sinks, or `None` for null. Numbers and booleans
/// are left to the caller, which binds them natively.
pub fn text(array: &dyn Array, row: usize) -> Option<Cow<'_, str>> {
    if array.is_null(row) {
        return None;
    }
    Some(match array.data_type() {
        DataType::Utf8 => Cow::Borrowed(array.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => Cow::Borrowed(array.as_string::<i64>().value(row)),
        DataType::Decimal128(_, scale) => Cow::Owned(decimal::format(
            i256::from_i128(array.as_primitive::<Decimal128Type>().value(row)),
            *scale,
        )),
        DataType::Decimal256(_, scale) => Cow::Owned(decimal::format(
            array.as_primitive::<Decimal256Type>().value(row),
            *scale,
        )),
        DataType::Date32 => Cow::Owned(temporal::format_date(
            array.as_primitive::<Date32Type>().value(row),
        )),
        DataType::Time32(TimeUnit::Millisecond) => Cow::Owned(temporal::format_time_nanos(
            array.as_primitive::<Time32MillisecondType>().value(row) as i64 * 1_000_000,
        )),
        DataType::Time32(_) => Cow::Owned(temporal::format_time_nanos(
            array.as_primitive::<Time32SecondType>().value(row) as i64 * 1_000_000_000,
        )),
        DataType::Time64(TimeUnit::Microsecond) => Cow::Owned(temporal::format_time_nanos(
            array.as_primitive::<Time64MicrosecondType>().value(row) * 1_000,
        )),
        DataType::Time64(_) => Cow::Owned(temporal::format_time_nanos(
            array.as_primitive::<Time64NanosecondType>().value(row),
        )),
        DataType::Timestamp(unit, tz) => {
            let nanos = timestamp_nanos(array, row, *unit);
            Cow::Owned(temporal::format_timestamp_nanos(nanos, tz.is_some()))
        }
        _ => {
            let mut out = String::new();
            write_json(&mut out, array, row);
            Cow::Owned(out)
        }
    })
}

fn timestamp_nanos(array: &dyn Array, row: usize, unit: TimeUnit) -> i128 {
    use arrow::datatypes::{
        TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
        TimestampSecondType,
    };
    match unit {
        TimeUnit::Second => {
            array.as_primitive::<TimestampSecondType>().value(row) as i128 * 1_000_000_000
        }
        TimeUnit::Millisecond => {
            array.as_primitive::<TimestampMillisecondType>().value(row) as i128 * 1_000_000
        }
        TimeUnit::Microsecond => {
            array.as_primitive::<TimestampMicrosecondType>().value(row) as i128 * 1_000
        }
        TimeUnit::Nanosecond => array.as_primitive::<TimestampNanosecondType>().value(row) as i128,
    }
}

/// A float32 as the shortest decimal that reads back as the same float32 (`8.1`, not
/// `8.100000381469727`), which is what a user who stored a FLOAT expects to see.
pub fn f32_as_f64(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(value as f64)
}

fn write_float(out: &mut String, value: f64, text: impl FnOnce() -> String) {
    if value.is_finite() {
        out.push_str(&text());
    } else if value.is_nan() {
        out.push_str("\"NaN\"");
    } else if value > 0.0 {
        out.push_str("\"Infinity\"");
    } else {
        out.push_str("\"-Infinity\"");
    }
}

pub fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends the JSON form of one value.
pub fn write_json(out: &mut String, array: &dyn Array, row: usize) {
    if array.is_null(row) {
        out.push_str("null");
        return;
    }
    macro_rules! int {
        ($t:ty) => {{
            let _ = write!(out, "{}", array.as_primitive::<$t>().value(row));
        }};
    }
    match array.data_type() {
        DataType::Null => out.push_str("null"),
        DataType::Boolean => out.push_str(if array.as_boolean().value(row) {
            "true"
        } else {
            "false"
        }),
        DataType::Int8 => int!(Int8Type),
        DataType::Int16 => int!(Int16Type),
        DataType::Int32 => int!(Int32Type),
        DataType::Int64 => int!(Int64Type),
        DataType::UInt8 => int!(UInt8Type),
        DataType::UInt16 => int!(UInt16Type),
        DataType::UInt32 => int!(UInt32Type),
        DataType::UInt64 => int!(UInt64Type),
        DataType::Duration(TimeUnit::Second) => int!(DurationSecondType),
        DataType::Duration(TimeUnit::Millisecond) => int!(DurationMillisecondType),
        DataType::Duration(TimeUnit::Microsecond) => int!(DurationMicrosecondType),
        DataType::Duration(TimeUnit::Nanosecond) => int!(DurationNanosecondType),
        DataType::Float32 => {
            // `{:?}` is the shortest form that reads back as the same value, and keeps a
            // `.0` on integral values so they read back as floats.
            let v = array.as_primitive::<Float32Type>().value(row);
            write_float(out, v as f64, || format!("{v:?}"));
        }
        DataType::Float64 => {
            let v = array.as_primitive::<Float64Type>().value(row);
            write_float(out, v, || format!("{v:?}"));
        }
        // Decimals are JSON numbers with every digit of their scale.
        DataType::Decimal128(..) | DataType::Decimal256(..) => {
            out.push_str(&text(array, row).unwrap_or_default());
        }
        DataType::Binary => {
            write_json_string(out, &BASE64.encode(array.as_binary::<i32>().value(row)))
        }
        DataType::LargeBinary => {
            write_json_string(out, &BASE64.encode(array.as_binary::<i64>().value(row)))
        }
        DataType::FixedSizeBinary(_) => {
            write_json_string(out, &BASE64.encode(array.as_fixed_size_binary().value(row)))
        }
        DataType::Struct(_) => write_struct_row(out, array.as_struct(), row),
        DataType::List(_) => {
            let values = array.as_list::<i32>().value(row);
            out.push('[');
            for i in 0..values.len() {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, values.as_ref(), i);
            }
            out.push(']');
        }
        DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Date32
        | DataType::Time32(_)
        | DataType::Time64(_)
        | DataType::Timestamp(..) => write_json_string(out, &text(array, row).unwrap_or_default()),
        other => {
            // Types the decoder never produces; rendered through Arrow's display.
            let formatted = arrow::util::display::array_value_to_string(array, row)
                .unwrap_or_else(|_| format!("<{other}>"));
            write_json_string(out, &formatted);
        }
    }
}

/// Appends one row of a struct array as a JSON object.
pub fn write_struct_row(out: &mut String, array: &StructArray, row: usize) {
    if array.is_null(row) {
        out.push_str("null");
        return;
    }
    out.push('{');
    for (i, (field, column)) in array.fields().iter().zip(array.columns()).enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_string(out, field.name());
        out.push(':');
        write_json(out, column.as_ref(), row);
    }
    out.push('}');
}

/// Source-block fields that locate an event in its source's log, as the decoder keeps them
/// (`lsn=123,txId=…`), with whether Debezium writes them as numbers.
const POSITION_FIELDS: [(&str, bool); 12] = [
    ("file", false),
    ("pos", true),
    ("row", true),
    ("gtid", false),
    ("lsn", true),
    ("change_lsn", false),
    ("commit_lsn", false),
    ("event_serial_no", true),
    ("scn", false),
    ("commit_scn", false),
    ("ord", true),
    ("sequence", false),
];

/// Writes a source position (`lsn=34078720,sequence=["1","2"]`) back as the source
/// block's own fields, as Debezium had them. A position that is not such a list is kept
/// whole as `weir_position`.
fn write_position(out: &mut String, position: &str) {
    let starts_field = |at: &str| {
        POSITION_FIELDS.iter().position(|(key, _)| {
            at.strip_prefix(key)
                .is_some_and(|rest| rest.starts_with('='))
        })
    };
    // Values may hold commas (a GTID set, a sequence), so a field starts only where a
    // comma is followed by a known key and `=`.
    let mut fields: Vec<(usize, &str)> = Vec::new();
    let mut rest = position;
    let mut current = starts_field(rest);
    while let Some(field) = current {
        let value_start = POSITION_FIELDS[field].0.len() + 1;
        let mut end = rest.len();
        let mut next = None;
        for (i, _) in rest.match_indices(',').filter(|(i, _)| *i >= value_start) {
            if let Some(found) = starts_field(&rest[i + 1..]) {
                end = i;
                next = Some(found);
                break;
            }
        }
        fields.push((field, &rest[value_start..end]));
        rest = if end < rest.len() {
            &rest[end + 1..]
        } else {
            ""
        };
        current = next;
    }
    let numbers_ok = fields
        .iter()
        .all(|(field, value)| !POSITION_FIELDS[*field].1 || value.parse::<i64>().is_ok());
    if fields.is_empty() || !rest.is_empty() || !numbers_ok {
        out.push_str(",\"weir_position\":");
        write_json_string(out, position);
        return;
    }
    for (field, value) in fields {
        let (key, number) = POSITION_FIELDS[field];
        out.push(',');
        write_json_string(out, key);
        out.push(':');
        if number {
            out.push_str(value);
        } else {
            write_json_string(out, value);
        }
    }
}

/// Appends one change as a Debezium-style JSON event (the bare payload form), so a change
/// log written by weir can be read back by weir.
pub fn write_change(out: &mut String, batch: &ChangeBatch, row: usize) {
    write_change_with(out, batch, row, write_struct_row);
}

/// [`write_change`] with the row images written by `write_image` (the Kafka sink writes
/// them in Kafka Connect's native encodings).
pub fn write_change_with(
    out: &mut String,
    batch: &ChangeBatch,
    row: usize,
    mut write_image: impl FnMut(&mut String, &StructArray, usize),
) {
    let data = &batch.data;
    let column = |name: &str| data.column(data.schema().index_of(name).expect("envelope column"));
    out.push_str("{\"before\":");
    write_image(out, batch.before(), row);
    out.push_str(",\"after\":");
    write_image(out, batch.after(), row);
    out.push_str(",\"op\":");
    write_json(out, column(envelope::OP).as_ref(), row);
    let micros = |name: &str| {
        let times = column(name);
        times.is_valid(row).then(|| {
            times
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(row)
        })
    };
    if let Some(us) = micros(envelope::EVENT_TIME) {
        let _ = write!(out, ",\"ts_ms\":{},\"ts_us\":{us}", us.div_euclid(1000));
    }
    out.push_str(",\"source\":{\"version\":\"weir-");
    out.push_str(env!("CARGO_PKG_VERSION"));
    out.push('"');
    if let Some(us) = micros(envelope::SOURCE_TIME) {
        let _ = write!(out, ",\"ts_ms\":{},\"ts_us\":{us}", us.div_euclid(1000));
    }
    let text = |name: &str| {
        let values = column(name);
        values
            .as_string_opt::<i32>()
            .filter(|values| values.is_valid(row))
            .map(|values| values.value(row).to_string())
    };
    for (name, key) in [
        (envelope::SOURCE_CONNECTOR, "connector"),
        (envelope::SOURCE_NAME, "name"),
        (envelope::SOURCE_DB, "db"),
        (envelope::SOURCE_SCHEMA, "schema"),
        (envelope::SOURCE_TABLE, "table"),
        (envelope::SOURCE_SNAPSHOT, "snapshot"),
    ] {
        if let Some(value) = text(name) {
            out.push(',');
            write_json_string(out, key);
            out.push(':');
            write_json_string(out, &value);
        }
    }
    if let Some(tx) = text(envelope::SOURCE_TXID) {
        out.push_str(",\"txId\":");
        // Debezium writes PostgreSQL's transaction ids as numbers.
        match tx.parse::<i64>() {
            Ok(n) => {
                let _ = write!(out, "{n}");
            }
            Err(_) => write_json_string(out, &tx),
        }
    }
    if let Some(position) = text(envelope::SOURCE_POSITION) {
        write_position(out, &position);
    }
    if text(envelope::SOURCE_CONNECTOR).as_deref() == Some("postgresql") {
        // Debezium's PostgreSQL connector always has it; weir does not track it.
        out.push_str(",\"xmin\":null");
    }
    out.push_str("},\"transaction\":null");
    let origin = column(envelope::ORIGIN);
    if origin.is_valid(row) {
        out.push_str(",\"origin\":");
        write_json(out, origin.as_ref(), row);
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Decimal128Array, Float32Array, StringArray, TimestampMicrosecondArray};

    #[test]
    fn positions_go_back_to_their_own_fields() {
        let written = |position: &str| {
            let mut out = String::new();
            write_position(&mut out, position);
            out
        };
        assert_eq!(written("lsn=34078720"), r#","lsn":34078720"#);
        // Commas inside values (a sequence, a GTID set) do not split fields.
        assert_eq!(
            written(r#"sequence=["1","2"],lsn=7"#),
            r#","sequence":"[\"1\",\"2\"]","lsn":7"#
        );
        assert_eq!(
            written("file=binlog.000003,pos=154,row=0,gtid=a:1-5,b:1-3"),
            r#","file":"binlog.000003","pos":154,"row":0,"gtid":"a:1-5,b:1-3""#
        );
        // Not a list of known fields, or a number that is not one: kept whole.
        assert_eq!(written("line=12"), r#","weir_position":"line=12""#);
        assert_eq!(
            written("lsn=0/16B3748"),
            r#","weir_position":"lsn=0/16B3748""#
        );
    }

    #[test]
    fn values_render_exactly() {
        let d = Decimal128Array::from(vec![Some(1234567), None])
            .with_precision_and_scale(10, 4)
            .unwrap();
        let mut out = String::new();
        write_json(&mut out, &d, 0);
        assert_eq!(out, "123.4567");
        assert_eq!(text(&d, 1), None);

        let f = Float32Array::from(vec![8.1f32, f32::NAN]);
        let mut out = String::new();
        write_json(&mut out, &f, 0);
        out.push(' ');
        write_json(&mut out, &f, 1);
        assert_eq!(out, "8.1 \"NaN\"");
        assert_eq!(f32_as_f64(8.1), 8.1f64);
        assert_ne!(
            8.1f32 as f64, 8.1f64,
            "the naive widening is not what users stored"
        );

        let t = TimestampMicrosecondArray::from(vec![1_595_008_822_123_456]).with_timezone("UTC");
        assert_eq!(text(&t, 0).unwrap(), "2020-07-17T18:00:22.123456Z");

        let s = StringArray::from(vec!["a\"b\\c\n\u{1}é"]);
        let mut out = String::new();
        write_json(&mut out, &s, 0);
        assert_eq!(out, r#""a\"b\\c\n\u0001é""#);
    }
}
