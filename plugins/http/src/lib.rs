//! The `http` source: clients POST JSON events (one object or an array); the response
//! comes once the pipeline has taken them, and says which were rejected and why.

mod config;
mod source;

pub use config::HttpConfig;
pub use source::{parse_events, BodyError, HttpSource};

weir_plugin::export_plugins!(source HttpSource);
