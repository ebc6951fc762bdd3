//! Arrow IPC streams across the plugin boundary: one schema message, then record batches.
//! What a plugin returns is read with [`crate::untrusted::read`], never with [`read`].

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_data::{ArrayData, UnsafeFlag};
use arrow_ipc::convert::fb_to_schema;
use arrow_ipc::reader::{RecordBatchDecoder, StreamDecoder};
use arrow_ipc::writer::StreamWriter;
use arrow_ipc::{Message, MessageHeader, root_as_message};
use arrow_schema::{DataType, Field, SchemaRef};

/// Reads a stream holding one batch (several are concatenated; none is an empty batch).
/// The batch's buffers point into `bytes`: nothing is copied.
pub fn read(bytes: Vec<u8>) -> Result<RecordBatch, String> {
    let mut decoder = StreamDecoder::new();
    let mut buffer = Buffer::from_vec(bytes);
    let mut batches = Vec::new();
    while !buffer.is_empty() {
        match decoder.decode(&mut buffer) {
            Ok(Some(batch)) => batches.push(batch),
            Ok(None) => {}
            Err(e) => return Err(format!("not an Arrow IPC stream: {e}")),
        }
    }
    decoder
        .finish()
        .map_err(|e| format!("truncated Arrow IPC stream: {e}"))?;
    let schema = decoder
        .schema()
        .ok_or("an Arrow IPC stream without a schema")?;
    one_batch(schema, batches)
}

/// The stream's batches as one.
pub(crate) fn one_batch(
    schema: SchemaRef,
    mut batches: Vec<RecordBatch>,
) -> Result<RecordBatch, String> {
    match batches.len() {
        1 => Ok(batches.pop().expect("one batch")),
        0 => Ok(RecordBatch::new_empty(schema)),
        _ => arrow_select::concat::concat_batches(&schema, &batches).map_err(|e| e.to_string()),
    }
}

/// [`read`] without validating the arrays (offsets in range, text valid UTF-8), for a
/// stream weir's host wrote with [`write`] from arrays it built and checked: the plugin
/// side of the boundary reads every batch this way. The host never uses it on what a
/// plugin returns.
///
/// It walks the stream's messages itself because arrow-ipc 59's `StreamDecoder` accepts
/// `with_skip_validation` but does not pass it on to record batches, so every string was
/// still checked as UTF-8 (most of an identity plugin's time, measured).
pub fn read_from_host(bytes: Vec<u8>) -> Result<RecordBatch, String> {
    let buffer = Buffer::from_vec(bytes);
    let mut schema: Option<SchemaRef> = None;
    let mut batches = Vec::new();
    let mut at = 0;
    let no_dictionaries = HashMap::new();
    while let Some((message, body, next)) = next_message(&buffer, at)? {
        at = next;
        match message.header_type() {
            MessageHeader::Schema => {
                let fb = message
                    .header_as_schema()
                    .ok_or("an unreadable schema message")?;
                schema = Some(Arc::new(fb_to_schema(fb)));
            }
            MessageHeader::RecordBatch => {
                let fb = message
                    .header_as_record_batch()
                    .ok_or("an unreadable record batch message")?;
                let schema = schema.clone().ok_or("a record batch before the schema")?;
                let version = message.version();
                let mut skip = UnsafeFlag::new();
                // SAFETY: the stream comes from `write` over valid arrays (the host's), so
                // skipping validation cannot admit an invalid array; and the reader runs
                // inside the plugin's sandbox, whose memory is all it could reach.
                unsafe { skip.set(true) };
                let batch =
                    RecordBatchDecoder::try_new(&body, fb, schema, &no_dictionaries, &version)
                        .and_then(|d| d.with_skip_validation(skip).read_record_batch())
                        .map_err(|e| format!("not an Arrow IPC stream: {e}"))?;
                batches.push(batch);
            }
            other => return Err(format!("unexpected Arrow IPC message {other:?}")),
        }
    }
    let schema = schema.ok_or("an Arrow IPC stream without a schema")?;
    one_batch(schema, batches)
}

/// The message at `at` (continuation marker, metadata length, metadata, body), its body
/// and where the next one starts; `None` at the end-of-stream marker or the end.
pub(crate) fn next_message(
    buffer: &Buffer,
    at: usize,
) -> Result<Option<(Message<'_>, Buffer, usize)>, String> {
    let word = |at: usize| -> Result<u32, String> {
        let bytes = buffer
            .get(at..at + 4)
            .ok_or("a truncated Arrow IPC stream")?;
        Ok(u32::from_le_bytes(bytes.try_into().expect("four bytes")))
    };
    if at == buffer.len() {
        return Ok(None);
    }
    if word(at)? != CONTINUATION {
        return Err("not an Arrow IPC stream: no continuation marker".into());
    }
    let length = word(at + 4)? as usize;
    if length == 0 {
        return Ok(None);
    }
    let start = at + 8;
    let metadata = buffer
        .get(start..start + length)
        .ok_or("a truncated Arrow IPC stream")?;
    let message = root_as_message(metadata).map_err(|e| format!("not an Arrow IPC stream: {e}"))?;
    let body_start = start + length;
    let body_length =
        usize::try_from(message.bodyLength()).map_err(|_| "a negative body length")?;
    let end = body_start
        .checked_add(body_length)
        .filter(|&end| end <= buffer.len())
        .ok_or("a truncated Arrow IPC stream")?;
    let body = buffer.slice_with_length(body_start, body_length);
    Ok(Some((message, body, end)))
}

/// The marker before each message's metadata length.
const CONTINUATION: u32 = 0xFFFF_FFFF;

/// Where the parts of a stream's first record batch lie: its metadata and body, and
/// the byte offset of each buffer descriptor (offset, then length) and of each field node
/// (length, then null count), 16 bytes each. For tests that damage streams on purpose
/// (`untrusted`'s fuzzer, `plugins/testing/hostile`); the host reads nothing this way.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLayout {
    pub metadata: std::ops::Range<usize>,
    pub body: std::ops::Range<usize>,
    pub buffers: Vec<usize>,
    pub nodes: Vec<usize>,
}

#[doc(hidden)]
pub fn batch_layout(bytes: &[u8]) -> Result<BatchLayout, String> {
    let mut at = 0;
    while let Some(word) = bytes.get(at + 4..at + 8) {
        let length = u32::from_le_bytes(word.try_into().expect("four bytes")) as usize;
        let metadata = at + 8..at + 8 + length;
        let message = root_as_message(bytes.get(metadata.clone()).ok_or("a truncated stream")?)
            .map_err(|e| e.to_string())?;
        let body = metadata.end..metadata.end + message.bodyLength() as usize;
        if let Some(batch) = message.header_as_record_batch() {
            let base = bytes.as_ptr() as usize;
            let slots = |start: usize, count: usize| (0..count).map(|i| start + 16 * i).collect();
            let buffers = batch.buffers().ok_or("no buffers")?;
            let nodes = batch.nodes().ok_or("no field nodes")?;
            return Ok(BatchLayout {
                buffers: slots(buffers.bytes().as_ptr() as usize - base, buffers.len()),
                nodes: slots(nodes.bytes().as_ptr() as usize - base, nodes.len()),
                metadata,
                body,
            });
        }
        at = body.end;
    }
    Err("no record batch in the stream".into())
}

/// The little-endian `i64` at `at` (a buffer's offset or length, a node's length).
#[doc(hidden)]
pub fn word_at(bytes: &[u8], at: usize) -> i64 {
    i64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

/// Overwrites the little-endian `i64` at `at`.
#[doc(hidden)]
pub fn put_word(bytes: &mut [u8], at: usize, value: i64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// Writes one batch as a stream.
pub fn write(batch: &RecordBatch) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(stream_size_bound(batch));
    let mut writer = StreamWriter::try_new(&mut out, &batch.schema()).map_err(|e| e.to_string())?;
    writer.write(batch).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    drop(writer);
    Ok(out)
}

/// At least the bytes [`write`] makes of `batch`, so its vector never grows (a grow
/// copies what was written and touches twice the memory): the bytes the batch's values
/// take, not its buffers' capacity (a batch read zero-copy has every buffer pointing into
/// one allocation, whose whole size each would report), plus each buffer's padding to 64
/// bytes and room for the schema and the batch's metadata.
fn stream_size_bound(batch: &RecordBatch) -> usize {
    let (values, buffers) =
        batch
            .columns()
            .iter()
            .map(|c| c.to_data())
            .fold((0, 0), |(values, buffers), data| {
                (
                    values + data.get_slice_memory_size().unwrap_or(0),
                    buffers + buffer_count(&data),
                )
            });
    let fields: usize = batch.schema().fields().iter().map(|f| field_room(f)).sum();
    // Per buffer: up to 63 bytes of padding and its 16-byte descriptor.
    values + 80 * buffers + fields + METADATA_ROOM
}

/// What a field takes in the schema message and its node in the batch metadata.
fn field_room(field: &Field) -> usize {
    let children: usize = match field.data_type() {
        DataType::Struct(fields) => fields.iter().map(|f| field_room(f)).sum(),
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => field_room(f),
        DataType::Map(f, _) => field_room(f),
        _ => 0,
    };
    field.name().len() + 160 + children
}

/// Room for the messages' fixed parts and the end marker.
const METADATA_ROOM: usize = 4096;

/// The buffers an array is written as, its children's included (null bitmaps counted).
fn buffer_count(data: &ArrayData) -> usize {
    1 + data.buffers().len() + data.child_data().iter().map(buffer_count).sum::<usize>()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int64Array, StringArray, StructArray};
    use arrow_buffer::OffsetBuffer;
    use arrow_schema::{DataType, Field};

    use super::*;

    #[test]
    fn a_batch_survives_the_round_trip() {
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            (
                "name",
                Arc::new(StringArray::from(vec![Some("a"), None])) as ArrayRef,
            ),
        ])
        .unwrap();
        assert_eq!(read(write(&batch).unwrap()).unwrap(), batch);
    }

    #[test]
    fn writing_a_batch_read_zero_copy_reserves_its_size_not_its_allocations() {
        let columns: Vec<(String, ArrayRef)> = (0..50)
            .map(|i| {
                let values = (0..1000).map(|r| format!("value {r} of column {i}"));
                (
                    format!("c{i}"),
                    Arc::new(StringArray::from_iter_values(values)) as ArrayRef,
                )
            })
            .collect();
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let bytes = write(&batch).unwrap();
        let read_back = read(bytes.clone()).unwrap();
        // Every buffer of `read_back` lives in one allocation of `bytes.len()`.
        let rewritten = write(&read_back).unwrap();
        assert_eq!(rewritten, bytes);
        assert!(
            rewritten.capacity() < 2 * bytes.len() + 4096,
            "{} reserved for {} bytes",
            rewritten.capacity(),
            bytes.len()
        );
    }

    #[test]
    fn the_stream_fits_in_what_the_writer_reserves() {
        let wide = RecordBatch::try_from_iter((0..2000).map(|i| {
            (
                format!("column_{i}"),
                Arc::new(Int64Array::from(vec![Some(i), None])) as ArrayRef,
            )
        }))
        .unwrap();
        let names = StringArray::from_iter_values((0..10_000).map(|i| format!("name {i}")));
        let nested = StructArray::from(vec![(
            Arc::new(Field::new("name", DataType::Utf8, false)),
            Arc::new(names) as ArrayRef,
        )]);
        let nested = RecordBatch::try_from_iter([("after", Arc::new(nested) as ArrayRef)]).unwrap();
        let read_back = read(write(&nested).unwrap()).unwrap();
        for batch in [
            &wide,
            &nested,
            &read_back,
            &nested.slice(100, 10),
            &wide.slice(0, 0),
        ] {
            let bytes = write(batch).unwrap();
            assert!(
                bytes.len() <= stream_size_bound(batch),
                "{} bytes written, {} reserved",
                bytes.len(),
                stream_size_bound(batch)
            );
        }
    }

    #[test]
    fn the_plugin_side_reads_what_the_host_wrote() {
        let rows = StructArray::from(vec![(
            Arc::new(Field::new("name", DataType::Utf8, true)),
            Arc::new(StringArray::from(vec![Some("é"), None, Some("")])) as ArrayRef,
        )]);
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
            ("after", Arc::new(rows) as ArrayRef),
        ])
        .unwrap();
        assert_eq!(read_from_host(write(&batch).unwrap()).unwrap(), batch);
        let empty = batch.slice(0, 0);
        assert_eq!(read_from_host(write(&empty).unwrap()).unwrap(), empty);
    }

    #[test]
    fn only_the_host_side_checks_the_text() {
        // Invalid UTF-8 the writer passes through: what the host must refuse from a
        // plugin, and what the plugin side does not spend time checking.
        let bad = unsafe {
            StringArray::new_unchecked(
                OffsetBuffer::new(vec![0, 2].into()),
                Buffer::from_vec(vec![0xffu8, 0xfe]),
                None,
            )
        };
        let batch = RecordBatch::try_from_iter([("name", Arc::new(bad) as ArrayRef)]).unwrap();
        let bytes = write(&batch).unwrap();
        let error = read(bytes.clone()).unwrap_err();
        assert!(
            error.contains("utf-8") || error.contains("UTF-8") || error.contains("utf8"),
            "{error}"
        );
        assert_eq!(read_from_host(bytes).unwrap().num_rows(), 1);
    }

    #[test]
    fn the_plugin_side_refuses_a_broken_stream() {
        let batch = RecordBatch::try_from_iter([(
            "id",
            Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef,
        )])
        .unwrap();
        let bytes = write(&batch).unwrap();
        let error = read_from_host(bytes[..bytes.len() - 20].to_vec()).unwrap_err();
        assert!(error.contains("truncated"), "{error}");
        let error = read_from_host(b"not arrow at all".to_vec()).unwrap_err();
        assert!(error.contains("Arrow IPC"), "{error}");
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let error = read(b"not arrow at all".to_vec()).unwrap_err();
        assert!(error.contains("Arrow IPC"), "{error}");
    }
}
