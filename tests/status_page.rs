//! The status page in a real browser (headless Chromium): loaded while a real pipeline
//! runs (a file source, a transform plugin built from `plugins/`, an SQLite target), it
//! shows the pipeline's state, counts that move as events arrive, the dead letters with
//! their secrets masked and nothing of theirs run as markup, the plugin's calls, and it
//! reloads itself. A screenshot is kept as the test's artifact.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::browser::Browser;
use common::services::{free_port, http_get, series_value};
use common::{STREAM_COLUMNS, Workspace, change_stream, plugin_wasm, weir};

/// A record the decoder refuses (its key is not a number), holding a secret and markup.
const POISON: &str = r#"{"op":"c","after":{"id":"one","password":"hunter2","note":"<script>document.title='owned'</script><img src=x>"}}"#;

/// `GET /metrics`: the value of series `series`.
fn metric(port: u16, series: &str) -> Option<u64> {
    let (_, body) = http_get(port, "/metrics")?;
    series_value(&body, series)
}

/// Waits until weir has received `events` events, by its `/metrics`.
fn wait_for_events(port: u16, events: u64, child: &mut Child, ws: &Workspace) {
    let started = Instant::now();
    while metric(port, "weir_events_received_total{pipeline=\"paged\"}") != Some(events) {
        if child.try_wait().unwrap().is_some() || started.elapsed() > Duration::from_secs(90) {
            let log = std::fs::read_to_string(ws.path("weir.log")).unwrap_or_default();
            panic!("weir did not receive {events} events; its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Facts read from the page's DOM.
const FACTS: &str = r#"(() => {
    const text = id => { const e = document.getElementById(id); return e ? e.textContent.trim() : null; };
    const stage = s => document.querySelector(`#dead-letters-by-stage tr[data-stage="${s}"]`);
    const plugin = [...document.querySelectorAll('#plugins tbody tr')]
        .map(r => [...r.cells].map(c => c.textContent.trim()));
    return {
        pipeline: text('pipeline'),
        state: text('state'),
        rows_applied: Number(text('rows-applied')),
        events_received: Number(text('events-received')),
        dead_letters: Number(text('dead-letters')),
        decode_dead_letters: [...stage('decode').cells].map(c => c.textContent.trim()),
        recent: text('recent-dead-letters'),
        plugins: plugin,
        scripts: document.scripts.length,
        images: document.images.length,
        title: document.title,
        refresh: document.querySelector('meta[http-equiv="refresh"]')?.content,
        throughput_line: !!document.querySelector('#throughput-chart polyline'),
        body: document.body.innerText,
    };
})()"#;

#[test]
fn the_status_page_shows_a_running_pipeline_in_a_real_browser() {
    let ws = Workspace::new();
    let first = change_stream(2_000, 200, 5);
    ws.append_lines("events.jsonl", &first.lines);
    ws.append_lines("events.jsonl", &[POISON.to_string()]);
    let port = free_port();
    let mask = plugin_wasm("examples/mask-fields");
    let pipeline = ws.write(
        "pipeline.yaml",
        &format!(
            "name: paged\n\
             source:\n  type: file\n  path: events.jsonl\n  follow: true\n\
             table:\n  name: items\n  primary_key: [id]\n{STREAM_COLUMNS}\
             transforms:\n  - name: mask-name\n    wasm: {}\n    config: {{ fields: [name], method: sha256 }}\n\
             sink:\n  type: sqlite\n  path: target.db\n  create: true\n\
             dead_letter:\n  type: file\n  path: dead-letters.jsonl\n\
             server:\n  listen: 127.0.0.1:{port}\n",
            mask.display()
        ),
    );
    let mut child = Killed(
        weir()
            .args(["run", "-q", "--stop-when-idle", "120s"])
            .arg(&pipeline)
            .current_dir(ws.dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(ws.path("weir.log")).unwrap())
            .spawn()
            .expect("start weir"),
    );
    let child = &mut child.0;
    let started = Instant::now();
    wait_for_events(port, 2_001, child, &ws);
    // A batch is applied, and the poison record, last, is a dead letter.
    let poisoned =
        "weir_dead_letters_total{pipeline=\"paged\",stage=\"decode\",reason=\"invalid_value\"}";
    while metric(port, "weir_batches_applied_total{pipeline=\"paged\"}").unwrap_or(0) == 0
        || metric(port, poisoned) != Some(1)
    {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no batch applied, or no dead letter"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut browser = Browser::start();
    let url = format!("http://127.0.0.1:{port}/");
    browser.open(&url);
    let before = browser.eval(FACTS);
    assert_eq!(before["pipeline"], "paged", "{before}");
    assert_eq!(before["state"], "streaming", "{before}");
    assert_eq!(before["events_received"], 2_001, "{before}");
    assert!(before["rows_applied"].as_u64() > Some(0), "{before}");
    assert_eq!(before["dead_letters"], 1, "{before}");
    assert_eq!(
        before["decode_dead_letters"],
        serde_json::json!(["decode", "1", "invalid_value: 1"]),
        "{before}"
    );
    assert_eq!(before["refresh"], "5", "{before}");
    // The dead letter is shown, as text: its markup did not become elements, its script
    // did not run, and its secret is masked.
    let recent = before["recent"].as_str().expect("the latest dead letters");
    assert!(
        recent.contains("<script>document.title='owned'</script>"),
        "{recent}"
    );
    assert!(recent.contains(r#""password":"***""#), "{recent}");
    assert_eq!(
        (&before["scripts"], &before["images"]),
        (&0.into(), &0.into())
    );
    assert!(
        before["title"]
            .as_str()
            .unwrap()
            .starts_with("weir · paged")
    );
    assert!(!before["body"].as_str().unwrap().contains("hunter2"));
    // The plugin's calls: name, kind, calls, failed.
    let plugins = before["plugins"].as_array().expect("the plugins table");
    assert_eq!(plugins.len(), 1, "{before}");
    assert_eq!(plugins[0][0], "mask-name");
    assert_eq!(plugins[0][1], "transform");
    assert!(plugins[0][2].as_str().unwrap().parse::<u64>().unwrap() > 0);
    assert_eq!(plugins[0][3], "0");

    // More events; the page, left open, reloads itself and shows them. A mark set in
    // the page now is gone once it has reloaded.
    browser.eval("window.weirMark = 1");
    let second = change_stream(1_000, 200, 6);
    ws.append_lines("events.jsonl", &second.lines);
    wait_for_events(port, 3_001, child, &ws);
    // The page reloads itself until it shows them; by then three of the listener's
    // samples (10 s) have drawn the throughput chart's first line.
    let rows_before = before["rows_applied"].as_u64().unwrap();
    browser.wait_for(&format!(
        "window.weirMark === undefined && document.readyState === 'complete' \
         && Number(document.getElementById('events-received').textContent) === 3001 \
         && Number(document.getElementById('rows-applied').textContent) > {rows_before} \
         && document.querySelector('#throughput-chart polyline') !== null"
    ));
    let after = browser.eval(FACTS);
    assert_eq!(after["state"], "streaming", "{after}");
    assert!(after["throughput_line"].as_bool().unwrap(), "{after}");

    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    browser.screenshot(&screenshot);
    eprintln!("the status page's screenshot: {}", screenshot.display());
}

/// A child process killed when the test ends, passed or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
