//! Table routing for many-table pipelines (`tables:`): which source tables are applied,
//! to which target table, with which key. It sits between decoding and the sink: the
//! reader reads each event's table, asks [`Routing`] where it goes, and decodes it with
//! that table's own decoder ([`ManyTables`]).
//!
//! A source table's name is `<schema>.<table>` when its events name a schema
//! (PostgreSQL, SQL Server, Oracle), else `<db>.<table>` (MySQL, MongoDB). An event
//! without a `source` block (flattened rows without `__table`) is named by its Kafka
//! topic, `<prefix>.<schema>.<table>` giving `<schema>.<table>`.

mod many;

use std::collections::HashMap;

use glob::{MatchOptions, Pattern};

use crate::config::tables::TablesConfig;
use crate::position::Position;

pub use many::{GroupLimits, ManyTables, Planned, TargetTable};

/// Globs over source table names (`transforms[].tables`): `*` spans dots.
#[derive(Debug, Default)]
pub struct TablePatterns(Vec<Pattern>);

impl TablePatterns {
    pub fn new(patterns: &[String]) -> Result<TablePatterns, String> {
        patterns
            .iter()
            .map(|p| Pattern::new(p).map_err(|e| format!("table pattern `{p}`: {e}")))
            .collect::<Result<_, _>>()
            .map(TablePatterns)
    }

    /// Whether `table` is selected: no patterns select every table.
    pub fn select(&self, table: &str) -> bool {
        let options = MatchOptions {
            case_sensitive: true,
            require_literal_separator: false,
            require_literal_leading_dot: false,
        };
        self.0.is_empty() || self.0.iter().any(|p| p.matches_with(table, options))
    }
}

/// Where a source table goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Not selected by `include`/`exclude`: its events are counted and skipped.
    Skipped,
    /// Applied to this target table. `routed` when a `route` rule chose it (and so other
    /// source tables may share it on purpose).
    Target { name: String, routed: bool },
}

/// The compiled `tables` section.
#[derive(Debug)]
pub struct Routing {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
    route: Vec<(Pattern, String)>,
    options: MatchOptions,
}

impl Routing {
    /// Compiles the section. Patterns were checked when the pipeline was loaded.
    pub fn new(config: &TablesConfig) -> Result<Routing, String> {
        let compile = |pattern: &str| {
            Pattern::new(pattern).map_err(|e| format!("table pattern `{pattern}`: {e}"))
        };
        let many = |patterns: &[String]| {
            patterns
                .iter()
                .map(|p| compile(p))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Routing {
            include: many(&config.include)?,
            exclude: many(&config.exclude)?,
            route: config
                .route
                .iter()
                .map(|rule| Ok((compile(&rule.source)?, rule.target.clone())))
                .collect::<Result<_, String>>()?,
            options: MatchOptions {
                case_sensitive: !config.case_insensitive,
                // `*` spans dots: `inventory.*` is every table of `inventory`.
                require_literal_separator: false,
                require_literal_leading_dot: false,
            },
        })
    }

    /// Where source table `name` goes: skipped, or a target table (the first matching
    /// route rule's, else the table's own name without its schema or database).
    pub fn select(&self, name: &str) -> Selection {
        let matches = |p: &Pattern| p.matches_with(name, self.options);
        if !self.include.iter().any(matches) || self.exclude.iter().any(matches) {
            return Selection::Skipped;
        }
        match self.route.iter().find(|(p, _)| matches(p)) {
            Some((_, target)) => Selection::Target {
                name: target.clone(),
                routed: true,
            },
            None => Selection::Target {
                name: name.rsplit('.').next().unwrap_or(name).to_string(),
                routed: false,
            },
        }
    }
}

/// The source table an event is for, from what it names: `[db, schema, table]` from its
/// `source` block (or `__db`, `__schema`, `__table`), else its Kafka topic. `None` when
/// nothing names a table.
pub fn source_table(path: [Option<&str>; 3], position: &Position) -> Option<String> {
    let mut name = String::new();
    source_table_into(path, position, &mut name).then_some(name)
}

/// [`source_table`], written into `out` (cleared first); false when nothing names a table.
pub fn source_table_into(path: [Option<&str>; 3], position: &Position, out: &mut String) -> bool {
    out.clear();
    let Some(SourceTable { space, table }) = source_table_parts(path, position) else {
        return false;
    };
    if let Some(space) = space {
        out.push_str(space);
        out.push('.');
    }
    out.push_str(table);
    true
}

/// A source table's name in its two parts: `<space>.<table>`, or `<table>` alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceTable<'a> {
    pub space: Option<&'a str>,
    pub table: &'a str,
}

impl SourceTable<'_> {
    /// Whether the name is `name` (compared without building it).
    pub fn is(&self, name: &str) -> bool {
        match self.space {
            None => name == self.table,
            Some(space) => name
                .strip_prefix(space)
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|rest| rest == self.table),
        }
    }
}

impl std::fmt::Display for SourceTable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.space {
            Some(space) => write!(f, "{space}.{}", self.table),
            None => f.write_str(self.table),
        }
    }
}

/// The parts of [`source_table`]'s name; `None` when nothing names a table.
pub fn source_table_parts<'a>(
    path: [Option<&'a str>; 3],
    position: &'a Position,
) -> Option<SourceTable<'a>> {
    let [db, schema, table] = path.map(|p| p.filter(|p| !p.is_empty()));
    if let Some(table) = table {
        return Some(SourceTable {
            space: schema.or(db),
            table,
        });
    }
    let Position::Kafka { topic, .. } = position else {
        return None;
    };
    let mut parts = topic.rsplitn(3, '.');
    Some(match (parts.next(), parts.next(), parts.next()) {
        (Some(table), Some(schema), Some(_prefix)) => SourceTable {
            space: Some(schema),
            table,
        },
        _ => SourceTable {
            space: None,
            table: topic,
        },
    })
}

/// Per-table key sources that do not depend on the event: the override, the default, and
/// what the target's existing tables have.
#[derive(Debug, Default)]
pub struct Keys {
    pub overrides: HashMap<String, Vec<String>>,
    pub default: Vec<String>,
    /// Primary keys of the target's existing tables, by target table name.
    pub targets: HashMap<String, Vec<String>>,
}

/// The key columns of a Kafka record key: Debezium's key JSON with its schema
/// (`{"schema":…,"payload":{"id":1}}`) or without (`{"id":1}`), in their order. `None` for
/// a key that is not such an object (or is larger than it could reasonably be).
pub fn record_key_columns(key: &[u8]) -> Option<Vec<String>> {
    use serde::de::IgnoredAny;
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct WithSchema {
        #[allow(dead_code)]
        schema: IgnoredAny,
        payload: indexmap::IndexMap<String, IgnoredAny>,
    }
    if key.len() > 64 << 10 {
        return None;
    }
    let columns: Vec<String> = match serde_json::from_slice::<WithSchema>(key) {
        Ok(with) => with.payload.into_keys().collect(),
        Err(_) => serde_json::from_slice::<indexmap::IndexMap<String, IgnoredAny>>(key)
            .ok()?
            .into_keys()
            .collect(),
    };
    (!columns.is_empty()).then_some(columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tables::RouteRule;

    fn routing(include: &[&str], exclude: &[&str], route: &[(&str, &str)]) -> Routing {
        let config = TablesConfig {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            route: route
                .iter()
                .map(|(s, t)| RouteRule {
                    source: s.to_string(),
                    target: t.to_string(),
                })
                .collect(),
            primary_key: vec![],
            columns: Default::default(),
            case_insensitive: false,
            unknown_columns: Default::default(),
            overrides: Default::default(),
        };
        Routing::new(&config).unwrap()
    }

    #[test]
    fn include_exclude_and_the_first_route_rule_decide() {
        let r = routing(
            &["inventory.*"],
            &["inventory.audit_log"],
            &[
                ("inventory.orders_shard_*", "orders"),
                ("inventory.orders_*", "never"),
            ],
        );
        let target = |name: &str, routed| Selection::Target {
            name: name.into(),
            routed,
        };
        assert_eq!(r.select("inventory.customers"), target("customers", false));
        assert_eq!(r.select("inventory.orders_shard_1"), target("orders", true));
        assert_eq!(r.select("inventory.audit_log"), Selection::Skipped);
        assert_eq!(r.select("other.customers"), Selection::Skipped);
        assert_eq!(r.select("Inventory.customers"), Selection::Skipped);
        let r = routing(&["inv?ntory.*"], &[], &[]);
        assert_eq!(r.select("inventory.a.b"), target("b", false));
    }

    #[test]
    fn tables_are_named_by_schema_else_db_else_topic() {
        let at = |topic: &str| Position::Kafka {
            stream: "s".into(),
            topic: topic.into(),
            partition: 0,
            offset: 0,
        };
        let file = Position::File {
            stream: "f".into(),
            line: 1,
            offset: 0,
            next: 1,
        };
        let name = |path: [Option<&str>; 3], position: &Position| source_table(path, position);
        assert_eq!(
            name([Some("db"), Some("public"), Some("t")], &file).as_deref(),
            Some("public.t")
        );
        assert_eq!(
            name([Some("inventory"), None, Some("t")], &file).as_deref(),
            Some("inventory.t")
        );
        assert_eq!(
            name([Some("inventory"), Some(""), Some("t")], &file).as_deref(),
            Some("inventory.t")
        );
        assert_eq!(
            name([None, None, None], &at("dbserver1.inventory.orders")).as_deref(),
            Some("inventory.orders")
        );
        assert_eq!(
            name([None, None, None], &at("orders")).as_deref(),
            Some("orders")
        );
        assert_eq!(name([None, None, None], &file), None);
    }

    #[test]
    fn record_keys_give_their_columns_in_order() {
        assert_eq!(
            record_key_columns(br#"{"b":1,"a":2}"#),
            Some(vec!["b".into(), "a".into()])
        );
        assert_eq!(
            record_key_columns(
                br#"{"schema":{"type":"struct","fields":[]},"payload":{"z":1,"id":2}}"#
            ),
            Some(vec!["z".into(), "id".into()])
        );
        // A key that happens to have a `payload` column is a key without schema.
        assert_eq!(
            record_key_columns(br#"{"payload":1}"#),
            Some(vec!["payload".into()])
        );
        assert_eq!(record_key_columns(b"42"), None);
        assert_eq!(record_key_columns(b"{}"), None);
        assert_eq!(record_key_columns(b"{not json"), None);
    }
}
