//! hostile: a transform written to break the plugin contract, for weir's hardening tests
//! (`tests/hostile.rs`, `tests/plugin_deadlines.rs`). Its `mode` says how it attacks:
//!
//! Malformed output, each a different way to make the host's reader misbehave:
//! - `offset-past-body`: a valid stream whose first non-empty buffer's offset points past
//!   the message body.
//! - `lz4-bomb`: a batch flagged LZ4-compressed whose first buffer claims 2^50 bytes
//!   uncompressed.
//! - `wrong-lengths`: the last column's field node claims more rows than the batch has.
//! - `invalid-utf8`: `after.name` holds bytes that are not UTF-8.
//! - `retyped-key-digits`: the key column `id` as text of its digits (`"2001"`).
//! - `retyped-key-text`: the key column `id` as text that is no number (`"k2001"`).
//!
//! Behaviour:
//! - `identity`: the batch unchanged (the baseline of the memory measurements).
//! - `sleep`: sleeps in a WASI clock call for `sleep_ms` (default: forever).
//! - `huge-error`: fails the batch with an error of `error_bytes` bytes (default 256 KiB).
//! - `huge-row-errors`: refuses every row with its own message of `error_bytes` bytes.
//! - `trap`: panics, which traps.
//!
//! With `id: N`, a mode attacks only batches holding a row whose `id` is N and passes the
//! others unchanged. `init_busy_ms` makes `init` spin (not sleep) that long first, and
//! `init_forever: true` makes it never return.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow_buffer::{Buffer, OffsetBuffer};
use arrow_ipc::CompressionType;
use arrow_ipc::writer::{IpcWriteOptions, StreamWriter};
use serde::Deserialize;
use weir_plugin::envelope::{AFTER, BEFORE, image, replace_field, with_images};
use weir_plugin::{ipc, typed_config};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    mode: Mode,
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    sleep_ms: Option<u64>,
    #[serde(default = "default_error_bytes")]
    error_bytes: usize,
    #[serde(default)]
    init_busy_ms: u64,
    #[serde(default)]
    init_forever: bool,
}

fn default_error_bytes() -> usize {
    256 << 10
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Mode {
    Identity,
    OffsetPastBody,
    Lz4Bomb,
    WrongLengths,
    InvalidUtf8,
    RetypedKeyDigits,
    RetypedKeyText,
    Sleep,
    HugeError,
    HugeRowErrors,
    Trap,
}

/// What one call returns: the output stream, source rows and row errors.
pub struct Reply {
    pub batch: Vec<u8>,
    pub source_rows: Vec<u32>,
    pub errors: Vec<(u32, String)>,
}

impl Reply {
    fn rows(batch: Vec<u8>) -> Reply {
        Reply {
            batch,
            source_rows: Vec::new(),
            errors: Vec::new(),
        }
    }
}

/// `init`: parses the config, after spinning as asked.
pub fn init(config: &str) -> Result<Config, String> {
    let config: Config = typed_config(&weir_plugin::parse_config(config)?)?;
    let started = std::time::Instant::now();
    while config.init_forever
        || started.elapsed() < std::time::Duration::from_millis(config.init_busy_ms)
    {
        std::hint::spin_loop();
    }
    Ok(config)
}

/// `transform`: one batch, attacked as the config says.
pub fn transform(config: &Config, input: Vec<u8>) -> Result<Reply, String> {
    let batch = ipc::read_from_host(input.clone())?;
    if let Some(id) = config.id
        && !has_id(&batch, id)?
    {
        return Ok(Reply::rows(input));
    }
    match config.mode {
        Mode::Identity => Ok(Reply::rows(input)),
        Mode::OffsetPastBody => {
            let mut bytes = input;
            let layout = ipc::batch_layout(&bytes)?;
            let slot = *layout
                .buffers
                .iter()
                .find(|&&slot| ipc::word_at(&bytes, slot + 8) > 0)
                .ok_or("no buffer to misplace")?;
            ipc::put_word(&mut bytes, slot, (layout.body.len() + 4096) as i64);
            Ok(Reply::rows(bytes))
        }
        Mode::Lz4Bomb => {
            let options = IpcWriteOptions::default()
                .try_with_compression(Some(CompressionType::LZ4_FRAME))
                .map_err(|e| e.to_string())?;
            let mut bytes = Vec::new();
            {
                let mut writer =
                    StreamWriter::try_new_with_options(&mut bytes, &batch.schema(), options)
                        .map_err(|e| e.to_string())?;
                writer.write(&batch).map_err(|e| e.to_string())?;
                writer.finish().map_err(|e| e.to_string())?;
            }
            let layout = ipc::batch_layout(&bytes)?;
            let slot = *layout
                .buffers
                .iter()
                .find(|&&slot| ipc::word_at(&bytes, slot + 8) >= 8)
                .ok_or("no compressed buffer")?;
            let at = layout.body.start + ipc::word_at(&bytes, slot) as usize;
            ipc::put_word(&mut bytes, at, 1 << 50);
            Ok(Reply::rows(bytes))
        }
        Mode::WrongLengths => {
            let mut bytes = input;
            let layout = ipc::batch_layout(&bytes)?;
            let slot = *layout.nodes.last().ok_or("no field nodes")?;
            let length = ipc::word_at(&bytes, slot);
            ipc::put_word(&mut bytes, slot, length + 3);
            Ok(Reply::rows(bytes))
        }
        Mode::InvalidUtf8 => {
            let after = image(&batch, AFTER)?;
            let rows = after.len();
            let offsets: Vec<i32> = (0..=rows as i32).map(|i| i * 2).collect();
            let values = Buffer::from_vec([0xffu8, 0xfe].repeat(rows));
            // SAFETY: deliberately not UTF-8: the point is to send the host invalid text.
            let names = unsafe {
                StringArray::new_unchecked(OffsetBuffer::new(offsets.into()), values, None)
            };
            let after = replace_field(after, "name", Arc::new(names))?;
            let before = image(&batch, BEFORE)?;
            let before = replace_field(
                before,
                "name",
                after.column_by_name("name").unwrap().clone(),
            )?;
            let out = with_images(&batch, before, after)?;
            Ok(Reply::rows(ipc::write(&out)?))
        }
        Mode::RetypedKeyDigits | Mode::RetypedKeyText => {
            let prefix = if config.mode == Mode::RetypedKeyText {
                "k"
            } else {
                ""
            };
            let retype = |name: &str| -> Result<_, String> {
                let rows = image(&batch, name)?;
                let ids = rows
                    .column_by_name("id")
                    .ok_or("no `id` column")?
                    .as_primitive_opt::<Int64Type>()
                    .ok_or("`id` is not int64")?;
                let text: StringArray = ids
                    .iter()
                    .map(|v| v.map(|v| format!("{prefix}{v}")))
                    .collect();
                replace_field(rows, "id", Arc::new(text) as ArrayRef)
            };
            let out = with_images(&batch, retype(BEFORE)?, retype(AFTER)?)?;
            Ok(Reply::rows(ipc::write(&out)?))
        }
        Mode::Sleep => {
            let millis = config.sleep_ms.unwrap_or(u64::MAX);
            std::thread::sleep(std::time::Duration::from_millis(millis));
            Ok(Reply::rows(input))
        }
        Mode::HugeError => Err("E".repeat(config.error_bytes)),
        Mode::HugeRowErrors => {
            let errors = (0..batch.num_rows() as u32)
                .map(|row| (row, format!("{row}:{}", "R".repeat(config.error_bytes))))
                .collect();
            let none = ipc::write(&batch.slice(0, 0))?;
            Ok(Reply {
                batch: none,
                source_rows: Vec::new(),
                errors,
            })
        }
        Mode::Trap => panic!("hostile: trapping as asked"),
    }
}

/// Whether some row's `id` (in `after`, or `before` for a delete) is `id`.
fn has_id(batch: &RecordBatch, id: i64) -> Result<bool, String> {
    for name in [AFTER, BEFORE] {
        let rows = image(batch, name)?;
        if let Some(ids) = rows
            .column_by_name("id")
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            && ids.iter().any(|v| v == Some(id))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "transform",
    });

    use std::cell::RefCell;

    use weir::plugin::types::RowError;

    thread_local! {
        static CONFIG: RefCell<Option<super::Config>> = const { RefCell::new(None) };
    }

    struct Hostile;

    impl Guest for Hostile {
        fn init(config: String) -> Result<(), String> {
            let config = super::init(&config)?;
            CONFIG.with_borrow_mut(|c| *c = Some(config));
            Ok(())
        }

        fn transform(batch: Vec<u8>) -> Result<Transformed, String> {
            CONFIG.with_borrow(|config| {
                let config = config.as_ref().ok_or("transform before init")?;
                let reply = super::transform(config, batch)?;
                Ok(Transformed {
                    batch: reply.batch,
                    source_rows: reply.source_rows,
                    errors: reply
                        .errors
                        .into_iter()
                        .map(|(row, message)| RowError { row, message })
                        .collect(),
                })
            })
        }
    }

    export!(Hostile);
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::testing::ChangeBatchBuilder;

    fn input() -> Vec<u8> {
        use weir_plugin::testing::column;
        let batch = ChangeBatchBuilder::new(vec![
            column("id", arrow_schema::DataType::Int64),
            column("name", arrow_schema::DataType::Utf8),
        ])
        .change("c", None, Some(serde_json::json!({"id": 1, "name": "a"})))
        .change("c", None, Some(serde_json::json!({"id": 2, "name": "b"})))
        .build();
        ipc::write(&batch).unwrap()
    }

    fn config(mode: &str) -> Config {
        init(&format!(r#"{{"mode":"{mode}"}}"#)).unwrap()
    }

    #[test]
    fn malformed_modes_are_refused_by_a_validating_reader() {
        // `lz4-bomb` is left out: reading it natively would try to reserve 2^50 bytes.
        for mode in ["offset-past-body", "wrong-lengths", "invalid-utf8"] {
            let reply = transform(&config(mode), input()).unwrap();
            let read = std::panic::catch_unwind(|| ipc::read(reply.batch.clone()));
            assert!(
                !matches!(read, Ok(Ok(_))),
                "{mode} was read as a valid batch"
            );
        }
    }

    #[test]
    fn the_bomb_claims_two_to_the_fifty_bytes() {
        let reply = transform(&config("lz4-bomb"), input()).unwrap();
        let claim = (1i64 << 50).to_le_bytes();
        assert!(reply.batch.windows(8).any(|w| w == claim));
    }

    #[test]
    fn retyped_keys_are_text() {
        for (mode, first) in [("retyped-key-digits", "1"), ("retyped-key-text", "k1")] {
            let reply = transform(&config(mode), input()).unwrap();
            let batch = ipc::read(reply.batch).unwrap();
            let after = image(&batch, AFTER).unwrap();
            let ids = after.column_by_name("id").unwrap().as_string::<i32>();
            assert_eq!(ids.value(0), first);
        }
    }

    #[test]
    fn a_targeted_mode_passes_other_batches() {
        let config = init(r#"{"mode":"trap","id":99}"#).unwrap();
        let reply = transform(&config, input()).unwrap();
        assert_eq!(reply.batch, input());
    }
}
