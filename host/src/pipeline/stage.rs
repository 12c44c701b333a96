//! Stage supervision: one instance per stage (and per transform worker), re-created after
//! a panic with backoff, failure streaks reported as the pipeline's health.

use super::*;

/// Stages that keep failing, reported to their pipeline: it shows as failed (with why)
/// until they succeed again.
#[derive(Default)]
pub(super) struct Health {
    pub(super) failing: Mutex<std::collections::BTreeMap<String, String>>,
}

/// Consecutive failed calls after which a stage marks its pipeline failed.
const FAILED_AFTER: u32 = 5;

/// Wait before re-creating a stage after its `failures`-th failure in a row.
fn restart_backoff(failures: u32) -> Duration {
    Duration::from_millis((100u64 << failures.saturating_sub(1).min(10)).min(10_000))
}

/// A stage's instance; calls on it are one at a time because they hold this lock.
pub(super) struct Slot {
    pub(super) instance: Option<Instance>,
    /// How many times the instance was re-created: acknowledgements go only to the
    /// instance that processed the batch.
    pub(super) generation: u64,
}

impl Slot {
    pub(super) fn new(instance: Instance) -> Arc<Mutex<Slot>> {
        Arc::new(Mutex::new(Slot { instance: Some(instance), generation: 0 }))
    }
}

/// A stage the host can re-create after a panic.
pub(super) struct Stage {
    pub(super) name: Arc<str>,
    pub(super) plugin: Plugin,
    pub(super) config: String,
    pub(super) host: &'static HostApi,
    pub(super) metrics: Arc<StageMetrics>,
    /// Shared with the sink threads that tell a transform what became of its batches.
    pub(super) slot: Arc<Mutex<Slot>>,
    /// Sinks: how retries wait, and for how long a batch is retried at most.
    pub(super) retry: RetrySpec,
    pub(super) max_retry: Option<Duration>,
    /// Failed calls in a row (panics, errors, failed re-creations; not retries), counted
    /// for the stage across the instances of its transform workers.
    pub(super) failures: Arc<AtomicU32>,
    pub(super) health: Arc<Health>,
    /// Sinks: what waits in front of it.
    pub(super) buffer: Arc<Buffer>,
    /// Transforms: takes batches one at a time in source order (`PLUGIN_IN_ORDER`).
    pub(super) in_order: bool,
    /// Transforms: the condition the plugin declares its whole work to be (ABI minor 7),
    /// which the host evaluates instead of calling it.
    pub(super) declared: Option<Arc<declared::Declared>>,
}

impl Stage {
    /// Counts a failed call; the fifth in a row marks the pipeline failed.
    pub(super) fn failed(&mut self, message: &str) {
        let failures = self.failures.fetch_add(1, Relaxed) + 1;
        if failures >= FAILED_AFTER {
            if failures == FAILED_AFTER {
                tracing::error!(stage = %self.name, failures, error = %message, "Stage keeps failing; its pipeline is marked failed until it recovers.");
            }
            let why = format!("stage {} failed {failures} times in a row; last: {message}", self.name);
            self.health.failing.lock().unwrap_or_else(|p| p.into_inner()).insert(self.name.to_string(), why);
        }
    }

    /// Counts a successful call, clearing a failure streak.
    pub(super) fn succeeded(&mut self) {
        if self.failures.swap(0, Relaxed) > 0 && self.health.failing.lock().unwrap_or_else(|p| p.into_inner()).remove(&*self.name).is_some()
        {
            tracing::info!(stage = %self.name, "Stage recovered.");
        }
    }

    /// Runs the instance (re-created first after a panic) on `batch`; also returns the
    /// instance's generation.
    pub(super) fn process(&mut self, batch: &BatchRef<'_>) -> Result<(ForeignOutput, u64), CallError> {
        let slot = self.slot.clone();
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if slot.instance.is_none() {
            // Restart with backoff: a stage that panics on every batch does not spin (and
            // acknowledgements for the gone instance are not held up meanwhile).
            let failures = self.failures.load(Relaxed);
            if failures > 0 {
                drop(slot);
                std::thread::sleep(restart_backoff(failures));
                slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            }
            let inst = Instance::create(&self.plugin, &self.config, self.host)
                .map_err(|e| CallError::host(format!("could not re-create the stage: {e}")))?;
            tracing::info!(stage = %self.name, "Stage re-created after a panic.");
            slot.instance = Some(inst);
            slot.generation += 1;
        }
        let generation = slot.generation;
        Ok((slot.instance.as_mut().expect("just created").process(batch)?, generation))
    }

    /// Another instance of the same stage, sharing its metrics, health and buffer (one per
    /// transform worker).
    pub(super) fn replica(&self) -> Result<Stage, String> {
        let instance = Instance::create(&self.plugin, &self.config, self.host).map_err(|e| e.to_string())?;
        Ok(Stage {
            name: self.name.clone(),
            plugin: self.plugin.clone(),
            config: self.config.clone(),
            host: self.host,
            metrics: self.metrics.clone(),
            slot: Slot::new(instance),
            retry: self.retry.clone(),
            max_retry: self.max_retry,
            failures: self.failures.clone(),
            health: self.health.clone(),
            buffer: self.buffer.clone(),
            in_order: self.in_order,
            declared: self.declared.clone(),
        })
    }

    /// Forgets a poisoned instance (never calling it again, not even to destroy it).
    pub(super) fn poison(&mut self) {
        poison(&mut self.slot.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

pub(super) fn poison(slot: &mut Slot) {
    if let Some(inst) = slot.instance.take() {
        std::mem::forget(inst);
    }
}
