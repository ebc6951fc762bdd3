//! One loaded plugin of either kind: its compiled and linked component, the live instance,
//! and a fresh instance after a call that failed.
//!
//! The two WIT worlds (`transform`, `resolver`) differ only in their call; loading,
//! sandboxing, limits, failure classification and instance replacement are the same and
//! live here. [`World`] is the small part `bindgen!` generates differently per world.

use std::time::Instant;

use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};

use super::engine::{self, TICK};
use super::sandbox::{HostState, PluginOutput};
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
        let mut plugin = Plugin {
            spec,
            pre,
            output,
            instance: None,
            instances: 0,
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

    /// The live instance, started (and `init` called) if there is none.
    fn instance(&mut self) -> Result<&mut (Store<HostState>, W), Failure> {
        if self.instance.is_none() {
            let mut store = Store::new(
                W::engine(&self.pre),
                HostState::new(self.spec.limits.memory_bytes(), &self.output),
            );
            store.limiter(|state| &mut state.cap);
            arm(&self.spec.limits, &mut store);
            let bindings =
                W::instantiate(&self.pre, &mut store).map_err(|e| self.failure(&store, e))?;
            arm(&self.spec.limits, &mut store);
            let config = self.spec.config.to_string();
            match bindings.init(&mut store, &config) {
                Ok(Ok(())) => {}
                Ok(Err(message)) => return Err(Failure::Init(message)),
                Err(e) => return Err(self.failure(&store, e)),
            }
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
                trap: format!("{error:#}"),
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
            let (store, bindings) = self.instance()?;
            // The deadline counts from here, not from the instance's start.
            arm(&limits, store);
            invoke(bindings, store)
        };
        let outcome = match result {
            Ok(Ok(output)) => check(output),
            Ok(Err(message)) => Err(Failure::Returned(message)),
            Err(e) => {
                let (store, _) = self.instance.as_ref().expect("the instance that failed");
                Err(self.failure(store, e))
            }
        };
        if let Err(failure) = &outcome {
            tracing::warn!(
                plugin = %self.spec.name,
                elapsed_ms = started.elapsed().as_millis() as u64,
                reason = %failure.reason(),
                "plugin call failed"
            );
            if failure.poisons_instance() {
                self.instance = None;
            }
        }
        outcome
    }
}

/// Sets the deadline (and fuel) for the next call into `store`.
fn arm(limits: &Limits, store: &mut Store<HostState>) {
    let ticks = limits.timeout.as_millis().div_ceil(TICK.as_millis()) as u64;
    store.set_epoch_deadline(ticks.max(1));
    if let Some(fuel) = limits.fuel {
        store
            .set_fuel(fuel)
            .expect("fuel is enabled for this engine");
    }
}

fn link<W: World>(engine: &Engine, component: &Component) -> wasmtime::Result<W::Pre> {
    let mut linker = Linker::<HostState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    W::pre(&linker, component)
}
