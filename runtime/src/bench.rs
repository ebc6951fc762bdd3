//! The decode benchmark behind `weir bench decode`.
//!
//! It generates a realistic Debezium stream (mixed operations, 17 columns including exact
//! decimals, timestamps, JSON and UUIDs, a MySQL-style source block), with and without the
//! schema envelope, and decodes it on one thread. The baseline, measured in the same run
//! on the same machine, is arrow-json's own reader decoding the after-images of the same
//! events; the figure that matters is the ratio, since these machines are shared and noisy.

use std::fmt::Write as _;
use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::decode::table::TableSpec;
use crate::decode::types::{ColumnDef, parse_declared};
use crate::decode::{Decoder, Format, Outcome, RawRecord};
use crate::envelope::ChangeBatch;
use crate::position::{Checkpoint, Position};

/// A small deterministic generator (xorshift), so every run sees the same data. The
/// integration tests use it too.
pub struct Rng(u64);

impl Rng {
    /// Starts from `seed` (made odd: xorshift never leaves zero).
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

const STATUSES: [&str; 5] = ["new", "paid", "shipped", "delivered", "cancelled"];
const WORDS: [&str; 12] = [
    "fragile",
    "gift",
    "express",
    "leave at door",
    "call first",
    "second floor",
    "weekend",
    "signature",
    "no bell",
    "garage",
    "office",
    "reception",
];

/// The benchmark table's columns and their declared types (`table.columns`).
pub const COLUMNS: [(&str, &str); 17] = [
    ("id", "int64"),
    ("customer_id", "int32"),
    ("status", "string"),
    ("amount", "decimal(12,2)"),
    ("price", "decimal(10,4)"),
    ("quantity", "int32"),
    ("discount", "float64"),
    ("created_at", "timestamp_micros"),
    ("updated_at", "timestamptz"),
    ("ship_date", "date"),
    ("note", "string"),
    ("email", "string"),
    ("is_gift", "boolean"),
    ("version", "int64"),
    ("attributes", "json"),
    ("external_id", "uuid"),
    ("warehouse", "string"),
];

/// The benchmark table, as `table.columns` would declare it for a schemaless stream.
pub fn declared_columns() -> Vec<ColumnDef> {
    COLUMNS
        .iter()
        .map(|(name, ty)| ColumnDef {
            name: name.to_string(),
            ..parse_declared(ty).expect("valid declared type")
        })
        .collect()
}

const ENVELOPE_SCHEMA_FIELDS: &str = r#"[{"type":"int64","optional":false,"field":"id"},{"type":"int32","optional":false,"field":"customer_id"},{"type":"string","optional":false,"name":"io.debezium.data.Enum","version":1,"parameters":{"allowed":"new,paid,shipped,delivered,cancelled"},"field":"status"},{"type":"bytes","optional":false,"name":"org.apache.kafka.connect.data.Decimal","version":1,"parameters":{"scale":"2","connect.decimal.precision":"12"},"field":"amount"},{"type":"bytes","optional":true,"name":"org.apache.kafka.connect.data.Decimal","version":1,"parameters":{"scale":"4","connect.decimal.precision":"10"},"field":"price"},{"type":"int32","optional":false,"field":"quantity"},{"type":"double","optional":true,"field":"discount"},{"type":"int64","optional":false,"name":"io.debezium.time.MicroTimestamp","version":1,"field":"created_at"},{"type":"string","optional":true,"name":"io.debezium.time.ZonedTimestamp","version":1,"field":"updated_at"},{"type":"int32","optional":true,"name":"io.debezium.time.Date","version":1,"field":"ship_date"},{"type":"string","optional":true,"field":"note"},{"type":"string","optional":false,"field":"email"},{"type":"boolean","optional":false,"field":"is_gift"},{"type":"int64","optional":false,"field":"version"},{"type":"string","optional":true,"name":"io.debezium.data.Json","version":1,"field":"attributes"},{"type":"string","optional":true,"name":"io.debezium.data.Uuid","version":1,"field":"external_id"},{"type":"string","optional":true,"field":"warehouse"}]"#;

fn schema_block() -> String {
    format!(
        r#"{{"type":"struct","fields":[{{"type":"struct","fields":{f},"optional":true,"name":"shop.public.orders.Value","field":"before"}},{{"type":"struct","fields":{f},"optional":true,"name":"shop.public.orders.Value","field":"after"}},{{"type":"struct","fields":[{{"type":"string","optional":false,"field":"version"}},{{"type":"string","optional":false,"field":"connector"}},{{"type":"string","optional":false,"field":"name"}},{{"type":"int64","optional":false,"field":"ts_ms"}},{{"type":"string","optional":true,"name":"io.debezium.data.Enum","version":1,"parameters":{{"allowed":"true,last,false,incremental"}},"default":"false","field":"snapshot"}},{{"type":"string","optional":false,"field":"db"}},{{"type":"string","optional":true,"field":"table"}},{{"type":"int64","optional":false,"field":"server_id"}},{{"type":"string","optional":true,"field":"gtid"}},{{"type":"string","optional":false,"field":"file"}},{{"type":"int64","optional":false,"field":"pos"}},{{"type":"int32","optional":false,"field":"row"}}],"optional":false,"name":"io.debezium.connector.mysql.Source","field":"source"}},{{"type":"string","optional":false,"field":"op"}},{{"type":"int64","optional":true,"field":"ts_ms"}}],"optional":false,"name":"shop.public.orders.Envelope","version":1}}"#,
        f = ENVELOPE_SCHEMA_FIELDS
    )
}

fn decimal_base64(unscaled: i64) -> String {
    let bytes = unscaled.to_be_bytes();
    // Minimal two's-complement form, as Kafka Connect writes it.
    let mut start = 0;
    while start < 7
        && ((bytes[start] == 0 && bytes[start + 1] & 0x80 == 0)
            || (bytes[start] == 0xff && bytes[start + 1] & 0x80 != 0))
    {
        start += 1;
    }
    BASE64.encode(&bytes[start..])
}

fn decimal_text(unscaled: i64, scale: u32) -> String {
    let divisor = 10i64.pow(scale);
    format!(
        "{}{}.{:0width$}",
        if unscaled < 0 { "-" } else { "" },
        (unscaled / divisor).abs(),
        (unscaled % divisor).abs(),
        width = scale as usize
    )
}

fn row_image(out: &mut String, rng: &mut Rng, id: u64, version: u64, numeric_decimals: bool) {
    let amount = rng.below(10_000_000) as i64;
    let price = rng.below(100_000_000) as i64;
    let created = 1_700_000_000_000_000i64 + rng.below(30_000_000_000_000) as i64;
    let note_words = 1 + rng.below(6) as usize;
    let mut note = String::new();
    for i in 0..note_words {
        if i > 0 {
            note.push(' ');
        }
        note.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
    let (amount_json, price_json) = if numeric_decimals {
        (decimal_text(amount, 2), decimal_text(price, 4))
    } else {
        (
            format!("\"{}\"", decimal_base64(amount)),
            format!("\"{}\"", decimal_base64(price)),
        )
    };
    let _ = write!(
        out,
        r#"{{"id":{id},"customer_id":{customer},"status":"{status}","amount":{amount_json},"price":{price_json},"quantity":{quantity},"discount":{discount},"created_at":{created},"updated_at":"2026-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{micros:06}Z","ship_date":{ship},"note":"{note}","email":"customer{customer}@example.com","is_gift":{gift},"version":{version},"attributes":"{{\"channel\":\"web\",\"priority\":{priority}}}","external_id":"{u1:08x}-{u2:04x}-4{u3:03x}-8{u4:03x}-{u5:012x}","warehouse":"WH-{wh}"}}"#,
        customer = rng.below(100_000),
        status = STATUSES[rng.below(STATUSES.len() as u64) as usize],
        quantity = 1 + rng.below(20),
        discount = rng.below(5000) as f64 / 10000.0,
        month = 1 + rng.below(12),
        day = 1 + rng.below(28),
        hour = rng.below(24),
        minute = rng.below(60),
        second = rng.below(60),
        micros = rng.below(1_000_000),
        ship = 19_000 + rng.below(2_000),
        gift = rng.below(4) == 0,
        priority = rng.below(5),
        u1 = rng.next_u64() as u32,
        u2 = rng.next_u64() as u16,
        u3 = rng.below(4096),
        u4 = rng.below(4096),
        u5 = rng.next_u64() & 0xffff_ffff_ffff,
        wh = rng.below(40),
    );
}

/// Generated events (NDJSON) and the after-images of the same events (NDJSON).
pub struct Generated {
    pub events: Vec<u8>,
    pub event_count: usize,
    pub after_images: Vec<u8>,
    pub after_count: usize,
    /// The primary key of each event, in order (for Kafka record keys).
    pub ids: Vec<u64>,
}

pub fn generate(count: usize, with_schema: bool, seed: u64) -> Generated {
    generate_over(count, None, with_schema, seed)
}

/// [`generate`], with every change's key drawn from `keys` keys when given (so inserts
/// may meet existing keys, and updates and deletes missing ones) instead of new keys for
/// inserts and earlier ones for the rest. Versions still grow with every change.
pub fn generate_over(count: usize, keys: Option<u64>, with_schema: bool, seed: u64) -> Generated {
    let mut rng = Rng::new(seed);
    let schema = schema_block();
    let mut events = String::with_capacity(count * if with_schema { 4800 } else { 1400 });
    let mut afters = String::with_capacity(count * 600);
    let mut after_count = 0;
    let mut version = 1u64;
    let mut after = String::new();
    let mut before = String::new();
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let roll = rng.below(10);
        let op = match roll {
            0 => "r",
            1..=4 => "c",
            5..=8 => "u",
            _ => "d",
        };
        let id = match keys {
            Some(keys) => rng.below(keys),
            None if op == "c" || op == "r" => i as u64,
            None => rng.below(i.max(1) as u64),
        };
        ids.push(id);
        after.clear();
        before.clear();
        version += 1;
        if op != "d" {
            row_image(&mut after, &mut rng, id, version, !with_schema);
        }
        if op == "u" || op == "d" {
            row_image(&mut before, &mut rng, id, version - 1, !with_schema);
        }
        let payload = format!(
            r#"{{"before":{b},"after":{a},"source":{{"version":"2.7.3.Final","connector":"mysql","name":"shop","ts_ms":{ts},"snapshot":"{snap}","db":"shop","table":"orders","server_id":223344,"gtid":null,"file":"mysql-bin.000042","pos":{pos},"row":0}},"op":"{op}","ts_ms":{ts2}}}"#,
            b = if before.is_empty() { "null" } else { &before },
            a = if after.is_empty() { "null" } else { &after },
            ts = 1_760_000_000_000u64 + i as u64,
            snap = if op == "r" { "true" } else { "false" },
            pos = 4 + i * 311,
            ts2 = 1_760_000_000_100u64 + i as u64,
        );
        if with_schema {
            let _ = writeln!(events, r#"{{"schema":{schema},"payload":{payload}}}"#);
        } else {
            events.push_str(&payload);
            events.push('\n');
        }
        if !after.is_empty() {
            afters.push_str(&after);
            afters.push('\n');
            after_count += 1;
        }
    }
    Generated {
        events: events.into_bytes(),
        event_count: count,
        after_images: afters.into_bytes(),
        after_count,
        ids,
    }
}

fn spec(with_schema: bool, check_table: bool) -> TableSpec {
    TableSpec {
        // A schemaless stream declares its columns; a stream with a schema block needs none.
        declared: if with_schema {
            Vec::new()
        } else {
            declared_columns()
        },
        // As a pipeline decodes: every event's table is checked against `orders`
        // (`check_table: false` measures what that check costs).
        table_check: if check_table {
            crate::decode::table::TableCheck::Named
        } else {
            crate::decode::table::TableCheck::Off
        },
        target: None,
        ..TableSpec::new("orders", &["id"])
    }
}

/// Decodes every line with weir's decoder in batches of `batch` rows; returns the rows.
pub fn decode_with_weir(data: &[u8], with_schema: bool, batch: usize) -> usize {
    let mut rows = 0;
    decode_lines(data, with_schema, true, batch, |b| rows += b.num_rows());
    rows
}

/// [`decode_with_weir`] without checking each event's table (`decode::route`).
pub fn decode_with_weir_unchecked(data: &[u8], with_schema: bool, batch: usize) -> usize {
    let mut rows = 0;
    decode_lines(data, with_schema, false, batch, |b| rows += b.num_rows());
    rows
}

/// The change batches weir's decoder makes of every line, `batch` rows each.
pub fn decode_batches(data: &[u8], with_schema: bool, batch: usize) -> Vec<ChangeBatch> {
    let mut batches = Vec::new();
    decode_lines(data, with_schema, true, batch, |b| batches.push(b));
    batches
}

fn decode_lines(
    data: &[u8],
    with_schema: bool,
    check_table: bool,
    batch: usize,
    mut on_batch: impl FnMut(ChangeBatch),
) {
    let mut decoder = Decoder::new(spec(with_schema, check_table), Format::DebeziumJson);
    let stream: Arc<str> = "file:bench".into();
    let mut offset = 0u64;
    let mut start = 0;
    // Lines are found with memchr, as the file source's buffered reader does.
    for (i, end) in memchr::memchr_iter(b'\n', data).enumerate() {
        let line = &data[start..end];
        start = end + 1;
        if line.is_empty() {
            continue;
        }
        let position = Position::File {
            stream: stream.clone(),
            line: i as u64 + 1,
            offset,
            next: offset + line.len() as u64 + 1,
        };
        offset = position.resume().next as u64;
        let outcome = decoder.decode(
            RawRecord {
                headers: Default::default(),
                key: None,
                value: Some(line),
            },
            &position,
        );
        assert_eq!(outcome, Ok(Outcome::Row), "benchmark events decode");
        if decoder.rows() >= batch {
            on_batch(decoder.finish(Checkpoint::default()));
        }
    }
    let last = decoder.finish(Checkpoint::default());
    if last.num_rows() > 0 {
        on_batch(last);
    }
}

/// Decodes the after-images with arrow-json's reader (schema inferred beforehand, as a user
/// of arrow-json would).
pub fn decode_with_arrow_json(
    data: &[u8],
    schema: &arrow::datatypes::SchemaRef,
    batch: usize,
) -> usize {
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(batch)
        .build_decoder()
        .expect("arrow-json decoder");
    let mut rows = 0;
    let mut rest = data;
    while !rest.is_empty() {
        let consumed = decoder.decode(rest).expect("arrow-json decodes its input");
        rest = &rest[consumed..];
        if let Some(b) = decoder.flush().expect("arrow-json flushes") {
            rows += b.num_rows();
        }
    }
    if let Some(b) = decoder.flush().expect("arrow-json flushes") {
        rows += b.num_rows();
    }
    rows
}

pub struct Measurement {
    pub variant: &'static str,
    pub input_bytes: usize,
    pub events: usize,
    pub weir: Duration,
    pub baseline_bytes: usize,
    pub baseline_rows: usize,
    pub baseline: Duration,
    /// weir without the check of each event's table.
    pub unchecked: Duration,
}

impl Measurement {
    pub fn weir_mb_s(&self) -> f64 {
        self.input_bytes as f64 / 1e6 / self.weir.as_secs_f64()
    }

    pub fn weir_events_s(&self) -> f64 {
        self.events as f64 / self.weir.as_secs_f64()
    }

    pub fn baseline_mb_s(&self) -> f64 {
        self.baseline_bytes as f64 / 1e6 / self.baseline.as_secs_f64()
    }

    pub fn baseline_rows_s(&self) -> f64 {
        self.baseline_rows as f64 / self.baseline.as_secs_f64()
    }

    /// weir's MB/s over the baseline's MB/s.
    pub fn ratio(&self) -> f64 {
        self.weir_mb_s() / self.baseline_mb_s()
    }

    /// weir's time with the table check over its time without.
    pub fn check_cost(&self) -> f64 {
        self.weir.as_secs_f64() / self.unchecked.as_secs_f64()
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Which event shapes to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    WithSchema,
    WithoutSchema,
    Both,
}

/// Runs the variants; each side is timed `repeat` times, interleaved, and the median kept.
pub fn run_decode_bench(
    events: usize,
    repeat: usize,
    batch: usize,
    variant: Variant,
) -> Vec<Measurement> {
    let mut out = Vec::new();
    for (name, with_schema) in [("with schema", true), ("without schema", false)] {
        if (variant == Variant::WithSchema && !with_schema)
            || (variant == Variant::WithoutSchema && with_schema)
        {
            continue;
        }
        let data = generate(events, with_schema, 42);
        let schema = Arc::new(
            arrow::json::reader::infer_json_schema(Cursor::new(&data.after_images), Some(10_000))
                .expect("infer the after-image schema")
                .0,
        );
        // Warm up caches and the allocator.
        decode_with_weir(&data.events, with_schema, batch);
        decode_with_arrow_json(&data.after_images, &schema, batch);
        let mut weir_times = Vec::new();
        let mut baseline_times = Vec::new();
        let mut unchecked_times = Vec::new();
        for _ in 0..repeat.max(1) {
            let t = Instant::now();
            let rows = decode_with_weir(&data.events, with_schema, batch);
            weir_times.push(t.elapsed());
            assert_eq!(rows, data.event_count);
            let t = Instant::now();
            let rows = decode_with_weir_unchecked(&data.events, with_schema, batch);
            unchecked_times.push(t.elapsed());
            assert_eq!(rows, data.event_count);
            let t = Instant::now();
            let rows = decode_with_arrow_json(&data.after_images, &schema, batch);
            baseline_times.push(t.elapsed());
            assert_eq!(rows, data.after_count);
        }
        out.push(Measurement {
            variant: name,
            input_bytes: data.events.len(),
            events: data.event_count,
            weir: median(weir_times),
            baseline_bytes: data.after_images.len(),
            baseline_rows: data.after_count,
            baseline: median(baseline_times),
            unchecked: median(unchecked_times),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_events_decode_and_decimals_match_both_encodings() {
        assert_eq!(decimal_base64(12345), BASE64.encode([0x30, 0x39]));
        assert_eq!(decimal_base64(-1), BASE64.encode([0xff]));
        assert_eq!(decimal_base64(128), BASE64.encode([0x00, 0x80]));
        assert_eq!(decimal_text(12345, 2), "123.45");
        for with_schema in [true, false] {
            let data = generate(500, with_schema, 7);
            assert_eq!(decode_with_weir(&data.events, with_schema, 128), 500);
        }
        // Same seed, same rows: the two encodings decode to the same after-images.
        let a = generate(50, true, 3);
        let b = generate(50, false, 3);
        let render = |data: &Generated, with_schema: bool| {
            let mut decoder = Decoder::new(spec(with_schema, true), Format::DebeziumJson);
            for line in data.events.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let p = Position::File {
                    stream: "file:x".into(),
                    line: 0,
                    offset: 0,
                    next: 0,
                };
                decoder
                    .decode(
                        RawRecord {
                            headers: Default::default(),
                            key: None,
                            value: Some(line),
                        },
                        &p,
                    )
                    .unwrap();
            }
            let batch = decoder.finish(Checkpoint::default());
            (0..batch.num_rows())
                .map(|i| {
                    let mut s = String::new();
                    crate::encode::write_struct_row(&mut s, batch.after(), i);
                    s
                })
                .collect::<Vec<_>>()
        };
        let with = render(&a, true);
        let without = render(&b, false);
        assert_eq!(with.len(), without.len());
        for (x, y) in with.iter().zip(&without) {
            let x: serde_json::Value = serde_json::from_str(x).unwrap();
            let y: serde_json::Value = serde_json::from_str(y).unwrap();
            assert_eq!(x, y);
        }
    }
}
