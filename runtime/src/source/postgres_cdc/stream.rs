//! The replication stream: pgoutput messages read through `pg_walstream`, turned into
//! Debezium change events with their positions.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use pg_walstream::{LogicalReplicationMessage, LogicalReplicationParser, TupleData};
use postgres::Client;

use super::catalog::{Domains, describe_error};
use super::events::{Column, Relation, SourceInfo, Value};
use super::replication::{Frame, ReplicationConnection};
use super::{MAX_POLL_WAIT, PostgresCdcSourceConfig, SESSION_OPTIONS, lsn_text, stream_key};
use crate::decode::native::NativeTables;
use crate::position::{Position, ResumePoint};
use crate::sink::postgres::quote;
use crate::source::{PollLimits, PollStatus, RawBatch};

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The open transaction's commit LSN, id, time and changes so far.
struct Transaction {
    at: u64,
    xid: u32,
    ts_ms: i64,
    seq: u64,
    /// Its replication origin is one `skip_origins` names: its changes are dropped.
    skip: bool,
}

/// A change held back until the next message says whether it ends its transaction.
struct Pending {
    key: Option<String>,
    value: Vec<u8>,
    at: u64,
    seq: u64,
    lsn: u64,
}

struct Table {
    relation: Relation,
    /// `format_type` of each column, once a TOAST look-up needed them.
    type_names: Option<Vec<String>>,
}

pub struct Stream {
    connection: ReplicationConnection,
    slot: String,
    publication: String,
    /// The end of the last transaction the sink applied whole (the committer's).
    flushed: Arc<AtomicU64>,
    heartbeats: super::SentHeartbeats,
    parser: LogicalReplicationParser,
    stream: Arc<str>,
    server: String,
    db: String,
    tables: HashMap<u32, Table>,
    /// Tables whose relation message arrived, for the source to spot one it did not
    /// select at the start (added to the publication since).
    relations_seen: Vec<String>,
    transaction: Option<Transaction>,
    pending: Option<Pending>,
    value: Vec<u8>,
    key: String,
    /// Changes (not heartbeats) added by the current poll.
    changes: usize,
    /// Replication origins whose transactions are not read (`skip_origins`).
    skip_origins: Vec<glob::Pattern>,
    /// Where to stop reading ([`Self::pause_at`]).
    pause_at: Option<u64>,
    /// The first message past that point, read and kept until the stream resumes.
    held: Option<(LogicalReplicationMessage, u64)>,
    /// The tables the events are written for ([`crate::decode::native`]).
    native: Arc<NativeTables>,
    /// When the poll began, in epoch milliseconds: the events' `ts_ms` (when weir read
    /// them), read once per poll rather than per change.
    now_ms: i64,
}

/// The URL (or key-value conninfo) with the replication and session options added, and
/// weir's network defaults where it sets none (libpq's names and units:
/// [`crate::postgres_client::libpq_defaults`]).
fn replication_conninfo(url: &str) -> String {
    let defaults: Vec<(&str, String)> = crate::postgres_client::libpq_defaults()
        .into_iter()
        .filter(|(key, _)| !url.contains(key))
        .collect();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let options: String = SESSION_OPTIONS
            .bytes()
            .map(|b| match b {
                b' ' => "%20".to_string(),
                b'=' => "%3D".to_string(),
                b',' => "%2C".to_string(),
                _ => (b as char).to_string(),
            })
            .collect();
        let separator = if url.contains('?') { '&' } else { '?' };
        let defaults: String = defaults
            .iter()
            .map(|(key, value)| format!("&{key}={value}"))
            .collect();
        format!("{url}{separator}replication=database&options={options}{defaults}")
    } else {
        let defaults: String = defaults
            .iter()
            .map(|(key, value)| format!(" {key}={value}"))
            .collect();
        format!("{url} replication=database options='{SESSION_OPTIONS}'{defaults}")
    }
}

impl Stream {
    pub fn open(
        config: &PostgresCdcSourceConfig,
        server: &str,
        db: &str,
        flushed: Arc<AtomicU64>,
        heartbeats: super::SentHeartbeats,
        native: Arc<NativeTables>,
    ) -> Result<Stream, String> {
        let connection = ReplicationConnection::connect(&replication_conninfo(config.url.expose()))
            .map_err(|e| format!("cannot open a replication connection: {e}"))?;
        Ok(Stream {
            connection,
            slot: config.slot.clone(),
            publication: config.publication.clone(),
            flushed,
            heartbeats,
            parser: LogicalReplicationParser::with_protocol_version(2),
            stream: stream_key(&config.slot).into(),
            server: server.to_string(),
            db: db.to_string(),
            tables: HashMap::new(),
            relations_seen: Vec::new(),
            transaction: None,
            pending: None,
            value: Vec::new(),
            key: String::new(),
            changes: 0,
            skip_origins: super::origin_patterns(&config.skip_origins)?,
            pause_at: None,
            held: None,
            native,
            now_ms: 0,
        })
    }

    /// Creates the slot, exporting a snapshot; returns its consistent point and the
    /// snapshot's name. The snapshot lives until this connection's next command.
    pub fn create_slot(&mut self) -> Result<(u64, String), String> {
        self.connection
            .create_slot(&self.slot, false)
            .map_err(|e| format!("cannot create replication slot {}: {e}", self.slot))
    }

    /// Creates a temporary slot named `name` on this connection, exporting a snapshot, for
    /// the copy of tables added mid-run: its consistent point is an exact boundary (the
    /// snapshot sees every transaction committed before it and none after). The slot goes
    /// when this connection closes.
    pub fn create_temporary_slot(&mut self, name: &str) -> Result<(u64, String), String> {
        self.connection
            .create_slot(name, true)
            .map_err(|e| format!("cannot create a temporary replication slot {name}: {e}"))
    }

    /// Stops reading before the first transaction committed at or after `lsn` (or a
    /// message written there), so a copy as of `lsn` can go first.
    pub fn pause_at(&mut self, lsn: u64) {
        self.pause_at = Some(lsn);
    }

    /// Whether the stream has reached the point [`Self::pause_at`] set.
    pub fn paused(&self) -> bool {
        self.held.is_some()
    }

    /// Reads on from the point it paused at.
    pub fn resume(&mut self) {
        self.pause_at = None;
    }

    /// Tells the server what the sink has applied, without reading (see
    /// [`ReplicationConnection::keep_alive`]).
    pub fn keep_alive(&mut self) -> Result<(), String> {
        self.connection
            .keep_alive(self.flushed.load(Ordering::Acquire))
    }

    /// Starts streaming from the slot's confirmed flush LSN.
    pub fn start(&mut self) -> Result<(), String> {
        self.connection
            .start(&self.slot, &self.publication)
            .map_err(|e| format!("cannot start replication from slot {}: {e}", self.slot))
    }

    /// Reads messages until the poll is full or nothing more arrives in time.
    /// The tables whose relation message arrived since the last call.
    pub fn take_relations_seen(&mut self) -> Vec<String> {
        std::mem::take(&mut self.relations_seen)
    }

    pub fn poll(
        &mut self,
        batch: &mut RawBatch,
        limits: &PollLimits,
        mut meta: Option<&mut Client>,
        domains: &mut Domains,
    ) -> Result<PollStatus, String> {
        let deadline = Instant::now() + limits.max_wait.min(MAX_POLL_WAIT);
        self.now_ms = chrono::Utc::now().timestamp_millis();
        self.changes = 0;
        if self.pause_at.is_none()
            && let Some((message, wal_start)) = self.held.take()
        {
            self.handle(message, wal_start, batch, meta.as_deref_mut(), domains)?;
        }
        while !limits.filled(batch) && self.held.is_none() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let flushed = self.flushed.load(Ordering::Acquire);
            let Some(Frame::Data { wal_start, data }) = self.connection.next(remaining, flushed)?
            else {
                break;
            };
            let message = self
                .parser
                .parse_wal_message_bytes(bytes::Bytes::from(data))
                .map_err(|e| {
                    format!(
                        "unreadable pgoutput message at {}: {e}",
                        lsn_text(wal_start)
                    )
                })?
                .message;
            if let Some(pause) = self.pause_at
                && self.transaction.is_none()
            {
                let at = match &message {
                    LogicalReplicationMessage::Begin { final_lsn, .. } => Some(*final_lsn),
                    LogicalReplicationMessage::Message { flags, lsn, .. } if flags & 1 == 0 => {
                        Some(*lsn)
                    }
                    _ => None,
                };
                if at.is_some_and(|at| at >= pause) {
                    self.held = Some((message, wal_start));
                    break;
                }
            }
            self.handle(message, wal_start, batch, meta.as_deref_mut(), domains)?;
        }
        Ok(if batch.is_empty() {
            PollStatus::Idle
        } else if self.changes == 0 {
            PollStatus::Heartbeats
        } else {
            PollStatus::Records
        })
    }

    fn handle(
        &mut self,
        message: LogicalReplicationMessage,
        wal_start: u64,
        batch: &mut RawBatch,
        mut meta: Option<&mut Client>,
        domains: &mut Domains,
    ) -> Result<(), String> {
        match message {
            LogicalReplicationMessage::Begin {
                final_lsn,
                timestamp,
                xid,
            } => {
                self.transaction = Some(Transaction {
                    at: final_lsn,
                    xid,
                    ts_ms: timestamp.saturating_add(PG_EPOCH_MICROS) / 1000,
                    seq: 0,
                    skip: false,
                });
            }
            // Sent right after `Begin` when the transaction was made by a session with a
            // replication origin (another pipeline's sink, marked by its `origin`).
            LogicalReplicationMessage::Origin { origin_name, .. } => {
                if let Some(transaction) = self.transaction.as_mut()
                    && self.skip_origins.iter().any(|p| p.matches(&origin_name))
                {
                    tracing::debug!(origin = %origin_name, xid = transaction.xid, "transaction of a skipped origin");
                    transaction.skip = true;
                }
            }
            LogicalReplicationMessage::Insert { .. }
            | LogicalReplicationMessage::Update { .. }
            | LogicalReplicationMessage::Delete { .. }
            | LogicalReplicationMessage::Truncate { .. }
                if self.transaction.as_ref().is_some_and(|t| t.skip) => {}
            LogicalReplicationMessage::Commit { end_lsn, .. } => {
                if let Some(pending) = self.pending.take() {
                    let resume = ResumePoint {
                        next: end_lsn as i64,
                        line: 0,
                    };
                    self.push(batch, pending, resume);
                }
                self.transaction = None;
            }
            LogicalReplicationMessage::Relation {
                relation_id,
                namespace,
                relation_name,
                columns,
                replica_identity,
            } => {
                if columns.iter().any(|c| !domains.knows(c.type_id))
                    && let Some(client) = meta.as_deref_mut()
                {
                    *domains = Domains::load(client).map_err(|e| describe_error(&e))?;
                }
                // Under REPLICA IDENTITY FULL pgoutput flags every column as the identity;
                // events are keyed by the primary key, as copied rows are.
                let primary_key = match (replica_identity, meta.as_deref_mut()) {
                    (b'f', Some(client)) => super::catalog::primary_key(client, relation_id)
                        .map_err(|e| describe_error(&e))?,
                    _ => Vec::new(),
                };
                let columns = columns
                    .iter()
                    .map(|c| Column {
                        name: c.name.to_string(),
                        kind: domains.kind(c.type_id, c.type_modifier),
                        key: if primary_key.is_empty() {
                            c.is_key()
                        } else {
                            primary_key.iter().any(|k| **k == *c.name)
                        },
                    })
                    .collect();
                let relation = Relation::new(
                    &self.server,
                    namespace.to_string(),
                    relation_name.to_string(),
                    columns,
                );
                self.relations_seen.push(relation.name());
                self.tables.insert(
                    relation_id,
                    Table {
                        relation,
                        type_names: None,
                    },
                );
            }
            LogicalReplicationMessage::Insert { relation_id, tuple } => {
                let after = self.image(relation_id, &tuple)?;
                let after: Vec<Value<'_>> = after.iter().map(as_value).collect();
                self.change(batch, relation_id, "c", None, Some(&after), wal_start)?;
            }
            LogicalReplicationMessage::Update {
                relation_id,
                old_tuple,
                new_tuple,
                key_type,
            } => {
                let before = match &old_tuple {
                    Some(old) => Some(self.image(relation_id, old)?),
                    None => None,
                };
                let mut after = self.image(relation_id, &new_tuple)?;
                // Only a full old row ('O') holds the other columns; a key-only one ('K')
                // has nulls there.
                let full = before.as_deref().filter(|_| key_type == Some('O'));
                self.fill_unchanged(relation_id, full, &mut after, meta)?;
                let after: Vec<Value<'_>> = after.iter().map(as_value).collect();
                let before: Option<Vec<Value<'_>>> =
                    before.as_ref().map(|b| b.iter().map(as_value).collect());
                if key_type == Some('K') {
                    // The key changed: as Debezium does, a delete of the old key and a
                    // create of the new row.
                    self.change(batch, relation_id, "d", before.as_deref(), None, wal_start)?;
                    self.change(batch, relation_id, "c", None, Some(&after), wal_start)?;
                } else {
                    let before = before.filter(|_| key_type == Some('O'));
                    self.change(
                        batch,
                        relation_id,
                        "u",
                        before.as_deref(),
                        Some(&after),
                        wal_start,
                    )?;
                }
            }
            LogicalReplicationMessage::Delete {
                relation_id,
                old_tuple,
                ..
            } => {
                let before = self.image(relation_id, &old_tuple)?;
                let before: Vec<Value<'_>> = before.iter().map(as_value).collect();
                self.change(batch, relation_id, "d", Some(&before), None, wal_start)?;
            }
            LogicalReplicationMessage::Truncate { relation_ids, .. } => {
                for relation_id in relation_ids {
                    self.change(batch, relation_id, "t", None, None, wal_start)?;
                }
            }
            LogicalReplicationMessage::Message {
                flags,
                lsn,
                prefix,
                content,
            } if flags & 1 == 0 => {
                // A heartbeat (or another program's message) outside any transaction: it
                // applies nothing, but its position lets the slot move on an idle source.
                if prefix == HEARTBEAT_PREFIX
                    && let Some(sent) = heartbeat_time(&content)
                {
                    let mut sent_heartbeats =
                        self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
                    if sent_heartbeats.len() >= super::MAX_SENT_HEARTBEATS {
                        sent_heartbeats.pop_front();
                    }
                    sent_heartbeats.push_back((lsn, sent));
                }
                let mut value = String::from(r#"{"op":"m","ts_ms":"#);
                value.push_str(&chrono::Utc::now().timestamp_millis().to_string());
                value.push_str(r#","source":{"connector":"postgresql","lsn":"#);
                value.push_str(&lsn.to_string());
                value.push_str(r#"},"message":{"prefix":"#);
                super::values::write_json_string(&mut value, &prefix);
                value.push_str(r#","content":"#);
                super::values::write_json_string(&mut value, &String::from_utf8_lossy(&content));
                value.push_str("}}");
                let position = Position::Postgres {
                    stream: self.stream.clone(),
                    at: lsn as i64,
                    seq: 0,
                    resume: ResumePoint {
                        next: lsn as i64,
                        line: 0,
                    },
                    lsn,
                };
                batch.push(None, Some(value.as_bytes()), position);
            }
            _ => {}
        }
        Ok(())
    }

    /// A tuple's values as text; `None` for a null, `Some(None)`… see [`Image`].
    fn image<'t>(&self, relation_id: u32, tuple: &'t TupleData) -> Result<Vec<Cell<'t>>, String> {
        let table = self
            .tables
            .get(&relation_id)
            .ok_or_else(|| format!("a change of relation {relation_id} before its description"))?;
        if tuple.columns.len() != table.relation.columns.len() {
            return Err(format!(
                "a row of {} columns for table {} of {}",
                tuple.columns.len(),
                table.relation.name(),
                table.relation.columns.len()
            ));
        }
        tuple
            .columns
            .iter()
            .map(|data| match data.data_type {
                b'n' => Ok(Cell::Null),
                b'u' => Ok(Cell::Unchanged),
                _ => match std::str::from_utf8(data.as_bytes()) {
                    // Borrowed from the message: a value is not copied out.
                    Ok(text) => Ok(Cell::Text(Cow::Borrowed(text))),
                    // Bytes of another encoding (a SQL_ASCII database): the change becomes
                    // a dead letter with the reason, and the stream goes on.
                    Err(_) => Ok(Cell::Unreadable(
                        String::from_utf8_lossy(data.as_bytes()).into_owned(),
                    )),
                },
            })
            .collect()
    }

    /// Fills the columns an update left unchanged and pgoutput did not send (TOASTed
    /// values): from the old row when the table's replica identity is FULL, else from the
    /// source row as it is now. The row read now may be newer than this change, but every
    /// change after this one follows in the stream, so the target still ends where the
    /// source is; a row deleted since has its delete following too.
    fn fill_unchanged<'t>(
        &mut self,
        relation_id: u32,
        before: Option<&[Cell<'t>]>,
        after: &mut [Cell<'t>],
        meta: Option<&mut Client>,
    ) -> Result<(), String> {
        if !after.contains(&Cell::Unchanged) {
            return Ok(());
        }
        if let Some(before) = before {
            for (cell, old) in after.iter_mut().zip(before) {
                if *cell == Cell::Unchanged && *old != Cell::Unchanged {
                    *cell = old.clone();
                }
            }
        }
        if !after.contains(&Cell::Unchanged) {
            return Ok(());
        }
        let Some(client) = meta else {
            return Err("an unchanged TOASTed value to read, and no connection".into());
        };
        // The table by its OID: it may have been renamed since this change.
        let current = client
            .query_opt(
                "SELECT c.oid::regclass::text FROM pg_class c WHERE c.oid = $1",
                &[&relation_id],
            )
            .map_err(|e| describe_error(&e))?;
        let Some(current) = current.map(|r| r.get::<_, String>(0)) else {
            // Dropped since: nothing of it is left to apply.
            for cell in after.iter_mut() {
                if *cell == Cell::Unchanged {
                    *cell = Cell::Null;
                }
            }
            return Ok(());
        };
        let table = self.tables.get_mut(&relation_id).expect("described");
        let relation = &table.relation;
        if table.type_names.is_none() {
            let mut names = Vec::new();
            for column in &relation.columns {
                let row = client
                    .query_opt(
                        "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                         WHERE a.attrelid = $1 AND a.attname = $2 AND NOT a.attisdropped",
                        &[&relation_id, &column.name],
                    )
                    .map_err(|e| describe_error(&e))?;
                names.push(row.map_or_else(|| "text".to_string(), |r| r.get::<_, String>(0)));
            }
            table.type_names = Some(names);
        }
        let types = table.type_names.as_ref().expect("read");
        let missing: Vec<usize> = (0..after.len())
            .filter(|&i| after[i] == Cell::Unchanged)
            .collect();
        let select: Vec<String> = missing
            .iter()
            .map(|&i| format!("{}::text", quote(&relation.columns[i].name)))
            .collect();
        let mut params: Vec<String> = Vec::new();
        let mut conditions = Vec::new();
        for (i, column) in relation.columns.iter().enumerate() {
            if !column.key {
                continue;
            }
            let Cell::Text(text) = &after[i] else {
                return Err(format!("key column {} is null in an update", column.name));
            };
            params.push(text.to_string());
            conditions.push(format!(
                "{} = ${}::text::{}",
                quote(&column.name),
                params.len(),
                types[i]
            ));
        }
        if conditions.is_empty() {
            return Err(format!(
                "table {} has neither a key nor REPLICA IDENTITY FULL: an unchanged TOASTed \
                 value cannot be read back",
                relation.name()
            ));
        }
        let sql = format!(
            "SELECT {} FROM {current} WHERE {}",
            select.join(", "),
            conditions.join(" AND ")
        );
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn postgres::types::ToSql + Sync))
            .collect();
        let row = client
            .query_opt(&sql, &refs)
            .map_err(|e| describe_error(&e))?;
        for (n, &i) in missing.iter().enumerate() {
            after[i] = match &row {
                Some(row) => match row.get::<_, Option<String>>(n) {
                    Some(text) => Cell::Text(Cow::Owned(text)),
                    None => Cell::Null,
                },
                // Deleted since: its delete follows in the stream.
                None => Cell::Null,
            };
        }
        Ok(())
    }

    fn change(
        &mut self,
        batch: &mut RawBatch,
        relation_id: u32,
        op: &str,
        before: Option<&[Value<'_>]>,
        after: Option<&[Value<'_>]>,
        lsn: u64,
    ) -> Result<(), String> {
        let Some(transaction) = self.transaction.as_mut() else {
            return Err(format!(
                "a change at {} outside a transaction",
                lsn_text(lsn)
            ));
        };
        transaction.seq += 1;
        let (at, seq) = (transaction.at, transaction.seq);
        let source = SourceInfo {
            server: &self.server,
            db: &self.db,
            ts_ms: transaction.ts_ms,
            snapshot: "false",
            tx_id: Some(transaction.xid),
            lsn,
            now_ms: self.now_ms,
        };
        let table = self
            .tables
            .get(&relation_id)
            .ok_or_else(|| format!("a change of relation {relation_id} before its description"))?;
        table.relation.write_event(
            &self.native,
            &mut self.value,
            &mut self.key,
            op,
            before,
            after,
            &source,
        )?;
        let pending = Pending {
            // The buffers move into the held change instead of being copied per change.
            key: (!self.key.is_empty()).then(|| std::mem::take(&mut self.key)),
            value: std::mem::take(&mut self.value),
            at,
            seq,
            lsn,
        };
        if let Some(previous) = self.pending.replace(pending) {
            let resume = ResumePoint {
                next: previous.at as i64,
                line: previous.seq + 1,
            };
            self.push(batch, previous, resume);
        }
        Ok(())
    }

    fn push(&mut self, batch: &mut RawBatch, pending: Pending, resume: ResumePoint) {
        self.changes += 1;
        let position = Position::Postgres {
            stream: self.stream.clone(),
            at: pending.at as i64,
            seq: pending.seq,
            resume,
            lsn: pending.lsn,
        };
        batch.push(
            pending.key.as_deref().map(str::as_bytes),
            Some(&pending.value),
            position,
        );
        // Its buffers are written into next, instead of growing new ones per change.
        self.value = pending.value;
        if let Some(key) = pending.key {
            self.key = key;
        }
    }
}

/// A column of a row image as pgoutput sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell<'t> {
    Null,
    Text(Cow<'t, str>),
    /// A TOASTed value the update did not change, which pgoutput does not send.
    Unchanged,
    /// A value that is not UTF-8, as far as it reads (invalid bytes replaced).
    Unreadable(String),
}

fn as_value<'a>(cell: &'a Cell<'_>) -> Value<'a> {
    match cell {
        Cell::Text(text) => Value::Text(text),
        Cell::Unreadable(text) => Value::Unreadable(text),
        Cell::Null | Cell::Unchanged => Value::Null,
    }
}

/// The prefix of weir's heartbeat messages.
pub const HEARTBEAT_PREFIX: &str = "weir-heartbeat";

/// When a heartbeat was written: its content is the source's `now()` in ISO form, UTC.
fn heartbeat_time(content: &[u8]) -> Option<chrono::DateTime<chrono::Utc>> {
    let text = std::str::from_utf8(content).ok()?;
    chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
        .ok()
        .map(|t| t.to_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_options_join_the_url_or_the_conninfo() {
        assert!(replication_conninfo("postgres://u@h/db").starts_with(
            "postgres://u@h/db?replication=database&options=-c%20DateStyle%3DISO%2CYMD"
        ));
        assert!(
            replication_conninfo("postgres://u@h/db?sslmode=disable")
                .contains("disable&replication")
        );
        assert!(
            replication_conninfo("host=h dbname=db")
                .contains("IntervalStyle=postgres' connect_timeout=30 tcp_user_timeout=60000")
        );
    }

    #[test]
    fn the_network_defaults_join_unless_the_url_sets_them() {
        let url = replication_conninfo("postgres://u@h/db?keepalives_idle=60");
        assert!(url.contains("&tcp_user_timeout=60000&keepalives_interval=5"));
        assert!(url.contains("&keepalives_count=3"));
        assert_eq!(url.matches("keepalives_idle").count(), 1);
        let conninfo = replication_conninfo("host=h tcp_user_timeout=5000");
        assert_eq!(conninfo.matches("tcp_user_timeout").count(), 1);
        assert!(conninfo.ends_with(" keepalives_idle=15 keepalives_interval=5 keepalives_count=3"));
    }

    #[test]
    fn a_heartbeat_s_time_is_read_from_its_content() {
        let at = super::heartbeat_time(b"2026-12-05 07:00:01.250431+00").unwrap();
        assert_eq!(at.timestamp_millis(), 1_796_454_001_250);
        assert_eq!(super::heartbeat_time(b"not a time"), None);
    }
}
