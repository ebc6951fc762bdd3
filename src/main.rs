//! The `weir` command line.

mod cutover;
mod dlq;
mod plugin_tool;
mod progress;
mod resync;
mod status;

// The reader thread allocates each batch's buffers and the applier frees them; mimalloc
// handles that cross-thread pattern without the page faults glibc's allocator takes.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::{Parser, Subcommand};
use weir_runtime::config;
use weir_runtime::lifecycle::State;
use weir_runtime::metrics::Metrics;
use weir_runtime::pipeline::{self, RunOptions};

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Change-data pipelines: Debezium streams to Arrow, applied idempotently, with checkpoints and dead letters",
    long_about = None
)]
struct Cli {
    /// Log detail on standard error: -v for info, -vv for debug. RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline until its source ends (or, for a stream, until stopped).
    Run {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Exit 0 once the source has been idle this long and everything read is applied
        /// (e.g. `10s`).
        #[arg(long, value_parser = humantime::parse_duration)]
        stop_when_idle: Option<Duration>,
        /// Print the summary as JSON on standard output.
        #[arg(long)]
        json: bool,
        /// No progress display.
        #[arg(short, long)]
        quiet: bool,
        /// Resync when the source no longer holds the stored position, as
        /// `lifecycle.resync: auto` does, for this run.
        #[arg(long)]
        resync: bool,
        /// Serve the status page (`/`), `/metrics`, `/health` and `/ready` on this address
        /// (e.g. `127.0.0.1:9187`), as the pipeline's `server.listen` does.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Check pipeline files without running them; every problem is reported with its
    /// file, line and column.
    Validate {
        /// Pipeline files.
        #[arg(required = true)]
        pipelines: Vec<PathBuf>,
    },
    /// Compare the pipeline's `reconcile.source` with its `reconcile.target`: missing,
    /// extra and mismatched rows, and the named queries. Exits 0 when the two are equal,
    /// 1 when they differ, 2 when they cannot be compared.
    Reconcile(ReconcileArgs),
    /// Show where a pipeline stands, as it persisted in its target: its state (snapshotting,
    /// streaming, degraded, resync-required...), each table's progress, positions, lag,
    /// the last heartbeat and error, and the latest changes of state. Exits 2 when there
    /// is no status to show.
    Status {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Before switching an application from a `postgres-cdc` pipeline's source to its
    /// target: freeze writes, wait until the pipeline has applied everything, reconcile
    /// every table in checksum mode, print the positions and write a reverse pipeline for
    /// a rollback. A dry run unless `--execute`. Exits 0 when ready, 1 when a table
    /// differs, 2 when the checks could not run.
    Cutover(cutover::CutoverArgs),
    /// Work with the dead-letter output.
    Dlq {
        #[command(subcommand)]
        dlq: DlqCommand,
    },
    /// Print the JSON Schema of the pipeline format (for editor completion and checks).
    Schema,
    /// Work with WebAssembly plugins.
    Plugin {
        #[command(subcommand)]
        plugin: PluginCommand,
    },
    /// Measure weir's own performance.
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Send the dead letters back through the pipeline (decode, transforms, sink) once
    /// what refused them is fixed. Each letter is applied once, even if the replay is
    /// killed and run again; one refused again goes back to the dead-letter output with
    /// the new reason, for the next replay. Prints what each stage's pass did. Exits 0
    /// when nothing was refused again, 1 when something was, 2 when the replay stopped
    /// (an error, or a signal; a second signal exits at once with 130).
    Replay(dlq::ReplayArgs),
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Build plugin crates for wasm32-wasip2 (release) and put each component beside its
    /// Cargo.toml as `<crate_name>.wasm`.
    Build {
        /// Plugin crate directories.
        #[arg(default_value = ".")]
        dirs: Vec<PathBuf>,
    },
    /// Scaffold a plugin crate: Cargo.toml, a starting function with unit tests, a README.
    New {
        /// Directory to create; its last part is the crate's name.
        name: PathBuf,
        /// What the plugin is.
        #[arg(long, value_enum, default_value = "transform")]
        kind: plugin_tool::Kind,
        /// The weir-plugin SDK crate to depend on (default: this weir's `plugins/sdk`).
        #[arg(long, env = "WEIR_PLUGIN_SDK")]
        sdk: Option<PathBuf>,
    },
    /// Run a transform component over Debezium JSON events: the output changes go to
    /// standard output, one JSON line each; refused events go to standard error with
    /// their line and reason. Exits 1 when any event was refused.
    Test {
        /// The plugin's `.wasm` component.
        wasm: PathBuf,
        /// A file of Debezium JSON events, one per line.
        #[arg(long)]
        input: PathBuf,
        /// The plugin's config, as JSON (what `config:` holds in a pipeline).
        #[arg(long, default_value = "null")]
        config: String,
        /// Primary key columns of the events' table.
        #[arg(long, value_delimiter = ',', default_value = "id")]
        key: Vec<String>,
        /// Events per batch (per plugin call).
        #[arg(long, default_value_t = 8192)]
        batch: usize,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Debezium JSON decoding into Arrow, against arrow-json's reader on the same rows'
    /// after-images, on one thread.
    Decode {
        /// Events per variant.
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        /// Timed rounds per side; the median is reported.
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        /// Rows per batch.
        #[arg(long, default_value_t = 8192)]
        batch: usize,
        /// Which event shapes: `with-schema`, `without-schema` or `both`.
        #[arg(long, default_value = "both", value_parser = ["both", "with-schema", "without-schema"])]
        variant: String,
    },
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Exit codes of `weir reconcile`, for cutover scripts.
const RECONCILE_DIFFERENT: u8 = 1;
const RECONCILE_ERROR: u8 = 2;

/// The options of `weir reconcile`.
#[derive(clap::Args)]
struct ReconcileArgs {
    /// The pipeline file (its `reconcile` section).
    pipeline: PathBuf,
    /// More queries: an SQL file of statements separated by `;`, each optionally
    /// named by a `-- name: <name>` line.
    #[arg(long)]
    sql: Option<PathBuf>,
    /// Print the report as JSON on standard output.
    #[arg(long)]
    json: bool,
    /// Most rows of each kind listed (all are counted).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Also write the report as one HTML page (a summary chart, the rows, the queries).
    #[arg(long)]
    html: Option<PathBuf>,
    /// `full` or `checksum`, instead of the section's `mode`.
    #[arg(long, value_parser = ["full", "checksum"])]
    mode: Option<String>,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
    /// `sql`: print the SQL that brings the target to the source on standard output
    /// (the report goes to standard error). `apply`: run it against the target in one
    /// transaction, then reconcile again; the exit code is the second comparison's.
    #[arg(long, value_parser = ["sql", "apply"])]
    repair: Option<String>,
}

fn reconcile(args: &ReconcileArgs) -> ExitCode {
    let (pipeline, json, limit) = (&args.pipeline, args.json, args.limit);
    let (sql, html) = (args.sql.as_deref(), args.html.as_deref());
    let (mode, repair) = (args.mode.as_deref(), args.repair.as_deref());
    let fail = |message: String| {
        eprintln!("error: {message}");
        ExitCode::from(RECONCILE_ERROR)
    };
    let mut loaded = match config::load(pipeline) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(RECONCILE_ERROR);
        }
    };
    if let (Some(mode), Some(section)) = (mode, loaded.config.reconcile.as_mut()) {
        section.mode = match mode {
            "checksum" => config::reconcile::Mode::Checksum,
            _ => config::reconcile::Mode::Full,
        };
    }
    // Checksum mode reports its key ranges as they finish; many tables, the tables.
    let many = loaded.config.tables.is_some();
    let bar = (!args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(match many {
                true => "tables {bar:40} {pos}/{len} compared {elapsed}",
                false => "checksums {bar:40} {pos}/{len} key ranges {elapsed}",
            })
            .expect("a valid template"),
        );
        bar
    });
    let progress = bar.clone().map(|bar| {
        Arc::new(move |done: u64, all: u64| {
            bar.set_length(all);
            bar.set_position(done);
        }) as Arc<dyn Fn(u64, u64) + Send + Sync>
    });
    let queries = match sql.map(weir_reconcile::queries_from_file).transpose() {
        Ok(queries) => queries.unwrap_or_default(),
        Err(e) => return fail(e.to_string()),
    };
    let options = weir_reconcile::Options {
        limit,
        queries,
        repair: repair.is_some(),
        progress,
        now: None,
    };
    if many {
        let outcome = weir_reconcile::database::reconcile_tables(&loaded, &options);
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        return reconcile_tables(args, &loaded, outcome, options);
    }
    // With a repair script on standard output, the report goes to standard error.
    let show = |report: &weir_reconcile::report::Report, to_stderr: bool| {
        show_report(report, html, json, to_stderr)
    };
    let outcome = weir_reconcile::reconcile(&loaded, &options);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => return fail(e.to_string()),
    };
    let code = |equal: bool| match equal {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(RECONCILE_DIFFERENT),
    };
    match (repair, outcome.repair) {
        (Some("sql"), Some(script)) => {
            if let Err(e) = show(&outcome.report, true) {
                return fail(e);
            }
            print!("{}", script.sql);
            code(outcome.report.equal)
        }
        (Some("apply"), Some(script)) => {
            if let Err(e) = show(&outcome.report, false) {
                return fail(e);
            }
            if script.statements() == 0 {
                return code(outcome.report.equal);
            }
            if let Err(e) = weir_reconcile::apply_repair(&loaded, &script) {
                return fail(e.to_string());
            }
            println!(
                "\nrepaired: {} inserted, {} deleted, {} updated; reconciling again\n",
                script.inserts, script.deletes, script.updates
            );
            let options = weir_reconcile::Options {
                repair: false,
                ..options
            };
            match weir_reconcile::reconcile(&loaded, &options) {
                Ok(again) => match show(&again.report, false) {
                    Ok(()) => code(again.report.equal),
                    Err(e) => fail(e),
                },
                Err(e) => fail(e.to_string()),
            }
        }
        _ => match show(&outcome.report, false) {
            Ok(()) => code(outcome.report.equal),
            Err(e) => fail(e),
        },
    }
}

/// `weir reconcile` on a many-table pipeline: exit 1 if any table differs, else 2 if any
/// could not be compared, else 0.
fn reconcile_tables(
    args: &ReconcileArgs,
    loaded: &config::LoadedPipeline,
    outcome: Result<weir_reconcile::database::TablesOutcome, weir_reconcile::ReconcileError>,
    options: weir_reconcile::Options,
) -> ExitCode {
    use weir_reconcile::database::{TablesReport, apply_repairs, reconcile_tables};
    let fail = |message: String| {
        eprintln!("error: {message}");
        ExitCode::from(RECONCILE_ERROR)
    };
    let show = |report: &TablesReport, to_stderr: bool| {
        show_report(report, args.html.as_deref(), args.json, to_stderr)
    };
    let code = |report: &TablesReport| match (report.differing, report.errors) {
        (0, 0) => ExitCode::SUCCESS,
        (0, _) => ExitCode::from(RECONCILE_ERROR),
        _ => ExitCode::from(RECONCILE_DIFFERENT),
    };
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => return fail(e.to_string()),
    };
    match args.repair.as_deref() {
        Some("sql") => {
            if let Err(e) = show(&outcome.report, true) {
                return fail(e);
            }
            for repair in &outcome.repairs {
                if repair.script.statements() > 0 {
                    println!("-- table {}", repair.table);
                    print!("{}", repair.script.sql);
                }
            }
            code(&outcome.report)
        }
        Some("apply") => {
            if let Err(e) = show(&outcome.report, false) {
                return fail(e);
            }
            let applied = match apply_repairs(&outcome) {
                Ok(applied) => applied,
                Err(e) => return fail(e.to_string()),
            };
            if applied.tables == 0 {
                return code(&outcome.report);
            }
            println!(
                "\nrepaired {} tables: {} inserted, {} deleted, {} updated; reconciling again\n",
                applied.tables, applied.inserts, applied.deletes, applied.updates
            );
            let options = weir_reconcile::Options {
                repair: false,
                ..options
            };
            match reconcile_tables(loaded, &options) {
                Ok(again) => match show(&again.report, false) {
                    Ok(()) => code(&again.report),
                    Err(e) => fail(e),
                },
                Err(e) => fail(e.to_string()),
            }
        }
        _ => match show(&outcome.report, false) {
            Ok(()) => code(&outcome.report),
            Err(e) => fail(e),
        },
    }
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match cli.command {
        Command::Run {
            pipeline,
            stop_when_idle,
            json,
            quiet,
            resync,
            listen,
        } => run(pipeline, stop_when_idle, json, quiet, resync, listen),
        Command::Validate { pipelines } => validate(&pipelines),
        Command::Status { pipeline, json } => status::status(&pipeline, json),
        Command::Cutover(args) => cutover::cutover(&args),
        Command::Reconcile(args) => reconcile(&args),
        Command::Dlq {
            dlq: DlqCommand::Replay(args),
        } => dlq::replay(&args),
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&config::json_schema()).expect("schema serialises")
            );
            ExitCode::SUCCESS
        }
        Command::Plugin {
            plugin: PluginCommand::Build { dirs },
        } => match plugin_tool::build(&dirs) {
            Ok(built) => {
                for path in built {
                    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    println!("built {} ({} KiB)", path.display(), size / 1024);
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Plugin {
            plugin: PluginCommand::New { name, kind, sdk },
        } => {
            let sdk = sdk.unwrap_or_else(plugin_tool::default_sdk);
            match plugin_tool::new(&name, kind, &sdk) {
                Ok(files) => {
                    for file in files {
                        println!("created {}", file.display());
                    }
                    println!(
                        "next: cd {0} && cargo test && weir plugin build .",
                        name.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Plugin {
            plugin:
                PluginCommand::Test {
                    wasm,
                    input,
                    config,
                    key,
                    batch,
                },
        } => {
            let stdout = std::io::stdout();
            let stderr = std::io::stderr();
            match plugin_tool::test(
                &wasm,
                &input,
                &config,
                &key,
                batch.max(1),
                &mut stdout.lock(),
                &mut stderr.lock(),
            ) {
                Ok(report) => {
                    eprintln!(
                        "{} changes in, {} out, {} refused{}",
                        report.changes_in,
                        report.changes_out,
                        report.rejected,
                        if report.skipped_records > 0 {
                            format!(
                                " ({} records without a row skipped)",
                                report.skipped_records
                            )
                        } else {
                            String::new()
                        }
                    );
                    if report.rejected > 0 {
                        ExitCode::FAILURE
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Bench {
            bench:
                Bench::Decode {
                    events,
                    repeat,
                    batch,
                    variant,
                },
        } => {
            let variant = match variant.as_str() {
                "with-schema" => weir_runtime::bench::Variant::WithSchema,
                "without-schema" => weir_runtime::bench::Variant::WithoutSchema,
                _ => weir_runtime::bench::Variant::Both,
            };
            bench_decode(events, repeat, batch, variant);
            ExitCode::SUCCESS
        }
    }
}

fn validate(paths: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for path in paths {
        match config::load(path) {
            Ok(p) => println!("{}: ok (pipeline `{}`)", path.display(), p.config.name),
            Err(e) => {
                eprintln!("{e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Exit code of a run stopped because the source no longer holds the stored position
/// (docs/status.md).
const RESYNC_REQUIRED: u8 = 3;

fn run(
    path: PathBuf,
    stop_when_idle: Option<Duration>,
    json: bool,
    quiet: bool,
    resync: bool,
    listen: Option<std::net::SocketAddr>,
) -> ExitCode {
    let mut pipeline = match config::load(&path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal exits at once; the first asks for a clean stop.
        let _ = signal_hook::flag::register_conditional_shutdown(signal, 130, stop.clone());
        let _ = signal_hook::flag::register(signal, stop.clone());
    }
    let metrics = Arc::new(Metrics::default());
    let listen = listen.or(pipeline.config.server.as_ref().map(|s| s.listen));
    let _server = match listen {
        Some(address) => {
            match weir_runtime::server::Server::start(
                address,
                &pipeline.config.name,
                metrics.clone(),
            ) {
                Ok(server) => Some(server),
                Err(e) => {
                    eprintln!("error: pipeline `{}`: {e}", pipeline.config.name);
                    return ExitCode::FAILURE;
                }
            }
        }
        None => None,
    };
    let display =
        (!quiet && !json).then(|| progress::Display::start(&pipeline.config.name, metrics.clone()));
    if resync {
        pipeline.config.lifecycle.resync = config::ResyncMode::Auto;
    }
    let options = RunOptions {
        stop_when_idle,
        replay: None,
    };
    let mut result = pipeline::run(&pipeline, &options, metrics.clone(), stop.clone());
    // A Kafka source that found a gap stopped in `resync-required`: with `resync: auto`,
    // repair the target from the reconcile source and run again (src/resync.rs). Once:
    // a second gap right after a repair is a fault to look at, not to loop on.
    let kafka = matches!(
        pipeline.config.source,
        weir_runtime::source::SourceConfig::Kafka(_)
    );
    if kafka
        && result.is_err()
        && pipeline.config.lifecycle.resync == config::ResyncMode::Auto
        && metrics.lifecycle.current_phase() == Some(State::ResyncRequired)
        && !metrics.lifecycle.gaps().is_empty()
    {
        match resync::repair_after_gap(&pipeline, &metrics) {
            Ok(repaired) => {
                tracing::warn!(%repaired, "resync: the target was repaired from the reconcile source; running again");
                // The first run raised its stop flag to end its stages: a new one, which
                // the signals raise too.
                let stop = Arc::new(AtomicBool::new(false));
                for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                    let _ = signal_hook::flag::register(signal, stop.clone());
                }
                result = pipeline::run(&pipeline, &options, metrics.clone(), stop);
            }
            Err(e) => {
                eprintln!(
                    "error: pipeline `{}`: the resync's repair failed: {}",
                    pipeline.config.name,
                    weir_runtime::redact::redact(&e)
                );
                return ExitCode::from(RESYNC_REQUIRED);
            }
        }
    }
    if let Some(display) = display {
        display.finish();
    }
    let snapshot = metrics.snapshot();
    let tables = metrics.table_counts();
    let dead_letters = pipeline.dead_letter().describe(&pipeline);
    match result {
        Ok(summary) => {
            if json {
                println!(
                    "{}",
                    progress::summary_json(
                        &pipeline.config.name,
                        &summary,
                        &snapshot,
                        &tables,
                        &dead_letters
                    )
                );
            } else {
                print!(
                    "{}",
                    progress::summary_text(
                        &pipeline.config.name,
                        &summary,
                        &snapshot,
                        &tables,
                        &dead_letters
                    )
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "error: pipeline `{}` stopped: {e}\n  applied before stopping: {} rows, {} dead letters",
                pipeline.config.name, snapshot.rows_applied, snapshot.dead_letters
            );
            if metrics.lifecycle.current_phase() == Some(State::ResyncRequired) {
                ExitCode::from(RESYNC_REQUIRED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn bench_decode(events: usize, repeat: usize, batch: usize, variant: weir_runtime::bench::Variant) {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; run `cargo run --release -- bench decode` for real figures"
        );
    }
    println!(
        "decode benchmark: {events} events per variant, {batch}-row batches, one thread, median of {repeat}"
    );
    println!(
        "{:<16} {:>9} {:>11} {:>13} {:>16} {:>13} {:>7} {:>11}",
        "variant",
        "input MB",
        "weir MB/s",
        "weir events/s",
        "arrow-json MB/s",
        "arrow rows/s",
        "ratio",
        "table check"
    );
    for m in weir_runtime::bench::run_decode_bench(events, repeat, batch, variant) {
        println!(
            "{:<16} {:>9.1} {:>11.1} {:>13.0} {:>16.1} {:>13.0} {:>6.2}x {:>10.3}x",
            m.variant,
            m.input_bytes as f64 / 1e6,
            m.weir_mb_s(),
            m.weir_events_s(),
            m.baseline_mb_s(),
            m.baseline_rows_s(),
            m.ratio(),
            m.check_cost()
        );
    }
    println!(
        "ratio = weir MB/s over the full Debezium events / arrow-json MB/s over the same events' after-images"
    );
    println!(
        "table check = weir's time with each event's table checked (as pipelines decode) / without"
    );
}

/// A reconcile report, shown as text, JSON or an HTML page.
trait ShownReport {
    fn html(&self) -> String;
    fn text(&self) -> String;
    fn json(&self) -> String;
}

impl ShownReport for weir_reconcile::report::Report {
    fn html(&self) -> String {
        weir_reconcile::report::Report::html(self)
    }
    fn text(&self) -> String {
        weir_reconcile::report::Report::text(self)
    }
    fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serialises")
    }
}

impl ShownReport for weir_reconcile::database::TablesReport {
    fn html(&self) -> String {
        weir_reconcile::database::TablesReport::html(self)
    }
    fn text(&self) -> String {
        weir_reconcile::database::TablesReport::text(self)
    }
    fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serialises")
    }
}

/// Writes the HTML page if asked, and prints the report as JSON or text (on standard
/// error when a repair script takes standard output).
fn show_report(
    report: &impl ShownReport,
    html: Option<&std::path::Path>,
    json: bool,
    to_stderr: bool,
) -> Result<(), String> {
    if let Some(path) = html {
        std::fs::write(path, report.html())
            .map_err(|e| format!("cannot write the HTML report {}: {e}", path.display()))?;
    }
    let text = match json {
        true => report.json() + "\n",
        false => report.text(),
    };
    match to_stderr {
        true => eprint!("{text}"),
        false => print!("{text}"),
    }
    Ok(())
}

/// Turns transparent huge pages off for this process. Each batch's builders are fresh
/// allocations; with huge pages, the first touch of each freed-and-reused region makes the
/// kernel zero a whole 2 MiB page, which took a sixth of the reader's time with 100 tables
/// and cost even one table 15–20% of its rate (docs/decisions.md, "Transparent huge pages off").
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: a plain prctl on this process with constant arguments; failure (an old
    // kernel) leaves the default, which is only slower.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
