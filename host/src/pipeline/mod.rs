//! The topology runtime: source → bounded queue → transform chain → one bounded queue
//! per sink → sink threads. Acknowledgements flow back to the source.
//!
//! Plugin calls never run on the async runtime: the transform chain has one thread per
//! pipeline and each sink has its own, so a slow plugin cannot stall the admin API.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use weir_plugin::abi::{outcome, HostApi, Kind, RecordMeta, Status};
use weir_plugin::batch::{BatchBuf, BatchRef};

use crate::config::{stage_name, Acknowledge, BufferSpec, PipelineFile, RetrySpec, Takes, WhenFull};
use crate::disklog::DiskLog;
use crate::error::HostError;
use crate::ffi::{self, AckGuard, ForeignOutput, Instance, Intake};
use crate::loader::{Plugin, Registry};
use crate::metrics::{Metrics, StageMetrics};
use crate::telemetry::{self, SpanSite};
use opentelemetry::trace::SpanContext;
use std::time::SystemTime;

mod transforms;

use transforms::{Heads, Order};

/// Checks a pipeline against the plugins found, without creating anything: every stage's
/// plugin exists and has the right kind, and its config passes the plugin's schema and
/// the plugin's own check. Returns every problem found.
pub fn check(file: &PipelineFile, registry: &Registry) -> Vec<HostError> {
    let mut errors = Vec::new();
    for (pointer, stage) in file.stages() {
        let wanted = kind_at(&pointer);
        let plugin = match registry.get(&stage.plugin, wanted) {
            Ok(p) => p,
            Err(e) => {
                errors.push(file.error_at(&format!("{pointer}/plugin"), e.to_string()));
                continue;
            }
        };
        let config_ptr = format!("{pointer}/config");
        match jsonschema::draft202012::new(&plugin.schema) {
            Err(e) => errors.push(file.error_at(&config_ptr, format!("plugin {:?} exports an invalid config schema: {e}", plugin.name))),
            Ok(validator) => {
                let mut found = false;
                for e in validator.iter_errors(&stage.config) {
                    found = true;
                    let mut at = format!("{config_ptr}{}", e.instance_path().as_str());
                    let message = match e.kind() {
                        jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                            if let Some(first) = unexpected.first() {
                                at = format!("{at}/{}", first.replace('~', "~0").replace('/', "~1"));
                            }
                            let allowed = allowed_fields(&plugin.schema, e.instance_path().as_str());
                            format!(
                                "unknown field{} {}; {} accepts: {allowed}",
                                if unexpected.len() > 1 { "s" } else { "" },
                                quote_list(unexpected),
                                plugin.name
                            )
                        }
                        _ => e.masked().to_string(),
                    };
                    errors.push(file.error_at(&at, message));
                }
                if !found {
                    if let Err(message) = plugin.validate(&stage.config.to_string()) {
                        errors.push(file.error_at(&config_ptr, message));
                    }
                }
            }
        }
    }
    errors
}

/// The kind of plugin a position in the pipeline file needs.
fn kind_at(pointer: &str) -> Kind {
    if pointer == "/source" {
        Kind::SOURCE
    } else if pointer.starts_with("/transforms") {
        Kind::TRANSFORM
    } else {
        Kind::SINK
    }
}

fn quote_list(items: &[String]) -> String {
    items.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
}

/// The property names a schema allows at `pointer` (top level only is resolved).
fn allowed_fields(schema: &serde_json::Value, pointer: &str) -> String {
    let props = if pointer.is_empty() { schema.get("properties") } else { None };
    match props.and_then(|p| p.as_object()) {
        Some(map) if !map.is_empty() => map.keys().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "),
        _ => "see `weir plugins`".into(),
    }
}

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

struct StageInfo {
    name: String,
    kind: Kind,
    plugin: String,
    library: String,
    lib: Arc<crate::loader::LibraryInfo>,
    metrics: Arc<StageMetrics>,
}

/// One pipeline, running or not.
pub struct Pipeline {
    /// Its name.
    pub name: String,
    /// Hash of its file after interpolation: a reload restarts it only when this changes.
    pub hash: u64,
    /// When this version started (RFC 3339).
    pub started_at: String,
    /// Its file.
    pub file: PathBuf,
    state: Mutex<(State, Option<String>)>,
    stages: Vec<StageInfo>,
    source: Mutex<Option<Instance>>,
    intake: Option<Arc<QueueIntake>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    abandon: Arc<AtomicBool>,
    acknowledge: Acknowledge,
    health: Arc<Health>,
}

/// Everything measured per source record while its batch moves through the pipeline.
struct Outcomes {
    codes: Vec<u8>,
    reasons: Vec<String>,
}

impl Outcomes {
    fn new(n: usize) -> Self {
        Outcomes { codes: vec![outcome::ACCEPTED; n], reasons: vec![String::new(); n] }
    }

    fn set(&mut self, origin: u32, code: u8, reason: String) {
        let i = origin as usize;
        // The first refusal wins: later stages never saw the record.
        if self.codes[i] == outcome::ACCEPTED || self.codes[i] == outcome::DROPPED {
            self.codes[i] = code;
            self.reasons[i] = reason;
        }
    }
}

/// A transform waiting to hear what became of one batch it processed (ABI minor 1
/// `acknowledge`).
struct Part {
    stage: String,
    slot: Arc<Mutex<Slot>>,
    /// The instance generation that processed it, and its number for the batch.
    generation: u64,
    sequence: u64,
    /// For each of the transform's input records, the source record it came from.
    origins: Vec<u32>,
}

/// The acknowledgement owed for one source batch, completed by the last sink.
struct Tracker {
    outcomes: Mutex<Outcomes>,
    remaining: AtomicUsize,
    ack: Mutex<Option<AckGuard>>,
    /// Transforms that want to hear what became of the batch (always after delivery, also
    /// with `acknowledge: accepted`).
    awaiting: Mutex<Vec<Part>>,
    /// When the source emitted the batch, and whose metrics get the acknowledgement lag.
    received: Instant,
    source: Arc<StageMetrics>,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        // Never completed (a sink thread went away with it): what was not refused failed.
        if self.awaiting.get_mut().map_or(true, |a| a.is_empty()) {
            return;
        }
        let mut guard = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        let o = &mut *guard;
        for (code, reason) in o.codes.iter_mut().zip(o.reasons.iter_mut()) {
            if *code == outcome::ACCEPTED {
                *code = outcome::FAILED;
                *reason = "the pipeline stopped before the batch was delivered".into();
            }
        }
        drop(guard);
        self.settle();
    }
}

impl Tracker {
    fn done(&self) {
        if self.remaining.fetch_sub(1, Relaxed) == 1 {
            // The transforms hear of it before the source, so a retry the source's answer
            // prompts finds them knowing.
            self.settle();
            self.fire();
        }
    }

    /// Tells the transforms that asked what became of their input records (once), before
    /// the source hears of it: a transform that keeps state elsewhere (dedupe in Redis) has
    /// it stored by the time the source commits or answers its client.
    fn settle(&self) {
        let parts = std::mem::take(&mut *self.awaiting.lock().unwrap_or_else(|p| p.into_inner()));
        if parts.is_empty() {
            return;
        }
        let o = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        let told: Vec<(Part, Vec<u8>, Vec<String>)> = parts
            .into_iter()
            .map(|part| {
                let codes = part.origins.iter().map(|&i| o.codes[i as usize]).collect();
                let reasons = part.origins.iter().map(|&i| o.reasons[i as usize].clone()).collect();
                (part, codes, reasons)
            })
            .collect();
        drop(o);
        for (part, codes, reasons) in told {
            let mut slot = part.slot.lock().unwrap_or_else(|p| p.into_inner());
            // A batch processed by an instance since re-created is news to nobody.
            if slot.generation != part.generation {
                continue;
            }
            let Some(instance) = slot.instance.as_mut() else { continue };
            if let Err(e) = instance.acknowledge(&[(part.sequence, codes, reasons)]) {
                tracing::warn!(stage = %part.stage, error = %e, "Transform failed to take an acknowledgement.");
                if e.poisoned() {
                    poison(&mut slot);
                }
            }
        }
    }

    fn fire(&self) {
        if let Some(ack) = self.ack.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let o = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
            ack.send(&o.codes, &o.reasons);
            for &code in &o.codes {
                if let Some(c) = self.source.outcomes.get(code as usize) {
                    c.fetch_add(1, Relaxed);
                }
            }
            self.source.ack_latency.observe(self.received.elapsed());
        }
    }
}

/// A batch between stages: built by the host or owned by a plugin.
enum Current {
    Host(BatchBuf),
    Plugin(ForeignOutput),
    /// Some records of `base`, unchanged: a transform passed them on by index.
    Kept {
        base: Box<Current>,
        metas: Vec<RecordMeta>,
    },
}

impl Current {
    fn view(&self) -> BatchRef<'_> {
        match self {
            Current::Host(b) => b.as_ref(),
            // Checked when it was received, so this cannot fail.
            Current::Plugin(o) => o.batch().unwrap_or(BatchRef::EMPTY),
            // Descriptors of a checked batch over its own data, so this cannot fail either.
            Current::Kept { base, metas } => BatchRef::new(base.view().data(), metas).unwrap_or(BatchRef::EMPTY),
        }
    }

    /// The records `origins` names, in that order, without copying their bytes (`origins`
    /// was checked against the batch).
    fn keep(self, origins: &[u32]) -> Current {
        let view = self.view();
        if origins.len() == view.len() && origins.iter().enumerate().all(|(i, &o)| o as usize == i) {
            return self;
        }
        let metas = origins.iter().map(|&o| view.metas()[o as usize]).collect();
        let base = match self {
            Current::Kept { base, .. } => base,
            other => Box::new(other),
        };
        Current::Kept { base, metas }
    }
}

/// What waits in front of one sink, against its limits.
struct Buffer {
    spec: BufferSpec,
    /// (records, bytes) waiting.
    held: Mutex<(usize, usize)>,
    room: std::sync::Condvar,
    /// With `disk`: the log batches are written to before the sink reads them.
    disk: Option<Arc<DiskLog>>,
    /// This pipeline version writes no more to `disk`.
    writer_done: AtomicBool,
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.finish_writing();
    }
}

impl Buffer {
    fn new(spec: Option<BufferSpec>, disk: Option<Arc<DiskLog>>) -> Arc<Self> {
        let spec = spec.unwrap_or(BufferSpec { max_events: None, max_bytes: None, when_full: WhenFull::Block, disk: None });
        Arc::new(Buffer { spec, held: Mutex::new((0, 0)), room: std::sync::Condvar::new(), disk, writer_done: AtomicBool::new(false) })
    }

    /// This version will write no more to its disk buffer (once; also when never started).
    fn finish_writing(&self) {
        if let Some(log) = &self.disk {
            if !self.writer_done.swap(true, Relaxed) {
                log.close();
            }
        }
    }

    fn fits(&self, held: (usize, usize), records: usize, bytes: usize) -> bool {
        // An empty buffer takes any batch, so one larger than the limits still moves.
        held == (0, 0)
            || (self.spec.max_events.is_none_or(|m| held.0 + records <= m.get())
                && self.spec.max_bytes.is_none_or(|m| held.1 + bytes <= m.get()))
    }

    /// Takes a batch in: waits for room (`block`) or says no (`drop_newest`).
    fn admit(&self, records: usize, bytes: usize, abandon: &AtomicBool) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while !self.fits(*held, records, bytes) {
            if self.spec.when_full == WhenFull::DropNewest || abandon.load(Relaxed) {
                return false;
            }
            held = self.room.wait_timeout(held, Duration::from_millis(100)).unwrap_or_else(|p| p.into_inner()).0;
        }
        held.0 += records;
        held.1 += bytes;
        true
    }

    fn release(&self, records: usize, bytes: usize) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.0 = held.0.saturating_sub(records);
        held.1 = held.1.saturating_sub(bytes);
        self.room.notify_all();
    }
}

/// A sink that runs after another, fed from its thread.
struct Downstream {
    tx: SyncSender<SinkJob>,
    metrics: Arc<StageMetrics>,
    takes: Takes,
}

struct SinkJob {
    batch: Arc<Current>,
    origins: Arc<Vec<u32>>,
    tracker: Arc<Tracker>,
    /// The span the sink's span is a child of, when traces are on.
    trace: Option<SpanContext>,
}

/// The dead-letter sink's queue.
#[derive(Clone)]
struct DeadLetters {
    tx: SyncSender<SinkJob>,
    metrics: Arc<StageMetrics>,
}

/// Records bound for the dead-letter sink, as envelopes, with their source origins.
#[derive(Default)]
struct Letters {
    batch: BatchBuf,
    origins: Vec<u32>,
}

impl Letters {
    /// Adds `record` refused at `stage` as an envelope.
    fn add(&mut self, record: &weir_plugin::RecordRef<'_>, origin: u32, stage: &str, outcome: &str, reason: &str) {
        /// The record as it came (JSON as written, numbers keep their digits), or as text.
        #[derive(Serialize)]
        #[serde(untagged)]
        enum Recorded<'a> {
            Json(&'a serde_json::value::RawValue),
            Text(String),
        }
        #[derive(Serialize)]
        struct Envelope<'a> {
            record: Recorded<'a>,
            stage: &'a str,
            outcome: &'a str,
            reason: &'a str,
            time: String,
            key: Option<String>,
            headers: serde_json::Map<String, serde_json::Value>,
        }
        let envelope = Envelope {
            record: serde_json::from_slice(record.value)
                .map(Recorded::Json)
                .unwrap_or_else(|_| Recorded::Text(String::from_utf8_lossy(record.value).into_owned())),
            stage,
            outcome,
            reason,
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            key: record.key.map(|k| String::from_utf8_lossy(k).into_owned()),
            headers: record.headers().map(|(k, v)| (k.to_owned(), String::from_utf8_lossy(v).into_owned().into())).collect(),
        };
        let envelope = serde_json::to_string(&envelope).unwrap_or_default();
        let marks: [(&str, &[u8]); 3] = [
            ("weir.dead_letter.stage", stage.as_bytes()),
            ("weir.dead_letter.outcome", outcome.as_bytes()),
            ("weir.dead_letter.reason", reason.as_bytes()),
        ];
        let n = self.origins.len() as u32;
        self.batch.push(n, weir_plugin::Head { extra_headers: &marks, ..weir_plugin::Head::from(record) }, envelope.as_bytes());
        self.origins.push(origin);
    }
}

impl DeadLetters {
    /// Queues `letters` for the dead-letter sink; the source's acknowledgement waits for it.
    fn send(&self, letters: Letters, tracker: &Arc<Tracker>, trace: Option<SpanContext>) {
        if letters.origins.is_empty() {
            return;
        }
        tracker.remaining.fetch_add(1, Relaxed);
        self.metrics.queue_depth.fetch_add(1, Relaxed);
        let job =
            SinkJob { batch: Arc::new(Current::Host(letters.batch)), origins: Arc::new(letters.origins), tracker: tracker.clone(), trace };
        if self.tx.send(job).is_err() {
            self.metrics.queue_depth.fetch_sub(1, Relaxed);
            self.metrics.errors.fetch_add(1, Relaxed);
            tracing::error!("The dead-letter sink has stopped; refused records could not be kept.");
            tracker.done();
        }
    }
}

struct Envelope {
    batch: BatchBuf,
    ack: AckGuard,
    received: Instant,
}

struct QueueIntake {
    tx: Mutex<Option<SyncSender<Envelope>>>,
    metrics: Arc<StageMetrics>,
    finished: AtomicBool,
    /// Paused through the admin API: every offer is refused as backpressure.
    paused: AtomicBool,
}

impl Intake for QueueIntake {
    fn offer(&self, batch: BatchBuf, ack: AckGuard) -> Result<(), (Status, AckGuard)> {
        if self.paused.load(Relaxed) {
            self.metrics.backpressure.fetch_add(1, Relaxed);
            return Err((Status::FULL, ack));
        }
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = guard.as_ref() else {
            return Err((Status::CLOSED, ack));
        };
        let n = batch.len() as u64;
        match tx.try_send(Envelope { batch, ack, received: Instant::now() }) {
            Ok(()) => {
                self.metrics.records_out.fetch_add(n, Relaxed);
                self.metrics.batches.fetch_add(1, Relaxed);
                self.metrics.queue_depth.fetch_add(1, Relaxed);
                Ok(())
            }
            Err(TrySendError::Full(env)) => {
                self.metrics.backpressure.fetch_add(1, Relaxed);
                Err((Status::FULL, env.ack))
            }
            Err(TrySendError::Disconnected(env)) => Err((Status::CLOSED, env.ack)),
        }
    }

    fn finish(&self) {
        self.finished.store(true, Relaxed);
        self.close();
    }
}

impl QueueIntake {
    fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// Stages that keep failing, reported to their pipeline: it shows as failed (with why)
/// until they succeed again.
#[derive(Default)]
struct Health {
    failing: Mutex<std::collections::BTreeMap<String, String>>,
}

/// Consecutive failed calls after which a stage marks its pipeline failed.
const FAILED_AFTER: u32 = 5;

/// Wait before re-creating a stage after its `failures`-th failure in a row.
fn restart_backoff(failures: u32) -> Duration {
    Duration::from_millis((100u64 << failures.saturating_sub(1).min(10)).min(10_000))
}

/// A stage's instance; calls on it are one at a time because they hold this lock.
struct Slot {
    instance: Option<Instance>,
    /// How many times the instance was re-created: acknowledgements go only to the
    /// instance that processed the batch.
    generation: u64,
}

impl Slot {
    fn new(instance: Instance) -> Arc<Mutex<Slot>> {
        Arc::new(Mutex::new(Slot { instance: Some(instance), generation: 0 }))
    }
}

/// A stage the host can re-create after a panic.
struct Stage {
    name: String,
    plugin: Plugin,
    config: String,
    host: &'static HostApi,
    metrics: Arc<StageMetrics>,
    /// Shared with the sink threads that tell a transform what became of its batches.
    slot: Arc<Mutex<Slot>>,
    /// Sinks: how retries wait, and for how long a batch is retried at most.
    retry: RetrySpec,
    max_retry: Option<Duration>,
    /// Failed calls in a row (panics, errors, failed re-creations; not retries), counted
    /// for the stage across the instances of its transform workers.
    failures: Arc<AtomicU32>,
    health: Arc<Health>,
    /// Sinks: what waits in front of it.
    buffer: Arc<Buffer>,
}

impl Stage {
    /// Counts a failed call; the fifth in a row marks the pipeline failed.
    fn failed(&mut self, message: &str) {
        let failures = self.failures.fetch_add(1, Relaxed) + 1;
        if failures >= FAILED_AFTER {
            if failures == FAILED_AFTER {
                tracing::error!(stage = %self.name, failures, error = %message, "Stage keeps failing; its pipeline is marked failed until it recovers.");
            }
            let why = format!("stage {} failed {failures} times in a row; last: {message}", self.name);
            self.health.failing.lock().unwrap_or_else(|p| p.into_inner()).insert(self.name.clone(), why);
        }
    }

    /// Counts a successful call, clearing a failure streak.
    fn succeeded(&mut self) {
        if self.failures.swap(0, Relaxed) > 0 && self.health.failing.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.name).is_some()
        {
            tracing::info!(stage = %self.name, "Stage recovered.");
        }
    }

    /// Runs `f` on the instance (re-created first after a panic); also returns the
    /// instance's generation.
    fn call<R>(&mut self, f: impl FnOnce(&mut Instance) -> R) -> Result<(R, u64), String> {
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
            let inst =
                Instance::create(&self.plugin, &self.config, self.host).map_err(|e| format!("could not re-create the stage: {e}"))?;
            tracing::info!(stage = %self.name, "Stage re-created after a panic.");
            slot.instance = Some(inst);
            slot.generation += 1;
        }
        let generation = slot.generation;
        Ok((f(slot.instance.as_mut().expect("just created")), generation))
    }

    /// Another instance of the same stage, sharing its metrics, health and buffer (one per
    /// transform worker).
    fn replica(&self) -> Result<Stage, String> {
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
        })
    }

    /// Forgets a poisoned instance (never calling it again, not even to destroy it).
    fn poison(&mut self) {
        poison(&mut self.slot.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

fn poison(slot: &mut Slot) {
    if let Some(inst) = slot.instance.take() {
        std::mem::forget(inst);
    }
}

impl Pipeline {
    /// A pipeline that could not be built; shown in the admin API with its error.
    pub fn failed(name: &str, file: &Path, error: &str) -> Self {
        Pipeline {
            name: name.to_owned(),
            hash: 0,
            started_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            file: file.to_path_buf(),
            state: Mutex::new((State::Failed, Some(error.to_owned()))),
            stages: Vec::new(),
            source: Mutex::new(None),
            intake: None,
            threads: Mutex::new(Vec::new()),
            abandon: Arc::default(),
            acknowledge: Acknowledge::default(),
            health: Arc::default(),
        }
    }

    /// Builds and starts a pipeline from a checked file.
    pub fn start(file: &PipelineFile, registry: &Registry, metrics: &Metrics) -> Result<Self, HostError> {
        let errors = check(file, registry);
        if let Some(first) = errors.into_iter().next() {
            return Err(first);
        }
        if file.sinks().next().is_none() {
            tracing::warn!(pipeline = %file.name, "Every sink is turned off (enabled: false): events are accepted and kept nowhere.");
        }
        let base_dir = file.path.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p }).unwrap_or(Path::new("."));
        let base_dir = base_dir.canonicalize().unwrap_or_else(|_| base_dir.to_path_buf());
        let mut infos = Vec::new();
        let mut built: Vec<(String, Stage)> = Vec::new();
        let health = Arc::new(Health::default());
        for (pointer, spec) in file.stages() {
            let plugin = registry.get(&spec.plugin, kind_at(&pointer))?.clone();
            let name = stage_name(&pointer, spec);
            let m = metrics.stage(&file.name, &name, &plugin.name);
            let retry = spec.retry.clone().unwrap_or_default();
            let disk = match spec.buffer.as_ref().and_then(|b| b.disk.as_ref()) {
                None => None,
                Some(dir) => Some(open_disk_buffer(file, &pointer, &base_dir.join(dir), spec.buffer.as_ref(), &name, &m)?),
            };
            let max_retry = retry.max_duration().map_err(|e| file.error_at(&format!("{pointer}/retry/max_duration"), e))?;
            let host = ffi::host_api(&file.name, &name, &plugin.name, &base_dir.to_string_lossy(), m.clone());
            let config = spec.config.to_string();
            let instance = match Instance::create(&plugin, &config, host) {
                Ok(i) => i,
                Err(e) => {
                    let stages: Vec<_> = infos.iter().map(|i: &StageInfo| i.metrics.clone()).chain([m]).collect();
                    metrics.remove(&stages);
                    return Err(file.error_at(
                        &format!("{pointer}/config"),
                        file.redactor.redact(&format!("plugin {} could not start: {e}", plugin.name)),
                    ));
                }
            };
            infos.push(StageInfo {
                name: name.clone(),
                kind: plugin.kind,
                plugin: plugin.name.clone(),
                library: format!("{} {}", plugin.library.name, plugin.library.version),
                lib: plugin.library.clone(),
                metrics: m.clone(),
            });
            built.push((
                pointer,
                Stage {
                    name,
                    plugin,
                    config,
                    host,
                    metrics: m,
                    slot: Slot::new(instance),
                    retry,
                    max_retry,
                    failures: Arc::default(),
                    health: health.clone(),
                    buffer: Buffer::new(spec.buffer.clone(), disk),
                },
            ));
        }
        let settings = &file.spec.settings;
        let abandon = Arc::new(AtomicBool::new(false));
        let mut iter = built.into_iter();
        let (_, source) = iter.next().expect("a pipeline has a source");
        let mut transforms = Vec::new();
        let mut sinks = Vec::new();
        let mut dead_letter = None;
        for (pointer, stage) in iter {
            if pointer.starts_with("/transforms") {
                transforms.push(stage);
            } else if pointer == "/dead_letter" {
                dead_letter = Some(stage);
            } else {
                sinks.push(stage);
            }
        }
        let mut threads = Vec::new();
        let dead_letters = match dead_letter {
            None => None,
            Some(stage) => {
                let (tx, rx) = sync_channel::<SinkJob>(settings.sink_queue_batches.get());
                let dl = DeadLetters { tx, metrics: stage.metrics.clone() };
                let (abandon, pipeline) = (abandon.clone(), file.name.clone());
                let thread_name = format!("weir-sink-{}", stage.name);
                threads.push(
                    std::thread::Builder::new()
                        .name(thread_name)
                        .spawn(move || run_sink(&pipeline, stage, rx, Vec::new(), None, abandon))?,
                );
                Some(dl)
            }
        };
        let mut sink_txs = Vec::new();
        let follows: Vec<(Option<String>, Takes)> = file.sinks().map(|s| (s.after.clone(), s.takes)).collect();
        let total_sinks = sinks.len();
        let channels: Vec<_> = sinks.iter().map(|_| sync_channel::<SinkJob>(settings.sink_queue_batches.get())).collect();
        let (txs, rxs): (Vec<_>, Vec<_>) = channels.into_iter().unzip();
        let names: Vec<String> = sinks.iter().map(|s| s.name.clone()).collect();
        for (i, (sink, rx)) in sinks.into_iter().zip(rxs).enumerate() {
            let downstream: Vec<Downstream> = follows
                .iter()
                .zip(&txs)
                .zip(&infos[1 + transforms.len()..1 + transforms.len() + total_sinks])
                .filter(|(((after, _), _), _)| after.as_deref() == Some(names[i].as_str()))
                .map(|(((_, takes), tx), info)| Downstream { tx: tx.clone(), metrics: info.metrics.clone(), takes: *takes })
                .collect();
            if follows[i].0.is_none() {
                sink_txs.push((txs[i].clone(), sink.metrics.clone(), sink.buffer.clone()));
            }
            let abandon = abandon.clone();
            let thread_name = format!("weir-sink-{}", sink.name);
            let pipeline = file.name.clone();
            let dl = dead_letters.clone();
            threads
                .push(std::thread::Builder::new().name(thread_name).spawn(move || run_sink(&pipeline, sink, rx, downstream, dl, abandon))?);
        }
        // Only the threads hold senders now, so queues close as their feeders finish.
        drop(txs);
        let (tx, rx) = sync_channel::<Envelope>(settings.queue_batches.get());
        let intake = Arc::new(QueueIntake {
            tx: Mutex::new(Some(tx)),
            metrics: source.metrics.clone(),
            finished: AtomicBool::new(false),
            paused: AtomicBool::new(false),
        });
        let ack_mode = settings.acknowledge;
        let name = file.name.clone();
        let source_metrics = source.metrics.clone();
        let heads = Arc::new(Heads {
            pipeline: name.clone(),
            source: source.name.clone(),
            source_plugin: source.plugin.name.clone(),
            total_sinks,
            ack_mode,
            dead_letters,
            abandon: abandon.clone(),
            sinks: sink_txs,
            source_metrics,
        });
        // One worker per core unless the pipeline says; with no transforms one is enough.
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let workers = if transforms.is_empty() { 1 } else { settings.transform_workers.map_or(cores, |n| n.get()) };
        let mut chains = vec![transforms];
        for _ in 1..workers {
            let chain: Result<Vec<Stage>, _> = chains[0]
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    t.replica().map_err(|e| {
                        file.error_at(
                            &format!("/transforms/{i}/config"),
                            file.redactor.redact(&format!("plugin {} could not start another worker's instance: {e}", t.plugin.name)),
                        )
                    })
                })
                .collect();
            match chain {
                Ok(c) => chains.push(c),
                Err(e) => {
                    // The sinks' queues close with their feeders gone, and their threads end.
                    drop((chains, rx, heads));
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(e);
                }
            }
        }
        let order = Order::new(rx, workers);
        for (w, chain) in chains.into_iter().enumerate() {
            let (order, heads) = (order.clone(), heads.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(if workers == 1 { format!("weir-transforms-{name}") } else { format!("weir-transforms-{name}-{w}") })
                    .spawn(move || transforms::run_worker(chain, order, heads))?,
            );
        }
        // Only the workers hold the sinks' queues now, so they close as the workers finish.
        drop((order, heads));
        let mut source_instance = source.slot.lock().unwrap_or_else(|p| p.into_inner()).instance.take().expect("created above");
        if let Err(e) = source_instance.start(ffi::emitter(intake.clone())) {
            intake.close();
            for t in threads {
                let _ = t.join();
            }
            return Err(
                file.error_at("/source/config", file.redactor.redact(&format!("source {} could not start: {e}", source.plugin.name)))
            );
        }
        metrics.pipeline_states.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), "running".into());
        tracing::info!(pipeline = %name, file = %file.path.display(), stages = infos.len(), "Pipeline started.");
        Ok(Pipeline {
            name,
            hash: file.hash(),
            started_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            file: file.path.clone(),
            state: Mutex::new((State::Running, None)),
            stages: infos,
            source: Mutex::new(Some(source_instance)),
            intake: Some(intake),
            threads: Mutex::new(threads),
            abandon,
            acknowledge: ack_mode,
            health,
        })
    }

    /// The pipeline's state: failed, with why, while one of its stages keeps failing.
    pub fn state(&self) -> (State, Option<String>) {
        let failing = self.health.failing.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect::<Vec<_>>();
        match self.lifecycle() {
            (State::Running, _) if !failing.is_empty() => (State::Failed, Some(failing.join("; "))),
            other => other,
        }
    }

    /// Where the pipeline is in its life (running even while a stage keeps failing).
    fn lifecycle(&self) -> (State, Option<String>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.0 == State::Running && self.intake.as_ref().is_some_and(|i| i.finished.load(Relaxed)) {
            let done = self.threads.lock().unwrap_or_else(|p| p.into_inner()).iter().all(|t| t.is_finished());
            if done {
                st.0 = State::Finished;
                tracing::info!(pipeline = %self.name, "Pipeline finished: its source has no more records and every record was handled.");
            }
        }
        st.clone()
    }

    /// Stops the source, drains what is in flight into the sinks and stops them. After
    /// `timeout`, sinks still retrying give up and their records are acknowledged as failed.
    pub fn stop(&self, timeout: Duration, metrics: &Metrics) {
        {
            let current = self.lifecycle().0;
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if !matches!(current, State::Running | State::Finished) {
                return;
            }
            st.0 = State::Stopping;
        }
        tracing::info!(pipeline = %self.name, "Pipeline stopping; draining in-flight records.");
        if let Some(mut source) = self.source.lock().unwrap_or_else(|p| p.into_inner()).take() {
            if let Err(e) = source.stop() {
                tracing::warn!(pipeline = %self.name, error = %e, "Source did not stop cleanly.");
            }
        }
        if let Some(intake) = &self.intake {
            intake.close();
        }
        let deadline = Instant::now() + timeout;
        let threads: Vec<_> = self.threads.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
        while Instant::now() < deadline && !threads.iter().all(|t| t.is_finished()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !threads.iter().all(|t| t.is_finished()) {
            tracing::warn!(pipeline = %self.name, "Drain timed out; records still being retried are acknowledged as failed.");
            self.abandon.store(true, Relaxed);
        }
        for t in threads {
            let _ = t.join();
        }
        let end = if self.intake.as_ref().is_some_and(|i| i.finished.load(Relaxed)) { State::Finished } else { State::Stopped };
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0 = end;
        metrics.pipeline_states.lock().unwrap_or_else(|p| p.into_inner()).insert(self.name.clone(), end.name().into());
        tracing::info!(pipeline = %self.name, "Pipeline stopped.");
    }

    /// What the admin API shows.
    pub fn report(&self) -> serde_json::Value {
        let (state, error) = self.state();
        let stages: Vec<StageReport> = self
            .stages
            .iter()
            .map(|s| StageReport {
                name: s.name.clone(),
                kind: s.kind.name(),
                plugin: s.plugin.clone(),
                library: s.library.clone(),
                records_in: s.metrics.records_in.load(Relaxed),
                records_out: s.metrics.records_out.load(Relaxed),
                rejected: s.metrics.rejected.load(Relaxed),
                dropped: s.metrics.dropped.load(Relaxed),
                errors: s.metrics.errors.load(Relaxed),
                queue_depth: s.metrics.queue_depth.load(Relaxed).max(0),
                metrics: s.metrics.custom.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k.clone(), v.value)).collect(),
            })
            .collect();
        serde_json::json!({
            "name": self.name,
            "file": self.file,
            "config_hash": format!("{:016x}", self.hash),
            "started_at": self.started_at,
            "paused": self.paused(),
            "state": state,
            "error": error,
            "acknowledge": self.acknowledge,
            "stages": stages,
        })
    }

    /// Pauses or resumes taking records: while paused the source is pushed back (the HTTP
    /// source answers 503 with `Retry-After`, the Kafka source pauses its partitions).
    /// Returns false when the pipeline is not running.
    pub fn set_paused(&self, paused: bool) -> bool {
        match &self.intake {
            Some(i) if self.lifecycle().0 == State::Running => {
                i.paused.store(paused, Relaxed);
                tracing::info!(pipeline = %self.name, "Pipeline {}.", if paused { "paused" } else { "resumed" });
                true
            }
            _ => false,
        }
    }

    /// Whether it is paused.
    pub fn paused(&self) -> bool {
        self.intake.as_ref().is_some_and(|i| i.paused.load(Relaxed))
    }

    /// Whether every stage's plugin is still the one `registry` offers (not rebuilt since).
    pub fn uses_current_plugins(&self, registry: &Registry) -> bool {
        self.stages.iter().all(|s| registry.plugins.get(&(s.plugin.clone(), s.kind.0)).is_some_and(|p| Arc::ptr_eq(&p.library, &s.lib)))
    }

    /// The metrics of its stages (to forget them once it is replaced).
    pub fn stage_metrics(&self) -> Vec<Arc<StageMetrics>> {
        self.stages.iter().map(|s| s.metrics.clone()).collect()
    }

    /// Sum of a plugin gauge over the pipeline's stages.
    pub fn gauge(&self, name: &str) -> f64 {
        self.stages.iter().filter_map(|s| s.metrics.gauge(name)).sum()
    }
}

/// Opens a sink's disk buffer, reporting what it found.
fn open_disk_buffer(
    file: &PipelineFile,
    pointer: &str,
    dir: &Path,
    spec: Option<&BufferSpec>,
    stage: &str,
    metrics: &Arc<StageMetrics>,
) -> Result<Arc<DiskLog>, HostError> {
    let max = spec.and_then(|b| b.max_bytes).map_or(1 << 30, |m| m.get() as u64);
    let (log, opened) = DiskLog::shared(dir, max).map_err(|e| file.error_at(&format!("{pointer}/buffer/disk"), e))?;
    // Already open for the running version of the pipeline: nothing new to report.
    let Some(opened) = opened else { return Ok(log) };
    if let Some(why) = &opened.corruption {
        tracing::error!(stage, buffer = %dir.display(), problem = %why, pending = opened.pending_frames, "Disk buffer damaged; the frames before the damage are delivered.");
        metrics.custom("disk_buffer_corruptions", "Damaged disk buffer tails found (and cut off) at start.", true, 1.0);
    }
    if opened.pending_frames > 0 {
        tracing::info!(stage, buffer = %dir.display(), batches = opened.pending_frames, "Disk buffer replays batches not yet delivered.");
    }
    Ok(log)
}

/// What the transform thread knows of its pipeline.
/// Gives a following sink the records it takes, marked with their outcome here.
fn hand_on(d: &Downstream, batch: &BatchRef<'_>, job: &SinkJob, refused: &[Option<String>], trace: Option<&SpanContext>) {
    let mut out = BatchBuf::new();
    let mut origins = Vec::new();
    for (i, reason) in refused.iter().enumerate() {
        let wanted = match d.takes {
            Takes::All => true,
            Takes::Delivered => reason.is_none(),
            Takes::Refused => reason.is_some(),
        };
        if !wanted {
            continue;
        }
        let r = batch.get(i);
        let marks: Vec<(&str, &[u8])> = match reason {
            None => vec![("weir.outcome", b"delivered")],
            Some(why) => vec![("weir.outcome", b"refused"), ("weir.reason", why.as_bytes())],
        };
        out.push(i as u32, weir_plugin::Head { extra_headers: &marks, ..weir_plugin::Head::from(&r) }, r.value);
        origins.push(job.origins[i]);
    }
    if out.is_empty() {
        job.tracker.done();
        return;
    }
    d.metrics.queue_depth.fetch_add(1, Relaxed);
    let next =
        SinkJob { batch: Arc::new(Current::Host(out)), origins: Arc::new(origins), tracker: job.tracker.clone(), trace: trace.cloned() };
    if d.tx.send(next).is_err() {
        d.metrics.queue_depth.fetch_sub(1, Relaxed);
        job.tracker.done();
    }
}

/// A small xorshift generator for retry jitter (no need for a cryptographic one).
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
        Jitter(nanos | 1)
    }

    /// A number in `[0, 1)`.
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Wait before retry `attempt` (0-based) of one batch: the sink's hint when it gave one,
/// else exponential from `initial_backoff_ms` up to `max_backoff_ms`, with jitter (half to
/// all of it) so sinks retrying together spread out.
fn backoff(retry: &RetrySpec, attempt: u32, hint_ms: u64, jitter: &mut Jitter) -> Duration {
    if hint_ms > 0 {
        return Duration::from_millis(hint_ms.min(60_000));
    }
    let full = retry.initial_backoff_ms.saturating_mul(1u64 << attempt.min(30)).min(retry.max_backoff_ms);
    Duration::from_millis(((full as f64) * (0.5 + 0.5 * jitter.next())) as u64)
}

/// Delivers batches to one sink, retrying when it asks to, then hands what it delivered
/// or refused to the sinks that run after it.
fn run_sink(
    pipeline: &str,
    mut sink: Stage,
    rx: Receiver<SinkJob>,
    downstream: Vec<Downstream>,
    dead_letters: Option<DeadLetters>,
    abandon: Arc<AtomicBool>,
) {
    let mut ctx = SinkCtx { pipeline, tracer: telemetry::tracer(), jitter: Jitter::new(), downstream, dead_letters, abandon };
    match sink.buffer.disk.clone() {
        None => {
            while let Ok(job) = rx.recv() {
                sink.metrics.queue_depth.fetch_sub(1, Relaxed);
                deliver(&mut sink, &mut ctx, job);
            }
        }
        Some(log) => {
            // From the disk buffer: each batch is delivered (or dead-lettered), then the
            // buffer's read position moves past it. One reader at a time: a new version of
            // the pipeline reads once this one has stopped writing and hands over.
            let _reading = log.read_lock();
            let buffer = sink.buffer.clone();
            let handing_over = || buffer.writer_done.load(Relaxed) && log.reader_waiting();
            while !ctx.abandon.load(Relaxed) && !handing_over() {
                match log.next(Duration::from_millis(200)) {
                    Ok(Some((batch, next))) => {
                        let n = batch.len();
                        let tracker = Arc::new(Tracker {
                            outcomes: Mutex::new(Outcomes::new(n)),
                            remaining: AtomicUsize::new(1),
                            ack: Mutex::new(None),
                            awaiting: Mutex::new(Vec::new()),
                            received: Instant::now(),
                            source: sink.metrics.clone(),
                        });
                        let job = SinkJob {
                            batch: Arc::new(Current::Host(batch)),
                            origins: Arc::new((0..n as u32).collect()),
                            tracker,
                            trace: None,
                        };
                        deliver(&mut sink, &mut ctx, job);
                        if ctx.abandon.load(Relaxed) {
                            // The drain timed out while the sink was retrying: the batch stays
                            // on disk for the next start.
                            break;
                        }
                        if let Err(e) = log.commit(next) {
                            tracing::error!(stage = %sink.name, error = %e, "Disk buffer position not saved; these records may be delivered again.");
                        }
                        sink.metrics.custom("disk_buffer_bytes", "Bytes waiting in the sink's disk buffer.", false, log.held() as f64);
                    }
                    Ok(None) if log.is_drained() => break,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(stage = %sink.name, error = %e, "Disk buffer cannot be read; retrying.");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        }
    }
    if let Some(inst) = sink.slot.lock().unwrap_or_else(|p| p.into_inner()).instance.as_mut() {
        if let Err(e) = inst.stop() {
            tracing::warn!(stage = %sink.name, error = %e, "Sink did not stop cleanly.");
        }
    }
}

/// What a sink thread keeps between batches.
struct SinkCtx<'a> {
    pipeline: &'a str,
    tracer: Option<&'static telemetry::Tracing>,
    jitter: Jitter,
    downstream: Vec<Downstream>,
    dead_letters: Option<DeadLetters>,
    abandon: Arc<AtomicBool>,
}

/// Delivers one batch to a sink: retries as the sink asks, then hands what it delivered or
/// refused to the sinks after it and refused records to the dead-letter sink.
fn deliver(sink: &mut Stage, ctx: &mut SinkCtx<'_>, job: SinkJob) {
    let (pipeline, tracer, downstream, dead_letters, abandon) =
        (ctx.pipeline, ctx.tracer, &ctx.downstream, &ctx.dead_letters, &ctx.abandon);
    let jitter = &mut ctx.jitter;
    let batch = job.batch.view();
    let held = (batch.len(), batch.data_len());
    let mut span = tracer.zip(job.trace.as_ref()).map(|(t, parent)| {
        let site = SpanSite { pipeline, stage: &sink.name, plugin: &sink.plugin.name, kind: "sink" };
        t.start(&site, Some(parent), Vec::new(), batch.len(), SystemTime::now())
    });
    // Records leave with a `traceparent` naming this sink's span, so the next hop
    // (another pipeline, another host) continues the trace from here.
    let rewritten = span.as_ref().filter(|s| s.sampled()).map(|s| telemetry::with_traceparent(&batch, &s.context()));
    let batch = rewritten.as_ref().map(|b| b.as_ref()).unwrap_or(batch);
    let mut attempt = 0u32;
    let first_try = Instant::now();
    let mut failed_all = false;
    sink.metrics.records_in.fetch_add(batch.len() as u64, Relaxed);
    sink.metrics.batches.fetch_add(1, Relaxed);
    // Per record of the batch: why it was refused, or None when delivered.
    let mut refused: Vec<Option<String>> = vec![None; batch.len()];
    loop {
        let started = Instant::now();
        let result = sink
            .call(|inst| inst.process(&batch))
            .map_err(|m| (Status::FATAL, m, 0))
            .and_then(|(r, _)| r.map_err(|e| (e.status, e.to_string(), e.retry_after_ms)));
        sink.metrics.latency.observe(started.elapsed());
        match result {
            Ok(out) => {
                let rejections = out.rejections();
                sink.metrics.rejected.fetch_add(rejections.len() as u64, Relaxed);
                sink.metrics.records_out.fetch_add((batch.len() - rejections.len()) as u64, Relaxed);
                if let Some(span) = span.as_mut() {
                    span.count("weir.records.rejected", rejections.len());
                }
                let mut o = job.tracker.outcomes.lock().unwrap_or_else(|p| p.into_inner());
                for (i, reason) in rejections {
                    let reason = format!("{}: {reason}", sink.name);
                    o.set(job.origins[i], outcome::REJECTED, reason.clone());
                    refused[i] = Some(reason);
                }
                drop(o);
                sink.succeeded();
                break;
            }
            Err((status, message, hint)) => {
                sink.metrics.errors.fetch_add(1, Relaxed);
                if matches!(status, Status::PANICKED | Status::POISONED) {
                    sink.poison();
                }
                if status != Status::RETRY {
                    sink.failed(&message);
                }
                let out_of_time = sink.max_retry.is_some_and(|m| first_try.elapsed() >= m);
                if status == Status::RETRY && !abandon.load(Relaxed) && !out_of_time {
                    let wait = backoff(&sink.retry, attempt, hint, jitter);
                    tracing::warn!(stage = %sink.name, error = %message, attempt, retry_in_ms = wait.as_millis() as u64, "Sink asked to retry the batch.");
                    attempt += 1;
                    std::thread::sleep(wait);
                    continue;
                }
                tracing::error!(stage = %sink.name, error = %message, records = batch.len(), "Sink failed the batch.");
                if let Some(span) = span.as_mut() {
                    span.fail(&message);
                }
                let message = if status == Status::RETRY && out_of_time {
                    format!("gave up after {attempt} retries in {:.1} s: {message}", first_try.elapsed().as_secs_f64())
                } else {
                    message
                };
                failed_all = true;
                let reason = format!("{}: {message}", sink.name);
                let mut o = job.tracker.outcomes.lock().unwrap_or_else(|p| p.into_inner());
                for (i, &origin) in job.origins.iter().enumerate() {
                    o.set(origin, outcome::FAILED, reason.clone());
                    refused[i] = Some(reason.clone());
                }
                break;
            }
        }
    }
    let cx = span.map(|mut s| {
        s.count("weir.retries", attempt as usize);
        let cx = s.context();
        s.end();
        cx
    });
    for d in downstream {
        hand_on(d, &batch, &job, &refused, cx.as_ref().or(job.trace.as_ref()));
    }
    if let Some(dl) = &dead_letters {
        let mut letters = Letters::default();
        let outcome = if failed_all { "failed" } else { "rejected" };
        for (i, why) in refused.iter().enumerate() {
            if let Some(why) = why {
                let reason = why.strip_prefix(&format!("{}: ", sink.name)).unwrap_or(why);
                letters.add(&batch.get(i), job.origins[i], &sink.name, outcome, reason);
            }
        }
        dl.send(letters, &job.tracker, cx.or(job.trace.clone()));
    }
    sink.buffer.release(held.0, held.1);
    job.tracker.done();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_and_follows_hints() {
        let retry = RetrySpec { initial_backoff_ms: 100, max_backoff_ms: 1000, max_duration: None };
        let mut j = Jitter::new();
        for (attempt, full) in [(0, 100), (1, 200), (2, 400), (3, 800), (4, 1000), (40, 1000)] {
            let waits: Vec<u64> = (0..50).map(|_| backoff(&retry, attempt, 0, &mut j).as_millis() as u64).collect();
            assert!(waits.iter().all(|w| *w >= full / 2 && *w <= full), "attempt {attempt}: {waits:?}");
            assert!(waits.iter().any(|w| *w != waits[0]), "jittered: {waits:?}");
        }
        assert_eq!(backoff(&retry, 3, 250, &mut j), Duration::from_millis(250));
    }
}
