//! PostgreSQL column values, in their text output form, as Debezium JSON.
//!
//! pgoutput sends values as text (the type's output function), and the snapshot reads them
//! the same way, so one conversion serves both. Each column gets the Kafka Connect schema
//! Debezium's PostgreSQL connector gives it with its defaults (`decimal.handling.mode:
//! precise`, `time.precision.mode: adaptive`), which the decoder then maps exactly
//! (docs/types.md). Types Debezium would convert with loss (`interval` as a duration of
//! 30.4375-day months, `money` as a decimal of unknown scale) stay text.

use std::fmt::Write as _;

use base64::Engine as _;

use super::datetime;
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike};

/// The most digits an unconstrained `numeric` may have here: its base64 form is built by
/// long multiplication, and PostgreSQL allows 147,455 digits.
const MAX_VARIABLE_DECIMAL_DIGITS: usize = 1000;

/// How a column's text values become JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Boolean,
    /// `int2`, `int4`, `int8`, `oid`: the text is the JSON number.
    Integer(&'static str),
    /// `float4`, `float8`: a JSON number, or `"NaN"`/`"Infinity"`/`"-Infinity"`.
    Float(&'static str),
    /// `numeric(p,s)`: the exact digits as a JSON number.
    Decimal {
        precision: u32,
        scale: i32,
    },
    /// `numeric`: `{"scale": s, "value": base64}`.
    VariableDecimal,
    Bytes,
    /// Days since 1970-01-01.
    Date,
    /// Microseconds (or milliseconds) since midnight.
    Time {
        millis: bool,
    },
    /// Epoch microseconds (or milliseconds) of a wall-clock value.
    Timestamp {
        millis: bool,
    },
    /// ISO-8601 in UTC.
    ZonedTimestamp,
    ZonedTime,
    /// Text with a Debezium semantic name (`json`, `uuid`, `xml`).
    Named(&'static str),
    Text,
}

/// Type OIDs (`pg_type.oid`) of the built-in types with a mapping of their own.
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const XML: u32 = 142;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const TIMETZ: u32 = 1266;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

impl Kind {
    /// The mapping of a column of type `type_oid` with modifier `typmod` (-1 when none).
    pub fn of(type_oid: u32, typmod: i32) -> Kind {
        // Precision of time types: typmod is the number of fractional digits.
        let millis = (0..=3).contains(&typmod);
        match type_oid {
            oid::BOOL => Kind::Boolean,
            oid::INT2 => Kind::Integer("int16"),
            oid::INT4 => Kind::Integer("int32"),
            oid::INT8 | oid::OID => Kind::Integer("int64"),
            oid::FLOAT4 => Kind::Float("float"),
            oid::FLOAT8 => Kind::Float("double"),
            oid::NUMERIC if typmod >= 4 => {
                let packed = typmod - 4;
                // PostgreSQL 15 stores the scale as an 11-bit signed number.
                let raw_scale = packed & 0x7ff;
                let scale = if raw_scale & 0x400 != 0 {
                    raw_scale - 0x800
                } else {
                    raw_scale
                };
                Kind::Decimal {
                    precision: ((packed >> 16) & 0xffff) as u32,
                    scale,
                }
            }
            oid::NUMERIC => Kind::VariableDecimal,
            oid::BYTEA => Kind::Bytes,
            oid::DATE => Kind::Date,
            oid::TIME => Kind::Time { millis },
            oid::TIMESTAMP => Kind::Timestamp { millis },
            oid::TIMESTAMPTZ => Kind::ZonedTimestamp,
            oid::TIMETZ => Kind::ZonedTime,
            oid::JSON | oid::JSONB => Kind::Named("io.debezium.data.Json"),
            oid::UUID => Kind::Named("io.debezium.data.Uuid"),
            oid::XML => Kind::Named("io.debezium.data.Xml"),
            _ => Kind::Text,
        }
    }

    /// The field's Kafka Connect schema, as Debezium writes it.
    pub fn write_schema(&self, out: &mut String, field: &str, optional: bool) {
        let (ty, name): (&str, Option<&str>) = match self {
            Kind::Boolean => ("boolean", None),
            Kind::Integer(ty) | Kind::Float(ty) => (ty, None),
            Kind::Decimal { .. } => ("bytes", Some("org.apache.kafka.connect.data.Decimal")),
            Kind::VariableDecimal => ("struct", Some("io.debezium.data.VariableScaleDecimal")),
            Kind::Bytes => ("bytes", None),
            Kind::Date => ("int32", Some("io.debezium.time.Date")),
            Kind::Time { millis: true } => ("int32", Some("io.debezium.time.Time")),
            Kind::Time { millis: false } => ("int64", Some("io.debezium.time.MicroTime")),
            Kind::Timestamp { millis: true } => ("int64", Some("io.debezium.time.Timestamp")),
            Kind::Timestamp { millis: false } => ("int64", Some("io.debezium.time.MicroTimestamp")),
            Kind::ZonedTimestamp => ("string", Some("io.debezium.time.ZonedTimestamp")),
            Kind::ZonedTime => ("string", Some("io.debezium.time.ZonedTime")),
            Kind::Named(name) => ("string", Some(name)),
            Kind::Text => ("string", None),
        };
        let _ = write!(out, r#"{{"type":"{ty}","optional":{optional}"#);
        if let Some(name) = name {
            let _ = write!(out, r#","name":"{name}""#);
        }
        match self {
            Kind::Decimal { precision, scale } => {
                let _ = write!(
                    out,
                    r#","parameters":{{"scale":"{scale}","connect.decimal.precision":"{precision}"}}"#
                );
            }
            Kind::VariableDecimal => out.push_str(
                r#","fields":[{"type":"int32","optional":false,"field":"scale"},{"type":"bytes","optional":false,"field":"value"}]"#,
            ),
            _ => {}
        }
        out.push_str(r#","field":"#);
        write_json_string(out, field);
        out.push('}');
    }

    /// Writes the JSON value of `text`, a value of this kind in PostgreSQL's text output.
    /// A value that has no exact JSON form here (a `NaN` numeric, an infinite date) is an
    /// error naming it; the event then goes to the dead-letter output.
    pub fn write_value(&self, out: &mut String, text: &str) -> Result<(), String> {
        match self {
            Kind::Boolean => out.push_str(match text {
                "t" => "true",
                "f" => "false",
                _ => return Err(format!("`{}` is not a boolean", clip(text))),
            }),
            Kind::Integer(_) => {
                if !is_integer(text) {
                    return Err(format!("`{}` is not an integer", clip(text)));
                }
                out.push_str(text);
            }
            Kind::Float(_) => match text {
                "NaN" | "Infinity" | "-Infinity" => write_json_string(out, text),
                _ if is_number(text) => out.push_str(text),
                _ => return Err(format!("`{}` is not a number", clip(text))),
            },
            Kind::Decimal { .. } => {
                if !is_number(text) {
                    return Err(format!(
                        "`{}` has no exact decimal form (numeric NaN and infinities have none)",
                        clip(text)
                    ));
                }
                out.push_str(text);
            }
            Kind::VariableDecimal => {
                let (scale, bytes) = variable_decimal(text)?;
                let _ = write!(out, r#"{{"scale":{scale},"value":""#);
                base64::engine::general_purpose::STANDARD.encode_string(bytes, out);
                out.push_str("\"}");
            }
            Kind::Bytes => {
                let hex = text
                    .strip_prefix("\\x")
                    .ok_or_else(|| "a bytea value not in hex form (bytea_output)".to_string())?;
                let bytes = decode_hex(hex).ok_or("a bytea value with a bad hex digit")?;
                out.push('"');
                base64::engine::general_purpose::STANDARD.encode_string(bytes, out);
                out.push('"');
            }
            Kind::Date => {
                let date = datetime::date(text)
                    .map(Ok)
                    .unwrap_or_else(|| NaiveDate::parse_from_str(text, "%Y-%m-%d"))
                    .map_err(|_| format!("`{}` is not a date Debezium can carry", clip(text)))?;
                let days = date.signed_duration_since(NaiveDate::default()).num_days();
                out.push_str(itoa::Buffer::new().format(days));
            }
            Kind::Time { millis } => {
                let micros = if text == "24:00:00" {
                    86_400_000_000
                } else {
                    let time = NaiveTime::parse_from_str(text, "%H:%M:%S%.f")
                        .map_err(|_| format!("`{}` is not a time", clip(text)))?;
                    time.num_seconds_from_midnight() as i64 * 1_000_000
                        + (time.nanosecond() / 1000) as i64
                };
                out.push_str(itoa::Buffer::new().format(if *millis {
                    micros / 1000
                } else {
                    micros
                }));
            }
            Kind::Timestamp { millis } => {
                let at = match datetime::date_time(text) {
                    Some((at, "")) => at,
                    _ => NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").map_err(
                        |_| format!("`{}` is not a timestamp Debezium can carry", clip(text)),
                    )?,
                }
                .and_utc();
                let value = if *millis {
                    at.timestamp_millis()
                } else {
                    at.timestamp_micros()
                };
                out.push_str(itoa::Buffer::new().format(value));
            }
            Kind::ZonedTimestamp => {
                if let Some(at) = datetime::zoned(text) {
                    out.push('"');
                    if datetime::write_utc(out, at) {
                        out.push('"');
                        return Ok(());
                    }
                    out.pop();
                }
                let at = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
                    .map_err(|_| format!("`{}` is not a timestamp Debezium can carry", clip(text)))?
                    .to_utc();
                let _ = write!(out, "\"{}\"", at.format("%Y-%m-%dT%H:%M:%S%.fZ"));
            }
            Kind::ZonedTime => write_json_string(out, &zoned_time(text)),
            Kind::Named(_) | Kind::Text => write_json_string(out, text),
        }
        Ok(())
    }
}

/// `HH:MM:SS[.f]+hh[:mm]` in ISO form: the offset as `Z` or `+hh:mm`.
fn zoned_time(text: &str) -> String {
    let Some(at) = text.rfind(['+', '-']) else {
        return text.to_string();
    };
    let (time, offset) = text.split_at(at);
    match offset {
        "+00" | "-00" | "+00:00" => format!("{time}Z"),
        _ if offset.len() == 3 => format!("{time}{offset}:00"),
        _ => text.to_string(),
    }
}

fn clip(text: &str) -> &str {
    match text.char_indices().nth(40) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

pub(crate) fn is_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// A plain decimal number (`-12.50`, `3e-5`), as PostgreSQL prints numbers.
pub(crate) fn is_number(text: &str) -> bool {
    let body = text.strip_prefix('-').unwrap_or(text);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    !int.is_empty()
        && digits(int)
        && frac.is_none_or(|f| !f.is_empty() && digits(f))
        && exponent.is_none_or(|e| {
            let e = e.strip_prefix(['-', '+']).unwrap_or(e);
            !e.is_empty() && digits(e)
        })
}

/// The scale and big-endian two's complement unscaled value of a decimal's text.
fn variable_decimal(text: &str) -> Result<(u32, Vec<u8>), String> {
    if !is_number(text) || text.contains(['e', 'E']) {
        return Err(format!(
            "`{}` has no exact decimal form (numeric NaN and infinities have none)",
            clip(text)
        ));
    }
    let negative = text.starts_with('-');
    let body = text.trim_start_matches('-');
    let scale = body.split_once('.').map_or(0, |(_, f)| f.len());
    let digits: Vec<u8> = body
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect();
    if digits.len() > MAX_VARIABLE_DECIMAL_DIGITS {
        return Err(format!(
            "a numeric of {} digits; weir carries at most {MAX_VARIABLE_DECIMAL_DIGITS}",
            digits.len()
        ));
    }
    // Little-endian base-256 magnitude, by long multiplication.
    let mut magnitude: Vec<u8> = Vec::new();
    for digit in digits {
        let mut carry = digit as u32;
        for byte in magnitude.iter_mut() {
            let v = *byte as u32 * 10 + carry;
            *byte = v as u8;
            carry = v >> 8;
        }
        while carry > 0 {
            magnitude.push(carry as u8);
            carry >>= 8;
        }
    }
    // Two's complement, with a sign bit of its own.
    magnitude.push(0);
    if negative {
        let mut carry = 1u16;
        for byte in magnitude.iter_mut() {
            let v = (!*byte) as u16 + carry;
            *byte = v as u8;
            carry = v >> 8;
        }
    }
    let sign_byte = if negative { 0xff } else { 0 };
    while magnitude.len() > 1
        && magnitude[magnitude.len() - 1] == sign_byte
        && (magnitude[magnitude.len() - 2] & 0x80) == (sign_byte & 0x80)
    {
        magnitude.pop();
    }
    magnitude.reverse();
    Ok((scale as u32, magnitude))
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let nibble = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = hex.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// Appends `text` as a JSON string.
pub fn write_json_string(out: &mut String, text: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in text.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&text[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&text[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(kind: Kind, text: &str) -> Result<String, String> {
        let mut out = String::new();
        kind.write_value(&mut out, text).map(|()| out)
    }

    #[test]
    fn values_take_debeziums_json_forms() {
        let decimal = Kind::of(oid::NUMERIC, ((12 << 16) | 2) + 4);
        assert_eq!(
            decimal,
            Kind::Decimal {
                precision: 12,
                scale: 2
            }
        );
        assert_eq!(value(decimal, "-1234567890.25").unwrap(), "-1234567890.25");
        assert!(value(decimal, "NaN").unwrap_err().contains("exact"));
        assert_eq!(value(Kind::of(oid::BOOL, -1), "t").unwrap(), "true");
        assert_eq!(value(Kind::of(oid::DATE, -1), "1970-01-02").unwrap(), "1");
        assert_eq!(
            value(Kind::of(oid::TIME, -1), "00:00:01.000002").unwrap(),
            "1000002"
        );
        assert_eq!(value(Kind::of(oid::TIME, 3), "00:00:01.5").unwrap(), "1500");
        assert_eq!(
            value(Kind::of(oid::TIMESTAMP, -1), "1970-01-01 00:00:01.25").unwrap(),
            "1250000"
        );
        assert_eq!(
            value(Kind::of(oid::TIMESTAMPTZ, -1), "2024-03-01 01:30:00.5+02").unwrap(),
            "\"2024-02-29T23:30:00.500Z\""
        );
        assert_eq!(
            value(Kind::of(oid::TIMETZ, -1), "10:00:00+05:30").unwrap(),
            "\"10:00:00+05:30\""
        );
        assert_eq!(
            value(Kind::of(oid::TIMETZ, -1), "10:00:00+00").unwrap(),
            "\"10:00:00Z\""
        );
        assert_eq!(
            value(Kind::of(oid::BYTEA, -1), "\\x00ff").unwrap(),
            "\"AP8=\""
        );
        assert_eq!(value(Kind::of(oid::FLOAT8, -1), "NaN").unwrap(), "\"NaN\"");
        assert_eq!(
            value(Kind::of(oid::FLOAT4, -1), "1.5e-07").unwrap(),
            "1.5e-07"
        );
        assert_eq!(
            value(Kind::Text, "a\"b\\c\nd\u{1}").unwrap(),
            r#""a\"b\\c\nd\u0001""#
        );
        assert!(value(Kind::of(oid::INT4, -1), "1; DROP").is_err());
        assert!(value(Kind::of(oid::DATE, -1), "infinity").is_err());
    }

    #[test]
    fn unconstrained_numerics_keep_every_digit() {
        let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
        let (scale, bytes) = variable_decimal("-1.28").unwrap();
        assert_eq!((scale, bytes), (2, vec![0x80]), "-128 at scale 2: one byte");
        let (_, bytes) = variable_decimal("-129").unwrap();
        assert_eq!(bytes, vec![0xff, 0x7f]);
        let (scale, bytes) = variable_decimal("128").unwrap();
        assert_eq!(
            (scale, bytes),
            (0, vec![0x00, 0x80]),
            "128 needs a sign byte"
        );
        let (_, bytes) = variable_decimal("0").unwrap();
        assert_eq!(bytes, vec![0]);
        // 10^30 - 1, well past 64 bits.
        let (_, bytes) = variable_decimal("999999999999999999999999999999").unwrap();
        assert_eq!(b64(&bytes), "DJ8snNBGdO3qP////w==");
        assert_eq!(
            value(Kind::VariableDecimal, "3.14159").unwrap(),
            r#"{"scale":5,"value":"BMsv"}"#
        );
        let long = "9".repeat(MAX_VARIABLE_DECIMAL_DIGITS + 1);
        assert!(variable_decimal(&long).unwrap_err().contains("at most"));
    }
}
