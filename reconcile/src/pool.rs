//! PostgreSQL connections kept for reuse within one `weir reconcile`.
//!
//! Reconciling a database compares hundreds of tables, and each table's comparison reads
//! both catalogs, probes the hash functions, narrows by checksum and reads the differing
//! ranges: a fresh connection for each would cost a backend start and authentication
//! every time (about 45 ms per table pair, docs/benchmarks.md). A connection goes back to
//! the pool when dropped, unless it broke; every use here ends its transaction (a dropped
//! `Transaction` rolls back) and sets nothing on the session, so the next use finds it as
//! new.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{LazyLock, Mutex};

use postgres::Client;

/// Most idle connections kept per server URL.
const IDLE_PER_URL: usize = 16;

/// Idle connections by URL. The URLs hold passwords, so they stay in this map only.
static IDLE: LazyLock<Mutex<HashMap<String, Vec<Client>>>> = LazyLock::new(Default::default);

/// A connection that returns to the pool when dropped.
pub struct Pooled {
    client: Option<Client>,
    url: String,
}

/// An idle connection to `url`, else a new one.
pub fn connect(url: &str) -> Result<Pooled, postgres::Error> {
    let idle = IDLE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_mut(url)
        .and_then(Vec::pop);
    let client = match idle {
        Some(client) if !client.is_closed() => client,
        _ => weir_runtime::postgres_client::connect(url)?,
    };
    Ok(Pooled {
        client: Some(client),
        url: url.to_string(),
    })
}

impl Deref for Pooled {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("held until dropped")
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("held until dropped")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        if client.is_closed() {
            return;
        }
        let mut idle = IDLE.lock().unwrap_or_else(|e| e.into_inner());
        let clients = idle.entry(std::mem::take(&mut self.url)).or_default();
        if clients.len() < IDLE_PER_URL {
            clients.push(client);
        }
    }
}
