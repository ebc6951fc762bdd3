//! `weir reconcile`: proves that a target holds the source's rows, or lists what differs
//! (docs/reconcile.md).
//!
//! The pipeline's `reconcile` section names two snapshots. Each is registered as a
//! DataFusion table (`source`, `target`; see [`tables`]); a full comparison by key lists
//! missing, extra and mismatched rows ([`compare`]); the named queries run over the same
//! tables; and [`report`] shows the result.

pub mod checksum;
pub mod compare;
pub mod database;
pub mod html;
pub mod pool;
pub mod repair;
pub mod report;
pub mod tables;
pub mod wait;

use std::path::Path;
use std::time::Instant;

use arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::SessionContext;
use weir_runtime::config::LoadedPipeline;
use weir_runtime::config::reconcile::{
    Mode, NamedQuery, PostgresSnapshot, ReconcileConfig, SnapshotConfig,
};

use report::{QueryResult, Report, Side};

/// Why reconciliation could not be done (exit code 2), as opposed to a difference found.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReconcileError(String);

impl ReconcileError {
    pub fn new(message: impl Into<String>) -> Self {
        ReconcileError(weir_runtime::redact::redact(&message.into()).into_owned())
    }
}

#[derive(Clone)]
pub struct Options {
    /// Most rows of each kind listed in the report (all are counted).
    pub limit: usize,
    /// Queries besides the pipeline's (`--sql FILE`).
    pub queries: Vec<NamedQuery>,
    /// Also write the SQL that repairs the target ([`Outcome::repair`]).
    pub repair: bool,
    /// Called as checksum mode finishes key ranges: `(done, all)`.
    pub progress: Option<std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>>,
    /// The time the cut is measured from (default: now).
    pub now: Option<chrono::DateTime<chrono::Utc>>,
}

/// A report, and the repair script when one was asked for.
#[derive(Debug)]
pub struct Outcome {
    pub report: Report,
    pub repair: Option<repair::Script>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            limit: 100,
            queries: Vec::new(),
            repair: false,
            progress: None,
            now: None,
        }
    }
}

/// Compares the pipeline's `reconcile.source` with its `reconcile.target`: one table (a
/// many-table pipeline is compared by [`database::reconcile_tables`]).
pub fn reconcile(pipeline: &LoadedPipeline, options: &Options) -> Result<Outcome, ReconcileError> {
    reconcile_with(pipeline, options, tables::Logs::default())
}

/// [`reconcile`], with change-log sides already read (a many-table log is read once and
/// split by table).
pub(crate) fn reconcile_with(
    pipeline: &LoadedPipeline,
    options: &Options,
    logs: tables::Logs<'_>,
) -> Result<Outcome, ReconcileError> {
    let started = Instant::now();
    let config = section(pipeline)?;
    // A live pipeline: compare once it has applied its source up to the positions.
    let waited = config
        .wait
        .as_ref()
        .map(|wait| wait::until_applied(pipeline, wait))
        .transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .build()
        .map_err(|e| ReconcileError::new(format!("cannot start the query runtime: {e}")))?;
    // Parquet snapshots are checked before they are read (`tables::parquet_check`), which
    // walks footers and page headers but not page indexes or bloom filters: the reader is
    // told not to read those (they only speed up filtered queries).
    let mut session = datafusion::prelude::SessionConfig::new();
    let parquet = &mut session.options_mut().execution.parquet;
    parquet.enable_page_index = false;
    parquet.bloom_filter_on_read = false;
    let ctx = SessionContext::new_with_config(session);
    let reader = tables::Reader {
        runtime: &runtime,
        pipeline,
        log_end: waited.as_ref().map(|w| &w.positions),
        logs,
    };
    let key = config
        .key_columns(&pipeline.table_spec().primary_key)
        .to_vec();
    // Known before anything is read: a target that cannot be repaired is an error now.
    let repair_target = match options.repair {
        true => Some(repair::target_table(&config.target)?),
        false => None,
    };
    let prepared = match config.mode {
        Mode::Full => prepare_full(&reader, &ctx, config, &key, options)?,
        Mode::Checksum => prepare_checksum(&ctx, pipeline, config, &key, options)?,
    };
    let plan = &prepared.plan;
    let mut repair =
        repair_target.map(|(dialect, table)| repair::Writer::new(plan, dialect, table));
    let found = runtime.block_on(compare::full(&ctx, plan, options.limit, repair.as_mut()))?;
    let repair = repair.map(repair::Writer::finish);
    let (source_rows, target_rows) = match prepared.rows {
        Some(rows) => rows,
        None => runtime.block_on(async {
            Ok::<_, ReconcileError>((count(&ctx, "source").await?, count(&ctx, "target").await?))
        })?,
    };
    let queries: Vec<&NamedQuery> = config.queries.iter().chain(&options.queries).collect();
    if prepared.rows.is_some() && !queries.is_empty() {
        // Checksum mode registered only the differing rows; queries see whole tables.
        for (name, snapshot) in [("source", &config.source), ("target", &config.target)] {
            let _ = ctx.deregister_table(name);
            reader.register(&ctx, name, snapshot)?;
        }
    }
    let queries = runtime.block_on(async {
        let mut results = Vec::new();
        for query in queries {
            results.push(run_query(&ctx, query).await?);
        }
        Ok::<_, ReconcileError>(results)
    })?;
    if let Some(state) = &prepared.state_file {
        checksum::finish(state);
    }
    let equal = found.missing.count == 0
        && found.extra.count == 0
        && found.mismatched.count == 0
        && plan.missing_in_target.is_empty();
    let report = Report {
        pipeline: pipeline.config.name.clone(),
        mode: match config.mode {
            Mode::Full => "full",
            Mode::Checksum => "checksum",
        }
        .into(),
        source: Side {
            description: prepared.source,
            rows: source_rows,
        },
        target: Side {
            description: prepared.target,
            rows: target_rows,
        },
        key,
        compared: plan.compared.iter().map(|p| p.source.clone()).collect(),
        ignored: config.ignore.clone(),
        columns_missing_in_target: plan.missing_in_target.clone(),
        columns_only_in_target: plan.only_in_target.clone(),
        missing: found.missing,
        extra: found.extra,
        mismatched: found.mismatched,
        checksum: prepared.checksum,
        waited,
        cut: plan.cut.as_ref().map(|cut| {
            format!(
                "rows whose `{}` is after {} are left out on both sides",
                cut.source, cut.cutoff
            )
        }),
        queries,
        equal,
        elapsed_seconds: started.elapsed().as_secs_f64(),
    };
    Ok(Outcome { report, repair })
}

/// The pipeline's `reconcile` section, or an error that says how to add one.
pub(crate) fn section(pipeline: &LoadedPipeline) -> Result<&ReconcileConfig, ReconcileError> {
    pipeline.config.reconcile.as_ref().ok_or_else(|| {
        ReconcileError::new(format!(
            "{} has no `reconcile` section; add one naming `source` and `target` \
             (docs/reconcile.md)",
            pipeline.file.display()
        ))
    })
}

/// The tables registered and the plan made, before the comparison runs.
struct Prepared {
    source: String,
    target: String,
    plan: compare::Plan,
    /// Row counts, when known without counting the registered tables (checksum mode).
    rows: Option<(u64, u64)>,
    checksum: Option<checksum::Stats>,
    state_file: Option<std::path::PathBuf>,
}

/// How the two schemas' columns pair up, with the section's cut if it has one (the
/// cutoff is `min_age` before now, or before `options.now`).
fn make_plan(
    source: &arrow::datatypes::Schema,
    target: &arrow::datatypes::Schema,
    key: &[String],
    config: &ReconcileConfig,
    options: &Options,
) -> Result<compare::Plan, ReconcileError> {
    let plan = compare::Plan::new(
        source,
        target,
        key,
        &config.ignore,
        &config.columns,
        config.float_tolerance,
    )?;
    let Some(cut) = &config.cut else {
        return Ok(plan);
    };
    let now = options.now.unwrap_or_else(chrono::Utc::now);
    let age = chrono::Duration::from_std(cut.min_age.0)
        .map_err(|e| ReconcileError::new(format!("cut.min_age: {e}")))?;
    plan.with_cut(source, &cut.column, now - age)
}

fn prepare_full(
    reader: &tables::Reader<'_>,
    ctx: &SessionContext,
    config: &ReconcileConfig,
    key: &[String],
    options: &Options,
) -> Result<Prepared, ReconcileError> {
    let source = reader.register(ctx, "source", &config.source)?;
    let target = reader.register(ctx, "target", &config.target)?;
    let plan = reader.runtime.block_on(async {
        let schema = |name: &'static str| async move {
            let table = ctx
                .table(name)
                .await
                .map_err(|e| ReconcileError::new(format!("{name}: {e}")))?;
            Ok::<_, ReconcileError>(table.schema().as_arrow().clone())
        };
        let (source, target) = (schema("source").await?, schema("target").await?);
        make_plan(&source, &target, key, config, options)
    })?;
    Ok(Prepared {
        source,
        target,
        plan,
        rows: None,
        checksum: None,
        state_file: None,
    })
}

/// Checksum mode: narrows the comparison to the key ranges whose checksums differ and
/// registers only their rows (see [`checksum`]).
fn prepare_checksum(
    ctx: &SessionContext,
    pipeline: &LoadedPipeline,
    config: &ReconcileConfig,
    key: &[String],
    options: &Options,
) -> Result<Prepared, ReconcileError> {
    let (SnapshotConfig::Postgres(s), SnapshotConfig::Postgres(t)) =
        (&config.source, &config.target)
    else {
        return Err(ReconcileError::new(
            "checksum mode needs PostgreSQL tables on both sides",
        ));
    };
    let [key_column] = key else {
        return Err(ReconcileError::new("checksum mode needs one key column"));
    };
    let side = |config| checksum::Side {
        config,
        key: String::new(),
        columns: Vec::new(),
        filter: String::new(),
        hash: String::new(),
    };
    let (mut source_side, mut target_side) = (side(s), side(t));
    let ((source_schema, source_types), (target_schema, target_types)) =
        checksum::schemas(&source_side, &target_side)?;
    let plan = make_plan(&source_schema, &target_schema, key, config, options)?;
    (source_side.columns, target_side.columns) = checksum::columns(&plan);
    source_side.key = compare::ident(&plan.key[0].source);
    target_side.key = compare::ident(&plan.key[0].target);
    let hashed_as_text = checksum::choose_hash(
        &mut source_side,
        &mut target_side,
        &source_types,
        &target_types,
    )?;
    if let Some(cut) = &plan.cut {
        for (side, column) in [
            (&mut source_side, &cut.source),
            (&mut target_side, &cut.target),
        ] {
            side.filter = format!(
                "AND (t.{0} IS NULL OR t.{0} <= '{1}')",
                compare::ident(column),
                cut.cutoff
            );
        }
    }
    let state_file = checksum::state_path(pipeline, &config.checksum);
    let narrowed = checksum::narrow(
        &source_side,
        &target_side,
        &config.checksum,
        &state_file,
        options.progress.as_deref(),
    )?;
    let target_key = plan.key[0].target.clone();
    let mut rows_read = 0;
    for (name, side, key) in [
        ("source", s, key_column.as_str()),
        ("target", t, target_key.as_str()),
    ] {
        let relation = checksum::restricted(
            side.table.as_deref().unwrap_or_default(),
            key,
            &narrowed.ranges,
        );
        let mut client = pool::connect(side.url.expose())
            .map_err(|e| ReconcileError::new(format!("{name}: cannot connect: {e}")))?;
        rows_read += tables::postgres::register_relation(ctx, name, &mut client, &relation)
            .map_err(|e| ReconcileError::new(format!("{name}: {e}")))?;
    }
    let mut stats = narrowed.stats;
    stats.rows_read = rows_read;
    stats.hashed_as_text = hashed_as_text;
    let describe = |side: &PostgresSnapshot| {
        format!(
            "postgres table {}",
            side.table.as_deref().unwrap_or_default()
        )
    };
    Ok(Prepared {
        source: describe(s),
        target: describe(t),
        plan,
        rows: Some((narrowed.source_rows, narrowed.target_rows)),
        checksum: Some(stats),
        state_file: Some(state_file),
    })
}

/// Applies a repair script to the pipeline's `reconcile.target`, in one transaction.
pub fn apply_repair(
    pipeline: &LoadedPipeline,
    script: &repair::Script,
) -> Result<(), ReconcileError> {
    let config = pipeline
        .config
        .reconcile
        .as_ref()
        .ok_or_else(|| ReconcileError::new("the pipeline has no `reconcile` section"))?;
    repair::apply(&config.target, script, pipeline)
}

async fn count(ctx: &SessionContext, table: &str) -> Result<u64, ReconcileError> {
    let df = ctx
        .table(table)
        .await
        .map_err(|e| ReconcileError::new(e.to_string()))?;
    df.count()
        .await
        .map(|n| n as u64)
        .map_err(|e| ReconcileError::new(format!("cannot count {table}: {e}")))
}

async fn run_query(
    ctx: &SessionContext,
    query: &NamedQuery,
) -> Result<QueryResult, ReconcileError> {
    let fail = |e: datafusion::error::DataFusionError| {
        ReconcileError::new(format!("query `{}` failed: {e}", query.name))
    };
    let batches = ctx
        .sql(&query.sql)
        .await
        .map_err(fail)?
        .collect()
        .await
        .map_err(fail)?;
    let table = pretty_format_batches(&batches)
        .map_err(|e| ReconcileError::new(e.to_string()))?
        .to_string();
    let columns = batches
        .first()
        .map(|b| {
            b.schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        })
        .unwrap_or_default();
    let mut rows = Vec::new();
    for batch in &batches {
        for row in 0..batch.num_rows() {
            rows.push(
                batch
                    .columns()
                    .iter()
                    .map(|c| compare::cell(c.as_ref(), row))
                    .collect::<Result<Vec<_>, _>>()?,
            );
        }
    }
    Ok(QueryResult {
        name: query.name.clone(),
        sql: query.sql.clone(),
        columns,
        rows,
        table,
    })
}

/// The queries of an SQL file (`--sql FILE`): statements separated by `;`, each named by
/// a `-- name: <name>` line before it, else `<file stem>#<n>`.
pub fn queries_from_file(path: &Path) -> Result<Vec<NamedQuery>, ReconcileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ReconcileError::new(format!("cannot read {}: {e}", path.display())))?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "query".into());
    let mut queries = Vec::new();
    for statement in text.split(';') {
        let mut name = None;
        let mut sql = Vec::new();
        for line in statement.lines() {
            match line.trim().strip_prefix("-- name:") {
                Some(n) => name = Some(n.trim().to_string()),
                None => sql.push(line),
            }
        }
        let sql = sql.join("\n");
        if sql
            .lines()
            .all(|l| l.trim().is_empty() || l.trim().starts_with("--"))
        {
            continue;
        }
        let name = name.unwrap_or_else(|| format!("{stem}#{}", queries.len() + 1));
        queries.push(NamedQuery {
            name,
            sql: sql.trim().to_string(),
        });
    }
    Ok(queries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sql_file_gives_named_and_numbered_queries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checks.sql");
        std::fs::write(
            &path,
            "-- name: totals\nSELECT sum(price) FROM target;\n\n-- a comment only;\n\
             SELECT count(*)\nFROM source;\n",
        )
        .unwrap();
        let queries = queries_from_file(&path).unwrap();
        let named: Vec<(&str, &str)> = queries
            .iter()
            .map(|q| (q.name.as_str(), q.sql.as_str()))
            .collect();
        assert_eq!(
            named,
            vec![
                ("totals", "SELECT sum(price) FROM target"),
                ("checks#2", "SELECT count(*)\nFROM source"),
            ]
        );
    }
}
