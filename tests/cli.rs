//! The command line: `weir validate`, `weir schema`, and the errors a user sees.

mod common;

use common::{Workspace, weir};

const VALID: &str = "\
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

fn validate(ws: &Workspace, text: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let path = ws.write("pipeline.yaml", text);
    let mut command = weir();
    command.arg("validate").arg(&path);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_issue_example_validates() {
    let ws = Workspace::new();
    let (ok, stdout, stderr) = validate(&ws, VALID, &[]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("ok (pipeline `orders`)"), "{stdout}");
}

#[test]
fn every_problem_is_reported_with_file_line_column_and_a_hint() {
    let ws = Workspace::new();
    let text = VALID
        .replace(
            "  format: debezium-json\n",
            "  format: debezium-jsn\n  folow: true\n",
        )
        .replace("  primary_key: [id]\n", "  primary_key: id\n")
        .replace("  create: true\n", "  create: yes\n")
        .replace(
            "dead_letter:\n  type: file\n  path: dead-letters.jsonl\n",
            "dead_letter:\n  type: file\n",
        );
    let (ok, _, stderr) = validate(&ws, &text, &[]);
    assert!(!ok);
    let file = ws.path("pipeline.yaml").display().to_string();
    for expected in [
        // a bad value, with did-you-mean
        format!(
            "error: source.format: the string \"debezium-jsn\" is not allowed here\n  --> {file}:5:11"
        ),
        "= hint: did you mean `debezium-json`?".to_string(),
        // an unknown key, with did-you-mean
        format!("error: source.folow: unknown key `folow` in `source`\n  --> {file}:6:3"),
        "= hint: did you mean `follow`?".to_string(),
        // a wrong type
        format!(
            "error: table.primary_key: expected a list, found the string \"id\"\n  --> {file}:9:16"
        ),
        // YAML 1.2 reads `yes` as a string
        "error: sink.create: expected a boolean, found the string \"yes\"".to_string(),
        "write `true` or `false`".to_string(),
        // a missing key, with what it is for
        "error: dead_letter.path: missing required key `path` in `dead_letter`".to_string(),
        "5 errors in".to_string(),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    // The offending line is shown under each error.
    assert!(stderr.contains("6 |   folow: true"), "{stderr}");
}

#[test]
fn environment_variables_interpolate_and_missing_ones_are_named() {
    let ws = Workspace::new();
    let text = VALID.replace(
        "path: target.db",
        "path: ${TARGET_DIR:-data}/${TARGET_FILE}",
    );
    let (ok, _, stderr) = validate(&ws, &text, &[("TARGET_FILE", "t.db")]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = validate(&ws, &text, &[]);
    assert!(!ok);
    assert!(
        stderr.contains("environment variable `TARGET_FILE` is not set"),
        "{stderr}"
    );
    assert!(stderr.contains("export TARGET_FILE=..."), "{stderr}");
}

#[test]
fn secrets_never_appear_in_errors() {
    let ws = Workspace::new();
    // A secret from the environment in a place that rejects it.
    let text = VALID.replace("create: true", "create: ${PG_PASSWORD}");
    let (ok, stdout, stderr) = validate(&ws, &text, &[("PG_PASSWORD", "hunter2-secret")]);
    assert!(!ok);
    assert!(
        !stderr.contains("hunter2") && !stdout.contains("hunter2"),
        "{stderr}"
    );
    assert!(
        stderr.contains("a string (from the environment)"),
        "{stderr}"
    );
    // Credentials written into the file itself are masked wherever the file is quoted.
    let text = VALID.replace(
        "format: debezium-json",
        "format: postgres://weir:s3cr3t@db:5432/app",
    );
    let (ok, _, stderr) = validate(&ws, &text, &[]);
    assert!(!ok);
    assert!(!stderr.contains("s3cr3t"), "{stderr}");
    assert!(
        stderr.contains("postgres://weir:***@db:5432/app"),
        "{stderr}"
    );
}

#[test]
fn several_files_validate_at_once() {
    let ws = Workspace::new();
    let good = ws.write("good.yaml", VALID);
    let bad = ws.write("bad.yaml", &VALID.replace("type: sqlite", "type: sqlit"));
    let out = weir()
        .arg("validate")
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("good.yaml: ok"), "{stdout}");
    assert!(stderr.contains("bad.yaml:10:9"), "{stderr}");
    assert!(stderr.contains("did you mean `sqlite`?"), "{stderr}");
}

#[test]
fn schema_is_a_json_schema_of_the_format() {
    let out = weir().arg("schema").output().unwrap();
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(schema["additionalProperties"], false);
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    // `table` (one table) or `tables` (many): `weir validate` insists on exactly one.
    assert_eq!(required, ["name", "source", "sink"]);
    assert!(schema["properties"]["tables"].is_object());
    let text = schema.to_string();
    for sink in ["\"sqlite\"", "\"parquet\"", "\"jsonl\""] {
        assert!(text.contains(sink), "{sink}");
    }
}

#[test]
fn help_exists_for_every_command() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["validate", "--help"],
        &["status", "--help"],
        &["schema", "--help"],
        &["bench", "decode", "--help"],
    ] {
        let out = weir().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage:"),
            "{args:?}"
        );
    }
}

#[test]
fn a_missing_source_file_is_a_clear_error() {
    let ws = Workspace::new();
    let path = ws.write("pipeline.yaml", VALID);
    let run = ws.run(&path, &[]);
    assert!(!run.output.status.success());
    let stderr = run.stderr();
    assert!(stderr.contains("cannot open"), "{stderr}");
    assert!(stderr.contains("events.jsonl"), "{stderr}");
    assert!(stderr.contains("relative to the pipeline file"), "{stderr}");
}

#[test]
fn status_is_read_back_from_the_target_after_the_run() {
    let ws = Workspace::new();
    let path = ws.write("pipeline.yaml", VALID);
    let status = |json: bool| {
        let mut command = weir();
        command.arg("status").arg(&path);
        if json {
            command.arg("--json");
        }
        command.output().unwrap()
    };
    let before = status(false);
    assert_eq!(before.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&before.stderr).contains("has not run yet"),
        "{before:?}"
    );
    ws.write(
        "events.jsonl",
        "{\"op\":\"c\",\"after\":{\"id\":1,\"name\":\"a\"}}\n\
         {\"op\":\"c\",\"after\":{\"id\":2,\"name\":\"b\"}}\n",
    );
    ws.run_ok(&path);
    let after = status(true);
    assert!(after.status.success(), "{after:?}");
    let json: serde_json::Value = serde_json::from_slice(&after.stdout).unwrap();
    assert_eq!(json["state"], "streaming", "{json}");
    assert_eq!(json["process"], "stopped", "{json}");
    assert_eq!(json["rows_applied"], 2, "{json}");
    assert_eq!(json["events_read"], 2, "{json}");
    assert!(!json["positions"].as_object().unwrap().is_empty(), "{json}");
    // A recorded log's event times are not a lag.
    assert!(json["lag"]["seconds"].is_null(), "{json}");
    let text = String::from_utf8_lossy(&status(false).stdout).into_owned();
    assert!(text.starts_with("pipeline orders: streaming"), "{text}");
    assert!(text.contains("process: stopped"), "{text}");
}

#[test]
fn a_target_table_without_a_key_is_refused() {
    let ws = Workspace::new();
    let conn = rusqlite::Connection::open(ws.path("target.db")).unwrap();
    conn.execute_batch("CREATE TABLE orders (id INTEGER, name TEXT)")
        .unwrap();
    drop(conn);
    ws.write(
        "events.jsonl",
        "{\"op\":\"c\",\"after\":{\"id\":1,\"name\":\"a\"}}\n",
    );
    let run = ws.run(&ws.write("pipeline.yaml", VALID), &[]);
    assert!(!run.output.status.success());
    let stderr = run.stderr();
    assert!(
        stderr.contains("no primary key or unique index on (id)"),
        "{stderr}"
    );
}

/// Every example pipeline, and every complete pipeline shown in the docs, is valid.
#[test]
fn example_pipelines_and_documented_examples_validate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    // Examples take brokers, URLs and passwords from the environment.
    let placeholder = |name: &str| {
        Some(match name {
            "KAFKA_BROKERS" => "localhost:9092".to_string(),
            "PG_URL" => "postgres://weir@localhost:5432/app".to_string(),
            _ => "example".to_string(),
        })
    };
    let examples = std::fs::read_dir(root.join("pipelines"))
        .unwrap()
        .chain(std::fs::read_dir(root.join("examples/migration")).unwrap());
    for entry in examples {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            weir_runtime::config::load_str(&text, &path, &placeholder)
                .unwrap_or_else(|e| panic!("{e}"));
            checked += 1;
        }
    }
    assert!(checked >= 4);
    for doc in ["README.md", "docs/pipeline.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        let mut blocks = 0;
        for block in text.split("```yaml\n").skip(1) {
            let yaml = block.split("```").next().unwrap();
            if !yaml.starts_with("name:") {
                continue; // a fragment, not a whole pipeline
            }
            let file = root.join(doc).with_file_name("example.yaml");
            weir_runtime::config::load_str(yaml, &file, &placeholder)
                .unwrap_or_else(|e| panic!("an example in {doc} is invalid:\n{e}"));
            blocks += 1;
        }
        assert!(blocks >= 1, "{doc} has no complete example");
    }
}
