//! A mutation fuzzer for [`super::read`]: valid change batches, written as IPC and then
//! damaged (bits flipped, lengths and offsets set to edge values, messages cut or
//! repeated), read back with the host's checks. Every outcome must be a valid batch or an
//! error; an abort fails the run, and so does a panic in batch decoding (the checks before
//! it are meant to leave arrow nothing to panic on). Panics in arrow's schema conversion
//! are expected and counted: they are caught and become errors.
//!
//! `cargo test -p weir-envelope fuzz` runs a fixed number of cases (deterministic).
//! `WEIR_FUZZ_SECONDS=60 cargo test --release -p weir-envelope fuzz -- --nocapture` runs
//! for that long from a seed taken from the clock (`WEIR_FUZZ_SEED` to repeat one) and
//! prints what it saw; docs/plugins.md records the last long run.

use std::time::{Duration, Instant};

use super::tests::{same_schema, sample};
use super::{MAX_LENGTH, read};
use crate::ipc::{BatchLayout, batch_layout, write};

/// xorshift64*: small, and repeatable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Values that have broken readers: signs, widths, lengths near a body's.
fn edge(rng: &mut Rng, body: usize) -> i64 {
    let picks = [
        0,
        1,
        -1,
        7,
        8,
        63,
        64,
        body as i64,
        body as i64 + 1,
        body as i64 - 1,
        MAX_LENGTH,
        MAX_LENGTH + 1,
        1 << 40,
        1 << 50,
        i64::MAX,
        i64::MIN,
    ];
    picks[rng.below(picks.len())]
}

fn mutate(rng: &mut Rng, valid: &[u8], layout: &BatchLayout) -> Vec<u8> {
    let mut bytes = valid.to_vec();
    let BatchLayout {
        metadata: meta,
        body,
        buffers,
        nodes,
    } = layout;
    for _ in 0..1 + rng.below(3) {
        match rng.below(6) {
            // A buffer's offset or length, or a field node's length or null count.
            0 | 1 => {
                let slots = if rng.below(2) == 0 { buffers } else { nodes };
                let at = slots[rng.below(slots.len())] + 8 * rng.below(2);
                let value = edge(rng, body.len());
                if let Some(word) = bytes.get_mut(at..at + 8) {
                    word.copy_from_slice(&value.to_le_bytes());
                }
            }
            // Bits anywhere in the batch's metadata.
            2 => {
                let at = meta.start + rng.below(meta.len());
                if let Some(byte) = bytes.get_mut(at) {
                    *byte ^= 1 << rng.below(8);
                }
            }
            // Bits anywhere at all (the schema message included).
            3 => {
                let at = rng.below(bytes.len());
                if let Some(byte) = bytes.get_mut(at) {
                    *byte ^= 1 << rng.below(8);
                }
            }
            // Cut the stream short.
            4 => bytes.truncate(rng.below(bytes.len())),
            // Repeat the batch message (a second batch, maybe past the row limit).
            _ => {
                let message = valid[meta.start - 8..body.end].to_vec();
                let at = body.end.min(bytes.len());
                bytes.splice(at..at, message);
            }
        }
    }
    bytes
}

#[test]
fn fuzz_the_untrusted_reader() {
    let seconds: Option<f64> = std::env::var("WEIR_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok());
    let seed = std::env::var("WEIR_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(match seconds {
            Some(_) => {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            }
            None => 0x5EED_CAFE,
        });
    let mut rng = Rng(seed);
    let cases: Vec<_> = [1, 3, 64, 200]
        .into_iter()
        .map(|rows| {
            let batch = sample(rows);
            let bytes = write(&batch).unwrap();
            let layout = batch_layout(&bytes).unwrap();
            (bytes, batch.schema(), rows, layout)
        })
        .collect();
    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs_f64(s));
    let (mut runs, mut read_ok, mut refused, mut caught) = (0u64, 0u64, 0u64, 0u64);
    let mut schema_panics = 0u64;
    loop {
        match deadline {
            Some(deadline) if Instant::now() >= deadline => break,
            None if runs >= 20_000 => break,
            _ => {}
        }
        let (valid, schema, rows, layout) = &cases[rng.below(cases.len())];
        let bytes = mutate(&mut rng, valid, layout);
        // Half the cases with the host's own rule (the schema it expects), half with any
        // schema at all, which lets the damage reach more of arrow's decoder.
        let strict = same_schema(schema);
        let any = |_: &arrow_schema::Schema| Ok(());
        let check: &dyn Fn(&arrow_schema::Schema) -> Result<(), String> =
            if rng.below(2) == 0 { &strict } else { &any };
        match read(bytes, check, 2 * rows) {
            Ok(batch) => {
                read_ok += 1;
                // What comes back is a valid batch arrow can work with.
                assert!(batch.num_rows() <= 2 * rows);
                arrow_select::concat::concat_batches(&batch.schema(), [&batch]).unwrap();
            }
            Err(e) if e.starts_with("the Arrow IPC stream broke the reader") => {
                println!("{e}");
                caught += 1
            }
            Err(e) => {
                refused += 1;
                schema_panics += u64::from(e.starts_with("an unreadable schema message"));
            }
        }
        runs += 1;
    }
    println!(
        "fuzzed the untrusted IPC reader: {runs} streams from seed {seed}: {read_ok} read, \
         {refused} refused with a reason ({schema_panics} of them schemas arrow's conversion \
         panicked on), {caught} panics in batch decoding caught"
    );
    assert_eq!(runs, read_ok + refused + caught);
    // The checks before decoding leave arrow's batch decoder nothing it panics on.
    assert_eq!(caught, 0, "panics in batch decoding (printed above)");
    assert!(refused > runs / 2, "most damaged streams are refused");
}
