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
    let event_time = column(envelope::EVENT_TIME);
    if event_time.is_valid(row) {
        out.push_str(",\"ts_us\":");
        let micros = event_time
            .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
            .value(row);
        let _ = write!(out, "{micros}");
    }
    out.push_str(",\"source\":{");
    let mut first = true;
    let source_time = column(envelope::SOURCE_TIME);
    if source_time.is_valid(row) {
        let micros = source_time
            .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
            .value(row);
        let _ = write!(out, "\"ts_us\":{micros}");
        first = false;
    }
    for (name, key) in [
        (envelope::SOURCE_CONNECTOR, "connector"),
        (envelope::SOURCE_NAME, "name"),
        (envelope::SOURCE_DB, "db"),
        (envelope::SOURCE_SCHEMA, "schema"),
        (envelope::SOURCE_TABLE, "table"),
        (envelope::SOURCE_POSITION, "weir_position"),
        (envelope::SOURCE_TXID, "txId"),
        (envelope::SOURCE_SNAPSHOT, "snapshot"),
    ] {
        let values = column(name);
        if values.is_valid(row) {
            if !first {
                out.push(',');
            }
            first = false;
            write_json_string(out, key);
            out.push(':');
            write_json(out, values.as_ref(), row);
        }
    }
    out.push('}');
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
