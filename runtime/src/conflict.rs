//! The built-in conflict strategies' rule: which of two writes to one key wins.
//!
//! Every change, and every stored row or tombstone, carries a [`Stamp`]: its version and
//! its origin. A strategy orders any two stamps, and the greater wins. The order is
//! total — ties on the version fall to the origin id, compared as text — so
//! the winner of a key is the same whatever order its changes arrive in, which is what
//! brings every site to the same state. docs/sync.md states the rule for users.

pub mod config;

use std::cmp::Ordering;

pub use config::{BuiltinConfig, ConflictConfig};

/// A write's version, from the strategy's version column (or the source position).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// Integers, and dates and timestamps as their count of units since the epoch.
    Int(i128),
    /// Text, compared bytewise.
    Text(String),
}

/// What a write claims: its version, whether it deletes the row, and the site it came
/// from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub version: Version,
    /// A delete carries the version of the row it deleted (its `before` image), so at an
    /// equal version the delete wins: it was made after that row.
    pub deleted: bool,
    pub origin: String,
}

/// A built-in strategy (`conflict.strategy` other than `wasm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// The highest version wins.
    LastWriteWins,
    /// The lowest version wins: the first write to a key stands.
    FirstWriteWins,
    /// The origin ranked first in the list wins; within an origin, the highest version.
    /// An origin not in the list ranks below every listed one.
    SourcePriority(Vec<String>),
}

/// What to do with an incoming change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// It wins: write it (and, for a delete, record its tombstone).
    Apply,
    /// The stored write wins, or it is the same write again: leave the key as it is.
    Skip,
}

impl Strategy {
    /// Decides an incoming change against the key's stored write: its row, or its
    /// tombstone when the row was deleted (`None` when the key has neither).
    pub fn decide(&self, incoming: &Stamp, stored: Option<&Stamp>) -> Decision {
        match stored {
            Some(stored) if self.compare(incoming, stored) != Ordering::Greater => Decision::Skip,
            _ => Decision::Apply,
        }
    }

    /// Orders two writes to one key: `Greater` when `a` wins over `b`. At an equal
    /// version a delete wins over a row write, then the greater origin id wins. `Equal`
    /// only for the same write (version, kind and origin) delivered twice.
    pub fn compare(&self, a: &Stamp, b: &Stamp) -> Ordering {
        let by_strategy = match self {
            Strategy::LastWriteWins => a.version.cmp(&b.version),
            Strategy::FirstWriteWins => b.version.cmp(&a.version),
            Strategy::SourcePriority(ranks) => {
                // A lower index ranks higher; unlisted origins rank lowest.
                let rank = |origin: &str| {
                    std::cmp::Reverse(ranks.iter().position(|r| r == origin).unwrap_or(usize::MAX))
                };
                rank(&a.origin)
                    .cmp(&rank(&b.origin))
                    .then_with(|| a.version.cmp(&b.version))
            }
        };
        by_strategy
            .then_with(|| a.deleted.cmp(&b.deleted))
            .then_with(|| a.origin.cmp(&b.origin))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn stamp(version: i128, origin: &str) -> Stamp {
        Stamp {
            version: Version::Int(version),
            deleted: false,
            origin: origin.into(),
        }
    }

    #[test]
    fn last_write_wins_on_the_version_and_breaks_ties_by_origin() {
        let lww = Strategy::LastWriteWins;
        assert_eq!(
            lww.decide(&stamp(2, "a"), Some(&stamp(1, "b"))),
            Decision::Apply
        );
        assert_eq!(
            lww.decide(&stamp(1, "b"), Some(&stamp(2, "a"))),
            Decision::Skip
        );
        // A tie: the greater origin id wins, from either side.
        assert_eq!(
            lww.decide(&stamp(5, "b"), Some(&stamp(5, "a"))),
            Decision::Apply
        );
        assert_eq!(
            lww.decide(&stamp(5, "a"), Some(&stamp(5, "b"))),
            Decision::Skip
        );
        // The same write again changes nothing.
        assert_eq!(
            lww.decide(&stamp(5, "a"), Some(&stamp(5, "a"))),
            Decision::Skip
        );
        assert_eq!(lww.decide(&stamp(1, "a"), None), Decision::Apply);
    }

    #[test]
    fn a_delete_wins_over_the_row_it_deleted() {
        // A delete carries its row's version; from any origin it beats that row.
        let delete = Stamp {
            deleted: true,
            ..stamp(5, "a")
        };
        for strategy in [Strategy::LastWriteWins, Strategy::FirstWriteWins] {
            assert_eq!(
                strategy.decide(&delete, Some(&stamp(5, "b"))),
                Decision::Apply
            );
            assert_eq!(
                strategy.decide(&stamp(5, "b"), Some(&delete)),
                Decision::Skip
            );
        }
        // A newer write brings the row back.
        assert_eq!(
            Strategy::LastWriteWins.decide(&stamp(6, "a"), Some(&delete)),
            Decision::Apply
        );
    }

    #[test]
    fn first_write_wins_keeps_the_lowest_version() {
        let fww = Strategy::FirstWriteWins;
        assert_eq!(
            fww.decide(&stamp(2, "a"), Some(&stamp(1, "a"))),
            Decision::Skip
        );
        assert_eq!(
            fww.decide(&stamp(1, "a"), Some(&stamp(2, "a"))),
            Decision::Apply
        );
        assert_eq!(
            fww.decide(&stamp(1, "b"), Some(&stamp(1, "a"))),
            Decision::Apply
        );
    }

    #[test]
    fn source_priority_ranks_origins_then_versions() {
        let sp = Strategy::SourcePriority(vec!["hq".into(), "branch".into()]);
        // hq outranks branch whatever the versions.
        assert_eq!(
            sp.decide(&stamp(1, "hq"), Some(&stamp(9, "branch"))),
            Decision::Apply
        );
        assert_eq!(
            sp.decide(&stamp(9, "branch"), Some(&stamp(1, "hq"))),
            Decision::Skip
        );
        // Within one origin, the newer version.
        assert_eq!(
            sp.decide(&stamp(3, "branch"), Some(&stamp(2, "branch"))),
            Decision::Apply
        );
        // An unlisted origin ranks below every listed one.
        assert_eq!(
            sp.decide(&stamp(9, "lab"), Some(&stamp(1, "branch"))),
            Decision::Skip
        );
        assert_eq!(
            sp.decide(&stamp(1, "branch"), Some(&stamp(9, "lab"))),
            Decision::Apply
        );
    }

    #[test]
    fn text_versions_compare_bytewise() {
        let lww = Strategy::LastWriteWins;
        let text = |v: &str| Stamp {
            version: Version::Text(v.into()),
            deleted: false,
            origin: "a".into(),
        };
        assert_eq!(
            lww.decide(
                &text("2026-11-22T10:00:01Z"),
                Some(&text("2026-11-22T10:00:00Z"))
            ),
            Decision::Apply
        );
    }

    /// One change in a generated stream.
    #[derive(Debug, Clone)]
    struct Change {
        key: u8,
        stamp: Stamp,
        /// `None` for a delete.
        value: Option<u32>,
    }

    /// A key's stored state, as a sink keeps it: the row, or the tombstone of its delete.
    #[derive(Debug, Clone, PartialEq)]
    enum Stored {
        Row(Stamp, u32),
        Tombstone(Stamp),
    }

    /// Applies changes in the given order the way the sinks do: decide against the row
    /// or the tombstone, then write the row or replace it with a tombstone.
    fn apply(strategy: &Strategy, changes: &[Change]) -> BTreeMap<u8, u32> {
        let mut stored: BTreeMap<u8, Stored> = BTreeMap::new();
        for change in changes {
            let current = stored.get(&change.key).map(|s| match s {
                Stored::Row(stamp, _) | Stored::Tombstone(stamp) => stamp,
            });
            if strategy.decide(&change.stamp, current) == Decision::Apply {
                let next = match change.value {
                    Some(value) => Stored::Row(change.stamp.clone(), value),
                    None => Stored::Tombstone(change.stamp.clone()),
                };
                stored.insert(change.key, next);
            }
        }
        stored
            .into_iter()
            .filter_map(|(key, s)| match s {
                Stored::Row(_, value) => Some((key, value)),
                Stored::Tombstone(_) => None,
            })
            .collect()
    }

    /// The oracle: each key's winner is its greatest change under the strategy's order,
    /// computed without any notion of delivery.
    fn oracle(strategy: &Strategy, changes: &[Change]) -> BTreeMap<u8, u32> {
        let mut winners: BTreeMap<u8, &Change> = BTreeMap::new();
        for change in changes {
            let better = winners
                .get(&change.key)
                .is_none_or(|w| strategy.compare(&change.stamp, &w.stamp) == Ordering::Greater);
            if better {
                winners.insert(change.key, change);
            }
        }
        winners
            .into_iter()
            .filter_map(|(key, w)| w.value.map(|v| (key, v)))
            .collect()
    }

    /// Writes as sites make them: each origin numbers its own writes, so one origin never
    /// reuses a version for a key (two sites may).
    fn stream(rng: &mut StdRng) -> Vec<Change> {
        let origins = ["a", "b", "c"];
        let mut next_version: BTreeMap<(u8, &str), i128> = BTreeMap::new();
        (0..rng.random_range(1..40))
            .map(|_| {
                let key = rng.random_range(0..4u8);
                let origin = origins[rng.random_range(0..origins.len())];
                // Versions from a shared clock that sites read at about the same time:
                // different origins collide often, one origin always moves forward.
                let floor = next_version.get(&(key, origin)).copied().unwrap_or(0);
                let version = floor.max(rng.random_range(0..8));
                next_version.insert((key, origin), version + 1);
                let value = rng.random_bool(0.75).then(|| rng.random());
                Change {
                    key,
                    stamp: Stamp {
                        deleted: value.is_none(),
                        ..stamp(version, origin)
                    },
                    value,
                }
            })
            .collect()
    }

    #[test]
    fn any_delivery_order_with_duplicates_converges_to_the_oracle() {
        let strategies = [
            Strategy::LastWriteWins,
            Strategy::FirstWriteWins,
            Strategy::SourcePriority(vec!["b".into(), "a".into()]),
        ];
        for seed in 0..2000u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let changes = stream(&mut rng);
            // Delivery: a shuffle, with about a third of the changes delivered again.
            let mut delivered = changes.clone();
            delivered.extend(changes.iter().filter(|_| rng.random_bool(0.3)).cloned());
            delivered.shuffle(&mut rng);
            for strategy in &strategies {
                assert_eq!(
                    apply(strategy, &delivered),
                    oracle(strategy, &changes),
                    "seed {seed}, {strategy:?}, delivered {delivered:?}"
                );
            }
        }
    }
}
