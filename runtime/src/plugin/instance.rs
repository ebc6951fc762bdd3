//! One loaded plugin of either kind: its compiled and linked component, the live instance,
//! and a fresh instance after a call that failed.
//!
//! The two WIT worlds (`transform`, `resolver`) differ only in their call; loading,
//! sandboxing, limits, failure classification and instance replacement are the same and
//! live here. [`World`] is the small part `bindgen!` generates differently per world.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store, UpdateDeadline};

use super::engine::{self, TICK};
use super::sandbox::{HostState, PluginOutput};
use super::stats::PluginStats;
use super::{Failure, Limits, PluginSpec};

/// The bindings of one WIT world.
pub trait World: Sized {
    /// The world's name in `plugins/wit/weir.wit`, for error messages.
    const NAME: &'static str;
    /// A component linked and ready to instantiate.
    type Pre;

    fn pre(linker: &Linker<HostState>, component: &Component) -> wasmtime::Result<Self::Pre>;
    fn engine(pre: &Self::Pre) -> &Engine;
    fn instantiate(pre: &Self::Pre, store: &mut Store<HostState>) -> wasmtime::Result<Self>;
    fn init(
        &self,
        store: &mut Store<HostState>,
        config: &str,
    ) -> wasmtime::Result<Result<(), String>>;
}

/// Implements [`World`] for the bindings `bindgen!` generated for one world (`$world` and
/// `$pre` are its generated types, `$name` the world's name).
macro_rules! world {
    ($world:ident, $pre:ident, $name:literal) => {
        impl $crate::plugin::instance::World for $world {
            const NAME: &'static str = $name;
            type Pre = $pre<$crate::plugin::sandbox::HostState>;

            fn pre(
                linker: &wasmtime::component::Linker<$crate::plugin::sandbox::HostState>,
                component: &wasmtime::component::Component,
            ) -> wasmtime::Result<Self::Pre> {
                $pre::new(linker.instantiate_pre(component)?)
            }
            fn engine(pre: &Self::Pre) -> &wasmtime::Engine {
                pre.engine()
            }
            fn instantiate(
                pre: &Self::Pre,
                store: &mut wasmtime::Store<$crate::plugin::sandbox::HostState>,
            ) -> wasmtime::Result<Self> {
                pre.instantiate(store)
            }
            fn init(
                &self,
                store: &mut wasmtime::Store<$crate::plugin::sandbox::HostState>,
                config: &str,
            ) -> wasmtime::Result<Result<(), String>> {
                self.call_init(store, config)
            }
        }
    };
}
pub(crate) use world;

/// A loaded plugin, with at most one live instance.
pub struct Plugin<W: World> {
    spec: PluginSpec,
    pre: W::Pre,
    output: PluginOutput,
    instance: Option<(Store<HostState>, W)>,
    /// Instances started, including the first.
    pub instances: u64,
    /// Its calls by outcome, and their time.
    stats: Arc<PluginStats>,
}

impl<W: World> Plugin<W> {
    /// Compiles (or loads from the cache) and links the plugin, and starts an instance, so
    /// a bad config fails at start.
    pub fn load(spec: PluginSpec) -> Result<Plugin<W>, String> {
        let engine = engine::engine(spec.limits.fuel.is_some());
        let wasm = std::fs::read(&spec.wasm).map_err(|e| {
            format!(
                "plugin `{}`: cannot read {}: {e}. Build it with `weir plugin build`",
                spec.name,
                spec.wasm.display()
            )
        })?;
        let component = engine::load_component(engine, &wasm, engine::cache_dir().as_deref())
            .map_err(|e| {
                format!(
                    "plugin `{}`: {} is not a WebAssembly component weir can run: {e}",
                    spec.name,
                    spec.wasm.display()
                )
            })?;
        let pre = link::<W>(engine, &component).map_err(|e| {
            format!(
                "plugin `{}`: {} does not fit the weir:plugin/{} world: {e:#}",
                spec.name,
                spec.wasm.display(),
                W::NAME
            )
        })?;
        let output = PluginOutput::new(&spec.name);
        let stats = Arc::new(PluginStats::new(&spec.name, W::NAME));
        let mut plugin = Plugin {
            spec,
            pre,
            output,
            instance: None,
            instances: 0,
            stats,
        };
        if let Err(failure) = plugin.instance() {
            return Err(format!(
                "plugin `{}` failed to start: {}",
                plugin.spec.name,
                failure.reason()
            ));
        }
        Ok(plugin)
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// A call the host could not make (it could not encode the batch), counted as one.
    pub fn host_failure(&self, message: String) -> Failure {
        let failure = Failure::Host(message);
        self.stats.record(Some(&failure), Duration::ZERO);
        failure
    }

    /// Its calls by outcome, and their time, counted as they end.
    pub fn stats(&self) -> Arc<PluginStats> {
        self.stats.clone()
    }

    /// The live instance, started (and `init` called) if there is none, under the
    /// start-up deadline. Any failure to start is [`Failure::Init`].
    fn instance(&mut self) -> Result<&mut (Store<HostState>, W), Failure> {
        if self.instance.is_none() {
            let limits = &self.spec.limits;
            let mut store = Store::new(
                W::engine(&self.pre),
                HostState::new(limits.memory_bytes(), &self.output),
            );
            store.limiter(|state| &mut state.cap);
            // What the host copies out of one call (the output batch, row errors, every
            // string) is bounded by the plugin's memory cap, as its own memory is: a
            // plugin cannot make weir hold more for it by returning one string many times.
            store.set_hostcall_fuel(limits.memory_bytes());
            store.set_max_component_handles(super::sandbox::MAX_RESOURCES);
            store.epoch_deadline_callback(past_deadline);
            self.output.new_call();
            arm(limits, &mut store, limits.start_timeout);
            let started = W::instantiate(&self.pre, &mut store).and_then(|bindings| {
                let config = self.spec.config.to_string();
                bindings.init(&mut store, &config).map(|r| (bindings, r))
            });
            store.data_mut().deadline = None;
            let bindings = match started {
                Ok((bindings, Ok(()))) => bindings,
                Ok((_, Err(message))) => return Err(Failure::Init(message)),
                Err(e) => {
                    let why = match self.failure(&store, e) {
                        Failure::Timeout { .. } => format!(
                            "a fresh instance did not start within its {} ms start-up \
                             deadline (limits.start_timeout_ms)",
                            limits.start_timeout.as_millis()
                        ),
                        other => format!("a fresh instance failed to start: {}", other.reason()),
                    };
                    return Err(Failure::Init(why));
                }
            };
            self.instances += 1;
            self.instance = Some((store, bindings));
        }
        Ok(self.instance.as_mut().expect("an instance"))
    }

    fn failure(&self, store: &Store<HostState>, error: wasmtime::Error) -> Failure {
        if let Some(asked) = store.data().cap.reached {
            return Failure::OutOfMemory {
                cap_mb: self.spec.limits.memory_mb,
                asked_mb: (asked >> 20) as u64,
            };
        }
        let text = format!("{error:#}");
        // wasmtime's error when lifting a result would copy more than the hostcall fuel
        // (set to the memory cap); its type is private, so it is known by its words.
        if text.contains("fuel allocated for hostcalls has been exhausted") {
            return Failure::BadOutput(format!(
                "the call returned more data than its memory cap of {} MiB lets the host \
                 copy (limits.memory_mb)",
                self.spec.limits.memory_mb
            ));
        }
        match error.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => Failure::Timeout {
                limit_ms: self.spec.limits.timeout.as_millis() as u64,
            },
            Some(wasmtime::Trap::OutOfFuel) => Failure::OutOfFuel {
                fuel: self.spec.limits.fuel.unwrap_or(0),
            },
            Some(trap) => Failure::Trap {
                trap: trap.to_string(),
                stderr: self.output.take_last_stderr(),
            },
            None => Failure::Trap {
                trap: text,
                stderr: self.output.take_last_stderr(),
            },
        }
    }

    /// One call into the plugin under its limits, then `check` on what it returned. On any
    /// failure but an error the plugin returned itself, the instance is dropped (a trap
    /// can leave it in any state) and the next call starts a fresh one.
    pub fn call<R, T>(
        &mut self,
        invoke: impl FnOnce(&W, &mut Store<HostState>) -> wasmtime::Result<Result<R, String>>,
        check: impl FnOnce(R) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let started = Instant::now();
        let result = {
            let limits = self.spec.limits.clone();
            let output = self.output.clone();
            match self.instance() {
                Ok((store, bindings)) => {
                    // The deadline counts from here, not from the instance's start.
                    output.new_call();
                    arm(&limits, store, limits.timeout);
                    let result = invoke(bindings, store);
                    store.data_mut().deadline = None;
                    Ok(result)
                }
                Err(failure) => Err(failure),
            }
        };
        let outcome = match result {
            Err(failure) => Err(failure),
            Ok(Ok(Ok(output))) => check(output),
            Ok(Ok(Err(message))) => Err(Failure::Returned(message)),
            Ok(Err(e)) => {
                let (store, _) = self.instance.as_ref().expect("the instance that failed");
                Err(self.failure(store, e))
            }
        };
        self.stats.record(outcome.as_ref().err(), started.elapsed());
        if let Err(failure) = &outcome {
            // The log gets the reason's start; the dead letters get it whole.
            let mut reason = failure.reason();
            if super::cut(&mut reason, 512) {
                reason.push('…');
            }
            tracing::warn!(
                plugin = %self.spec.name,
                elapsed_ms = started.elapsed().as_millis() as u64,
                %reason,
                "plugin call failed"
            );
            if failure.poisons_instance() {
                self.instance = None;
            }
        }
        outcome
    }
}

/// Sets the deadline (and fuel) for what runs next in `store`: `budget` from now. The
/// epoch deadline is set in whole ticks, so it may come up to a tick early; then
/// [`past_deadline`] extends it until the time has really come.
fn arm(limits: &Limits, store: &mut Store<HostState>, budget: Duration) {
    store.data_mut().deadline = Some(Instant::now() + budget);
    store.set_epoch_deadline(ticks(budget));
    if let Some(fuel) = limits.fuel {
        store
            .set_fuel(fuel)
            .expect("fuel is enabled for this engine");
    }
}

/// Epoch ticks for `time`, at least one.
fn ticks(time: Duration) -> u64 {
    (time.as_nanos().div_ceil(TICK.as_nanos()) as u64).max(1)
}

/// Called when the store's epoch deadline is reached: trap if the call's time is up,
/// else wait the ticks still left (a deadline is never earlier than configured).
fn past_deadline(
    store: wasmtime::StoreContextMut<'_, HostState>,
) -> wasmtime::Result<UpdateDeadline> {
    let now = Instant::now();
    Ok(match store.data().deadline {
        Some(deadline) if now < deadline => UpdateDeadline::Continue(ticks(deadline - now)),
        _ => UpdateDeadline::Interrupt,
    })
}

fn link<W: World>(engine: &Engine, component: &Component) -> wasmtime::Result<W::Pre> {
    let mut linker = Linker::<HostState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    super::sandbox::bound_blocking_calls(&mut linker)?;
    W::pre(&linker, component)
}
