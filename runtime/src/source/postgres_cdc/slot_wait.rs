//! Saying what a new replication slot waits for.
//!
//! `CREATE_REPLICATION_SLOT` returns only once every transaction that was running when
//! it began has ended: its consistent point must see each one whole. A session left idle
//! in a transaction that wrote something holds the slot's creation, and so weir's start,
//! for as long as it stays open, with nothing else to show for it. While the slot is being
//! created, a watcher on a connection of its own names those transactions (process id,
//! state, how long open, application name; never their queries, which may hold secrets)
//! in the log every few seconds.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::redact::Secret;

/// How long the slot's creation may take before the watcher first looks.
const FIRST_LOOK: Duration = Duration::from_secs(3);
/// How often it looks again.
const AGAIN: Duration = Duration::from_secs(10);

/// Watches while alive; dropping it stops and joins the watcher.
pub struct SlotWait {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl SlotWait {
    pub fn start(url: Secret, slot: String) -> SlotWait {
        let (stop, stopped) = channel();
        let thread = std::thread::Builder::new()
            .name("weir-slot-wait".into())
            .spawn(move || watch(&url, &slot, &stopped))
            .ok();
        SlotWait {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for SlotWait {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn watch(url: &Secret, slot: &str, stopped: &Receiver<()>) {
    let mut wait = FIRST_LOOK;
    let mut client = None;
    loop {
        match stopped.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            // Created (or failed): the sender is gone.
            _ => return,
        }
        wait = AGAIN;
        if client.is_none() {
            client = super::connect(url.expose()).ok();
        }
        let Some(c) = client.as_mut() else {
            continue;
        };
        match blockers(c) {
            Ok(found) if !found.is_empty() => {
                let reason = format!(
                    "creating replication slot {slot} waits for {} transaction(s) on the \
                     source to end: {}; a session idle in a transaction holds it until it \
                     commits, rolls back or is ended",
                    found.len(),
                    found.join("; ")
                );
                tracing::warn!("{reason}");
            }
            Ok(_) => {}
            Err(_) => client = None,
        }
    }
}

/// The transactions with an id (those a new slot waits for), oldest first, described.
fn blockers(client: &mut postgres::Client) -> Result<Vec<String>, postgres::Error> {
    let rows = client.query(
        "SELECT pid, coalesce(state, ''), coalesce(application_name, ''),
                coalesce(extract(epoch FROM now() - xact_start)::bigint, 0)
         FROM pg_stat_activity
         WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
         ORDER BY xact_start NULLS LAST LIMIT 5",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|r| {
            let (pid, state, application, seconds): (i32, String, String, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            let application = if application.is_empty() {
                String::new()
            } else {
                format!(", application {application:?}")
            };
            format!("process {pid} ({state}, open {seconds} s{application})")
        })
        .collect())
}
