//! A Parquet file is checked before DataFusion reads it, because the parquet reader trusts
//! sizes the file claims: it reserves memory for as many row groups as the footer's list
//! header says (2^31 of them, from a 100-byte file), for as many bytes as a page header's
//! statistics claim, and decompresses a page into as much memory as its header's
//! uncompressed size (up to 2 GiB each, real memory when the data is a zstd bomb).
//!
//! So, before a file is registered:
//! - the footer is at most [`MAX_FOOTER`] bytes and lies within the file; every list, set,
//!   map and byte string in it claims no more elements or bytes than the footer has left,
//!   their elements add up to at most [`MAX_ELEMENTS`], the row groups to at most 32,767
//!   (parquet numbers them with 16 bits), nested at most 64 deep (the footer is walked as
//!   the parquet reader walks it: a boolean in a list takes no byte there, as in the
//!   reader);
//! - every column chunk lies within the file, and each page header in it passes the same
//!   walk, within the chunk, and claims a compressed size within the chunk and an
//!   uncompressed size of at most [`MAX_PAGE_BYTES`].
//!
//! Only headers are read (a few KiB per page), not the pages. Encrypted files (footer
//! magic `PARE`) are refused: weir reads none.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The largest page weir decompresses: far above the 1 MiB writers default to, and the
/// bound on what one page can make the reader hold.
pub const MAX_PAGE_BYTES: i64 = 512 << 20;

/// The largest footer read: far beyond a footer of thousands of columns and row groups.
pub const MAX_FOOTER: u64 = 128 << 20;

/// The most list, set and map elements a footer or page header may hold in all: each
/// becomes a structure of up to a few hundred bytes in the reader.
pub const MAX_ELEMENTS: usize = 4 << 20;

/// The deepest nesting of Thrift structs and containers accepted.
const MAX_DEPTH: usize = 64;

/// Bytes read for a page header first; a header that is longer is read again whole.
const HEADER_READ: usize = 16 << 10;
/// The longest page header accepted (statistics with long minimum and maximum values).
const MAX_HEADER: usize = 1 << 20;

/// Checks one file; the error says what is wrong and where.
pub fn check_file(path: &Path) -> Result<(), String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let length = file.metadata().map_err(|e| e.to_string())?.len();
    if length < 12 {
        return Err(format!("{length} bytes is too short for a Parquet file"));
    }
    let mut tail = [0u8; 8];
    file.read_exact_at(&mut tail, length - 8)
        .map_err(|e| e.to_string())?;
    match &tail[4..] {
        b"PAR1" => {}
        b"PARE" => return Err("an encrypted Parquet file, which weir does not read".into()),
        _ => return Err("not a Parquet file (no PAR1 at its end)".into()),
    }
    let footer_length = u64::from(u32::from_le_bytes(tail[..4].try_into().unwrap()));
    if footer_length > length - 12 || footer_length > MAX_FOOTER {
        return Err(format!(
            "the footer claims {footer_length} bytes in a file of {length} (weir reads \
             footers of at most {MAX_FOOTER} bytes)"
        ));
    }
    let mut footer = vec![0u8; footer_length as usize];
    file.read_exact_at(&mut footer, length - 8 - footer_length)
        .map_err(|e| e.to_string())?;
    // Field 4 of the file's metadata is the list of row groups.
    Thrift::new(&footer)
        .walk_struct(0, &mut |id, kind, thrift| match (id, kind) {
            (4, 9) => {
                let groups = thrift.peek_list_size()?;
                if groups > i16::MAX as usize {
                    return Err(Walk::Malformed(format!(
                        "{groups} row groups, more than parquet numbers (32,767)"
                    )));
                }
                Ok(false)
            }
            _ => Ok(false),
        })
        .map_err(|e| format!("a malformed footer: {e}"))?;
    // The footer is sound: parquet's own reader can parse it without a runaway claim.
    let metadata = parquet::file::metadata::ParquetMetaDataReader::decode_metadata(&footer)
        .map_err(|e| format!("a malformed footer: {e}"))?;
    for (g, group) in metadata.row_groups().iter().enumerate() {
        for (c, column) in group.columns().iter().enumerate() {
            let (start, size) = column.byte_range();
            let end = start
                .checked_add(size)
                .filter(|&end| end <= length)
                .ok_or_else(|| {
                    format!("column chunk {c} of row group {g} lies past the end of the file")
                })?;
            check_pages(&file, start, end)
                .map_err(|e| format!("column chunk {c} of row group {g}: {e}"))?;
        }
    }
    Ok(())
}

/// Walks the page headers of the chunk at `start..end`.
fn check_pages(file: &File, start: u64, end: u64) -> Result<(), String> {
    let mut at = start;
    let mut buffer = Vec::new();
    while at < end {
        let left = (end - at) as usize;
        let mut read = HEADER_READ.min(left);
        let (header, sizes) = loop {
            buffer.resize(read, 0);
            file.read_exact_at(&mut buffer, at)
                .map_err(|e| e.to_string())?;
            let mut thrift = Thrift::new(&buffer);
            let mut sizes = [None::<i64>; 2];
            match thrift.walk_struct(0, &mut |id, kind, thrift| match (id, kind) {
                (2 | 3, I32) => {
                    sizes[id as usize - 2] = Some(thrift.zigzag()?);
                    Ok(true)
                }
                _ => Ok(false),
            }) {
                Ok(()) => break (thrift.at as u64, sizes),
                Err(Walk::Short) if read < left.min(MAX_HEADER) => {
                    read = (read * 8).min(left).min(MAX_HEADER);
                }
                Err(e) => return Err(format!("the page header at byte {at}: {e}")),
            }
        };
        let [Some(uncompressed), Some(compressed)] = sizes else {
            return Err(format!("the page header at byte {at} gives no page sizes"));
        };
        if !(0..=MAX_PAGE_BYTES).contains(&uncompressed) {
            return Err(format!(
                "the page at byte {at} claims {uncompressed} bytes uncompressed; weir reads \
                 pages of at most {MAX_PAGE_BYTES} bytes"
            ));
        }
        let body = at + header;
        if compressed < 0 || body + compressed as u64 > end {
            return Err(format!(
                "the page at byte {at} claims {compressed} bytes, past the end of its chunk"
            ));
        }
        at = body + compressed as u64;
    }
    Ok(())
}

/// Thrift compact protocol types.
const I32: u8 = 5;

/// Why a walk stopped.
#[derive(Debug)]
enum Walk {
    /// The bytes ended first.
    Short,
    Malformed(String),
}

impl std::fmt::Display for Walk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Walk::Short => f.write_str("it ends in the middle of a value"),
            Walk::Malformed(what) => f.write_str(what),
        }
    }
}

/// A walk over Thrift compact-protocol bytes that checks every size it meets against
/// the bytes left, without building anything.
struct Thrift<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Container elements met so far.
    elements: usize,
}

impl<'a> Thrift<'a> {
    fn new(bytes: &'a [u8]) -> Thrift<'a> {
        Thrift {
            bytes,
            at: 0,
            elements: 0,
        }
    }

    /// The size of the list that starts here, without moving.
    fn peek_list_size(&mut self) -> Result<usize, Walk> {
        let at = self.at;
        let header = self.byte()?;
        let size = match header >> 4 {
            15 => self.varint()? as usize,
            small => usize::from(small),
        };
        self.at = at;
        Ok(size)
    }

    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn byte(&mut self) -> Result<u8, Walk> {
        let byte = *self.bytes.get(self.at).ok_or(Walk::Short)?;
        self.at += 1;
        Ok(byte)
    }

    fn varint(&mut self) -> Result<u64, Walk> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift.min(63);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Walk::Malformed("a varint of more than 10 bytes".into()))
    }

    fn zigzag(&mut self) -> Result<i64, Walk> {
        let value = self.varint()?;
        Ok((value >> 1) as i64 ^ -((value & 1) as i64))
    }

    /// A count of elements (or bytes) that must fit in what is left.
    fn count(&mut self, what: &str) -> Result<usize, Walk> {
        let count = self.varint()?;
        if count > self.left() as u64 {
            return Err(Walk::Malformed(format!(
                "a {what} claims {count} elements with {} bytes left",
                self.left()
            )));
        }
        Ok(count as usize)
    }

    /// Counts `n` container elements against [`MAX_ELEMENTS`].
    fn elements(&mut self, n: usize) -> Result<(), Walk> {
        self.elements += n;
        if self.elements > MAX_ELEMENTS {
            return Err(Walk::Malformed(format!(
                "more than {MAX_ELEMENTS} list, set and map elements"
            )));
        }
        Ok(())
    }

    fn skip(&mut self, kind: u8, depth: usize) -> Result<(), Walk> {
        if depth > MAX_DEPTH {
            return Err(Walk::Malformed(format!("nested deeper than {MAX_DEPTH}")));
        }
        match kind {
            1 | 2 => Ok(()), // a boolean field's value is in its header
            3 => self.byte().map(drop),
            4..=6 => self.varint().map(drop),
            7 => self.advance(8),
            8 => {
                let length = self.count("byte string")?;
                self.advance(length)
            }
            9 | 10 => {
                let header = self.byte()?;
                let element = header & 0x0f;
                let size = match header >> 4 {
                    15 => self.count("list")?,
                    small => usize::from(small),
                };
                self.elements(size)?;
                // A boolean element takes no byte in parquet's reader (it skips them as
                // it skips boolean fields), so none here either: the two walks must agree.
                if !matches!(element, 1 | 2) {
                    for _ in 0..size {
                        self.skip(element, depth + 1)?;
                    }
                }
                Ok(())
            }
            11 => {
                let size = self.count("map")?;
                if size == 0 {
                    return Ok(());
                }
                self.elements(size)?;
                let kinds = self.byte()?;
                for _ in 0..size {
                    self.skip(kinds >> 4, depth + 1)?;
                    self.skip(kinds & 0x0f, depth + 1)?;
                }
                Ok(())
            }
            12 => self.walk_struct(depth + 1, &mut |_, _, _| Ok(false)),
            13 => self.advance(16), // uuid
            other => Err(Walk::Malformed(format!("unknown Thrift type {other}"))),
        }
    }

    fn advance(&mut self, n: usize) -> Result<(), Walk> {
        if n > self.left() {
            return Err(Walk::Short);
        }
        self.at += n;
        Ok(())
    }

    /// Walks a struct's fields up to its stop byte; `field(id, type, self)` may read a
    /// field's value itself (returning true), else it is skipped.
    fn walk_struct(
        &mut self,
        depth: usize,
        field: &mut dyn FnMut(i16, u8, &mut Self) -> Result<bool, Walk>,
    ) -> Result<(), Walk> {
        let mut id: i16 = 0;
        loop {
            let header = self.byte()?;
            if header == 0 {
                return Ok(());
            }
            let kind = header & 0x0f;
            id = match header >> 4 {
                0 => self.zigzag()? as i16,
                delta => id.wrapping_add(i16::from(delta)),
            };
            if depth > 0 || !field(id, kind, self)? {
                self.skip(kind, depth)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};

    use super::*;

    /// A small valid Parquet file's bytes.
    fn valid() -> Vec<u8> {
        let batch = RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(Int64Array::from_iter_values(0..100)) as ArrayRef,
            ),
            (
                "name",
                Arc::new(StringArray::from_iter_values(
                    (0..100).map(|i| format!("n{i}")),
                )),
            ),
        ])
        .unwrap();
        let mut bytes = Vec::new();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(&mut bytes, batch.schema(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        bytes
    }

    fn check_bytes(bytes: &[u8]) -> Result<(), String> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(bytes).unwrap();
        check_file(file.path())
    }

    /// The footer's offset in `bytes`, and the offset (in the footer) of the list header
    /// of its field 4, the row groups.
    fn row_groups_header(bytes: &[u8]) -> (usize, usize) {
        let length =
            u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap());
        let start = bytes.len() - 8 - length as usize;
        let mut thrift = Thrift::new(&bytes[start..bytes.len() - 8]);
        let mut at = None;
        let _ = thrift.walk_struct(0, &mut |id, _, t| {
            if id == 4 {
                at = Some(t.at);
                return Err(Walk::Short);
            }
            Ok(false)
        });
        (start, at.expect("field 4"))
    }

    #[test]
    fn a_valid_file_passes() {
        check_bytes(&valid()).unwrap();
    }

    #[test]
    fn a_footer_claiming_two_billion_row_groups_is_refused() {
        let bytes = valid();
        let (start, header) = row_groups_header(&bytes);
        let mut footer = bytes[start..bytes.len() - 8].to_vec();
        // One row group (0x1c) becomes 2^31 - 1 of them (0xfc, then the count).
        footer.splice(header..header + 1, [0xfc, 0xff, 0xff, 0xff, 0xff, 0x07]);
        let mut evil = bytes[..start].to_vec();
        evil.extend(&footer);
        evil.extend((footer.len() as u32).to_le_bytes());
        evil.extend(b"PAR1");
        let error = check_bytes(&evil).unwrap_err();
        assert!(error.contains("2147483647 row groups"), "{error}");
    }

    #[test]
    fn a_page_claiming_a_gigabyte_is_refused() {
        // A page header: type 0 (i32), uncompressed 2^30, compressed 4; then 4 bytes.
        let mut page = vec![0x15, 0x00, 0x15];
        let mut zigzag = (1u64 << 30) << 1;
        while zigzag >= 0x80 {
            page.push((zigzag as u8) | 0x80);
            zigzag >>= 7;
        }
        page.push(zigzag as u8);
        page.extend([0x15, 0x08, 0x00, 1, 2, 3, 4]);
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&page).unwrap();
        let error = check_pages(file.as_file(), 0, page.len() as u64).unwrap_err();
        assert!(
            error.contains("claims 1073741824 bytes uncompressed"),
            "{error}"
        );
        // The same page claiming 4 bytes passes.
        let fine = [0x15, 0x00, 0x15, 0x08, 0x15, 0x08, 0x00, 1, 2, 3, 4];
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&fine).unwrap();
        check_pages(file.as_file(), 0, fine.len() as u64).unwrap();
    }

    #[test]
    fn claims_past_the_bytes_are_refused() {
        // A struct whose field 1 is a list claiming 2^31 - 1 structs, in 8 bytes.
        let list = [0x19, 0xfc, 0xff, 0xff, 0xff, 0xff, 0x07, 0x00];
        let error = Thrift::new(&list)
            .walk_struct(0, &mut |_, _, _| Ok(false))
            .unwrap_err();
        assert!(
            error.to_string().contains("claims 2147483647 elements"),
            "{error}"
        );
        // Field 1, a byte string of 2^40 bytes.
        let binary = [0x18, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20, 0x00];
        assert!(
            Thrift::new(&binary)
                .walk_struct(0, &mut |_, _, _| Ok(false))
                .is_err()
        );
        // Structs nested 100 deep.
        let mut deep = vec![0x1c; 100];
        deep.extend([0; 101]);
        let error = Thrift::new(&deep)
            .walk_struct(0, &mut |_, _, _| Ok(false))
            .unwrap_err();
        assert!(error.to_string().contains("deeper"), "{error}");
        // A list of three booleans takes no bytes, as parquet's reader skips it: field 2
        // (i32 = 7) follows at once.
        assert_eq!(i32_field(&[0x19, 0x31, 0x15, 0x0e, 0x00], 2), Some(7));
        // A well-formed struct: i32 field 1 = -3, binary field 2 = "ab", stop.
        assert_eq!(
            i32_field(&[0x15, 0x05, 0x18, 0x02, b'a', b'b', 0x00], 1),
            Some(-3)
        );
    }

    /// The i32 field `wanted` of the struct in `bytes`, read by the walk.
    fn i32_field(bytes: &[u8], wanted: i16) -> Option<i64> {
        let mut seen = None;
        Thrift::new(bytes)
            .walk_struct(0, &mut |id, kind, t| {
                if id == wanted && kind == I32 {
                    seen = Some(t.zigzag()?);
                    return Ok(true);
                }
                Ok(false)
            })
            .unwrap();
        seen
    }
}
