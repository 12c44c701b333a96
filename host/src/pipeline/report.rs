//! What the admin API shows of a pipeline and its stages.

use super::*;

/// What the admin API shows of a stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// Stage name.
    pub name: String,
    /// source, transform or sink.
    pub kind: &'static str,
    /// Plugin name.
    pub plugin: String,
    /// Library and version.
    pub library: String,
    /// Sinks: the sink it runs after, when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Records handed to the stage.
    pub records_in: u64,
    /// Records passed on.
    pub records_out: u64,
    /// Records refused.
    pub rejected: u64,
    /// Records dropped on purpose.
    pub dropped: u64,
    /// Failed calls.
    pub errors: u64,
    /// Batches waiting in front of the stage.
    pub queue_depth: i64,
    /// Metrics the plugin reports.
    pub metrics: std::collections::BTreeMap<String, f64>,
    /// What the stage last reported of each external system it depends on (empty when the
    /// plugin reports none, as plugins built before ABI 1.4 do).
    pub health: std::collections::BTreeMap<String, crate::metrics::DependencyHealth>,
}

/// A pipeline's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Taking traffic.
    Running,
    /// Draining.
    Stopping,
    /// Stopped.
    Stopped,
    /// Its source emitted everything and every record was handled.
    Finished,
    /// Could not be built or started.
    Failed,
}

impl State {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Finished => "finished",
            State::Failed => "failed",
        }
    }
}

pub(super) struct StageInfo {
    pub(super) name: String,
    pub(super) kind: Kind,
    pub(super) plugin: String,
    pub(super) library: String,
    pub(super) lib: Arc<crate::loader::LibraryInfo>,
    pub(super) metrics: Arc<StageMetrics>,
    pub(super) after: Option<String>,
}
