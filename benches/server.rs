//! The cost of `server:` (docs/operations.md): file → Parquet with the listener off, and
//! with it on and both `/metrics` and the status page fetched every second, in
//! interleaved rounds of one run.
//!
//! ```text
//! cargo bench --bench server                       # 4M events, 5 rounds
//! cargo bench --bench server -- --events 1000000 --repeat 7
//! ```
//!
//! The target is at most 2% slower with the listener on. Both runs read the same file
//! into a fresh Parquet directory, in turn first in alternate rounds; the rate counts
//! from the start of the pipeline's stages to its end (the summary's `elapsed_seconds`),
//! and beside it the CPU time per event of the weir process. On this machine rounds
//! differ by 2–3% either way, so read the medians, and more rounds for a finer answer.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::services::{free_port, http_get};
use common::{STREAM_COLUMNS, Workspace, change_stream, weir};
use support::{cpu_seconds, median, number_args};

struct Measured {
    seconds: f64,
    cpu_per_event: f64,
}

/// One run of the pipeline file; with `scrape`, `/metrics` and the status page on that
/// port every second (a scrape counts when both answer).
fn run(pipeline: &std::path::Path, events: usize, scrape: Option<u16>) -> (Measured, u64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let scrapes = Arc::new(AtomicU64::new(0));
    let scrape_micros = Arc::new(AtomicU64::new(0));
    let scraper = scrape.map(|port| {
        let (stop, scrapes, scrape_micros) = (stop.clone(), scrapes.clone(), scrape_micros.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // Until the listener is up, try again soon; then once a second.
                let started = std::time::Instant::now();
                let answered = ["/metrics", "/"]
                    .iter()
                    .all(|path| matches!(http_get(port, path), Some((200, _))));
                if !answered {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                // How long the listener took to answer both: a bound on its work per
                // scrape, which the noise between runs cannot hide.
                scrape_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                scrapes.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    });
    let before = cpu_seconds(libc::RUSAGE_CHILDREN);
    let mut command: Command = weir();
    command.args(["run", "--json", "-q"]);
    if let Some(port) = scrape {
        command.args(["--listen", &format!("127.0.0.1:{port}")]);
    }
    let output = command.arg(pipeline).output().expect("run weir");
    let cpu = cpu_seconds(libc::RUSAGE_CHILDREN) - before;
    stop.store(true, Ordering::Relaxed);
    if let Some(scraper) = scraper {
        scraper.join().expect("the scraper");
    }
    assert!(
        output.status.success(),
        "weir failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("a JSON summary");
    assert_eq!(summary["events_read"], events as u64, "{summary}");
    (
        Measured {
            seconds: summary["elapsed_seconds"].as_f64().expect("elapsed"),
            cpu_per_event: cpu / events as f64,
        },
        scrapes.load(Ordering::Relaxed),
        scrape_micros.load(Ordering::Relaxed) as f64
            / 1000.0
            / scrapes.load(Ordering::Relaxed).max(1) as f64,
    )
}

fn main() {
    let values = number_args(&[("--events", 4_000_000), ("--repeat", 5)]);
    let (events, repeat) = (values[0], values[1].max(1));
    println!("weir server benchmark: file -> parquet, {events} events, {repeat} rounds");
    let ws = Workspace::new();
    let stream = change_stream(events, 50_000, 11);
    ws.append_lines("events.jsonl", &stream.lines);
    let pipeline = |name: &str| {
        ws.write(
            &format!("{name}.yaml"),
            &format!(
                "name: {name}\n\
                 source:\n  type: file\n  path: {}\n\
                 table:\n  name: items\n  primary_key: [id]\n{STREAM_COLUMNS}\
                 sink:\n  type: parquet\n  path: {}\n",
                ws.path("events.jsonl").display(),
                ws.path(name).display()
            ),
        )
    };
    let (mut off, mut on, mut per_scrape) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..repeat {
        // A fresh output directory each time, so both write the whole file.
        for name in ["off", "on"] {
            let _ = std::fs::remove_dir_all(ws.path(name));
        }
        let (quiet, (served, scrapes, scrape_ms)) = if round % 2 == 0 {
            let (quiet, _, _) = run(&pipeline("off"), events, None);
            (quiet, run(&pipeline("on"), events, Some(free_port())))
        } else {
            let served = run(&pipeline("on"), events, Some(free_port()));
            (run(&pipeline("off"), events, None).0, served)
        };
        per_scrape.push(scrape_ms);
        println!(
            "  round {round}: listener off {:6.2} s ({:.0} events/s, {:.2} µs CPU/event); \
             on, {scrapes} scrapes of {scrape_ms:.1} ms, {:6.2} s ({:.0} events/s, {:.2} µs \
             CPU/event): {:.3}×",
            quiet.seconds,
            events as f64 / quiet.seconds,
            quiet.cpu_per_event * 1e6,
            served.seconds,
            events as f64 / served.seconds,
            served.cpu_per_event * 1e6,
            quiet.seconds / served.seconds
        );
        off.push(quiet.seconds);
        on.push(served.seconds);
    }
    let (off, on) = (median(&mut off).unwrap(), median(&mut on).unwrap());
    println!(
        "median: listener off {:.0} events/s, on and scraped {:.0} events/s: {:.3}× \
         (target: at least 0.98×)",
        events as f64 / off,
        events as f64 / on,
        off / on
    );
    let scrape_ms = median(&mut per_scrape).unwrap();
    println!(
        "a scrape (/metrics and the status page) answered in {scrape_ms:.1} ms (median): at \
         one a second, at most {:.2}% of one core",
        scrape_ms / 10.0
    );
}
