//! Arrow IPC streams across the plugin boundary: one schema message, then record batches.

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_ipc::reader::StreamDecoder;
use arrow_ipc::writer::StreamWriter;

/// Reads a stream holding one batch (several are concatenated; none is an empty batch).
/// The batch's buffers point into `bytes`: nothing is copied.
pub fn read(bytes: Vec<u8>) -> Result<RecordBatch, String> {
    decode(bytes, StreamDecoder::new())
}

/// [`read`] without validating the arrays (offsets in range, text valid UTF-8), for a
/// stream weir's host wrote with [`write`] from arrays it built and checked: the plugin
/// side of the boundary reads every batch this way. The host never uses it on what a
/// plugin returns.
pub fn read_from_host(bytes: Vec<u8>) -> Result<RecordBatch, String> {
    // SAFETY: the stream comes from `write` over valid arrays (the host's), so skipping
    // validation cannot admit an invalid array; and the reader runs inside the plugin's
    // sandbox, whose memory is all it could reach.
    let decoder = unsafe { StreamDecoder::new().with_skip_validation(true) };
    decode(bytes, decoder)
}

fn decode(bytes: Vec<u8>, mut decoder: StreamDecoder) -> Result<RecordBatch, String> {
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
    match batches.len() {
        1 => Ok(batches.pop().expect("one batch")),
        0 => Ok(RecordBatch::new_empty(schema)),
        _ => arrow_select::concat::concat_batches(&schema, &batches).map_err(|e| e.to_string()),
    }
}

/// Writes one batch as a stream.
pub fn write(batch: &RecordBatch) -> Result<Vec<u8>, String> {
    // The bytes the batch's values take, not its buffers' capacity: a batch read
    // zero-copy has every buffer pointing into one allocation, whose whole size each of
    // them would report.
    let size: usize = batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
        .sum();
    let mut out = Vec::with_capacity(size + 1024);
    let mut writer = StreamWriter::try_new(&mut out, &batch.schema()).map_err(|e| e.to_string())?;
    writer.write(batch).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    drop(writer);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int64Array, StringArray};

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
    fn garbage_is_refused_with_a_reason() {
        let error = read(b"not arrow at all".to_vec()).unwrap_err();
        assert!(error.contains("Arrow IPC"), "{error}");
    }
}
