//! The `kafka` plugin library: a source (consumer group, offsets committed only after
//! delivery) and a sink (idempotent producer, a batch done when every message is
//! acknowledged), both on librdkafka.

mod config;
mod control;
mod offsets;
mod sink;
mod source;

pub use config::{SinkConfig, SourceConfig};
pub use sink::KafkaSink;
pub use source::KafkaSource;

weir_plugin::export_plugins!(source KafkaSource, sink KafkaSink);
