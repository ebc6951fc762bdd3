//! A transform plugin: one instance at a time, called once per change batch.
//!
//! The batch crosses the boundary as Arrow IPC. The output is checked before anything
//! downstream sees it (the envelope columns unchanged in name and type, the row images
//! alike, the primary key present, the source rows in range and in order); every output
//! row gets the source position of the input row it came from, so checkpoints and dead
//! letters stay exact whatever the plugin drops or repeats.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Schema};
use wasmtime::Store;
use wasmtime::component::{Component, Linker};

use super::engine::{self, TICK};
use super::sandbox::{HostState, PluginOutput};
use super::{Failure, Limits, PluginSpec};
use crate::envelope::{AFTER, BEFORE, ChangeBatch, Op};
use weir_envelope::ipc;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../plugins/wit",
        world: "transform",
    });
}

use bindings::{Transform, TransformPre};

/// What a call made of a batch.
#[derive(Debug)]
pub struct Transformed {
    pub batch: ChangeBatch,
    /// Input rows the plugin refused, with its reason.
    pub rejected: Vec<(usize, String)>,
}

/// A loaded transform plugin.
pub struct TransformPlugin {
    spec: PluginSpec,
    pre: TransformPre<HostState>,
    output: PluginOutput,
    instance: Option<(Store<HostState>, Transform)>,
    /// Instances started, including the first.
    pub instances: u64,
}

impl TransformPlugin {
    /// Compiles (or loads from the cache) and links the plugin, and starts an instance, so
    /// a bad config fails at start.
    pub fn load(spec: PluginSpec) -> Result<TransformPlugin, String> {
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
        let pre = link(engine, &component).map_err(|e| {
            format!(
                "plugin `{}`: {} does not fit the weir:plugin/transform world: {e:#}",
                spec.name,
                spec.wasm.display()
            )
        })?;
        let output = PluginOutput::new(&spec.name);
        let mut plugin = TransformPlugin {
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
    fn instance(&mut self) -> Result<&mut (Store<HostState>, Transform), Failure> {
        if self.instance.is_none() {
            let mut store = Store::new(
                self.pre.engine(),
                HostState::new(self.spec.limits.memory_bytes(), &self.output),
            );
            store.limiter(|state| &mut state.cap);
            arm(&self.spec.limits, &mut store);
            let bindings = self
                .pre
                .instantiate(&mut store)
                .map_err(|e| self.failure(&store, e))?;
            arm(&self.spec.limits, &mut store);
            let config = self.spec.config.to_string();
            match bindings.call_init(&mut store, &config) {
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

    /// Transforms one batch. On a failure the instance is dropped (a trap can leave it in
    /// any state) and the next call starts a fresh one.
    pub fn call(&mut self, input: &ChangeBatch) -> Result<Transformed, Failure> {
        let bytes = ipc::write(&input.data).map_err(Failure::Host)?;
        let started = Instant::now();
        let result = {
            let limits = self.spec.limits.clone();
            let (store, bindings) = self.instance()?;
            // The deadline counts from here, not from the instance's start.
            arm(&limits, store);
            bindings.call_transform(&mut *store, &bytes)
        };
        let outcome = match result {
            Ok(Ok(output)) => check_output(input, output),
            Ok(Err(message)) => Err(Failure::Returned(message)),
            Err(e) => {
                let (store, _) = self.instance.as_ref().expect("the instance that failed");
                Err(self.failure(store, e))
            }
        };
        if let Err(failure) = &outcome {
            tracing::warn!(plugin = %self.spec.name, elapsed_ms = started.elapsed().as_millis() as u64, reason = %failure.reason(), "plugin call failed");
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

fn link(
    engine: &wasmtime::Engine,
    component: &Component,
) -> wasmtime::Result<TransformPre<HostState>> {
    let mut linker = Linker::<HostState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    TransformPre::new(linker.instantiate_pre(component)?)
}

fn bad(message: impl Into<String>) -> Failure {
    Failure::BadOutput(message.into())
}

/// Checks what the plugin returned and builds the output change batch.
fn check_output(
    input: &ChangeBatch,
    output: bindings::weir::plugin::types::Transformed,
) -> Result<Transformed, Failure> {
    let inputs = input.num_rows();
    let data = ipc::read(output.batch).map_err(bad)?;
    let in_schema = input.data.schema();
    let out_schema = data.schema();
    // The envelope columns, in order, with their types; only the row images may change.
    if out_schema.fields().len() != in_schema.fields().len() {
        return Err(bad(format!(
            "the batch has {} columns, the change envelope has {} ({})",
            out_schema.fields().len(),
            in_schema.fields().len(),
            names(&in_schema)
        )));
    }
    for (out, inp) in out_schema.fields().iter().zip(in_schema.fields()) {
        if out.name() != inp.name() {
            return Err(bad(format!(
                "column `{}` where the envelope has `{}` ({})",
                out.name(),
                inp.name(),
                names(&in_schema)
            )));
        }
        let image = out.name() == BEFORE || out.name() == AFTER;
        if !image && out.data_type() != inp.data_type() {
            return Err(bad(format!(
                "envelope column `{}` is {}, not {}",
                out.name(),
                out.data_type(),
                inp.data_type()
            )));
        }
    }
    let before = out_schema
        .field_with_name(BEFORE)
        .expect("checked")
        .data_type();
    let after = out_schema
        .field_with_name(AFTER)
        .expect("checked")
        .data_type();
    let DataType::Struct(row_fields) = after else {
        return Err(bad(format!("`after` is {after}, not a struct")));
    };
    if before != after {
        return Err(bad("`before` and `after` have different columns"));
    }
    for key in &input.table.primary_key {
        if row_fields.find(key).is_none() {
            return Err(bad(format!("the rows lost primary key column `{key}`")));
        }
    }
    let ops = data.column(0).as_string::<i32>();
    if let Some(i) = (0..ops.len()).find(|&i| ops.is_null(i) || Op::parse(ops.value(i)).is_none()) {
        return Err(bad(format!("row {i} has no valid `op`")));
    }
    let outputs = data.num_rows();
    let mut rejected = Vec::with_capacity(output.errors.len());
    for error in output.errors {
        let row = error.row as usize;
        if row >= inputs {
            return Err(bad(format!(
                "a row error names row {row}, but the batch has {inputs} rows"
            )));
        }
        rejected.push((row, error.message));
    }
    let positions = if output.source_rows.is_empty() {
        if outputs != inputs || !rejected.is_empty() {
            return Err(bad(format!(
                "{outputs} output rows for {inputs} input rows ({} refused) without `source-rows`",
                rejected.len()
            )));
        }
        input.positions.clone()
    } else {
        if output.source_rows.len() != outputs {
            return Err(bad(format!(
                "`source-rows` has {} entries for {outputs} output rows",
                output.source_rows.len()
            )));
        }
        let mut previous = 0;
        let mut positions = Vec::with_capacity(outputs);
        for &row in &output.source_rows {
            let row = row as usize;
            if row >= inputs || row < previous {
                return Err(bad(format!(
                    "`source-rows` must be input rows (< {inputs}) in non-decreasing order; found {row} after {previous}"
                )));
            }
            if rejected.iter().any(|(r, _)| *r == row) {
                return Err(bad(format!(
                    "input row {row} is both refused and in the output"
                )));
            }
            previous = row;
            positions.push(input.positions[row].clone());
        }
        positions
    };
    // Keep the table metadata the decoder put on the schema.
    let schema = Arc::new(Schema::new_with_metadata(
        out_schema.fields().clone(),
        in_schema.metadata().clone(),
    ));
    let data = data.with_schema(schema).map_err(|e| bad(e.to_string()))?;
    Ok(Transformed {
        batch: ChangeBatch {
            data,
            positions,
            checkpoint: input.checkpoint.clone(),
            table: input.table.clone(),
        },
        rejected,
    })
}

fn names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
