//! The crate's one error type.

use weir_plugin::PluginError;

/// What can go wrong in the `socketio` plugins.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SocketIoError {
    /// The stage's config is wrong (the user's error; retrying does not help).
    #[error("{0}")]
    Config(String),
    /// The stage's server options disagree with those of the server already running on the
    /// same address (the user's error).
    #[error(
        "{listen} is already served by a Socket.IO server started by {owner}, with {field} {theirs}, and this stage asks for {mine}; \
         stages on one address share one Socket.IO server, so give them the same {field}, or use another listen address"
    )]
    Conflict {
        /// The shared address.
        listen: String,
        /// The first option that differs.
        field: &'static str,
        /// This stage's value.
        mine: String,
        /// The running server's value.
        theirs: String,
        /// Which stage started the server (`pipeline P (stage S)`).
        owner: String,
    },
    /// The stage could not be started (the socket, the runtime).
    #[error("{0}")]
    Start(String),
}

impl From<SocketIoError> for PluginError {
    fn from(e: SocketIoError) -> PluginError {
        match e {
            SocketIoError::Config(_) | SocketIoError::Conflict { .. } => PluginError::config(e.to_string()),
            SocketIoError::Start(_) => PluginError::fatal(e.to_string()),
        }
    }
}
