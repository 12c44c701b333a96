//! The `dynamodb` sink writes records as DynamoDB items: attributes mapped by JSON pointer,
//! a TTL attribute computed from a duration, `BatchWriteItem` with retries of unprocessed
//! items and backoff on throttling, or conditional `PutItem`s so a redelivered record never
//! replaces a newer item.

mod config;
mod item;
mod sink;

pub use config::{AttributeSpec, Condition, DynamoDbConfig, TtlSpec};
pub use item::attribute;
pub use sink::DynamoDbSink;

weir_plugin::export_plugins!(sink DynamoDbSink);
