//! What a fault test found, for `scripts/faults`: each fault test compares the end state
//! with its oracle by key, reports the figures here, then asserts on them. The report is
//! one tab-separated line appended to the file `WEIR_FAULT_REPORT` names (nothing when it
//! is unset, as in `scripts/test`).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Write;

/// The variable naming the file the figures go to.
pub const REPORT: &str = "WEIR_FAULT_REPORT";

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Figures {
    /// Changes (or writes) the fault was injected into.
    pub events: u64,
    /// Keys the oracle has and the target does not.
    pub lost: u64,
    /// Keys whose values differ from the oracle's, and keys the oracle does not have.
    pub stale: u64,
    /// Changes applied more than once, where the target can show it (a change log, dead
    /// letters by row); `None` where a key holds one row and a duplicate cannot show.
    pub duplicated: Option<u64>,
}

impl Figures {
    /// Compares `actual` with `expected` key by key.
    pub fn compare<K: Ord + Debug, V: PartialEq + Debug>(
        events: u64,
        expected: &BTreeMap<K, V>,
        actual: &BTreeMap<K, V>,
    ) -> Figures {
        let lost = expected.keys().filter(|k| !actual.contains_key(k)).count();
        let stale = actual
            .iter()
            .filter(|(k, v)| expected.get(k) != Some(v))
            .count();
        Figures {
            events,
            lost: lost as u64,
            stale: stale as u64,
            duplicated: None,
        }
    }

    /// Reports the figures of `test` (what was injected, in a few words), then asserts
    /// that nothing was lost, stale or duplicated.
    pub fn report_and_check(&self, test: &str, injected: &str) {
        if let Some(path) = std::env::var_os(REPORT) {
            // One write of the whole line: the tests of a binary run at once.
            let line = format!(
                "{test}\t{injected}\t{}\t{}\t{}\t{}\t{}\n",
                self.events,
                self.lost,
                self.stale,
                self.duplicated.map_or("-".to_string(), |d| d.to_string()),
                // The test function, which scripts/faults matches with libtest's result.
                std::thread::current().name().unwrap_or("unnamed"),
            );
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut file| file.write_all(line.as_bytes()))
                .expect("write the fault report");
        }
        assert_eq!(
            (self.lost, self.stale, self.duplicated.unwrap_or(0)),
            (0, 0, 0),
            "{test} ({injected}): {self:?}"
        );
    }
}
