//! A mock host, so a plugin can be unit-tested without being built as a library and loaded.
//!
//! ```
//! use weir_plugin::mock::MockHost;
//! let host = MockHost::new();
//! let ctx = host.context();
//! ctx.counter_add("seen", "Records seen.", 2);
//! assert_eq!(host.metric("seen"), Some(2.0));
//! ```
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use crate::abi::{self, AckCallback, AckView, BatchView, EmitterApi, HostApi, OwnedBytes, Status, StrRef};
use crate::batch::{BatchBuf, BatchRef, Output, Rejections};
use crate::context::{Context, Emitter, Level, Outcome};
use crate::error::PluginError;
use crate::export::{self, Erased};
use crate::plugin::{Settled, Sink, Source, Transform};

#[derive(Default)]
struct State {
    logs: Vec<(Level, String)>,
    errors: Vec<String>,
    metrics: HashMap<String, f64>,
    health: std::collections::BTreeMap<String, serde_json::Value>,
}

/// Records what a plugin tells its host.
#[derive(Clone)]
pub struct MockHost {
    state: Arc<Mutex<State>>,
    base_dir: &'static str,
    pipeline: &'static str,
}

impl Default for MockHost {
    fn default() -> Self {
        Self::new()
    }
}

fn state<'a>(ctx: *const c_void) -> &'a Mutex<State> {
    // SAFETY: ctx is the leaked `Arc<Mutex<State>>` pointer made in `context`.
    unsafe { &*ctx.cast::<Mutex<State>>() }
}

unsafe extern "C" fn log(ctx: *const c_void, level: u32, message: StrRef) {
    let level = match level {
        abi::level::ERROR => Level::Error,
        abi::level::WARN => Level::Warn,
        abi::level::INFO => Level::Info,
        _ => Level::Debug,
    };
    state(ctx).lock().unwrap().logs.push((level, message.as_str().to_owned()));
}

unsafe extern "C" fn metric(ctx: *const c_void, kind: u32, name: StrRef, _help: StrRef, value: f64) {
    let mut s = state(ctx).lock().unwrap();
    let slot = s.metrics.entry(name.as_str().to_owned()).or_insert(0.0);
    if kind == abi::metric::COUNTER_ADD {
        *slot += value;
    } else {
        *slot = value;
    }
}

unsafe extern "C" fn error(ctx: *const c_void, message: StrRef) {
    state(ctx).lock().unwrap().errors.push(message.as_str().to_owned());
}

unsafe extern "C" fn listen(_ctx: *const c_void, address: StrRef, fd: *mut i32, message: *mut OwnedBytes) -> Status {
    match std::net::TcpListener::bind(address.as_str()) {
        Ok(l) => {
            use std::os::fd::IntoRawFd;
            *fd = l.into_raw_fd();
            Status::OK
        }
        Err(e) => {
            *message = abi::owned_bytes(e.to_string().into_bytes());
            Status::FATAL
        }
    }
}

unsafe extern "C" fn report_health(ctx: *const c_void, dependency: StrRef, target: StrRef, up: u32, message: StrRef) {
    let entry = serde_json::json!({"up": up != 0, "target": target.as_str(), "message": Some(message.as_str()).filter(|m| !m.is_empty())});
    state(ctx).lock().unwrap().health.insert(dependency.as_str().to_owned(), entry);
}

unsafe extern "C" fn pipeline_health(ctx: *const c_void, out: *mut OwnedBytes) -> Status {
    let health = state(ctx).lock().unwrap().health.clone();
    *out = abi::owned_bytes(serde_json::json!({ "stage": health }).to_string().into_bytes());
    Status::OK
}

impl MockHost {
    /// A host whose pipeline directory is the current directory.
    pub fn new() -> Self {
        MockHost { state: Arc::default(), base_dir: ".", pipeline: "test" }
    }

    /// A host whose contexts name pipeline `name` (state a plugin keeps per pipeline and
    /// stage is then apart from other tests').
    pub fn for_pipeline(name: &str) -> Self {
        MockHost { pipeline: Box::leak(name.to_owned().into_boxed_str()), ..Self::new() }
    }

    /// A host whose pipeline directory is `dir` (relative config paths resolve there).
    pub fn with_base_dir(dir: &str) -> Self {
        MockHost { base_dir: Box::leak(dir.to_owned().into_boxed_str()), ..Self::new() }
    }

    /// A context for pipeline `test` (or the one given to [`MockHost::for_pipeline`]), stage `stage`.
    pub fn context(&self) -> Context {
        let ctx = Arc::into_raw(self.state.clone()).cast::<c_void>();
        let api = HostApi {
            struct_size: std::mem::size_of::<HostApi>() as u32,
            ctx,
            log,
            metric,
            error,
            listen,
            pipeline: StrRef::new(self.pipeline),
            stage: StrRef::new("stage"),
            base_dir: StrRef::new(self.base_dir),
            listen_routes: None,
            report_health: Some(report_health),
            pipeline_health: Some(pipeline_health),
        };
        // SAFETY: every pointer above lives for the life of the process (the state Arc is leaked).
        unsafe { Context::from_api(api) }
    }

    /// Log lines so far.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.state.lock().unwrap().logs.clone()
    }

    /// Errors reported so far.
    pub fn errors(&self) -> Vec<String> {
        self.state.lock().unwrap().errors.clone()
    }

    /// The last health report for `dependency` (`{"up", "target", "message"}`), from any stage.
    pub fn health(&self, dependency: &str) -> Option<serde_json::Value> {
        self.state.lock().unwrap().health.get(dependency).cloned()
    }

    /// A metric's current value.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.state.lock().unwrap().metrics.get(name).copied()
    }

    /// Builds a plugin of any kind from a JSON config, as the host would: the config is
    /// refused as the host refuses it (unknown fields, wrong types), then checked, then built.
    fn build<E: Erased>(&self, config: serde_json::Value) -> Result<E, PluginError> {
        let config: E::Config = serde_json::from_value(config).map_err(|e| PluginError::config(e.to_string()))?;
        E::check(&config)?;
        E::build(config, self.context())
    }

    /// Builds a transform from a JSON config, as the host would.
    pub fn transform<T: Transform>(&self, config: serde_json::Value) -> Result<T, PluginError> {
        self.build::<export::Transform<T>>(config).map(|t| t.0)
    }

    /// Builds a sink from a JSON config, as the host would.
    pub fn sink<S: Sink>(&self, config: serde_json::Value) -> Result<S, PluginError> {
        self.build::<export::Sink<S>>(config).map(|s| s.0)
    }

    /// Builds a source from a JSON config, as the host would (start it with
    /// [`run_source`]).
    pub fn source<S: Source>(&self, config: serde_json::Value) -> Result<S, PluginError> {
        self.build::<export::Source<S>>(config).map(|s| s.0)
    }
}

/// Writes one batch to a sink as the host would; returns the records it refused.
pub fn run_sink<S: Sink>(s: &mut S, batch: &BatchBuf) -> Result<Rejections, PluginError> {
    let mut rejections = Rejections::new();
    s.write(&batch.as_ref(), &mut rejections)?;
    Ok(rejections)
}

/// Starts a source with a [`mock_emitter`] (accepting every batch, or with `full` refusing
/// them with backpressure); what it emits collects in the returned [`Emitted`].
pub fn run_source<S: Source>(s: &mut S, full: bool) -> Result<Emitted, PluginError> {
    let (emitter, emitted) = mock_emitter(full);
    s.start(emitter)?;
    Ok(emitted)
}

/// Runs one batch through a transform and returns its output (numbered, as the host's
/// calls are: see [`Output::sequence`]).
pub fn run_transform<T: Transform>(t: &mut T, input: &BatchBuf) -> Result<Output, PluginError> {
    let mut out = Output { sequence: Output::next_sequence(), ..Output::default() };
    t.process(&input.as_ref(), &mut out)?;
    // As the host sees it: records passed on unchanged are the input's.
    out.materialize(&input.as_ref());
    Ok(out)
}

/// What the host tells a transform once the batch `out` (made from `input` by
/// [`run_transform`]) settled: each record the transform passed on gets `passed` (for
/// example `Outcome::Accepted` when every sink delivered it, `Outcome::Failed` when a sink
/// gave up), each record it rejected `Rejected`, each it dropped `Dropped`.
pub fn settled(input: &BatchBuf, out: &Output, passed: Outcome) -> Settled {
    let mut outcomes = vec![Outcome::Dropped; input.len()];
    for &o in out.batch.origins() {
        outcomes[o as usize] = passed.clone();
    }
    for (i, why) in out.rejections.iter() {
        outcomes[i] = Outcome::Rejected(why.to_owned());
    }
    Settled { batch: out.sequence, outcomes }
}

/// Acknowledges `out` to the transform as the host would once it settled (see [`settled`]).
pub fn acknowledge<T: Transform>(t: &mut T, input: &BatchBuf, out: &Output, passed: Outcome) -> Result<(), PluginError> {
    t.acknowledge(&[settled(input, out, passed)])
}

/// Builds a batch of JSON values (no keys, no headers).
pub fn json_batch<'a>(values: impl IntoIterator<Item = &'a str>) -> BatchBuf {
    let mut b = BatchBuf::new();
    for (i, v) in values.into_iter().enumerate() {
        b.push(i as u32, Default::default(), v.as_bytes());
    }
    b
}

type Collected = Arc<Mutex<Vec<BatchBuf>>>;

struct EmitterState {
    batches: Collected,
    full: bool,
    finished: Arc<std::sync::atomic::AtomicBool>,
}

unsafe extern "C" fn mock_finish(ctx: *const c_void) {
    let s = &*ctx.cast::<EmitterState>();
    s.finished.store(true, std::sync::atomic::Ordering::SeqCst);
}

unsafe extern "C" fn mock_emit(ctx: *const c_void, batch: *const BatchView, ack: AckCallback) -> Status {
    let s = &*ctx.cast::<EmitterState>();
    if s.full {
        return Status::FULL;
    }
    let Ok(view) = BatchRef::from_view(&*batch) else {
        return Status::INVALID_ARGUMENT;
    };
    let mut copy = BatchBuf::new();
    copy.extend_from(&view);
    let n = copy.len();
    s.batches.lock().unwrap().push(copy);
    let codes = vec![abi::outcome::ACCEPTED; n];
    let reasons = vec![StrRef::EMPTY; n];
    let view =
        AckView { struct_size: std::mem::size_of::<AckView>() as u32, count: n as u32, codes: codes.as_ptr(), reasons: reasons.as_ptr() };
    if let Some(call) = ack.call {
        call(ack.ctx, &view);
    }
    Status::OK
}

/// What a [`mock_emitter`] saw.
#[derive(Clone, Default)]
pub struct Emitted {
    /// Every batch emitted, in order.
    pub batches: Collected,
    /// Whether the source said it finished.
    pub finished: Arc<std::sync::atomic::AtomicBool>,
}

impl Emitted {
    /// The values of every record emitted so far, in order.
    pub fn values(&self) -> Vec<Vec<u8>> {
        let batches = self.batches.lock().unwrap();
        batches.iter().flat_map(|b| b.as_ref().iter().map(|r| r.value.to_vec()).collect::<Vec<_>>()).collect()
    }

    /// Whether the source called `finish`.
    pub fn is_finished(&self) -> bool {
        self.finished.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// An emitter that keeps every batch and acknowledges it at once as accepted, or, when
/// made with `full`, refuses every batch with backpressure.
pub fn mock_emitter(full: bool) -> (Emitter, Emitted) {
    let emitted = Emitted::default();
    let state = Box::leak(Box::new(EmitterState { batches: emitted.batches.clone(), full, finished: emitted.finished.clone() }));
    let api = EmitterApi {
        struct_size: std::mem::size_of::<EmitterApi>() as u32,
        ctx: (state as *const EmitterState).cast(),
        emit: mock_emit,
        finish: mock_finish,
    };
    // SAFETY: the state is leaked and so lives for the life of the process.
    (unsafe { Emitter::from_api(api) }, emitted)
}
