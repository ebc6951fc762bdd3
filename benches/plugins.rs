//! What a transform plugin costs: the same file → Parquet pipeline over the same events,
//! with no plugin, with an identity plugin (the `probe` test plugin returning its input)
//! and with the `mask-fields` example (SHA-256 of the `email` column), in 8,192-event
//! batches:
//!
//! ```text
//! cargo bench --bench plugins                        # 1M events, 3 interleaved rounds
//! cargo bench --bench plugins -- --events 200000 --repeat 5
//! ```
//!
//! Reported, all from the same run (the machine is shared and noisy, so only ratios
//! within one run mean much):
//!
//! 1. Each pipeline's rate (medians), its CPU time per event (user + sys of the weir
//!    process), and its rate as a share of the plugin-free pipeline's in the same round.
//! 2. The plugin stage alone, in this process on one thread: the decoded batches through
//!    the host's `call` (IPC out, the plugin, IPC back, the output checks), as rows per
//!    CPU second, i.e. per core.

// The allocator weir runs with, so the in-process stage measures what the pipeline pays
// (under glibc's, the stage's large per-batch buffers are mapped and faulted in afresh).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::fmt::Write as _;

use common::{Workspace, plugin_wasm, weir};
use support::{cpu_seconds, median};
use weir_runtime::bench::{COLUMNS, decode_batches, generate};
use weir_runtime::plugin::transform::TransformPlugin;
use weir_runtime::plugin::{Limits, LimitsConfig, PluginSpec};

const BATCH: usize = 8192;

struct Args {
    events: usize,
    repeat: usize,
}

fn args() -> Args {
    let mut args = Args {
        events: 1_000_000,
        repeat: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().and_then(|v| v.parse().ok());
        match arg.as_str() {
            "--events" => args.events = value().expect("--events N"),
            "--repeat" => args.repeat = value().expect("--repeat N"),
            // `cargo bench` passes --bench; other flags are not ours.
            _ => {}
        }
    }
    args
}

/// A plugin variant: its name, and its `transforms:` entry (empty for none).
struct Variant {
    name: &'static str,
    transforms: String,
    /// The plugin, for the in-process measurement.
    spec: Option<PluginSpec>,
}

fn variants() -> Vec<Variant> {
    let spec = |name: &str, crate_dir: &str, config: serde_json::Value| PluginSpec {
        name: name.into(),
        wasm: plugin_wasm(crate_dir),
        config,
        limits: Limits::from(&LimitsConfig::default()),
    };
    let entry = |spec: &PluginSpec| {
        format!(
            "transforms:\n  - name: {}\n    wasm: {}\n    config: {}\n",
            spec.name,
            spec.wasm.display(),
            spec.config
        )
    };
    let identity = spec(
        "identity",
        "testing/probe",
        serde_json::json!({"mode": "identity"}),
    );
    let mask = spec(
        "mask",
        "examples/mask-fields",
        serde_json::json!({"fields": ["email"], "method": "sha256"}),
    );
    vec![
        Variant {
            name: "no plugin",
            transforms: String::new(),
            spec: None,
        },
        Variant {
            name: "identity",
            transforms: entry(&identity),
            spec: Some(identity),
        },
        Variant {
            name: "mask (sha256 email)",
            transforms: entry(&mask),
            spec: Some(mask),
        },
    ]
}

fn pipeline(ws: &Workspace, index: usize, variant: &Variant) -> std::path::PathBuf {
    let mut columns = String::from("  columns:\n");
    for (name, ty) in COLUMNS {
        let _ = writeln!(columns, "    {name}: '{ty}'");
    }
    let yaml = format!(
        "name: plugins-{index}\n\
         source:\n  type: file\n  path: events.jsonl\n  format: debezium-json\n\
         table:\n  name: orders\n  primary_key: [id]\n{columns}\
         batch:\n  max_events: {BATCH}\n\
         {}\
         sink:\n  type: parquet\n  path: out-{index}\n\
         dead_letter:\n  type: file\n  path: dead-letters-{index}.jsonl\n",
        variant.transforms
    );
    ws.write(&format!("plugins-{index}.yaml"), &yaml)
}

/// Runs a pipeline from scratch: (seconds, CPU seconds of the weir process).
fn run(ws: &Workspace, pipeline: &std::path::Path, index: usize, events: usize) -> (f64, f64) {
    let _ = std::fs::remove_dir_all(ws.path(&format!("out-{index}")));
    let before = cpu_seconds(libc::RUSAGE_CHILDREN);
    let output = weir()
        .args(["run", "--json"])
        .arg(pipeline)
        .output()
        .expect("run weir");
    let cpu = cpu_seconds(libc::RUSAGE_CHILDREN) - before;
    assert!(
        output.status.success(),
        "weir failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).expect("a summary");
    assert_eq!(summary["events_read"], events as u64, "{summary}");
    let letters = std::fs::read_to_string(ws.path(&format!("dead-letters-{index}.jsonl")));
    let first = letters.unwrap_or_default();
    let first = first
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(2000)
        .collect::<String>();
    assert_eq!(summary["dead_letters"], 0, "{summary}\nfirst: {first}");
    (summary["elapsed_seconds"].as_f64().expect("elapsed"), cpu)
}

/// The plugin stage alone on this thread: rows per CPU second over every batch.
fn plugin_rows_per_core(spec: &PluginSpec, batches: &[weir_runtime::envelope::ChangeBatch]) -> f64 {
    let mut plugin = TransformPlugin::load(spec.clone()).expect("the plugin loads");
    // One call first, so the instance and its memory are warm.
    plugin.call(&batches[0]).expect("the plugin transforms");
    let before = cpu_seconds(libc::RUSAGE_THREAD);
    let mut rows = 0;
    for batch in batches {
        let out = plugin.call(batch).expect("the plugin transforms");
        rows += out.batch.num_rows();
    }
    let cpu = cpu_seconds(libc::RUSAGE_THREAD) - before;
    assert_eq!(rows, batches.iter().map(|b| b.num_rows()).sum::<usize>());
    rows as f64 / cpu
}

fn main() {
    let args = args();
    let ws = Workspace::new();
    let generated = generate(args.events, false, 42);
    std::fs::write(ws.path("events.jsonl"), &generated.events).expect("write the events");
    let variants = variants();
    let pipelines: Vec<_> = variants
        .iter()
        .enumerate()
        .map(|(i, v)| pipeline(&ws, i, v))
        .collect();
    eprintln!(
        "{} events, batches of {BATCH}, {} interleaved rounds",
        args.events, args.repeat
    );
    // The plugin stage alone first: this also compiles each component into weir's
    // on-disk cache, so no pipeline run below pays for compilation.
    let batches = decode_batches(&generated.events, false, BATCH);
    let alone: Vec<Option<f64>> = variants
        .iter()
        .map(|v| {
            v.spec
                .as_ref()
                .map(|spec| plugin_rows_per_core(spec, &batches))
        })
        .collect();
    drop(batches);
    let mut seconds = vec![Vec::new(); variants.len()];
    let mut cpu = vec![Vec::new(); variants.len()];
    let mut shares = vec![Vec::new(); variants.len()];
    for round in 0..args.repeat {
        let mut this_round = Vec::new();
        for (i, pipeline) in pipelines.iter().enumerate() {
            let (s, c) = run(&ws, pipeline, i, args.events);
            eprintln!(
                "round {}: {:<20} {:>9.0} events/s  {:.2} µs CPU/event",
                round + 1,
                variants[i].name,
                args.events as f64 / s,
                c / args.events as f64 * 1e6
            );
            seconds[i].push(s);
            cpu[i].push(c);
            this_round.push(s);
        }
        for i in 0..variants.len() {
            shares[i].push(this_round[0] / this_round[i] * 100.0);
        }
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n| file → Parquet, {} events | events/s | CPU/event | rate vs no plugin | plugin stage alone |",
        args.events
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for (i, variant) in variants.iter().enumerate() {
        let rate = args.events as f64 / median(&mut seconds[i]).unwrap_or(f64::NAN);
        let cpu_event = median(&mut cpu[i]).unwrap_or(f64::NAN) / args.events as f64 * 1e6;
        let share = median(&mut shares[i]).unwrap_or(f64::NAN);
        let alone = alone[i].map_or("-".to_string(), |rows| {
            format!("{:.2}M rows/s per core", rows / 1e6)
        });
        let _ = writeln!(
            out,
            "| {} | {rate:.0} | {cpu_event:.2} µs | {share:.1}% | {alone} |",
            variant.name
        );
    }
    println!("{out}");
}
