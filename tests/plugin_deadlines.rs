//! Plugin deadlines, measured in this process (one test function, so nothing else runs in
//! the process while it times calls): a plugin blocked in a WASI clock call is stopped at
//! its deadline, a deadline never fires before the configured time, and an instance's
//! start-up has its own deadline, reported as such.

mod common;

use std::time::{Duration, Instant};

use common::change_batch as batch;
use weir_runtime::plugin::transform::TransformPlugin;
use weir_runtime::plugin::{Failure, Limits, PluginSpec};

fn limits(timeout_ms: u64, start_timeout_ms: u64) -> Limits {
    Limits {
        memory_mb: 64,
        timeout: Duration::from_millis(timeout_ms),
        start_timeout: Duration::from_millis(start_timeout_ms),
        fuel: None,
    }
}

fn hostile(config: serde_json::Value, limits: Limits) -> Result<TransformPlugin, String> {
    TransformPlugin::load(PluginSpec {
        name: "hostile".into(),
        wasm: common::plugin_wasm("testing/hostile"),
        config,
        limits,
    })
}

/// The slack a stopped call may take past its deadline (the bound).
const SLACK: Duration = Duration::from_millis(50);

#[test]
fn deadlines_hold_in_wasi_calls_and_at_start_up() {
    // A plugin asleep in a WASI clock call is stopped within its deadline plus 50 ms,
    // whether it asked for 3 s or for ever; the next batch runs on a fresh instance.
    for sleep_ms in [Some(3000), None] {
        let mut sleeper = hostile(
            serde_json::json!({"mode": "sleep", "sleep_ms": sleep_ms, "id": 7}),
            limits(100, 5000),
        )
        .unwrap();
        let started = Instant::now();
        let failure = sleeper.call(&batch(&[7])).unwrap_err();
        let elapsed = started.elapsed();
        assert_eq!(failure, Failure::Timeout { limit_ms: 100 });
        assert!(
            elapsed >= Duration::from_millis(100) && elapsed < Duration::from_millis(100) + SLACK,
            "sleep {sleep_ms:?}: stopped after {elapsed:?}"
        );
        assert_eq!(sleeper.call(&batch(&[1, 2])).unwrap().batch.num_rows(), 2);
    }

    // A deadline is never earlier than configured: a plugin spinning with 10 ms runs for
    // at least 10 ms, every time.
    let mut probe = TransformPlugin::load(PluginSpec {
        name: "probe".into(),
        wasm: common::plugin_wasm("testing/probe"),
        config: serde_json::json!({"mode": "loop"}),
        limits: limits(10, 5000),
    })
    .unwrap();
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(
            probe.call(&batch(&[1])).unwrap_err(),
            Failure::Timeout { limit_ms: 10 }
        );
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(10),
            "a 10 ms deadline fired after {elapsed:?}"
        );
    }

    // Start-up has its own deadline: an `init` that takes 30 ms starts under a 10 ms call
    // deadline, and so does the fresh instance after a trap, every time.
    let mut slow_start = hostile(
        serde_json::json!({"mode": "trap", "id": 7, "init_busy_ms": 30}),
        limits(10, 5000),
    )
    .expect("a 30 ms start under a 5 s start-up deadline");
    for _ in 0..5 {
        assert!(matches!(
            slow_start.call(&batch(&[7])).unwrap_err(),
            Failure::Trap { .. }
        ));
        assert_eq!(slow_start.call(&batch(&[1])).unwrap().batch.num_rows(), 1);
    }

    // An `init` that never returns fails the start, reported as a start-up failure.
    let started = Instant::now();
    let error = match hostile(
        serde_json::json!({"mode": "identity", "init_forever": true}),
        limits(10, 200),
    ) {
        Ok(_) => panic!("an init that never returns started"),
        Err(e) => e,
    };
    assert!(
        error.contains("plugin_init") && error.contains("200 ms start-up deadline"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_millis(200) + SLACK + Duration::from_millis(500));
}
