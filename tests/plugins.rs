//! WebAssembly plugins in real pipelines: the example plugins and the `probe` test plugin,
//! built from `plugins/` with `weir plugin build`, run by the real `weir` binary over a
//! file source into SQLite.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::faults::Figures;
use common::{STREAM_COLUMNS, Workspace, change_stream, plugin_wasm, sqlite_rows};
use sha2::{Digest, Sha256};

/// A file → SQLite pipeline over `events.jsonl` of [`change_stream`] rows, with
/// `transforms` (YAML lines under `transforms:`) and batches of `batch` events.
fn pipeline(ws: &Workspace, transforms: &str, batch: usize) -> std::path::PathBuf {
    let yaml = format!(
        "name: plugins\n\
         source:\n  type: file\n  path: events.jsonl\n  format: debezium-json\n\
         table:\n  name: items\n  primary_key: [id]\n{STREAM_COLUMNS}\
         batch:\n  max_events: {batch}\n\
         transforms:\n{transforms}\
         sink:\n  type: sqlite\n  path: target.db\n  table: items\n  create: true\n\
         dead_letter:\n  type: file\n  path: dead-letters.jsonl\n"
    );
    ws.write("pipeline.yaml", &yaml)
}

/// The target's rows: id → (name, version), the columns the plugins under test touch.
fn items(ws: &Workspace) -> BTreeMap<i64, (String, i64)> {
    sqlite_rows(&ws.path("target.db"), "SELECT id, name, version FROM items")
        .into_iter()
        .map(|r| (r[0].parse().unwrap(), (r[1].clone(), r[2].parse().unwrap())))
        .collect()
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn plugin(name: &str, crate_dir: &str, config: &str, limits: &str) -> String {
    let wasm = plugin_wasm(crate_dir);
    format!(
        "  - name: {name}\n    wasm: {}\n    config: {config}\n    limits: {limits}\n",
        wasm.display()
    )
}

#[test]
fn mask_fields_hashes_the_column_and_leaves_the_rest() {
    let ws = Workspace::new();
    let stream = change_stream(3000, 300, 41);
    ws.append_lines("events.jsonl", &stream.lines);
    let mask = plugin(
        "mask-name",
        "examples/mask-fields",
        "{ fields: [name], method: sha256 }",
        "{}",
    );
    let summary = ws.run_ok(&pipeline(&ws, &mask, 500));
    assert_eq!(summary["dead_letters"], 0, "{summary}");
    let expected: BTreeMap<_, _> = stream
        .final_rows
        .iter()
        .map(|(id, (name, _, version))| (*id, (sha256_hex(name), *version)))
        .collect();
    assert_eq!(items(&ws), expected);
}

#[test]
fn filter_keeps_only_the_matching_rows() {
    let ws = Workspace::new();
    let stream = change_stream(3000, 300, 42);
    ws.append_lines("events.jsonl", &stream.lines);
    // Keep the changes whose row has an even version: the target then holds, per key, the
    // last even-versioned row, unless a later (kept) delete removed it.
    let filter = plugin(
        "even",
        "examples/filter",
        "{ column: version, op: in, values: [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30] }",
        "{}",
    );
    ws.run_ok(&pipeline(&ws, &filter, 700));
    // An oracle over the same events.
    let mut expected = BTreeMap::new();
    for line in &stream.lines {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        let row = if event["after"].is_null() {
            &event["before"]
        } else {
            &event["after"]
        };
        let version = row["version"].as_i64().unwrap();
        assert!(version <= 30, "the filter list covers every version");
        if version % 2 != 0 {
            continue;
        }
        let id = row["id"].as_i64().unwrap();
        if event["op"] == "d" {
            expected.remove(&id);
        } else {
            expected.insert(id, (row["name"].as_str().unwrap().to_string(), version));
        }
    }
    assert!(!expected.is_empty());
    assert_eq!(items(&ws), expected);
}

#[test]
fn rename_gives_the_target_the_new_column_names() {
    let ws = Workspace::new();
    let stream = change_stream(2000, 200, 43);
    ws.append_lines("events.jsonl", &stream.lines);
    let rename = plugin(
        "to-new-schema",
        "examples/rename",
        "{ columns: { name: title, price: unit_price } }",
        "{}",
    );
    let summary = ws.run_ok(&pipeline(&ws, &rename, 300));
    assert_eq!(summary["dead_letters"], 0, "{summary}");
    let rows: BTreeMap<i64, (String, String, i64)> = sqlite_rows(
        &ws.path("target.db"),
        "SELECT id, title, printf('%.2f', unit_price), version FROM items",
    )
    .into_iter()
    .map(|r| {
        (
            r[0].parse().unwrap(),
            (r[1].clone(), r[2].clone(), r[3].parse().unwrap()),
        )
    })
    .collect();
    assert_eq!(rows, stream.final_rows);
    let columns = sqlite_rows(
        &ws.path("target.db"),
        "SELECT name FROM pragma_table_info('items') ORDER BY cid",
    );
    assert_eq!(columns, [["id"], ["title"], ["unit_price"], ["version"]]);
}

/// Runs a probe plugin that misbehaves on the batch holding `id`, and checks that exactly
/// that batch's rows are dead letters with `reason`, and every other row is applied.
fn misbehaving_batch_is_dead_lettered(mode: &str, limits: &str, reason: &str, injected: &str) {
    let ws = Workspace::new();
    // 40 inserts of distinct keys, in batches of 10: the probe fails on ids 10..19.
    let lines: Vec<String> = (0..40)
        .map(|id| format!(r#"{{"op":"c","before":null,"after":{{"id":{id},"name":"n{id}","price":1.00,"version":1}},"ts_ms":{id}}}"#))
        .collect();
    ws.append_lines("events.jsonl", &lines);
    let probe = plugin(
        "probe",
        "testing/probe",
        &format!("{{ mode: {mode}, id: 15 }}"),
        limits,
    );
    let summary = ws.run_ok(&pipeline(&ws, &probe, 10));
    let letters = ws.dead_letters();
    // For scripts/faults: a row neither applied nor a dead letter is lost; one on the
    // wrong side (a row of another batch refused, one of the failed batch applied) stale.
    let refused: Vec<i64> = letters
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l["raw"].as_str()?).ok())
        .filter_map(|raw| raw["after"]["id"].as_i64())
        .collect();
    let kept: Vec<i64> = items(&ws).into_keys().collect();
    let failed_batch = 10..20;
    Figures {
        events: 40,
        lost: (0..40)
            .filter(|id| !kept.contains(id) && !refused.contains(id))
            .count() as u64,
        stale: (kept.iter().filter(|id| failed_batch.contains(*id)).count()
            + refused
                .iter()
                .filter(|id| !failed_batch.contains(*id))
                .count()) as u64,
        duplicated: Some(
            (refused.len()
                - refused
                    .iter()
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()) as u64,
        ),
    }
    .report_and_check("plugins: file to SQLite", injected);
    assert_eq!(letters.len(), 10, "{summary}\n{letters:?}");
    // The batch's first row carries the reason; a long reason is written once per batch,
    // and the other rows keep its code and point at that row (docs/plugins.md).
    let code = reason.split(':').next().unwrap();
    let first = letters[0]["error"].as_str().unwrap();
    assert!(first.starts_with(reason), "{first}");
    for letter in &letters {
        assert_eq!(letter["stage"], "transform", "{letter}");
        let error = letter["error"].as_str().unwrap();
        let refers = error.starts_with(code)
            && error.contains("its reason is in the dead letter of events.jsonl:11");
        assert!(
            (error.starts_with(reason) || refers) && error.contains("(plugin `probe`)"),
            "{error}"
        );
        let raw: serde_json::Value = serde_json::from_str(letter["raw"].as_str().unwrap()).unwrap();
        let id = raw["after"]["id"].as_i64().unwrap();
        assert!((10..20).contains(&id), "{letter}");
        assert_eq!(letter["source"]["line"], id + 1, "{letter}");
    }
    let applied: Vec<i64> = items(&ws).into_keys().collect();
    let expected: Vec<i64> = (0..10).chain(20..40).collect();
    assert_eq!(
        applied, expected,
        "the batches after the failure are applied"
    );
}

#[test]
fn a_looping_plugin_is_stopped_at_its_deadline_and_the_next_batch_succeeds() {
    misbehaving_batch_is_dead_lettered(
        "loop",
        "{ timeout_ms: 100 }",
        "plugin_timeout: the call ran past its 100 ms deadline",
        "a plugin that loops (100 ms deadline)",
    );
}

#[test]
fn a_plugin_past_its_memory_cap_fails_its_batch_only() {
    misbehaving_batch_is_dead_lettered(
        "alloc",
        "{ memory_mb: 64 }",
        "plugin_oom: the plugin reached its memory cap of 64 MiB",
        "a plugin that exhausts its memory (64 MiB cap)",
    );
}

#[test]
fn a_trapping_plugin_fails_its_batch_with_the_panic_message() {
    misbehaving_batch_is_dead_lettered(
        "trap",
        "{}",
        "plugin_trap: wasm trap: wasm `unreachable` instruction executed (stderr: probe: trapping as asked)",
        "a plugin that traps",
    );
}

#[test]
fn output_that_breaks_the_envelope_is_refused() {
    misbehaving_batch_is_dead_lettered(
        "bad-output",
        "{}",
        "plugin_bad_output: the batch has 1 columns, the change envelope has 15",
        "a plugin whose output breaks the envelope",
    );
}

#[test]
fn the_sandbox_denies_files_environment_and_network() {
    let ws = Workspace::new();
    let lines: Vec<String> = (0..3)
        .map(|id| format!(r#"{{"op":"c","before":null,"after":{{"id":{id},"name":"n","price":1.00,"version":1}},"ts_ms":1}}"#))
        .collect();
    ws.append_lines("events.jsonl", &lines);
    let secret = ws.write("secret.txt", "the plugin must not read this");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let config = format!(
        "{{ mode: sandbox, path: '{}', env: WEIR_PROBE_SECRET, address: '{}' }}",
        secret.display(),
        listener.local_addr().unwrap()
    );
    let probe = plugin("probe", "testing/probe", &config, "{}");
    let run = common::weir()
        .args(["run", "--json"])
        .arg(pipeline(&ws, &probe, 10))
        .env("WEIR_PROBE_SECRET", "visible-to-weir-only")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let errors: Vec<String> = ws
        .dead_letters()
        .iter()
        .map(|l| l["error"].as_str().unwrap().to_string())
        .collect();
    // The probe reports its three attempts as three errors for row 0: one dead letter,
    // the messages joined.
    assert_eq!(errors.len(), 1, "{errors:?}");
    for what in ["open-file", "read-env", "connect"] {
        let error = errors
            .iter()
            .find(|e| e.contains(&format!("{what}:")))
            .unwrap();
        assert!(error.contains(&format!("{what}: denied:")), "{error}");
    }
    assert!(
        listener.accept().is_err(),
        "no connection reached the listener"
    );
    // Rows 1 and 2 went on.
    let kept: Vec<i64> = items(&ws).into_keys().collect();
    let refused: Vec<i64> = ws
        .dead_letters()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l["raw"].as_str()?).ok())
        .filter_map(|raw| raw["after"]["id"].as_i64())
        .collect();
    Figures {
        events: 3,
        lost: (0..3)
            .filter(|id| !kept.contains(id) && !refused.contains(id))
            .count() as u64,
        stale: (kept.contains(&0) as usize + refused.iter().filter(|id| **id != 0).count()) as u64,
        duplicated: Some(refused.len().saturating_sub(1) as u64),
    }
    .report_and_check(
        "plugins: file to SQLite",
        "a plugin that reaches for files, env and network",
    );
    assert_eq!(kept, vec![1, 2]);
}

#[test]
fn plugin_output_goes_to_the_log_under_its_name() {
    let ws = Workspace::new();
    ws.append_lines("events.jsonl", &[r#"{"op":"c","before":null,"after":{"id":1,"name":"n","price":1.00,"version":1},"ts_ms":1}"#.to_string()]);
    let probe = plugin("chatty", "testing/probe", "{ mode: print }", "{}");
    let run = ws.run(&pipeline(&ws, &probe, 10), &["-v"]);
    assert!(run.output.status.success(), "{}", run.stderr());
    let stderr = run.stderr();
    assert!(
        stderr.lines().any(|l| l.contains("plugin=chatty")
            && l.contains("stream=\"stdout\"")
            && l.contains("probe: 1 rows on stdout")),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("plugin=chatty") && l.contains("probe: 1 rows on stderr")),
        "{stderr}"
    );
}

#[test]
fn a_plugin_that_cannot_load_stops_the_pipeline_at_start_with_its_name() {
    let ws = Workspace::new();
    ws.append_lines("events.jsonl", &[]);
    let missing = "  - name: ghost\n    wasm: nowhere/ghost.wasm\n";
    let run = ws.run(&pipeline(&ws, missing, 10), &[]);
    assert!(!run.output.status.success());
    let stderr = run.stderr();
    assert!(
        stderr.contains("plugin `ghost`: cannot read") && stderr.contains("weir plugin build"),
        "{stderr}"
    );
    let bad_config = plugin("masker", "examples/mask-fields", "{ fields: [] }", "{}");
    let run = ws.run(&pipeline(&ws, &bad_config, 10), &[]);
    assert!(!run.output.status.success());
    let stderr = run.stderr();
    assert!(
        stderr.contains(
            "plugin `masker` failed to start: plugin_init: `fields` lists no column to mask"
        ),
        "{stderr}"
    );
    assert!(!Path::new(&ws.path("target.db")).exists() || items(&ws).is_empty());
}

/// `weir plugin test FILTER --input FILE --config JSON`: (exit code, output changes,
/// refused events).
fn plugin_test(
    ws: &Workspace,
    input: &str,
    config: &str,
) -> (
    Option<i32>,
    Vec<serde_json::Value>,
    Vec<serde_json::Value>,
    String,
) {
    let input = ws.write("events.jsonl", input);
    let out = common::weir()
        .args(["plugin", "test"])
        .arg(plugin_wasm("examples/filter"))
        .arg("--input")
        .arg(&input)
        .args(["--config", config])
        .output()
        .unwrap();
    let json_lines = |bytes: &[u8]| -> Vec<serde_json::Value> {
        String::from_utf8_lossy(bytes)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    (
        out.status.code(),
        json_lines(&out.stdout),
        json_lines(&out.stderr),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn plugin_test_prints_the_output_and_the_refused_events() {
    let ws = Workspace::new();
    // Line 2 is not JSON (refused before the plugin), line 3 does not match (dropped).
    let (code, kept, refused, stderr) = plugin_test(
        &ws,
        "{\"op\":\"c\",\"after\":{\"id\":1,\"version\":5}}\n\
         {\"op\":\"c\",\"after\n\
         {\"op\":\"c\",\"after\":{\"id\":4,\"version\":1}}\n\
         {\"op\":\"u\",\"before\":{\"id\":1,\"version\":5},\"after\":{\"id\":1,\"version\":6}}\n",
        r#"{"column": "version", "op": "ge", "value": 5}"#,
    );
    assert_eq!(code, Some(1), "refused events make the exit code 1");
    let versions: Vec<i64> = kept
        .iter()
        .map(|c| c["after"]["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [5, 6], "{kept:?}");
    assert_eq!(kept[1]["op"], "u");
    assert_eq!(refused.len(), 1, "{stderr}");
    assert_eq!(refused[0]["line"], 2);
    assert!(refused[0]["error"].as_str().unwrap().starts_with("decode:"));
    assert!(
        stderr.contains("3 changes in, 2 out, 1 refused"),
        "{stderr}"
    );

    // A row the plugin refuses: the predicate's number against a text column.
    let (code, kept, refused, stderr) = plugin_test(
        &ws,
        "{\"op\":\"c\",\"after\":{\"id\":7,\"version\":\"five\"}}\n",
        r#"{"column": "version", "op": "ge", "value": 5}"#,
    );
    assert_eq!(code, Some(1));
    assert!(kept.is_empty());
    assert_eq!(refused.len(), 1, "{stderr}");
    assert_eq!(refused[0]["line"], 1);
    assert!(
        refused[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("plugin_row_error:"),
        "{stderr}"
    );
    assert_eq!(refused[0]["event"]["after"]["version"], "five");

    // A config the plugin rejects is an error naming it, exit code 2.
    let (code, _, _, stderr) = plugin_test(&ws, "", r#"{"column": "version"}"#);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("failed to start: plugin_init"), "{stderr}");
}

#[test]
fn plugin_new_scaffolds_crates_that_build_and_run() {
    let ws = Workspace::new();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => std::path::PathBuf::from(dir).join("wasm-plugins"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/target"),
    };
    for (name, kind) in [("keep-complete", "transform"), ("newest-wins", "resolver")] {
        let dir = ws.path(name);
        let out = common::weir()
            .args(["plugin", "new"])
            .arg(&dir)
            .args(["--kind", kind])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for file in ["Cargo.toml", "src/lib.rs", "README.md"] {
            assert!(dir.join(file).is_file(), "{name}: {file}");
        }
        // The same dependency versions as the repository's plugins, so the build reuses
        // what they compiled.
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/Cargo.lock"),
            dir.join("Cargo.lock"),
        )
        .unwrap();
        let out = common::weir()
            .args(["plugin", "build"])
            .arg(&dir)
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let wasm = dir.join(format!("{}.wasm", name.replace('-', "_")));
        assert!(wasm.is_file());
        // Scaffolding over an existing crate is refused.
        let again = common::weir()
            .args(["plugin", "new"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(!again.status.success());
        assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    }
    // The transform scaffold drops changes whose required column is null.
    let input = ws.write(
        "events.jsonl",
        "{\"op\":\"c\",\"after\":{\"id\":1,\"email\":\"a@example.org\"}}\n\
         {\"op\":\"c\",\"after\":{\"id\":2,\"email\":null}}\n",
    );
    let out = common::weir()
        .args(["plugin", "test"])
        .arg(ws.path("keep-complete/keep_complete.wasm"))
        .arg("--input")
        .arg(&input)
        .args(["--config", r#"{"required": "email"}"#])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("a@example.org"));
    // A bad name is refused before anything is written.
    let out = common::weir()
        .args(["plugin", "new"])
        .arg(ws.path("9 lives"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!ws.path("9 lives").exists());
}

/// A pipeline from `pipelines/`, as written, with its outputs moved into `ws` (and, when
/// `strip_plugins`, without its `transforms` and `conflict` sections).
fn repo_pipeline(ws: &Workspace, file: &str, strip_plugins: bool) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("pipelines").join(file)).unwrap();
    let mut yaml = String::new();
    let mut skipping = false;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.starts_with('#') {
            skipping = strip_plugins && (line == "transforms:" || line == "conflict:");
        }
        if !skipping {
            yaml += line;
            yaml.push('\n');
        }
    }
    let yaml = yaml
        .replace("../out/", &format!("{}/", ws.path("out").display()))
        .replace("../", &format!("{}/", root.display()));
    ws.write(file, &yaml)
}

/// `SELECT id, … FROM orders` of a SQLite target as id -> the other columns.
fn orders(db: &Path, columns: &str) -> BTreeMap<i64, Vec<String>> {
    sqlite_rows(db, &format!("SELECT id, {columns} FROM orders"))
        .into_iter()
        .map(|mut r| (r.remove(0).parse().unwrap(), r))
        .collect()
}

#[test]
fn the_example_pipelines_run_as_written() {
    for crate_dir in [
        "examples/mask-fields",
        "examples/filter",
        "examples/rename",
        "examples/lww-resolver",
        "examples/max-merge",
    ] {
        plugin_wasm(crate_dir);
    }
    // The same change log without plugins, for comparison.
    let plain_ws = Workspace::new();
    plain_ws.run_ok(&repo_pipeline(&plain_ws, "quickstart.yaml", true));
    let all = "customer, status, total, quantity, created_at, updated_at, note, version";
    let plain = orders(&plain_ws.path("out/quickstart/target.db"), all);
    assert!(plain.len() > 100);

    // quickstart: customers are salted SHA-256 hashes, the rest is untouched.
    let ws = Workspace::new();
    ws.run_ok(&repo_pipeline(&ws, "quickstart.yaml", false));
    let masked = orders(&ws.path("out/quickstart/target.db"), all);
    let expected: BTreeMap<_, _> = plain
        .iter()
        .map(|(id, row)| {
            let mut row = row.clone();
            row[0] = sha256_hex(&format!("quickstart{}", row[0]));
            (*id, row)
        })
        .collect();
    assert_eq!(masked, expected);

    // filter-rename: only paid or shipped changes, under the target's column names.
    let ws = Workspace::new();
    let summary = ws.run_ok(&repo_pipeline(&ws, "filter-rename.yaml", false));
    let db = ws.path("out/filter-rename/target.db");
    let rows = orders(&db, "customer_name, amount, status");
    assert!(!rows.is_empty(), "{summary}");
    assert!(
        rows.values().all(|r| r[2] == "paid" || r[2] == "shipped"),
        "{rows:?}"
    );
    // A row kept by the filter carries the values of its last kept change, which for a
    // row whose final change was kept are the plain run's.
    let agreeing = rows
        .iter()
        .filter(|(id, r)| plain.get(id).is_some_and(|p| p[0] == r[0] && p[2] == r[1]))
        .count();
    assert!(agreeing > 0, "{rows:?}");

    // lww-resolver on a fresh target: every key's versions rise, so every change wins.
    let ws = Workspace::new();
    let summary = ws.run_ok(&repo_pipeline(&ws, "lww-resolver.yaml", false));
    assert_eq!(orders(&ws.path("out/lww-resolver/target.db"), all), plain);
    assert_eq!(summary["conflicts_skipped"], 0, "{summary}");

    // max-merge: quantity never goes back, so it is at least the plain run's, and at least
    // every quantity its key had before.
    let ws = Workspace::new();
    let summary = ws.run_ok(&repo_pipeline(&ws, "max-merge.yaml", false));
    let merged = orders(&ws.path("out/max-merge/target.db"), all);
    assert_eq!(
        merged.keys().collect::<Vec<_>>(),
        plain.keys().collect::<Vec<_>>()
    );
    let mut raised = 0;
    for (id, row) in &merged {
        let before: i64 = plain[id][3].parse().unwrap();
        let after: i64 = row[3].parse().unwrap();
        assert!(after >= before, "id {id}: {after} < {before}");
        raised += usize::from(after > before);
        let mut others = row.clone();
        others[3] = plain[id][3].clone();
        assert_eq!(&others, &plain[id], "id {id}: only quantity may differ");
    }
    assert_eq!(
        summary["conflicts_merged"].as_u64().unwrap() > 0,
        raised > 0
    );
}
