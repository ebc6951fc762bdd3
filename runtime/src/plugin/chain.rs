//! The transform stage of a pipeline: the configured plugins, applied in YAML order.

use crate::config::LoadedPipeline;
use crate::decode::types::ColumnType;
use crate::envelope::ChangeBatch;

use super::transform::{TableRules, TransformPlugin};
use super::{Limits, PluginSpec, reject_all};
use crate::tables::TablePatterns;

/// A row that leaves the pipeline at this stage, and why.
pub trait RejectRow<E> {
    fn reject(&mut self, batch: &ChangeBatch, row: usize, reason: &str) -> Result<(), E>;
}

/// A transform dead letter's reason: the plugin's, naming the plugin at its end (where
/// [`plugin_in_reason`] finds it, so a replay sends the row back to that plugin).
fn naming_plugin(reason: &str, plugin: &str) -> String {
    format!("{reason} (plugin `{plugin}`)")
}

/// The plugin a transform dead letter's reason names ([`naming_plugin`]).
pub fn plugin_in_reason(reason: &str) -> Option<&str> {
    const OPEN: &str = " (plugin `";
    let rest = reason.strip_suffix("`)")?;
    rest.rfind(OPEN).map(|start| &rest[start + OPEN.len()..])
}

/// The loaded transform plugins.
pub struct TransformChain {
    /// Each plugin, with the tables it runs on.
    plugins: Vec<(TransformPlugin, TablePatterns)>,
    rules: TableRules,
}

impl TransformChain {
    /// Loads every configured transform (`None` when there is none). A plugin that cannot be
    /// read, compiled, linked or initialised is an error naming it.
    pub fn load(pipeline: &LoadedPipeline) -> Result<Option<TransformChain>, String> {
        if pipeline.config.transforms.is_empty() {
            return Ok(None);
        }
        let plugins = pipeline
            .config
            .transforms
            .iter()
            .map(|t| {
                let tables = TablePatterns::new(&t.tables)
                    .map_err(|e| format!("transform `{}`: {e}", t.name))?;
                let plugin = TransformPlugin::load(PluginSpec {
                    name: t.name.clone(),
                    wasm: pipeline.resolve(&t.wasm),
                    config: t.config.clone(),
                    limits: Limits::from(&t.limits),
                })?;
                Ok::<_, String>((plugin, tables))
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(TransformChain {
            plugins,
            rules: TableRules::default(),
        }))
    }

    /// Keeps the plugins from `name` on (`None` when there are none): a row plugin
    /// `name` refused goes back into the chain there, past the plugins it went through.
    pub fn starting_at(mut self, name: &str) -> Option<TransformChain> {
        let first = self.plugins.iter().position(|(p, _)| p.name() == name)?;
        self.plugins.drain(..first);
        Some(self)
    }

    /// Each plugin's calls by outcome and their time.
    pub fn stats(&self) -> Vec<std::sync::Arc<super::stats::PluginStats>> {
        self.plugins
            .iter()
            .map(|(plugin, _)| plugin.stats())
            .collect()
    }

    /// Holds every plugin's output to the target's column types too (columns a plugin
    /// adds that the target already has).
    pub fn set_target_types(&mut self, target_types: Vec<(String, ColumnType)>) {
        self.rules.target_types = target_types;
    }

    /// Runs a batch through every plugin. Rows a plugin refuses, and every row of a batch
    /// whose call fails, go to `rejects` with the reason (a long reason for a failed call
    /// once per batch, see [`reject_all`]); what remains goes on. The checkpoint is the
    /// input's whatever happens, so the source moves past rejected rows only once they are
    /// dead letters.
    pub fn run<E>(
        &mut self,
        mut batch: ChangeBatch,
        rejects: &mut dyn RejectRow<E>,
    ) -> Result<ChangeBatch, E> {
        for (plugin, tables) in &mut self.plugins {
            if batch.num_rows() == 0 {
                break;
            }
            if !tables.select(&batch.table.name) {
                continue;
            }
            match plugin.call_with(&batch, &self.rules) {
                Ok(transformed) => {
                    for (row, message) in &transformed.rejected {
                        let reason = crate::redact::redact(message);
                        let reason =
                            naming_plugin(&format!("plugin_row_error: {reason}"), plugin.name());
                        rejects.reject(&batch, *row, &reason)?;
                    }
                    batch = transformed.batch;
                }
                Err(failure) => {
                    let reason = naming_plugin(&failure.reason(), plugin.name());
                    reject_all(
                        0..batch.num_rows(),
                        &reason,
                        |row| batch.positions.get(row).map(|p| p.to_string()),
                        |row, reason| rejects.reject(&batch, row, reason),
                    )?;
                    batch = ChangeBatch {
                        data: batch.data.slice(0, 0),
                        positions: Default::default(),
                        checkpoint: batch.checkpoint,
                        table: batch.table,
                    };
                }
            }
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_names_its_plugin_at_its_end() {
        let reason = naming_plugin("plugin_row_error: no `email` (plugin `x`)", "mask");
        assert_eq!(plugin_in_reason(&reason), Some("mask"));
        assert_eq!(plugin_in_reason("plugin_trap: oops"), None);
        assert_eq!(plugin_in_reason("stale (resolver `lww`)"), None);
    }
}
