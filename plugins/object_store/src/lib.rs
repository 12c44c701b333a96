//! The `object_store` sink archives records to S3, S3-compatible stores (MinIO) or the local
//! filesystem: one object per record, or one JSON-lines object per batch and key prefix.
//! Object names come from a template over record fields and the record's time, and are
//! idempotent: a redelivered record or batch overwrites its object rather than adding one.

mod config;
mod key;
mod sink;

pub use config::{Compression, Mode, ObjectStoreConfig};
pub use sink::ObjectStoreSink;

weir_plugin::export_plugins!(sink ObjectStoreSink);
