//! The shared wasmtime engines, their epoch clock, and the on-disk cache of compiled
//! components.
//!
//! One engine serves every plugin of the process (two when some plugin asks for fuel:
//! metering makes all code slower, so only those plugins pay for it). A single thread
//! advances the engines' epoch every [`TICK`]; a call's deadline is a number of ticks.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

/// How often the epoch advances: the resolution of call deadlines.
pub const TICK: Duration = Duration::from_millis(5);

static PLAIN: OnceLock<Engine> = OnceLock::new();
static METERED: OnceLock<Engine> = OnceLock::new();

/// The engine for plugins with (`fuel`) or without fuel metering.
pub fn engine(fuel: bool) -> &'static Engine {
    let cell = if fuel { &METERED } else { &PLAIN };
    cell.get_or_init(|| {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.consume_fuel(fuel);
        config.wasm_backtrace_max_frames(None);
        let engine = Engine::new(&config).expect("a valid wasmtime configuration");
        start_clock(engine.clone());
        engine
    })
}

/// One thread per engine advances its epoch for the life of the process (a weak
/// reference would not help: the engines are static).
fn start_clock(engine: Engine) {
    std::thread::Builder::new()
        .name("weir-plugin-clock".into())
        .spawn(move || {
            loop {
                std::thread::sleep(TICK);
                engine.increment_epoch();
            }
        })
        .expect("spawn the plugin clock thread");
}

/// Where compiled components are kept: `WEIR_CACHE_DIR`, else the user's cache directory.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("WEIR_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("weir").join("plugins"))
}

/// Loads a component: from the cache when this exact wasm was compiled before by a
/// compatible engine, else compiles it and stores the result. A cache that cannot be
/// read or written only costs the compilation.
pub fn load_component(
    engine: &Engine,
    wasm: &[u8],
    cache: Option<&Path>,
) -> wasmtime::Result<Component> {
    let Some(dir) = cache else {
        return Component::new(engine, wasm);
    };
    let path = dir.join(format!("{}.cwasm", cache_key(engine, wasm)));
    if path.exists() {
        // SAFETY: the file was written by `Component::serialize` of an engine with the
        // same compatibility hash (it is in the file name), into weir's own cache
        // directory; wasmtime checks the header and refuses anything else.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => return Ok(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable compiled plugin")
            }
        }
    }
    let component = Component::new(engine, wasm)?;
    if let Err(e) = store(&path, &component) {
        tracing::debug!(path = %path.display(), error = %e, "cannot cache the compiled plugin");
    }
    Ok(component)
}

fn store(path: &Path, component: &Component) -> Result<(), String> {
    let bytes = component.serialize().map_err(|e| e.to_string())?;
    let dir = path.parent().expect("a cache file has a directory");
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

/// The hash of the wasm bytes and of everything in the engine that compiled code depends
/// on (wasmtime's version and settings).
fn cache_key(engine: &Engine, wasm: &[u8]) -> String {
    struct Sha(Sha256);
    impl Hasher for Sha {
        fn finish(&self) -> u64 {
            unreachable!("only written to")
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut hasher = Sha(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.0.update(wasm);
    hasher
        .0
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
