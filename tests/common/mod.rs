//! Helpers shared by the integration tests: finding the shared fixtures, writing pipeline
//! files, running the real `weir` binary, and reading SQLite targets back.

#![allow(dead_code)]

pub mod browser;
pub mod cdc;
pub mod faults;
pub mod group;
pub mod inventory;
pub mod services;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The shared third-party Debezium fixtures. They live beside the repository (they are
/// used from there, never copied in): `WEIR_FIXTURES` if set, else `shared/fixtures/debezium`
/// next to an ancestor of this checkout, else next to the repository it was cloned from.
pub fn fixtures() -> PathBuf {
    if let Ok(dir) = std::env::var("WEIR_FIXTURES") {
        return PathBuf::from(dir);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut candidates: Vec<PathBuf> = root.ancestors().map(Path::to_path_buf).collect();
    if let Ok(out) = Command::new("git")
        .args(["config", "--get", "remote.origin.url"])
        .current_dir(root)
        .output()
    {
        let origin = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let origin = origin.strip_prefix("file://").unwrap_or(&origin);
        if Path::new(origin).is_absolute() {
            candidates.extend(Path::new(origin).ancestors().map(Path::to_path_buf));
        }
    }
    for base in candidates {
        let dir = base.join("shared/fixtures/debezium");
        if dir.join("README.md").is_file() {
            return dir;
        }
    }
    panic!(
        "the shared Debezium fixtures were not found beside this checkout \
         (shared/fixtures/debezium in an ancestor directory); set WEIR_FIXTURES to their path"
    );
}

pub fn fixture(relative: &str) -> PathBuf {
    fixtures().join(relative)
}

/// The lines of a fixture that parse as JSON, the way the origin harnesses send them
/// (Paimon's files start with a license comment).
pub fn json_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
        .map(str::to_string)
        .collect()
}

/// A pretty-printed JSON fixture (possibly after a `/* … */` header), compacted to one line.
/// A fixture's change events as Kafka records keyed by their row's `id`, as Debezium
/// keys them (a delete by its `before` image).
pub fn keyed_by_id(path: &Path) -> Vec<(Option<String>, Option<String>)> {
    json_lines(path)
        .into_iter()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let image = if v["op"] == "d" { "before" } else { "after" };
            (Some(format!("{{\"id\":{}}}", v[image]["id"])), Some(line))
        })
        .collect()
}

pub fn compact_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let body = match text.find("*/") {
        Some(end) if text.trim_start().starts_with("/*") => &text[end + 2..],
        _ => &text,
    };
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A scratch directory for one test's pipeline, events and target.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub output: Output,
    pub summary: serde_json::Value,
}

impl Run {
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
}

impl Workspace {
    pub fn new() -> Self {
        Workspace {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    pub fn append_lines(&self, name: &str, lines: &[String]) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(name))
            .expect("open");
        for line in lines {
            writeln!(file, "{line}").expect("append");
        }
    }

    /// A file-to-SQLite pipeline over `events.jsonl` into `target.db`, with extra `table`
    /// settings (YAML lines indented under `table:`).
    pub fn sqlite_pipeline(&self, table: &str, primary_key: &str, table_extra: &str) -> PathBuf {
        let yaml = format!(
            "name: conformance\n\
             source:\n  type: file\n  path: events.jsonl\n  format: debezium-json\n\
             table:\n  name: {table}\n  primary_key: [{primary_key}]\n{table_extra}\
             sink:\n  type: sqlite\n  path: target.db\n  table: {table}\n  create: true\n\
             dead_letter:\n  type: file\n  path: dead-letters.jsonl\n"
        );
        self.write("pipeline.yaml", &yaml)
    }

    pub fn run(&self, pipeline: &Path, extra: &[&str]) -> Run {
        let output = weir()
            .args(["run", "--json"])
            .args(extra)
            .arg(pipeline)
            .output()
            .expect("run weir");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let summary = serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null);
        Run { output, summary }
    }

    /// Runs and insists on success.
    pub fn run_ok(&self, pipeline: &Path) -> serde_json::Value {
        let run = self.run(pipeline, &[]);
        assert!(
            run.output.status.success(),
            "weir run failed: {}\n{}",
            run.stderr(),
            String::from_utf8_lossy(&run.output.stdout)
        );
        run.summary
    }

    pub fn dead_letters(&self) -> Vec<serde_json::Value> {
        match std::fs::read_to_string(self.path("dead-letters.jsonl")) {
            Ok(text) => text
                .lines()
                .map(|l| serde_json::from_str(l).expect("dead letter is JSON"))
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// The column types of Flink CDC's `full_types` fixtures (MySQL), declared in pipelines:
/// their schemaless variants carry none.
pub const FULL_TYPES_COLUMNS: &str = "  columns:\n    id: decimal(20,0)\n    big_un_c: decimal(20,0)\n    \
    big_un_z_c: decimal(20,0)\n    decimal_c: decimal(8,4)\n    decimal_un_c: decimal(8,4)\n    \
    decimal_un_z_c: decimal(8,4)\n    numeric_c: decimal(6,0)\n    big_decimal_c: decimal(65,1)\n    \
    timestamp_c: timestamptz\n";

/// Reads back the `full_types` columns Flink CDC's tests assert, from a SQLite target.
pub const FULL_TYPES_SQLITE_QUERY: &str = "SELECT CAST(id AS TEXT), CAST(big_un_c AS TEXT), \
    decimal_c, numeric_c, CAST(big_decimal_c AS TEXT), timestamp_c, varchar_c FROM full_types";

/// What [`FULL_TYPES_SQLITE_QUERY`] returns once the snapshot row and its binlog update
/// are applied: the values Flink CDC asserts, every decimal digit intact (wide decimals
/// are stored as exact text) and the updated timestamp.
pub fn full_types_sqlite_rows() -> Vec<Vec<String>> {
    vec![vec![
        "1".to_string(),
        "18446744073709551615".into(),
        "123.4567".into(),
        "346".into(),
        "34567892.1".into(),
        "2020-07-17T18:33:22Z".into(),
        "Hello World".into(),
    ]]
}

pub fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

/// Every row of a query, each value rendered as text: NULL, integers, reals in their
/// shortest form, text as is.
pub fn sqlite_rows(db: &Path, sql: &str) -> Vec<Vec<String>> {
    let conn = rusqlite::Connection::open(db).expect("open target");
    let mut stmt = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let columns = stmt.column_count();
    stmt.query_map([], |row| {
        (0..columns)
            .map(|i| {
                Ok(match row.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => "NULL".to_string(),
                    rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                    rusqlite::types::ValueRef::Real(v) => v.to_string(),
                    rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                    rusqlite::types::ValueRef::Blob(b) => format!("<{} bytes>", b.len()),
                })
            })
            .collect()
    })
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("rows")
}

/// Debezium records for Kafka, keyed as Debezium keys them: `{"id":…}` from the row
/// after, or before a delete.
pub fn keyed_by_row_id(lines: &[String]) -> Vec<(Option<String>, Option<String>)> {
    lines
        .iter()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let image = if v["op"] == "d" { "before" } else { "after" };
            (
                Some(format!("{{\"id\":{}}}", v[image]["id"])),
                Some(line.clone()),
            )
        })
        .collect()
}

/// A synthetic change stream over `keys` keys: inserts, updates (with a version that
/// grows per key) and deletes, as bare Debezium payloads; plus the final table an
/// independent oracle computes (last change per key wins, deletes remove).
pub struct Stream {
    pub lines: Vec<String>,
    /// id -> (name, price text, version)
    pub final_rows: std::collections::BTreeMap<i64, (String, String, i64)>,
}

pub fn change_stream(events: usize, keys: i64, seed: u64) -> Stream {
    let mut rng = weir_runtime::bench::Rng::new(seed);
    let mut next = || rng.next_u64();
    let mut rows: std::collections::BTreeMap<i64, (String, String, i64)> = Default::default();
    let mut versions: std::collections::HashMap<i64, i64> = Default::default();
    let mut lines = Vec::with_capacity(events);
    for i in 0..events {
        let id = (next() % keys as u64) as i64;
        let version = {
            let v = versions.entry(id).or_insert(0);
            *v += 1;
            *v
        };
        // Built by hand so the price stays an exact JSON number.
        let row = |name: &str, price: &str, version: i64| {
            format!(
                r#"{{"id":{id},"name":{},"price":{price},"version":{version}}}"#,
                serde_json::to_string(name).unwrap()
            )
        };
        let exists = rows.contains_key(&id);
        let roll = next() % 10;
        let line = if exists && roll == 0 {
            let (name, price, v) = rows.remove(&id).unwrap();
            format!(
                r#"{{"op":"d","before":{},"after":null,"ts_ms":{i}}}"#,
                row(&name, &price, v)
            )
        } else {
            let name = format!("item-{id}-{version} \"quoted\" ünïcode");
            let price = format!("{}.{:02}", next() % 100_000, next() % 100);
            let before = rows.get(&id).map(|(n, p, v)| row(n, p, *v));
            let op = if before.is_some() { "u" } else { "c" };
            let after = row(&name, &price, version);
            rows.insert(id, (name, price, version));
            format!(
                r#"{{"op":"{op}","before":{},"after":{after},"ts_ms":{i}}}"#,
                before.unwrap_or_else(|| "null".into())
            )
        };
        lines.push(line);
    }
    Stream {
        lines,
        final_rows: rows,
    }
}

/// The declared columns for [`change_stream`] events.
pub const STREAM_COLUMNS: &str =
    "  columns:\n    id: int64\n    name: string\n    price: decimal(12,2)\n    version: int64\n";

/// The component of a plugin crate in `plugins/` (e.g. `examples/mask-fields`), built
/// with `weir plugin build` the first time a test asks for it. Plugins build in their own
/// target directory, so the build does not wait on the test run's own cargo lock.
pub fn plugin_wasm(crate_dir: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("plugins")
        .join(crate_dir);
    let name = crate_dir
        .rsplit('/')
        .next()
        .expect("a crate name")
        .replace('-', "_");
    let wasm = dir.join(format!("{name}.wasm"));
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == crate_dir) {
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => PathBuf::from(dir).join("wasm-plugins"),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/target"),
        };
        let output = weir()
            .args(["plugin", "build"])
            .arg(&dir)
            .env("CARGO_TARGET_DIR", target)
            .output()
            .expect("run weir plugin build");
        assert!(
            output.status.success(),
            "weir plugin build {crate_dir} failed (is the wasm32-wasip2 target installed? \
             scripts/test installs it):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        built.push(crate_dir.to_string());
    }
    assert!(wasm.is_file(), "{} was not built", wasm.display());
    wasm
}

/// A change batch inserting rows `id` (int64) and `name` (`item <id>`), keyed by `id`, for
/// the tests that call plugins in process.
pub fn change_batch(ids: &[i64]) -> weir_runtime::envelope::ChangeBatch {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, StructArray};
    use arrow::datatypes::{DataType, Field, Fields};
    use weir_runtime::envelope::{self, ChangeBatch, TableInfo};
    use weir_runtime::position::{Checkpoint, Position};

    let fields = Fields::from(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
    ]);
    let schema = envelope::schema(fields.clone());
    let rows = ids.len();
    let image = || -> ArrayRef {
        Arc::new(StructArray::new(
            fields.clone(),
            vec![
                Arc::new(Int64Array::from(ids.to_vec())) as ArrayRef,
                Arc::new(StringArray::from_iter_values(
                    ids.iter().map(|i| format!("item {i}")),
                )),
            ],
            None,
        ))
    };
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| match f.name().as_str() {
            "op" => Arc::new(StringArray::from(vec!["c"; rows])) as ArrayRef,
            "before" | "after" => image(),
            "headers" => envelope::empty_headers(rows),
            _ => arrow::array::new_null_array(f.data_type(), rows),
        })
        .collect();
    ChangeBatch {
        data: RecordBatch::try_new(schema, columns).unwrap(),
        positions: (0..rows as u64)
            .map(|i| Position::File {
                stream: "events.jsonl".into(),
                line: i + 1,
                offset: i * 10,
                next: i * 10 + 10,
            })
            .collect::<Vec<_>>()
            .into(),
        checkpoint: Checkpoint::default(),
        table: Arc::new(TableInfo {
            name: "t".into(),
            primary_key: vec!["id".into()],
            target: None,
        }),
    }
}
