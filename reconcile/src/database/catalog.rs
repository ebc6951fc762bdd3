//! The tables a database-shaped snapshot holds: a PostgreSQL schema, an SQLite file, a
//! folder of Parquet tables. Each is listed with its primary key (where the database
//! keeps one), which is where a table's key is found when the pipeline declares none.

use std::collections::BTreeMap;
use std::path::PathBuf;

use weir_runtime::config::LoadedPipeline;
use weir_runtime::config::reconcile::{
    ParquetSnapshot, PostgresSnapshot, SnapshotConfig, SqliteSnapshot,
};
use weir_runtime::sink::sqlite::quote;

use crate::ReconcileError;

/// One listed table.
#[derive(Debug, Clone, Default)]
pub struct Listed {
    /// Its name in the database (the table, or the folder).
    pub table: String,
    pub primary_key: Vec<String>,
    /// The key columns' types (PostgreSQL), to tell whether checksum mode can cut
    /// ranges of it.
    pub key_types: Vec<String>,
}

/// A side's tables, by the name they are routed by: `<schema>.<table>` on the source
/// side when the snapshot names a schema, else the table's name.
#[derive(Debug, Default)]
pub struct Catalog {
    pub description: String,
    pub tables: BTreeMap<String, Listed>,
}

/// Lists the tables of `snapshot`. `None` for a change log (listed as it is read).
pub fn list(
    pipeline: &LoadedPipeline,
    snapshot: &SnapshotConfig,
    side: &str,
) -> Result<Option<Catalog>, ReconcileError> {
    let fail = |e: String| ReconcileError::new(format!("{side}: {e}"));
    let catalog = match snapshot {
        SnapshotConfig::Postgres(config) => postgres(config, side == "source").map_err(fail)?,
        SnapshotConfig::Sqlite(config) => sqlite(pipeline, config).map_err(fail)?,
        SnapshotConfig::Parquet(config) => parquet(pipeline, config).map_err(fail)?,
        SnapshotConfig::Debezium(_) => return Ok(None),
    };
    Ok(Some(catalog))
}

/// The schema a postgres side compares.
pub fn postgres_schema(config: &PostgresSnapshot) -> &str {
    config.schema.as_deref().unwrap_or("public")
}

fn postgres(config: &PostgresSnapshot, qualify: bool) -> Result<Catalog, String> {
    let schema = postgres_schema(config);
    let mut client =
        crate::pool::connect(config.url.expose()).map_err(|e| format!("cannot connect: {e}"))?;
    let rows = client
        .query(
            "SELECT c.relname::text,
                    coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord)
                              FROM pg_index i
                              CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                              WHERE i.indrelid = c.oid AND i.indisprimary), '{}'),
                    coalesce((SELECT array_agg(format_type(a.atttypid, NULL) ORDER BY k.ord)
                              FROM pg_index i
                              CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                              WHERE i.indrelid = c.oid AND i.indisprimary), '{}')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition
             ORDER BY 1",
            &[&schema],
        )
        .map_err(|e| format!("cannot list the tables of schema {schema}: {e}"))?;
    let mut tables = BTreeMap::new();
    for row in rows {
        let table: String = row.get(0);
        let name = match qualify {
            true => format!("{schema}.{table}"),
            false => table.clone(),
        };
        tables.insert(
            name,
            Listed {
                table,
                primary_key: row.get(1),
                key_types: row.get(2),
            },
        );
    }
    Ok(Catalog {
        description: format!("postgres schema {schema}"),
        tables,
    })
}

fn qualified(schema: Option<&str>, table: &str) -> String {
    match schema {
        Some(schema) => format!("{schema}.{table}"),
        None => table.to_string(),
    }
}

fn sqlite(pipeline: &LoadedPipeline, config: &SqliteSnapshot) -> Result<Catalog, String> {
    let path = pipeline.resolve(&config.path);
    let description = format!("sqlite {}", path.display());
    if !path.exists() {
        return Err(format!("{description} does not exist"));
    }
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| format!("{description}: {e}"))?;
    conn.pragma_update(None, "trusted_schema", false)
        .map_err(|e| e.to_string())?;
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_weir\\_%' ESCAPE '\\' \
             ORDER BY name",
        )
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| format!("{description}: cannot list its tables: {e}"))?;
    let mut tables = BTreeMap::new();
    for table in names {
        let mut key: Vec<(i64, String)> = conn
            .prepare(&format!("PRAGMA table_info({})", quote(&table)))
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(5)?, r.get(1)?)))?.collect())
            .map_err(|e| format!("{description}: table {table}: {e}"))?;
        key.retain(|(position, _)| *position > 0);
        key.sort();
        tables.insert(
            qualified(config.schema.as_deref(), &table),
            Listed {
                primary_key: key.into_iter().map(|(_, c)| c).collect(),
                table,
                key_types: Vec::new(),
            },
        );
    }
    Ok(Catalog {
        description,
        tables,
    })
}

fn parquet(pipeline: &LoadedPipeline, config: &ParquetSnapshot) -> Result<Catalog, String> {
    let path: PathBuf = pipeline.resolve(&config.path);
    let description = format!("parquet folder {}", path.display());
    let entries = std::fs::read_dir(&path).map_err(|e| {
        format!(
            "cannot list {description} ({e}); a many-table parquet snapshot is a folder with \
             a folder per table"
        )
    })?;
    let mut tables = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {description}: {e}"))?;
        if !entry.path().is_dir() {
            continue;
        }
        let Some(table) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if table.starts_with('.') || table.starts_with('_') {
            continue;
        }
        tables.insert(
            qualified(config.schema.as_deref(), &table),
            Listed {
                table,
                ..Listed::default()
            },
        );
    }
    Ok(Catalog {
        description,
        tables,
    })
}
