//! What the source database holds: the tables a pipeline selects, their columns and keys,
//! and the publication weir reads them through.

use std::collections::HashMap;

use postgres::Client;

use super::events::Column;
use super::values::Kind;
use crate::sink::postgres::quote;
use crate::tables::{Routing, Selection};

/// A table of the source, as the catalog describes it now.
#[derive(Debug, Clone)]
pub struct SourceTable {
    pub schema: String,
    pub table: String,
    pub columns: Vec<Column>,
}

impl SourceTable {
    pub fn name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    pub fn quoted(&self) -> String {
        format!("{}.{}", quote(&self.schema), quote(&self.table))
    }

    /// The key column, when the primary key is one integer column: a copy of the table is
    /// then resumable by key.
    pub fn integer_key(&self) -> Option<usize> {
        let keys: Vec<usize> = (0..self.columns.len())
            .filter(|&i| self.columns[i].key)
            .collect();
        match keys[..] {
            [i] if matches!(self.columns[i].kind, Kind::Integer(_)) => Some(i),
            _ => None,
        }
    }
}

/// Domain types by OID, with their base type and modifier: pgoutput and the catalog name
/// a column's declared type, and a domain over `numeric(10,2)` is carried as that.
#[derive(Debug, Default)]
pub struct Domains(HashMap<u32, (u32, i32)>);

impl Domains {
    pub fn load(client: &mut Client) -> Result<Domains, postgres::Error> {
        let rows = client.query(
            "SELECT oid, typbasetype, typtypmod FROM pg_type WHERE typtype = 'd'",
            &[],
        )?;
        Ok(Domains(
            rows.iter()
                .map(|r| (r.get::<_, u32>(0), (r.get::<_, u32>(1), r.get::<_, i32>(2))))
                .collect(),
        ))
    }

    pub fn knows(&self, oid: u32) -> bool {
        oid < 16384 || self.0.contains_key(&oid)
    }

    /// The column kind of type `oid` with modifier `typmod`, through domains.
    pub fn kind(&self, mut oid: u32, mut typmod: i32) -> Kind {
        for _ in 0..16 {
            match self.0.get(&oid) {
                Some(&(base, base_typmod)) => {
                    oid = base;
                    if typmod < 0 {
                        typmod = base_typmod;
                    }
                }
                None => break,
            }
        }
        Kind::of(oid, typmod)
    }
}

/// The ordinary and partitioned tables of the database that `routing` selects (weir's own
/// `weir` schema is never captured).
pub fn selected_tables(
    client: &mut Client,
    routing: &Routing,
    domains: &Domains,
) -> Result<Vec<SourceTable>, postgres::Error> {
    let rows = client.query(
        "SELECT c.oid, n.nspname, c.relname FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
           AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'weir')
           AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
         ORDER BY n.nspname, c.relname",
        &[],
    )?;
    let mut tables = Vec::new();
    for row in rows {
        let (oid, schema, table): (u32, String, String) = (row.get(0), row.get(1), row.get(2));
        if matches!(
            routing.select(&format!("{schema}.{table}")),
            Selection::Skipped
        ) {
            continue;
        }
        tables.push(describe(client, oid, schema, table, domains)?);
    }
    Ok(tables)
}

/// One table's columns (as pgoutput sends them: not dropped, not generated) and key (the
/// primary key, else the replica identity index).
pub fn describe(
    client: &mut Client,
    oid: u32,
    schema: String,
    table: String,
    domains: &Domains,
) -> Result<SourceTable, postgres::Error> {
    let rows = client.query(
        "SELECT a.attname, a.atttypid, a.atttypmod, coalesce(a.attnum = ANY(k.indkey), false)
         FROM pg_attribute a
         LEFT JOIN LATERAL (
             SELECT i.indkey::int2[] AS indkey FROM pg_index i
             WHERE i.indrelid = a.attrelid AND (i.indisprimary OR i.indisreplident)
             ORDER BY i.indisprimary DESC LIMIT 1) k ON true
         WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
         ORDER BY a.attnum",
        &[&oid],
    )?;
    let columns = rows
        .iter()
        .map(|row| Column {
            name: row.get(0),
            kind: domains.kind(row.get(1), row.get(2)),
            key: row.get(3),
        })
        .collect();
    Ok(SourceTable {
        schema,
        table,
        columns,
    })
}

/// The primary key columns of table `oid` (none without a primary key).
pub fn primary_key(client: &mut Client, oid: u32) -> Result<Vec<String>, postgres::Error> {
    let rows = client.query(
        "SELECT a.attname::text FROM pg_index i
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
         WHERE i.indrelid = $1 AND i.indisprimary",
        &[&oid],
    )?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Creates `publication` for `tables` unless it exists. Returns whether it was created.
pub fn ensure_publication(
    client: &mut Client,
    publication: &str,
    tables: &[SourceTable],
) -> Result<bool, String> {
    if publication_exists(client, publication)? {
        return Ok(false);
    }
    if tables.is_empty() {
        return Err(format!(
            "publication {publication} does not exist, and no table of the database matches \
             `tables.include`: there is nothing to publish"
        ));
    }
    let list: Vec<String> = tables.iter().map(SourceTable::quoted).collect();
    create_publication(client, publication, &list)?;
    Ok(true)
}

/// Whether `publication` exists in this database.
pub fn publication_exists(client: &mut Client, publication: &str) -> Result<bool, String> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .map_err(|e| describe_error(&e))?
        .is_some())
}

/// Creates `publication` for the tables of `quoted` (each `"schema"."table"`).
pub fn create_publication(
    client: &mut Client,
    publication: &str,
    quoted: &[String],
) -> Result<(), String> {
    client
        .batch_execute(&format!(
            // Changes of a partition are published as the partitioned table's, which is
            // the table the pipeline selected and copied.
            "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)",
            quote(publication),
            quoted.join(", ")
        ))
        .map_err(|e| {
            format!(
                "cannot create publication {publication}: {}",
                describe_error(&e)
            )
        })
}

/// The tables `publication` publishes, as `schema.table`.
pub fn published(client: &mut Client, publication: &str) -> Result<Vec<String>, String> {
    let rows = client
        .query(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .map_err(|e| describe_error(&e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

pub fn describe_error(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}
