//! Fault injection for weir's own tests. `WEIR_INJECT_PANIC=<stage>` makes that pipeline
//! stage panic at its first batch (`fetch`, `read`, `transform`, `prepare`, `lane`,
//! `apply`), so `tests/hostile.rs` can prove that a stage that dies fails the run loudly
//! instead of reading as the end of the input; `parquet-roll` panics in a many-table
//! Parquet roll between renaming the files and committing the manifest. Unset, as in any real run, it costs one
//! load of a cached value per batch.

use std::sync::OnceLock;

/// The variable that names the stage to panic in.
pub const INJECT_PANIC: &str = "WEIR_INJECT_PANIC";

/// Panics when `WEIR_INJECT_PANIC` names `stage`.
pub fn panic_if_injected(stage: &str) {
    static INJECTED: OnceLock<Option<String>> = OnceLock::new();
    let injected = INJECTED.get_or_init(|| {
        std::env::var(INJECT_PANIC)
            .ok()
            .filter(|stage| !stage.is_empty())
    });
    if injected.as_deref() == Some(stage) {
        panic!("injected panic in the {stage} stage ({INJECT_PANIC})");
    }
}

/// The message a panic was raised with.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
