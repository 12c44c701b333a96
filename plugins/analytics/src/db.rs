//! The PostgreSQL connection the API shares: opened on first use, opened again after the
//! server closed it. One `tokio_postgres::Client` pipelines the concurrent queries.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};
use weir_plugin::Context;

/// How long to wait for the server to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The shared connection.
pub struct Db {
    url: String,
    client: Mutex<Option<Arc<Client>>>,
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
    /// A connection to `url`, opened on first use.
    pub fn new(url: &str, ctx: Context) -> Db {
        Db { url: url.to_owned(), client: Mutex::new(None), ctx }
    }

    /// The open connection, opening it when there is none or the last one closed.
    pub async fn client(&self) -> Result<Arc<Client>, String> {
        let mut held = self.client.lock().await;
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
