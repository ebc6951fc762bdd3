//! The replication connection: libpq in replication mode, read with level-triggered
//! `poll(2)`.
//!
//! `pg_walstream`'s own connection waits for the socket through tokio's edge-triggered
//! readiness and can stall for good when a large message is left half read in the socket
//! (a 128 kB row did it in `tests/postgres_cdc.rs`: 111 kB sat unread while the stream
//! waited). This module does the little weir needs of the protocol itself (create the
//! slot, `START_REPLICATION`, read `XLogData` and keepalives, send standby status
//! updates) and leaves pgoutput parsing to `pg_walstream`'s parser.

use std::ffi::{CStr, CString};
use std::time::{Duration, Instant};

use pq_sys::{
    ConnStatusType, ExecStatusType, PGconn, PGresult, PQclear, PQconnectdb, PQconsumeInput,
    PQerrorMessage, PQexec, PQfinish, PQflush, PQfreemem, PQgetCopyData, PQgetResult, PQgetisnull,
    PQgetvalue, PQnfields, PQntuples, PQputCopyData, PQresultErrorMessage, PQresultStatus,
    PQsetnonblocking, PQsocket, PQstatus,
};

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// One message of the replication stream.
pub enum Frame {
    /// WAL data: a pgoutput message starting at `wal_start`.
    Data { wal_start: u64, data: Vec<u8> },
}

enum Received {
    Data(Frame),
    /// A keepalive; `reply` when the server asks for a status update now.
    Keepalive {
        reply: bool,
    },
    Unreadable,
}

pub struct ReplicationConnection {
    conn: *mut PGconn,
    /// The end of the WAL the server has sent us (from data and keepalives).
    received: u64,
    last_status: Option<Instant>,
    /// START_REPLICATION has run: the connection is in copy mode.
    streaming: bool,
}

// A libpq connection may move between threads; it is used by one at a time (`&mut self`).
unsafe impl Send for ReplicationConnection {}

impl Drop for ReplicationConnection {
    fn drop(&mut self) {
        unsafe { PQfinish(self.conn) };
    }
}

fn text(ptr: *const std::os::raw::c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .trim()
        .to_string()
}

/// A result, freed when dropped.
struct Result_(*mut PGresult);

impl Drop for Result_ {
    fn drop(&mut self) {
        if !self.0.is_null() {
            unsafe { PQclear(self.0) };
        }
    }
}

impl ReplicationConnection {
    /// Connects with `conninfo`, which must ask for `replication=database`.
    pub fn connect(conninfo: &str) -> Result<ReplicationConnection, String> {
        let conninfo = CString::new(conninfo).map_err(|_| "a URL with a NUL byte".to_string())?;
        let conn = unsafe { PQconnectdb(conninfo.as_ptr()) };
        if conn.is_null() {
            return Err("libpq could not allocate a connection".into());
        }
        let connection = ReplicationConnection {
            conn,
            received: 0,
            last_status: None,
            streaming: false,
        };
        if unsafe { PQstatus(conn) } != ConnStatusType::CONNECTION_OK {
            return Err(crate::redact::redact(&connection.error()).into_owned());
        }
        Ok(connection)
    }

    fn error(&self) -> String {
        text(unsafe { PQerrorMessage(self.conn) })
    }

    /// Runs a replication command and returns its rows as text.
    pub fn command(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        let sql = CString::new(sql).map_err(|_| "a command with a NUL byte".to_string())?;
        let result = Result_(unsafe { PQexec(self.conn, sql.as_ptr()) });
        let status = unsafe { PQresultStatus(result.0) };
        match status {
            ExecStatusType::PGRES_TUPLES_OK | ExecStatusType::PGRES_COMMAND_OK => {}
            _ => {
                let message = text(unsafe { PQresultErrorMessage(result.0) });
                return Err(if message.is_empty() {
                    self.error()
                } else {
                    message
                });
            }
        }
        let (rows, fields) = unsafe { (PQntuples(result.0), PQnfields(result.0)) };
        Ok((0..rows)
            .map(|row| {
                (0..fields)
                    .map(|field| unsafe {
                        (PQgetisnull(result.0, row, field) == 0)
                            .then(|| text(PQgetvalue(result.0, row, field)))
                    })
                    .collect()
            })
            .collect())
    }

    /// Creates a logical slot for pgoutput exporting a snapshot. Returns its consistent
    /// point and the snapshot's name, which stays usable until this connection runs its
    /// next command.
    pub fn create_slot(&mut self, slot: &str, temporary: bool) -> Result<(u64, String), String> {
        let rows = self.command(&format!(
            "CREATE_REPLICATION_SLOT {}{} LOGICAL pgoutput EXPORT_SNAPSHOT",
            crate::sink::postgres::quote(slot),
            if temporary { " TEMPORARY" } else { "" }
        ))?;
        let row = rows
            .first()
            .ok_or("CREATE_REPLICATION_SLOT returned no row")?;
        let lsn = row
            .get(1)
            .and_then(|v| v.as_deref())
            .and_then(super::parse_lsn)
            .ok_or("CREATE_REPLICATION_SLOT returned no consistent point")?;
        let snapshot = row
            .get(2)
            .and_then(|v| v.clone())
            .ok_or("CREATE_REPLICATION_SLOT exported no snapshot")?;
        Ok((lsn, snapshot))
    }

    /// Starts streaming `slot` from its confirmed flush LSN.
    pub fn start(&mut self, slot: &str, publication: &str) -> Result<(), String> {
        let literal = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL 0/0 (proto_version '2', publication_names {}, \
             messages 'true')",
            crate::sink::postgres::quote(slot),
            literal(&crate::sink::postgres::quote(publication))
        );
        let sql = CString::new(sql).map_err(|_| "a name with a NUL byte".to_string())?;
        let result = Result_(unsafe { PQexec(self.conn, sql.as_ptr()) });
        if unsafe { PQresultStatus(result.0) } != ExecStatusType::PGRES_COPY_BOTH {
            let message = text(unsafe { PQresultErrorMessage(result.0) });
            return Err(format!("START_REPLICATION: {message}"));
        }
        if unsafe { PQsetnonblocking(self.conn, 1) } != 0 {
            return Err(format!(
                "cannot make the connection non-blocking: {}",
                self.error()
            ));
        }
        self.streaming = true;
        Ok(())
    }

    /// Reports `flushed` without reading: while the pipeline cannot take more records, a
    /// status update a second keeps the server from ending the connection
    /// (`wal_sender_timeout`), and the slot still moves as the sink commits.
    pub fn keep_alive(&mut self, flushed: u64) -> Result<(), String> {
        if !self.streaming {
            return Ok(());
        }
        self.maybe_send_status(flushed, false)
    }

    /// The next WAL message, waiting at most `wait`. Keepalives are answered on the way;
    /// `flushed` (what the sink has durably applied) is reported at least every second.
    pub fn next(&mut self, wait: Duration, flushed: u64) -> Result<Option<Frame>, String> {
        let deadline = Instant::now() + wait;
        loop {
            self.maybe_send_status(flushed, false)?;
            let mut buffer: *mut std::os::raw::c_char = std::ptr::null_mut();
            let n = unsafe { PQgetCopyData(self.conn, &mut buffer, 1) };
            if n > 0 {
                // Read in libpq's buffer, and freed before anything can return: a change's
                // bytes are copied out once.
                let frame = {
                    let message =
                        unsafe { std::slice::from_raw_parts(buffer as *const u8, n as usize) };
                    let frame = self.frame(message);
                    unsafe { PQfreemem(buffer.cast()) };
                    frame
                };
                match frame {
                    Received::Data(frame) => return Ok(Some(frame)),
                    Received::Keepalive { reply } => {
                        if reply {
                            self.maybe_send_status(flushed, true)?;
                        }
                    }
                    Received::Unreadable => {
                        return Err("an unreadable replication message".into());
                    }
                }
                continue;
            }
            if n == -1 {
                let result = Result_(unsafe { PQgetResult(self.conn) });
                let message = text(unsafe { PQresultErrorMessage(result.0) });
                return Err(format!("the server ended replication: {message}"));
            }
            if n < -1 {
                return Err(format!("replication connection: {}", self.error()));
            }
            // Nothing buffered: wait for the socket (level-triggered), then read it.
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Ok(None);
            }
            let mut fd = libc::pollfd {
                fd: unsafe { PQsocket(self.conn) },
                events: libc::POLLIN,
                revents: 0,
            };
            let millis = remaining.as_millis().clamp(1, 1000) as i32;
            let ready = unsafe { libc::poll(&mut fd, 1, millis) };
            if ready < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(format!("waiting for the replication connection: {e}"));
                }
            }
            if ready > 0 && unsafe { PQconsumeInput(self.conn) } == 0 {
                return Err(format!("replication connection: {}", self.error()));
            }
        }
    }

    /// What one CopyData message of the replication stream holds.
    fn frame(&mut self, message: &[u8]) -> Received {
        match message.first() {
            Some(b'w') if message.len() >= 25 => {
                let wal_start = u64::from_be_bytes(message[1..9].try_into().expect("8"));
                let wal_end = u64::from_be_bytes(message[9..17].try_into().expect("8"));
                self.received = self.received.max(wal_end).max(wal_start);
                Received::Data(Frame::Data {
                    wal_start,
                    data: message[25..].to_vec(),
                })
            }
            Some(b'k') if message.len() >= 18 => {
                let wal_end = u64::from_be_bytes(message[1..9].try_into().expect("8"));
                self.received = self.received.max(wal_end);
                Received::Keepalive {
                    reply: message[17] != 0,
                }
            }
            _ => Received::Unreadable,
        }
    }

    /// Sends a standby status update when one is due (every second) or the server asked:
    /// `flushed` is what the sink has durably applied, the point the slot may move to.
    fn maybe_send_status(&mut self, flushed: u64, asked: bool) -> Result<(), String> {
        let due = self
            .last_status
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        if !(asked || due) {
            return Ok(());
        }
        let now = chrono::Utc::now().timestamp_micros() - PG_EPOCH_MICROS;
        let mut message = Vec::with_capacity(34);
        message.push(b'r');
        message.extend_from_slice(&self.received.max(flushed).to_be_bytes());
        message.extend_from_slice(&flushed.to_be_bytes());
        message.extend_from_slice(&flushed.to_be_bytes());
        message.extend_from_slice(&now.to_be_bytes());
        message.push(0);
        let sent =
            unsafe { PQputCopyData(self.conn, message.as_ptr().cast(), message.len() as i32) };
        if sent != 1 {
            return Err(format!("cannot send a status update: {}", self.error()));
        }
        // Non-blocking: what does not go out now goes with the next flush.
        if unsafe { PQflush(self.conn) } < 0 {
            return Err(format!("cannot send a status update: {}", self.error()));
        }
        self.last_status = Some(Instant::now());
        Ok(())
    }
}
