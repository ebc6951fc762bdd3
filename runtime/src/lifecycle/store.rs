//! Where the status is persisted: in the target, beside the checkpoint, so whoever can read
//! the target can read where the pipeline stands, and it outlives the process.
//!
//! - PostgreSQL: the row of the pipeline in `weir.status` (beside `weir.checkpoints`);
//! - SQLite: the row of the pipeline in `_weir_status`;
//! - Parquet and JSON Lines: `_weir_status.json` in the output folder, or
//!   `<file>.status.json` beside a single JSON Lines file;
//! - Kafka: not kept (a topic is not a place to read one document back from).
//!
//! The status is written on its own connection, once a second and when the run ends: it
//! is a report, not part of the data, so it never holds up a batch and a failure to write
//! it is logged, not fatal.

use std::path::PathBuf;

use postgres::Client;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::Status;
use crate::config::LoadedPipeline;
use crate::redact::Secret;
use crate::sink::SinkConfig;

pub trait StatusStore: Send {
    fn save(&mut self, status: &Status) -> Result<(), String>;
    /// The stored status of `pipeline`, if any was written.
    fn load(&mut self, pipeline: &str) -> Result<Option<Status>, String>;
    /// Where it is kept, for messages (never secrets).
    fn describe(&self) -> String;
}

/// The pipeline's status store; `None` for a sink that keeps none.
pub fn open(pipeline: &LoadedPipeline) -> Option<Box<dyn StatusStore>> {
    let tables = pipeline.config.tables.is_some();
    match &pipeline.config.sink {
        SinkConfig::Postgres(config) => Some(Box::new(PostgresStore {
            url: config.url.clone(),
            client: None,
        })),
        SinkConfig::Sqlite(config) => Some(Box::new(SqliteStore {
            path: pipeline.resolve(&config.path),
            conn: None,
        })),
        SinkConfig::Parquet(config) => Some(Box::new(FileStore {
            path: pipeline.resolve(&config.path).join(FILE_NAME),
        })),
        SinkConfig::Jsonl(config) if tables => Some(Box::new(FileStore {
            path: pipeline.resolve(&config.path).join(FILE_NAME),
        })),
        SinkConfig::Jsonl(config) => Some(Box::new(FileStore {
            path: PathBuf::from(format!(
                "{}.status.json",
                pipeline.resolve(&config.path).display()
            )),
        })),
        SinkConfig::Kafka(_) => None,
    }
}

const FILE_NAME: &str = "_weir_status.json";

fn parse(json: &str) -> Result<Status, String> {
    serde_json::from_str(json).map_err(|e| format!("the stored status cannot be read: {e}"))
}

fn to_json(status: &Status) -> String {
    serde_json::to_string(status).expect("a status is plain data")
}

struct PostgresStore {
    url: Secret,
    client: Option<Client>,
}

impl PostgresStore {
    fn client(&mut self) -> Result<&mut Client, String> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let client = crate::postgres_client::connect(self.url.expose())
                .map_err(|e| format!("cannot connect: {}", pg_error(&e)))?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }
}

fn pg_error(e: &postgres::Error) -> String {
    crate::redact::redact(&crate::sink::postgres::describe_error(e)).into_owned()
}

impl StatusStore for PostgresStore {
    fn save(&mut self, status: &Status) -> Result<(), String> {
        let json = to_json(status);
        let client = self.client()?;
        let upsert = |client: &mut Client| {
            client.execute(
                "INSERT INTO weir.status (pipeline, state, status, updated_at)
                 VALUES ($1, $2, $3::text::jsonb, now())
                 ON CONFLICT (pipeline) DO UPDATE SET
                     state = excluded.state, status = excluded.status,
                     updated_at = excluded.updated_at",
                &[&status.pipeline, &status.state.as_str(), &json],
            )
        };
        if upsert(client).is_ok() {
            return Ok(());
        }
        // The table is missing (a first run): create it beside the checkpoints. The sink
        // may create the schema at the same moment, and one of two concurrent `IF NOT
        // EXISTS` then fails on the catalog's unique index: try once more.
        let create = |client: &mut Client| {
            client.batch_execute(
                "CREATE SCHEMA IF NOT EXISTS weir;
                 CREATE TABLE IF NOT EXISTS weir.status (
                     pipeline text PRIMARY KEY,
                     state text NOT NULL,
                     status jsonb NOT NULL,
                     updated_at timestamptz NOT NULL DEFAULT now()
                 );",
            )
        };
        create(client)
            .or_else(|_| create(client))
            .map_err(|e| format!("cannot create weir.status: {}", pg_error(&e)))?;
        upsert(client)
            .map(|_| ())
            .map_err(|e| format!("cannot write weir.status: {}", pg_error(&e)))
    }

    fn load(&mut self, pipeline: &str) -> Result<Option<Status>, String> {
        let client = self.client()?;
        let row = client.query_opt(
            "SELECT status::text FROM weir.status WHERE pipeline = $1",
            &[&pipeline],
        );
        match row {
            Ok(row) => row.map(|r| parse(r.get(0))).transpose(),
            // No status table, or no weir schema: nothing was ever written.
            Err(e)
                if e.code().is_some_and(|c| {
                    *c == postgres::error::SqlState::UNDEFINED_TABLE
                        || *c == postgres::error::SqlState::INVALID_SCHEMA_NAME
                }) =>
            {
                Ok(None)
            }
            Err(e) => Err(format!("cannot read weir.status: {}", pg_error(&e))),
        }
    }

    fn describe(&self) -> String {
        "weir.status in the target database".into()
    }
}

struct SqliteStore {
    path: PathBuf,
    conn: Option<Connection>,
}

impl StatusStore for SqliteStore {
    fn save(&mut self, status: &Status) -> Result<(), String> {
        if self.conn.is_none() {
            let conn = Connection::open(&self.path).map_err(|e| e.to_string())?;
            conn.execute_batch(
                "PRAGMA busy_timeout=10000;
                 CREATE TABLE IF NOT EXISTS _weir_status (
                     pipeline TEXT PRIMARY KEY,
                     state TEXT NOT NULL,
                     status TEXT NOT NULL,
                     updated_at TEXT NOT NULL
                 );",
            )
            .map_err(|e| format!("cannot create _weir_status: {e}"))?;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_ref().expect("opened above");
        conn.execute(
            "INSERT INTO _weir_status (pipeline, state, status, updated_at)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (pipeline) DO UPDATE SET
                 state = excluded.state, status = excluded.status,
                 updated_at = excluded.updated_at",
            (
                &status.pipeline,
                status.state.as_str(),
                to_json(status),
                &status.updated_at,
            ),
        )
        .map(|_| ())
        .map_err(|e| format!("cannot write _weir_status: {e}"))
    }

    fn load(&mut self, pipeline: &str) -> Result<Option<Status>, String> {
        if !self.path.exists() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| e.to_string())?;
        let exists: bool = conn
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE name = '_weir_status'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| e.to_string())?;
        if !exists {
            return Ok(None);
        }
        conn.query_row(
            "SELECT status FROM _weir_status WHERE pipeline = ?1",
            [pipeline],
            |r| r.get::<_, String>(0),
        )
        .optional()
        .map_err(|e| format!("cannot read _weir_status: {e}"))?
        .map(|json| parse(&json))
        .transpose()
    }

    fn describe(&self) -> String {
        format!("_weir_status in {}", self.path.display())
    }
}

struct FileStore {
    path: PathBuf,
}

impl StatusStore for FileStore {
    fn save(&mut self, status: &Status) -> Result<(), String> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        // Written whole, then renamed over the old one: a reader never sees half a file.
        let partial = self.path.with_extension("json.partial");
        std::fs::write(&partial, to_json(status))
            .and_then(|()| std::fs::rename(&partial, &self.path))
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }

    fn load(&mut self, pipeline: &str) -> Result<Option<Status>, String> {
        match std::fs::read_to_string(&self.path) {
            Ok(json) => {
                let status = parse(&json)?;
                Ok((status.pipeline == pipeline).then_some(status))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", self.path.display())),
        }
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::{Counts, Lifecycle, Process, State};
    use crate::metrics::Health;

    fn status() -> Status {
        let lifecycle = Lifecycle::default();
        lifecycle.phase(State::Snapshotting, "copying 1 table");
        lifecycle.table("public.a", |t| {
            t.rows_copied = 5;
            t.rows_estimated = Some(10);
        });
        lifecycle.refresh(&Health::default());
        lifecycle.status("p", Process::Running, Counts::default())
    }

    #[test]
    fn a_sqlite_store_keeps_the_status_of_each_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore {
            path: dir.path().join("t.db"),
            conn: None,
        };
        assert_eq!(store.load("p").unwrap(), None);
        let status = status();
        store.save(&status).unwrap();
        store.save(&status).unwrap();
        assert_eq!(store.load("p").unwrap(), Some(status));
        assert_eq!(store.load("other").unwrap(), None);
    }

    #[test]
    fn a_file_store_replaces_its_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileStore {
            path: dir.path().join("out").join(FILE_NAME),
        };
        assert_eq!(store.load("p").unwrap(), None);
        let status = status();
        store.save(&status).unwrap();
        assert_eq!(store.load("p").unwrap(), Some(status));
        assert_eq!(store.load("other").unwrap(), None);
        std::fs::write(&store.path, "{not json").unwrap();
        assert!(store.load("p").unwrap_err().contains("cannot be read"));
    }
}
