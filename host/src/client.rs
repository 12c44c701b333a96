//! The CLI's client of a running host's admin API (`weir apply`, `weir delete`, `weir
//! status`): HTTP/1.1 over TCP to the admin address, with the admin token when one is set
//! (`WEIR_ADMIN_TOKEN` or `admin_token_file`, as the host reads it), over TLS when the host
//! config has `admin_tls`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use weir_plugin::tls::{certificates, private_key, provider};

use crate::admin::Token;
use crate::config::HostConfig;
use crate::error::HostError;

/// A running host's admin API.
pub struct Admin {
    address: String,
    token: Option<Token>,
    timeout: Duration,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

/// An answer of the admin API.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body, as text.
    pub body: String,
}

impl Answer {
    /// The body as JSON (`null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }

    /// The `error` the API answered with, or the body.
    pub fn error(&self) -> String {
        self.json()["error"].as_str().map_or_else(|| format!("HTTP {}: {}", self.status, self.body.trim()), str::to_owned)
    }
}

impl Admin {
    /// The admin API of `config` (its `admin` address and token).
    pub fn new(config: &HostConfig) -> Result<Admin, HostError> {
        let token = Token::load(std::env::var("WEIR_ADMIN_TOKEN").ok(), config.admin_token_file.as_deref())?;
        // A drain can take the drain timeout; give the host that and some.
        let timeout = Duration::from_secs(config.drain_timeout_secs.saturating_add(30));
        let tls = config.admin_tls.as_ref().map(|t| tls_client(&config.admin, &t.cert)).transpose()?;
        Ok(Admin { address: config.admin.clone(), token, timeout, tls })
    }

    /// `METHOD path`, with `body` of `content_type` and more headers.
    pub fn call(&self, method: &str, path: &str, body: Option<(&str, &[u8])>, headers: &[(&str, &str)]) -> Result<Answer, HostError> {
        let unreachable = |e: std::io::Error| {
            HostError::Usage(format!(
                "cannot reach the admin API at {} ({e}); is `weir run` running there? Give its address with --admin",
                self.address
            ))
        };
        let tcp = TcpStream::connect(&self.address).map_err(unreachable)?;
        tcp.set_read_timeout(Some(self.timeout)).map_err(unreachable)?;
        let mut stream: Box<dyn ReadWrite> = match &self.tls {
            None => Box::new(tcp),
            Some((config, name)) => {
                let conn = rustls::ClientConnection::new(config.clone(), name.clone())
                    .map_err(|e| HostError::Usage(format!("TLS to the admin API at {}: {e}", self.address)))?;
                Box::new(rustls::StreamOwned::new(conn, tcp))
            }
        };
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\n", self.address);
        if let Some(token) = &self.token {
            request.push_str(&format!("Authorization: {}\r\n", token.bearer()));
        }
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        let bytes: &[u8] = match body {
            Some((content_type, bytes)) => {
                request.push_str(&format!("Content-Type: {content_type}\r\nContent-Length: {}\r\n", bytes.len()));
                bytes
            }
            None => b"",
        };
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).and_then(|_| stream.write_all(bytes)).map_err(unreachable)?;
        let mut raw = Vec::new();
        match stream.read_to_end(&mut raw) {
            // A TLS peer that closed without saying so: what came is the whole answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            r => {
                r.map_err(unreachable)?;
            }
        }
        parse_answer(&raw)
            .ok_or_else(|| HostError::Usage(format!("the admin API at {} answered with something that is not HTTP", self.address)))
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// TLS to the admin API at `address`: trusting `WEIR_ADMIN_CA` when set, else the host's
/// own certificate file `cert` (its chain, or itself when self-signed); presenting
/// `WEIR_ADMIN_CLIENT_CERT` and `WEIR_ADMIN_CLIENT_KEY` when set (mutual TLS).
fn tls_client(address: &str, cert: &Path) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>), HostError> {
    let usage = HostError::Usage;
    let ca = std::env::var_os("WEIR_ADMIN_CA").map(std::path::PathBuf::from).unwrap_or_else(|| cert.to_path_buf());
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certificates(&ca).map_err(usage)?);
    if added == 0 {
        return Err(usage(format!("{}: no usable certificate to trust the admin API with; set WEIR_ADMIN_CA to its CA", ca.display())));
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| usage(format!("TLS settings: {e}")))?
        .with_root_certificates(roots);
    let config = match (std::env::var_os("WEIR_ADMIN_CLIENT_CERT"), std::env::var_os("WEIR_ADMIN_CLIENT_KEY")) {
        (Some(c), Some(k)) => {
            let key = private_key(Path::new(&k)).map_err(usage)?;
            builder
                .with_client_auth_cert(certificates(Path::new(&c)).map_err(usage)?, key)
                .map_err(|e| usage(format!("client certificate: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(usage("set both WEIR_ADMIN_CLIENT_CERT and WEIR_ADMIN_CLIENT_KEY, or neither".into())),
    };
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_owned()).map_err(|e| usage(format!("admin address {address}: {e}")))?;
    Ok((Arc::new(config), name))
}

/// An HTTP/1.1 answer read to its end (the connection closed): status and body, chunked
/// bodies joined.
fn parse_answer(raw: &[u8]) -> Option<Answer> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let chunked = lines.any(|l| {
        l.split_once(':')
            .is_some_and(|(k, v)| k.trim().eq_ignore_ascii_case("transfer-encoding") && v.trim().eq_ignore_ascii_case("chunked"))
    });
    let mut joined = Vec::new();
    if chunked {
        loop {
            let end = body.windows(2).position(|w| w == b"\r\n")?;
            let size = usize::from_str_radix(std::str::from_utf8(&body[..end]).ok()?.split(';').next()?.trim(), 16).ok()?;
            body = &body[end + 2..];
            if size == 0 {
                break;
            }
            joined.extend_from_slice(body.get(..size)?);
            body = body.get(size + 2..)?;
        }
        body = &joined;
    }
    Some(Answer { status, body: String::from_utf8_lossy(body).into_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_plain_or_chunked() {
        let a = parse_answer(b"HTTP/1.1 201 Created\r\ncontent-length: 11\r\n\r\n{\"ok\":true}").unwrap();
        assert_eq!((a.status, a.json()["ok"].as_bool()), (201, Some(true)));
        let a =
            parse_answer(b"HTTP/1.1 422 Unprocessable\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"err\r\na\r\nor\":\"bad\"}\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!((a.status, a.error()), (422, "bad".to_owned()));
        assert!(parse_answer(b"garbage").is_none());
    }
}
