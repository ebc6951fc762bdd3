//! The plugin host: WebAssembly components (the `weir:plugin` WIT worlds in
//! `plugins/wit/`) run sandboxed by wasmtime, once per change batch.
//!
//! - [`engine`]: the shared engines, their epoch clock and the compiled-component cache.
//! - [`sandbox`]: what an instance may reach (nothing), its memory cap, its stdout/stderr.
//! - [`transform`]: transform plugins, and the checks on what they return.
//! - [`chain`]: the pipeline stage running the configured transforms in order.
//! - [`resolver`]: conflict resolver plugins, called by the sink with the current rows.
//! - [`instance`]: what both kinds share: loading, limits, failures, fresh instances.
//! - [`stats`]: each plugin's calls by outcome and their time (`/metrics`, the status page).
//!
//! A call that fails as a whole ([`Failure`]) sends its batch to the dead-letter output
//! with the reason; the instance is replaced by a fresh one for the next batch.

pub mod chain;
pub mod engine;
pub mod instance;
pub mod resolver;
pub mod sandbox;
pub mod stats;
pub mod transform;

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

/// A transform plugin in the pipeline YAML (`transforms:`, applied in order).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// A name for logs and dead letters.
    #[schemars(length(min = 1))]
    pub name: String,
    /// The plugin's `.wasm` component (relative to the pipeline file), as `weir plugin
    /// build` writes it.
    pub wasm: PathBuf,
    /// The plugin's own configuration, passed to its `init` as JSON.
    #[serde(default)]
    pub config: serde_json::Value,
    /// What the plugin may use.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The source tables it runs on, as globs like `tables.include`'s (every table when
    /// empty).
    #[serde(default)]
    pub tables: Vec<String>,
}

/// A resolver plugin in the pipeline YAML (`conflict: { strategy: wasm, … }`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolverConfig {
    /// A name for logs and dead letters; defaults to the `.wasm` file's name.
    #[serde(default)]
    pub name: Option<String>,
    /// The resolver's `.wasm` component (relative to the pipeline file).
    pub wasm: PathBuf,
    /// The plugin's own configuration, passed to its `init` as JSON.
    #[serde(default)]
    pub config: serde_json::Value,
    /// What the plugin may use.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// How long the identities of decided changes are kept, to recognise a change
    /// delivered again under a new stream position (docs/sync.md, "Once-only apply").
    /// It must exceed the longest time a copy can arrive after the original.
    #[serde(default = "crate::conflict::config::default_horizon")]
    pub applied_horizon: crate::config::HumanDuration,
}

impl ResolverConfig {
    pub fn spec(&self, pipeline: &crate::config::LoadedPipeline) -> PluginSpec {
        let name = self.name.clone().unwrap_or_else(|| {
            self.wasm
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "resolver".into())
        });
        PluginSpec {
            name,
            wasm: pipeline.resolve(&self.wasm),
            config: self.config.clone(),
            limits: Limits::from(&self.limits),
        }
    }
}

/// Per-plugin limits. A call past any of them fails its batch into the dead-letter output.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Linear memory cap per instance, in MiB.
    #[serde(default = "default_memory_mb")]
    #[schemars(range(min = 1, max = 4096))]
    pub memory_mb: u64,
    /// Deadline per call, in milliseconds: the call is stopped once it has run this long,
    /// never earlier, and at most about 5 ms later, whether it runs wasm or waits in WASI.
    #[serde(default = "default_timeout_ms")]
    #[schemars(range(min = 1))]
    pub timeout_ms: u64,
    /// Deadline for starting an instance (instantiation and `init`), in milliseconds. A
    /// fresh instance after a failed call starts under it too, not under `timeout_ms`.
    #[serde(default = "default_start_timeout_ms")]
    #[schemars(range(min = 1))]
    pub start_timeout_ms: u64,
    /// Optional fuel per call (a deterministic bound on instructions). Metering slows every
    /// instruction, so it is off unless set.
    #[serde(default)]
    pub fuel: Option<u64>,
}

fn default_memory_mb() -> u64 {
    128
}

fn default_timeout_ms() -> u64 {
    1000
}

fn default_start_timeout_ms() -> u64 {
    5000
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            memory_mb: default_memory_mb(),
            timeout_ms: default_timeout_ms(),
            start_timeout_ms: default_start_timeout_ms(),
            fuel: None,
        }
    }
}

/// The limits of a loaded plugin.
#[derive(Debug, Clone)]
pub struct Limits {
    pub memory_mb: u64,
    pub timeout: Duration,
    pub start_timeout: Duration,
    pub fuel: Option<u64>,
}

impl Limits {
    pub fn memory_bytes(&self) -> usize {
        (self.memory_mb as usize) << 20
    }
}

impl From<&LimitsConfig> for Limits {
    fn from(config: &LimitsConfig) -> Self {
        Limits {
            memory_mb: config.memory_mb,
            timeout: Duration::from_millis(config.timeout_ms),
            start_timeout: Duration::from_millis(config.start_timeout_ms),
            fuel: config.fuel,
        }
    }
}

/// The longest message from a plugin weir keeps (a row error, a batch error, a trap's
/// text), in bytes; the rest is cut, with a marker that gives the full length.
pub const MAX_MESSAGE: usize = 4096;

/// `message`, cut to [`MAX_MESSAGE`] bytes with a marker that gives its full length.
pub fn capped(mut message: String) -> String {
    let full = message.len();
    if cut(&mut message, MAX_MESSAGE) {
        message.push_str(&format!("… [cut at {MAX_MESSAGE} of {full} bytes]"));
    }
    message
}

/// Cuts `text` to at most `max` bytes, at a character boundary; whether it did.
pub(crate) fn cut(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    text.truncate(text.floor_char_boundary(max));
    true
}

/// A reason longer than this is written once per batch (see [`reject_all`]).
const SHARED_REASON: usize = 256;

/// Sends every row in `rows` to the dead-letter output with `reason`, the reason a whole
/// call failed with. A long reason is written once per batch: with the first row, while
/// the others keep its code (`plugin_error: …`) and point at that row's dead letter, so a
/// plugin's 4 KiB message costs 4 KiB per batch, not per row.
pub fn reject_all<E>(
    rows: impl IntoIterator<Item = usize>,
    reason: &str,
    position: impl Fn(usize) -> Option<String>,
    mut reject: impl FnMut(usize, &str) -> Result<(), E>,
) -> Result<(), E> {
    let mut rows = rows.into_iter();
    let Some(first) = rows.next() else {
        return Ok(());
    };
    reject(first, reason)?;
    let reason = match reason.len() > SHARED_REASON {
        true => {
            let code = reason.split(':').next().unwrap_or("plugin_error");
            let at = position(first).unwrap_or_else(|| "the batch's first row".into());
            // The plugin's name, which ends every reason.
            let by = [" (plugin `", " (resolver `"]
                .iter()
                .find_map(|p| reason.rfind(p))
                .map_or("", |i| &reason[i..]);
            format!(
                "{code}: the call for this row's batch failed; its reason is in the dead \
                 letter of {at}{by}"
            )
        }
        false => reason.to_string(),
    };
    rows.try_for_each(|row| reject(row, &reason))
}

/// Everything needed to load a plugin.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    pub name: String,
    pub wasm: PathBuf,
    pub config: serde_json::Value,
    pub limits: Limits,
}

/// Why a call failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The plugin trapped (a Rust panic traps); `stderr` is its last line there.
    Trap {
        trap: String,
        stderr: Option<String>,
    },
    /// The call ran past its deadline.
    Timeout { limit_ms: u64 },
    /// The call used all its fuel.
    OutOfFuel { fuel: u64 },
    /// The instance tried to grow its memory past the cap.
    OutOfMemory { cap_mb: u64, asked_mb: u64 },
    /// The output is not a valid change batch for this input.
    BadOutput(String),
    /// The plugin returned an error for the whole batch.
    Returned(String),
    /// A fresh instance did not start: `init` returned an error, or starting trapped or
    /// ran past the start-up deadline.
    Init(String),
    /// The host could not encode the batch.
    Host(String),
}

impl Failure {
    /// The reason written to dead letters and logs: a stable code, then the detail.
    pub fn reason(&self) -> String {
        let reason = match self {
            Failure::Trap {
                trap,
                stderr: Some(line),
            } => format!("plugin_trap: {trap} (stderr: {line})"),
            Failure::Trap { trap, stderr: None } => format!("plugin_trap: {trap}"),
            Failure::Timeout { limit_ms } => {
                format!("plugin_timeout: the call ran past its {limit_ms} ms deadline")
            }
            Failure::OutOfFuel { fuel } => {
                format!("plugin_timeout: the call used all its fuel ({fuel})")
            }
            Failure::OutOfMemory { cap_mb, asked_mb } => format!(
                "plugin_oom: the plugin reached its memory cap of {cap_mb} MiB (it asked for \
                 {asked_mb} MiB); raise limits.memory_mb if the batch needs it"
            ),
            Failure::BadOutput(detail) => format!("plugin_bad_output: {detail}"),
            Failure::Returned(message) => format!("plugin_error: {message}"),
            Failure::Init(message) => format!("plugin_init: {message}"),
            Failure::Host(message) => format!("plugin_host: {message}"),
        };
        capped(crate::redact::redact(&reason).into_owned())
    }

    /// Whether the instance must be replaced: after anything but an error the plugin
    /// returned itself, its state is unknown.
    pub fn poisons_instance(&self) -> bool {
        !matches!(self, Failure::Returned(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_at_a_character_boundary_with_their_length() {
        assert_eq!(capped("short".into()), "short");
        // 'é' is two bytes: 4,096 falls inside one.
        let long = format!("x{}", "é".repeat(3000));
        let cut = capped(long.clone());
        assert!(cut.starts_with(&long[..4095]), "cut at 4,095, the boundary");
        assert!(
            cut.ends_with("… [cut at 4096 of 6001 bytes]"),
            "{}",
            &cut[4000..]
        );
    }

    #[test]
    fn a_long_reason_is_written_once_per_batch() {
        let long = format!("plugin_error: {} (plugin `p`)", "E".repeat(300));
        let mut written = Vec::new();
        reject_all(
            [3, 4, 5],
            &long,
            |row| Some(format!("events.jsonl:{row}")),
            |row, reason| {
                written.push((row, reason.to_string()));
                Ok::<_, ()>(())
            },
        )
        .unwrap();
        assert_eq!(written[0], (3, long.clone()));
        for (_, reason) in &written[1..] {
            assert_eq!(
                reason,
                "plugin_error: the call for this row's batch failed; its reason is in the dead \
                 letter of events.jsonl:3 (plugin `p`)"
            );
        }
        // A short one is written with every row.
        written.clear();
        reject_all(
            [1, 2],
            "plugin_timeout: x (plugin `p`)",
            |_| None,
            |row, reason| {
                written.push((row, reason.to_string()));
                Ok::<_, ()>(())
            },
        )
        .unwrap();
        assert!(
            written
                .iter()
                .all(|(_, r)| r == "plugin_timeout: x (plugin `p`)")
        );
    }
}
