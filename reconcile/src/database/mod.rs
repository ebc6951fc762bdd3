//! `weir reconcile` on a many-table pipeline (`tables`): every routed table pair is
//! compared, a bounded number at once, each by the one-table comparison
//! ([`crate::reconcile_with`]) on a pipeline narrowed to that table.
//!
//! Each side is a whole database: a PostgreSQL schema, an SQLite file, a folder of
//! Parquet tables, or the change log split by table ([`log`]). The source side's tables
//! are routed by the pipeline's `tables` rules (`include`, `exclude`, `route`), so the
//! pairs are the pipeline's own. A table's key is the first of: its override's
//! `primary_key`, the target table's primary key, the source table's, the key its change
//! events carried, `tables.primary_key`.

mod catalog;
pub mod log;
mod report;

pub use report::{TableLine, TableStatus, TablesReport};

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use weir_runtime::config::reconcile::{
    Mode, ParquetSnapshot, PostgresSnapshot, ReconcileConfig, SnapshotConfig, SqliteSnapshot,
};
use weir_runtime::config::tables::TablesConfig;
use weir_runtime::config::{LoadedPipeline, TableConfig};
use weir_runtime::tables::{Routing, Selection, TargetTable};

use crate::tables::Logs;
use crate::{Options, Outcome, ReconcileError, repair, section};
use catalog::Catalog;
use log::LogTables;

/// The report, and each table's repair script when one was asked for.
pub struct TablesOutcome {
    pub report: TablesReport,
    pub repairs: Vec<TableRepair>,
}

/// One table's repair: its script, and the narrowed pipeline it applies through.
pub struct TableRepair {
    pub table: String,
    pub script: repair::Script,
    pipeline: LoadedPipeline,
}

/// Totals of the repairs applied.
#[derive(Debug, Default)]
pub struct Applied {
    pub tables: usize,
    pub inserts: u64,
    pub deletes: u64,
    pub updates: u64,
}

/// One table pair to compare.
struct Job {
    target: String,
    sources: Vec<String>,
    /// The pipeline narrowed to this table, or why the pair cannot be compared.
    narrowed: Result<LoadedPipeline, String>,
    /// Said beside the result (a mode fallen back to full).
    note: Option<String>,
}

/// Compares every table pair of a many-table pipeline.
pub fn reconcile_tables(
    pipeline: &LoadedPipeline,
    options: &Options,
) -> Result<TablesOutcome, ReconcileError> {
    let started = Instant::now();
    let config = section(pipeline)?;
    let tables = pipeline
        .config
        .tables
        .as_ref()
        .ok_or_else(|| ReconcileError::new("the pipeline has no `tables` section"))?;
    if options.repair {
        let writable = matches!(
            config.target,
            SnapshotConfig::Postgres(_) | SnapshotConfig::Sqlite(_)
        );
        if !writable {
            return Err(ReconcileError::new(
                "repair writes to a database: the target must be `sqlite` or `postgres`",
            ));
        }
    }
    let waited = config
        .wait
        .as_ref()
        .map(|wait| crate::wait::until_applied(pipeline, wait))
        .transpose()?;
    let log_end = waited.as_ref().map(|w| &w.positions);
    let routing = Routing::new(tables).map_err(ReconcileError::new)?;
    let target_catalog = catalog::list(pipeline, &config.target, "target")?;
    let source_catalog = catalog::list(pipeline, &config.source, "source")?;
    // A change log's tables find their key in the target's tables last, as in `weir run`.
    let known_targets = || -> HashMap<String, TargetTable> {
        target_catalog
            .iter()
            .flat_map(|c| &c.tables)
            .map(|(name, listed)| {
                let table = TargetTable {
                    primary_key: listed.primary_key.clone(),
                    types: Vec::new(),
                };
                (name.clone(), table)
            })
            .collect()
    };
    let read_log = |snapshot: &SnapshotConfig| -> Result<Option<LogTables>, ReconcileError> {
        match snapshot {
            SnapshotConfig::Debezium(config) => {
                log::read(pipeline, tables, config, known_targets(), log_end).map(Some)
            }
            _ => Ok(None),
        }
    };
    let source_log = read_log(&config.source)?;
    let target_log = read_log(&config.target)?;

    // The pairs: each target table and the source tables routed to it.
    let mut pairs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut skipped: Vec<String> = Vec::new();
    match (&source_catalog, &source_log) {
        (Some(catalog), _) => {
            for name in catalog.tables.keys() {
                match routing.select(name) {
                    Selection::Skipped => skipped.push(name.clone()),
                    Selection::Target { name: target, .. } => {
                        pairs.entry(target).or_default().push(name.clone())
                    }
                }
            }
        }
        (None, Some(log)) => {
            for (target, table) in &log.tables {
                pairs.insert(target.clone(), table.sources.iter().cloned().collect());
            }
            skipped.extend(log.skipped.keys().cloned());
        }
        (None, None) => unreachable!("a side is a catalog or a log"),
    }
    let sides = Sides {
        pipeline,
        config,
        tables,
        source_catalog: source_catalog.as_ref(),
        target_catalog: target_catalog.as_ref(),
        source_log: source_log.as_ref(),
        target_log: target_log.as_ref(),
        state_dir: state_dir(pipeline, config),
    };
    let jobs: Vec<Job> = pairs
        .into_iter()
        .map(|(target, sources)| sides.job(target, sources))
        .collect();

    let results = run_jobs(&jobs, &sides, options, config.concurrency);
    let describe = |catalog: Option<&Catalog>, log: Option<&LogTables>| match (catalog, log) {
        (Some(catalog), _) => catalog.description.clone(),
        (None, Some(log)) => {
            let mut text = log.description.clone();
            if log.undecodable > 0 {
                text.push_str(&format!(
                    " ({} records could not be decoded or placed and were skipped)",
                    log.undecodable
                ));
            }
            text
        }
        (None, None) => String::new(),
    };
    let mut lines = Vec::new();
    let mut details = Vec::new();
    let mut repairs = Vec::new();
    for (job, result) in jobs.into_iter().zip(results) {
        let line = match result {
            Err(error) => TableLine::failed(&job.target, &job.sources, error),
            Ok(JobResult::Absent) => TableLine::absent(&job.target, &job.sources),
            Ok(JobResult::Compared(outcome, seconds)) => {
                let line = TableLine::compared(
                    &job.target,
                    &job.sources,
                    &outcome.report,
                    seconds,
                    job.note.clone(),
                );
                let outcome = *outcome;
                if let (Some(script), Ok(narrowed)) = (outcome.repair, job.narrowed) {
                    repairs.push(TableRepair {
                        table: job.target.clone(),
                        script,
                        pipeline: narrowed,
                    });
                }
                if !outcome.report.equal {
                    details.push((job.target.clone(), outcome.report));
                }
                line
            }
        };
        lines.push(line);
    }
    let report = TablesReport::new(
        pipeline.config.name.clone(),
        match config.mode {
            Mode::Full => "full",
            Mode::Checksum => "checksum",
        },
        describe(source_catalog.as_ref(), source_log.as_ref()),
        describe(target_catalog.as_ref(), target_log.as_ref()),
        lines,
        skipped,
        details,
        waited,
        started.elapsed().as_secs_f64(),
    );
    Ok(TablesOutcome { report, repairs })
}

/// Applies each table's repair script to its target table, each in its own transaction.
pub fn apply_repairs(outcome: &TablesOutcome) -> Result<Applied, ReconcileError> {
    let mut applied = Applied::default();
    for repair in &outcome.repairs {
        if repair.script.statements() == 0 {
            continue;
        }
        crate::apply_repair(&repair.pipeline, &repair.script)
            .map_err(|e| ReconcileError::new(format!("table {}: {e}", repair.table)))?;
        applied.tables += 1;
        applied.inserts += repair.script.inserts;
        applied.deletes += repair.script.deletes;
        applied.updates += repair.script.updates;
    }
    Ok(applied)
}

enum JobResult {
    /// The target has no such table.
    Absent,
    Compared(Box<Outcome>, f64),
}

/// Runs the jobs on `concurrency` threads; results in job order.
fn run_jobs(
    jobs: &[Job],
    sides: &Sides<'_>,
    options: &Options,
    concurrency: usize,
) -> Vec<Result<JobResult, String>> {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<JobResult, String>>>> =
        Mutex::new((0..jobs.len()).map(|_| None).collect());
    // Each table's comparison reports nothing of its own; the whole reports tables done.
    let inner = Options {
        progress: None,
        ..options.clone()
    };
    std::thread::scope(|scope| {
        for _ in 0..concurrency.clamp(1, jobs.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(index) else { break };
                    let result = sides.run(job, &inner);
                    results.lock().expect("no thread panics holding it")[index] = Some(result);
                    let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if let Some(progress) = &options.progress {
                        progress(finished as u64, jobs.len() as u64);
                    }
                }
            });
        }
    });
    results
        .into_inner()
        .expect("no thread panics holding it")
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("not compared".into())))
        .collect()
}

/// Everything known about both sides, from which each pair's job is made.
struct Sides<'a> {
    pipeline: &'a LoadedPipeline,
    config: &'a ReconcileConfig,
    tables: &'a TablesConfig,
    source_catalog: Option<&'a Catalog>,
    target_catalog: Option<&'a Catalog>,
    source_log: Option<&'a LogTables>,
    target_log: Option<&'a LogTables>,
    state_dir: PathBuf,
}

impl Sides<'_> {
    fn job(&self, target: String, sources: Vec<String>) -> Job {
        let mut note = None;
        let narrowed = self.narrow(&target, &sources, &mut note);
        Job {
            target,
            sources,
            narrowed,
            note,
        }
    }

    /// The key of a pair: its override, the target's, the source's, the log's, the default.
    fn key(&self, target: &str, sources: &[String]) -> Option<Vec<String>> {
        let non_empty = |key: &Vec<String>| !key.is_empty();
        let overridden = sources.iter().find_map(|s| {
            self.tables
                .overrides
                .get(s)
                .and_then(|o| o.primary_key.clone())
        });
        overridden
            .or_else(|| {
                let listed = self.target_catalog?.tables.get(target)?;
                Some(listed.primary_key.clone()).filter(non_empty)
            })
            .or_else(|| {
                let listed = self.source_catalog?.tables.get(sources.first()?)?;
                Some(listed.primary_key.clone()).filter(non_empty)
            })
            .or_else(|| {
                let table = self.source_log?.tables.get(target)?;
                Some(table.primary_key.clone()).filter(non_empty)
            })
            .or_else(|| Some(self.tables.primary_key.clone()).filter(non_empty))
    }

    /// The pipeline narrowed to one pair: `table` is the target table with the pair's key,
    /// and `reconcile` names the pair's two tables.
    fn narrow(
        &self,
        target: &str,
        sources: &[String],
        note: &mut Option<String>,
    ) -> Result<LoadedPipeline, String> {
        let key = self.key(target, sources).ok_or_else(|| {
            format!(
                "no key to match rows by: the tables have no primary key and their events \
                 carried none; declare one in `tables.overrides.{}.primary_key` or \
                 `tables.primary_key`",
                sources.first().map(String::as_str).unwrap_or(target)
            )
        })?;
        let source = self.source_snapshot(sources)?;
        let target_snapshot = self.target_snapshot(target);
        let mut mode = self.config.mode;
        if mode == Mode::Checksum {
            let why_not = self.checksum_refusal(target, sources, &key);
            if let Some(why) = why_not {
                *note = Some(format!("compared in full: {why}"));
                mode = Mode::Full;
            }
        }
        let override_of = sources.iter().find_map(|s| self.tables.overrides.get(s));
        let mut narrowed = self.pipeline.clone();
        narrowed.config.tables = None;
        narrowed.config.table = Some(TableConfig {
            name: target.to_string(),
            primary_key: key,
            columns: override_of
                .filter(|o| !o.columns.is_empty())
                .map_or_else(|| self.tables.columns.clone(), |o| o.columns.clone()),
            case_insensitive: override_of
                .and_then(|o| o.case_insensitive)
                .unwrap_or(self.tables.case_insensitive),
            unknown_columns: override_of
                .and_then(|o| o.unknown_columns)
                .unwrap_or(self.tables.unknown_columns),
        });
        let mut checksum = self.config.checksum.clone();
        checksum.state = Some(self.state_dir.join(format!("{}.json", file_safe(target))));
        narrowed.config.reconcile = Some(ReconcileConfig {
            source,
            target: target_snapshot,
            key: Vec::new(),
            mode,
            checksum,
            wait: None,
            ..self.config.clone()
        });
        Ok(narrowed)
    }

    fn source_snapshot(&self, sources: &[String]) -> Result<SnapshotConfig, String> {
        let merged = || {
            format!(
                "{} are merged into one target; compare merged tables with a postgres or \
                 change-log source",
                sources.join(", ")
            )
        };
        let listed = |name: &String| {
            self.source_catalog
                .and_then(|c| c.tables.get(name))
                .map(|l| l.table.clone())
                .unwrap_or_default()
        };
        Ok(match &self.config.source {
            SnapshotConfig::Postgres(pg) => {
                let schema = catalog::postgres_schema(pg);
                let mut narrowed = PostgresSnapshot {
                    schema: None,
                    ..pg.clone()
                };
                match sources {
                    [one] => narrowed.table = Some(format!("{schema}.{}", listed(one))),
                    many => {
                        // Shards share their columns; their union is the source.
                        let parts: Vec<String> = many
                            .iter()
                            .map(|s| {
                                format!(
                                    "SELECT * FROM {}",
                                    crate::tables::postgres_table(&format!(
                                        "{schema}.{}",
                                        listed(s)
                                    ))
                                )
                            })
                            .collect();
                        narrowed.query = Some(parts.join(" UNION ALL "));
                    }
                }
                SnapshotConfig::Postgres(narrowed)
            }
            SnapshotConfig::Sqlite(sqlite) => match sources {
                [one] => SnapshotConfig::Sqlite(SqliteSnapshot {
                    table: Some(listed(one)),
                    schema: None,
                    ..sqlite.clone()
                }),
                _ => return Err(merged()),
            },
            SnapshotConfig::Parquet(parquet) => match sources {
                [one] => SnapshotConfig::Parquet(ParquetSnapshot {
                    path: parquet.path.join(listed(one)),
                    schema: None,
                }),
                _ => return Err(merged()),
            },
            log @ SnapshotConfig::Debezium(_) => log.clone(),
        })
    }

    fn target_snapshot(&self, target: &str) -> SnapshotConfig {
        match &self.config.target {
            SnapshotConfig::Postgres(pg) => SnapshotConfig::Postgres(PostgresSnapshot {
                table: Some(format!("{}.{target}", catalog::postgres_schema(pg))),
                schema: None,
                ..pg.clone()
            }),
            SnapshotConfig::Sqlite(sqlite) => SnapshotConfig::Sqlite(SqliteSnapshot {
                table: Some(target.to_string()),
                schema: None,
                ..sqlite.clone()
            }),
            SnapshotConfig::Parquet(parquet) => SnapshotConfig::Parquet(ParquetSnapshot {
                path: parquet.path.join(target),
                schema: None,
            }),
            log @ SnapshotConfig::Debezium(_) => log.clone(),
        }
    }

    /// Why checksum mode cannot compare a pair, if it cannot: it needs one PostgreSQL
    /// table on each side and one integer key column.
    fn checksum_refusal(&self, target: &str, sources: &[String], key: &[String]) -> Option<String> {
        let integer = |types: &[String]| {
            matches!(
                types,
                [t] if matches!(t.as_str(), "smallint" | "integer" | "bigint")
            )
        };
        let (Some(source), Some(target_catalog)) = (self.source_catalog, self.target_catalog)
        else {
            return Some("checksum mode needs PostgreSQL tables on both sides".into());
        };
        let both_postgres = matches!(
            (&self.config.source, &self.config.target),
            (SnapshotConfig::Postgres(_), SnapshotConfig::Postgres(_))
        );
        if !both_postgres {
            return Some("checksum mode needs PostgreSQL tables on both sides".into());
        }
        let [one] = sources else {
            return Some("the target merges several source tables".into());
        };
        let source_types = source.tables.get(one).map(|l| l.key_types.as_slice());
        let target_types = target_catalog
            .tables
            .get(target)
            .map(|l| l.key_types.as_slice());
        let source_key = source.tables.get(one).map(|l| l.primary_key.as_slice());
        if key.len() != 1
            || source_key != Some(key)
            || !source_types.is_some_and(integer)
            || !target_types.is_some_and(integer)
        {
            return Some(format!(
                "checksum mode cuts ranges of one integer primary key column; the key is ({})",
                key.join(", ")
            ));
        }
        None
    }

    /// Compares one pair.
    fn run(&self, job: &Job, options: &Options) -> Result<JobResult, String> {
        let narrowed = job.narrowed.as_ref().map_err(Clone::clone)?;
        if let Some(catalog) = self.target_catalog
            && !catalog.tables.contains_key(&job.target)
        {
            return Ok(JobResult::Absent);
        }
        let logs = Logs {
            source: self.source_log.and_then(|l| l.tables.get(&job.target)),
            target: self.target_log.and_then(|l| l.tables.get(&job.target)),
        };
        if self.target_log.is_some() && logs.target.is_none() {
            return Ok(JobResult::Absent);
        }
        let checksum = narrowed
            .config
            .reconcile
            .as_ref()
            .is_some_and(|r| r.mode == Mode::Checksum);
        if checksum {
            std::fs::create_dir_all(&self.state_dir).map_err(|e| {
                format!(
                    "cannot make the checksum state folder {}: {e}",
                    self.state_dir.display()
                )
            })?;
        }
        let started = Instant::now();
        let outcome = crate::reconcile_with(narrowed, options, logs).map_err(|e| e.to_string())?;
        Ok(JobResult::Compared(
            Box::new(outcome),
            started.elapsed().as_secs_f64(),
        ))
    }
}

/// Where checksum mode records each table's finished ranges: `checksum.state` taken as a
/// folder, else `<pipeline name>.reconcile-state/` beside the pipeline file.
fn state_dir(pipeline: &LoadedPipeline, config: &ReconcileConfig) -> PathBuf {
    match &config.checksum.state {
        Some(path) => pipeline.resolve(path),
        None => pipeline
            .base_dir
            .join(format!("{}.reconcile-state", pipeline.config.name)),
    }
}

/// A table name as a file name: names come from the stream, so anything that could leave
/// the folder is replaced.
fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '/' | '\\' | '\0' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_string()
}
