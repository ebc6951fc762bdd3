//! The pipeline's HTTP listener (`server:` in the pipeline, or `weir run --listen`):
//! `/metrics` in the Prometheus text format, `/health` and `/ready` (docs/operations.md).
//!
//! It runs on a thread of its own with a small blocking server, like weir's stages, and
//! reads the same counters the progress line and the summary read ([`Metrics`]): a scrape
//! builds its registry from them. Nothing it serves holds a secret: names, counts and
//! states only.
//!
//! One thread answers, and a client that stops reading a large answer holds it (tiny_http
//! has no write timeout): the listener is for a private interface and a scraper, not the
//! open network (docs/operations.md).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::lifecycle::State;
use crate::metrics::Metrics;

/// The pipeline's HTTP listener.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The address and port to listen on, e.g. `127.0.0.1:9187`. It serves `/metrics`,
    /// `/health` and `/ready` to anyone who can reach it: keep it on a private interface.
    pub listen: SocketAddr,
}

/// The listener, serving until dropped.
pub struct Server {
    /// The listening server; `None` while it is made again after a failure.
    server: Arc<Mutex<Option<Arc<tiny_http::Server>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    address: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address}: {reason}")]
pub struct ServerError {
    address: SocketAddr,
    reason: String,
}

type Labels = Vec<(String, String)>;

/// The states a pipeline can be in, each a series of `weir_pipeline_state`.
const STATES: [State; 7] = [
    State::Starting,
    State::SnapshotPending,
    State::Snapshotting,
    State::CatchingUp,
    State::Streaming,
    State::Degraded,
    State::ResyncRequired,
];

impl Server {
    /// Listens on `address` and serves `pipeline`'s `metrics` from a thread of its own.
    pub fn start(
        address: SocketAddr,
        pipeline: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Server, ServerError> {
        let server = tiny_http::Server::http(address).map_err(|e| ServerError {
            address,
            reason: e.to_string(),
        })?;
        let address = server.server_addr().to_ip().unwrap_or(address);
        let server = Arc::new(Mutex::new(Some(Arc::new(server))));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (server, stop, pipeline) = (server.clone(), stop.clone(), pipeline.to_string());
            std::thread::Builder::new()
                .name("weir-server".into())
                .spawn(move || serve(&server, address, &stop, &pipeline, &metrics))
                .map_err(|e| ServerError {
                    address,
                    reason: e.to_string(),
                })?
        };
        tracing::info!(%address, "serving /metrics, /health and /ready");
        Ok(Server {
            server,
            stop,
            thread: Some(thread),
            address,
        })
    }

    /// Where it listens (the port the system chose, for port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(server) = self
            .server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            server.unblock();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(
    current: &Mutex<Option<Arc<tiny_http::Server>>>,
    address: SocketAddr,
    stop: &AtomicBool,
    pipeline: &str,
    metrics: &Metrics,
) {
    let lock = || current.lock().unwrap_or_else(|e| e.into_inner());
    while !stop.load(Ordering::Relaxed) {
        let Some(server) = lock().clone() else {
            // Listen again: `/health` unreachable would have a probe restart a
            // pipeline that works.
            match tiny_http::Server::http(address) {
                Ok(server) => {
                    tracing::info!(%address, "listening again");
                    *lock() = Some(Arc::new(server));
                }
                Err(_) => std::thread::sleep(Duration::from_secs(1)),
            }
            continue;
        };
        let request = match server.recv_timeout(Duration::from_millis(500)) {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            Err(e) => {
                // tiny_http's accepting thread has ended with this error (too many open
                // files, say): drop the server, which frees the address, and listen again.
                tracing::warn!(error = %e, "the HTTP listener stopped accepting; listening again");
                drop(server);
                *lock() = None;
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let (status, content_type, body) = respond(request.url(), pipeline, metrics);
        let header =
            tiny_http::Header::from_bytes("Content-Type", content_type).expect("a valid header");
        let response = tiny_http::Response::from_string(body)
            .with_status_code(status)
            .with_header(header);
        // A client that went away is its own business.
        let _ = request.respond(response);
    }
}

/// The status, content type and body for a request of `url`.
fn respond(url: &str, pipeline: &str, metrics: &Metrics) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let path = url.split('?').next().unwrap_or(url);
    match path {
        "/metrics" => (
            200,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            exposition(pipeline, metrics),
        ),
        "/health" => (200, TEXT, "ok\n".into()),
        "/ready" => {
            let state = metrics.lifecycle.refresh(&metrics.health);
            let ready = matches!(
                state,
                State::Streaming | State::CatchingUp | State::Snapshotting
            );
            (if ready { 200 } else { 503 }, TEXT, format!("{state}\n"))
        }
        _ => (
            404,
            TEXT,
            "not found: weir serves /metrics, /health and /ready\n".into(),
        ),
    }
}

/// The Prometheus text exposition of `metrics`, read as they stand.
pub fn exposition(pipeline: &str, metrics: &Metrics) -> String {
    let read = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    let labels = |extra: &[(&str, &str)]| -> Labels {
        std::iter::once(("pipeline".to_string(), pipeline.to_string()))
            .chain(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .collect()
    };
    let mut registry = Registry::default();
    let mut counter = |name: &str, help: &str, series: &[(&[(&str, &str)], u64)]| {
        let family = Family::<Labels, Counter>::default();
        for (extra, value) in series {
            family.get_or_create(&labels(extra)).inc_by(*value);
        }
        registry.register(name, help, family);
    };
    counter(
        "weir_events_received",
        "Records read from the source",
        &[(&[], read(&metrics.events_read))],
    );
    counter(
        "weir_received_bytes",
        "Bytes of the records read from the source",
        &[(&[], read(&metrics.bytes_read))],
    );
    counter(
        "weir_rows_decoded",
        "Row changes decoded into change batches",
        &[(&[], read(&metrics.rows_decoded))],
    );
    counter(
        "weir_rows_applied",
        "Row changes in batches the sink applied, by operation",
        &[
            (&[("op", "upsert")], read(&metrics.upserts)),
            (&[("op", "delete")], read(&metrics.deletes)),
            (&[("op", "truncate")], read(&metrics.truncates)),
            (&[("op", "append")], read(&metrics.appended)),
        ],
    );
    counter(
        "weir_batches_applied",
        "Batches the sink applied",
        &[(&[], read(&metrics.batches))],
    );
    let by_stage = metrics
        .dead_letters_by_stage
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    // Every stage from 0, so the first dead letter of one is an increase.
    let stages: Vec<([(&str, &str); 1], u64)> = crate::dead_letter::Stage::ALL
        .iter()
        .map(|stage| {
            let stage = stage.as_str();
            (
                [("stage", stage)],
                by_stage.get(stage).copied().unwrap_or(0),
            )
        })
        .collect();
    let stages: Vec<(&[(&str, &str)], u64)> =
        stages.iter().map(|(l, c)| (l.as_slice(), *c)).collect();
    counter(
        "weir_dead_letters",
        "Records sent to the dead-letter output, by the stage that refused them",
        &stages,
    );
    counter(
        "weir_sink_retries",
        "Attempts to apply a batch that failed and were made again",
        &[(&[], read(&metrics.sink_retries))],
    );
    counter(
        "weir_conflicts",
        "Changes a conflict strategy skipped or replaced by a merged row",
        &[
            (&[("outcome", "skipped")], read(&metrics.conflicts_skipped)),
            (&[("outcome", "merged")], read(&metrics.conflicts_merged)),
        ],
    );
    counter(
        "weir_duplicates_skipped",
        "Changes skipped because the target already held them",
        &[(&[], read(&metrics.duplicates_skipped))],
    );
    counter(
        "weir_echoes_dropped",
        "Changes dropped because they came from the target's own site",
        &[(&[], read(&metrics.echoes_dropped))],
    );
    let tables = metrics
        .tables
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let per_table = Family::<Labels, Counter>::default();
    for (table, counts) in &tables {
        per_table
            .get_or_create(&labels(&[("table", table)]))
            .inc_by(counts.applied);
    }
    registry.register(
        "weir_table_rows_applied",
        "Row changes of each source table in batches the sink applied",
        per_table,
    );
    registry
        .sub_registry_with_label(("pipeline".into(), pipeline.to_string().into()))
        .register(
            "weir_batch_apply_seconds",
            "Seconds each batch took to apply, retries included",
            metrics.apply_seconds.0.clone(),
        );
    let readings = metrics.lifecycle.readings();
    let mut gauge = |name: &str, help: &str, value: Option<f64>| {
        // A reading not taken (no lag measured yet, no heartbeat) is left out rather
        // than shown as 0, which would read as "no lag".
        if let Some(value) = value {
            let family = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
            family.get_or_create(&labels(&[])).set(value);
            registry.register(name, help, family);
        }
    };
    gauge(
        "weir_source_lag_seconds",
        "Seconds between the last change or heartbeat applied being written at the source and being applied",
        readings.lag_seconds,
    );
    gauge(
        "weir_source_lag_events",
        "Changes the source holds that are not applied yet, or rows still to copy",
        readings.lag_events.map(|v| v as f64),
    );
    gauge(
        "weir_source_lag_wal_bytes",
        "WAL written at the source past what the sink applied (postgres-cdc)",
        readings.lag_wal_bytes.map(|v| v as f64),
    );
    let epoch = |at: chrono::DateTime<chrono::Utc>| at.timestamp_millis() as f64 / 1000.0;
    gauge(
        "weir_last_heartbeat_timestamp_seconds",
        "Source time of the last heartbeat seen, in seconds since the epoch",
        readings.last_heartbeat.map(epoch),
    );
    gauge(
        "weir_last_checkpoint_timestamp_seconds",
        "When the sink last made a checkpoint durable, in seconds since the epoch",
        readings.durable_at.map(epoch),
    );
    let state = metrics.lifecycle.refresh(&metrics.health);
    let states = Family::<Labels, Gauge>::default();
    for each in STATES {
        states
            .get_or_create(&labels(&[("state", each.as_str())]))
            .set(i64::from(each == state));
    }
    registry.register(
        "weir_pipeline_state",
        "The pipeline's lifecycle state: 1 for the state it is in (docs/status.md)",
        states,
    );
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("writing to a String does not fail");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_counter_with_its_labels() {
        let metrics = Metrics::default();
        metrics.events_read.store(7, Ordering::Relaxed);
        metrics.upserts.store(5, Ordering::Relaxed);
        metrics.deletes.store(2, Ordering::Relaxed);
        let text = exposition("shop \"eu\"", &metrics);
        assert!(
            text.contains("weir_events_received_total{pipeline=\"shop \\\"eu\\\"\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("weir_rows_applied_total{pipeline=\"shop \\\"eu\\\"\",op=\"upsert\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("weir_rows_applied_total{pipeline=\"shop \\\"eu\\\"\",op=\"delete\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("weir_pipeline_state{pipeline=\"shop \\\"eu\\\"\",state=\"starting\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn dead_letters_by_stage_retries_and_apply_times_are_exposed() {
        let metrics = Metrics::default();
        metrics
            .dead_letters_by_stage
            .lock()
            .unwrap()
            .insert("decode", 3);
        metrics.sink_retries.store(2, Ordering::Relaxed);
        metrics.apply_seconds.0.observe(0.003);
        metrics.apply_seconds.0.observe(0.2);
        let text = exposition("p", &metrics);
        for series in [
            "weir_dead_letters_total{pipeline=\"p\",stage=\"decode\"} 3",
            "weir_dead_letters_total{pipeline=\"p\",stage=\"sink\"} 0",
            "weir_sink_retries_total{pipeline=\"p\"} 2",
            "weir_batch_apply_seconds_count{pipeline=\"p\"} 2",
            "weir_batch_apply_seconds_bucket{pipeline=\"p\",le=\"0.004\"} 1",
        ] {
            assert!(text.contains(series), "{series} in:\n{text}");
        }
    }

    #[test]
    fn lag_and_times_are_shown_once_measured_and_not_before() {
        let metrics = Metrics::default();
        let text = exposition("p", &metrics);
        assert!(!text.contains("weir_source_lag"), "{text}");
        assert!(!text.contains("weir_last_checkpoint_timestamp"), "{text}");
        metrics.lifecycle.lag_events(Some(42));
        metrics.lifecycle.lag_wal_bytes(Some(8192));
        metrics
            .lifecycle
            .durable(&crate::position::Checkpoint::default());
        let text = exposition("p", &metrics);
        assert!(
            text.contains("weir_source_lag_events{pipeline=\"p\"} 42"),
            "{text}"
        );
        assert!(
            text.contains("weir_source_lag_wal_bytes{pipeline=\"p\"} 8192"),
            "{text}"
        );
        let durable: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("weir_last_checkpoint_timestamp_seconds{pipeline=\"p\"} "))
            .and_then(|v| v.parse().ok())
            .expect("the checkpoint's time");
        let now = chrono::Utc::now().timestamp() as f64;
        assert!((now - durable).abs() < 60.0, "{durable} is now ({now})");
    }

    #[test]
    fn health_answers_and_readiness_follows_the_state() {
        let metrics = Metrics::default();
        assert_eq!(respond("/health", "p", &metrics).0, 200);
        assert_eq!(respond("/ready", "p", &metrics).0, 503, "starting");
        metrics.lifecycle.phase(State::Streaming, "reading");
        assert_eq!(respond("/ready", "p", &metrics).0, 200);
        assert_eq!(respond("/nothing", "p", &metrics).0, 404);
    }
}
