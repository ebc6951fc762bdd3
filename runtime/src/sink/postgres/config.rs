//! The `postgres` sink's configuration and what it can do.

use super::*;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// Connection URL, `postgres://user:password@host:port/database`. Take the password
    /// from the environment: `postgres://weir:${PG_PASSWORD}@db:5432/app`, or the whole URL
    /// with `${PG_URL}`.
    pub url: Secret,
    /// Target table, `schema.table` or `table` (in `schema`). Defaults to `table.name`.
    #[serde(default)]
    pub table: Option<String>,
    /// The schema of an unqualified `table`, and of every target table of a many-table
    /// pipeline (`tables:`). Default `public`.
    #[serde(default)]
    pub schema: Option<String>,
    /// `upsert` applies changes by primary key; `append` writes every change to a
    /// change-log table.
    #[serde(default)]
    pub mode: PostgresMode,
    /// Create the table if it does not exist, add columns new events bring, and widen
    /// integer, float and numeric columns when the stream widens them (weir then owns the
    /// table's DDL).
    #[serde(default)]
    pub create: bool,
    /// Marks every transaction weir applies with this PostgreSQL replication origin
    /// (created if missing), so a `postgres-cdc` pipeline reading this database can leave
    /// weir's own writes out (its `skip_origins`): a pipeline and its reverse then send
    /// no change back and forth. Needs a superuser, or EXECUTE on
    /// `pg_replication_origin_create` and `pg_replication_origin_session_setup`.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub origin: Option<String>,
    /// How long a transaction of weir's may sit idle before PostgreSQL ends it (its
    /// `idle_in_transaction_session_timeout`), and how long a statement waits for a row
    /// lock (`lock_timeout`; the batch is then applied again). A process stopped inside a
    /// transaction (a paused VM, SIGSTOP) holds its partitions' checkpoint rows until
    /// then, so the processes that took those partitions over wait about this long, and
    /// no process waits on another's locks longer. Default 60s; `0s` turns both off.
    #[serde(default = "default_idle_transaction_timeout")]
    pub idle_transaction_timeout: crate::config::HumanDuration,
}

fn default_idle_transaction_timeout() -> crate::config::HumanDuration {
    crate::config::HumanDuration(std::time::Duration::from_secs(60))
}

impl PostgresSinkConfig {
    pub fn capabilities(&self) -> crate::sink::Capabilities {
        let upsert = self.mode == PostgresMode::Upsert;
        crate::sink::Capabilities {
            reads_target_rows: upsert,
            lanes: upsert,
            stores_checkpoint: true,
            many_tables: true,
            applies_by_key: upsert,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PostgresMode {
    #[default]
    Upsert,
    Append,
}

/// The envelope columns an `append` table holds before the row's own columns.
pub(super) const APPEND_COLUMNS: [(&str, &str); 7] = [
    ("_weir_op", "text NOT NULL"),
    ("_weir_event_time", "timestamptz"),
    ("_weir_source_time", "timestamptz"),
    ("_weir_source_position", "text"),
    ("_weir_txid", "text"),
    ("_weir_stream", "text NOT NULL"),
    ("_weir_offset", "bigint NOT NULL"),
];
