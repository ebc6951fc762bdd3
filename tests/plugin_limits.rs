//! The plugin host's limits, measured in this process (so the RSS and the thread count are
//! the host's own): a deadline, a memory cap, and a long run of trapping calls. One test
//! function, so no other test shares the process while it measures.

mod common;

use std::time::{Duration, Instant};

use common::change_batch as batch;
use weir_runtime::plugin::transform::TransformPlugin;
use weir_runtime::plugin::{Failure, Limits, PluginSpec};

fn probe(config: serde_json::Value, limits: Limits) -> TransformPlugin {
    TransformPlugin::load(PluginSpec {
        name: "probe".into(),
        wasm: common::plugin_wasm("testing/probe"),
        config,
        limits,
    })
    .unwrap()
}

fn status(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

const MIB: u64 = 1 << 20;

#[test]
fn deadline_memory_cap_and_a_thousand_traps() {
    let limits = |memory_mb, timeout_ms| Limits {
        memory_mb,
        timeout: Duration::from_millis(timeout_ms),
        start_timeout: Duration::from_secs(5),
        fuel: None,
    };

    // A plugin that loops is stopped within its deadline plus 50 ms, and the next batch
    // (one it does not loop on) succeeds on a fresh instance.
    let mut looping = probe(
        serde_json::json!({"mode": "loop", "id": 7}),
        limits(64, 100),
    );
    let started = Instant::now();
    let failure = looping.call(&batch(&[7])).unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(failure, Failure::Timeout { limit_ms: 100 });
    assert!(
        elapsed < Duration::from_millis(150),
        "stopped after {elapsed:?}"
    );
    let next = looping.call(&batch(&[1, 2])).unwrap();
    assert_eq!(next.batch.num_rows(), 2);
    assert_eq!(looping.instances(), 2, "a fresh instance after the timeout");

    // A plugin that allocates without bound is trapped at its cap; the host's peak RSS
    // stays within the cap plus 64 MiB of where it was.
    let rss_before = status("VmRSS:") * 1024;
    let mut hoarder = probe(serde_json::json!({"mode": "alloc"}), limits(64, 5000));
    let failure = hoarder.call(&batch(&[1])).unwrap_err();
    assert!(
        matches!(failure, Failure::OutOfMemory { cap_mb: 64, .. }),
        "{failure:?}"
    );
    let peak = status("VmHWM:") * 1024;
    assert!(
        peak <= rss_before + 64 * MIB + 64 * MIB,
        "peak RSS {} MiB, was {} MiB before",
        peak / MIB,
        rss_before / MIB
    );
    drop(hoarder);

    // A thousand trapping batches in a row: each fails with the trap, and neither memory
    // nor threads grow (measured after a warm-up, against the end).
    let mut trapping = probe(serde_json::json!({"mode": "trap"}), limits(64, 1000));
    let input = batch(&[1, 2, 3]);
    for _ in 0..100 {
        assert!(matches!(trapping.call(&input), Err(Failure::Trap { .. })));
    }
    let (rss_warm, threads_warm) = (status("VmRSS:") * 1024, status("Threads:"));
    for _ in 0..900 {
        let failure = trapping.call(&input).unwrap_err();
        assert!(
            matches!(&failure, Failure::Trap { stderr: Some(s), .. } if s == "probe: trapping as asked"),
            "{failure:?}"
        );
    }
    let (rss_end, threads_end) = (status("VmRSS:") * 1024, status("Threads:"));
    assert_eq!(
        trapping.instances(),
        1000,
        "every trap replaced the instance"
    );
    assert_eq!(threads_end, threads_warm, "no thread leaked");
    assert!(
        rss_end <= rss_warm + 16 * MIB,
        "RSS grew from {} to {} MiB over 900 traps",
        rss_warm / MIB,
        rss_end / MIB
    );
}
