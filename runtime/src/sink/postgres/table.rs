//! The target table: its columns and key as read from the catalog, created, extended
//! and widened as the stream asks.

use super::*;

impl PostgresSink {
    pub(super) fn read_columns(&mut self, tx: &mut Transaction<'_>) -> Result<(), SinkError> {
        let rows = tx
            .query(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod),
                        format_type(a.atttypid, -1), a.atttypid, e.oid IS NOT NULL,
                        t.typtype = 'd' OR coalesce(e.typtype = 'd', false)
                 FROM pg_attribute a
                 JOIN pg_class c ON c.oid = a.attrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_type t ON t.oid = a.atttypid
                 LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A'
                 WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
                 ORDER BY a.attnum",
                &[&self.schema, &self.table],
            )
            .map_err(|e| self.pg_error("cannot read the table's columns", &e))?;
        self.columns = rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect();
        self.casts.clear();
        for row in &rows {
            // The type without its modifier, as `format_type(…, -1)` spells it.
            let cast = if row.get::<_, bool>(5) {
                self.cast_type(tx, row.get(3), row.get(4))?
            } else {
                row.get(2)
            };
            self.casts.insert(row.get(0), cast);
        }
        let key = tx
            .query(
                "SELECT a.attname
                 FROM pg_index i
                 JOIN pg_class c ON c.oid = i.indrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey)
                 WHERE n.nspname = $1 AND c.relname = $2 AND i.indisprimary",
                &[&self.schema, &self.table],
            )
            .map_err(|e| self.pg_error("cannot read the table's key", &e))?;
        self.target_key = key.iter().map(|r| r.get::<_, String>(0)).collect();
        Ok(())
    }

    /// The type a value sent as text is cast to for a column of domain type `oid` (or
    /// an array of one, `array`): the domain's base type (its element's, as an array)
    /// without its modifier, spelled so that it means that (`format_type(…, -1)`:
    /// `bpchar`, not `character`, which is `character(1)`). An explicit cast to a type
    /// with a length cuts a longer value short, and one to a domain applies the domain's
    /// length so too; the INSERT's assignment to the column then checks the length and
    /// the domain's constraints, refusing what does not fit.
    fn cast_type(
        &self,
        tx: &mut Transaction<'_>,
        oid: u32,
        array: bool,
    ) -> Result<String, SinkError> {
        let row = tx
            .query_one(
                "WITH RECURSIVE chain(oid, depth) AS (
                     SELECT CASE WHEN $2 THEN t.typelem ELSE t.oid END, 0
                     FROM pg_type t WHERE t.oid = $1
                     UNION ALL
                     SELECT t.typbasetype, chain.depth + 1
                     FROM chain JOIN pg_type t ON t.oid = chain.oid
                     WHERE t.typtype = 'd' AND chain.depth < 100
                 )
                 SELECT format_type(CASE WHEN $2 THEN b.typarray ELSE b.oid END, -1)
                 FROM chain JOIN pg_type b ON b.oid = chain.oid
                 ORDER BY chain.depth DESC LIMIT 1",
                &[&oid, &array],
            )
            .map_err(|e| self.pg_error("cannot read a column's type", &e))?;
        Ok(row.get(0))
    }

    /// Makes sure the table exists with every column of the batch, creating, adding or
    /// widening when `create` is set.
    pub(super) fn ensure_table(
        &mut self,
        tx: &mut Transaction<'_>,
        batch: &ChangeBatch,
    ) -> Result<(), SinkError> {
        let fields = batch.row_fields();
        if self.checked.as_ref() == Some(&fields) && !self.columns.is_empty() {
            return Ok(());
        }
        self.read_columns(tx)?;
        let target = self.target();
        let key = &batch.table.primary_key;
        if self.columns.is_empty() {
            if !self.create {
                return Err(self.error(format!(
                    "table {target} does not exist; create it, or set `create: true` on the sink"
                )));
            }
            let mut columns: Vec<String> = Vec::new();
            if self.mode == PostgresMode::Append {
                columns.extend(
                    APPEND_COLUMNS
                        .iter()
                        .map(|(n, t)| format!("{} {t}", quote(n))),
                );
            }
            columns.extend(
                fields
                    .iter()
                    .map(|f| format!("{} {}", quote(f.name()), pg_type(f))),
            );
            if self.mode == PostgresMode::Upsert {
                let key: Vec<String> = key.iter().map(|k| quote(k)).collect();
                columns.push(format!("PRIMARY KEY ({})", key.join(", ")));
            }
            tx.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {target} ({})",
                columns.join(", ")
            ))
            .map_err(|e| self.ddl_error("cannot create the table", &e))?;
            tracing::info!(table = %target, "created the table");
            self.checked = Some(fields.clone());
            return self.read_columns(tx);
        }
        for field in fields.iter() {
            let wanted = pg_type(field);
            match self.columns.get(field.name()) {
                None if self.create => {
                    tx.batch_execute(&format!(
                        "ALTER TABLE {target} ADD COLUMN IF NOT EXISTS {} {wanted}",
                        quote(field.name())
                    ))
                    .map_err(|e| self.ddl_error("cannot add a column", &e))?;
                    tracing::info!(table = %target, column = %field.name(), "added column");
                }
                None => {
                    return Err(self.error(format!(
                        "the events have a column {} that table {target} lacks; add it, or set \
                         `create: true` to let weir add new columns",
                        quote(field.name())
                    )));
                }
                Some(existing) if self.create && widens(existing, &wanted) => {
                    tx.batch_execute(&format!(
                        "ALTER TABLE {target} ALTER COLUMN {} TYPE {wanted}",
                        quote(field.name())
                    ))
                    .map_err(|e| self.ddl_error("cannot widen a column", &e))?;
                    tracing::info!(table = %target, column = %field.name(), from = %existing, to = %wanted, "widened column");
                }
                Some(_) => {}
            }
        }
        if self.mode == PostgresMode::Upsert {
            let mut have = self.target_key.clone();
            have.sort();
            let mut want = key.clone();
            want.sort();
            if have != want {
                return Err(self.error(format!(
                    "table {target} has primary key ({}), but the pipeline's key is ({}); \
                     weir applies changes by that key",
                    self.target_key.join(", "),
                    key.join(", ")
                )));
            }
        }
        self.checked = Some(fields.clone());
        self.read_columns(tx)
    }
}
