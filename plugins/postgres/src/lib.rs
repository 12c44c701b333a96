//! The `postgres` sink: maps records to rows by JSON pointer, creates the table when asked,
//! and writes batches idempotently at near-COPY speed.

mod config;
mod mapping;
mod retention;
mod sink;

pub use config::{ColumnSpec, PostgresConfig};
pub use retention::Retention;
pub use sink::PostgresSink;

weir_plugin::export_plugins!(sink PostgresSink);
