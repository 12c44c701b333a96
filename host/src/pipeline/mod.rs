//! The topology runtime: source → bounded queue (`intake`) → transform workers
//! (`transforms`) → one bounded queue per sink (`buffer`) → sink threads (`sink`).
//! Acknowledgements (`ack`) flow back to the source; refused records go to the
//! dead-letter sink (`dead_letter`). This module builds, starts, reports and stops a
//! pipeline.
//!
//! Plugin calls never run on the async runtime: the transform workers and each sink have
//! threads of their own, so a slow plugin cannot stall the admin API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use weir_plugin::abi::{outcome, HostApi, Kind, RecordMeta, Status};
use weir_plugin::batch::{BatchBuf, BatchRef};

use crate::config::{stage_name, Acknowledge, BufferSpec, PipelineFile, RetrySpec, Role, Takes, WhenFull};
use crate::disklog::DiskLog;
use crate::error::HostError;
use crate::ffi::{self, AckGuard, CallError, ForeignOutput, Instance, Intake};
use crate::loader::{Plugin, Registry};
use crate::metrics::{Metrics, StageMetrics};
use crate::telemetry::{self, SpanSite};
use opentelemetry::trace::SpanContext;
use std::time::SystemTime;

mod ack;
mod buffer;
mod check;
mod current;
mod dead_letter;
mod declared;
mod intake;
mod queue;
mod report;
mod retry;
mod route;
mod sink;
mod stage;
mod transforms;

use ack::{Outcomes, Part, Refusal, Tracker};
use buffer::{open_disk_buffer, Buffer};
pub use check::check;
use current::Current;
use dead_letter::{DeadLetters, Letters};
use intake::{Envelope, QueueIntake};
use queue::{sink_queue, SinkInbox, SinkQueue};
use report::StageInfo;
pub use report::{StageReport, State};
use retry::{backoff, Jitter};
use sink::{run_sink, Downstream, SinkJob};
use stage::{poison, Health, Slot, Stage};
use transforms::{Heads, Order};

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
        // Each stage with its instances: one, or a sink's `workers`.
        let mut built: Vec<(Role, Vec<Stage>)> = Vec::new();
        let health = Arc::new(Health::default());
        let siblings = ffi::Siblings::default();
        for (role, spec) in file.stages() {
            let pointer = role.pointer();
            let plugin = registry.get(&spec.plugin, role.kind())?.clone();
            let name = stage_name(role, spec);
            let m = metrics.stage(&file.name, &name, &plugin.name);
            let retry = spec.retry.clone().unwrap_or_default();
            let disk = match spec.buffer.as_ref().and_then(|b| b.disk.as_ref()) {
                None => None,
                Some(dir) => Some(open_disk_buffer(file, &pointer, &base_dir.join(dir), spec.buffer.as_ref(), &name, &m)?),
            };
            let max_retry = retry.max_duration().map_err(|e| file.error_at(&format!("{pointer}/retry/max_duration"), e))?;
            let host =
                ffi::host_api(&file.name, file.redactor.clone(), &name, &plugin.name, &base_dir.to_string_lossy(), m.clone(), &siblings);
            let config = spec.config.to_string();
            let mut instance = match Instance::create(&plugin, &config, host) {
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
                after: spec.after.clone(),
            });
            let in_order = plugin.descriptor.flags & weir_plugin::abi::PLUGIN_IN_ORDER != 0;
            let declared = if matches!(role, Role::Transform(_)) { declared::Declared::of(&mut instance, &name) } else { None };
            let stage = Stage {
                name: name.into(),
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
                in_order,
                declared,
            };
            let mut instances = vec![stage];
            for _ in 1..spec.workers.map_or(1, |n| n.get()) {
                match instances[0].replica() {
                    Ok(replica) => instances.push(replica),
                    Err(e) => {
                        let stages: Vec<_> = infos.iter().map(|i: &StageInfo| i.metrics.clone()).collect();
                        metrics.remove(&stages);
                        return Err(file.error_at(
                            &format!("{pointer}/workers"),
                            file.redactor
                                .redact(&format!("plugin {} could not start another worker's instance: {e}", instances[0].plugin.name)),
                        ));
                    }
                }
            }
            built.push((role, instances));
        }
        let settings = &file.spec.settings;
        let abandon = Arc::new(AtomicBool::new(false));
        let mut iter = built.into_iter();
        let source = iter.next().and_then(|(_, mut s)| s.pop()).expect("a pipeline has a source");
        let mut transforms = Vec::new();
        let mut sinks = Vec::new();
        let mut dead_letter = None;
        for (role, mut instances) in iter {
            match role {
                Role::Transform(_) => transforms.extend(instances.pop()),
                Role::DeadLetter => dead_letter = Some(instances),
                Role::Source | Role::Sink(_) => sinks.push(instances),
            }
        }
        let mut threads = Vec::new();
        let dead_letters = match dead_letter {
            None => None,
            Some(instances) => {
                let (queue, inbox) = sink_queue(settings.sink_queue_batches.get(), &instances[0].metrics);
                let dl = DeadLetters { queue };
                spawn_sink(&mut threads, &file.name, instances, &inbox, &[], None, &abandon)?;
                Some(dl)
            }
        };
        let mut sink_txs = Vec::new();
        let follows: Vec<(Option<String>, Takes)> = file.sinks().map(|s| (s.after.clone(), s.takes)).collect();
        let whens: Vec<Option<&str>> = file.sinks().map(|s| s.when.as_deref()).collect();
        let (mut routed, mut followers) = (Vec::new(), Vec::new());
        let total_sinks = sinks.len();
        let queues: Vec<_> = sinks.iter().map(|s| sink_queue(settings.sink_queue_batches.get(), &s[0].metrics)).collect();
        let (txs, inboxes): (Vec<SinkQueue>, Vec<SinkInbox>) = queues.into_iter().unzip();
        let names: Vec<Arc<str>> = sinks.iter().map(|s| s[0].name.clone()).collect();
        for (i, (instances, rx)) in sinks.into_iter().zip(inboxes).enumerate() {
            let downstream: Vec<Downstream> = follows
                .iter()
                .zip(&txs)
                .filter(|((after, _), _)| after.as_deref() == Some(&*names[i]))
                .map(|((_, takes), queue)| Downstream { queue: queue.clone(), takes: *takes })
                .collect();
            if follows[i].0.is_none() {
                sink_txs.push((txs[i].clone(), instances[0].buffer.clone()));
                routed.push((names[i].clone(), whens[i]));
                followers.push(downstream.len());
            }
            spawn_sink(&mut threads, &file.name, instances, &rx, &downstream, dead_letters.as_ref(), &abandon)?;
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
            source: source.name.to_string(),
            source_plugin: source.plugin.name.clone(),
            total_sinks,
            ack_mode,
            dead_letters,
            abandon: abandon.clone(),
            sinks: sink_txs,
            followers,
            source_metrics,
            routes: route::Routes::new(&routed, settings.unrouted).map_err(|e| file.error_at("/sinks", e))?,
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
        let order = Order::new(rx, workers, chains.first().map_or(0, Vec::len));
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
                after: s.after.clone(),
                records_in: s.metrics.records_in.load(Relaxed),
                records_out: s.metrics.records_out.load(Relaxed),
                rejected: s.metrics.rejected.load(Relaxed),
                dropped: s.metrics.dropped.load(Relaxed),
                errors: s.metrics.errors.load(Relaxed),
                queue_depth: s.metrics.queue_depth.load(Relaxed).max(0),
                metrics: s.metrics.custom.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k.clone(), v.value)).collect(),
                health: s.metrics.health(),
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

    /// What each stage last reported of the external systems it depends on, by stage; only
    /// stages that report.
    pub fn dependency_health(&self) -> BTreeMap<String, BTreeMap<String, crate::metrics::DependencyHealth>> {
        self.stages.iter().map(|s| (s.name.clone(), s.metrics.health())).filter(|(_, h)| !h.is_empty()).collect()
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

    /// The source stage's name and plugin.
    pub fn source_stage(&self) -> Option<(&str, &str)> {
        self.stages.first().map(|s| (s.name.as_str(), s.plugin.as_str()))
    }

    /// Sends the running source a control request (ABI minor 6); `None` when the source
    /// has stopped or takes no control requests.
    pub fn control(&self, request: &serde_json::Value) -> Option<Result<serde_json::Value, ffi::CallError>> {
        let mut source = self.source.lock().unwrap_or_else(|p| p.into_inner());
        let source = source.as_mut().filter(|s| s.controls())?;
        Some(source.control(&request.to_string()).and_then(|answer| {
            serde_json::from_str(&answer).map_err(|e| ffi::CallError::host(format!("the source answered with text that is not JSON: {e}")))
        }))
    }

    /// The source's last measured lag (`{"total", "partitions": [{"topic", "partition",
    /// "lag"}]}`), without waiting: `None` while the source is busy with another request,
    /// or when it measures none.
    pub fn source_lag(&self) -> Option<serde_json::Value> {
        let mut source = self.source.try_lock().ok()?;
        let source = source.as_mut().filter(|s| s.controls())?;
        serde_json::from_str(&source.control(r#"{"op":"lag"}"#).ok()?).ok()
    }

    /// Offers `batch` to the pipeline as if its source had emitted it, retrying while the
    /// pipeline is full for up to `wait`; what became of each record comes back on the
    /// returned channel once every sink is done with it.
    pub fn inject(&self, batch: &BatchBuf, wait: Duration) -> Result<ffi::HostAck, String> {
        let intake = self.intake.as_ref().filter(|_| self.lifecycle().0 == State::Running).ok_or("the pipeline is not running")?;
        let deadline = Instant::now() + wait;
        loop {
            let (guard, ack) = AckGuard::to_host(batch.len());
            match intake.offer(batch.as_ref().to_owned(), guard) {
                Ok(()) => return Ok(ack),
                Err((Status::FULL, _)) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Err((Status::FULL, _)) => {
                    return Err(format!("the pipeline stayed full (or paused) for {} s; try again", wait.as_secs()));
                }
                Err(_) => return Err("the pipeline is stopping".into()),
            }
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

    /// Stage `name` (the source when `None`): its name and metrics (with its tap).
    pub fn stage(&self, name: Option<&str>) -> Option<(String, Arc<StageMetrics>)> {
        let stage = match name {
            None => self.stages.first(),
            Some(n) => self.stages.iter().find(|s| s.name == n),
        }?;
        Some((stage.name.clone(), stage.metrics.clone()))
    }

    /// The names of its stages, in order.
    pub fn stage_names(&self) -> Vec<String> {
        self.stages.iter().map(|s| s.name.clone()).collect()
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

/// Starts a thread per instance of a sink, all taking batches from `inbox`.
fn spawn_sink(
    threads: &mut Vec<JoinHandle<()>>,
    pipeline: &str,
    instances: Vec<Stage>,
    inbox: &SinkInbox,
    downstream: &[Downstream],
    dead_letters: Option<&DeadLetters>,
    abandon: &Arc<AtomicBool>,
) -> std::io::Result<()> {
    let several = instances.len() > 1;
    for (w, sink) in instances.into_iter().enumerate() {
        let name = if several { format!("weir-sink-{}-{w}", sink.name) } else { format!("weir-sink-{}", sink.name) };
        let (pipeline, inbox, downstream, dl, abandon) =
            (pipeline.to_owned(), inbox.clone(), downstream.to_vec(), dead_letters.cloned(), abandon.clone());
        threads.push(std::thread::Builder::new().name(name).spawn(move || run_sink(&pipeline, sink, inbox, downstream, dl, abandon))?);
    }
    Ok(())
}
