//! The `analytics` source: the Event Analytics Platform's API as a Weir pipeline's source.
//!
//! One listener serves authenticated, multi-tenant ingest (`POST /api/v1/events`, each
//! event given the `orgId` and `projectId` of its API key), API keys (`/api/v1/keys`, with
//! `X-Admin-Key`), per-key rate limits, and the analytics queries over the events table
//! the pipeline's `postgres` sink writes (`/api/v1/events/summary`, `/api/v1/metrics`,
//! `/api/v1/users/{userId}/journey`, `/api/v1/retention`, and stored funnels with their
//! analytics, `/api/v1/funnels`). See `examples/event-analytics`.

mod config;
mod cross_origin;
mod db;
mod funnels;
mod ingest;
mod keys;
mod live;
mod openapi;
mod query;
mod reply;
mod retention;
mod rollup;
mod source;
mod store;

pub use config::AnalyticsConfig;
pub use source::AnalyticsSource;

weir_plugin::export_plugins!(source AnalyticsSource);
