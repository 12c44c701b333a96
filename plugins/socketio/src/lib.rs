//! The `socketio` plugins: a Socket.IO server (protocol v5 over Engine.IO v4, WebSocket
//! and HTTP long-polling, as socket.io-client 3 and 4 speak it).
//!
//! - The sink sends each record's JSON value as an event (`new_event`) to the clients of a
//!   room (joined with `join_dashboard`, answered with `dashboard_joined`) or to every
//!   client, filtered per client by event type; a client that falls behind is disconnected
//!   and counted.
//! - The source takes a client's event (`log_event`) as a record and confirms it
//!   (`event_logged`, or the client's acknowledgement) once the pipeline acknowledged it.
//!
//! Stages of this library with the same `listen` address share one server (see [`server`]).

mod config;
mod error;
pub mod server;
mod sink;
mod source;

pub use config::{SinkConfig, SourceConfig};
pub use error::SocketIoError;
pub use sink::SocketIoSink;
pub use source::SocketIoSource;

weir_plugin::export_plugins!(source SocketIoSource, sink SocketIoSink);
