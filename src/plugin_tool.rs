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
