//! COPY's binary format for staged segments: what the target's server reads with each
//! type's receive function, not its input function. For the copy of a table that is
//! about a third less of the server's work per row than COPY text (no parsing of
//! timestamps, dates, numerics and integers; docs/benchmarks.md), and less of weir's
//! (no text written for them).
//!
//! A segment is binary only when every one of its columns has an encoder here whose
//! bytes mean exactly what its COPY text would for the target column's declared type;
//! otherwise, and whenever a value falls outside what the encoder carries exactly (a
//! timestamp out of PostgreSQL's range), the whole segment is COPY text as before.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, DurationMicrosecondType, Field, Float32Type, Float64Type,
    Int8Type, Int16Type, Int32Type, Int64Type, Time64MicrosecondType, TimeUnit,
    TimestampMicrosecondType,
};

use super::types::pg_type;

/// The stream's signature, flags and header extension length.
pub(super) const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// A tuple field count of -1.
pub(super) const TRAILER: &[u8] = &[0xff, 0xff];

/// Microseconds from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days from 1970-01-01 to 2000-01-01.
const EPOCH_DAYS: i64 = 10_957;
/// The dates and timestamps (from 1970-01-01) that COPY text carries: the years 1 to
/// 9999, which it writes as `YYYY-MM-DD`. PostgreSQL holds more (BC, and years past
/// 9999), but the text of those is refused, so outside this range a segment is COPY
/// text too: a value lands, or is refused, the same whatever the size of its batch.
const DATES: std::ops::RangeInclusive<i64> = -719_162..=2_932_896;
const TIMESTAMPS: std::ops::RangeInclusive<i64> = -62_135_596_800_000_000..=253_402_300_799_999_999;
const DAY_MICROS: i64 = 86_400_000_000;
/// The largest `bytea` whose COPY text (`\\x` and two hex digits a byte) fits the
/// server's 1 GB limit on a value: a larger one is refused as text, so it goes as text.
const MAX_BYTEA: usize = (0x3fff_ffff - 2) / 2;

/// How one column's values are written: the receive function its bytes are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Encoder {
    Boolean,
    /// An integer of any Arrow width, as a target integer of `bytes` (2, 4 or 8), never
    /// narrower than the Arrow type.
    Integer {
        bytes: u8,
    },
    Float32,
    Float64,
    /// `text`, `varchar(n)`, `char(n)`: the UTF-8 bytes.
    Text,
    Bytea,
    Numeric,
    Date,
    Time,
    Timestamp,
    Interval,
}

/// The encoder for a column of `data_type` into a target column declared as
/// `declaration` (`format_type`'s spelling), if there is an exact one.
pub(super) fn encoder(data_type: &DataType, declaration: &str) -> Option<Encoder> {
    // An array's binary form is another thing altogether (`numeric(10,2)[]` begins
    // like `numeric(10,2)`).
    if declaration.contains('[') {
        return None;
    }
    let integer = |arrow_bytes: u8| {
        let bytes = match declaration {
            "smallint" => 2,
            "integer" => 4,
            "bigint" => 8,
            _ => return None,
        };
        (bytes >= arrow_bytes).then_some(Encoder::Integer { bytes })
    };
    let text_like = declaration == "text"
        || declaration.starts_with("character varying")
        || declaration.starts_with("character(");
    match data_type {
        DataType::Boolean if declaration == "boolean" => Some(Encoder::Boolean),
        DataType::Int8 | DataType::Int16 => integer(2),
        DataType::Int32 => integer(4),
        DataType::Int64 => integer(8),
        // A float32's COPY text is its shortest decimal, which a double column reads as
        // another number than the float32 widened: only a `real` column takes its bits.
        DataType::Float32 if declaration == "real" => Some(Encoder::Float32),
        DataType::Float64 if declaration == "double precision" => Some(Encoder::Float64),
        DataType::Utf8 if text_like => Some(Encoder::Text),
        DataType::Binary if declaration == "bytea" => Some(Encoder::Bytea),
        DataType::Decimal128(_, scale)
            if *scale >= 0 && (declaration == "numeric" || declaration.starts_with("numeric(")) =>
        {
            Some(Encoder::Numeric)
        }
        DataType::Date32 if declaration == "date" => Some(Encoder::Date),
        DataType::Time64(TimeUnit::Microsecond) if declaration == "time without time zone" => {
            Some(Encoder::Time)
        }
        DataType::Timestamp(TimeUnit::Microsecond, zone) => {
            let wanted = match zone {
                Some(_) => "timestamp with time zone",
                None => "timestamp without time zone",
            };
            (declaration == wanted).then_some(Encoder::Timestamp)
        }
        DataType::Duration(TimeUnit::Microsecond) if declaration == "interval" => {
            Some(Encoder::Interval)
        }
        _ => None,
    }
}

/// `format_type`'s spelling of the type weir creates a column of `field` as.
fn created_declaration(field: &Field) -> String {
    match pg_type(field).as_str() {
        "time" => "time without time zone".into(),
        "timestamp" => "timestamp without time zone".into(),
        "timestamptz" => "timestamp with time zone".into(),
        other => other.into(),
    }
}

/// Encoders for `fields`, each read against its target column's declaration, or the
/// type weir would have created it as when `declared` has none (prepared ahead, before
/// the target is read). None when some column has no exact encoder.
pub(super) fn encoders<'f>(
    fields: impl IntoIterator<Item = &'f Field>,
    declared: impl Fn(&str) -> Option<String>,
) -> Option<Vec<Encoder>> {
    fields
        .into_iter()
        .map(|f| {
            let declaration = declared(f.name()).unwrap_or_else(|| created_declaration(f));
            encoder(f.data_type(), &declaration)
        })
        .collect()
}

/// Appends one tuple of `columns` at `row`. False, with `out` as it was, when a value is
/// one the encoders do not carry exactly: the segment is then written as COPY text.
pub(super) fn write_tuple(
    out: &mut Vec<u8>,
    columns: &[&dyn Array],
    encoders: &[Encoder],
    row: usize,
) -> bool {
    let start = out.len();
    let Ok(count) = i16::try_from(columns.len()) else {
        return false;
    };
    out.extend_from_slice(&count.to_be_bytes());
    for (column, encoder) in columns.iter().zip(encoders) {
        if !write_field(out, *column, *encoder, row) {
            out.truncate(start);
            return false;
        }
    }
    true
}

/// Appends one value as COPY binary and array elements both have it: its length (-1 for
/// a null), then its bytes. False when the encoder does not carry the value exactly.
pub(super) fn write_field(
    out: &mut Vec<u8>,
    array: &dyn Array,
    encoder: Encoder,
    row: usize,
) -> bool {
    if array.is_null(row) {
        out.extend_from_slice(&(-1i32).to_be_bytes());
        return true;
    }
    let sized = |out: &mut Vec<u8>, bytes: &[u8]| match i32::try_from(bytes.len()) {
        Ok(n) => {
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(bytes);
            true
        }
        Err(_) => false,
    };
    match encoder {
        Encoder::Boolean => sized(out, &[array.as_boolean().value(row) as u8]),
        Encoder::Integer { bytes } => {
            let Some(value) = integer(array, row) else {
                return false;
            };
            // Never narrower than the Arrow type (`encoder`), so these never truncate.
            match bytes {
                2 => sized(out, &(value as i16).to_be_bytes()),
                4 => sized(out, &(value as i32).to_be_bytes()),
                _ => sized(out, &value.to_be_bytes()),
            }
        }
        Encoder::Float32 => sized(
            out,
            &array.as_primitive::<Float32Type>().value(row).to_be_bytes(),
        ),
        Encoder::Float64 => sized(
            out,
            &array.as_primitive::<Float64Type>().value(row).to_be_bytes(),
        ),
        Encoder::Text => {
            // A NUL byte: COPY text and binary treat it differently, so it goes as text.
            let text = array.as_string::<i32>().value(row).as_bytes();
            !text.contains(&0) && sized(out, text)
        }
        Encoder::Bytea => {
            let bytes = array.as_binary::<i32>().value(row);
            bytes.len() <= MAX_BYTEA && sized(out, bytes)
        }
        Encoder::Numeric => {
            let DataType::Decimal128(_, scale) = array.data_type() else {
                return false;
            };
            let value = array.as_primitive::<Decimal128Type>().value(row);
            let start = out.len();
            out.extend_from_slice(&[0; 4]);
            if !write_numeric(out, value, *scale) {
                out.truncate(start);
                return false;
            }
            let len = (out.len() - start - 4) as i32;
            out[start..start + 4].copy_from_slice(&len.to_be_bytes());
            true
        }
        Encoder::Date => {
            let days = array.as_primitive::<Date32Type>().value(row) as i64;
            DATES.contains(&days) && sized(out, &((days - EPOCH_DAYS) as i32).to_be_bytes())
        }
        Encoder::Time => {
            let micros = array.as_primitive::<Time64MicrosecondType>().value(row);
            (0..=DAY_MICROS).contains(&micros) && sized(out, &micros.to_be_bytes())
        }
        Encoder::Timestamp => {
            let micros = array.as_primitive::<TimestampMicrosecondType>().value(row);
            TIMESTAMPS.contains(&micros) && sized(out, &(micros - EPOCH_MICROS).to_be_bytes())
        }
        Encoder::Interval => {
            let micros = array.as_primitive::<DurationMicrosecondType>().value(row);
            // Microseconds, then days and months (none: the COPY text says `N microseconds`).
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&micros.to_be_bytes());
            sized(out, &bytes)
        }
    }
}

fn integer(array: &dyn Array, row: usize) -> Option<i64> {
    Some(match array.data_type() {
        DataType::Int8 => array.as_primitive::<Int8Type>().value(row) as i64,
        DataType::Int16 => array.as_primitive::<Int16Type>().value(row) as i64,
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row) as i64,
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row),
        _ => return None,
    })
}

/// Appends a decimal `value` × 10^-`scale` as `numeric_recv` reads it: the count of
/// base-10000 digits, the weight of the first, the sign, the display scale, then the
/// digits, most significant first.
fn write_numeric(out: &mut Vec<u8>, value: i128, scale: i8) -> bool {
    let Ok(scale) = u32::try_from(scale) else {
        return false;
    };
    let Some(unit) = 10u128.checked_pow(scale) else {
        return false;
    };
    let magnitude = value.unsigned_abs();
    let (mut whole, mut fraction) = (magnitude / unit, magnitude % unit);
    // The fraction's groups of four decimal places, least significant first; the last
    // place's group is padded with zeros on its right.
    let fraction_groups = scale.div_ceil(4);
    let pad = fraction_groups * 4 - scale;
    let mut digits: Vec<u16> = Vec::with_capacity(12);
    for i in 0..fraction_groups {
        let places = if i == 0 { 4 - pad } else { 4 };
        let base = 10u128.pow(places);
        digits.push(((fraction % base) * 10u128.pow(4 - places)) as u16);
        fraction /= base;
    }
    let mut whole_groups = 0i16;
    while whole > 0 {
        digits.push((whole % 10_000) as u16);
        whole /= 10_000;
        whole_groups += 1;
    }
    digits.reverse();
    let mut weight = whole_groups - 1;
    // Leading zero groups (a value below 1) move the weight; trailing ones just go.
    let leading = digits.iter().take_while(|d| **d == 0).count();
    digits.drain(..leading);
    weight -= leading as i16;
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        weight = 0;
    }
    let sign: u16 = if value < 0 { 0x4000 } else { 0 };
    out.extend_from_slice(&(digits.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&(scale as i16).to_be_bytes());
    for digit in digits {
        out.extend_from_slice(&digit.to_be_bytes());
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Date32Array, Decimal128Array, StringArray, TimestampMicrosecondArray};

    /// (digit count, weight, sign, display scale, digits).
    fn numeric(value: i128, scale: i8) -> (i16, i16, u16, i16, Vec<u16>) {
        let mut out = Vec::new();
        assert!(write_numeric(&mut out, value, scale));
        let word = |i: usize| [out[2 * i], out[2 * i + 1]];
        let n = i16::from_be_bytes(word(0));
        let digits = (0..n as usize)
            .map(|i| u16::from_be_bytes(word(4 + i)))
            .collect();
        (
            n,
            i16::from_be_bytes(word(1)),
            u16::from_be_bytes(word(2)),
            i16::from_be_bytes(word(3)),
            digits,
        )
    }

    #[test]
    fn numerics_are_base_10000_digits_with_their_weight() {
        // 123.45
        assert_eq!(numeric(12345, 2), (2, 0, 0, 2, vec![123, 4500]));
        // -0.0001
        assert_eq!(numeric(-1, 4), (1, -1, 0x4000, 4, vec![1]));
        // 12345678.9
        assert_eq!(numeric(123456789, 1), (3, 1, 0, 1, vec![1234, 5678, 9000]));
        // 0.00000012 (a leading zero group below the point: 12 × 10000^-2)
        assert_eq!(numeric(12, 8), (1, -2, 0, 8, vec![12]));
        // 0.0000123 (a zero group, then one padded on its right: 1230 × 10000^-2)
        assert_eq!(numeric(123, 7), (1, -2, 0, 7, vec![1230]));
        // -98765.4321
        assert_eq!(
            numeric(-987654321, 4),
            (3, 1, 0x4000, 4, vec![9, 8765, 4321])
        );
        // 10000 and 0 (scale 3)
        assert_eq!(numeric(10000, 0), (1, 1, 0, 0, vec![1]));
        assert_eq!(numeric(0, 3), (0, 0, 0, 3, vec![]));
        // The largest Decimal128 at its largest scale.
        let max = 10i128.pow(38) - 1;
        let (n, weight, _, scale, digits) = numeric(max, 38);
        assert_eq!((n, weight, scale), (10, -1, 38));
        assert_eq!(digits[0], 9999);
        assert_eq!(digits[9], 9900);
        assert!(!write_numeric(&mut Vec::new(), 1, -2));
    }

    #[test]
    fn encoders_match_only_the_declared_type_their_bytes_are_for() {
        let field = |t: DataType| Field::new("c", t, true);
        assert_eq!(
            encoder(&(DataType::Int32), "bigint"),
            Some(Encoder::Integer { bytes: 8 })
        );
        assert_eq!(encoder(&(DataType::Int64), "integer"), None);
        assert_eq!(encoder(&(DataType::Float32), "double precision"), None);
        assert_eq!(encoder(&(DataType::Utf8), "jsonb"), None);
        assert_eq!(encoder(&(DataType::Utf8), "text[]"), None);
        let decimal = field(DataType::Decimal128(10, 2));
        assert_eq!(encoder(decimal.data_type(), "numeric(10,2)[]"), None);
        assert_eq!(
            encoder(decimal.data_type(), "numeric(12,4)"),
            Some(Encoder::Numeric)
        );
        assert_eq!(
            encoder(&(DataType::Utf8), "character varying(20)"),
            Some(Encoder::Text)
        );
        let zoned = field(DataType::Timestamp(
            TimeUnit::Microsecond,
            Some("UTC".into()),
        ));
        assert_eq!(
            encoder(zoned.data_type(), "timestamp with time zone"),
            Some(Encoder::Timestamp)
        );
        assert_eq!(
            encoder(zoned.data_type(), "timestamp without time zone"),
            None
        );
        assert_eq!(encoders([&zoned], |_| None), Some(vec![Encoder::Timestamp]));
        let nanos = field(DataType::Timestamp(TimeUnit::Nanosecond, None));
        assert_eq!(encoders([&nanos], |_| None), None);
    }

    #[test]
    fn a_value_out_of_the_server_s_range_leaves_the_tuple_unwritten() {
        // The epoch; i64::MIN; a year past 9999, which PostgreSQL holds but COPY text
        // cannot say.
        let at = TimestampMicrosecondArray::from(vec![0, i64::MIN, 253_402_300_800_000_000]);
        let mut out = vec![7];
        assert!(write_tuple(&mut out, &[&at], &[Encoder::Timestamp], 0));
        assert_eq!(out.len(), 1 + 2 + 4 + 8);
        assert_eq!(&out[7..], &(-EPOCH_MICROS).to_be_bytes());
        assert!(!write_tuple(&mut out, &[&at], &[Encoder::Timestamp], 1));
        assert_eq!(out.len(), 15, "nothing of the refused tuple is left");
        assert!(!write_tuple(&mut out, &[&at], &[Encoder::Timestamp], 2));
        assert_eq!(out.len(), 15);
        // The first day COPY text can say, and the day before it.
        let day = Date32Array::from(vec![-719_162, -719_163]);
        let mut out = Vec::new();
        assert!(write_tuple(&mut out, &[&day], &[Encoder::Date], 0));
        assert!(!write_tuple(&mut out, &[&day], &[Encoder::Date], 1));
        // Text with a NUL byte.
        let text = StringArray::from(vec!["a\0b"]);
        assert!(!write_tuple(&mut out, &[&text], &[Encoder::Text], 0));
        let d = Decimal128Array::from(vec![Some(5), None])
            .with_precision_and_scale(5, 1)
            .unwrap();
        let mut out = Vec::new();
        assert!(write_tuple(&mut out, &[&d], &[Encoder::Numeric], 1));
        assert_eq!(out, [0, 1, 0xff, 0xff, 0xff, 0xff]);
    }
}
