//! The Weir host: loads plugin libraries, runs the pipelines declared in YAML, and serves
//! the admin API. The `weir` binary is a thin CLI over this library.

pub mod admin;
pub mod client;
pub mod config;
pub mod console;
pub mod disklog;
pub mod error;
pub mod ffi;
pub mod host;
pub mod loader;
pub mod metrics;
pub mod offsets;
pub mod pipeline;
pub mod replay;
pub mod routes;
pub mod scaffold;
pub mod tap;
pub mod telemetry;
pub mod testing;
pub mod tls;
pub mod watch;
pub mod yamlpos;
