//! The configs of the `socketio` sink and source. The options that belong to the Socket.IO
//! server (address, path, buffers, heartbeat, origins) appear in both, since a sink and a
//! source on the same `listen` address share one server.

use std::num::{NonZeroU64, NonZeroUsize};

use weir_plugin::{Deserialize, JsonSchema};

use crate::error::SocketIoError;

/// Config of the `socketio` sink.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Address to listen on, `host:port`. Stages of this library with the same address share
    /// one Socket.IO server.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Path of the Socket.IO endpoint (socket.io-client's `path` option).
    #[serde(default = "default_path")]
    pub path: String,
    /// Serve over TLS (https and wss): certificate and key files, reloaded on change, and
    /// optionally a CA that client certificates must be signed by. The server then takes
    /// its address whole (no stage of another plugin may serve paths on it); every stage on
    /// the address must give the same files.
    #[serde(default)]
    pub tls: Option<weir_plugin::tls::TlsConfig>,
    /// Event name each record is sent as.
    #[serde(default = "default_event")]
    pub event: String,
    /// Room the records go to: only clients that joined it (with `join_event`) get them.
    /// Unset: every connected client gets them, and `join_event` is not handled.
    #[serde(default)]
    pub room: Option<String>,
    /// Client event that joins the client to `room`.
    #[serde(default = "default_join_event")]
    pub join_event: String,
    /// Event sent back to a client that joined: `{"room": ROOM, "timestamp": RFC 3339}`.
    #[serde(default = "default_joined_event")]
    pub joined_event: String,
    /// JSON pointer of the event type, matched against a client's `types` filter.
    #[serde(default = "default_type_field")]
    pub type_field: String,
    /// Packets queued per client; a client that falls further behind is disconnected.
    #[serde(default = "default_buffer")]
    pub client_buffer: NonZeroUsize,
    /// Web origins whose pages may connect (`https://dash.example.com`; `*` for any page).
    /// Others get 403. Clients that send no `Origin` (programs, not browsers) always may.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// How often the server pings each client, in milliseconds.
    #[serde(default = "default_ping_interval_ms")]
    pub ping_interval_ms: NonZeroU64,
    /// How long a client has to answer a ping before it is disconnected, in milliseconds.
    #[serde(default = "default_ping_timeout_ms")]
    pub ping_timeout_ms: NonZeroU64,
    /// Largest message a client may send (an HTTP long-polling request body or a WebSocket message), in bytes.
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: NonZeroUsize,
    /// Path on the same address answering `GET` with `{"status", "timestamp",
    /// "connected_clients", "<room>_clients"}` (the Neo seed's `/health`). Unset: none.
    #[serde(default)]
    pub health_path: Option<String>,
}

/// Config of the `socketio` source.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Address to listen on, `host:port`. Stages of this library with the same address share
    /// one Socket.IO server.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Path of the Socket.IO endpoint (socket.io-client's `path` option).
    #[serde(default = "default_path")]
    pub path: String,
    /// Serve over TLS (https and wss): certificate and key files, reloaded on change, and
    /// optionally a CA that client certificates must be signed by. The server then takes
    /// its address whole (no stage of another plugin may serve paths on it); every stage on
    /// the address must give the same files.
    #[serde(default)]
    pub tls: Option<weir_plugin::tls::TlsConfig>,
    /// Client event whose payload (one JSON value) becomes a record.
    #[serde(default = "default_source_event")]
    pub event: String,
    /// Event sent back once the pipeline took (or refused) the record, unless the client
    /// asked for an acknowledgement, which then carries the same payload.
    #[serde(default = "default_confirm_event")]
    pub confirm_event: String,
    /// How long to keep offering a record while the pipeline is full before answering
    /// "retry later", in milliseconds.
    #[serde(default = "default_backpressure_wait_ms")]
    pub backpressure_wait_ms: u64,
    /// How long to wait for the pipeline's acknowledgement before answering "retry later", in milliseconds.
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: NonZeroU64,
    /// Packets queued per client; a client that falls further behind is disconnected.
    #[serde(default = "default_buffer")]
    pub client_buffer: NonZeroUsize,
    /// Web origins whose pages may connect (`https://dash.example.com`; `*` for any page).
    /// Others get 403. Clients that send no `Origin` (programs, not browsers) always may.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// How often the server pings each client, in milliseconds.
    #[serde(default = "default_ping_interval_ms")]
    pub ping_interval_ms: NonZeroU64,
    /// How long a client has to answer a ping before it is disconnected, in milliseconds.
    #[serde(default = "default_ping_timeout_ms")]
    pub ping_timeout_ms: NonZeroU64,
    /// Largest message a client may send (an HTTP long-polling request body or a WebSocket message), in bytes.
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: NonZeroUsize,
}

fn default_listen() -> String {
    "127.0.0.1:3003".into()
}
fn default_path() -> String {
    "/socket.io/".into()
}
fn default_event() -> String {
    "new_event".into()
}
fn default_join_event() -> String {
    "join_dashboard".into()
}
fn default_joined_event() -> String {
    "dashboard_joined".into()
}
fn default_type_field() -> String {
    "/eventType".into()
}
fn default_source_event() -> String {
    "log_event".into()
}
fn default_confirm_event() -> String {
    "event_logged".into()
}
fn default_backpressure_wait_ms() -> u64 {
    1000
}
fn default_ack_timeout_ms() -> NonZeroU64 {
    NonZeroU64::new(10_000).expect("non-zero")
}
fn default_buffer() -> NonZeroUsize {
    NonZeroUsize::new(1024).expect("non-zero")
}
fn default_ping_interval_ms() -> NonZeroU64 {
    NonZeroU64::new(25_000).expect("non-zero")
}
fn default_ping_timeout_ms() -> NonZeroU64 {
    NonZeroU64::new(20_000).expect("non-zero")
}
fn default_max_payload_bytes() -> NonZeroUsize {
    NonZeroUsize::new(1 << 20).expect("non-zero")
}

/// What the Socket.IO server on one address is built with; every stage on that address
/// must agree on it, except `allowed_origins`, which are combined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOptions {
    /// `host:port`.
    pub listen: String,
    /// The endpoint's path, without a trailing `/`.
    pub path: String,
    /// Packets queued per client.
    pub client_buffer: usize,
    /// Heartbeat interval, ms.
    pub ping_interval_ms: u64,
    /// Heartbeat timeout, ms.
    pub ping_timeout_ms: u64,
    /// Largest incoming message, bytes.
    pub max_payload_bytes: usize,
    /// TLS for the server.
    pub tls: Option<weir_plugin::tls::TlsConfig>,
}

impl ServerOptions {
    /// The first option in which `self` and `other` differ, with both values, for an error.
    pub fn difference(&self, other: &ServerOptions) -> Option<(&'static str, String, String)> {
        let pairs = [
            ("path", self.path.clone(), other.path.clone()),
            ("client_buffer", self.client_buffer.to_string(), other.client_buffer.to_string()),
            ("ping_interval_ms", self.ping_interval_ms.to_string(), other.ping_interval_ms.to_string()),
            ("ping_timeout_ms", self.ping_timeout_ms.to_string(), other.ping_timeout_ms.to_string()),
            ("max_payload_bytes", self.max_payload_bytes.to_string(), other.max_payload_bytes.to_string()),
            ("tls", format!("{:?}", self.tls), format!("{:?}", other.tls)),
        ];
        pairs.into_iter().find(|(_, a, b)| a != b)
    }
}

/// The endpoint path as the server matches it: with a leading `/`, without a trailing one.
fn normal_path(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    }
}

impl SinkConfig {
    /// The server part.
    pub fn server(&self) -> ServerOptions {
        ServerOptions {
            listen: self.listen.clone(),
            path: normal_path(&self.path),
            client_buffer: self.client_buffer.get(),
            ping_interval_ms: self.ping_interval_ms.get(),
            ping_timeout_ms: self.ping_timeout_ms.get(),
            max_payload_bytes: self.max_payload_bytes.get(),
            tls: self.tls.clone(),
        }
    }

    /// Checks what the schema cannot.
    pub fn check(&self) -> Result<(), SocketIoError> {
        check_common(&self.path, &self.allowed_origins)?;
        if !self.type_field.starts_with('/') {
            return Err(SocketIoError::Config(format!("type_field {:?} must be a JSON pointer such as \"/eventType\"", self.type_field)));
        }
        for (field, name) in [("event", &self.event), ("join_event", &self.join_event), ("joined_event", &self.joined_event)] {
            check_event(field, name)?;
        }
        if let Some(health) = &self.health_path {
            if !health.starts_with('/') || health.contains(['?', '#', ' ']) || normal_path(health) == normal_path(&self.path) {
                return Err(SocketIoError::Config(format!(
                    "health_path {health:?} must be a URL path starting with / (for example /health), other than path"
                )));
            }
        }
        if let Some(room) = &self.room {
            if room.is_empty() {
                return Err(SocketIoError::Config("room must not be empty; leave it out to send to every client".into()));
            }
        }
        Ok(())
    }
}

impl SourceConfig {
    /// The server part.
    pub fn server(&self) -> ServerOptions {
        ServerOptions {
            listen: self.listen.clone(),
            path: normal_path(&self.path),
            client_buffer: self.client_buffer.get(),
            ping_interval_ms: self.ping_interval_ms.get(),
            ping_timeout_ms: self.ping_timeout_ms.get(),
            max_payload_bytes: self.max_payload_bytes.get(),
            tls: self.tls.clone(),
        }
    }

    /// Checks what the schema cannot.
    pub fn check(&self) -> Result<(), SocketIoError> {
        check_common(&self.path, &self.allowed_origins)?;
        for (field, name) in [("event", &self.event), ("confirm_event", &self.confirm_event)] {
            check_event(field, name)?;
        }
        Ok(())
    }
}

/// Event names the Socket.IO protocol reserves for itself.
const RESERVED: [&str; 5] = ["connect", "connect_error", "disconnect", "disconnecting", "newListener"];

fn check_event(field: &str, name: &str) -> Result<(), SocketIoError> {
    if name.is_empty() {
        return Err(SocketIoError::Config(format!("{field} must not be empty")));
    }
    if RESERVED.contains(&name) {
        return Err(SocketIoError::Config(format!("{field}: {name:?} is reserved by Socket.IO; choose another event name")));
    }
    Ok(())
}

fn check_common(path: &str, origins: &[String]) -> Result<(), SocketIoError> {
    if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
        return Err(SocketIoError::Config(format!("path {path:?} must be a URL path starting with / (for example /socket.io/)")));
    }
    for o in origins {
        weir_plugin::origins::check_origin("allowed_origins", o).map_err(SocketIoError::Config)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::serde_json;

    #[test]
    fn defaults_follow_the_neo_events() {
        let sink: SinkConfig = serde_json::from_str("{}").unwrap();
        assert_eq!((sink.listen.as_str(), sink.event.as_str(), sink.room.as_deref()), ("127.0.0.1:3003", "new_event", None));
        assert_eq!((sink.join_event.as_str(), sink.joined_event.as_str()), ("join_dashboard", "dashboard_joined"));
        assert_eq!(sink.server().path, "/socket.io");
        let source: SourceConfig = serde_json::from_str("{}").unwrap();
        assert_eq!((source.event.as_str(), source.confirm_event.as_str()), ("log_event", "event_logged"));
        assert_eq!(sink.server(), source.server());
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        let e = serde_json::from_str::<SinkConfig>(r#"{"rooms":"x"}"#).unwrap_err().to_string();
        assert!(e.contains("unknown field `rooms`"), "{e}");
        let bad: SinkConfig = serde_json::from_str(r#"{"type_field":"eventType"}"#).unwrap();
        assert!(bad.check().unwrap_err().to_string().contains("JSON pointer"));
        let bad: SourceConfig = serde_json::from_str(r#"{"event":"disconnect"}"#).unwrap();
        assert!(bad.check().unwrap_err().to_string().contains("reserved"));
        let bad: SourceConfig = serde_json::from_str(r#"{"path":"socket.io"}"#).unwrap();
        assert!(bad.check().unwrap_err().to_string().contains("starting with /"));
        let bad: SinkConfig = serde_json::from_str(r#"{"allowed_origins":["dash.example.com/app"]}"#).unwrap();
        assert!(bad.check().unwrap_err().to_string().contains("is not an origin"));
        assert!(serde_json::from_str::<SinkConfig>(r#"{"client_buffer":0}"#).is_err());
    }

    #[test]
    fn server_options_name_their_first_difference() {
        let a: SinkConfig = serde_json::from_str("{}").unwrap();
        let b: SourceConfig = serde_json::from_str(r#"{"path":"/io","client_buffer":8}"#).unwrap();
        let (field, mine, theirs) = a.server().difference(&b.server()).unwrap();
        assert_eq!((field, mine.as_str(), theirs.as_str()), ("path", "/socket.io", "/io"));
        let c: SourceConfig = serde_json::from_str(r#"{"path":"/socket.io"}"#).unwrap();
        assert!(a.server().difference(&c.server()).is_none());
    }
}
