//! What a plugin's calls came to: counts by outcome and the time spent in them, for
//! `/metrics` and the status page. Counted by the call itself ([`super::instance::Plugin`])
//! with atomics, so reading them never holds up a call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Failure;

/// How a call ended: `ok`, or the code of its [`Failure`].
pub const OUTCOMES: [&str; 8] = [
    "ok",
    "error",
    "trap",
    "timeout",
    "oom",
    "bad_output",
    "init",
    "host",
];

impl Failure {
    /// The call's outcome, one of [`OUTCOMES`] (the code its reason starts with).
    pub fn outcome(&self) -> &'static str {
        match self {
            Failure::Returned(_) => "error",
            Failure::Trap { .. } => "trap",
            Failure::Timeout { .. } | Failure::OutOfFuel { .. } => "timeout",
            Failure::OutOfMemory { .. } => "oom",
            Failure::BadOutput(_) => "bad_output",
            Failure::Init(_) => "init",
            Failure::Host(_) => "host",
        }
    }
}

/// One plugin's calls.
#[derive(Debug)]
pub struct PluginStats {
    /// The plugin's name in the pipeline.
    pub name: String,
    /// `transform` or `resolver`.
    pub kind: &'static str,
    calls: [AtomicU64; OUTCOMES.len()],
    nanos: AtomicU64,
}

/// A point-in-time copy of [`PluginStats`].
#[derive(Debug, Clone, PartialEq)]
pub struct PluginReading {
    pub name: String,
    pub kind: &'static str,
    /// Calls by outcome, in [`OUTCOMES`] order.
    pub calls: [(&'static str, u64); OUTCOMES.len()],
    /// Time spent in calls, failed ones included.
    pub seconds: f64,
}

impl PluginReading {
    pub fn total_calls(&self) -> u64 {
        self.calls.iter().map(|(_, n)| n).sum()
    }

    pub fn failed_calls(&self) -> u64 {
        self.total_calls() - self.calls[0].1
    }
}

impl PluginStats {
    pub fn new(name: &str, kind: &'static str) -> PluginStats {
        PluginStats {
            name: name.to_string(),
            kind,
            calls: Default::default(),
            nanos: AtomicU64::new(0),
        }
    }

    /// Counts one call that took `elapsed` and ended with `failure` (`None`: it worked).
    pub fn record(&self, failure: Option<&Failure>, elapsed: Duration) {
        let outcome = failure.map_or("ok", Failure::outcome);
        let i = OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .expect("every outcome is listed");
        self.calls[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn read(&self) -> PluginReading {
        PluginReading {
            name: self.name.clone(),
            kind: self.kind,
            calls: std::array::from_fn(|i| (OUTCOMES[i], self.calls[i].load(Ordering::Relaxed))),
            seconds: self.nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_by_outcome_with_their_time() {
        let stats = PluginStats::new("mask", "transform");
        stats.record(None, Duration::from_millis(3));
        stats.record(None, Duration::from_millis(2));
        stats.record(
            Some(&Failure::Timeout { limit_ms: 10 }),
            Duration::from_millis(10),
        );
        stats.record(Some(&Failure::OutOfFuel { fuel: 1 }), Duration::ZERO);
        stats.record(Some(&Failure::Returned("no".into())), Duration::ZERO);
        let reading = stats.read();
        assert_eq!(reading.calls[0], ("ok", 2));
        assert_eq!(reading.calls[1], ("error", 1));
        assert_eq!(reading.calls[3], ("timeout", 2));
        assert_eq!(reading.total_calls(), 5);
        assert_eq!(reading.failed_calls(), 3);
        assert!(
            (reading.seconds - 0.015).abs() < 1e-9,
            "{}",
            reading.seconds
        );
    }

    #[test]
    fn every_failure_names_a_listed_outcome_matching_its_reason_code() {
        for failure in [
            Failure::Trap {
                trap: "t".into(),
                stderr: None,
            },
            Failure::Timeout { limit_ms: 1 },
            Failure::OutOfMemory {
                cap_mb: 1,
                asked_mb: 2,
            },
            Failure::BadOutput("b".into()),
            Failure::Returned("r".into()),
            Failure::Init("i".into()),
            Failure::Host("h".into()),
        ] {
            let outcome = failure.outcome();
            assert!(OUTCOMES.contains(&outcome));
            assert!(
                failure.reason().starts_with(&format!("plugin_{outcome}:")),
                "{outcome}: {}",
                failure.reason()
            );
        }
    }
}
