//! The `tables` section: a pipeline for many tables of one captured database.
//!
//! A source table is named `<schema>.<table>` when its events say a schema (PostgreSQL,
//! SQL Server, Oracle), else `<db>.<table>` (MySQL); `include`, `exclude` and
//! `route.source` are globs over that name (`decode::route::SourceTable`). How the
//! names are matched and where each table goes is `crate::tables`; this module is only
//! the configuration and its checks.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

use super::DeclaredType;
use super::yaml::PathSegment;
use crate::decode::table::UnknownColumns;

/// Which tables of the stream a pipeline applies, where each goes, and their keys.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TablesConfig {
    /// Source tables to apply, as globs (`*`, `?`) over `<schema>.<table>` (or
    /// `<db>.<table>` for MySQL). Every table by default.
    #[serde(default = "every_table")]
    pub include: Vec<String>,
    /// Source tables to skip, even when `include` matches them.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Target tables for source tables, the first matching rule winning. A table that no
    /// rule matches keeps its table name. Several source tables may go to one target
    /// (sharded tables).
    #[serde(default)]
    pub route: Vec<RouteRule>,
    /// The primary key of tables whose events carry none (no per-table override and no
    /// Kafka record key).
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// Column types, as `name: type`, for every table whose events carry no schema block
    /// (an override's `columns` replace them for its table).
    #[serde(default)]
    pub columns: IndexMap<String, DeclaredType>,
    /// Match table and column names ignoring ASCII case.
    #[serde(default)]
    pub case_insensitive: bool,
    /// What to do with a column a table does not have yet.
    #[serde(default)]
    pub unknown_columns: UnknownColumns,
    /// Settings for single tables, by source table name (exact, not a glob).
    #[serde(default)]
    pub overrides: IndexMap<String, TableOverride>,
}

fn every_table() -> Vec<String> {
    vec!["*".into()]
}

/// Source tables matching `source` go to the target table `target`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// A glob over source table names.
    #[schemars(length(min = 1))]
    pub source: String,
    /// The target table's name.
    #[schemars(length(min = 1))]
    pub target: String,
}

/// One table's settings, over the section's defaults.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TableOverride {
    /// Primary key columns; first in line, before the Kafka record key.
    #[serde(default)]
    pub primary_key: Option<Vec<String>>,
    /// Column types, as `name: type`, for events that carry no schema block.
    #[serde(default)]
    pub columns: IndexMap<String, DeclaredType>,
    #[serde(default)]
    pub case_insensitive: Option<bool>,
    #[serde(default)]
    pub unknown_columns: Option<UnknownColumns>,
    /// This table's conflict strategy, in place of the pipeline's `conflict` section (a
    /// built-in strategy). Source tables merged into one target must agree on it.
    #[serde(default)]
    pub conflict: Option<crate::conflict::ConflictConfig>,
}

/// Problems in the section itself: patterns that are not globs, empty keys.
pub(super) fn checks(tables: &TablesConfig) -> Vec<(Vec<PathSegment>, String, Option<String>)> {
    let mut problems = Vec::new();
    let at = |parts: &[PathSegment]| {
        let mut path = vec![PathSegment::Key("tables".into())];
        path.extend_from_slice(parts);
        path
    };
    let key = |k: &str| PathSegment::Key(k.into());
    let mut glob = |parts: Vec<PathSegment>, pattern: &str| {
        if let Err(e) = glob::Pattern::new(pattern) {
            problems.push((
                at(&parts),
                format!("`{pattern}` is not a table pattern: {e}"),
                Some("patterns use `*` (any text, dots too) and `?` (one character)".into()),
            ));
        }
    };
    for (list, patterns) in [("include", &tables.include), ("exclude", &tables.exclude)] {
        for (i, pattern) in patterns.iter().enumerate() {
            glob(vec![key(list), PathSegment::Index(i)], pattern);
        }
    }
    for (i, rule) in tables.route.iter().enumerate() {
        glob(
            vec![key("route"), PathSegment::Index(i), key("source")],
            &rule.source,
        );
    }
    let mut duplicate_key = |parts: Vec<PathSegment>, columns: &[String]| {
        for (i, column) in columns.iter().enumerate() {
            if columns[..i].contains(column) {
                let mut path = parts.clone();
                path.push(PathSegment::Index(i));
                problems.push((
                    at(&path),
                    format!("`{column}` is listed twice in the primary key"),
                    None,
                ));
            }
        }
    };
    duplicate_key(vec![key("primary_key")], &tables.primary_key);
    for (name, table) in &tables.overrides {
        if let Some(columns) = &table.primary_key {
            duplicate_key(
                vec![key("overrides"), key(name), key("primary_key")],
                columns,
            );
        }
    }
    problems
}
