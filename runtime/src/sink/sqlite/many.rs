//! Many tables in one SQLite database: every table a batch touches, and the checkpoint, in
//! one transaction (`tables:` pipelines).
//!
//! The sink keeps what it knows of one target table at a time in its own fields (the
//! one-table code path, unchanged); switching tables parks that state here by name.

use std::collections::HashMap;

use rusqlite::Connection;

use super::{SqliteSink, quote};
use crate::decode::types::from_sql_declaration;
use crate::envelope::ChangeBatch;
use crate::position::Checkpoint;
use crate::sink::{Applied, Rejects, SinkError};
use crate::tables::TargetTable;

/// What the sink knows of a target table it is not applying right now.
#[derive(Debug, Default)]
pub(super) struct Parked {
    columns: Vec<String>,
    checked: bool,
    tombstones_ready: bool,
    tombstones_collected: Option<std::time::Instant>,
    applied_pruned: Option<std::time::Instant>,
}

impl SqliteSink {
    /// Makes `target` the table the one-table code applies to.
    fn switch_to(&mut self, target: &str) {
        if self.table == target {
            return;
        }
        let parked = Parked {
            columns: std::mem::take(&mut self.columns),
            checked: self.checked,
            tombstones_ready: self.tombstones_ready,
            tombstones_collected: self.tombstones_collected,
            applied_pruned: self.applied_pruned,
        };
        self.parked.insert(std::mem::take(&mut self.table), parked);
        let Parked {
            columns,
            checked,
            tombstones_ready,
            tombstones_collected,
            applied_pruned,
        } = self.parked.remove(target).unwrap_or_default();
        self.table = target.to_string();
        self.columns = columns;
        self.checked = checked;
        self.tombstones_ready = tombstones_ready;
        self.tombstones_collected = tombstones_collected;
        self.applied_pruned = applied_pruned;
    }

    /// After a rollback, every table the transaction created or altered is read again.
    fn forget_tables(&mut self) {
        self.checked = false;
        self.tombstones_ready = false;
        for parked in self.parked.values_mut() {
            parked.checked = false;
            parked.tombstones_ready = false;
        }
    }

    pub(super) fn apply_many(
        &mut self,
        batches: &[ChangeBatch],
        checkpoint: &Checkpoint,
        rejects: &mut dyn Rejects,
    ) -> Result<Applied, SinkError> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| self.error(format!("cannot begin a transaction: {e}")))?;
        let mut applied = Applied::default();
        let mut apply = || {
            for batch in batches.iter().filter(|b| b.num_rows() > 0) {
                let table = &batch.table;
                self.switch_to(table.target.as_deref().unwrap_or(&table.name));
                self.versioning = self
                    .versionings
                    .for_batch(batch)
                    .map_err(|e| self.error(e))?;
                self.ensure_table(batch)?;
                self.apply_rows(batch, &mut applied, rejects)?;
            }
            self.store_checkpoint(checkpoint)
                .map_err(|e| self.error(format!("cannot store the checkpoint: {e}")))
        };
        match apply() {
            Ok(()) => {
                self.conn
                    .execute_batch("COMMIT")
                    .map_err(|e| self.error(format!("commit failed: {e}")))?;
                applied.durable = Some(checkpoint.clone());
                Ok(applied)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.forget_tables();
                Err(e)
            }
        }
    }

    /// The database's tables (not weir's own), with their keys and column types.
    pub(super) fn existing_tables(&self) -> Result<HashMap<String, TargetTable>, SinkError> {
        read_tables(&self.conn).map_err(|e| self.error(format!("cannot list the tables: {e}")))
    }
}

fn read_tables(conn: &Connection) -> rusqlite::Result<HashMap<String, TargetTable>> {
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' \
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_weir\\_%' ESCAPE '\\'",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut tables = HashMap::new();
    for name in names {
        let mut stmt = conn.prepare(&format!("PRAGMA table_info({})", quote(&name)))?;
        // (name, declared type, position in the primary key, 0 when not in it)
        let columns: Vec<(String, String, i64)> = stmt
            .query_map([], |r| Ok((r.get(1)?, r.get(2)?, r.get(5)?)))?
            .collect::<Result<_, _>>()?;
        let mut key: Vec<&(String, String, i64)> = columns.iter().filter(|c| c.2 > 0).collect();
        key.sort_by_key(|c| c.2);
        let table = TargetTable {
            primary_key: key.iter().map(|c| c.0.clone()).collect(),
            types: columns
                .iter()
                .filter_map(|(column, declared, _)| {
                    from_sql_declaration(declared).map(|t| (column.clone(), t))
                })
                .collect(),
        };
        tables.insert(name, table);
    }
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_tables_give_their_key_in_key_order_and_skip_weirs_own() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE lines (item TEXT, qty INTEGER, order_id INTEGER, \
                 PRIMARY KEY (order_id, item));
             CREATE TABLE notes (body TEXT);
             CREATE TABLE _weir_checkpoints (pipeline TEXT);",
        )
        .unwrap();
        let tables = read_tables(&conn).unwrap();
        assert_eq!(tables.len(), 2, "{tables:?}");
        assert_eq!(tables["lines"].primary_key, ["order_id", "item"]);
        assert_eq!(tables["lines"].types.len(), 3);
        assert!(tables["notes"].primary_key.is_empty());
    }
}
