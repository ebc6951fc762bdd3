//! weir-plugin: write weir transforms in Rust and build them to wasm32-wasip2 components.
//!
//! Two ways to write a transform:
//!
//! - **Row by row**, a plain function over a typed change view, registered with one line:
//!
//!   ```ignore
//!   #[derive(serde::Deserialize)]
//!   struct Config { column: String, equals: String }
//!
//!   fn keep_matching(change: &mut Change, config: &Config) -> Result<Keep, String> {
//!       let row = change.after().or(change.before()).ok_or("a change without rows")?;
//!       Ok(Keep::when(row.get(&config.column)?.as_text() == Some(&config.equals)))
//!   }
//!   weir_plugin::row_transform!(keep_matching, Config);
//!   ```
//!
//! - **Batch by batch**, Arrow `RecordBatch` in and out, for speed: implement
//!   [`Transform`] and register it with [`export_transform!`].
//!
//! Either way the function is plain Rust: unit-test it natively with `cargo test` (see
//! [`testing`]); the export macros only generate the component's entry points when
//! building for wasm (`weir plugin build`). The contract is in `plugins/wit/weir.wit` and
//! `docs/plugins.md`.

pub mod change;
pub mod envelope;
#[doc(hidden)]
pub use weir_envelope::ipc;
pub mod testing;

pub use arrow_array;
pub use arrow_schema;
pub use arrow_select;
pub use change::{Change, Keep, Resolution, Row, Value};
pub use serde_json::Value as JsonValue;

use arrow_array::{Array, BooleanArray, RecordBatch};

/// An input row the plugin could not process, and why. weir sends that row to the
/// dead-letter output; the rest of the batch proceeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub row: u32,
    pub message: String,
}

/// What a batch transform returns.
#[derive(Debug, Clone)]
pub struct Output {
    /// The output change batch: the input's envelope columns, with row images that may
    /// have other columns.
    pub batch: RecordBatch,
    /// For every output row, the input row it came from (non-decreasing). `None` when the
    /// output rows are the input rows, one for one.
    pub source_rows: Option<Vec<u32>>,
    /// Input rows that failed; they must not be in the output.
    pub errors: Vec<RowError>,
}

impl Output {
    /// The output rows are the input rows, one for one (a map).
    pub fn rows(batch: RecordBatch) -> Output {
        Output {
            batch,
            source_rows: None,
            errors: Vec::new(),
        }
    }

    /// The input rows where `keep` is true (null counts as false).
    pub fn filtered(input: &RecordBatch, keep: &BooleanArray) -> Result<Output, String> {
        let batch = arrow_select::filter::filter_record_batch(input, keep)
            .map_err(|e| format!("filtering the batch: {e}"))?;
        let source_rows = (0..keep.len())
            .filter(|&i| keep.is_valid(i) && keep.value(i))
            .map(|i| i as u32)
            .collect();
        Ok(Output {
            batch,
            source_rows: Some(source_rows),
            errors: Vec::new(),
        })
    }
}

/// A transform working on whole change batches.
pub trait Transform: Sized + 'static {
    /// Builds the transform from its YAML `config` (as JSON; `null` when absent). An error
    /// stops the pipeline at start, so say what is wrong with the config.
    fn init(config: &JsonValue) -> Result<Self, String>;

    /// Transforms one change batch. An `Err` fails the whole batch (it goes to the
    /// dead-letter output); report a single bad row in [`Output::errors`] instead.
    fn transform(&mut self, batch: RecordBatch) -> Result<Output, String>;
}

/// The name of the one column of the `current` batch a resolver receives: a struct of the
/// table's row columns, null where the target has no row for the change's key.
pub const CURRENT: &str = "current";

/// What a resolver decides for one incoming change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Apply the change as it is.
    Apply,
    /// Leave the target as it is.
    Skip,
    /// Write the next row of [`Resolved::merged`] instead.
    Merge,
}

/// What a batch resolver returns.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// One per incoming change, in order.
    pub decisions: Vec<Decision>,
    /// One row per [`Decision::Merge`], in order, with the table's row columns (the fields
    /// of `after`) as top-level columns. `None` when nothing merges.
    pub merged: Option<RecordBatch>,
    /// Changes that could not be decided; weir dead-letters them.
    pub errors: Vec<RowError>,
}

/// A conflict resolver working on whole batches: the incoming change batch, and `current`
/// (one column [`CURRENT`], one row per change).
pub trait Resolve: Sized + 'static {
    /// Builds the resolver from its YAML `config` (as JSON; `null` when absent).
    fn init(config: &JsonValue) -> Result<Self, String>;

    /// Decides for every incoming change. An `Err` fails the whole batch.
    fn resolve(&mut self, incoming: RecordBatch, current: RecordBatch) -> Result<Resolved, String>;
}

/// The source table a batch is for (`public.orders`, `inventory.orders`; the pipeline's
/// `table.name` in a one-table pipeline), from the batch schema's `weir.table` metadata.
/// Each call carries one table's changes.
pub fn table_name(batch: &RecordBatch) -> Option<&str> {
    batch
        .schema_ref()
        .metadata()
        .get("weir.table")
        .map(String::as_str)
}

/// The target table a many-table pipeline routes the batch to (`weir.target` metadata);
/// `None` in a one-table pipeline, whose sink names its target.
pub fn target_table(batch: &RecordBatch) -> Option<&str> {
    batch
        .schema_ref()
        .metadata()
        .get("weir.target")
        .map(String::as_str)
}

/// Parses the config JSON the host passes to `init`.
pub fn parse_config(json: &str) -> Result<JsonValue, String> {
    if json.trim().is_empty() {
        return Ok(JsonValue::Null);
    }
    serde_json::from_str(json).map_err(|e| format!("the plugin config is not JSON: {e}"))
}

/// Deserializes a typed config, with a message that names the problem.
pub fn typed_config<C: serde::de::DeserializeOwned>(config: &JsonValue) -> Result<C, String> {
    C::deserialize(config).map_err(|e| format!("invalid plugin config: {e}"))
}

/// The component's entry points (wasm only).
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod bindings {
    pub mod transform {
        wit_bindgen::generate!({
            path: "../wit",
            world: "transform",
            pub_export_macro: true,
            export_macro_name: "export",
            default_bindings_module: "weir_plugin::bindings::transform",
        });
    }
    pub mod resolver {
        wit_bindgen::generate!({
            path: "../wit",
            world: "resolver",
            pub_export_macro: true,
            export_macro_name: "export_resolver_world",
            default_bindings_module: "weir_plugin::bindings::resolver",
        });
    }
}

/// Glue the export macros call; not part of the API.
#[doc(hidden)]
pub mod __export {
    use super::*;

    /// The state of one plugin instance (a transform or a resolver): built by `init`,
    /// used by every call.
    pub struct Instance<T> {
        plugin: Option<T>,
    }

    impl<T> Default for Instance<T> {
        fn default() -> Self {
            Self::new()
        }
    }

    impl<T> Instance<T> {
        pub const fn new() -> Self {
            Instance { plugin: None }
        }

        /// Builds the plugin with `make` (its kind's `init`) from the config JSON.
        pub fn init(
            &mut self,
            config: &str,
            make: fn(&JsonValue) -> Result<T, String>,
        ) -> Result<(), String> {
            self.plugin = Some(make(&parse_config(config)?)?);
            Ok(())
        }

        fn plugin(&mut self, call: &str) -> Result<&mut T, String> {
            self.plugin
                .as_mut()
                .ok_or_else(|| format!("{call} called before init"))
        }
    }

    impl<T: Resolve> Instance<T> {
        /// One call: IPC in, the decisions, merged rows (IPC) and errors out.
        #[allow(clippy::type_complexity)]
        pub fn resolve(
            &mut self,
            incoming: Vec<u8>,
            current: Vec<u8>,
        ) -> Result<(Vec<Decision>, Vec<u8>, Vec<(u32, String)>), String> {
            let plugin = self.plugin("resolve")?;
            let incoming = ipc::read_from_host(incoming)?;
            let resolved = plugin.resolve(incoming, ipc::read_from_host(current)?)?;
            let merged = match &resolved.merged {
                Some(batch) => ipc::write(batch)?,
                None => Vec::new(),
            };
            let errors = resolved
                .errors
                .into_iter()
                .map(|e| (e.row, e.message))
                .collect();
            Ok((resolved.decisions, merged, errors))
        }
    }

    impl<T: Transform> Instance<T> {
        /// One call: IPC in, the output's parts out (batch as IPC, source rows, errors).
        #[allow(clippy::type_complexity)]
        pub fn transform(
            &mut self,
            batch: Vec<u8>,
        ) -> Result<(Vec<u8>, Vec<u32>, Vec<(u32, String)>), String> {
            let plugin = self.plugin("transform")?;
            let input = ipc::read_from_host(batch)?;
            let output = plugin.transform(input)?;
            let bytes = ipc::write(&output.batch)?;
            let errors = output
                .errors
                .into_iter()
                .map(|e| (e.row, e.message))
                .collect();
            Ok((bytes, output.source_rows.unwrap_or_default(), errors))
        }
    }
}

/// Exports a [`Transform`] as the plugin's entry points. One per crate.
#[macro_export]
macro_rules! export_transform {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::bindings::transform::weir::plugin::types::{RowError, Transformed};

            ::std::thread_local! {
                static INSTANCE: ::std::cell::RefCell<$crate::__export::Instance<$plugin>> =
                    const { ::std::cell::RefCell::new($crate::__export::Instance::new()) };
            }

            struct WeirTransformExport;

            impl $crate::bindings::transform::Guest for WeirTransformExport {
                fn init(config: String) -> Result<(), String> {
                    INSTANCE.with_borrow_mut(|instance| {
                        instance.init(&config, <$plugin as $crate::Transform>::init)
                    })
                }

                fn transform(batch: Vec<u8>) -> Result<Transformed, String> {
                    INSTANCE.with_borrow_mut(|instance| {
                        let (batch, source_rows, errors) = instance.transform(batch)?;
                        Ok(Transformed {
                            batch,
                            source_rows,
                            errors: errors
                                .into_iter()
                                .map(|(row, message)| RowError { row, message })
                                .collect(),
                        })
                    })
                }
            }

            $crate::bindings::transform::export!(
                WeirTransformExport with_types_in $crate::bindings::transform
            );
        };
    };
}

/// Exports a row function `fn(&mut Change, &Config) -> Result<Keep, String>` as the
/// plugin's transform, with `Config` deserialized from the plugin's YAML `config`.
#[macro_export]
macro_rules! row_transform {
    ($function:path, $config:ty) => {
        #[doc(hidden)]
        pub struct WeirRowTransform {
            config: $config,
        }

        impl $crate::Transform for WeirRowTransform {
            fn init(config: &$crate::JsonValue) -> Result<Self, String> {
                Ok(WeirRowTransform {
                    config: $crate::typed_config(config)?,
                })
            }

            fn transform(
                &mut self,
                batch: $crate::arrow_array::RecordBatch,
            ) -> Result<$crate::Output, String> {
                let config = &self.config;
                $crate::change::map_rows(&batch, |change| $function(change, config))
            }
        }

        $crate::export_transform!(WeirRowTransform);
    };
}

/// Exports a [`Resolve`] as the plugin's entry points (the `resolver` world). One per crate.
#[macro_export]
macro_rules! export_resolver {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::bindings::resolver::weir::plugin::types::{Decision, Resolved, RowError};

            ::std::thread_local! {
                static INSTANCE: ::std::cell::RefCell<$crate::__export::Instance<$plugin>> =
                    const { ::std::cell::RefCell::new($crate::__export::Instance::new()) };
            }

            struct WeirResolverExport;

            impl $crate::bindings::resolver::Guest for WeirResolverExport {
                fn init(config: String) -> Result<(), String> {
                    INSTANCE.with_borrow_mut(|instance| {
                        instance.init(&config, <$plugin as $crate::Resolve>::init)
                    })
                }

                fn resolve(incoming: Vec<u8>, current: Vec<u8>) -> Result<Resolved, String> {
                    INSTANCE.with_borrow_mut(|instance| {
                        let (decisions, merged, errors) = instance.resolve(incoming, current)?;
                        Ok(Resolved {
                            decisions: decisions
                                .into_iter()
                                .map(|d| match d {
                                    $crate::Decision::Apply => Decision::Apply,
                                    $crate::Decision::Skip => Decision::Skip,
                                    $crate::Decision::Merge => Decision::Merge,
                                })
                                .collect(),
                            merged,
                            errors: errors
                                .into_iter()
                                .map(|(row, message)| RowError { row, message })
                                .collect(),
                        })
                    })
                }
            }

            $crate::bindings::resolver::export_resolver_world!(
                WeirResolverExport with_types_in $crate::bindings::resolver
            );
        };
    };
}

/// Exports a row function `fn(&Change, Option<&Row>, &Config) -> Result<Resolution, String>`
/// as the plugin's resolver: it sees each incoming change with the target's current row
/// for its key (`None` where there is none), and `Config` deserialized from the YAML.
#[macro_export]
macro_rules! row_resolver {
    ($function:path, $config:ty) => {
        #[doc(hidden)]
        pub struct WeirRowResolver {
            config: $config,
        }

        impl $crate::Resolve for WeirRowResolver {
            fn init(config: &$crate::JsonValue) -> Result<Self, String> {
                Ok(WeirRowResolver {
                    config: $crate::typed_config(config)?,
                })
            }

            fn resolve(
                &mut self,
                incoming: $crate::arrow_array::RecordBatch,
                current: $crate::arrow_array::RecordBatch,
            ) -> Result<$crate::Resolved, String> {
                let config = &self.config;
                $crate::change::resolve_rows(&incoming, &current, |change, row| {
                    $function(change, row, config)
                })
            }
        }

        $crate::export_resolver!(WeirRowResolver);
    };
}
