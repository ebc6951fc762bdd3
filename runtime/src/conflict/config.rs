//! The pipeline's `conflict` section: a built-in strategy or a resolver plugin.

use schemars::JsonSchema;
use serde::Deserialize;

use super::Strategy;
use crate::config::HumanDuration;
use crate::plugin::ResolverConfig;

/// The `conflict` section: how a change that meets an existing target row (or a deleted
/// one) is resolved. docs/sync.md describes the strategies and their tie-break rule.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "strategy", rename_all = "kebab-case")]
pub enum ConflictConfig {
    /// The highest version wins (the source position when there is no `version_column`).
    LastWriteWins(BuiltinConfig),
    /// The lowest version wins: the first write to a key stands.
    FirstWriteWins(BuiltinConfig),
    /// The origin listed first in `priority` wins; within an origin, the highest version.
    SourcePriority(BuiltinConfig),
    /// A resolver plugin (the `weir:plugin/resolver` world) decides per change: apply it,
    /// skip it, or write a merged row.
    Wasm(ResolverConfig),
}

impl ConflictConfig {
    /// The built-in strategy's settings, `None` for a resolver plugin.
    pub fn builtin(&self) -> Option<(Strategy, &BuiltinConfig)> {
        match self {
            ConflictConfig::LastWriteWins(c) => Some((Strategy::LastWriteWins, c)),
            ConflictConfig::FirstWriteWins(c) => Some((Strategy::FirstWriteWins, c)),
            ConflictConfig::SourcePriority(c) => {
                Some((Strategy::SourcePriority(c.priority.clone()), c))
            }
            ConflictConfig::Wasm(_) => None,
        }
    }

    /// How many lanes apply changes in parallel.
    pub fn lanes(&self) -> usize {
        self.builtin().map_or(1, |(_, c)| c.lanes as usize)
    }
}

/// Settings of the built-in strategies.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BuiltinConfig {
    /// The column holding each row's version (an integer, decimal, date, timestamp or text
    /// column). A delete's version is read from its `before` image. `last-write-wins`
    /// without it orders changes by their position in the source (one source only).
    #[serde(default)]
    pub version_column: Option<String>,
    /// `source-priority`: origin ids, highest priority first. Unlisted origins rank below.
    #[serde(default)]
    pub priority: Vec<String>,
    /// Lanes that apply changes in parallel, routed by a hash of the primary key (order
    /// per key is kept). More than one needs the postgres sink.
    #[serde(default = "one_lane")]
    #[schemars(range(min = 1, max = 64))]
    pub lanes: u32,
    /// The site this pipeline writes to. Changes whose origin is this site are dropped:
    /// they were made here and came back (A → B → A).
    #[serde(default)]
    pub site: Option<String>,
    /// The origin of changes that carry none (no `origin_column` value): the site the
    /// source topic comes from.
    #[serde(default)]
    pub source_site: Option<String>,
    /// A column of the table that holds each row's origin site. weir reads a change's
    /// origin from it, fills it with `source_site` where it is null, and writes it with the
    /// row, so the change capture at the target sees where the write came from.
    #[serde(default)]
    pub origin_column: Option<String>,
    /// Where deletes keep their version.
    #[serde(default)]
    pub tombstones: TombstonesConfig,
}

fn one_lane() -> u32 {
    1
}

/// Tombstones: the version of each deleted key, so a late, older update cannot bring the
/// row back.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TombstonesConfig {
    /// How long a tombstone is kept (default 7 days). It must exceed the longest delay
    /// with which a change can reach this site.
    #[serde(default = "default_horizon")]
    pub horizon: HumanDuration,
}

/// Seven days: how long tombstones, and the identities of changes a resolver decided,
/// are kept unless the pipeline says otherwise.
pub(crate) fn default_horizon() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(7 * 24 * 3600))
}

impl Default for TombstonesConfig {
    fn default() -> Self {
        TombstonesConfig {
            horizon: default_horizon(),
        }
    }
}
