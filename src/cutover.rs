//! `weir cutover PIPELINE.yaml`: the checklist users otherwise follow by hand before they
//! switch an application from the source database to the target (docs/cutover.md).
//!
//! 1. Writes are frozen: `--freeze-hook` runs (with `--execute`), then weir waits until
//!    no row of the pipeline's tables has been written for `--quiet-for`.
//! 2. A watermark message goes into the source's WAL; once the pipeline has applied its
//!    position, everything committed before it is in the target.
//! 3. Every table is reconciled in checksum mode; any difference ends the cutover
//!    (exit 1, with the report).
//! 4. The positions are captured, after the final flush and before the switch: the
//!    source's (the watermark) and the target's (the slot of the reverse pipeline, which
//!    `--execute` creates on the target with its publication), and a reverse pipeline
//!    file (target → source) is written.
//!
//! Without `--execute` nothing is changed: no hook, no slot, no file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use weir_reconcile::database::TableStatus;
use weir_runtime::config::{self, LoadedPipeline, yaml};
use weir_runtime::sink::SinkConfig;
use weir_runtime::sink::stored::stored_checkpoint;
use weir_runtime::source::SourceConfig;
use weir_runtime::source::postgres_cdc::cutover::{MovedTable, SourceDatabase, prepare_reverse};
use weir_runtime::source::postgres_cdc::{lsn_text, stream_key};
use weir_runtime::tables::Routing;

/// Exit codes: 0 ready to switch, 1 the tables differ, 2 the checks could not run.
const DIFFERENT: u8 = 1;
const CANNOT: u8 = 2;

#[derive(clap::Args)]
pub struct CutoverArgs {
    /// The pipeline file (a `postgres-cdc` source and a `postgres` sink).
    pipeline: PathBuf,
    /// Do it: run the freeze hook, create the reverse pipeline's publication and slot on
    /// the target, and write the reverse pipeline file. Without it, a dry run.
    #[arg(long)]
    execute: bool,
    /// A shell command that stops writes to the source (run first, with `--execute`).
    #[arg(long)]
    freeze_hook: Option<String>,
    /// Writes count as frozen once no row of the pipeline's tables changed this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    quiet_for: Duration,
    /// How long to wait for the writes to stop, and then for the pipeline to apply them.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// The reverse pipeline file (default: `<pipeline>-reverse.yaml` beside the pipeline).
    #[arg(long)]
    reverse: Option<PathBuf>,
}

struct Failed(u8, String);

pub fn cutover(args: &CutoverArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed(code, message)) => {
            eprintln!("error: cutover stopped: {message}");
            ExitCode::from(code)
        }
    }
}

fn cannot(message: impl Into<String>) -> Failed {
    Failed(CANNOT, message.into())
}

fn run(args: &CutoverArgs) -> Result<(), Failed> {
    let pipeline = config::load(&args.pipeline).map_err(|e| cannot(e.to_string()))?;
    let name = pipeline.config.name.clone();
    let (SourceConfig::PostgresCdc(source), SinkConfig::Postgres(sink), Some(tables)) = (
        &pipeline.config.source,
        &pipeline.config.sink,
        &pipeline.config.tables,
    ) else {
        return Err(cannot(
            "weir cutover works on a pipeline from a `postgres-cdc` source to a `postgres` \
             sink, with `tables:`",
        ));
    };
    let dry = !args.execute;
    println!(
        "cutover of pipeline {name}{}",
        if dry {
            " (dry run: nothing is changed; --execute does it)"
        } else {
            ""
        }
    );
    let routing = Routing::new(tables).map_err(cannot)?;
    let mut db = SourceDatabase::connect(source).map_err(cannot)?;
    let moved = db.moved_tables(source, &routing).map_err(cannot)?;
    if moved.is_empty() {
        return Err(cannot(format!(
            "publication {} publishes none of the tables `tables:` selects",
            source.publication
        )));
    }

    // 1. Freeze.
    match (&args.freeze_hook, dry) {
        (Some(hook), false) => {
            let status = std::process::Command::new("sh")
                .args(["-c", hook])
                .status()
                .map_err(|e| cannot(format!("cannot run the freeze hook: {e}")))?;
            if !status.success() {
                return Err(cannot(format!("the freeze hook failed ({status})")));
            }
            println!("  freeze hook: ran");
        }
        (Some(_), true) => println!("  freeze hook: not run (dry run)"),
        (None, _) => {}
    }
    let waited = db
        .wait_quiet(&moved, args.quiet_for, args.timeout)
        .map_err(cannot)?;
    println!(
        "  writes: none to the {} tables for {} (waited {:.1}s)",
        moved.len(),
        humantime::format_duration(args.quiet_for),
        waited.as_secs_f64()
    );

    // 2. The watermark, and the pipeline applying it.
    let watermark = db.watermark().map_err(cannot)?;
    let started = Instant::now();
    wait_applied(
        &pipeline,
        &stream_key(&source.slot),
        watermark,
        args.timeout,
    )?;
    println!(
        "  applied: the pipeline applied the source up to {} in {:.1}s",
        lsn_text(watermark),
        started.elapsed().as_secs_f64()
    );

    // 3. Every table in checksum mode.
    let report = reconcile(&pipeline, &moved, sink.schema.as_deref())?;
    print!("{}", indent(&report.text()));
    if !report.equal {
        let differing: Vec<&str> = report
            .tables
            .iter()
            .filter(|t| t.status != TableStatus::Equal)
            .map(|t| t.table.as_str())
            .collect();
        return Err(Failed(
            DIFFERENT,
            format!(
                "{} of {} tables differ or could not be compared: {}. Do not switch",
                differing.len(),
                report.tables.len(),
                differing.join(", ")
            ),
        ));
    }

    // 4. Positions and the reverse pipeline.
    let target_schema = sink.schema.clone().unwrap_or_else(|| "public".into());
    let reverse = Reverse::plan(&pipeline, &moved, &target_schema)?;
    let target_position = if dry {
        None
    } else {
        Some(
            prepare_reverse(
                sink.url.expose(),
                &target_schema,
                &moved,
                &reverse.publication,
                &reverse.slot,
            )
            .map_err(cannot)?,
        )
    };
    println!(
        "  source position: {} (everything the source committed before it is in the target)",
        lsn_text(watermark)
    );
    match target_position {
        Some(lsn) => println!(
            "  target position: {} (slot {} on the target: every write after it goes back \
             to the source through the reverse pipeline)",
            lsn_text(lsn),
            reverse.slot
        ),
        None => println!(
            "  target position: taken with --execute, when slot {} is created on the target",
            reverse.slot
        ),
    }
    let path = args
        .reverse
        .clone()
        .unwrap_or_else(|| default_reverse_path(&args.pipeline));
    let yaml = reverse.yaml(&pipeline, target_position)?;
    if dry {
        println!(
            "  reverse pipeline: would be written to {}:\n{}",
            path.display(),
            indent(&yaml)
        );
        println!("ready: run again with --execute to freeze, capture the positions and write it");
    } else {
        std::fs::write(&path, &yaml)
            .map_err(|e| cannot(format!("cannot write {}: {e}", path.display())))?;
        println!("  reverse pipeline: {}", path.display());
        loop_advice(source, sink, &reverse);
        println!(
            "ready to switch: stop `weir run` of {name}, point the application at the target, \
             and run `weir run {}` to carry the target's writes back to the source for a \
             rollback",
            path.display()
        );
    }
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

fn default_reverse_path(pipeline: &Path) -> PathBuf {
    let stem = pipeline
        .file_stem()
        .map_or("pipeline".into(), |s| s.to_string_lossy().into_owned());
    pipeline.with_file_name(format!("{stem}-reverse.yaml"))
}

/// Waits until the sink's stored checkpoint of `stream` reaches `lsn`.
fn wait_applied(
    pipeline: &LoadedPipeline,
    stream: &str,
    lsn: u64,
    timeout: Duration,
) -> Result<(), Failed> {
    let started = Instant::now();
    loop {
        let applied = match stored_checkpoint(pipeline) {
            Some(Ok(checkpoint)) => checkpoint.get(stream).map_or(0, |r| r.next.max(0) as u64),
            Some(Err(e)) => return Err(cannot(format!("cannot read the checkpoint: {e}"))),
            None => return Err(cannot("the sink stores no checkpoint")),
        };
        if applied >= lsn {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(cannot(format!(
                "the pipeline did not apply the source up to {} within {} (it is at {}). Is \
                 `weir run` running for this pipeline? `weir status` says",
                lsn_text(lsn),
                humantime::format_duration(timeout),
                lsn_text(applied)
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Compares every moved table in checksum mode: the pipeline's `reconcile` section if it
/// has one, else the source and target databases of the pipeline itself.
fn reconcile(
    pipeline: &LoadedPipeline,
    moved: &[MovedTable],
    target_schema: Option<&str>,
) -> Result<weir_reconcile::database::TablesReport, Failed> {
    let mut pipeline = pipeline.clone();
    let section = match pipeline.config.reconcile.take() {
        Some(mut section) => {
            section.mode = config::reconcile::Mode::Checksum;
            section.wait = None;
            section
        }
        None => {
            let (SourceConfig::PostgresCdc(source), SinkConfig::Postgres(sink)) =
                (&pipeline.config.source, &pipeline.config.sink)
            else {
                unreachable!("checked by the caller");
            };
            let mut schemas: Vec<&str> = moved.iter().map(|t| t.schema.as_str()).collect();
            schemas.dedup();
            let [schema] = schemas.as_slice() else {
                return Err(cannot(
                    "the pipeline's tables span several schemas: give it a `reconcile` \
                     section saying what to compare",
                ));
            };
            serde_json::from_value(serde_json::json!({
                "source": {"type": "postgres", "url": source.url.expose(), "schema": schema},
                "target": {
                    "type": "postgres",
                    "url": sink.url.expose(),
                    "schema": target_schema.unwrap_or("public"),
                },
                "mode": "checksum",
            }))
            .map_err(|e| cannot(format!("cannot build the comparison: {e}")))?
        }
    };
    pipeline.config.reconcile = Some(section);
    let options = weir_reconcile::Options {
        limit: 20,
        queries: Vec::new(),
        repair: false,
        progress: None,
        now: None,
    };
    weir_reconcile::database::reconcile_tables(&pipeline, &options)
        .map(|outcome| outcome.report)
        .map_err(|e| cannot(format!("cannot reconcile: {e}")))
}

/// The reverse pipeline: the target's tables back to the source.
struct Reverse {
    publication: String,
    slot: String,
    /// The source schema the tables go back to.
    schema: String,
    /// `(target table, source table)`, by the target's names.
    tables: Vec<(String, String)>,
    target_schema: String,
    /// The origin the forward pipeline's sink marks its writes with, if it does: the
    /// reverse pipeline leaves those out.
    forward_origin: Option<String>,
    /// The origin the reverse pipeline's sink marks its writes with.
    origin: String,
}

impl Reverse {
    fn plan(
        pipeline: &LoadedPipeline,
        moved: &[MovedTable],
        target_schema: &str,
    ) -> Result<Reverse, Failed> {
        let (SourceConfig::PostgresCdc(source), SinkConfig::Postgres(sink)) =
            (&pipeline.config.source, &pipeline.config.sink)
        else {
            unreachable!("checked by the caller");
        };
        let mut schemas: Vec<&str> = moved.iter().map(|t| t.schema.as_str()).collect();
        schemas.sort_unstable();
        schemas.dedup();
        let [schema] = schemas.as_slice() else {
            return Err(cannot(format!(
                "the tables come from several schemas ({}), which one reverse pipeline cannot \
                 send back: write the reverse pipelines by hand",
                schemas.join(", ")
            )));
        };
        let mut targets: Vec<&str> = moved.iter().map(|t| t.target.as_str()).collect();
        targets.sort_unstable();
        if targets.windows(2).any(|w| w[0] == w[1]) {
            return Err(cannot(
                "several source tables go to one target table: a reverse pipeline cannot \
                 split them again; write it by hand",
            ));
        }
        Ok(Reverse {
            publication: format!("{}_reverse", source.publication),
            slot: format!("{}_reverse", source.slot),
            schema: schema.to_string(),
            tables: moved
                .iter()
                .map(|t| (t.target.clone(), t.table.clone()))
                .collect(),
            target_schema: target_schema.to_string(),
            forward_origin: sink.origin.clone(),
            origin: format!("{}-reverse", pipeline.config.name),
        })
    }

    /// The reverse pipeline file. Connection URLs are written as the pipeline file has
    /// them (`${SOURCE_PG_URL}` stays a reference, never its value).
    fn yaml(&self, pipeline: &LoadedPipeline, target_lsn: Option<u64>) -> Result<String, Failed> {
        let text = std::fs::read_to_string(&pipeline.file)
            .map_err(|e| cannot(format!("cannot read {}: {e}", pipeline.file.display())))?;
        // Variables stay as they are written: each `${NAME}` becomes itself.
        let raw = yaml::parse(&text, &|name| Some(format!("${{{name}}}")))
            .map_err(|_| cannot("cannot read the pipeline file again"))?;
        let raw_str = |section: &str, key: &str| -> Result<String, Failed> {
            raw.get(section)
                .and_then(|s| s.get(key))
                .and_then(|n| n.to_json().as_str().map(str::to_string))
                .ok_or_else(|| cannot(format!("`{section}.{key}` is not a string")))
        };
        let source_url = raw_str("source", "url")?;
        let target_url = raw_str("sink", "url")?;
        let name = &pipeline.config.name;
        let mut out = String::new();
        out.push_str(&format!(
            "# The reverse of pipeline {name}, written by `weir cutover --execute`: the \
             target's\n# changes back to the source, for a rollback. It reads slot {} on the \
             target,\n# created at {} before the switch, so no write made after the switch is \
             missed.\n",
            self.slot,
            target_lsn.map_or("the cutover".into(), lsn_text)
        ));
        out.push_str(&format!("name: {}\n", quoted(&format!("{name}-reverse"))));
        out.push_str("source:\n  type: postgres-cdc\n");
        out.push_str(&format!("  url: {}\n", quoted(&target_url)));
        out.push_str(&format!("  publication: {}\n", quoted(&self.publication)));
        out.push_str(&format!("  slot: {}\n", quoted(&self.slot)));
        out.push_str(
            "  snapshot: never            # the two databases were equal at the cutover\n",
        );
        out.push_str("  heartbeat: { interval: 10s }\n");
        if let Some(forward) = &self.forward_origin {
            out.push_str(&format!(
                "  skip_origins: [{}]   # the forward pipeline's writes\n",
                quoted(&format!("{forward}*"))
            ));
        }
        out.push_str("tables:\n  include:\n");
        for (target, _) in &self.tables {
            out.push_str(&format!(
                "    - {}\n",
                quoted(&format!("{}.{target}", self.target_schema))
            ));
        }
        let renamed: Vec<&(String, String)> = self.tables.iter().filter(|(t, s)| t != s).collect();
        if !renamed.is_empty() {
            out.push_str("  route:\n");
            for (target, source) in renamed {
                out.push_str(&format!(
                    "    - {{ source: {}, target: {} }}\n",
                    quoted(&format!("{}.{target}", self.target_schema)),
                    quoted(source)
                ));
            }
        }
        out.push_str("sink:\n  type: postgres\n");
        out.push_str(&format!("  url: {}\n", quoted(&source_url)));
        out.push_str(&format!("  schema: {}\n", quoted(&self.schema)));
        out.push_str("  mode: upsert\n");
        out.push_str(&format!(
            "  origin: {}   # so the forward pipeline can leave these writes out\n",
            quoted(&self.origin)
        ));
        out.push_str(&format!(
            "dead_letter: {{ type: file, path: {} }}\n",
            quoted(&format!("{name}-reverse.dead-letters.jsonl"))
        ));
        Ok(out)
    }
}

/// Says what keeps a change from going back and forth when both pipelines run at once.
fn loop_advice(
    source: &weir_runtime::source::postgres_cdc::PostgresCdcSourceConfig,
    sink: &weir_runtime::sink::postgres::PostgresSinkConfig,
    reverse: &Reverse,
) {
    let skips_reverse = source.skips_origin(&reverse.origin);
    if sink.origin.is_none() || !skips_reverse {
        println!(
            "  note: the forward pipeline {} and {}: stop it before the reverse pipeline \
             runs, or a change would go back and forth. To run both, give its sink \
             `origin: '<name>'` and its source `skip_origins: ['{}*']`",
            if sink.origin.is_none() {
                "marks no origin on its writes"
            } else {
                "marks an origin on its writes"
            },
            if skips_reverse {
                "skips the reverse pipeline's writes"
            } else {
                "does not skip the reverse pipeline's writes"
            },
            reverse.origin
        );
    }
}

/// A YAML single-quoted scalar.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
