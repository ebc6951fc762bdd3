//! Arrow IPC streams across the plugin boundary: one schema message, then record batches.

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_ipc::reader::StreamDecoder;
use arrow_ipc::writer::StreamWriter;

/// Reads a stream holding one batch (several are concatenated; none is an empty batch).
/// The batch's buffers point into `bytes`: nothing is copied.
pub fn read(bytes: Vec<u8>) -> Result<RecordBatch, String> {
    let mut buffer = Buffer::from_vec(bytes);
    let mut decoder = StreamDecoder::new();
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
    let mut out = Vec::with_capacity(batch.get_array_memory_size() + 1024);
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
    fn garbage_is_refused_with_a_reason() {
        let error = read(b"not arrow at all".to_vec()).unwrap_err();
        assert!(error.contains("Arrow IPC"), "{error}");
    }
}
