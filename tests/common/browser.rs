//! A real headless Chromium, driven over the DevTools protocol: open a page, read facts
//! from its DOM, take a screenshot. One page per browser; the browser is killed on drop.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use super::services::free_port;

const INSTALL: &str = "apt-get install -y chromium (scripts/test installs it)";

/// Chromium's binary: `WEIR_CHROMIUM`, else the first of Debian's and others' names on the
/// `PATH`.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WEIR_CHROMIUM") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome", "chrome"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!("no Chromium found for the browser test: {INSTALL}");
}

pub struct Browser {
    child: Child,
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts a headless Chromium and attaches to its one page.
    pub fn start() -> Browser {
        let profile = tempfile::tempdir().expect("a profile directory");
        let port = free_port();
        let log = profile.path().join("chromium.log");
        let mut child = Command::new(binary())
            .args([
                "--headless",
                // Tests run as root in CI, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--window-size=1280,2000",
                &format!("--remote-debugging-port={port}"),
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("chromium's log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start Chromium ({e}): {INSTALL}"));
        let started = Instant::now();
        let url = loop {
            if let Some(url) = page_socket(port) {
                break url;
            }
            if started.elapsed() > Duration::from_secs(60) {
                // Not left running: a Chromium left behind loads the machine for hours.
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("Chromium gave no page to attach to within 60 s; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let (socket, _) = match tungstenite::connect(url.as_str()) {
            Ok(attached) => attached,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("cannot attach to Chromium's page: {e}");
            }
        };
        if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .expect("a read timeout");
        }
        Browser {
            child,
            socket,
            next_id: 0,
            _profile: profile,
        }
    }

    /// Sends a DevTools command and waits for its result (events on the way are skipped).
    pub fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let reply = self.try_call(method, &params);
        assert!(reply["error"].is_null(), "{method} failed: {reply}");
        reply["result"].clone()
    }

    /// Sends a DevTools command: its whole reply, which holds its result or its error.
    fn try_call(&mut self, method: &str, params: &serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let command = serde_json::json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(Message::text(command.to_string()))
            .expect("send to Chromium");
        loop {
            let message = self.socket.read().expect("read from Chromium");
            let Message::Text(text) = message else {
                continue;
            };
            let reply: serde_json::Value =
                serde_json::from_str(text.as_str()).expect("Chromium speaks JSON");
            if reply["id"] == id {
                return reply;
            }
        }
    }

    /// Opens `url` and waits until its document has loaded.
    pub fn open(&mut self, url: &str) {
        self.call("Page.navigate", serde_json::json!({ "url": url }));
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'");
    }

    /// The value of the JavaScript `expression`, evaluated in the page (as DevTools does,
    /// so the page's own Content-Security-Policy does not apply). An evaluation the page's
    /// reload cut short (its context destroyed) is made again in the new page.
    pub fn eval(&mut self, expression: &str) -> serde_json::Value {
        let params = serde_json::json!({ "expression": expression, "returnByValue": true });
        let mut tries = 0;
        let result = loop {
            let reply = self.try_call("Runtime.evaluate", &params);
            if reply["error"].is_null() {
                break reply["result"].clone();
            }
            tries += 1;
            assert!(tries < 50, "Runtime.evaluate failed: {reply}");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            result["exceptionDetails"].is_null(),
            "{expression} threw: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Waits until `condition` (JavaScript) is true in the page, for up to 60 s.
    pub fn wait_for(&mut self, condition: &str) {
        let started = Instant::now();
        // A navigation in progress can destroy the context an evaluation runs in.
        let guarded = format!(
            "(() => {{ try {{ return !!({condition}); }} catch (e) {{ return false; }} }})()"
        );
        while self.eval(&guarded) != serde_json::Value::Bool(true) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the page never satisfied {condition}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A PNG of the page as it is, written to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let result = self.call(
            "Page.captureScreenshot",
            serde_json::json!({ "format": "png", "captureBeyondViewport": true }),
        );
        let data = result["data"].as_str().expect("a screenshot");
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("base64 from Chromium");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(path, png).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The WebSocket address of Chromium's page on DevTools `port`, once it answers.
fn page_socket(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    // Chromium keeps the connection open: read the body by its length.
    let mut response = Vec::new();
    let mut chunk = [0; 8192];
    let body = loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        response.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&response);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })?;
        if body.len() >= length {
            break body.to_string();
        }
    };
    let targets: serde_json::Value = serde_json::from_str(&body).ok()?;
    targets.as_array()?.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"]
        .as_str()
        .map(str::to_string)
}
