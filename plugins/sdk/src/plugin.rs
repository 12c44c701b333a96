//! The traits plugin authors implement. Each has a typed config that also yields its
//! JSON Schema; lifecycle hooks default to doing nothing.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use crate::batch::{BatchRef, Output, Rejections};
use crate::context::{Context, Emitter, Outcome};
use crate::error::PluginError;

/// Produces batches and hands them to the pipeline through an [`Emitter`].
pub trait Source: Sized + Send + 'static {
    /// The config, deserialized from the stage's `config:` block.
    type Config: DeserializeOwned + JsonSchema;
    /// The name used in pipeline files (`plugin: NAME`).
    const NAME: &'static str;
    /// One line for `weir plugins`.
    const DESCRIPTION: &'static str;

    /// Checks what the schema cannot, without I/O.
    fn validate(_config: &Self::Config) -> Result<(), PluginError> {
        Ok(())
    }
    /// Builds the instance; may do I/O (open sockets, read files).
    fn create(config: Self::Config, ctx: Context) -> Result<Self, PluginError>;
    /// Starts producing. Must not block: spawn work on [`crate::runtime()`].
    fn start(&mut self, emitter: Emitter) -> Result<(), PluginError>;
    /// Stops producing; returns once no more batches will be emitted.
    fn stop(&mut self) -> Result<(), PluginError> {
        Ok(())
    }
    /// Whether the host may call [`Source::control`] (ABI minor 6); false by default.
    const CONTROLS: bool = false;
    /// Answers an operator's request about the running source (`{"op": …}`, see ABI.md,
    /// "Source control"), between `start` and `stop`, from a host thread. Errors:
    /// [`PluginError::Config`] for a request that is malformed or cannot be done in the
    /// source's present state (the reason says what to do), [`PluginError::Retry`] when
    /// an external system did not answer. Called only when [`Source::CONTROLS`] is true.
    fn control(&mut self, _request: &serde_json::Value) -> Result<serde_json::Value, PluginError> {
        Err(PluginError::config("this source takes no control requests"))
    }
}

/// Turns each batch into another batch, record by record.
pub trait Transform: Sized + Send + 'static {
    /// The config, deserialized from the stage's `config:` block.
    type Config: DeserializeOwned + JsonSchema;
    /// The name used in pipeline files (`plugin: NAME`).
    const NAME: &'static str;
    /// One line for `weir plugins`.
    const DESCRIPTION: &'static str;
    /// Whether the host should call [`Transform::acknowledge`]; false by default, so a
    /// transform that does not care costs nothing.
    const ACKNOWLEDGES: bool = false;
    /// Whether the stage must see batches in source order, one at a time, when the pipeline
    /// runs several transform workers (the stages before it still run in parallel). For a
    /// transform whose state depends on which record came first, such as a dedupe that
    /// passes the first copy of a key. False by default.
    const IN_ORDER: bool = false;

    /// Checks what the schema cannot, without I/O.
    fn validate(_config: &Self::Config) -> Result<(), PluginError> {
        Ok(())
    }
    /// Builds the instance; may do I/O.
    fn create(config: Self::Config, ctx: Context) -> Result<Self, PluginError>;
    /// Processes one batch: push output records (naming the input record each came
    /// from), reject input records with a reason, or leave them out to drop them.
    fn process(&mut self, input: &BatchRef<'_>, out: &mut Output) -> Result<(), PluginError>;
    /// Learns what became of batches this instance processed without error, once every
    /// sink is done with them and before their source hears of it: one [`Settled`] per
    /// batch, named by [`Output::sequence`], with an outcome per input record (`Accepted`
    /// when delivered; `Dropped` for what this or a later transform dropped). Called from a
    /// host thread, never concurrently with `process`, and only when
    /// [`Transform::ACKNOWLEDGES`] is true. Hosts older than ABI minor 1 never call it.
    /// Defaults to doing nothing.
    fn acknowledge(&mut self, _settled: &[Settled]) -> Result<(), PluginError> {
        Ok(())
    }
    /// The condition this instance's whole work is, when it is one: each record is kept or
    /// dropped by a condition in Weir's expression language (`weir_plugin::expr`) and
    /// nothing else changes. A host of ABI minor 7 or later then evaluates it itself,
    /// reading each record once for this condition and the sinks' `when` together, and no
    /// longer calls [`Transform::process`] (nor [`Transform::acknowledge`]) for the
    /// instance; `process` must still do exactly the same, for older hosts. Asked once,
    /// after `create`. `None` (the default): the host calls `process`.
    fn condition(&self) -> Option<Condition> {
        None
    }
}

/// A transform's whole work as one condition on each record (see [`Transform::condition`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Condition {
    /// The condition, in Weir's expression language, over `record`, `key` and `headers`.
    pub expression: String,
    /// Whether the records for which it holds are kept (true) or dropped (false).
    pub keeps: bool,
    /// What becomes of a record the condition cannot be evaluated on.
    pub on_error: OnError,
}

/// What becomes of a record a condition cannot be evaluated on (a field missing, a type
/// that does not fit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Rejected, the evaluation error as the reason.
    #[default]
    Reject,
    /// Dropped and counted.
    Drop,
    /// Passed on.
    Keep,
}

/// What became of one batch a transform processed (see [`Transform::acknowledge`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The batch's [`Output::sequence`].
    pub batch: u64,
    /// One outcome per input record of the batch, in input order.
    pub outcomes: Vec<Outcome>,
}

/// Delivers batches somewhere.
pub trait Sink: Sized + Send + 'static {
    /// The config, deserialized from the stage's `config:` block.
    type Config: DeserializeOwned + JsonSchema;
    /// The name used in pipeline files (`plugin: NAME`).
    const NAME: &'static str;
    /// One line for `weir plugins`.
    const DESCRIPTION: &'static str;

    /// Checks what the schema cannot, without I/O.
    fn validate(_config: &Self::Config) -> Result<(), PluginError> {
        Ok(())
    }
    /// Builds the instance; may do I/O.
    fn create(config: Self::Config, ctx: Context) -> Result<Self, PluginError>;
    /// Whether several instances may write side by side, one batch each, in any order
    /// (`workers: N` in a pipeline; ABI minor 5 `PLUGIN_WORKERS`): true for a store whose
    /// writes do not depend on order and that holds no single resource (an object store,
    /// a table with unique keys). False by default, and a pipeline asking for `workers` is
    /// then refused with the reason.
    const WORKERS: bool = false;
    /// Writes one batch. Return `Ok` when it is delivered (records refused for good go in
    /// `rejections`), [`PluginError::Retry`] to have the host retry the whole batch, or
    /// [`PluginError::Fatal`] when it can never be delivered.
    fn write(&mut self, batch: &BatchRef<'_>, rejections: &mut Rejections) -> Result<(), PluginError>;
    /// Flushes and closes; called once when the pipeline stops.
    fn stop(&mut self) -> Result<(), PluginError> {
        Ok(())
    }
}
