//! `weir-plugin`: everything a Weir plugin author needs, and nothing else.
//!
//! Implement [`Source`], [`Transform`] or [`Sink`] with a typed config, then export the
//! library with [`export_plugins!`]. The C ABI underneath is in [`abi`] and specified in
//! `ABI.md`; [`mock`] lets a plugin be unit-tested without being loaded.
#![warn(missing_docs)]

pub mod abi;
pub mod batch;
pub mod context;
pub mod error;
#[doc(hidden)]
pub mod export;
#[cfg(feature = "expr")]
pub mod expr;
pub mod json;
pub mod metrics;
pub mod mock;
pub mod origins;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod plugin;
pub mod routes;
mod runtime;
#[cfg(feature = "serve")]
pub mod serve;
#[cfg(feature = "tls")]
pub mod tls;
pub mod worker;

pub use batch::{BatchBuf, BatchRef, Head, Output, RecordRef, Rejections};
pub use context::{Ack, Context, EmitError, Emitter, Level, Outcome};
pub use error::PluginError;
pub use plugin::{Condition, OnError, Settled, Sink, Source, Transform};
pub use runtime::runtime;
pub use schemars::{self, JsonSchema};
pub use serde::{self, Deserialize};
pub use serde_json;
pub use worker::{StopFlag, Worker};

/// This SDK's version (the `weir-plugin` crate's); see `ABI.md`, "Compatibility".
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
