//! The pipeline file: one YAML document describing one pipeline.
//!
//! Loading runs in four steps, each reporting every problem it finds with its file, line
//! and column: YAML parsing with `${VAR}` interpolation (`yaml`, `interpolate`), structural
//! checks against the JSON Schema of the format (`validate`), serde deserialisation into the
//! structs below, and semantic checks that span several keys. Relative paths in the file
//! resolve against the directory of the file itself, so a pipeline runs the same from any
//! working directory.

pub mod diagnostic;
pub mod interpolate;
pub mod reconcile;
pub mod tables;
pub mod validate;
pub mod yaml;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::dead_letter::DeadLetterConfig;
use crate::decode::Format;
use crate::decode::table::{TableSpec, UnknownColumns};
use crate::decode::types::{ColumnDef, DECLARED_TYPE_NAMES, parse_declared};
use crate::sink::SinkConfig;
use crate::source::SourceConfig;
pub use diagnostic::{ConfigError, Diagnostic, Mark};
use yaml::{Node, PathSegment, render_path};

/// A weir pipeline: a source of change events, the table they describe, and the sink that
/// applies them.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "weir pipeline")]
pub struct PipelineConfig {
    /// Name of the pipeline. Checkpoints are stored under this name, so a renamed pipeline
    /// starts from the beginning of its source.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Where change events come from.
    pub source: SourceConfig,
    /// The table the change events describe, for a pipeline of one table. Give either
    /// `table` or `tables`.
    #[serde(default)]
    pub table: Option<TableConfig>,
    /// The tables to apply, for a pipeline of many tables (a whole captured database):
    /// which to include and exclude, where each goes, and their keys.
    #[serde(default)]
    pub tables: Option<tables::TablesConfig>,
    /// Where changes are applied.
    pub sink: SinkConfig,
    /// Where records that cannot be processed go, with the reason. Defaults to a file
    /// `<name>.dead-letters.jsonl` beside the pipeline file.
    #[serde(default)]
    pub dead_letter: Option<DeadLetterConfig>,
    /// How events are grouped into batches.
    #[serde(default)]
    pub batch: BatchConfig,
    /// WebAssembly transform plugins, applied to every batch in this order.
    #[serde(default)]
    pub transforms: Vec<crate::plugin::TransformConfig>,
    /// How a change that meets an existing target row is resolved. Without it, every change
    /// is applied as it comes (the source is the truth).
    #[serde(default)]
    pub conflict: Option<crate::conflict::ConflictConfig>,
    /// What `weir reconcile` compares: source and target snapshots, the key, columns to
    /// ignore, and named queries (docs/reconcile.md).
    #[serde(default)]
    pub reconcile: Option<reconcile::ReconcileConfig>,
    /// How the pipeline's state (`weir status`) is worked out.
    #[serde(default)]
    pub lifecycle: LifecycleConfig,
    /// An HTTP listener serving `/metrics` (Prometheus), `/health` and `/ready` while the
    /// pipeline runs (docs/operations.md). `weir run --listen` sets it too.
    #[serde(default)]
    pub server: Option<crate::server::ServerConfig>,
}

/// How the pipeline's lifecycle state is worked out (docs/status.md).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LifecycleConfig {
    /// A streaming pipeline further behind its source than this is `catching-up`, e.g.
    /// `30s`. Measured from the source times of the changes and heartbeats applied.
    #[serde(default = "default_catch_up_lag")]
    pub catch_up_lag: HumanDuration,
    /// What happens when the source no longer holds the stored position (a dropped or
    /// invalidated replication slot): `manual` stops the run with exit code 3 and says
    /// what to run; `auto` copies the tables again, then streams.
    #[serde(default)]
    pub resync: ResyncMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ResyncMode {
    #[default]
    Manual,
    Auto,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            catch_up_lag: default_catch_up_lag(),
            resync: ResyncMode::default(),
        }
    }
}

fn default_catch_up_lag() -> HumanDuration {
    HumanDuration(crate::lifecycle::DEFAULT_CATCH_UP_LAG)
}

/// The table a pipeline's change events describe.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// Table name, used for the target table unless the sink names another.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Primary key columns. Changes are applied by this key.
    #[schemars(length(min = 1))]
    pub primary_key: Vec<String>,
    /// Column types, as `name: type`, for streams whose events carry no schema block.
    /// Types: boolean, int8, int16, int32, int64, float32, float64, string, bytes,
    /// decimal(p,s), date, time_millis, time_micros, time_nanos, timestamp_millis,
    /// timestamp_micros, timestamp_nanos, timestamptz, timestamptz_nanos, timetz, json, uuid.
    #[serde(default)]
    pub columns: IndexMap<String, DeclaredType>,
    /// Match column names in events to the table's columns ignoring case.
    #[serde(default)]
    pub case_insensitive: bool,
    /// What to do with a column the table does not have yet.
    #[serde(default)]
    pub unknown_columns: UnknownColumns,
}

impl TableConfig {
    /// Whether two column names name the same column (ignoring case if the table does).
    fn same_column(&self, a: &str, b: &str) -> bool {
        if self.case_insensitive {
            a.eq_ignore_ascii_case(b)
        } else {
            a == b
        }
    }
}

/// The path of a configuration key, e.g. `["conflict", "lanes"]`.
fn key_path(parts: &[&str]) -> Vec<PathSegment> {
    parts
        .iter()
        .map(|p| PathSegment::Key(p.to_string()))
        .collect()
}

/// A declared column type, e.g. `int64` or `decimal(10,3)`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeclaredType(pub ColumnDef);

impl<'de> Deserialize<'de> for DeclaredType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_declared(&text)
            .map(DeclaredType)
            .map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for DeclaredType {
    fn schema_name() -> Cow<'static, str> {
        "ColumnType".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "weir-column-type",
            "description": format!("A column type: {DECLARED_TYPE_NAMES}."),
        })
    }
}

/// A duration written the human way: `500ms`, `10s`, `5m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "duration",
            "description": "A duration such as `500ms`, `10s` or `5m`.",
        })
    }
}

/// How events are grouped into batches. A batch is applied in one sink transaction.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most events in one batch; in a `tables:` pipeline, most events of one table in a
    /// batch (see `max_total_events`).
    #[serde(default = "default_max_events")]
    #[schemars(range(min = 1))]
    pub max_events: usize,
    /// Most events in one batch over all its tables (`tables:` pipelines). Each table a
    /// batch touches costs the sink a few statements whatever its row count, so a batch of
    /// many tables holds more events than one of a single table.
    #[serde(default = "default_max_total_events")]
    #[schemars(range(min = 1))]
    pub max_total_events: usize,
    /// Most input bytes in one batch.
    #[serde(default = "default_max_bytes")]
    #[schemars(range(min = 1))]
    pub max_bytes: usize,
    /// Longest time a partly filled batch waits for more events before it is applied.
    #[serde(default = "default_max_wait")]
    pub max_wait: HumanDuration,
    /// A record larger than this goes to the dead-letter output instead of being decoded
    /// (Kafka's own default limit is 1 MiB).
    #[serde(default = "default_max_record_bytes")]
    #[schemars(range(min = 1))]
    pub max_record_bytes: usize,
    /// Most tables one batch may touch (`tables:` pipelines). A batch is one transaction,
    /// and a database holds a few locks per table touched (PostgreSQL's lock table has
    /// room for `max_locks_per_transaction` × `max_connections` of them in all).
    #[serde(default = "default_max_tables")]
    #[schemars(range(min = 1))]
    pub max_tables: usize,
}

fn default_max_tables() -> usize {
    100
}

fn default_max_record_bytes() -> usize {
    1 << 20
}

fn default_max_events() -> usize {
    8192
}

fn default_max_total_events() -> usize {
    32768
}

fn default_max_bytes() -> usize {
    64 << 20
}

fn default_max_wait() -> HumanDuration {
    HumanDuration(Duration::from_millis(200))
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_events: default_max_events(),
            max_total_events: default_max_total_events(),
            max_bytes: default_max_bytes(),
            max_wait: default_max_wait(),
            max_record_bytes: default_max_record_bytes(),
            max_tables: default_max_tables(),
        }
    }
}

/// A pipeline file, checked and deserialised.
#[derive(Debug, Clone)]
pub struct LoadedPipeline {
    pub config: PipelineConfig,
    /// The pipeline file as given.
    pub file: PathBuf,
    /// Directory that relative paths in the file resolve against.
    pub base_dir: PathBuf,
}

impl LoadedPipeline {
    /// Resolves a path from the pipeline file against the file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    /// The table of a one-table pipeline (`table:`).
    pub fn table(&self) -> Option<&TableConfig> {
        self.config.table.as_ref()
    }

    /// The one table's spec. A many-table pipeline (`tables:`) has a spec per table
    /// ([`crate::tables::ManyTables`]); this is then an empty one.
    pub fn table_spec(&self) -> TableSpec {
        let Some(table) = self.table() else {
            return TableSpec::new("", &[]);
        };
        TableSpec {
            name: table.name.clone(),
            primary_key: table.primary_key.clone(),
            declared: table
                .columns
                .iter()
                .map(|(name, ty)| {
                    let mut def = ty.0.clone();
                    def.name = name.clone();
                    def
                })
                .collect(),
            case_insensitive: table.case_insensitive,
            unknown_columns: table.unknown_columns,
            target_types: Vec::new(),
            table_check: crate::decode::table::TableCheck::Named,
            target: None,
        }
    }

    pub fn format(&self) -> Format {
        self.config.source.format()
    }

    /// The dead-letter file, with the default applied.
    pub fn dead_letter(&self) -> DeadLetterConfig {
        self.config.dead_letter.clone().unwrap_or_else(|| {
            DeadLetterConfig::file(format!("{}.dead-letters.jsonl", self.config.name))
        })
    }
}

/// The JSON Schema of the pipeline format (printed by `weir schema`).
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(PipelineConfig)).expect("schema serialises")
}

/// Checks string formats the schema names (`duration`, `weir-column-type`).
fn check_format(format: &str, value: &str) -> Option<Result<(), (String, Option<String>)>> {
    match format {
        "duration" => Some(humantime::parse_duration(value).map(|_| ()).map_err(|e| {
            (
                format!("`{value}` is not a duration: {e}"),
                Some("write a number with a unit, e.g. `500ms`, `10s`, `5m`".into()),
            )
        })),
        "weir-column-type" => Some(parse_declared(value).map(|_| ()).map_err(|e| {
            let hint = if value.contains('(') && !value.contains(')') {
                // `{price: decimal(10,2)}`: in a flow mapping the comma ends the value.
                format!(
                    "quote the type, e.g. '{value},…)': in a `{{…}}` mapping a comma ends the value"
                )
            } else {
                format!("known types: {DECLARED_TYPE_NAMES}")
            };
            (e, Some(hint))
        })),
        _ => None,
    }
}

/// Reads and checks a pipeline file, taking `${VAR}` values from the process environment.
pub fn load(path: &Path) -> Result<LoadedPipeline, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::single(
            path.to_path_buf(),
            format!("cannot read the pipeline file: {e}"),
            Some("check the path; relative paths are taken from the current directory".into()),
        )
    })?;
    load_str(&text, path, &|name| std::env::var(name).ok())
}

/// Checks a pipeline given as text. `file` names it in messages and anchors relative paths.
pub fn load_str(
    text: &str,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<LoadedPipeline, ConfigError> {
    let fail = |diagnostics: Vec<Diagnostic>| ConfigError {
        file: file.to_path_buf(),
        source_text: text.to_string(),
        diagnostics,
    };
    let root = yaml::parse(text, env).map_err(fail)?;
    if !matches!(root.value, yaml::Value::Map(_)) {
        return Err(fail(vec![Diagnostic::new(
            Some(root.mark),
            "",
            "a pipeline file must be a YAML mapping with `name`, `source`, `table` (or \
             `tables`) and `sink`",
            Some("see docs/pipeline.md for a complete example".into()),
        )]));
    }
    let diagnostics = validate::validate(&root, &json_schema(), check_format);
    if !diagnostics.is_empty() {
        return Err(fail(diagnostics));
    }
    let config: PipelineConfig = serde_path_to_error::deserialize(root.to_json()).map_err(|e| {
        let path = serde_path(e.path());
        fail(vec![Diagnostic::new(
            Some(root.locate(&path)),
            &render_path(&path),
            e.inner().to_string(),
            None,
        )])
    })?;
    let diagnostics = semantic_checks(&config, &root);
    if !diagnostics.is_empty() {
        return Err(fail(diagnostics));
    }
    let base_dir = file
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    Ok(LoadedPipeline {
        config,
        file: file.to_path_buf(),
        base_dir,
    })
}

fn serde_path(path: &serde_path_to_error::Path) -> Vec<PathSegment> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|segment| match segment {
            Segment::Seq { index } => Some(PathSegment::Index(*index)),
            Segment::Map { key } => Some(PathSegment::Key(key.clone())),
            Segment::Enum { variant } => Some(PathSegment::Key(variant.clone())),
            Segment::Unknown => None,
        })
        .collect()
}

/// Checks that span several keys, which a schema cannot express.
fn semantic_checks(config: &PipelineConfig, root: &Node) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    let mut report = |path: Vec<PathSegment>, message: String, hint: Option<String>| {
        diagnostics.push(Diagnostic::new(
            Some(root.locate(&path)),
            &render_path(&path),
            message,
            hint,
        ));
    };
    let key = key_path;
    if let SourceConfig::Kafka(kafka) = &config.source {
        if kafka.topics.is_empty() == kafka.topic_pattern.is_none() {
            report(
                key(&["source"]),
                "give either `topics` or `topic_pattern` (one of them)".into(),
                Some("e.g. `topics: [shop.public.orders]`".into()),
            );
        }
        for (option, message) in crate::kafka::check_options(&kafka.options) {
            report(key(&["source", "options", &option]), message, None);
        }
        if let Some(Err(problem)) = kafka.heartbeat.as_ref().map(|h| h.topic(kafka)) {
            report(key(&["source", "heartbeat"]), problem, None);
        }
        if config.lifecycle.resync == ResyncMode::Auto && config.reconcile.is_none() {
            report(
                key(&["lifecycle", "resync"]),
                "a Kafka source resyncs by repairing the target from the source it \
                 reconciles against: add a `reconcile:` section"
                    .into(),
                Some("or keep `resync: manual`: a gap then stops the run with exit code 3".into()),
            );
        }
    }
    if let SourceConfig::PostgresCdc(cdc) = &config.source {
        for (i, pattern) in cdc.skip_origins.iter().enumerate() {
            if let Err(e) = glob::Pattern::new(pattern) {
                let mut path = key(&["source", "skip_origins"]);
                path.push(PathSegment::Index(i));
                report(
                    path,
                    format!("`{pattern}` is not an origin pattern: {e}"),
                    None,
                );
            }
        }
    }
    if matches!(config.source, SourceConfig::PostgresCdc(_)) && config.tables.is_none() {
        report(
            key(&["source"]),
            "a postgres-cdc source reads a whole database: select its tables with a \
             `tables:` section"
                .into(),
            Some("e.g. `tables: { include: ['public.*'] }`".into()),
        );
    }
    if let crate::sink::SinkConfig::Kafka(kafka) = &config.sink {
        for (option, message) in crate::kafka::check_producer_options(&kafka.options) {
            report(key(&["sink", "options", &option]), message, None);
        }
        if let Some(problem) = kafka.topic_problems() {
            report(
                key(&["sink", "topic"]),
                problem,
                Some("`{table}` stands for the target table, e.g. `shop.{table}`".into()),
            );
        }
    }
    if let Some(DeadLetterConfig::Kafka(kafka)) = &config.dead_letter {
        for (option, message) in crate::kafka::check_producer_options(&kafka.options) {
            report(key(&["dead_letter", "options", &option]), message, None);
        }
    }
    if let Some(conflict) = &config.conflict {
        conflict_checks(config, conflict, &key_path(&["conflict"]), &mut report);
    }
    if let Some(tables) = &config.tables {
        for (name, table) in &tables.overrides {
            if let Some(conflict) = &table.conflict {
                let at = key_path(&["tables", "overrides", name, "conflict"]);
                conflict_checks(config, conflict, &at, &mut report);
            }
        }
    }
    for (i, transform) in config.transforms.iter().enumerate() {
        for (j, pattern) in transform.tables.iter().enumerate() {
            if let Err(e) = glob::Pattern::new(pattern) {
                let mut path = key(&["transforms"]);
                path.extend([
                    PathSegment::Index(i),
                    PathSegment::Key("tables".into()),
                    PathSegment::Index(j),
                ]);
                report(
                    path,
                    format!("`{pattern}` is not a table pattern: {e}"),
                    None,
                );
            }
        }
    }
    if let Some(reconcile) = &config.reconcile {
        for (path, message, hint) in reconcile::checks(reconcile, config) {
            report(path, message, hint);
        }
    }
    match (&config.table, &config.tables) {
        (Some(_), Some(_)) | (None, None) => report(
            vec![],
            "give either `table` (a pipeline of one table) or `tables` (of many), one of them"
                .into(),
            Some("e.g. `tables: { include: ['inventory.*'] }`".into()),
        ),
        (None, Some(tables)) => many_table_checks(config, tables, &mut report),
        (Some(_), None) => {}
    }
    let Some(table) = &config.table else {
        return diagnostics;
    };
    let same = |a: &str, b: &str| table.same_column(a, b);
    for (i, column) in table.primary_key.iter().enumerate() {
        let mut path = key(&["table", "primary_key"]);
        path.push(PathSegment::Index(i));
        if table.primary_key[..i].iter().any(|c| same(c, column)) {
            report(
                path.clone(),
                format!("`{column}` is listed twice in the primary key"),
                None,
            );
        }
        if !table.columns.is_empty() && !table.columns.keys().any(|c| same(c, column)) {
            report(
                path,
                format!("primary key column `{column}` is not in `table.columns`"),
                diagnostic::did_you_mean(column, table.columns.keys().map(String::as_str))
                    .map(|c| format!("did you mean `{c}`?")),
            );
        }
    }
    diagnostics
}

/// Checks of a many-table pipeline: the `tables` section, and what works with it yet.
fn many_table_checks(
    config: &PipelineConfig,
    tables: &tables::TablesConfig,
    report: &mut impl FnMut(Vec<PathSegment>, String, Option<String>),
) {
    for (path, message, hint) in tables::checks(tables) {
        report(path, message, hint);
    }
    let capabilities = config.sink.capabilities();
    if !capabilities.many_tables {
        report(
            key_path(&["sink", "type"]),
            format!(
                "the {} sink takes one table; a pipeline with `tables` needs a sink that takes \
                 many (sqlite, postgres, parquet, jsonl, kafka)",
                config.sink.kind()
            ),
            Some("use `table:` for one table, or another sink".into()),
        );
    }
    if let Some(table) = config.sink.configured_table() {
        report(
            key_path(&["sink", "table"]),
            format!(
                "`sink.table` names one target table (`{table}`); with `tables`, each table \
                 goes to its own"
            ),
            Some("remove it, and use `tables.route` to name targets".into()),
        );
    }
    let overrides = tables
        .overrides
        .iter()
        .filter_map(|(name, table)| Some((name, table.conflict.as_ref()?)));
    let sections = config
        .conflict
        .as_ref()
        .map(|c| (key_path(&["conflict"]), c))
        .into_iter()
        .chain(
            overrides.map(|(name, c)| (key_path(&["tables", "overrides", name, "conflict"]), c)),
        );
    for (at, conflict) in sections {
        // One sink applies every table of a batch in one transaction; lanes would split it.
        if conflict.lanes() > 1 {
            let mut lanes = at.clone();
            lanes.push(PathSegment::Key("lanes".into()));
            report(
                lanes,
                "`lanes` does not work with `tables`: every table of a batch is applied in \
                 one transaction, by one writer"
                    .into(),
                Some("remove `lanes`".into()),
            );
        }
        if matches!(conflict, crate::conflict::ConflictConfig::Wasm(_)) && at.len() > 1 {
            report(
                at,
                "a per-table override takes a built-in strategy; a resolver plugin is set for \
                 every table in the pipeline's `conflict` section, and it sees each change's \
                 table"
                    .into(),
                None,
            );
        }
    }
}

/// Checks of the `conflict` section against the sink and the table.
fn conflict_checks(
    config: &PipelineConfig,
    conflict: &crate::conflict::ConflictConfig,
    base: &[PathSegment],
    report: &mut impl FnMut(Vec<PathSegment>, String, Option<String>),
) {
    use crate::conflict::Strategy;
    let at = |parts: &[&str]| {
        let mut path = base.to_vec();
        path.extend(key_path(parts));
        path
    };
    let capabilities = config.sink.capabilities();
    let reads_rows = capabilities.reads_target_rows;
    let Some((strategy, builtin)) = conflict.builtin() else {
        if !reads_rows {
            report(
                at(&[]),
                "resolver plugins need a sink that reads the target's rows: postgres \
                 (upsert mode) or sqlite"
                    .into(),
                Some("use `sink: { type: postgres, … }` or `sink: { type: sqlite, … }`".into()),
            );
        }
        return;
    };
    if !reads_rows {
        report(
            at(&[]),
            "the built-in strategies need a sink that reads the target's rows: postgres \
             (upsert mode) or sqlite"
                .into(),
            Some("use `sink: { type: postgres, … }` or `sink: { type: sqlite, … }`".into()),
        );
    }
    if !capabilities.lanes && builtin.lanes > 1 {
        report(
            at(&["lanes"]),
            format!(
                "the {} sink applies in one lane (it has one writer), not {}",
                config.sink.kind(),
                builtin.lanes
            ),
            Some("remove `lanes`, or set `lanes: 1`".into()),
        );
    }
    if !(1..=64).contains(&builtin.lanes) {
        report(
            at(&["lanes"]),
            format!("lanes must be between 1 and 64, not {}", builtin.lanes),
            None,
        );
    }
    let name = match strategy {
        Strategy::LastWriteWins => "last-write-wins",
        Strategy::FirstWriteWins => "first-write-wins",
        Strategy::SourcePriority(_) => "source-priority",
    };
    if builtin.version_column.is_none() && strategy != Strategy::LastWriteWins {
        report(
            at(&[]),
            format!("`{name}` compares versions, and no `version_column` is set"),
            Some("name the column that holds each row's version: `version_column: version`".into()),
        );
    }
    match (&strategy, builtin.priority.is_empty()) {
        (Strategy::SourcePriority(_), true) => report(
            at(&[]),
            "`source-priority` needs `priority`, the origins from highest to lowest".into(),
            Some("e.g. `priority: [hq, store-1, store-2]`".into()),
        ),
        (Strategy::SourcePriority(_), false) | (_, true) => {}
        (_, false) => report(
            at(&["priority"]),
            format!("`priority` ranks origins for `source-priority`; `{name}` does not use it"),
            Some("remove `priority`, or use `strategy: source-priority`".into()),
        ),
    }
    let Some(table) = &config.table else {
        return;
    };
    let same = |a: &str, b: &str| table.same_column(a, b);
    for (option, column) in [
        ("version_column", &builtin.version_column),
        ("origin_column", &builtin.origin_column),
    ] {
        let Some(column) = column else { continue };
        if table.primary_key.iter().any(|k| same(k, column)) {
            report(
                at(&[option]),
                format!("`{column}` is a primary key column; it cannot also be the {option}"),
                None,
            );
        } else if !table.columns.is_empty() && !table.columns.keys().any(|c| same(c, column)) {
            report(
                at(&[option]),
                format!("`{column}` is not in `table.columns`"),
                diagnostic::did_you_mean(column, table.columns.keys().map(String::as_str))
                    .map(|c| format!("did you mean `{c}`?")),
            );
        }
    }
    if let (Some(site), Some(source)) = (&builtin.site, &builtin.source_site)
        && site == source
    {
        report(
            at(&["source_site"]),
            format!(
                "`source_site` and `site` are both `{site}`: every change without an origin \
                 would count as this site's own and be dropped"
            ),
            Some(
                "`site` is the site this pipeline writes to; `source_site` the one it reads from"
                    .into(),
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "\
name: orders
source:
  type: file
  path: events.jsonl
  format: debezium-json
table:
  name: orders
  primary_key: [id]
sink:
  type: sqlite
  path: target.db
  table: orders
  create: true
dead_letter:
  type: file
  path: dead-letters.jsonl
";

    fn load(text: &str) -> Result<LoadedPipeline, ConfigError> {
        load_str(text, Path::new("pipelines/p.yaml"), &|name| match name {
            "DB_PASSWORD" => Some("hunter2".into()),
            "DIR" => Some("data".into()),
            _ => None,
        })
    }

    #[test]
    fn the_minimal_pipeline_loads() {
        let p = load(MINIMAL).unwrap();
        assert_eq!(p.config.name, "orders");
        assert_eq!(
            p.resolve(Path::new("target.db")),
            Path::new("pipelines/target.db")
        );
        assert_eq!(p.config.batch.max_events, 8192);
    }

    #[test]
    fn many_problems_are_reported_together() {
        let text = MINIMAL
            .replace("  path: events.jsonl", "  pth: events.jsonl")
            .replace("create: true", "create: yes")
            .replace("type: sqlite", "type: sqllite");
        let err = load(&text).unwrap_err();
        let rendered = err.to_string();
        assert!(
            rendered.contains("unknown key `pth` in `source`"),
            "{rendered}"
        );
        assert!(rendered.contains("did you mean `path`?"), "{rendered}");
        assert!(
            rendered.contains("missing required key `path` in `source`"),
            "{rendered}"
        );
        assert!(rendered.contains("sink.type"), "{rendered}");
        assert!(rendered.contains("did you mean `sqlite`?"), "{rendered}");
        assert!(rendered.contains("--> pipelines/p.yaml:4:3"), "{rendered}");
    }

    #[test]
    fn column_types_and_durations_are_checked_with_positions() {
        let text = MINIMAL.replace(
            "  primary_key: [id]\n",
            "  primary_key: [id]\n  columns:\n    id: int65\n    price: decimal(10,2)\n",
        ) + "batch:\n  max_wait: soon\n";
        let err = load(&text).unwrap_err();
        assert_eq!(err.diagnostics.len(), 2, "{err}");
        assert_eq!(err.diagnostics[0].path, "table.columns.id");
        assert!(
            err.diagnostics[0]
                .message
                .contains("`int65` is not a column type")
        );
        assert_eq!(err.diagnostics[0].mark, Some(Mark { line: 10, col: 9 }));
        assert_eq!(err.diagnostics[1].path, "batch.max_wait");
    }

    #[test]
    fn the_issue_s_reconcile_section_loads_and_bad_ones_are_explained() {
        let issue = format!(
            "{MINIMAL}reconcile:
  source: {{ type: parquet, path: source-snapshot/ }}
  target: {{ type: sqlite, path: target.db, table: orders }}
  key: [id]
  queries:
    - name: revenue_by_status
      sql: SELECT status, sum(price) FROM target GROUP BY status ORDER BY status
"
        );
        let loaded = load(&issue).unwrap();
        let reconcile = loaded.config.reconcile.unwrap();
        assert_eq!(reconcile.key, vec!["id"]);
        assert_eq!(reconcile.queries[0].name, "revenue_by_status");

        let bad = format!(
            "{MINIMAL}reconcile:
  source: {{ type: postgres, url: postgres://h/db }}
  target: {{ type: sqlite, path: target.db, table: orders }}
  ignore: [id]
  queries:
    - {{ name: q, sql: SELECT 1 }}
    - {{ name: q, sql: SELECT 2 }}
"
        );
        let messages: Vec<String> = load(&bad)
            .unwrap_err()
            .diagnostics
            .iter()
            .map(|d| d.message.clone())
            .collect();
        let has = |text: &str| messages.iter().any(|m| m.contains(text));
        assert!(has("`table` or `query`"), "{messages:?}");
        assert!(has("`id` is a key column"), "{messages:?}");
        assert!(has("two queries are named `q`"), "{messages:?}");
        // Unknown keys are refused, with where they are.
        let typo = issue.replace("table: orders }", "tabel: orders }");
        let messages = format!("{:?}", load(&typo).unwrap_err().diagnostics);
        assert!(messages.contains("`tabel`"), "{messages}");
    }

    #[test]
    fn change_log_snapshots_name_a_file_or_a_topic_and_waits_are_checked() {
        // MINIMAL has a file source: a topic needs its own brokers.
        let with = |source: &str, wait: &str| {
            format!(
                "{MINIMAL}reconcile:
  source: {source}
  target: {{ type: sqlite, path: target.db, table: orders }}
{wait}"
            )
        };
        let topic = with(
            "{ type: debezium, topic: orders, brokers: \"k:9092\" }",
            "  wait: { timeout: 2m }\n",
        );
        let loaded = load(&topic).unwrap().config.reconcile.unwrap();
        assert_eq!(loaded.wait.unwrap().timeout.0.as_secs(), 120);
        let problems = |text: String| format!("{:?}", load(&text).unwrap_err().diagnostics);
        let both = problems(with(
            "{ type: debezium, topic: orders, path: log.jsonl, brokers: \"k:9092\" }",
            "",
        ));
        assert!(both.contains("`path` (a file) or `topic`"), "{both}");
        let no_brokers = problems(with("{ type: debezium, topic: orders }", ""));
        assert!(no_brokers.contains("no brokers"), "{no_brokers}");
        let managed = problems(with(
            "{ type: debezium, topic: o, brokers: k, options: { group.id: x } }",
            "",
        ));
        assert!(managed.contains("managed by weir"), "{managed}");
        let two_files = problems(with(
            "{ type: debezium, path: log.jsonl }",
            "  wait: { positions: { a: 1, b: 2 } }\n",
        ));
        assert!(two_files.contains("one position"), "{two_files}");
    }

    #[test]
    fn the_issue_s_conflict_section_loads_and_bad_ones_are_explained() {
        let postgres = MINIMAL.replace(
            "  type: sqlite\n  path: target.db\n",
            "  type: postgres\n  url: postgres://localhost/db\n",
        );
        let with = |text: &str, conflict: &str| format!("{text}conflict:\n{conflict}");
        let config = load(&with(
            &postgres,
            "  strategy: last-write-wins\n  version_column: version\n  lanes: 4\n",
        ))
        .unwrap();
        assert_eq!(config.config.conflict.as_ref().unwrap().lanes(), 4);

        let problems = |text: String| {
            let err = load(&text).unwrap_err();
            err.diagnostics
                .iter()
                .map(|d| format!("{} {}", d.message, d.hint.as_deref().unwrap_or("")))
                .collect::<Vec<_>>()
        };
        let got = problems(with(
            &postgres,
            "  strategy: first-write-wins\n  priority: [a]\n",
        ));
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].contains("no `version_column`"), "{got:?}");
        assert!(got[1].contains("`priority` ranks origins"), "{got:?}");
        let got = problems(with(
            MINIMAL,
            "  strategy: source-priority\n  version_column: id\n  lanes: 2\n",
        ));
        assert!(
            got.iter()
                .any(|p| p.contains("sqlite sink applies in one lane")),
            "{got:?}"
        );
        assert!(
            got.iter().any(|p| p.contains("needs `priority`")),
            "{got:?}"
        );
        assert!(
            got.iter().any(|p| p.contains("primary key column")),
            "{got:?}"
        );
        // The built-in strategies run in SQLite too, but not in a sink that cannot read rows.
        let sqlite = with(
            MINIMAL,
            "  strategy: last-write-wins\n  version_column: v\n",
        );
        assert!(load(&sqlite).is_ok());
        let parquet = sqlite.replace(
            "  type: sqlite\n  path: target.db\n  table: orders\n  create: true\n",
            "  type: parquet\n  path: out\n",
        );
        let got = problems(parquet);
        assert!(
            got.iter()
                .any(|p| p.contains("postgres (upsert mode) or sqlite")),
            "{got:?}"
        );
        let got = problems(with(
            &postgres,
            "  strategy: last-write-wins\n  lanes: 65\n",
        ));
        assert!(got[0].contains("at most 64"), "{got:?}");
        let got = problems(with(
            &postgres,
            "  strategy: last-write-wins\n  site: a\n  source_site: a\n",
        ));
        assert!(got[0].contains("every change"), "{got:?}");
    }

    #[test]
    fn a_postgres_cdc_source_needs_a_tables_section() {
        let text = MINIMAL.replace(
            "  type: file\n  path: events.jsonl\n  format: debezium-json\n",
            "  type: postgres-cdc\n  url: postgres://u@h/db\n  publication: p\n  slot: s\n",
        );
        let err = load(&text).unwrap_err();
        assert_eq!(err.diagnostics.len(), 1, "{err}");
        assert!(err.diagnostics[0].message.contains("tables:"), "{err}");
        let text = text.replace(
            "table:\n  name: orders\n  primary_key: [id]\n",
            "tables:\n  include: ['public.*']\n",
        );
        let text = text.replace("  table: orders\n", "");
        load(&text).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn primary_key_must_be_declared_when_columns_are() {
        let text = MINIMAL.replace(
            "  primary_key: [id]\n",
            "  primary_key: [idd]\n  columns:\n    id: int64\n",
        );
        let err = load(&text).unwrap_err();
        assert_eq!(err.diagnostics.len(), 1, "{err}");
        assert_eq!(
            err.diagnostics[0].hint.as_deref(),
            Some("did you mean `id`?")
        );
    }

    #[test]
    fn variables_interpolate_and_secrets_stay_hidden() {
        let text = MINIMAL.replace("path: target.db", "path: ${DIR}/target.db");
        let p = load(&text).unwrap();
        let crate::sink::SinkConfig::Sqlite(sqlite) = &p.config.sink else {
            panic!()
        };
        assert_eq!(sqlite.path, Path::new("data/target.db"));

        let text = MINIMAL.replace("create: true", "create: ${DB_PASSWORD}");
        let err = load(&text).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("a string (from the environment)"), "{err}");

        let text = MINIMAL.replace("path: target.db", "path: ${MISSING}/target.db");
        let err = load(&text).unwrap_err().to_string();
        assert!(
            err.contains("environment variable `MISSING` is not set"),
            "{err}"
        );
    }

    #[test]
    fn the_schema_describes_every_section() {
        let schema = json_schema();
        let text = schema.to_string();
        for key in [
            "source",
            "table",
            "sink",
            "dead_letter",
            "batch",
            "primary_key",
            "sqlite",
            "parquet",
            "jsonl",
        ] {
            assert!(text.contains(key), "schema lacks {key}");
        }
    }
}
