//! What a plugin instance can reach: nothing but its own memory, a clock, randomness, and
//! stdout/stderr, which go to weir's log under the plugin's name.
//!
//! WASI 0.2 is linked so that components built with Rust's standard library load, but the
//! context grants nothing: no preopened directory (every open fails), no environment
//! variable, no argument, no socket (every address is refused and name lookup is off).
//! Memory is capped per instance by [`MemoryCap`]; time by the deadline in [`HostState`],
//! which the engine's epoch checks while the plugin runs wasm and [`bound_blocking_calls`]
//! enforces while it waits in WASI.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime::{ResourceLimiter, StoreContextMut};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{DynPollable, OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_io::bindings::wasi::io::poll::{Host as _, HostPollable as _};

/// The store data of one plugin instance.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub cap: MemoryCap,
    /// When the running call (or start-up) must end; `None` between calls.
    pub deadline: Option<Instant>,
}

impl HostState {
    pub fn new(memory_bytes: usize, output: &PluginOutput) -> HostState {
        let wasi = WasiCtx::builder()
            .stdout(output.stream("stdout"))
            .stderr(output.stream("stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            cap: MemoryCap {
                limit: memory_bytes,
                reached: None,
            },
            deadline: None,
        }
    }
}

/// The `wasi:io/poll` interface of the WASI version wasmtime-wasi links (its
/// `src/p2/wit/deps/io.wit`). A plugin blocks only here: its clocks' sleeps, and any
/// other wait, are a `poll` or a `pollable.block`.
const POLL: &str = "wasi:io/poll@0.2.12";

/// Replaces wasmtime-wasi's `poll` and `pollable.block` with the same waits run under the
/// call's deadline: a plugin asleep in WASI (`std::thread::sleep`, even for ever) traps
/// with [`wasmtime::Trap::Interrupt`] at its deadline, exactly as a plugin spinning in
/// wasm does. The epoch deadline alone could not stop it: it is only checked in wasm.
///
/// Call after `add_to_linker_sync`. Fails if the two functions were not already defined
/// under [`POLL`] (a wasmtime upgrade that moved the WASI version), rather than leave
/// them unbounded.
pub fn bound_blocking_calls(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    let mut poll = linker.instance(POLL)?;
    // Defining a name that exists fails while shadowing is off: that is the check that
    // wasmtime-wasi's functions are the ones being replaced.
    let probe = poll.func_wrap("poll", |_: StoreContextMut<'_, HostState>, (): ()| Ok(()));
    if probe.is_ok() {
        wasmtime::bail!(
            "weir bounds plugins' blocking WASI calls in `{POLL}`, which this wasmtime-wasi \
             does not link: update `POLL` in runtime/src/plugin/sandbox.rs"
        );
    }
    linker.allow_shadowing(true);
    let mut poll = linker.instance(POLL)?;
    poll.func_wrap(
        "poll",
        |mut store: StoreContextMut<'_, HostState>, (pollables,): (Vec<Resource<DynPollable>>,)| {
            let state = store.data_mut();
            let deadline = state.deadline;
            let table = &mut state.table;
            let ready = wasmtime_wasi::runtime::in_tokio(until(deadline, table.poll(pollables)))?;
            Ok((ready,))
        },
    )?;
    poll.func_wrap(
        "[method]pollable.block",
        |mut store: StoreContextMut<'_, HostState>, (pollable,): (Resource<DynPollable>,)| {
            let state = store.data_mut();
            let deadline = state.deadline;
            let table = &mut state.table;
            wasmtime_wasi::runtime::in_tokio(until(deadline, table.block(pollable)))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Runs a wait until it ends or `deadline` passes; past it, the call traps as on an epoch
/// deadline.
async fn until<T>(
    deadline: Option<Instant>,
    wait: impl Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    let Some(deadline) = deadline else {
        return wait.await;
    };
    match tokio::time::timeout_at(deadline.into(), wait).await {
        Ok(result) => result,
        Err(_) => Err(wasmtime::Trap::Interrupt.into()),
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The memory cap of one instance: a growth past `limit` bytes traps, and is remembered
/// so the failure reads `plugin_oom` rather than a generic trap.
pub struct MemoryCap {
    limit: usize,
    /// The size the plugin asked for when it hit the cap.
    pub reached: Option<usize>,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.reached = Some(desired);
            return Err(wasmtime::format_err!(
                "memory cap of {} MiB reached (asked for {} MiB)",
                self.limit >> 20,
                desired >> 20
            ));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million is far beyond any real plugin.
        Ok(desired <= 1 << 20)
    }
}

/// A plugin's stdout and stderr: complete lines go to weir's log, tagged with the plugin's
/// name; the last stderr line is kept to explain a trap (a Rust panic prints its message
/// there just before it aborts).
#[derive(Clone)]
pub struct PluginOutput {
    plugin: Arc<str>,
    state: Arc<Mutex<OutputState>>,
}

#[derive(Default)]
struct OutputState {
    partial: [Vec<u8>; 2],
    last_stderr: Option<String>,
}

/// Longest line logged; the rest is cut, so a plugin cannot flood the log with one line.
const MAX_LINE: usize = 4096;

impl PluginOutput {
    pub fn new(plugin: &str) -> PluginOutput {
        PluginOutput {
            plugin: plugin.into(),
            state: Arc::default(),
        }
    }

    fn stream(&self, name: &'static str) -> PluginStream {
        PluginStream {
            output: self.clone(),
            stderr: name == "stderr",
        }
    }

    /// Takes the last line the plugin wrote to stderr (including an unfinished one).
    pub fn take_last_stderr(&self) -> Option<String> {
        let mut state = self.state.lock().expect("plugin output");
        let partial = std::mem::take(&mut state.partial[1]);
        if !partial.is_empty() {
            let line = String::from_utf8_lossy(&partial).trim_end().to_string();
            self.log(true, &line);
            state.last_stderr = Some(line);
        }
        state.last_stderr.take()
    }

    fn write(&self, stderr: bool, bytes: &[u8]) {
        let mut state = self.state.lock().expect("plugin output");
        let buffer = &mut state.partial[usize::from(stderr)];
        buffer.extend_from_slice(bytes);
        let mut lines = Vec::new();
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            lines.push(
                String::from_utf8_lossy(&line[..line.len().min(MAX_LINE)])
                    .trim_end()
                    .to_string(),
            );
        }
        if buffer.len() > MAX_LINE {
            let line = String::from_utf8_lossy(&buffer[..MAX_LINE]).to_string();
            buffer.clear();
            lines.push(line);
        }
        for line in lines {
            self.log(stderr, &line);
            // Rust's panic output ends with a hint about backtraces; the message is the
            // line before it.
            if stderr && !line.starts_with("note: run with `RUST_BACKTRACE") {
                state.last_stderr = Some(line);
            }
        }
    }

    fn log(&self, stderr: bool, line: &str) {
        let stream = if stderr { "stderr" } else { "stdout" };
        tracing::info!(plugin = %self.plugin, stream, "{line}");
    }
}

struct PluginStream {
    output: PluginOutput,
    stderr: bool,
}

impl IsTerminal for PluginStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for PluginStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(PluginStream {
            output: self.output.clone(),
            stderr: self.stderr,
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(PluginStream {
            output: self.output.clone(),
            stderr: self.stderr,
        })
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for PluginStream {
    async fn ready(&mut self) {}
}

impl OutputStream for PluginStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.output.write(self.stderr, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for PluginStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.output.write(self.stderr, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
