//! The one error type plugins return.

use std::time::Duration;

/// An error from a plugin, classified so the host knows whose fault it is and whether a
/// retry can help.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PluginError {
    /// The configuration is wrong (the user's error). Retrying does not help.
    #[error("{0}")]
    Config(String),
    /// An external system failed for now (a broker, a database, a full disk). The host
    /// retries, after `after` when given.
    #[error("{message}")]
    Retry {
        /// What failed.
        message: String,
        /// How long to wait before retrying, when the plugin knows.
        after: Option<Duration>,
    },
    /// A permanent failure. Retrying does not help.
    #[error("{0}")]
    Fatal(String),
}

impl PluginError {
    /// A configuration error.
    pub fn config(message: impl Into<String>) -> Self {
        PluginError::Config(message.into())
    }

    /// A transient error the host should retry.
    pub fn retry(message: impl Into<String>) -> Self {
        PluginError::Retry { message: message.into(), after: None }
    }

    /// A permanent error.
    pub fn fatal(message: impl Into<String>) -> Self {
        PluginError::Fatal(message.into())
    }
}

/// A connection URL as it may be shown in logs and errors: its password (anything between
/// `://` and the last `@`) replaced by `***`.
pub fn redacted_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod redaction_tests {
    #[test]
    fn passwords_in_urls_are_not_shown() {
        assert_eq!(super::redacted_url("redis://:s3cret@127.0.0.1:6379/2"), "redis://***@127.0.0.1:6379/2");
        assert_eq!(super::redacted_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
