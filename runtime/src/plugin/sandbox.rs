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

/// The most WASI resources (streams, pollables) an instance may hold at once.
pub const MAX_RESOURCES: usize = 10_000;

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
            // What a plugin may ask the host to allocate for it in one call for random
            // bytes: no more than it may hold itself.
            .max_random_size(memory_bytes as u64)
            .build();
        let mut table = ResourceTable::new();
        // Streams, pollables and the like a plugin holds at once: a handful for a real
        // plugin; each costs host memory outside the memory cap.
        table.set_max_capacity(MAX_RESOURCES);
        HostState {
            wasi,
            table,
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

struct OutputState {
    partial: [Vec<u8>; 2],
    /// Dropping the rest of a line cut at [`MAX_LINE`], per stream.
    skipping: [bool; 2],
    last_stderr: Option<String>,
    /// Lines this call may still log.
    lines_left: usize,
    /// Lines this call wrote past its budget.
    lines_unlogged: u64,
}

impl Default for OutputState {
    fn default() -> Self {
        OutputState {
            partial: Default::default(),
            skipping: [false; 2],
            last_stderr: None,
            lines_left: LINES_PER_CALL,
            lines_unlogged: 0,
        }
    }
}

/// Lines of a plugin's output logged per call (or start); the rest are only counted.
pub const LINES_PER_CALL: usize = 1000;

/// The most one write to stdout or stderr may carry: what `check-write` permits. A
/// plugin that writes more traps (WASI requires it to ask first).
const WRITE_PERMIT: usize = 64 * 1024;

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

    /// Takes what the plugin wrote: complete lines are logged (at most
    /// [`LINES_PER_CALL`] per call; the rest are counted), a line longer than
    /// [`MAX_LINE`] is cut. One pass over `bytes`, which is at most [`WRITE_PERMIT`].
    fn write(&self, stderr: bool, bytes: &[u8]) {
        let mut state = self.state.lock().expect("plugin output");
        let stream = usize::from(stderr);
        let mut rest = bytes;
        if state.skipping[stream] {
            // The rest of a line cut at MAX_LINE in an earlier write.
            match memchr::memchr(b'\n', rest) {
                Some(end) => {
                    rest = &rest[end + 1..];
                    state.skipping[stream] = false;
                }
                None => return,
            }
        }
        while !rest.is_empty() {
            let (part, complete) = match memchr::memchr(b'\n', rest) {
                Some(end) => (&rest[..end], true),
                None => (rest, false),
            };
            rest = &rest[part.len() + usize::from(complete)..];
            let buffer = &mut state.partial[stream];
            let room = MAX_LINE.saturating_sub(buffer.len());
            buffer.extend_from_slice(&part[..part.len().min(room)]);
            if complete || buffer.len() >= MAX_LINE {
                let line = String::from_utf8_lossy(buffer).trim_end().to_string();
                buffer.clear();
                if !complete {
                    // The rest of an overlong line is dropped up to its end.
                    match memchr::memchr(b'\n', rest) {
                        Some(end) => rest = &rest[end + 1..],
                        None => {
                            rest = &[];
                            state.skipping[stream] = true;
                        }
                    }
                }
                self.emit(&mut state, stderr, line);
            }
        }
    }

    fn emit(&self, state: &mut OutputState, stderr: bool, line: String) {
        if state.lines_left > 0 {
            state.lines_left -= 1;
            self.log(stderr, &line);
        } else {
            state.lines_unlogged += 1;
        }
        // Rust's panic output ends with a hint about backtraces; the message is the line
        // before it.
        if stderr && !line.starts_with("note: run with `RUST_BACKTRACE") {
            state.last_stderr = Some(line);
        }
    }

    /// Starts a call: the line budget is refilled, and lines the last call could not log
    /// are counted in the log.
    pub fn new_call(&self) {
        let mut state = self.state.lock().expect("plugin output");
        if state.lines_unlogged > 0 {
            tracing::warn!(
                plugin = %self.plugin,
                lines = state.lines_unlogged,
                "the plugin wrote more lines in one call than weir logs ({LINES_PER_CALL}); \
                 the rest were not logged"
            );
        }
        state.lines_unlogged = 0;
        state.lines_left = LINES_PER_CALL;
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
        if bytes.len() > WRITE_PERMIT {
            return Err(StreamError::Trap(wasmtime::format_err!(
                "the plugin wrote {} bytes at once to {}, more than the {WRITE_PERMIT} \
                 `check-write` permits",
                bytes.len(),
                if self.stderr { "stderr" } else { "stdout" }
            )));
        }
        self.output.write(self.stderr, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_PERMIT)
    }
}

impl tokio::io::AsyncWrite for PluginStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let taken = buf.len().min(WRITE_PERMIT);
        self.output.write(self.stderr, &buf[..taken]);
        Poll::Ready(Ok(taken))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_split_into_bounded_lines_in_one_pass() {
        let out = PluginOutput::new("p");
        out.write(true, b"first\nsecond");
        out.write(true, b" half\n");
        assert_eq!(out.take_last_stderr().as_deref(), Some("second half"));
        // A line longer than MAX_LINE is cut there, across writes too.
        out.write(true, &vec![b'x'; MAX_LINE + 10]);
        out.write(true, &[b'y'; 100]);
        out.write(true, b"y\nafter\n");
        let state = out.state.lock().unwrap();
        assert_eq!(state.last_stderr.as_deref(), Some("after"));
        drop(state);
        // A call logs at most LINES_PER_CALL lines; the rest are counted.
        out.new_call();
        out.write(false, &b"\n".repeat(WRITE_PERMIT));
        let state = out.state.lock().unwrap();
        assert_eq!(state.lines_left, 0);
        assert_eq!(state.lines_unlogged, (WRITE_PERMIT - LINES_PER_CALL) as u64);
    }

    #[test]
    fn a_write_past_the_permit_traps() {
        let mut stream = PluginOutput::new("p").stream("stdout");
        assert!(stream.write(Bytes::from(vec![b'a'; WRITE_PERMIT])).is_ok());
        assert!(matches!(
            stream.write(Bytes::from(vec![b'a'; WRITE_PERMIT + 1])),
            Err(StreamError::Trap(_))
        ));
    }
}
