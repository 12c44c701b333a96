//! The `http` source: clients POST JSON events (one object or an array); the response
//! comes once the pipeline has taken them, and says which were rejected and why.

mod auth;
mod body;
mod config;
mod headers;
mod source;

pub use body::{parse_events, BodyError};
pub use config::HttpConfig;
pub use source::HttpSource;

weir_plugin::export_plugins!(source HttpSource);
