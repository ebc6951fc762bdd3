//! COPY text encoding, and batches prepared ahead as COPY lines per compacted action.

use super::*;

/// Appends one value in COPY's text format (`\N` for null; tab, newline and backslash
/// escaped).
pub(super) fn copy_value(out: &mut Vec<u8>, array: &dyn Array, row: usize) {
    if array.is_null(row) {
        out.extend_from_slice(b"\\N");
        return;
    }
    let value: std::borrow::Cow<'_, str> = match array.data_type() {
        DataType::Boolean => if array.as_boolean().value(row) {
            "t"
        } else {
            "f"
        }
        .into(),
        DataType::Int8 => array
            .as_primitive::<Int8Type>()
            .value(row)
            .to_string()
            .into(),
        DataType::Int16 => array
            .as_primitive::<Int16Type>()
            .value(row)
            .to_string()
            .into(),
        DataType::Int32 => array
            .as_primitive::<Int32Type>()
            .value(row)
            .to_string()
            .into(),
        DataType::Int64 => array
            .as_primitive::<Int64Type>()
            .value(row)
            .to_string()
            .into(),
        DataType::Float32 => {
            let v = array.as_primitive::<Float32Type>().value(row);
            float_text(v as f64, || v.to_string()).into()
        }
        DataType::Float64 => {
            let v = array.as_primitive::<Float64Type>().value(row);
            float_text(v, || v.to_string()).into()
        }
        DataType::Binary => {
            let bytes = array.as_binary::<i32>().value(row);
            // bytea hex input; the backslash itself is escaped for COPY.
            out.extend_from_slice(b"\\\\x");
            for b in bytes {
                let _ = write!(out, "{b:02x}");
            }
            return;
        }
        DataType::Duration(TimeUnit::Microsecond) => {
            let micros = array
                .as_primitive::<arrow::datatypes::DurationMicrosecondType>()
                .value(row);
            format!("{micros} microseconds").into()
        }
        DataType::Duration(TimeUnit::Nanosecond) => {
            let nanos = array
                .as_primitive::<arrow::datatypes::DurationNanosecondType>()
                .value(row);
            format!("{} microseconds", nanos / 1000).into()
        }
        DataType::Duration(TimeUnit::Millisecond) => {
            let millis = array
                .as_primitive::<arrow::datatypes::DurationMillisecondType>()
                .value(row);
            format!("{millis} milliseconds").into()
        }
        DataType::Duration(TimeUnit::Second) => {
            let seconds = array
                .as_primitive::<arrow::datatypes::DurationSecondType>()
                .value(row);
            format!("{seconds} seconds").into()
        }
        _ => encode::text(array, row).unwrap_or_default(),
    };
    for &b in value.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.push(b),
        }
    }
}

pub(super) fn float_text(value: f64, shortest: impl FnOnce() -> String) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        }
    } else {
        shortest()
    }
}

/// One action of a compacted segment: upsert the row's after image, or delete its key;
/// `line` is where its COPY line lies in the segment's `rows` or `keys` buffer.
pub(super) struct Action {
    pub(super) row: usize,
    pub(super) upsert: bool,
    pub(super) line: std::ops::Range<usize>,
}

/// A compacted segment with its COPY text, ready to send.
pub(super) struct PreparedSegment {
    pub(super) truncate_first: bool,
    /// In row order.
    pub(super) actions: Vec<Action>,
    pub(super) rows: Vec<u8>,
    pub(super) keys: Vec<u8>,
}

/// An upsert batch compacted and encoded as COPY text ahead of its turn.
pub(super) struct PreparedUpsert {
    pub(super) segments: Vec<PreparedSegment>,
}

/// Compacts `batch` (the rows `include` selects) and encodes each segment's rows and
/// deleted keys as COPY text. Depends on the batch alone, so it can run on another thread
/// while the previous batch is being applied.
pub(super) fn prepare_upsert(
    batch: &ChangeBatch,
    include: Option<&[bool]>,
) -> Result<Vec<PreparedSegment>, String> {
    let after = batch.after();
    let before = batch.before();
    let key_columns: Vec<&dyn Array> = batch
        .table
        .primary_key
        .iter()
        .map(|k| {
            before
                .column_by_name(k)
                .map(|c| c.as_ref())
                .ok_or_else(|| format!("primary key column `{k}` is not in the rows"))
        })
        .collect::<Result<_, _>>()?;
    let row_columns: Vec<&dyn Array> = after.columns().iter().map(|c| c.as_ref()).collect();
    let mut prepared = Vec::new();
    for segment in compact(batch, include)? {
        let mut order: Vec<(usize, bool)> = segment
            .deletes
            .iter()
            .map(|r| (*r, false))
            .chain(segment.upserts.iter().map(|r| (*r, true)))
            .collect();
        order.sort();
        let mut out = PreparedSegment {
            truncate_first: segment.truncate_first,
            actions: Vec::with_capacity(order.len()),
            rows: Vec::new(),
            keys: Vec::new(),
        };
        for (row, upsert) in order {
            let (buffer, columns) = if upsert {
                (&mut out.rows, &row_columns)
            } else {
                (&mut out.keys, &key_columns)
            };
            let start = buffer.len();
            for (i, column) in columns.iter().enumerate() {
                if i > 0 {
                    buffer.push(b'\t');
                }
                copy_value(buffer, *column, row);
            }
            buffer.push(b'\n');
            out.actions.push(Action {
                row,
                upsert,
                line: start..buffer.len(),
            });
        }
        prepared.push(out);
    }
    Ok(prepared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BinaryArray, Float64Array, StringArray};

    fn copied(array: &dyn Array, row: usize) -> String {
        let mut out = Vec::new();
        copy_value(&mut out, array, row);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn copy_text_escapes_and_encodes() {
        let s = StringArray::from(vec![Some("a\tb\nc\\d"), None]);
        assert_eq!(copied(&s, 0), "a\\tb\\nc\\\\d");
        assert_eq!(copied(&s, 1), "\\N");
        let b = BinaryArray::from(vec![&[0x01u8, 0xff][..]]);
        assert_eq!(copied(&b, 0), "\\\\x01ff");
        let f = Float64Array::from(vec![f64::NAN, 0.1]);
        assert_eq!(copied(&f, 0), "NaN");
        assert_eq!(copied(&f, 1), "0.1");
    }

    #[test]
    fn prepared_segments_hold_each_action_s_copy_line_in_row_order() {
        let lines = |s: &PreparedSegment| -> Vec<(usize, bool, String)> {
            s.actions
                .iter()
                .map(|a| {
                    let buffer = if a.upsert { &s.rows } else { &s.keys };
                    let line = String::from_utf8(buffer[a.line.clone()].to_vec()).unwrap();
                    (a.row, a.upsert, line)
                })
                .collect()
        };
        let batch = crate::sink::compact::tests::batch(&[
            r#"{"op":"c","after":{"id":1,"v":"a"}}"#,
            r#"{"op":"c","after":{"id":2,"v":"b"}}"#,
            r#"{"op":"u","before":{"id":1,"v":"a"},"after":{"id":1,"v":"a\tb"}}"#,
            r#"{"op":"d","before":{"id":2,"v":"b"}}"#,
            r#"{"op":"c","after":{"id":3,"v":null}}"#,
            r#"{"op":"d","before":{"id":4,"v":"x"}}"#,
        ]);
        let segments = prepare_upsert(&batch, None).unwrap();
        assert_eq!(segments.len(), 1);
        assert!(!segments[0].truncate_first);
        assert_eq!(
            lines(&segments[0]),
            vec![
                (2, true, "1\ta\\tb\n".into()),
                (3, false, "2\n".into()),
                (4, true, "3\t\\N\n".into()),
                (5, false, "4\n".into()),
            ]
        );
        // Skipping rows prepares the rest only.
        let include = [true, true, false, false, true, true];
        let segments = prepare_upsert(&batch, Some(&include)).unwrap();
        assert_eq!(
            lines(&segments[0]),
            vec![
                (0, true, "1\ta\n".into()),
                (1, true, "2\tb\n".into()),
                (4, true, "3\t\\N\n".into()),
                (5, false, "4\n".into()),
            ]
        );
        // A truncate starts the segment over.
        let batch = crate::sink::compact::tests::batch(&[
            r#"{"op":"c","after":{"id":1,"v":"a"}}"#,
            r#"{"op":"t","source":{"table":"t"}}"#,
            r#"{"op":"c","after":{"id":2,"v":"b"}}"#,
        ]);
        let segments = prepare_upsert(&batch, None).unwrap();
        assert_eq!(segments.len(), 1);
        assert!(segments[0].truncate_first);
        assert_eq!(lines(&segments[0]), vec![(2, true, "2\tb\n".into())]);
    }
}
