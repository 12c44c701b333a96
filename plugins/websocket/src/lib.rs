//! The `websocket` sink: a WebSocket server that broadcasts each record's value as a
//! text frame to every connected client. A client may ask for some event types only
//! (`ws://host:port/?types=like_clicked,page_view`). A client too slow to keep up is
//! disconnected and counted; it never holds the pipeline back. A browser page may connect
//! only when its `Origin` is in `allowed_origins`; programs send no `Origin` and always may.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use weir_plugin::json::{Doc, Pointer};
use weir_plugin::origins::{check_origin, Origins};
use weir_plugin::{BatchRef, Context, Deserialize, JsonSchema, PluginError, Rejections, Sink};

/// Config of the `websocket` sink.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Address to listen on, `host:port`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// JSON pointer of the event type, matched against a client's `?types=` filter.
    #[serde(default = "default_type_field")]
    pub type_field: String,
    /// Frames queued per client; a client that falls further behind is disconnected.
    #[serde(default = "default_buffer")]
    pub client_buffer: NonZeroUsize,
    /// Web origins whose pages may connect (`https://dash.example.com`, `http://localhost:3000`;
    /// `*` for any page). A handshake from another origin gets 403. Clients that send no
    /// `Origin` (programs, not browsers) are always accepted.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Serve `wss://`: certificate and key files, reloaded on change, and optionally a CA
    /// that client certificates must be signed by (mutual TLS).
    #[serde(default)]
    pub tls: Option<weir_plugin::tls::TlsConfig>,
}

fn default_listen() -> String {
    "127.0.0.1:3002".into()
}
fn default_type_field() -> String {
    "/eventType".into()
}
fn default_buffer() -> NonZeroUsize {
    NonZeroUsize::new(1024).expect("non-zero")
}

struct Client {
    id: u64,
    types: Option<HashSet<String>>,
    tx: mpsc::Sender<Utf8Bytes>,
}

#[derive(Default)]
struct Hub {
    clients: Mutex<Vec<Client>>,
    next_id: AtomicU64,
}

impl Hub {
    fn report(&self, ctx: &Context, n: usize) {
        ctx.gauge_set("connected_clients", "WebSocket clients connected.", n as f64);
    }

    fn remove(&self, ctx: &Context, id: u64) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.retain(|c| c.id != id);
        self.report(ctx, clients.len());
    }
}

/// The `websocket` sink.
pub struct WebSocketSink {
    ctx: Context,
    hub: Arc<Hub>,
    accept: tokio::task::JoinHandle<()>,
    /// `config.type_field`, read once.
    type_field: Pointer,
}

/// `config.type_field` as a pointer to a field.
fn type_field(config: &WebSocketConfig) -> Result<Pointer, PluginError> {
    let field = Pointer::parse(&config.type_field).map_err(|e| PluginError::config(format!("type_field: {e}")))?;
    if field.segments().is_empty() {
        return Err(PluginError::config("type_field must name a field, such as \"/eventType\""));
    }
    Ok(field)
}

fn parse_types(query: Option<&str>) -> Option<HashSet<String>> {
    let query = query?;
    let list = query.split('&').find_map(|kv| kv.strip_prefix("types="))?;
    let set: HashSet<String> = list.split(',').map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect();
    (!set.is_empty()).then_some(set)
}

async fn serve<S>(stream: S, hub: Arc<Hub>, ctx: Context, buffer: usize, origins: Arc<Origins>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut query: Option<String> = None;
    // The error type is tungstenite's; nothing here can shrink it.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| {
        let origin = req.headers().get("origin").map(|o| o.as_bytes());
        if !origins.allows(origin) {
            ctx.counter_add("websocket_origins_refused", "WebSocket handshakes refused for their Origin.", 1);
            let shown = String::from_utf8_lossy(origin.unwrap_or_default()).chars().take(200).collect::<String>();
            ctx.log(weir_plugin::Level::Debug, &format!("WebSocket handshake from origin {shown:?} refused."));
            let mut refusal = ErrorResponse::new(Some(format!(
                "pages from the origin {shown:?} may not open this stream; add it to the websocket sink's allowed_origins\n"
            )));
            *refusal.status_mut() = StatusCode::FORBIDDEN;
            return Err(refusal);
        }
        query = req.uri().query().map(str::to_owned);
        Ok(resp)
    };
    let ws = match tokio_tungstenite::accept_hdr_async(stream, callback).await {
        Ok(ws) => ws,
        Err(e) => {
            ctx.log(weir_plugin::Level::Debug, &format!("WebSocket handshake failed: {e}"));
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(buffer);
    let id = hub.next_id.fetch_add(1, Relaxed);
    {
        let mut clients = hub.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.push(Client { id, types: parse_types(query.as_deref()), tx });
        hub.report(&ctx, clients.len());
    }
    let (mut write, mut read) = ws.split();
    loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Some(text) => {
                    if write.send(Message::Text(text)).await.is_err() {
                        break;
                    }
                }
                None => {
                    // Removed by the hub: too slow, or the sink is stopping.
                    let close = CloseFrame { code: CloseCode::Again, reason: "too slow or shutting down".into() };
                    let _ = write.send(Message::Close(Some(close))).await;
                    break;
                }
            },
            incoming = read.next() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    hub.remove(&ctx, id);
}

impl Sink for WebSocketSink {
    type Config = WebSocketConfig;
    const NAME: &'static str = "websocket";
    const DESCRIPTION: &'static str = "WebSocket server broadcasting each record as a text frame; clients may filter by type.";

    fn validate(config: &WebSocketConfig) -> Result<(), PluginError> {
        type_field(config)?;
        for o in &config.allowed_origins {
            check_origin("allowed_origins", o).map_err(PluginError::config)?;
        }
        Ok(())
    }

    fn create(config: WebSocketConfig, ctx: Context) -> Result<Self, PluginError> {
        let listener = ctx.listen_async(&config.listen)?;
        let rt = weir_plugin::runtime();
        let hub = Arc::new(Hub::default());
        hub.report(&ctx, 0);
        let (h, buffer) = (hub.clone(), config.client_buffer.get());
        let origins = Arc::new(Origins::new(&config.allowed_origins));
        let tls = match &config.tls {
            Some(t) => Some(weir_plugin::tls::Tls::new(t.clone()).map_err(|e| PluginError::config(format!("tls: {e}")))?),
            None => None,
        };
        let accept = rt.spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        let (hub, origins) = (h.clone(), origins.clone());
                        let Some(tls) = &tls else {
                            tokio::spawn(serve(stream, hub, ctx, buffer, origins));
                            continue;
                        };
                        let acceptor = tls.acceptor_logged(&ctx);
                        tokio::spawn(async move {
                            match weir_plugin::tls::Tls::handshake(&acceptor, stream).await {
                                Ok(stream) => serve(stream, hub, ctx, buffer, origins).await,
                                Err(e) => ctx.log(weir_plugin::Level::Debug, &format!("TLS handshake failed: {e}")),
                            }
                        });
                    }
                    Err(e) => {
                        ctx.warn(&format!("accept failed: {e}"));
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
        ctx.info(&format!("WebSocket server listening on {}.", config.listen));
        Ok(WebSocketSink { ctx, hub, accept, type_field: type_field(&config)? })
    }

    fn write(&mut self, batch: &BatchRef<'_>, rejections: &mut Rejections) -> Result<(), PluginError> {
        let mut clients = self.hub.clients.lock().unwrap_or_else(|p| p.into_inner());
        let filtering = clients.iter().any(|c| c.types.is_some());
        let mut slow = Vec::new();
        for (i, r) in batch.iter().enumerate() {
            let Ok(text) = std::str::from_utf8(r.value) else {
                rejections.reject(i, "the value is not UTF-8 text");
                continue;
            };
            if clients.is_empty() {
                continue;
            }
            let event_type = if filtering { Doc::parse(r.value).ok().and_then(|d| d.get_str(&self.type_field)) } else { None };
            let frame = Utf8Bytes::from(text.to_owned());
            for c in clients.iter() {
                if let Some(types) = &c.types {
                    if !event_type.as_ref().is_some_and(|t| types.contains(t.as_ref())) {
                        continue;
                    }
                }
                match c.tx.try_send(frame.clone()) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => slow.push(c.id),
                    Err(TrySendError::Closed(_)) => {}
                }
            }
            if !slow.is_empty() {
                let n = slow.len() as u64;
                clients.retain(|c| !slow.contains(&c.id));
                slow.clear();
                self.ctx.counter_add("websocket_slow_clients_disconnected", "Clients disconnected for falling behind.", n);
                self.hub.report(&self.ctx, clients.len());
            }
        }
        Ok(())
    }

    fn stop(&mut self) -> Result<(), PluginError> {
        self.accept.abort();
        let mut clients = self.hub.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.clear();
        self.hub.report(&self.ctx, 0);
        Ok(())
    }
}

weir_plugin::export_plugins!(sink WebSocketSink);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::serde_json;

    #[test]
    fn type_filter_is_read_from_the_query() {
        assert_eq!(parse_types(Some("types=a,b")).unwrap().len(), 2);
        assert!(parse_types(Some("x=1")).is_none());
        assert!(parse_types(None).is_none());
    }

    #[test]
    fn broadcasts_filters_and_drops_slow_clients() {
        use weir_plugin::mock::{json_batch, MockHost};
        let host = MockHost::new();
        let config: WebSocketConfig = serde_json::from_value(serde_json::json!({"listen": "127.0.0.1:0", "client_buffer": 2})).unwrap();
        let mut sink = WebSocketSink::create(config, host.context()).unwrap();
        let (tx_all, mut rx_all) = mpsc::channel(8);
        let (tx_b, mut rx_b) = mpsc::channel(8);
        let (tx_slow, _rx_slow) = mpsc::channel(1);
        {
            let mut c = sink.hub.clients.lock().unwrap();
            c.push(Client { id: 100, types: None, tx: tx_all });
            c.push(Client { id: 101, types: parse_types(Some("types=b")), tx: tx_b });
            c.push(Client { id: 102, types: None, tx: tx_slow });
        }
        let mut rej = Rejections::new();
        sink.write(&json_batch([r#"{"eventType":"a"}"#, r#"{"eventType":"b"}"#]).as_ref(), &mut rej).unwrap();
        assert_eq!(rx_all.try_recv().unwrap().as_str(), r#"{"eventType":"a"}"#);
        assert_eq!(rx_all.try_recv().unwrap().as_str(), r#"{"eventType":"b"}"#);
        assert_eq!(rx_b.try_recv().unwrap().as_str(), r#"{"eventType":"b"}"#);
        assert!(rx_b.try_recv().is_err());
        assert_eq!(host.metric("websocket_slow_clients_disconnected"), Some(1.0));
        assert_eq!(host.metric("connected_clients"), Some(2.0));
        sink.stop().unwrap();
    }
}
