//! `weir plugin …`: building plugin crates into wasm components.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The target plugins are built for: WASI 0.2 components.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// Builds each plugin crate for wasm32-wasip2 (release) and copies the component next to
/// its `Cargo.toml` as `<crate_name>.wasm`. Returns the written paths.
pub fn build(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut built = Vec::new();
    for dir in dirs {
        let manifest = dir.join("Cargo.toml");
        if !manifest.is_file() {
            return Err(format!(
                "{}: no Cargo.toml; give the directory of a plugin crate (one `weir plugin new` made)",
                dir.display()
            ));
        }
        let manifest = manifest
            .canonicalize()
            .map_err(|e| format!("{}: {e}", manifest.display()))?;
        built.extend(build_one(&manifest)?);
    }
    Ok(built)
}

fn build_one(manifest: &Path) -> Result<Vec<PathBuf>, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .args(["build", "--release", "--target", WASM_TARGET])
        .arg("--manifest-path")
        .arg(manifest)
        .args(["--message-format", "json-render-diagnostics"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "building {} failed (see cargo's messages above). If the target is missing: \
             rustup target add {WASM_TARGET}",
            manifest.display()
        ));
    }
    let dir = manifest.parent().expect("a manifest has a directory");
    let mut written = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact"
            || message["manifest_path"].as_str().map(Path::new) != Some(manifest)
        {
            continue;
        }
        let is_cdylib = message["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "cdylib"));
        if !is_cdylib {
            continue;
        }
        for file in message["filenames"].as_array().into_iter().flatten() {
            let Some(file) = file.as_str().filter(|f| f.ends_with(".wasm")) else {
                continue;
            };
            let name = Path::new(file).file_name().expect("a file name");
            let target = dir.join(name);
            std::fs::copy(file, &target)
                .map_err(|e| format!("cannot copy {file} to {}: {e}", target.display()))?;
            written.push(target);
        }
    }
    if written.is_empty() {
        return Err(format!(
            "{} built no .wasm: a plugin crate needs `[lib] crate-type = [\"cdylib\"]`",
            manifest.display()
        ));
    }
    Ok(written)
}

/// What `weir plugin test` made of an input file.
pub struct TestReport {
    pub changes_in: usize,
    pub changes_out: usize,
    pub rejected: usize,
    pub skipped_records: usize,
}

/// Runs a transform component over a file of Debezium JSON events, in batches, as a
/// pipeline would: writes every output change to `out` (one Debezium-style JSON line
/// each) and every refused input to `rejects` (its line, the reason and the event).
pub fn test(
    wasm: &Path,
    input: &Path,
    config: &str,
    key: &[String],
    batch_rows: usize,
    out: &mut dyn std::io::Write,
    rejects: &mut dyn std::io::Write,
) -> Result<TestReport, String> {
    use weir_runtime::decode::table::TableSpec;
    use weir_runtime::decode::{DecodeError, Decoder, Format, Outcome, RawRecord, RecordError};
    use weir_runtime::plugin::transform::TransformPlugin;
    use weir_runtime::plugin::{Limits, PluginSpec};
    use weir_runtime::position::{Checkpoint, Position};

    let config: serde_json::Value = serde_json::from_str(config)
        .map_err(|e| format!("--config is not JSON: {e} (e.g. '{{\"fields\": [\"email\"]}}')"))?;
    let text = std::fs::read_to_string(input)
        .map_err(|e| format!("cannot read {}: {e}", input.display()))?;
    let name = wasm
        .file_stem()
        .map_or("plugin".into(), |s| s.to_string_lossy().into_owned());
    let mut plugin = TransformPlugin::load(PluginSpec {
        name,
        wasm: wasm.to_path_buf(),
        config,
        limits: Limits::from(&weir_runtime::plugin::LimitsConfig::default()),
    })?;
    let keys: Vec<&str> = key.iter().map(String::as_str).collect();
    let mut decoder = Decoder::new(TableSpec::new("table", &keys), Format::DebeziumJson);
    let mut report = TestReport {
        changes_in: 0,
        changes_out: 0,
        rejected: 0,
        skipped_records: 0,
    };
    let lines: Vec<&str> = text.lines().collect();
    let stream: std::sync::Arc<str> = input.display().to_string().into();
    let io = |e: std::io::Error| format!("cannot write the output: {e}");
    let mut run_batch = |decoder: &mut Decoder,
                         report: &mut TestReport,
                         rejects: &mut dyn std::io::Write|
     -> Result<(), String> {
        let batch = decoder.finish(Checkpoint::default());
        if batch.num_rows() == 0 {
            return Ok(());
        }
        report.changes_in += batch.num_rows();
        let line_of = |row: usize| match &batch.positions[row] {
            Position::File { line, .. } => *line as usize,
            Position::Kafka { .. } | Position::Postgres { .. } => 0,
        };
        let mut reject = |row: usize, reason: &str| -> Result<(), String> {
            let line = line_of(row);
            let event = lines.get(line - 1).copied().unwrap_or("");
            writeln!(rejects, "{}", refused(line, reason, event)).map_err(io)
        };
        match plugin.call(&batch) {
            Ok(transformed) => {
                for (row, message) in &transformed.rejected {
                    reject(*row, &format!("plugin_row_error: {message}"))?;
                    report.rejected += 1;
                }
                let output = &transformed.batch;
                let mut text = String::new();
                for row in 0..output.num_rows() {
                    text.clear();
                    weir_runtime::encode::write_change(&mut text, output, row);
                    writeln!(out, "{text}").map_err(io)?;
                }
                report.changes_out += output.num_rows();
            }
            Err(failure) => {
                let reason = failure.reason();
                for row in 0..batch.num_rows() {
                    reject(row, &reason)?;
                }
                report.rejected += batch.num_rows();
            }
        }
        Ok(())
    };
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let position = Position::File {
            stream: stream.clone(),
            line: i as u64 + 1,
            offset: 0,
            next: 0,
        };
        let record = RawRecord {
            key: None,
            value: Some(line.as_bytes()),
            headers: Default::default(),
        };
        match decoder.decode(record, &position) {
            Ok(Outcome::Row) => {}
            Ok(_) => report.skipped_records += 1,
            Err(DecodeError::Record(RecordError { message: e }) | DecodeError::OtherTable(e)) => {
                let reason = format!("decode: {e}");
                writeln!(rejects, "{}", refused(i + 1, &reason, line)).map_err(io)?;
                report.rejected += 1;
            }
            Err(DecodeError::Fatal(e)) => {
                return Err(format!("{}:{}: {e:?}", input.display(), i + 1));
            }
        }
        if decoder.rows() >= batch_rows {
            run_batch(&mut decoder, &mut report, rejects)?;
        }
    }
    run_batch(&mut decoder, &mut report, rejects)?;
    Ok(report)
}

/// The line `weir plugin test` writes for a refused event: its line number, the reason,
/// and the event itself (null when it is not JSON).
fn refused(line: usize, reason: &str, event: &str) -> serde_json::Value {
    let event: serde_json::Value = serde_json::from_str(event).unwrap_or_default();
    serde_json::json!({"line": line, "error": reason, "event": event})
}

/// The kinds of plugin `weir plugin new` scaffolds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Transform,
    Resolver,
}

/// Scaffolds a plugin crate in `dir`: a Cargo.toml depending on the SDK at `sdk`, a
/// starting function with unit tests, and a README with the commands.
pub fn new(dir: &Path, kind: Kind, sdk: &Path) -> Result<Vec<PathBuf>, String> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && n.starts_with(|c: char| c.is_ascii_alphabetic())
        })
        .ok_or_else(|| {
            format!(
                "{}: a plugin name is letters, digits, `-` and `_`, starting with a letter",
                dir.display()
            )
        })?;
    if dir.exists() {
        return Err(format!(
            "{} already exists; pick another name or remove it",
            dir.display()
        ));
    }
    let sdk = sdk
        .canonicalize()
        .map_err(|e| format!("the weir-plugin SDK at {}: {e}", sdk.display()))?;
    let files = templates(name, kind, &sdk);
    let mut written = Vec::new();
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Where the SDK is: `WEIR_PLUGIN_SDK`, else `plugins/sdk` of the weir source tree this
/// binary was built from.
pub fn default_sdk() -> PathBuf {
    std::env::var_os("WEIR_PLUGIN_SDK")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/sdk"))
}

fn templates(name: &str, kind: Kind, sdk: &Path) -> Vec<(&'static str, String)> {
    let module = name.replace('-', "_");
    let (description, lib) = match kind {
        Kind::Transform => ("a weir transform plugin", TRANSFORM_TEMPLATE),
        Kind::Resolver => ("a weir conflict resolver plugin", RESOLVER_TEMPLATE),
    };
    let cargo = format!(
        r#"[package]
name = "{name}"
description = "{description}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
weir-plugin = {{ path = {sdk:?} }}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

# Its own workspace, so it builds wherever it lives.
[workspace]

# Plugins run per batch on the hot path: optimise them and keep the .wasm small.
[profile.release]
opt-level = 3
debug = false
strip = "debuginfo"
panic = "abort"
"#,
        sdk = sdk.display().to_string()
    );
    let readme = format!(
        "# {name}\n\n{description}.\n\n```sh\ncargo test                                  # unit tests, natively\n\
         weir plugin build .                         # writes {module}.wasm here\n\
         weir plugin test {module}.wasm --input events.jsonl --config '{{}}'\n```\n\n\
         The contract is in weir's `docs/plugins.md`.\n"
    );
    vec![
        ("Cargo.toml", cargo),
        ("src/lib.rs", lib.to_string()),
        ("README.md", readme),
        (".gitignore", "/target\n*.wasm\n".to_string()),
    ]
}

// The starting code of new plugins; rustfmt-clean, and compiled by the scaffold test.
const TRANSFORM_TEMPLATE: &str = include_str!("templates/transform.rs");
const RESOLVER_TEMPLATE: &str = include_str!("templates/resolver.rs");
