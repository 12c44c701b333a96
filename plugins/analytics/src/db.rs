//! The PostgreSQL connections the API shares: a few, each opened on first use and opened
//! again after the server closed it, taken in turn, so that a long query (a funnel over
//! months) holds up only the requests that happen to share its connection. Each
//! `tokio_postgres::Client` pipelines its concurrent queries; each session gets the
//! configured `work_mem`, so the queries' sorts and hashes stay in memory.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};
use weir_plugin::Context;

/// How long to wait for the server to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The shared connections.
pub struct Db {
    url: String,
    clients: Vec<Mutex<Option<Arc<Client>>>>,
    next: AtomicUsize,
    /// `SET work_mem = …` for each new session.
    setup: String,
    ctx: Context,
}

/// The connection string with its password replaced by `***`.
pub fn masked(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((auth, host)) = rest.rsplit_once('@') {
            if let Some((user, _)) = auth.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
        return url.to_owned();
    }
    url.split_whitespace()
        .map(|kv| if kv.starts_with("password=") { "password=***".to_owned() } else { kv.to_owned() })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Db {
    /// `connections` connections to `url` (at least one), opened on first use, each session
    /// with `work_mem` (checked: digits and a unit).
    pub fn new(url: &str, connections: usize, work_mem: &str, ctx: Context) -> Db {
        Db {
            url: url.to_owned(),
            clients: (0..connections.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            setup: format!("SET work_mem = '{work_mem}'"),
            ctx,
        }
    }

    /// The next connection in turn, opening it when there is none or the last one closed.
    pub async fn client(&self) -> Result<Arc<Client>, String> {
        let slot = &self.clients[self.next.fetch_add(1, Relaxed) % self.clients.len()];
        let mut held = slot.lock().await;
        if let Some(c) = held.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let url = masked(&self.url);
        let (client, connection) = match tokio::time::timeout(CONNECT_TIMEOUT, tokio_postgres::connect(&self.url, NoTls)).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(format!("cannot connect to {url}: {}", detail(&e))),
            Err(_) => return Err(format!("cannot connect to {url}: no answer within {} s", CONNECT_TIMEOUT.as_secs())),
        };
        let ctx = self.ctx;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                ctx.warn(&format!("PostgreSQL connection closed: {}", detail(&e)));
            }
        });
        client.batch_execute(&self.setup).await.map_err(|e| format!("cannot set work_mem on {url}: {}", detail(&e)))?;
        let client = Arc::new(client);
        *held = Some(client.clone());
        Ok(client)
    }
}

/// A PostgreSQL error with the server's message when there is one.
pub fn detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::masked;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(masked("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(masked("host=h password=secret dbname=d"), "host=h password=*** dbname=d");
        assert_eq!(masked("postgres://h/db"), "postgres://h/db");
    }
}
