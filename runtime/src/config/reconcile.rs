//! The pipeline's `reconcile` section: which snapshots `weir reconcile` compares, and how
//! (docs/reconcile.md). The comparison itself lives in the `weir-reconcile` crate; this
//! is only its configuration, so `weir validate` checks it with the rest of the file.

use std::path::PathBuf;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

use super::yaml::PathSegment;
use crate::redact::Secret;
use crate::source::SourceConfig;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    /// The side that holds the truth, registered as table `source`.
    pub source: SnapshotConfig,
    /// The side to check, registered as table `target`.
    pub target: SnapshotConfig,
    /// Columns rows are matched by (source names). Defaults to `table.primary_key`.
    #[serde(default)]
    pub key: Vec<String>,
    /// Target column names by source column name, where they differ.
    #[serde(default)]
    pub columns: IndexMap<String, String>,
    /// Source columns left out of the comparison: they differ by design (a masked value,
    /// a load time).
    #[serde(default)]
    pub ignore: Vec<String>,
    /// Floating-point columns compare equal within this absolute difference. Other types
    /// always compare exactly.
    #[serde(default)]
    pub float_tolerance: Option<f64>,
    /// Named SQL queries over `source` and `target`; their results are printed and
    /// included in the report.
    #[serde(default)]
    pub queries: Vec<NamedQuery>,
    /// `full` compares every row in DataFusion; `checksum` compares checksums of key
    /// ranges inside each database and reads only the rows of ranges that differ
    /// (PostgreSQL on both sides, one integer key column).
    #[serde(default)]
    pub mode: Mode,
    /// Settings of checksum mode.
    #[serde(default)]
    pub checksum: ChecksumConfig,
    /// Compare a live pipeline at a consistent cut: rows changed within `min_age`, by a
    /// timestamp column, on either side, are left out (they may still be in flight).
    #[serde(default)]
    pub cut: Option<CutConfig>,
    /// Before comparing, wait until the running pipeline has applied its source up to a
    /// position: by default the end each of its streams has when `weir reconcile` starts.
    #[serde(default)]
    pub wait: Option<WaitConfig>,
    /// A many-table pipeline (`tables`): how many tables are compared at once.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 64))]
    pub concurrency: usize,
}

fn default_concurrency() -> usize {
    4
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitConfig {
    /// The positions to wait for, by stream: `orders/0: 1500` (topic `orders`, partition
    /// 0: every offset below 1500 applied), or the file source's `path` and a byte
    /// offset. Empty (the default): the end of every stream of the pipeline's source
    /// when the wait starts (each partition's high watermark, the file's length).
    #[serde(default)]
    pub positions: IndexMap<String, i64>,
    /// How long to wait before giving up (exit 2, naming the streams behind).
    #[serde(default = "default_wait_timeout")]
    pub timeout: super::HumanDuration,
}

fn default_wait_timeout() -> super::HumanDuration {
    super::HumanDuration(std::time::Duration::from_secs(600))
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CutConfig {
    /// A timestamp (or date) column both sides keep current: a row's last change time.
    pub column: String,
    /// Rows whose `column` is later than this long before the comparison starts are left
    /// out on both sides (`5m`, `1h`).
    pub min_age: super::HumanDuration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    Full,
    Checksum,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChecksumConfig {
    /// Keys per bucket at the first level; a differing bucket is split in 32 until
    /// buckets hold at most 32 keys, whose rows are then compared.
    #[serde(default = "default_bucket_keys")]
    #[schemars(range(min = 32))]
    pub bucket_keys: i64,
    /// Key ranges the first pass is cut into: each is one query per side, and the unit
    /// a killed run resumes from. Default: one per 4 million rows (PostgreSQL's estimate
    /// of the source table's size), since one scan hashes fastest.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub ranges: Option<u32>,
    /// Where finished ranges are recorded so a killed run resumes; relative to the
    /// pipeline file. Default: `<pipeline name>.reconcile-state.json` beside it.
    #[serde(default)]
    pub state: Option<PathBuf>,
}

fn default_bucket_keys() -> i64 {
    1024
}

impl Default for ChecksumConfig {
    fn default() -> Self {
        ChecksumConfig {
            bucket_keys: default_bucket_keys(),
            ranges: None,
            state: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NamedQuery {
    pub name: String,
    pub sql: String,
}

/// Where a snapshot is read from.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SnapshotConfig {
    /// Parquet files: one file, or a directory of `.parquet` files.
    Parquet(ParquetSnapshot),
    /// A table of a SQLite database.
    Sqlite(SqliteSnapshot),
    /// A PostgreSQL table, or the rows of a query.
    Postgres(PostgresSnapshot),
    /// A Debezium change log, materialised to its final state by key: the last change of
    /// each key, without the deleted ones.
    Debezium(DebeziumSnapshot),
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DebeziumSnapshot {
    /// A file of change events, one per line; relative to the pipeline file. Give this
    /// or `topic`. Events are decoded with the pipeline's `table` settings (key, declared
    /// column types).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A Kafka topic of change events, read from its start up to the end it has when
    /// `weir reconcile` starts. Give this or `path`.
    #[serde(default)]
    pub topic: Option<String>,
    /// A many-table pipeline: every topic whose name matches this regular expression,
    /// split by table. Without `path`, `topic` and `topic_pattern`, a many-table
    /// pipeline reads its own source's file or topics.
    #[serde(default)]
    pub topic_pattern: Option<String>,
    /// Bootstrap servers of `topic`. Default: the pipeline's Kafka source's `brokers`
    /// (and its `options`, unless `options` is given here).
    #[serde(default)]
    pub brokers: Option<String>,
    /// librdkafka settings for reading `topic` (TLS, SASL), as for the Kafka source.
    #[serde(default)]
    pub options: Option<crate::kafka::KafkaOptions>,
    /// The shape of each event (a line, or a record's value), as for the sources.
    #[serde(default)]
    pub format: crate::decode::Format,
    /// Run the pipeline's `transforms` over the log first, as `weir run` does, so the
    /// snapshot is what the target should hold (masked columns masked, filtered rows
    /// gone). Rows a plugin refuses are left out and counted.
    #[serde(default)]
    pub transforms: bool,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParquetSnapshot {
    /// A file or a directory; relative to the pipeline file. A many-table pipeline: a
    /// folder with a folder per table.
    pub path: PathBuf,
    /// A many-table pipeline's source side: the schema (or database) its tables had in the
    /// change stream, as for SQLite.
    #[serde(default)]
    pub schema: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqliteSnapshot {
    /// The database file; relative to the pipeline file.
    pub path: PathBuf,
    /// The table. A many-table pipeline compares every table and names none.
    #[serde(default)]
    pub table: Option<String>,
    /// A many-table pipeline's source side: the schema (or database) its tables had in the
    /// change stream, so that `<schema>.<table>` names them for `tables.include` and
    /// `tables.route`. Default: the tables' bare names.
    #[serde(default)]
    pub schema: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresSnapshot {
    /// Connection URL; take the password from the environment (`${PG_PASSWORD}`).
    pub url: Secret,
    /// `schema.table` or `table` (in `public`).
    #[serde(default)]
    pub table: Option<String>,
    /// A query whose rows are the snapshot (instead of `table`).
    #[serde(default)]
    pub query: Option<String>,
    /// A many-table pipeline: the schema whose tables are compared (default `public`).
    /// On the source side its tables are named `<schema>.<table>` for `tables.include`
    /// and `tables.route`.
    #[serde(default)]
    pub schema: Option<String>,
}

fn at(parts: &[&str]) -> Vec<PathSegment> {
    parts
        .iter()
        .map(|p| PathSegment::Key(p.to_string()))
        .collect()
}

/// The checks of a many-table pipeline's section: each side is a whole database (a
/// schema, a file, a folder, a change log), and what names one table's columns cannot
/// be said once for all of them.
fn many_table_checks(
    config: &ReconcileConfig,
    pipeline: &super::PipelineConfig,
) -> Vec<(Vec<PathSegment>, String, Option<String>)> {
    let mut problems = Vec::new();
    for (side, snapshot) in [("source", &config.source), ("target", &config.target)] {
        let one_table = match snapshot {
            SnapshotConfig::Postgres(pg) => pg.table.is_some() || pg.query.is_some(),
            SnapshotConfig::Sqlite(sqlite) => sqlite.table.is_some(),
            SnapshotConfig::Parquet(_) => false,
            SnapshotConfig::Debezium(log) => log.topic.is_some(),
        };
        if one_table {
            problems.push((
                at(&["reconcile", side]),
                "a many-table pipeline compares every table it routes: this side names one \
                 (`table`, `query` or `topic`)"
                    .into(),
                Some(
                    "give the database instead: `schema:` for postgres, the file for sqlite, \
                     the folder for parquet, `path` or `topic_pattern` for a change log"
                        .into(),
                ),
            ));
        }
        if side == "target"
            && matches!(
                snapshot,
                SnapshotConfig::Sqlite(SqliteSnapshot {
                    schema: Some(_),
                    ..
                }) | SnapshotConfig::Parquet(ParquetSnapshot {
                    schema: Some(_),
                    ..
                })
            )
        {
            problems.push((
                at(&["reconcile", side, "schema"]),
                "`schema` names the source side's tables as the change stream did; a target \
                 table is named by the routing"
                    .into(),
                None,
            ));
        }
        if let SnapshotConfig::Debezium(log) = snapshot
            && log.path.is_some()
            && log.topic_pattern.is_some()
        {
            problems.push((
                at(&["reconcile", side]),
                "give `path` (a file) or `topic_pattern` (Kafka topics), not both".into(),
                None,
            ));
        }
    }
    let unsupported = [
        (
            "key",
            !config.key.is_empty(),
            "each table's key comes from the `tables` rules (declare one in `tables.overrides.<table>.primary_key`)",
        ),
        (
            "queries",
            !config.queries.is_empty(),
            "queries name the tables `source` and `target`, which a many-table comparison has one of per table",
        ),
        (
            "cut",
            config.cut.is_some(),
            "a cut column is one table's; it does not work with `tables` yet",
        ),
    ];
    for (name, given, why) in unsupported {
        if given {
            problems.push((
                at(&["reconcile", name]),
                format!("`{name}` is for a one-table pipeline: {why}"),
                None,
            ));
        }
    }
    let _ = pipeline;
    problems
}

/// Problems the types cannot express: `(path, message, hint)`.
pub fn checks(
    config: &ReconcileConfig,
    pipeline: &super::PipelineConfig,
) -> Vec<(Vec<PathSegment>, String, Option<String>)> {
    if pipeline.tables.is_some() {
        return many_table_checks(config, pipeline);
    }
    let Some(table) = &pipeline.table else {
        return Vec::new();
    };
    let primary_key = &table.primary_key;
    let kafka_source = matches!(pipeline.source, SourceConfig::Kafka(_));
    let mut problems = Vec::new();
    for (side, snapshot) in [("source", &config.source), ("target", &config.target)] {
        let schema = match snapshot {
            SnapshotConfig::Postgres(pg) => pg.schema.is_some(),
            SnapshotConfig::Sqlite(sqlite) => sqlite.schema.is_some(),
            SnapshotConfig::Parquet(parquet) => parquet.schema.is_some(),
            SnapshotConfig::Debezium(log) => log.topic_pattern.is_some(),
        };
        if schema {
            problems.push((
                at(&["reconcile", side]),
                "`schema` and `topic_pattern` are for a many-table pipeline (`tables`); this \
                 one compares its one table"
                    .into(),
                Some("name the table (`table: public.orders`) or the topic".into()),
            ));
        }
        if let SnapshotConfig::Sqlite(sqlite) = snapshot
            && sqlite.table.is_none()
        {
            problems.push((
                at(&["reconcile", side, "table"]),
                "a sqlite snapshot needs the `table` to compare".into(),
                Some("e.g. `table: orders`".into()),
            ));
        }
        if let SnapshotConfig::Postgres(pg) = snapshot
            && pg.table.is_some() == pg.query.is_some()
        {
            problems.push((
                at(&["reconcile", side]),
                "a postgres snapshot needs `table` or `query` (one of them)".into(),
                Some("e.g. `table: public.orders`".into()),
            ));
        }
        if let SnapshotConfig::Debezium(log) = snapshot {
            if log.path.is_some() == log.topic.is_some() {
                problems.push((
                    at(&["reconcile", side]),
                    "a debezium snapshot needs `path` (a file) or `topic` (a Kafka topic), \
                     one of them"
                        .into(),
                    Some("e.g. `topic: shop.public.orders`".into()),
                ));
            }
            if log.path.is_some() && (log.brokers.is_some() || log.options.is_some()) {
                problems.push((
                    at(&["reconcile", side, "brokers"]),
                    "`brokers` and `options` are for a `topic`, not a file".into(),
                    None,
                ));
            }
            if log.topic.is_some() && log.brokers.is_none() && !kafka_source {
                problems.push((
                    at(&["reconcile", side, "brokers"]),
                    "no brokers to read the topic from: the pipeline's source is not Kafka".into(),
                    Some("give `brokers: host:9092`".into()),
                ));
            }
            for (option, message) in log
                .options
                .as_ref()
                .map(crate::kafka::check_options)
                .unwrap_or_default()
            {
                problems.push((at(&["reconcile", side, "options", &option]), message, None));
            }
        }
    }
    if let Some(wait) = &config.wait
        && !kafka_source
        && wait.positions.len() > 1
    {
        problems.push((
            at(&["reconcile", "wait", "positions"]),
            "a file source has one stream: give one position (its path and a byte offset)".into(),
            None,
        ));
    }
    if config.key.is_empty() && primary_key.is_empty() {
        problems.push((
            at(&["reconcile", "key"]),
            "no key to match rows by".into(),
            Some("name the key columns: `key: [id]`".into()),
        ));
    }
    let key = if config.key.is_empty() {
        primary_key
    } else {
        &config.key
    };
    for column in &config.ignore {
        if key.contains(column) {
            problems.push((
                at(&["reconcile", "ignore"]),
                format!(
                    "`{column}` is a key column; rows are matched by it, so it cannot be ignored"
                ),
                None,
            ));
        }
    }
    if config.mode == Mode::Checksum {
        let both_postgres = matches!(
            (&config.source, &config.target),
            (SnapshotConfig::Postgres(s), SnapshotConfig::Postgres(t))
                if s.table.is_some() && t.table.is_some()
        );
        if !both_postgres {
            problems.push((
                at(&["reconcile", "mode"]),
                "checksum mode needs PostgreSQL tables on both sides (`type: postgres` with \
                 `table`)"
                    .into(),
                Some("use `mode: full` for other snapshots".into()),
            ));
        }
        if key.len() != 1 {
            problems.push((
                at(&["reconcile", "mode"]),
                format!(
                    "checksum mode cuts key ranges on one integer key column; the key is ({})",
                    key.join(", ")
                ),
                Some("use `mode: full`".into()),
            ));
        }
    }
    if let Some(cut) = &config.cut
        && (key.contains(&cut.column) || config.ignore.contains(&cut.column))
    {
        problems.push((
            at(&["reconcile", "cut", "column"]),
            format!(
                "`{}` is a key or ignored column; the cut needs a compared timestamp column",
                cut.column
            ),
            None,
        ));
    }
    let mut names = std::collections::HashSet::new();
    for (i, query) in config.queries.iter().enumerate() {
        if !names.insert(query.name.as_str()) {
            let mut path = at(&["reconcile", "queries"]);
            path.push(PathSegment::Index(i));
            path.push(PathSegment::Key("name".into()));
            problems.push((
                path,
                format!("two queries are named `{}`", query.name),
                None,
            ));
        }
    }
    if let Some(tolerance) = config.float_tolerance
        && !(tolerance >= 0.0 && tolerance.is_finite())
    {
        problems.push((
            at(&["reconcile", "float_tolerance"]),
            format!("the tolerance must be a finite number ≥ 0, not {tolerance}"),
            None,
        ));
    }
    problems
}

impl ReconcileConfig {
    /// The key columns: `key`, else the table's primary key.
    pub fn key_columns<'a>(&'a self, primary_key: &'a [String]) -> &'a [String] {
        if self.key.is_empty() {
            primary_key
        } else {
            &self.key
        }
    }
}
