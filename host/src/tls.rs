//! The admin API over TLS: a listener for axum that runs each handshake on a task of its
//! own (a slow or silent client holds up no other) and hands finished connections to the
//! server. Certificates are reloaded as `weir_plugin::tls` describes.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use weir_plugin::tls::{Reload, Tls, TlsStream};

/// Accepts TCP connections and gives axum the ones whose handshake succeeded.
pub struct TlsListener {
    addr: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// Starts accepting on `tcp` (on the current runtime).
    pub fn new(tcp: TcpListener, tls: Arc<Tls>) -> io::Result<TlsListener> {
        let addr = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            while !tx.is_closed() {
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    // Out of file descriptors, most likely: let some close.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (acceptor, reload) = tls.acceptor();
                match reload {
                    Some(Reload::Taken) => tracing::info!(cert = %tls.config().cert.display(), "Admin API: new TLS certificate in use."),
                    Some(Reload::Refused(why)) => tracing::warn!(error = %why, "Admin API: changed TLS files not taken."),
                    None => {}
                }
                let tx = tx.clone();
                tokio::spawn(async move {
                    match Tls::handshake(&acceptor, stream).await {
                        Ok(s) => {
                            let _ = tx.send((s, peer)).await;
                        }
                        Err(e) => tracing::warn!(%peer, error = %e, "Admin API: TLS handshake failed."),
                    }
                });
            }
        });
        Ok(TlsListener { addr, ready })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task ended (it does not while the listener lives).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}
