//! PostgreSQL connections for plugins (feature `postgres`): connection strings shown without
//! their password, and connections opened with TLS as libpq's `sslmode` says, so that every
//! plugin that talks to PostgreSQL (the `postgres` sink, the `analytics` API) offers the
//! same choices with the same words.

use std::path::Path;

use tokio_postgres::Client;

use crate::Context;

/// Whether and how the connection is encrypted (as libpq's `sslmode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// No TLS.
    #[default]
    Disable,
    /// TLS, without checking the server's certificate.
    Require,
    /// TLS, checking the certificate chain (against `tls_ca_file` or the system's roots) but not the host name.
    VerifyCa,
    /// TLS, checking the chain and that the certificate names the host.
    VerifyFull,
}

/// The connection string with its password masked.
pub fn masked_url(url: &str) -> String {
    if let Some(rest) = url.split_once("://").map(|(_, r)| r) {
        if let Some((userinfo, host)) = rest.rsplit_once('@') {
            let user = userinfo.split(':').next().unwrap_or("");
            let scheme = &url[..url.len() - rest.len()];
            return format!("{scheme}{user}:***@{host}");
        }
        return url.to_owned();
    }
    url.split_whitespace().map(|kv| if kv.starts_with("password=") { "password=***" } else { kv }).collect::<Vec<_>>().join(" ")
}

/// Why a connection could not be opened.
#[derive(Debug)]
pub enum ConnectError {
    /// The config is wrong (connection string, CA file): retrying will not help. Its message
    /// shows the connection string masked.
    Config(String),
    /// The server refused or did not answer.
    Server(tokio_postgres::Error),
}

/// Opens a connection to `url` with `tls` (`ca_file`: the PEM of the authority that signed
/// the server's certificate, already resolved), named `weir` unless the string names it;
/// the connection is driven on the current runtime and a warning logged when it closes.
pub async fn connect(url: &str, tls: TlsMode, ca_file: Option<&Path>, ctx: Context) -> Result<Client, ConnectError> {
    let shown = masked_url(url);
    let mut pg: tokio_postgres::Config =
        url.parse().map_err(|e| ConnectError::Config(format!("url {shown} is not a connection string: {e}")))?;
    if pg.get_application_name().is_none() {
        pg.application_name("weir");
    }
    if tls == TlsMode::Disable {
        let (client, connection) = pg.connect(tokio_postgres::NoTls).await.map_err(ConnectError::Server)?;
        drive(connection, ctx);
        return Ok(client);
    }
    let mut builder = native_tls::TlsConnector::builder();
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| ConnectError::Config(format!("cannot read tls_ca_file {}: {e}", path.display())))?;
        let cert =
            native_tls::Certificate::from_pem(&pem).map_err(|e| ConnectError::Config(format!("tls_ca_file {}: {e}", path.display())))?;
        builder.add_root_certificate(cert);
    }
    match tls {
        TlsMode::Require => {
            builder.danger_accept_invalid_certs(true).danger_accept_invalid_hostnames(true);
        }
        TlsMode::VerifyCa => {
            builder.danger_accept_invalid_hostnames(true);
        }
        _ => {}
    }
    let connector = builder.build().map_err(|e| ConnectError::Config(format!("cannot set up TLS: {e}")))?;
    pg.ssl_mode(tokio_postgres::config::SslMode::Require);
    let (client, connection) = pg.connect(postgres_native_tls::MakeTlsConnector::new(connector)).await.map_err(ConnectError::Server)?;
    drive(connection, ctx);
    Ok(client)
}

/// Drives a connection until it closes.
fn drive<S, T>(connection: tokio_postgres::Connection<S, T>, ctx: Context)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            ctx.warn(&format!("PostgreSQL connection closed: {e}"));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::masked_url;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            masked_url("postgres://nexuscore:nexuscore123@localhost:5432/nexuscore"),
            "postgres://nexuscore:***@localhost:5432/nexuscore"
        );
        assert_eq!(masked_url("postgres://u:p@ss@h/db"), "postgres://u:***@h/db");
        assert_eq!(masked_url("host=x password=secret dbname=y"), "host=x password=*** dbname=y");
        assert_eq!(masked_url("postgres://h/db"), "postgres://h/db");
    }
}
