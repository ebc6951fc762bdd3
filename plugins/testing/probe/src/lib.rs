//! probe: a transform for weir's tests and benchmarks. Its `mode` says what it does with
//! each batch:
//!
//! - `identity`: returns the batch unchanged (the benchmark's boundary cost).
//! - `loop`: never returns (the deadline must stop it).
//! - `alloc`: allocates without bound (the memory cap must stop it).
//! - `trap`: panics, which traps in wasm.
//! - `bad-output`: returns a batch without the envelope columns.
//! - `sandbox`: tries to open a file, read an environment variable and open a socket, and
//!   reports each outcome as a row error on row 0 (`denied: …` or `ALLOWED: …`).
//! - `print`: writes a line to stdout and one to stderr, then returns the batch.
//! - `table`: reports the batch's source and target table as a row error on row 0
//!   (`table: <source> -> <target>`), and passes the other rows.
//!
//! With `id: N`, `loop`, `alloc`, `trap` and `bad-output` misbehave only on batches with
//! a row whose `id` is N, and pass the others unchanged.

use serde::Deserialize;
use weir_plugin::arrow_array::RecordBatch;
use weir_plugin::{JsonValue, Output, RowError, Transform, typed_config};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    mode: Mode,
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    path: String,
    #[serde(default)]
    env: String,
    #[serde(default)]
    address: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Mode {
    Identity,
    Loop,
    Alloc,
    Trap,
    BadOutput,
    Sandbox,
    Print,
    Table,
}

/// Whether the batch has a row whose `id` is `id`.
fn has_id(batch: &RecordBatch, id: i64) -> Result<bool, String> {
    let mut found = false;
    weir_plugin::change::map_rows(batch, |change| {
        let row = change.row().ok_or("no row")?;
        found |= row.get("id")?.as_int() == Some(id);
        Ok(weir_plugin::Keep::No)
    })?;
    Ok(found)
}

pub struct Probe {
    config: Config,
}

impl Transform for Probe {
    fn init(config: &JsonValue) -> Result<Self, String> {
        Ok(Probe {
            config: typed_config(config)?,
        })
    }

    fn transform(&mut self, batch: RecordBatch) -> Result<Output, String> {
        let config = &self.config;
        let targeted = match config.id {
            Some(id) => has_id(&batch, id)?,
            None => true,
        };
        match config.mode {
            Mode::Identity => Ok(Output::rows(batch)),
            Mode::Loop | Mode::Alloc | Mode::Trap | Mode::BadOutput if !targeted => {
                Ok(Output::rows(batch))
            }
            Mode::Loop => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Mode::Alloc => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    // Touch every page, so the memory is really used.
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Mode::Trap => panic!("probe: trapping as asked"),
            Mode::BadOutput => {
                let after = batch
                    .schema()
                    .index_of("after")
                    .map_err(|e| e.to_string())?;
                batch
                    .project(&[after])
                    .map(Output::rows)
                    .map_err(|e| e.to_string())
            }
            Mode::Sandbox => {
                let outcome = |what: &str, result: Result<String, String>| RowError {
                    row: 0,
                    message: match result {
                        Ok(detail) => format!("{what}: ALLOWED: {detail}"),
                        Err(error) => format!("{what}: denied: {error}"),
                    },
                };
                let errors = vec![
                    outcome(
                        "open-file",
                        std::fs::read(&config.path)
                            .map(|b| format!("read {} bytes", b.len()))
                            .map_err(|e| e.to_string()),
                    ),
                    outcome(
                        "read-env",
                        std::env::var(&config.env).map_err(|e| e.to_string()),
                    ),
                    outcome(
                        "connect",
                        std::net::TcpStream::connect(config.address.as_str())
                            .map(|_| "connected".to_string())
                            .map_err(|e| e.to_string()),
                    ),
                ];
                let rest = batch.num_rows().saturating_sub(1);
                let mut output = Output::rows(batch.slice(batch.num_rows() - rest, rest));
                output.source_rows = Some((1..batch.num_rows() as u32).collect());
                output.errors = errors;
                Ok(output)
            }
            Mode::Table => {
                let message = format!(
                    "table: {} -> {}",
                    weir_plugin::table_name(&batch).unwrap_or("?"),
                    weir_plugin::target_table(&batch).unwrap_or("?")
                );
                let rest = batch.num_rows().saturating_sub(1);
                let mut output = Output::rows(batch.slice(batch.num_rows() - rest, rest));
                output.source_rows = Some((1..batch.num_rows() as u32).collect());
                output.errors = vec![RowError { row: 0, message }];
                Ok(output)
            }
            Mode::Print => {
                println!("probe: {} rows on stdout", batch.num_rows());
                eprintln!("probe: {} rows on stderr", batch.num_rows());
                Ok(Output::rows(batch))
            }
        }
    }
}

weir_plugin::export_transform!(Probe);
