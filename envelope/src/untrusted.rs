//! Reading an Arrow IPC stream from an untrusted writer: what a plugin returns.
//!
//! arrow-ipc's reader trusts a stream's metadata further than a host can afford to: it
//! slices buffers at the offsets the metadata gives (and panics when one points past the
//! message body), reserves the uncompressed size a compressed buffer claims before it
//! decompresses (and aborts the process when the claim is 2^50 bytes), builds validity
//! bitmaps it has not measured (and panics when one is short), and converts any type the
//! schema names (panicking on several malformed ones). So [`read`] checks every message
//! before arrow sees it:
//!
//! - the framing: each message's markers and lengths lie within the bytes;
//! - the schema, by the caller's rules (for weir, the change envelope), before any batch
//!   is decoded, so only the types the caller accepts are ever decoded;
//! - each record batch: no compression (the plugin contract is uncompressed IPC), no
//!   dictionaries, no variadic buffers, at most `max_rows` rows, every buffer inside the
//!   message body, 8-byte aligned and overlapping no other, the field nodes' lengths
//!   within a bound set by the rows and the body's size, every validity bitmap long
//!   enough and every offsets or values buffer a whole number of elements;
//!
//! then decodes with arrow's full validation (offsets, UTF-8, lengths, null counts). A
//! panic left anywhere in that is caught and becomes the stream's error, and nothing is
//! printed for it: the reason travels with the batch to the dead-letter output.

use std::cell::Cell;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Once};

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_ipc::convert::fb_to_schema;
use arrow_ipc::reader::RecordBatchDecoder;
use arrow_ipc::{FieldNode, MessageHeader};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use super::ipc::{next_message, one_batch};

/// The longest any array of a stream may be (its offsets are 32-bit anyway).
const MAX_LENGTH: i64 = i32::MAX as i64;

/// Reads a stream of one schema and its record batches (several are concatenated), of
/// at most `max_rows` rows in all. `check_schema` sees the schema before any batch is
/// decoded and refuses what the caller does not accept.
pub fn read(
    bytes: Vec<u8>,
    check_schema: &dyn Fn(&Schema) -> Result<(), String>,
    max_rows: usize,
) -> Result<RecordBatch, String> {
    match quietly(|| read_checked(bytes, check_schema, max_rows)) {
        Ok(result) => result,
        Err(panic) => Err(format!("the Arrow IPC stream broke the reader: {panic}")),
    }
}

fn read_checked(
    bytes: Vec<u8>,
    check_schema: &dyn Fn(&Schema) -> Result<(), String>,
    max_rows: usize,
) -> Result<RecordBatch, String> {
    let buffer = Buffer::from_vec(bytes);
    let mut schema: Option<SchemaRef> = None;
    let mut batches = Vec::new();
    let mut rows = 0usize;
    let mut at = 0;
    let no_dictionaries = HashMap::new();
    while let Some((message, body, next)) = next_message(&buffer, at)? {
        at = next;
        match message.header_type() {
            MessageHeader::Schema if schema.is_none() => {
                let fb = message
                    .header_as_schema()
                    .ok_or("an unreadable schema message")?;
                // arrow's conversion panics on several malformed schemas; they are errors.
                let read = quietly(|| fb_to_schema(fb))
                    .map_err(|panic| format!("an unreadable schema message: {panic}"))?;
                let read = Arc::new(read);
                check_schema(&read)?;
                schema = Some(read);
            }
            MessageHeader::Schema => return Err("a second schema message".into()),
            MessageHeader::RecordBatch => {
                let schema = schema.clone().ok_or("a record batch before the schema")?;
                let fb = message
                    .header_as_record_batch()
                    .ok_or("an unreadable record batch message")?;
                if let Some(compression) = fb.compression() {
                    return Err(format!(
                        "a batch compressed with {:?}: plugins return uncompressed Arrow IPC \
                         (plugins/wit/weir.wit)",
                        compression.codec()
                    ));
                }
                if fb.variadicBufferCounts().is_some_and(|c| !c.is_empty()) {
                    return Err("variadic buffers, which no accepted type has".into());
                }
                let length = usize::try_from(fb.length())
                    .map_err(|_| format!("a batch of {} rows", fb.length()))?;
                rows = rows.saturating_add(length);
                if rows > max_rows {
                    return Err(format!(
                        "{rows} rows, more than the {max_rows} this call may return"
                    ));
                }
                let nodes: Vec<FieldNode> = fb
                    .nodes()
                    .map(|n| n.iter().copied().collect())
                    .unwrap_or_default();
                let buffers: Vec<(usize, usize)> = fb
                    .buffers()
                    .into_iter()
                    .flatten()
                    .map(|b| {
                        let range = usize::try_from(b.offset())
                            .ok()
                            .zip(usize::try_from(b.length()).ok())
                            .filter(|(offset, length)| {
                                // The format aligns every buffer to 8 bytes; arrow asserts
                                // alignment where it reinterprets one.
                                offset % 8 == 0
                                    && offset
                                        .checked_add(*length)
                                        .is_some_and(|end| end <= body.len())
                            });
                        range.ok_or_else(|| {
                            format!(
                                "a buffer at offset {} of length {} in a body of {} bytes \
                                 (buffers lie in the body, 8-byte aligned)",
                                b.offset(),
                                b.length(),
                                body.len()
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?;
                check_sizes(&nodes, &buffers, body.len(), max_rows)?;
                Layout {
                    nodes: &nodes,
                    buffers: &buffers,
                    node: 0,
                    buffer: 0,
                }
                .check(schema.fields().iter().map(|f| f.as_ref()))?;
                let version = message.version();
                let batch =
                    RecordBatchDecoder::try_new(&body, fb, schema, &no_dictionaries, &version)
                        .and_then(|d| d.read_record_batch())
                        .map_err(|e| format!("not a valid Arrow IPC batch: {e}"))?;
                batches.push(batch);
            }
            MessageHeader::DictionaryBatch => {
                return Err("a dictionary batch: plugins return no dictionary encoding".into());
            }
            other => return Err(format!("unexpected Arrow IPC message {other:?}")),
        }
    }
    let schema = schema.ok_or("an Arrow IPC stream without a schema")?;
    one_batch(schema, batches)
}

/// Bounds what a batch can make weir hold beyond its bytes: buffers may not overlap (one
/// buffer shared by many columns would multiply its bytes in every copy made later), and
/// the field nodes' lengths add up to at most one batch of rows per node plus 8 per body
/// byte (a list of nulls or of empty structs takes no bytes per element, yet every later
/// `take` or copy spends memory on each).
fn check_sizes(
    nodes: &[FieldNode],
    buffers: &[(usize, usize)],
    body: usize,
    max_rows: usize,
) -> Result<(), String> {
    let mut ranges: Vec<(usize, usize)> = buffers.iter().copied().filter(|b| b.1 > 0).collect();
    ranges.sort_unstable();
    if let Some(pair) = ranges.windows(2).find(|w| w[0].0 + w[0].1 > w[1].0) {
        return Err(format!(
            "two buffers overlap (at offsets {} and {} of the body)",
            pair[0].0, pair[1].0
        ));
    }
    let total: u128 = nodes.iter().map(|n| n.length().max(0) as u128).sum();
    let bound = nodes.len() as u128 * max_rows as u128 + 8 * body as u128;
    if total > bound {
        return Err(format!(
            "its columns claim {total} values in all, more than {bound} for {} columns of \
             at most {max_rows} rows in a body of {body} bytes",
            nodes.len()
        ));
    }
    Ok(())
}

/// The field nodes and buffers of a batch message, walked in the order the decoder
/// consumes them, to check what the decoder does not before it builds arrays.
struct Layout<'a> {
    nodes: &'a [FieldNode],
    buffers: &'a [(usize, usize)],
    node: usize,
    buffer: usize,
}

impl Layout<'_> {
    fn check<'f>(&mut self, fields: impl Iterator<Item = &'f Field>) -> Result<(), String> {
        for field in fields {
            self.field(field)?;
        }
        Ok(())
    }

    fn field(&mut self, field: &Field) -> Result<(), String> {
        let node = *self
            .nodes
            .get(self.node)
            .ok_or_else(|| format!("no field node for column `{}`", field.name()))?;
        self.node += 1;
        let (length, nulls) = (node.length(), node.null_count());
        if !(0..=MAX_LENGTH).contains(&length) || !(0..=length).contains(&nulls) {
            return Err(format!(
                "column `{}` claims {length} values of which {nulls} null",
                field.name()
            ));
        }
        // Buffers after the validity bitmap, the element width of the first of them
        // (arrow reinterprets it as that type and asserts its length is a multiple), and
        // the children, per type (as arrow-ipc reads them).
        let (others, width, children): (usize, usize, Vec<&Field>) = match field.data_type() {
            DataType::Null => return Ok(()),
            DataType::Utf8 | DataType::Binary => (2, 4, Vec::new()),
            DataType::LargeUtf8 | DataType::LargeBinary => (2, 8, Vec::new()),
            DataType::List(child) | DataType::Map(child, _) => (1, 4, vec![child.as_ref()]),
            DataType::LargeList(child) => (1, 8, vec![child.as_ref()]),
            DataType::Struct(fields) => (0, 1, fields.iter().map(|f| f.as_ref()).collect()),
            DataType::Boolean => (1, 1, Vec::new()),
            t if t.is_primitive() => (1, t.primitive_width().unwrap_or(1), Vec::new()),
            other => {
                return Err(format!(
                    "column `{}` has type {other}, which is not accepted",
                    field.name()
                ));
            }
        };
        let buffers = self
            .buffers
            .get(self.buffer..self.buffer + 1 + others)
            .ok_or_else(|| format!("too few buffers for column `{}`", field.name()))?;
        let validity = buffers[0].1;
        if nulls > 0 && (validity as u64) * 8 < length as u64 {
            return Err(format!(
                "column `{}` has {nulls} nulls in {length} values but a validity bitmap of \
                 {validity} bytes",
                field.name()
            ));
        }
        if let Some((_, bytes)) = buffers.get(1)
            && bytes % width != 0
        {
            return Err(format!(
                "column `{}` has a buffer of {bytes} bytes for {width}-byte values",
                field.name()
            ));
        }
        self.buffer += 1 + others;
        self.check(children.into_iter())
    }
}

thread_local! {
    /// Set while this thread runs [`quietly`]: the panic hook stays silent.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic into `Err(its message)` without printing it. The process's
/// panic hook is wrapped once, to skip the threads inside `quietly`.
fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static WRAP: Once = Once::new();
    WRAP.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    result.map_err(|panic| {
        panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use arrow_array::builder::{ListBuilder, StringBuilder};
    use arrow_array::{
        ArrayRef, Decimal128Array, Int64Array, StringArray, StructArray, TimestampMicrosecondArray,
    };
    use arrow_schema::{Field, Fields, TimeUnit};

    use super::*;
    use crate::ipc::{batch_layout, put_word as put, word_at, write};

    /// A change batch with nulls, text, a decimal, a list and a timestamp in its rows.
    pub fn sample(rows: usize) -> RecordBatch {
        let fields = Fields::from(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("price", DataType::Decimal128(12, 2), true),
            Field::new_list("tags", Field::new_list_field(DataType::Utf8, true), true),
            Field::new("at", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ]);
        let schema = crate::schema(fields.clone());
        let mut tags = ListBuilder::new(StringBuilder::new());
        for i in 0..rows {
            if i % 3 == 0 {
                tags.append_null();
            } else {
                tags.values().append_value(format!("t{i}"));
                tags.values().append_null();
                tags.append(true);
            }
        }
        let image: ArrayRef = Arc::new(StructArray::new(
            fields,
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows as i64)),
                Arc::new(StringArray::from_iter(
                    (0..rows).map(|i| (i % 4 != 1).then(|| format!("név {i}"))),
                )),
                Arc::new(
                    Decimal128Array::from_iter(
                        (0..rows).map(|i| (i % 5 != 2).then_some(i as i128 * 101)),
                    )
                    .with_precision_and_scale(12, 2)
                    .unwrap(),
                ),
                Arc::new(tags.finish()),
                Arc::new(TimestampMicrosecondArray::from_iter(
                    (0..rows).map(|i| (i % 2 == 0).then_some(i as i64 * 1_000_000)),
                )),
            ],
            None,
        ));
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| match f.name().as_str() {
                crate::OP => Arc::new(StringArray::from(vec!["c"; rows])) as ArrayRef,
                crate::BEFORE | crate::AFTER => image.clone(),
                crate::HEADERS => crate::empty_headers(rows),
                _ => arrow_array::new_null_array(f.data_type(), rows),
            })
            .collect();
        RecordBatch::try_new(schema, columns).unwrap()
    }

    pub fn same_schema(expected: &Schema) -> impl Fn(&Schema) -> Result<(), String> + '_ {
        move |schema| {
            if schema.fields() == expected.fields() {
                Ok(())
            } else {
                Err("not the envelope".into())
            }
        }
    }

    #[test]
    fn a_valid_stream_reads_back_whole() {
        let batch = sample(50);
        let schema = batch.schema();
        let read_back = read(write(&batch).unwrap(), &same_schema(&schema), 50).unwrap();
        assert_eq!(read_back, batch);
    }

    #[test]
    fn each_known_attack_is_an_error_not_a_panic() {
        let batch = sample(20);
        let schema = batch.schema();
        let check = same_schema(&schema);
        let bytes = write(&batch).unwrap();
        let layout = batch_layout(&bytes).unwrap();
        let (buffers, nodes, body) = (layout.buffers, layout.nodes, layout.body);

        let mut past_body = bytes.clone();
        put(&mut past_body, buffers[1], body.len() as i64 + 4096);
        let error = read(past_body, &check, 20).unwrap_err();
        assert!(error.contains("in a body of"), "{error}");

        // A validity bitmap too short for the nulls claimed: arrow would assert on it.
        let mut short_bitmap = bytes.clone();
        let last = *nodes.last().unwrap();
        put(&mut short_bitmap, last, 1000);
        put(&mut short_bitmap, last + 8, 1);
        let error = read(short_bitmap, &check, 20).unwrap_err();
        assert!(error.contains("validity bitmap"), "{error}");

        let mut negative = bytes.clone();
        put(&mut negative, nodes[0], -5);
        assert!(read(negative, &check, 20).is_err());

        let error = read(bytes.clone(), &check, 19).unwrap_err();
        assert!(error.contains("more than the 19"), "{error}");

        let error = read(bytes.clone(), &|_| Err("refused".into()), 20).unwrap_err();
        assert_eq!(error, "refused");

        let error = read(bytes[..bytes.len() - 30].to_vec(), &check, 20).unwrap_err();
        assert!(error.contains("truncated"), "{error}");
    }

    #[test]
    fn shared_buffers_and_empty_elements_cannot_multiply_a_batch() {
        let batch = sample(20);
        let schema = batch.schema();
        let check = same_schema(&schema);
        let bytes = write(&batch).unwrap();
        let (buffers, nodes) = {
            let layout = batch_layout(&bytes).unwrap();
            (layout.buffers, layout.nodes)
        };
        // Two non-empty buffers made to start at the same offset.
        let mut shared = bytes.clone();
        let mut non_empty = buffers.iter().filter(|&&at| word_at(&bytes, at + 8) > 0);
        let (a, b) = (non_empty.next().unwrap(), non_empty.next().unwrap());
        put(&mut shared, *b, word_at(&bytes, *a));
        let error = read(shared, &check, 20).unwrap_err();
        assert!(error.contains("overlap"), "{error}");
        // A node claiming two billion values with no bytes behind them.
        let mut claims = bytes.clone();
        put(&mut claims, nodes[0], (1 << 31) - 1);
        put(&mut claims, nodes[0] + 8, 0);
        let error = read(claims, &check, 20).unwrap_err();
        assert!(
            error.contains("claim") || error.contains("values"),
            "{error}"
        );
    }

    #[test]
    fn a_panic_is_caught_without_a_word() {
        assert_eq!(quietly(|| 1), Ok(1));
        let caught = quietly(|| -> u8 { panic!("from inside") });
        assert_eq!(caught, Err("from inside".to_string()));
    }
}
