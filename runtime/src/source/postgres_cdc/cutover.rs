//! What `weir cutover` asks of the two PostgreSQL databases of a `postgres-cdc` pipeline:
//! which tables it moves, whether the source still takes writes, a watermark in the
//! source's WAL, and the publication and slot a reverse pipeline starts from.

use std::time::{Duration, Instant};

use postgres::Client;

use super::catalog::{self, Domains, describe_error};
use super::{PostgresCdcSourceConfig, connect, parse_lsn};
use crate::sink::postgres::quote;
use crate::tables::{Routing, Selection};

/// The prefix of the watermark message `weir cutover` writes into the source's WAL.
pub const WATERMARK_PREFIX: &str = "weir-cutover";

/// A source table and the target table the pipeline applies it to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedTable {
    pub schema: String,
    pub table: String,
    /// The target table, without its schema.
    pub target: String,
}

impl MovedTable {
    pub fn source_name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// A connection to the source database.
pub struct SourceDatabase {
    client: Client,
}

impl SourceDatabase {
    pub fn connect(config: &PostgresCdcSourceConfig) -> Result<Self, String> {
        Ok(SourceDatabase {
            client: connect(config.url.expose())
                .map_err(|e| format!("cannot connect to the source: {e}"))?,
        })
    }

    /// The tables the pipeline moves, as its publication and `tables:` select them.
    pub fn moved_tables(
        &mut self,
        config: &PostgresCdcSourceConfig,
        routing: &Routing,
    ) -> Result<Vec<MovedTable>, String> {
        let domains = Domains::load(&mut self.client).map_err(|e| describe_error(&e))?;
        let tables = catalog::selected_tables(&mut self.client, routing, &domains)
            .map_err(|e| describe_error(&e))?;
        let published = catalog::published(&mut self.client, &config.publication)?;
        Ok(tables
            .into_iter()
            .filter(|t| published.contains(&t.name()))
            .filter_map(|t| match routing.select(&t.name()) {
                Selection::Target { name, .. } => Some(MovedTable {
                    schema: t.schema,
                    table: t.table,
                    target: name,
                }),
                Selection::Skipped => None,
            })
            .collect())
    }

    /// Rows inserted, updated and deleted in `tables` since the server started, as the
    /// statistics collector counts them (it reports each transaction within a second of
    /// its end).
    pub fn writes(&mut self, tables: &[MovedTable]) -> Result<i64, String> {
        let names: Vec<String> = tables.iter().map(MovedTable::source_name).collect();
        let row = self
            .client
            .query_one(
                "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint
                 FROM pg_stat_user_tables WHERE schemaname || '.' || relname = ANY($1)",
                &[&names],
            )
            .map_err(|e| describe_error(&e))?;
        Ok(row.get(0))
    }

    /// Waits until no row of `tables` has been written for `quiet`, or fails after
    /// `timeout` saying so.
    pub fn wait_quiet(
        &mut self,
        tables: &[MovedTable],
        quiet: Duration,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let started = Instant::now();
        let mut last = self.writes(tables)?;
        let mut since = Instant::now();
        loop {
            if since.elapsed() >= quiet {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= timeout {
                return Err(format!(
                    "the source's tables were still written within the last {} after {}: \
                     freeze writes (stop the application, or give a hook that does with \
                     --freeze-hook) and run again",
                    humantime::format_duration(quiet),
                    humantime::format_duration(Duration::from_secs(timeout.as_secs()))
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
            let now = self.writes(tables)?;
            if now != last {
                last = now;
                since = Instant::now();
            }
        }
    }

    /// Writes a non-transactional message into the WAL and returns its LSN. Every change
    /// committed before it comes before it in the stream: once the pipeline has applied
    /// the message's position, it has applied all of them.
    pub fn watermark(&mut self) -> Result<u64, String> {
        let row = self
            .client
            .query_one(
                "SELECT pg_logical_emit_message(false, $1, now()::text)::text",
                &[&WATERMARK_PREFIX],
            )
            .map_err(|e| format!("cannot write the watermark: {}", describe_error(&e)))?;
        parse_lsn(row.get(0)).ok_or_else(|| "the server returned an unreadable LSN".into())
    }
}

/// Creates, on the target, the publication and the replication slot a reverse pipeline
/// (target → source) reads, unless they exist. Returns the slot's position: every write
/// to the target after it reaches the reverse pipeline.
pub fn prepare_reverse(
    target_url: &str,
    schema: &str,
    tables: &[MovedTable],
    publication: &str,
    slot: &str,
) -> Result<u64, String> {
    let mut client =
        connect(target_url).map_err(|e| format!("cannot connect to the target: {e}"))?;
    if !catalog::publication_exists(&mut client, publication)? {
        let list: Vec<String> = tables
            .iter()
            .map(|t| format!("{}.{}", quote(schema), quote(&t.target)))
            .collect();
        catalog::create_publication(&mut client, publication, &list)
            .map_err(|e| format!("on the target: {e}"))?;
    }
    let existing = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots
             WHERE slot_name = $1 AND database = current_database()",
            &[&slot],
        )
        .map_err(|e| describe_error(&e))?;
    let lsn: String = match existing {
        Some(row) => row.get(0),
        None => client
            .query_one(
                "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&slot],
            )
            .map_err(|e| {
                format!(
                    "cannot create replication slot {slot} on the target (it needs \
                     wal_level=logical): {}",
                    describe_error(&e)
                )
            })?
            .get(0),
    };
    parse_lsn(&lsn).ok_or_else(|| "the target returned an unreadable LSN".into())
}
