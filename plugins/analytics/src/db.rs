//! The PostgreSQL connections the API shares: a few, each opened on first use and opened
//! again after the server closed it, taken in turn, so that a long query (a funnel over
//! months) holds up only the requests that happen to share its connection. Each
//! `tokio_postgres::Client` pipelines its concurrent queries; each session gets the
//! configured `work_mem`, so the queries' sorts and hashes stay in memory.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::Client;
use weir_plugin::pg::{masked_url, ConnectError, TlsMode};
use weir_plugin::Context;

/// How long to wait for the server to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The shared connections.
pub struct Db {
    url: String,
    tls: TlsMode,
    ca_file: Option<std::path::PathBuf>,
    clients: Vec<Mutex<Option<Arc<Client>>>>,
    next: AtomicUsize,
    /// `SET work_mem = …` for each new session.
    setup: String,
    ctx: Context,
}

impl Db {
    /// `connections` connections to `url` (at least one) with `tls` (`ca_file` resolved),
    /// opened on first use, each session with `work_mem` (checked: digits and a unit).
    pub fn new(url: &str, tls: TlsMode, ca_file: Option<std::path::PathBuf>, connections: usize, work_mem: &str, ctx: Context) -> Db {
        Db {
            url: url.to_owned(),
            tls,
            ca_file,
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
        let url = masked_url(&self.url);
        let opened = self.open(&url).await;
        // Each connection opened, or not, says whether the database answers.
        match &opened {
            Ok(_) => self.ctx.report_health("postgres", &url, true, ""),
            Err(e) => self.ctx.report_health("postgres", &url, false, e),
        }
        let client = Arc::new(opened?);
        *held = Some(client.clone());
        Ok(client)
    }

    /// A connection of its own (for transactions), with the same settings.
    pub async fn dedicated(&self) -> Result<Client, String> {
        self.open(&masked_url(&self.url)).await
    }

    async fn open(&self, url: &str) -> Result<Client, String> {
        let client =
            match tokio::time::timeout(CONNECT_TIMEOUT, weir_plugin::pg::connect(&self.url, self.tls, self.ca_file.as_deref(), self.ctx))
                .await
            {
                Ok(Ok(client)) => client,
                Ok(Err(ConnectError::Config(m))) => return Err(m),
                Ok(Err(ConnectError::Server(e))) => return Err(format!("cannot connect to {url}: {}", detail(&e))),
                Err(_) => return Err(format!("cannot connect to {url}: no answer within {} s", CONNECT_TIMEOUT.as_secs())),
            };
        client.batch_execute(&self.setup).await.map_err(|e| format!("cannot set work_mem on {url}: {}", detail(&e)))?;
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
