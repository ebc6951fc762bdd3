//! Values as PostgreSQL's input functions read them: COPY text for the change-log table,
//! and batches prepared ahead as text cells per compacted action, sent as `text[]`
//! parameters (see `arrays`).

use super::*;

/// Appends one non-null value's text, as the column type's input function reads it.
pub(super) fn write_text(out: &mut String, array: &dyn Array, row: usize) {
    use std::fmt::Write as _;
    match array.data_type() {
        DataType::Boolean => out.push(if array.as_boolean().value(row) {
            't'
        } else {
            'f'
        }),
        DataType::Int8 => {
            out.push_str(itoa::Buffer::new().format(array.as_primitive::<Int8Type>().value(row)));
        }
        DataType::Int16 => {
            out.push_str(itoa::Buffer::new().format(array.as_primitive::<Int16Type>().value(row)));
        }
        DataType::Int32 => {
            out.push_str(itoa::Buffer::new().format(array.as_primitive::<Int32Type>().value(row)));
        }
        DataType::Int64 => {
            out.push_str(itoa::Buffer::new().format(array.as_primitive::<Int64Type>().value(row)));
        }
        DataType::Float32 => {
            let v = array.as_primitive::<Float32Type>().value(row);
            out.push_str(&float_text(v as f64, || v.to_string()));
        }
        DataType::Float64 => {
            let v = array.as_primitive::<Float64Type>().value(row);
            out.push_str(&float_text(v, || v.to_string()));
        }
        DataType::Binary => {
            // bytea hex input.
            out.push_str("\\x");
            for b in array.as_binary::<i32>().value(row) {
                let _ = write!(out, "{b:02x}");
            }
        }
        DataType::Duration(TimeUnit::Microsecond) => {
            let micros = array
                .as_primitive::<arrow::datatypes::DurationMicrosecondType>()
                .value(row);
            let _ = write!(out, "{micros} microseconds");
        }
        DataType::Duration(TimeUnit::Nanosecond) => {
            let nanos = array
                .as_primitive::<arrow::datatypes::DurationNanosecondType>()
                .value(row);
            let _ = write!(out, "{} microseconds", nanos / 1000);
        }
        DataType::Duration(TimeUnit::Millisecond) => {
            let millis = array
                .as_primitive::<arrow::datatypes::DurationMillisecondType>()
                .value(row);
            let _ = write!(out, "{millis} milliseconds");
        }
        DataType::Duration(TimeUnit::Second) => {
            let seconds = array
                .as_primitive::<arrow::datatypes::DurationSecondType>()
                .value(row);
            let _ = write!(out, "{seconds} seconds");
        }
        _ => out.push_str(&encode::text(array, row).unwrap_or_default()),
    }
}

/// Whether a column of this Arrow type is sent straight from its Arrow values (see
/// `arrays::Encoding`), so no text is prepared for it.
pub(super) fn sent_directly(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::Float32
            | DataType::Float64
            | DataType::Boolean
            | DataType::Utf8
    )
}

/// Appends one value in COPY's text format (`\N` for null; tab, newline and backslash
/// escaped).
pub(super) fn copy_value(out: &mut Vec<u8>, array: &dyn Array, row: usize) {
    if array.is_null(row) {
        out.extend_from_slice(b"\\N");
        return;
    }
    if array.data_type() == &DataType::Utf8 {
        escape(out, array.as_string::<i32>().value(row).as_bytes());
        return;
    }
    // One buffer reused for every value: this runs for each value of a large batch.
    thread_local! {
        static TEXT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    TEXT.with_borrow_mut(|text| {
        text.clear();
        write_text(text, array, row);
        escape(out, text.as_bytes());
    });
}

/// Appends `value` escaped for COPY's text format.
fn escape(out: &mut Vec<u8>, value: &[u8]) {
    // The runs between escapes are copied whole (most values have no escape at all):
    // a push per byte showed in the copy's profile.
    let mut start = 0;
    for (i, &b) in value.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => continue,
        };
        out.extend_from_slice(&value[start..i]);
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(&value[start..]);
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

/// One action of a compacted segment: upsert the row's after image, or delete its key.
/// Its values (a row's columns, or a key's) are its COPY line in the segment's `rows` or
/// `keys` when the segment is staged, else its cells in the segment's `cells`.
pub(super) struct Action {
    pub(super) row: usize,
    pub(super) upsert: bool,
    pub(super) line: std::ops::Range<usize>,
    pub(super) cells: std::ops::Range<usize>,
}

/// From how many actions a segment is COPYed into staging tables rather than sent as
/// array parameters. Per value, COPY is the cheaper input for PostgreSQL (it parses text
/// straight into the column types, where a `text[]` parameter is received, unnested and
/// cast); per statement, arrays are (no staging tables to fill, and truncate at every
/// commit, and two round trips fewer). With one table's batch of 65,536 rows the former
/// wins, with 100 tables' of about 650 each the latter (docs/benchmarks.md).
pub(super) const STAGED_ACTIONS: usize = 4096;

/// Where one value's text lies in a segment's `text`; `NULL_CELL` for a null, and for a
/// column sent directly.
#[derive(Clone, Copy, Debug)]
pub(super) struct TextCell {
    start: u32,
    end: u32,
}

const NULL_CELL: TextCell = TextCell {
    start: u32::MAX,
    end: u32::MAX,
};

/// A compacted segment with its values as text, ready to send.
pub(super) struct PreparedSegment {
    pub(super) truncate_first: bool,
    /// In row order.
    pub(super) actions: Vec<Action>,
    /// Whether it is COPYed into staging tables (`rows`, `keys`), else sent as arrays
    /// (`text`, `cells`).
    pub(super) staged: bool,
    /// Whether `rows` and `keys` are COPY's binary tuples (`binary.rs`), else its text
    /// lines. Either way without the binary header and trailer, so that any run of
    /// actions can be sent on its own.
    pub(super) binary: bool,
    pub(super) rows: Vec<u8>,
    pub(super) keys: Vec<u8>,
    text: String,
    cells: Vec<TextCell>,
}

impl PreparedSegment {
    fn value(&self, cell: TextCell) -> Option<&str> {
        (cell.start != u32::MAX).then(|| &self.text[cell.start as usize..cell.end as usize])
    }

    /// Column `column` of `actions` (all upserts, or all deletes), one value per action:
    /// a `text[]` parameter. Not for a column sent directly.
    pub(super) fn column<'s>(&'s self, actions: &[&Action], column: usize) -> Vec<Option<&'s str>> {
        actions
            .iter()
            .map(|a| self.value(self.cells[a.cells.start + column]))
            .collect()
    }

    /// The bytes of text `action` holds.
    pub(super) fn text_bytes(&self, action: &Action) -> usize {
        self.cells[action.cells.clone()]
            .iter()
            .filter(|c| c.start != u32::MAX)
            .map(|c| (c.end - c.start) as usize)
            .sum()
    }
}

/// An upsert batch compacted and encoded as text ahead of its turn.
pub(super) struct PreparedUpsert {
    pub(super) segments: Vec<PreparedSegment>,
    /// The binary encoders its staged segments were prepared for, if any.
    pub(super) layout: Option<Layout>,
}

/// The binary encoders of a batch's row columns and of its key columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Layout {
    rows: Vec<Encoder>,
    keys: Vec<Encoder>,
}

/// The encoders for `batch`'s columns given each target column's declared type
/// (`declared`, or the type weir creates when it has none); None when a column has no
/// exact binary form, and the batch's staged segments are COPY text.
pub(super) fn layout(
    batch: &ChangeBatch,
    declared: impl Fn(&str) -> Option<String>,
) -> Option<Layout> {
    let fields = batch.row_fields();
    let rows = encoders(fields.iter().map(|f| f.as_ref()), &declared)?;
    let key_fields = batch
        .table
        .primary_key
        .iter()
        .map(|k| fields.iter().find(|f| f.name() == k).map(|f| f.as_ref()))
        .collect::<Option<Vec<&Field>>>()?;
    let keys = encoders(key_fields, &declared)?;
    Some(Layout { rows, keys })
}

/// The before image's primary key columns, in key order: what a deleted key is sent as.
pub(super) fn key_columns(batch: &ChangeBatch) -> Result<Vec<&dyn Array>, String> {
    let before = batch.before();
    batch
        .table
        .primary_key
        .iter()
        .map(|k| {
            before
                .column_by_name(k)
                .map(|c| c.as_ref())
                .ok_or_else(|| format!("primary key column `{k}` is not in the rows"))
        })
        .collect()
}

/// Compacts `batch` (the rows `include` selects) and encodes each segment's rows and
/// deleted keys as COPY lines (a segment of `STAGED_ACTIONS` or more) or text cells.
/// Depends on the batch alone, so it can run on another thread while the previous batch
/// is being applied.
pub(super) fn prepare_upsert(
    batch: &ChangeBatch,
    include: Option<&[bool]>,
    layout: Option<&Layout>,
) -> Result<Vec<PreparedSegment>, String> {
    let after = batch.after();
    let key_columns = key_columns(batch)?;
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
            staged: order.len() >= STAGED_ACTIONS,
            binary: false,
            rows: Vec::new(),
            keys: Vec::new(),
            text: String::new(),
            cells: Vec::new(),
        };
        if out.staged {
            let columns = (&row_columns[..], &key_columns[..]);
            if let Some(layout) = layout {
                out.binary = stage(&mut out, &order, columns, Some(layout));
            }
            if !out.binary {
                stage(&mut out, &order, columns, None);
            }
            prepared.push(out);
            continue;
        }
        for (row, upsert) in order {
            let columns = if upsert { &row_columns } else { &key_columns };
            let first = out.cells.len();
            for column in columns {
                if column.is_null(row) || sent_directly(column.data_type()) {
                    out.cells.push(NULL_CELL);
                    continue;
                }
                let start = out.text.len();
                write_text(&mut out.text, *column, row);
                // u32::MAX marks a null.
                let end = u32::try_from(out.text.len()).ok();
                let (Ok(start), Some(end)) = (u32::try_from(start), end.filter(|e| *e < u32::MAX))
                else {
                    return Err(
                        "the batch holds 4 GiB of text or more; lower the batch's max_bytes".into(),
                    );
                };
                out.cells.push(TextCell { start, end });
            }
            out.actions.push(Action {
                row,
                upsert,
                line: 0..0,
                cells: first..out.cells.len(),
            });
        }
        prepared.push(out);
    }
    Ok(prepared)
}

/// Writes the staged segment's rows and deleted keys (`order`) as COPY lines of
/// `columns` (rows', keys'): binary tuples with `layout`, else text, in place of what
/// `out` held. False when a value has no exact binary form: the caller then stages the
/// segment again as text.
fn stage(
    out: &mut PreparedSegment,
    order: &[(usize, bool)],
    (row_columns, key_columns): (&[&dyn Array], &[&dyn Array]),
    layout: Option<&Layout>,
) -> bool {
    out.actions.clear();
    out.rows.clear();
    out.keys.clear();
    for &(row, upsert) in order {
        let columns = if upsert { row_columns } else { key_columns };
        let buffer = if upsert { &mut out.rows } else { &mut out.keys };
        let start = buffer.len();
        match layout {
            Some(layout) => {
                let encoders = if upsert { &layout.rows } else { &layout.keys };
                if !write_tuple(buffer, columns, encoders, row) {
                    return false;
                }
            }
            None => {
                for (i, column) in columns.iter().enumerate() {
                    if i > 0 {
                        buffer.push(b'\t');
                    }
                    copy_value(buffer, *column, row);
                }
                buffer.push(b'\n');
            }
        }
        out.actions.push(Action {
            row,
            upsert,
            line: start..buffer.len(),
            cells: 0..0,
        });
    }
    true
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
    fn text_is_what_the_input_functions_read_unescaped() {
        let text = |array: &dyn Array| {
            let mut out = String::new();
            write_text(&mut out, array, 0);
            out
        };
        assert_eq!(text(&StringArray::from(vec!["a\tb\\"])), "a\tb\\");
        assert_eq!(
            text(&BinaryArray::from(vec![&[0x01u8, 0xff][..]])),
            "\\x01ff"
        );
        assert_eq!(
            text(&Float64Array::from(vec![f64::NEG_INFINITY])),
            "-Infinity"
        );
    }

    #[test]
    fn copy_text_escapes_and_encodes() {
        let s = StringArray::from(vec![Some("a\tb\nc\\d\re"), None, Some("\t"), Some("plain")]);
        assert_eq!(copied(&s, 0), "a\\tb\\nc\\\\d\\re");
        assert_eq!(copied(&s, 2), "\\t");
        assert_eq!(copied(&s, 3), "plain");
        assert_eq!(copied(&s, 1), "\\N");
        let b = BinaryArray::from(vec![&[0x01u8, 0xff][..]]);
        assert_eq!(copied(&b, 0), "\\\\x01ff");
        let f = Float64Array::from(vec![f64::NAN, 0.1]);
        assert_eq!(copied(&f, 0), "NaN");
        assert_eq!(copied(&f, 1), "0.1");
    }

    #[test]
    fn prepared_segments_hold_each_action_in_row_order_with_its_cells() {
        // A row's cells are its columns (id, v); a deleted key's, the key's (id).
        let lines = |s: &PreparedSegment| -> Vec<(usize, bool, usize)> {
            s.actions
                .iter()
                .map(|a| (a.row, a.upsert, a.cells.len()))
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
        let segments = prepare_upsert(&batch, None, None).unwrap();
        assert_eq!(segments.len(), 1);
        assert!(!segments[0].truncate_first);
        assert_eq!(
            lines(&segments[0]),
            vec![(2, true, 2), (3, false, 1), (4, true, 2), (5, false, 1),]
        );
        // Skipping rows prepares the rest only.
        let include = [true, true, false, false, true, true];
        let segments = prepare_upsert(&batch, Some(&include), None).unwrap();
        assert_eq!(
            lines(&segments[0]),
            vec![(0, true, 2), (1, true, 2), (4, true, 2), (5, false, 1),]
        );
        // A truncate starts the segment over.
        let batch = crate::sink::compact::tests::batch(&[
            r#"{"op":"c","after":{"id":1,"v":"a"}}"#,
            r#"{"op":"t","source":{"table":"t"}}"#,
            r#"{"op":"c","after":{"id":2,"v":"b"}}"#,
        ]);
        let segments = prepare_upsert(&batch, None, None).unwrap();
        assert_eq!(segments.len(), 1);
        assert!(segments[0].truncate_first);
        assert_eq!(lines(&segments[0]), vec![(2, true, 2)]);
    }

    #[test]
    fn a_segment_of_many_actions_is_prepared_as_copy_lines() {
        let events: Vec<String> = (0..STAGED_ACTIONS)
            .map(|i| format!(r#"{{"op":"c","after":{{"id":{i},"v":"a\tb"}}}}"#))
            .collect();
        let events: Vec<&str> = events.iter().map(String::as_str).collect();
        let batch = crate::sink::compact::tests::batch(&events);
        let segments = prepare_upsert(&batch, None, None).unwrap();
        assert!(segments[0].staged);
        let last = segments[0].actions.last().unwrap();
        assert_eq!(
            &segments[0].rows[last.line.clone()],
            format!("{}\ta\\tb\n", STAGED_ACTIONS - 1).as_bytes()
        );
        // With a layout, binary; a value without an exact binary form (text with a NUL,
        // in the last row) stages the whole segment again as text, nothing of the
        // binary attempt left in it.
        let layout = layout(&batch, |_| None);
        let binary = prepare_upsert(&batch, None, layout.as_ref()).unwrap();
        assert!(binary[0].binary);
        let mut with_nul = events.clone();
        let last = format!(r#"{{"op":"c","after":{{"id":{STAGED_ACTIONS},"v":"a\u0000"}}}}"#);
        with_nul.push(&last);
        let batch = crate::sink::compact::tests::batch(&with_nul);
        let text = prepare_upsert(&batch, None, layout.as_ref()).unwrap();
        assert!(!text[0].binary);
        assert!(text[0].rows.starts_with(b"0\ta\\tb\n"));
        assert_eq!(text[0].actions.len(), STAGED_ACTIONS + 1);
        assert_eq!(text[0].actions[1].line.start, "0\ta\\tb\n".len());
        // One fewer is sent as arrays.
        let batch = crate::sink::compact::tests::batch(&events[1..]);
        let segments = prepare_upsert(&batch, None, None).unwrap();
        assert!(!segments[0].staged);
        assert!(segments[0].rows.is_empty());
    }
}
