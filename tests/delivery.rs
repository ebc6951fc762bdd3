//! Delivery guarantees with the real binary: final states equal an independent oracle,
//! a run killed at any moment resumes with nothing lost and nothing applied twice, and
//! each sink keeps its roll and checkpoint rules.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::faults::Figures;
use common::{STREAM_COLUMNS, Stream, Workspace, change_stream, sqlite_rows, weir};
use weir_runtime::decode::decimal::{Rescale, from_text};

fn pipeline(ws: &Workspace, sink: &str, source_extra: &str, batch: usize) -> std::path::PathBuf {
    let yaml = format!(
        "name: delivery\n\
         source:\n  type: file\n  path: events.jsonl\n{source_extra}\
         table:\n  name: items\n  primary_key: [id]\n{STREAM_COLUMNS}\
         sink:\n{sink}\
         batch:\n  max_events: {batch}\n  max_wait: 50ms\n"
    );
    ws.write("pipeline.yaml", &yaml)
}

const SQLITE: &str = "  type: sqlite\n  path: target.db\n  create: true\n";

/// Compares the SQLite target with the oracle; prices compare as exact decimals.
fn assert_sqlite_matches(ws: &Workspace, stream: &Stream) {
    let rows = sqlite_rows(
        &ws.path("target.db"),
        "SELECT id, name, price, version FROM items ORDER BY id",
    );
    assert_eq!(rows.len(), stream.final_rows.len(), "row count");
    for (row, (id, (name, price, version))) in rows.iter().zip(&stream.final_rows) {
        assert_eq!(row[0], id.to_string());
        assert_eq!(&row[1], name, "id {id}");
        let cents = |t: &str| from_text(t.as_bytes(), 2, Rescale::Exact).unwrap();
        assert_eq!(
            cents(&row[2]),
            cents(price),
            "id {id}: {} vs {price}",
            row[2]
        );
        assert_eq!(row[3], version.to_string(), "id {id}");
    }
}

/// The SQLite target's rows against the oracle's, by id: name, price (an exact decimal)
/// and version.
fn sqlite_figures(ws: &Workspace, stream: &Stream) -> Figures {
    let cents = |t: &str| from_text(t.as_bytes(), 2, Rescale::Exact).unwrap();
    let actual: BTreeMap<_, _> = sqlite_rows(
        &ws.path("target.db"),
        "SELECT id, name, price, version FROM items",
    )
    .into_iter()
    .map(|row| {
        let id: i64 = row[0].parse().unwrap();
        (id, (row[1].clone(), cents(&row[2]), row[3].clone()))
    })
    .collect();
    let expected: BTreeMap<_, _> = stream
        .final_rows
        .iter()
        .map(|(id, (name, price, version))| {
            (*id, (name.clone(), cents(price), version.to_string()))
        })
        .collect();
    Figures::compare(stream.lines.len() as u64, &expected, &actual)
}

fn spawn(path: &std::path::Path, extra: &[&str]) -> Child {
    weir()
        .args(["run", "--json", "-q"])
        .args(extra)
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < limit,
            "weir did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn file_to_sqlite_matches_the_oracle() {
    let ws = Workspace::new();
    let stream = change_stream(20_000, 500, 1);
    ws.append_lines("events.jsonl", &stream.lines);
    let summary = ws.run_ok(&pipeline(&ws, SQLITE, "", 1000));
    assert_eq!(summary["events_read"], 20_000);
    assert_eq!(summary["rows_applied"], 20_000);
    assert_eq!(summary["dead_letters"], 0);
    assert_sqlite_matches(&ws, &stream);
    // The checkpoint is the end of the file.
    let checkpoint = &summary["checkpoint"]["file:events.jsonl"];
    assert_eq!(checkpoint["line"], 20_000);
    assert_eq!(
        checkpoint["next"],
        std::fs::metadata(ws.path("events.jsonl")).unwrap().len()
    );
}

/// Kills `weir run` with SIGKILL `kills` times, then lets it finish. Each kill lands a
/// pseudo-random 0-30 ms after the run has committed something new (`progress` reads the
/// target's checkpoint), so it always interrupts work in flight, however fast the machine.
fn kill_repeatedly(
    ws: &Workspace,
    pipeline: &std::path::Path,
    kills: usize,
    progress: impl Fn() -> u64,
) {
    let mut rng = weir_runtime::bench::Rng::new(0x9e3779b97f4a7c15);
    let mut interrupted = 0;
    while interrupted < kills {
        let pause = rng.below(30);
        let before = progress();
        let mut child = spawn(pipeline, &[]);
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() && progress() == before {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no progress within 60 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(pause));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run finished before it was killed; the stream is too short"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        interrupted += 1;
    }
    let summary = ws.run_ok(pipeline);
    assert_eq!(summary["dead_letters"], 0);
}

#[test]
fn sigkill_at_random_moments_loses_nothing_in_sqlite() {
    let ws = Workspace::new();
    let stream = change_stream(150_000, 1000, 2);
    ws.append_lines("events.jsonl", &stream.lines);
    let pipeline = pipeline(&ws, SQLITE, "", 100);
    let db = ws.path("target.db");
    kill_repeatedly(&ws, &pipeline, 5, || {
        rusqlite::Connection::open(&db)
            .and_then(|c| {
                c.query_row(
                    "SELECT coalesce(max(line), 0) FROM _weir_checkpoints",
                    [],
                    |r| r.get::<_, i64>(0),
                )
            })
            .map_or(0, |line| line as u64)
    });
    sqlite_figures(&ws, &stream).report_and_check(
        "delivery: file to SQLite",
        "SIGKILL, 5 times at random moments",
    );
    assert_sqlite_matches(&ws, &stream);
    let checkpoint = sqlite_rows(&ws.path("target.db"), "SELECT line FROM _weir_checkpoints");
    assert_eq!(checkpoint, [vec!["150000".to_string()]]);
}

#[test]
fn sigkill_at_random_moments_writes_each_change_exactly_once_to_a_jsonl_log() {
    let ws = Workspace::new();
    let stream = change_stream(150_000, 1000, 3);
    ws.append_lines("events.jsonl", &stream.lines);
    let sink = "  type: jsonl\n  path: changes.jsonl\n  mode: changelog\n";
    let pipeline = pipeline(&ws, sink, "", 100);
    let sidecar = ws.path("changes.jsonl.checkpoint.json");
    kill_repeatedly(&ws, &pipeline, 5, || {
        std::fs::read(&sidecar)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["checkpoint"]["file:events.jsonl"]["line"].as_u64())
            .unwrap_or(0)
    });
    let log = std::fs::read_to_string(ws.path("changes.jsonl")).unwrap();
    let written: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Each change is one (op, id, version): how many times the log holds each.
    let change = |v: &serde_json::Value| {
        let image = if v["op"] == "d" { "before" } else { "after" };
        (
            v["op"].to_string(),
            v[image]["id"].as_i64().unwrap(),
            v[image]["version"].as_i64().unwrap(),
        )
    };
    let mut counts: BTreeMap<_, i64> = stream
        .lines
        .iter()
        .map(|l| (change(&serde_json::from_str(l).unwrap()), 0))
        .collect();
    let mut unknown = 0;
    for out in &written {
        match counts.get_mut(&change(out)) {
            Some(count) => *count += 1,
            None => unknown += 1,
        }
    }
    Figures {
        events: stream.lines.len() as u64,
        lost: counts.values().filter(|c| **c == 0).count() as u64,
        stale: unknown,
        duplicated: Some(counts.values().map(|c| (c - 1).max(0) as u64).sum()),
    }
    .report_and_check(
        "delivery: file to a JSON Lines change log",
        "SIGKILL, 5 times at random moments",
    );
    assert_eq!(
        written.len(),
        stream.lines.len(),
        "every change once, none twice"
    );
    for (i, (out, input)) in written.iter().zip(&stream.lines).enumerate() {
        let input: serde_json::Value = serde_json::from_str(input).unwrap();
        assert_eq!(out["op"], input["op"], "change {i}");
        let image = if input["op"] == "d" {
            "before"
        } else {
            "after"
        };
        assert_eq!(out[image]["id"], input[image]["id"], "change {i}");
        assert_eq!(out[image]["version"], input[image]["version"], "change {i}");
        assert_eq!(out[image]["name"], input[image]["name"], "change {i}");
    }
}

#[test]
fn jsonl_final_mode_writes_the_final_rows() {
    let ws = Workspace::new();
    let stream = change_stream(5_000, 200, 4);
    ws.append_lines("events.jsonl", &stream.lines);
    let sink = "  type: jsonl\n  path: final.jsonl\n  mode: final\n";
    ws.run_ok(&pipeline(&ws, sink, "", 500));
    let text = std::fs::read_to_string(ws.path("final.jsonl")).unwrap();
    let mut rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    rows.sort_by_key(|r| r["id"].as_i64().unwrap());
    assert_eq!(rows.len(), stream.final_rows.len());
    for (row, (id, (name, _price, version))) in rows.iter().zip(&stream.final_rows) {
        assert_eq!(row["id"], *id);
        assert_eq!(row["name"], name.as_str());
        assert_eq!(row["version"], *version);
    }
    // Exact decimals: the JSON number has every digit of the scale.
    let (id, (_, price, _)) = stream.final_rows.iter().next().unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{{\"id\":{id},")))
        .unwrap();
    let expected = weir_runtime::decode::decimal::format(
        from_text(price.as_bytes(), 2, Rescale::Exact).unwrap(),
        2,
    );
    assert!(
        line.contains(&format!("\"price\":{expected},")),
        "{line} lacks {expected}"
    );
}

/// The Parquet files a sink wrote, in order: path, rows per row group, and the line the
/// footer's checkpoint records.
fn parquet_files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<i64>, i64)> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let reader = SerializedFileReader::new(std::fs::File::open(&file).unwrap()).unwrap();
            let meta = reader.metadata();
            let groups = meta.row_groups().iter().map(|g| g.num_rows()).collect();
            let checkpoint = meta
                .file_metadata()
                .key_value_metadata()
                .unwrap()
                .iter()
                .find(|kv| kv.key == "weir.checkpoint")
                .and_then(|kv| kv.value.clone())
                .unwrap();
            let checkpoint: serde_json::Value = serde_json::from_str(&checkpoint).unwrap();
            let line = checkpoint["file:events.jsonl"]["line"].as_i64().unwrap();
            (file, groups, line)
        })
        .collect()
}

#[test]
fn parquet_rolls_files_and_row_groups_and_resumes_without_duplicates() {
    let ws = Workspace::new();
    let stream = change_stream(3_500, 300, 5);
    ws.append_lines("events.jsonl", &stream.lines[..2_500]);
    let sink = "  type: parquet\n  path: log\n  row_group_rows: 300\n  file_rows: 1000\n";
    let pipeline = pipeline(&ws, sink, "", 250);
    ws.run_ok(&pipeline);
    ws.append_lines("events.jsonl", &stream.lines[2_500..]);
    ws.run_ok(&pipeline);

    let files = parquet_files(&ws.path("log"));
    let names: Vec<String> = files
        .iter()
        .map(|(f, _, _)| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // 1000 + 1000 + 500 (closed when the first run stopped), then 1000.
    assert_eq!(
        names,
        [
            "part-000000.parquet",
            "part-000001.parquet",
            "part-000002.parquet",
            "part-000003.parquet"
        ]
    );
    let mut total = 0;
    let mut ids = Vec::new();
    for (i, (file, groups, line)) in files.iter().enumerate() {
        let rows: i64 = groups.iter().sum();
        assert_eq!(rows, [1000, 1000, 500, 1000][i], "{file:?}");
        assert!(
            groups.iter().all(|g| *g <= 300),
            "row groups of at most 300 rows"
        );
        total += rows;
        assert_eq!(*line, total, "the footer records the lines it holds");
        let batch_reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(file).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        for batch in batch_reader {
            use arrow::array::AsArray;
            let batch = batch.unwrap();
            let ops = batch.column_by_name("op").unwrap().as_string::<i32>();
            let after = batch.column_by_name("after").unwrap().as_struct();
            let before = batch.column_by_name("before").unwrap().as_struct();
            for r in 0..batch.num_rows() {
                let image = if ops.value(r) == "d" { before } else { after };
                let id = image
                    .column_by_name("id")
                    .unwrap()
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .value(r);
                ids.push(id);
            }
        }
    }
    assert_eq!(total, 3_500, "every change once");
    let expected_ids: Vec<i64> = stream
        .lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let image = if v["op"] == "d" { "before" } else { "after" };
            v[image]["id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(ids, expected_ids, "the log keeps the order of the source");
}

#[test]
fn follow_mode_stops_when_idle_after_applying_everything() {
    let ws = Workspace::new();
    let stream = change_stream(4_000, 300, 6);
    ws.append_lines("events.jsonl", &stream.lines[..1_000]);
    let pipeline = pipeline(&ws, SQLITE, "  follow: true\n", 500);
    let mut child = spawn(&pipeline, &["--stop-when-idle", "1500ms"]);
    std::thread::sleep(Duration::from_millis(400));
    ws.append_lines("events.jsonl", &stream.lines[1_000..]);
    let status = wait_with_timeout(&mut child, Duration::from_secs(60));
    assert!(status.success());
    let mut stdout = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["events_read"], 4_000);
    assert_eq!(summary["interrupted"], false);
    assert_sqlite_matches(&ws, &stream);
}

#[test]
fn sigterm_stops_cleanly_and_the_next_run_finishes() {
    let ws = Workspace::new();
    let stream = change_stream(50_000, 1000, 7);
    ws.append_lines("events.jsonl", &stream.lines);
    let pipeline = pipeline(&ws, SQLITE, "", 100);
    let mut child = spawn(&pipeline, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let still_running = child.try_wait().unwrap().is_none();
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = wait_with_timeout(&mut child, Duration::from_secs(60));
    let mut stdout = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(status.success(), "a requested stop exits 0");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    if still_running {
        assert_eq!(summary["interrupted"], true);
        let read = summary["events_read"].as_u64().unwrap();
        assert!(read < 50_000, "stopped early ({read} events)");
        // What was read was applied before exiting.
        assert_eq!(summary["rows_applied"], read);
    }
    let summary = ws.run_ok(&pipeline);
    assert_eq!(summary["interrupted"], false);
    assert_sqlite_matches(&ws, &stream);
}

#[test]
fn a_restart_applies_only_what_is_new() {
    let ws = Workspace::new();
    let stream = change_stream(3_000, 100, 8);
    ws.append_lines("events.jsonl", &stream.lines[..2_000]);
    let pipeline = pipeline(&ws, SQLITE, "", 700);
    let first = ws.run_ok(&pipeline);
    assert_eq!(first["events_read"], 2_000);
    ws.append_lines("events.jsonl", &stream.lines[2_000..]);
    let second = ws.run_ok(&pipeline);
    assert_eq!(second["events_read"], 1_000, "resumes after line 2000");
    assert_eq!(second["resumed_from"]["file:events.jsonl"]["line"], 2_000);
    assert_sqlite_matches(&ws, &stream);
    let third = ws.run_ok(&pipeline);
    assert_eq!(third["events_read"], 0);
}

/// A column added mid-stream closes the open file: batches before it and batches with it
/// go to files of their own schema, each footer recording the last line it holds.
#[test]
fn parquet_closes_a_file_when_the_schema_changes() {
    let ws = Workspace::new();
    let lines: Vec<String> = (1..=6)
        .map(|id| {
            let note = if id > 3 {
                format!(r#","note":"n{id}""#)
            } else {
                String::new()
            };
            format!(r#"{{"op":"c","after":{{"id":{id},"name":"a{id}"{note}}}}}"#)
        })
        .collect();
    ws.append_lines("events.jsonl", &lines);
    let yaml = "name: evolve\n\
         source:\n  type: file\n  path: events.jsonl\n\
         table:\n  name: items\n  primary_key: [id]\n\
         sink:\n  type: parquet\n  path: log\n\
         batch:\n  max_events: 2\n";
    ws.run_ok(&ws.write("pipeline.yaml", yaml));
    let files = parquet_files(&ws.path("log"));
    let layout: Vec<(i64, i64)> = files
        .iter()
        .map(|(_, groups, line)| (groups.iter().sum(), *line))
        .collect();
    // Batches of two: the batch of lines 3 and 4 is the first with `note` (line 3's is
    // null), so it starts the second file.
    assert_eq!(layout, [(2, 2), (4, 6)]);
    let after_columns: Vec<Vec<String>> = files
        .iter()
        .map(|(file, _, _)| {
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(file).unwrap(),
            )
            .unwrap();
            let after = reader.schema().field_with_name("after").unwrap().clone();
            let arrow::datatypes::DataType::Struct(fields) = after.data_type() else {
                panic!("after is {after:?}");
            };
            fields.iter().map(|f| f.name().clone()).collect()
        })
        .collect();
    assert_eq!(
        after_columns,
        [vec!["id", "name"], vec!["id", "name", "note"]]
    );
}

#[test]
fn parquet_splits_a_batch_to_keep_files_exact() {
    let ws = Workspace::new();
    let stream = change_stream(1_000, 100, 9);
    ws.append_lines("events.jsonl", &stream.lines);
    let sink = "  type: parquet\n  path: log\n  file_rows: 300\n";
    let summary = ws.run_ok(&pipeline(&ws, sink, "", 1_000));
    assert_eq!(summary["appended"], 1_000);
    let layout: Vec<(i64, i64)> = parquet_files(&ws.path("log"))
        .into_iter()
        .map(|(_, groups, line)| (groups.iter().sum(), line))
        .collect();
    // One batch of 1000 rows became files of 300, 300, 300 and 100 rows, each footer
    // recording the line of its own last row.
    assert_eq!(layout, [(300, 300), (300, 600), (300, 900), (100, 1_000)]);
}
