//! The pipeline's HTTP listener (`server:` in the pipeline, or `weir run --listen`):
//! the status page at `/`, `/metrics` in the Prometheus text format, `/health` and
//! `/ready` (docs/operations.md).
//!
//! - [`exposition`] serves `/metrics`;
//! - [`page`] renders the status page, one self-contained HTML document;
//! - [`history`] keeps the last 15 minutes of throughput and lag, for the page's charts.
//!
//! It runs on a thread of its own with a small blocking server, like weir's stages, and
//! reads the same counters the progress line and the summary read ([`Metrics`]). Nothing
//! it serves holds a secret: names, counts and states, and dead letters' texts with
//! credentials masked.
//!
//! One thread answers, and a client that stops reading a large answer holds it (tiny_http
//! has no write timeout): the listener is for a private interface and a scraper, not the
//! open network (docs/operations.md).

pub mod exposition;
pub mod history;
pub mod page;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Deserialize;

pub use exposition::exposition;
use history::History;

use crate::lifecycle::State;
use crate::metrics::Metrics;

/// The pipeline's HTTP listener.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The address and port to listen on, e.g. `127.0.0.1:9187`. It serves the status
    /// page (`/`), `/metrics`, `/health` and `/ready` to anyone who can reach it: keep it
    /// on a private interface.
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
        tracing::info!(%address, "serving the status page, /metrics, /health and /ready");
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
    let mut history = History::default();
    while !stop.load(Ordering::Relaxed) {
        history.sample(metrics, Instant::now());
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
        // A panic while answering (a bug) costs that answer, not the listener: `/health`
        // must go on answering while the pipeline works.
        let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            respond(request.url(), pipeline, metrics, &history)
        }))
        .unwrap_or_else(|_| Reply::text(500, "weir failed to answer; see its log\n".into()));
        let mut response =
            tiny_http::Response::from_string(reply.body).with_status_code(reply.status);
        for (name, value) in std::iter::once(("Content-Type", reply.content_type))
            .chain(reply.headers.iter().copied())
        {
            response
                .add_header(tiny_http::Header::from_bytes(name, value).expect("a valid header"));
        }
        // A client that went away is its own business.
        let _ = request.respond(response);
    }
}

/// What a request is answered with.
struct Reply {
    status: u16,
    content_type: &'static str,
    /// Headers beyond the content type.
    headers: &'static [(&'static str, &'static str)],
    body: String,
}

impl Reply {
    fn text(status: u16, body: String) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: &[],
            body,
        }
    }
}

/// The answer to a request of `url`.
fn respond(url: &str, pipeline: &str, metrics: &Metrics, history: &History) -> Reply {
    let path = url.split('?').next().unwrap_or(url);
    match path {
        "/" => Reply {
            status: 200,
            content_type: "text/html; charset=utf-8",
            // No script runs on the page, whatever a dead letter holds: the browser
            // refuses any, and anything from elsewhere.
            headers: &[
                (
                    "Content-Security-Policy",
                    "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
                ),
                ("X-Content-Type-Options", "nosniff"),
                ("Cache-Control", "no-store"),
            ],
            body: page::render(pipeline, metrics, history, Instant::now()),
        },
        "/metrics" => Reply {
            status: 200,
            content_type: prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            headers: &[],
            body: exposition(pipeline, metrics),
        },
        "/health" => Reply::text(200, "ok\n".into()),
        "/ready" => {
            let state = metrics.lifecycle.refresh(&metrics.health);
            let ready = matches!(
                state,
                State::Streaming | State::CatchingUp | State::Snapshotting
            );
            Reply::text(if ready { 200 } else { 503 }, format!("{state}\n"))
        }
        _ => Reply::text(
            404,
            "not found: weir serves /, /metrics, /health and /ready\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_answers_and_readiness_follows_the_state() {
        let metrics = Metrics::default();
        let history = History::default();
        let status = |path| respond(path, "p", &metrics, &history).status;
        assert_eq!(status("/health"), 200);
        assert_eq!(status("/ready"), 503, "starting");
        metrics.lifecycle.phase(State::Streaming, "reading");
        assert_eq!(status("/ready"), 200);
        assert_eq!(status("/nothing"), 404);
        let page = respond("/?refresh", "p", &metrics, &history);
        assert_eq!(
            (page.status, page.content_type),
            (200, "text/html; charset=utf-8")
        );
        assert!(
            page.headers
                .iter()
                .any(|(name, value)| *name == "Content-Security-Policy"
                    && value.contains("default-src 'none'"))
        );
    }
}
