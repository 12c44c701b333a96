//! `GET /api/v1/events/live`: a WebSocket of the key's project's events as they are stored
//! (each a text message holding the event as stored). The key comes in `X-API-Key`, or, from
//! a browser (which cannot set headers on a WebSocket), as the subprotocol pair
//! `Sec-WebSocket-Protocol: api-key, <key>`. A client too slow to keep up is told how many
//! events it missed (`{"type":"lagged","missed":N}`) and goes on with the newest.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::keys::KeyRecord;
use crate::reply::ApiError;

/// Events a slow client may fall behind by before it misses some.
const BACKLOG: usize = 4096;
/// The subprotocol that carries a key.
pub const KEY_PROTOCOL: &str = "api-key";

/// A stored event, with its tenant.
#[derive(Clone, Debug)]
pub struct Stored {
    /// `(orgId, projectId)`.
    pub tenant: Arc<(String, String)>,
    /// The event as stored.
    pub text: Arc<str>,
}

/// Where stored events are announced.
pub struct Live {
    tx: broadcast::Sender<Stored>,
}

impl Default for Live {
    fn default() -> Self {
        Live { tx: broadcast::channel(BACKLOG).0 }
    }
}

impl Live {
    /// Announces events (nobody listening is fine).
    pub fn publish(&self, events: impl IntoIterator<Item = Stored>) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        for e in events {
            let _ = self.tx.send(e);
        }
    }

    /// Switches the request to a WebSocket that streams `key`'s project's events.
    pub fn upgrade(&self, key: &KeyRecord, mut req: Request) -> Response {
        let headers = req.headers();
        let is_upgrade = headers.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        let Some(accept) = headers.get(header::SEC_WEBSOCKET_KEY).map(|k| derive_accept_key(k.as_bytes())).filter(|_| is_upgrade) else {
            return ApiError {
                status: StatusCode::UPGRADE_REQUIRED,
                message: "this endpoint is a WebSocket: connect with a WebSocket client (Upgrade: websocket)".into(),
            }
            .into_response();
        };
        let by_protocol = protocols(headers).first().is_some_and(|p| p == KEY_PROTOCOL);
        let tenant = (key.org_id.clone(), key.project_id.clone());
        let mut rx = self.tx.subscribe();
        let upgrading = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(io) = upgrading.await else { return };
            let mut ws = WebSocketStream::from_raw_socket(hyper_util::rt::TokioIo::new(io), Role::Server, None).await;
            loop {
                match rx.recv().await {
                    Ok(e) if *e.tenant == tenant => {
                        if ws.send(Message::text(e.text.to_string())).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let notice = format!(r#"{{"type":"lagged","missed":{missed}}}"#);
                        if ws.send(Message::text(notice)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = ws.close(None).await;
                        return;
                    }
                }
            }
        });
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Ok(v) = HeaderValue::from_str(&accept) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        if by_protocol {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(KEY_PROTOCOL));
        }
        r
    }
}

/// The subprotocols a WebSocket request offers, in order.
pub fn protocols(headers: &axum::http::HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The key a browser sent as the subprotocol pair `api-key, <key>`.
pub fn key_from_protocols(headers: &axum::http::HeaderMap) -> Option<String> {
    let offered = protocols(headers);
    (offered.len() == 2 && offered[0] == KEY_PROTOCOL).then(|| offered[1].clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_browser_sends_its_key_as_a_subprotocol_pair() {
        let mut h = axum::http::HeaderMap::new();
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("api-key, wk_abc"));
        assert_eq!(key_from_protocols(&h).as_deref(), Some("wk_abc"));
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("chat"));
        assert_eq!(key_from_protocols(&h), None);
    }
}
