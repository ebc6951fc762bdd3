//! Connections to PostgreSQL with weir's network defaults.
//!
//! A server that disappears without closing its connections (its host died, its VM was
//! paused, the network between was cut) leaves a client waiting on the operating
//! system's defaults: data sent is retransmitted for about 15 minutes, and an idle wait
//! for a reply is only probed after 2 hours. A sink's statement, a stored-position read
//! inside a consumer-group rebalance, or a reconcile would hang that long. With these
//! defaults the kernel gives up after about a minute: the statement fails with a
//! connection error, which the sink retries on a new connection.
//!
//! A server that is alive but slow is not affected: its kernel acknowledges what is sent
//! and answers keepalives however long a statement runs. One that stops reading in the
//! middle of a statement for longer than [`TCP_USER_TIMEOUT`] (a `COPY` waiting on a
//! lock) is: the connection ends and the batch is applied again, as after PostgreSQL's
//! own `lock_timeout`. Settings in the URL win over these: `connect_timeout`,
//! `tcp_user_timeout`, `keepalives`,
//! `keepalives_idle`, `keepalives_interval` and `keepalives_retries`, all in seconds (the
//! Rust driver's names and units: libpq counts `tcp_user_timeout` in milliseconds and
//! calls the last one `keepalives_count`). They apply to TCP connections, not to Unix
//! sockets.

use std::time::Duration;

use postgres::{Client, Config, NoTls};

/// How long a connection attempt may take (libpq: no limit).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection may stay silent before the kernel probes the server.
pub const KEEPALIVES_IDLE: Duration = Duration::from_secs(15);
/// Between two unanswered probes.
pub const KEEPALIVES_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered probes before the connection is dropped. With a `tcp_user_timeout`, Linux
/// counts that instead: the connection is dropped once a probe is unanswered and nothing
/// was received for that long.
pub const KEEPALIVES_RETRIES: u32 = 3;
/// How long sent data may stay unacknowledged (and, with keepalives, how long the server
/// may stay silent) before the connection is dropped. As long as the sink's default
/// `lock_timeout` (`idle_transaction_timeout`, 60 s), so that a live server waiting on a
/// lock mid-statement ends the statement itself first.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);

/// The idle time before the first keepalive that tokio-postgres uses when the URL sets
/// none (its getter has no "unset").
const LIBRARY_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 60 * 60);

/// `url` parsed, with weir's network defaults where it sets nothing.
pub fn config(url: &str) -> Result<Config, postgres::Error> {
    let mut config: Config = url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    // `keepalives=0` in the URL turns them off; the rest only matter when they are on.
    if config.get_keepalives() {
        if config.get_keepalives_idle() == LIBRARY_KEEPALIVES_IDLE {
            config.keepalives_idle(KEEPALIVES_IDLE);
        }
        if config.get_keepalives_interval().is_none() {
            config.keepalives_interval(KEEPALIVES_INTERVAL);
        }
        if config.get_keepalives_retries().is_none() {
            config.keepalives_retries(KEEPALIVES_RETRIES);
        }
    }
    Ok(config)
}

/// The same defaults for a connection libpq makes (the `postgres-cdc` source's
/// replication connection), with libpq's names and units: to be added to a conninfo for
/// each key it does not name.
pub fn libpq_defaults() -> [(&'static str, String); 5] {
    [
        ("connect_timeout", CONNECT_TIMEOUT.as_secs().to_string()),
        ("tcp_user_timeout", TCP_USER_TIMEOUT.as_millis().to_string()),
        ("keepalives_idle", KEEPALIVES_IDLE.as_secs().to_string()),
        (
            "keepalives_interval",
            KEEPALIVES_INTERVAL.as_secs().to_string(),
        ),
        ("keepalives_count", KEEPALIVES_RETRIES.to_string()),
    ]
}

/// A plain (no TLS) connection to `url` with weir's network defaults.
pub fn connect(url: &str) -> Result<Client, postgres::Error> {
    config(url)?.connect(NoTls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_without_network_settings_gets_the_defaults() {
        let config = config("postgres://weir@127.0.0.1:5432/app").unwrap();
        assert_eq!(config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        assert_eq!(config.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
        assert!(config.get_keepalives());
        assert_eq!(config.get_keepalives_idle(), KEEPALIVES_IDLE);
        assert_eq!(config.get_keepalives_interval(), Some(KEEPALIVES_INTERVAL));
        assert_eq!(config.get_keepalives_retries(), Some(KEEPALIVES_RETRIES));
    }

    #[test]
    fn settings_in_the_url_win() {
        let config = config(
            "postgres://weir@127.0.0.1:5432/app?connect_timeout=5&tcp_user_timeout=120\
             &keepalives_idle=60&keepalives_interval=20&keepalives_retries=9",
        )
        .unwrap();
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(5)));
        assert_eq!(
            config.get_tcp_user_timeout(),
            Some(&Duration::from_secs(120))
        );
        assert_eq!(config.get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(
            config.get_keepalives_interval(),
            Some(Duration::from_secs(20))
        );
        assert_eq!(config.get_keepalives_retries(), Some(9));

        // 0 means "the library's default" to the driver, which reads as unset.
        let key_value = super::config("host=db user=weir keepalives=0").unwrap();
        assert!(!key_value.get_keepalives());
        assert_eq!(key_value.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
    }
}
