//! The host's side of the plugin boundary: the callbacks it hands to plugins, plugin
//! instances wrapped as safe handles, and outputs released when dropped.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::c_void;
use std::net::TcpListener;
use std::sync::{Arc, Mutex, OnceLock};

use weir_plugin::abi::{
    self, AckCallback, AckView, BatchView, EmitterApi, HostApi, Manifest, OwnedBytes, PluginDescriptor, Settled, StageOutput, Status,
    StrRef,
};
use weir_plugin::batch::{iter_rejections, BatchBuf, BatchError, BatchRef};

use crate::loader::Plugin;
use crate::metrics::StageMetrics;

/// Listening sockets the host owns, by address. Plugins get duplicates, so a socket
/// outlives the pipeline that first asked for it.
fn listeners() -> &'static Mutex<HashMap<String, TcpListener>> {
    static L: OnceLock<Mutex<HashMap<String, TcpListener>>> = OnceLock::new();
    L.get_or_init(Default::default)
}

/// What the host knows of a stage, behind the `ctx` pointer of its [`HostApi`].
/// Leaked on purpose: a plugin's background threads may call back at any time.
pub struct HostCtx {
    pipeline: String,
    stage: String,
    plugin: String,
    base_dir: String,
    metrics: Arc<StageMetrics>,
    /// Every stage of the same pipeline version, this one included (for `pipeline_health`).
    siblings: Siblings,
    /// The pipeline file's secrets, masked in what the plugin logs.
    redactor: crate::config::Redactor,
}

/// The stages of one pipeline version, as they are created.
pub type Siblings = Arc<Mutex<Vec<Arc<StageMetrics>>>>;

fn host_ctx<'a>(ctx: *const c_void) -> &'a HostCtx {
    // SAFETY: every HostApi the host hands out points at a leaked HostCtx.
    unsafe { &*ctx.cast::<HostCtx>() }
}

unsafe extern "C" fn cb_log(ctx: *const c_void, level: u32, message: StrRef) {
    let c = host_ctx(ctx);
    let msg = c.redactor.redact(message.as_str());
    let (p, s, pl) = (&c.pipeline, &c.stage, &c.plugin);
    match level {
        abi::level::ERROR => tracing::error!(pipeline = %p, stage = %s, plugin = %pl, "{msg}"),
        abi::level::WARN => tracing::warn!(pipeline = %p, stage = %s, plugin = %pl, "{msg}"),
        abi::level::INFO => tracing::info!(pipeline = %p, stage = %s, plugin = %pl, "{msg}"),
        abi::level::DEBUG => tracing::debug!(pipeline = %p, stage = %s, plugin = %pl, "{msg}"),
        _ => tracing::trace!(pipeline = %p, stage = %s, plugin = %pl, "{msg}"),
    }
}

unsafe extern "C" fn cb_metric(ctx: *const c_void, kind: u32, name: StrRef, help: StrRef, value: f64) {
    let c = host_ctx(ctx);
    c.metrics.custom(name.as_str(), help.as_str(), kind == abi::metric::COUNTER_ADD, value);
}

unsafe extern "C" fn cb_error(ctx: *const c_void, message: StrRef) {
    let c = host_ctx(ctx);
    c.metrics.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::error!(pipeline = %c.pipeline, stage = %c.stage, plugin = %c.plugin, "{}", c.redactor.redact(message.as_str()));
}

unsafe extern "C" fn cb_listen(ctx: *const c_void, address: StrRef, fd: *mut i32, message: *mut OwnedBytes) -> Status {
    let c = host_ctx(ctx);
    let addr = address.as_str().to_owned();
    let result = if crate::routes::is_shared(&addr) {
        Err(std::io::Error::other(format!(
            "{addr} is shared by stages that serve paths on it, and this plugin takes a whole address; give it another address (or a plugin built for ABI 1.2 or later)"
        )))
    } else {
        owned_listener(&addr).inspect(|_| {
            plain_listeners().lock().unwrap_or_else(|p| p.into_inner()).insert(addr.clone());
        })
    };
    match result {
        Ok(l) => {
            use std::os::fd::IntoRawFd;
            tracing::debug!(pipeline = %c.pipeline, stage = %c.stage, address = %addr, "Handed a listening socket to the stage.");
            *fd = l.into_raw_fd();
            Status::OK
        }
        Err(e) => {
            if !message.is_null() {
                *message = abi::owned_bytes(e.to_string().into_bytes());
            }
            Status::FATAL
        }
    }
}

/// A duplicate of the host's listening socket on `addr`, bound on first use.
fn owned_listener(addr: &str) -> std::io::Result<TcpListener> {
    let mut map = listeners().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(l) = map.get(addr) {
        return l.try_clone();
    }
    let l = TcpListener::bind(addr)?;
    let dup = l.try_clone()?;
    map.insert(addr.to_owned(), l);
    Ok(dup)
}

/// Addresses handed whole to a stage (`listen`), which cannot be shared by routes.
fn plain_listeners() -> &'static Mutex<std::collections::HashSet<String>> {
    static P: OnceLock<Mutex<std::collections::HashSet<String>>> = OnceLock::new();
    P.get_or_init(Default::default)
}

unsafe extern "C" fn cb_listen_routes(
    ctx: *const c_void,
    address: StrRef,
    routes: StrRef,
    fd: *mut i32,
    message: *mut OwnedBytes,
) -> Status {
    let c = host_ctx(ctx);
    let addr = address.as_str().to_owned();
    let routes: Vec<String> = routes.as_str().lines().map(str::trim).filter(|r| !r.is_empty()).map(str::to_owned).collect();
    let result = if plain_listeners().lock().unwrap_or_else(|p| p.into_inner()).contains(&addr) {
        Err(format!("{addr} is taken whole by a stage (a plugin built for ABI 1.0 or 1.1); give one of them another address"))
    } else {
        owned_listener(&addr).map_err(|e| e.to_string()).and_then(|l| crate::routes::register(&addr, l, &c.pipeline, &c.stage, routes))
    };
    match result {
        Ok(sock) => {
            use std::os::fd::IntoRawFd;
            *fd = sock.into_raw_fd();
            Status::OK
        }
        Err(e) => {
            if !message.is_null() {
                *message = abi::owned_bytes(e.into_bytes());
            }
            Status::FATAL
        }
    }
}

unsafe extern "C" fn cb_report_health(ctx: *const c_void, dependency: StrRef, target: StrRef, up: u32, message: StrRef) {
    let c = host_ctx(ctx);
    c.metrics.report_health(dependency.as_str(), target.as_str(), up != 0, message.as_str());
}

unsafe extern "C" fn cb_pipeline_health(ctx: *const c_void, out: *mut OwnedBytes) -> Status {
    let c = host_ctx(ctx);
    let stages = c.siblings.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let health: serde_json::Map<String, serde_json::Value> =
        stages.iter().map(|s| (s.stage_name().to_owned(), serde_json::to_value(s.health()).unwrap_or_default())).collect();
    if !out.is_null() {
        *out = abi::owned_bytes(serde_json::Value::Object(health).to_string().into_bytes());
    }
    Status::OK
}

fn leak_str(s: &str) -> StrRef {
    StrRef::new(Box::leak(s.to_owned().into_boxed_str()))
}

/// Builds the callbacks for one stage. They live for the life of the process.
/// `siblings`: the pipeline version's stages so far, which this one joins.
pub fn host_api(
    pipeline: &str,
    redactor: crate::config::Redactor,
    stage: &str,
    plugin: &str,
    base_dir: &str,
    metrics: Arc<StageMetrics>,
    siblings: &Siblings,
) -> &'static HostApi {
    siblings.lock().unwrap_or_else(|p| p.into_inner()).push(metrics.clone());
    let ctx: &'static HostCtx = Box::leak(Box::new(HostCtx {
        pipeline: pipeline.to_owned(),
        stage: stage.to_owned(),
        plugin: plugin.to_owned(),
        base_dir: base_dir.to_owned(),
        metrics,
        siblings: siblings.clone(),
        redactor,
    }));
    Box::leak(Box::new(HostApi {
        struct_size: std::mem::size_of::<HostApi>() as u32,
        ctx: (ctx as *const HostCtx).cast(),
        log: cb_log,
        metric: cb_metric,
        error: cb_error,
        listen: cb_listen,
        pipeline: leak_str(&ctx.pipeline),
        stage: leak_str(&ctx.stage),
        base_dir: leak_str(&ctx.base_dir),
        listen_routes: Some(cb_listen_routes),
        report_health: Some(cb_report_health),
        pipeline_health: Some(cb_pipeline_health),
    }))
}

/// The descriptors of a manifest, read at the library's own descriptor size (the first
/// descriptor's `struct_size`): a library of an older minor has shorter descriptors, whose
/// missing (optional) functions read as absent.
pub fn descriptors(manifest: &'static Manifest) -> Result<Vec<&'static PluginDescriptor>, crate::loader::LoadProblem> {
    if manifest.plugin_count == 0 || manifest.plugins.is_null() {
        return Ok(Vec::new());
    }
    let base = manifest.plugins.cast::<u8>();
    // SAFETY: per ABI.md, `plugins` points to `plugin_count` static descriptors, each
    // starting with its `struct_size`.
    let stride = unsafe { base.cast::<u32>().read() } as usize;
    if stride < PluginDescriptor::MINOR_0_SIZE || stride % std::mem::align_of::<PluginDescriptor>() != 0 {
        return Err(crate::loader::LoadProblem::ShortDescriptors { stride, needed: PluginDescriptor::MINOR_0_SIZE });
    }
    let full = std::mem::size_of::<PluginDescriptor>();
    Ok((0..manifest.plugin_count as usize)
        .map(|i| {
            // SAFETY: descriptor `i` lies at `i * stride` and is `stride` bytes long.
            let at = unsafe { base.add(i * stride) };
            if stride >= full {
                // SAFETY: as above; a longer descriptor starts with every field this host knows.
                unsafe { &*at.cast::<PluginDescriptor>() }
            } else {
                // A shorter one is copied over zeroes: the fields it lacks are `None`.
                let mut copy = std::mem::MaybeUninit::<PluginDescriptor>::zeroed();
                // SAFETY: `stride` bytes are readable at `at`; every field past them is an
                // `Option` of a function pointer, for which zero is `None`, or `flags`, for
                // which zero is none.
                let copy = unsafe {
                    std::ptr::copy_nonoverlapping(at, copy.as_mut_ptr().cast::<u8>(), stride);
                    copy.assume_init()
                };
                &*Box::leak(Box::new(copy))
            }
        })
        .collect())
}

/// A failed call into a plugin.
#[derive(Debug, Clone)]
pub struct CallError {
    /// The status it returned.
    pub status: Status,
    /// What it said.
    pub message: String,
    /// For `RETRY`: the plugin's hint, in milliseconds.
    pub retry_after_ms: u64,
    /// The host found it (the plugin returned no such status): shown without a status.
    pub by_host: bool,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.by_host {
            f.write_str(&self.message)
        } else if self.message.is_empty() {
            write!(f, "{}", self.status.name())
        } else {
            write!(f, "{} ({})", self.message, self.status.name())
        }
    }
}

impl CallError {
    /// A failure the host finds in a call (the stage could not be re-created, its output
    /// is malformed): the instance is not poisoned by it.
    pub fn host(message: String) -> CallError {
        CallError { status: Status::FATAL, message, retry_after_ms: 0, by_host: true }
    }

    /// Whether the instance can take no more calls (it panicked).
    pub fn poisoned(&self) -> bool {
        matches!(self.status, Status::PANICKED | Status::POISONED)
    }
}

/// A live plugin instance. Calls on one handle are never concurrent (it is `!Sync`).
pub struct Instance {
    plugin: Plugin,
    ptr: *mut c_void,
}

// SAFETY: per ABI.md an instance may be called from any thread, one call at a time;
// `&mut self` on every call ensures that.
unsafe impl Send for Instance {}

fn finish(status: Status, message: &mut OwnedBytes) -> Result<(), CallError> {
    // SAFETY: filled by the plugin or empty.
    let text = unsafe { abi::take_owned_string(message) };
    if status == Status::OK {
        Ok(())
    } else {
        Err(CallError { status, message: text, retry_after_ms: 0, by_host: false })
    }
}

impl Instance {
    /// Creates an instance from a JSON config.
    pub fn create(plugin: &Plugin, config_json: &str, host: &'static HostApi) -> Result<Self, CallError> {
        let mut ptr: *mut c_void = std::ptr::null_mut();
        let mut message = OwnedBytes::EMPTY;
        // SAFETY: per ABI.md; `host` lives for the life of the process.
        let status = unsafe { (plugin.descriptor.create)(StrRef::new(config_json), host, &mut ptr, &mut message) };
        finish(status, &mut message)?;
        if ptr.is_null() {
            return Err(CallError {
                status: Status::INVALID_ARGUMENT,
                message: "create returned no instance".into(),
                retry_after_ms: 0,
                by_host: false,
            });
        }
        Ok(Instance { plugin: plugin.clone(), ptr })
    }

    /// The plugin this is an instance of.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// Starts a source.
    pub fn start(&mut self, emitter: EmitterApi) -> Result<(), CallError> {
        let Some(start) = self.plugin.descriptor.start else { return Ok(()) };
        let mut message = OwnedBytes::EMPTY;
        // SAFETY: per ABI.md.
        let status = unsafe { start(self.ptr, emitter, &mut message) };
        finish(status, &mut message)
    }

    /// Stops a source or sink.
    pub fn stop(&mut self) -> Result<(), CallError> {
        let Some(stop) = self.plugin.descriptor.stop else { return Ok(()) };
        let mut message = OwnedBytes::EMPTY;
        // SAFETY: per ABI.md.
        let status = unsafe { stop(self.ptr, &mut message) };
        finish(status, &mut message)
    }

    /// Whether the instance (a source of ABI minor 6 or later) takes control requests.
    pub fn controls(&self) -> bool {
        self.plugin.descriptor.control.is_some()
    }

    /// Sends a source a control request (JSON); its JSON answer.
    pub fn control(&mut self, request: &str) -> Result<String, CallError> {
        let Some(control) = self.plugin.descriptor.control else {
            return Err(CallError {
                status: Status::INVALID_ARGUMENT,
                message: format!("the {} plugin takes no control requests", self.plugin.name),
                retry_after_ms: 0,
                by_host: true,
            });
        };
        let (mut response, mut message) = (OwnedBytes::EMPTY, OwnedBytes::EMPTY);
        // SAFETY: per ABI.md; `request` lives for the call.
        let status = unsafe { control(self.ptr, StrRef::new(request), &mut response, &mut message) };
        // SAFETY: filled by the plugin or empty.
        let answer = unsafe { abi::take_owned_string(&mut response) };
        finish(status, &mut message).map(|()| answer)
    }

    /// The condition a transform's instance (ABI minor 7 or later) declares its whole work
    /// to be, as JSON; `None` when it declares none.
    pub fn condition(&mut self) -> Result<Option<String>, CallError> {
        let Some(condition) = self.plugin.descriptor.condition else { return Ok(None) };
        let (mut declared, mut message) = (OwnedBytes::EMPTY, OwnedBytes::EMPTY);
        // SAFETY: per ABI.md.
        let status = unsafe { condition(self.ptr, &mut declared, &mut message) };
        // SAFETY: filled by the plugin or empty.
        let declared = unsafe { abi::take_owned_string(&mut declared) };
        finish(status, &mut message).map(|()| (!declared.is_empty()).then_some(declared))
    }

    /// Whether the instance wants to hear what became of the batches it processed.
    pub fn acknowledges(&self) -> bool {
        self.plugin.descriptor.acknowledge.is_some()
    }

    /// Tells a transform what became of batches it processed: `(sequence, codes, reasons)`
    /// per batch, one code and reason per input record.
    pub fn acknowledge(&mut self, settled: &[(u64, Vec<u8>, Vec<String>)]) -> Result<(), CallError> {
        let Some(acknowledge) = self.plugin.descriptor.acknowledge else { return Ok(()) };
        let refs: Vec<Vec<StrRef>> = settled.iter().map(|(_, _, reasons)| reasons.iter().map(|r| StrRef::new(r)).collect()).collect();
        let views: Vec<Settled> = settled
            .iter()
            .zip(&refs)
            .map(|((sequence, codes, _), reasons)| Settled {
                sequence: *sequence,
                count: codes.len() as u32,
                codes: codes.as_ptr(),
                reasons: reasons.as_ptr(),
            })
            .collect();
        let mut message = OwnedBytes::EMPTY;
        // SAFETY: per ABI.md; `views` and what they point to live for the call.
        let status = unsafe { acknowledge(self.ptr, views.as_ptr(), views.len() as u32, &mut message) };
        finish(status, &mut message)
    }

    /// Runs a transform or sink on a batch.
    pub fn process(&mut self, batch: &BatchRef<'_>) -> Result<ForeignOutput, CallError> {
        let Some(process) = self.plugin.descriptor.process else {
            return Err(CallError {
                status: Status::INVALID_ARGUMENT,
                message: "not a transform or sink".into(),
                retry_after_ms: 0,
                by_host: false,
            });
        };
        let view = batch.view();
        let mut out = StageOutput::empty();
        let mut message = OwnedBytes::EMPTY;
        // SAFETY: per ABI.md; `view` borrows `batch` for the call.
        let status = unsafe { process(self.ptr, &view, &mut out, &mut message) };
        let out = ForeignOutput { raw: out, input_len: batch.len() };
        finish(status, &mut message).map_err(|mut e| {
            e.retry_after_ms = out.raw.retry_after_ms;
            e
        })?;
        Ok(out)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: per ABI.md, destroy is called once, after every other call returned.
        unsafe { (self.plugin.descriptor.destroy)(self.ptr) }
    }
}

/// A plugin's output, released when dropped.
pub struct ForeignOutput {
    raw: StageOutput,
    input_len: usize,
}

// SAFETY: per ABI.md the output is immutable once returned and `release` may be called
// from any thread.
unsafe impl Send for ForeignOutput {}
unsafe impl Sync for ForeignOutput {}

impl ForeignOutput {
    /// The output batch, checked.
    pub fn batch(&self) -> Result<BatchRef<'_>, BatchError> {
        // SAFETY: the plugin keeps the memory until `release`, which runs on drop.
        unsafe { BatchRef::from_view(&self.raw.batch) }
    }

    /// The output batch without checking it again: for an output whose [`ForeignOutput::batch`]
    /// was accepted (the pipeline checks each output once, then reads it at every stage).
    pub fn checked_batch(&self) -> BatchRef<'_> {
        // SAFETY: as in `batch`; the memory is unchanged since it was checked.
        unsafe { BatchRef::from_view_checked(&self.raw.batch) }.unwrap_or(BatchRef::EMPTY)
    }

    /// For each output record, the input record it came from; checked against the input.
    pub fn origins(&self) -> Result<&[u32], String> {
        let n = self.raw.batch.count as usize;
        if n == 0 {
            return Ok(&[]);
        }
        if self.raw.origins.is_null() {
            return Err("output records have no origins".into());
        }
        // SAFETY: per ABI.md, `origins` has `batch.count` entries.
        let origins = unsafe { std::slice::from_raw_parts(self.raw.origins, n) };
        match origins.iter().find(|o| **o as usize >= self.input_len) {
            Some(bad) => Err(format!("an output record names input record {bad}, but the input had {}", self.input_len)),
            None => Ok(origins),
        }
    }

    /// Whether the output records are input records passed on unchanged (ABI minor 3):
    /// then only [`ForeignOutput::origins`] is read, never the output batch.
    pub fn kept(&self) -> bool {
        StageOutput::has_flags(self.raw.struct_size) && self.raw.flags & abi::OUTPUT_KEPT != 0
    }

    /// The transform's number for the batch (ABI minor 1), to name it in `acknowledge`.
    pub fn sequence(&self) -> Option<u64> {
        StageOutput::has_sequence(self.raw.struct_size).then_some(self.raw.sequence)
    }

    /// Refused input records as `(index, reason)`; out-of-range indexes are skipped.
    pub fn rejections(&self) -> Vec<(usize, String)> {
        if self.raw.rejection_count == 0 || self.raw.rejections.is_null() {
            return Vec::new();
        }
        // SAFETY: per ABI.md.
        let items = unsafe { std::slice::from_raw_parts(self.raw.rejections, self.raw.rejection_count as usize) };
        let text = if self.raw.text.is_null() { &[][..] } else { unsafe { std::slice::from_raw_parts(self.raw.text, self.raw.text_len) } };
        iter_rejections(items, text).filter(|(i, _)| *i < self.input_len).map(|(i, r)| (i, r.to_owned())).collect()
    }
}

impl Drop for ForeignOutput {
    fn drop(&mut self) {
        if let Some(release) = self.raw.release.take() {
            // SAFETY: released exactly once.
            unsafe { release(self.raw.private) }
        }
    }
}

/// The acknowledgement owed to a source for one batch. Dropping it unsent acknowledges
/// every record as failed, so a source is never left waiting.
pub struct AckGuard {
    cb: Option<AckCallback>,
    count: usize,
}

// SAFETY: per ABI.md the callback may be called from any thread.
unsafe impl Send for AckGuard {}

impl AckGuard {
    /// Sends the acknowledgement: one code per record and a reason per record.
    pub fn send(mut self, codes: &[u8], reasons: &[String]) {
        self.fire(codes, reasons);
    }

    /// Forgets the callback without calling it (the emit was refused).
    fn disarm(mut self) {
        self.cb = None;
    }

    fn fire(&mut self, codes: &[u8], reasons: &[String]) {
        let Some(cb) = self.cb.take() else { return };
        let Some(call) = cb.call else { return };
        let refs: Vec<StrRef> = reasons.iter().map(|r| StrRef::new(r)).collect();
        let view = AckView {
            struct_size: std::mem::size_of::<AckView>() as u32,
            count: codes.len() as u32,
            codes: codes.as_ptr(),
            reasons: refs.as_ptr(),
        };
        // SAFETY: per ABI.md; called exactly once.
        unsafe { call(cb.ctx, &view) }
    }
}

/// What the host hears of a batch it offered a pipeline itself: a code and a reason per record.
pub type HostAck = std::sync::mpsc::Receiver<(Vec<u8>, Vec<String>)>;

impl AckGuard {
    /// An acknowledgement that comes back to the host (for records it offers a pipeline
    /// itself, as a replay does).
    pub fn to_host(count: usize) -> (AckGuard, HostAck) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let ctx: *mut c_void = Box::into_raw(Box::new(tx)).cast();
        (AckGuard { cb: Some(AckCallback { ctx, call: Some(host_ack) }), count }, rx)
    }
}

unsafe extern "C" fn host_ack(ctx: *mut c_void, ack: *const AckView) {
    // SAFETY: `ctx` is the sender `AckGuard::to_host` boxed; called once.
    let tx = unsafe { Box::from_raw(ctx.cast::<std::sync::mpsc::SyncSender<(Vec<u8>, Vec<String>)>>()) };
    // SAFETY: per ABI.md the view and what it points to live for the call.
    let view = unsafe { &*ack };
    let n = view.count as usize;
    let codes = if n == 0 { Vec::new() } else { unsafe { std::slice::from_raw_parts(view.codes, n) }.to_vec() };
    let reasons = if n == 0 {
        Vec::new()
    } else {
        unsafe { std::slice::from_raw_parts(view.reasons, n) }.iter().map(|r| r.as_str().to_owned()).collect()
    };
    let _ = tx.send((codes, reasons));
}

impl Drop for AckGuard {
    fn drop(&mut self) {
        if self.cb.is_some() {
            let codes = vec![abi::outcome::FAILED; self.count];
            let reasons = vec!["the pipeline stopped before the batch was processed".to_owned(); self.count];
            self.fire(&codes, &reasons);
        }
    }
}

/// Where a source's batches go.
pub trait Intake: Send + Sync + 'static {
    /// Takes the batch, or refuses it with `FULL` or `CLOSED` and returns the guard.
    fn offer(&self, batch: BatchBuf, ack: AckGuard) -> Result<(), (Status, AckGuard)>;
    /// The source will emit no more.
    fn finish(&self);
}

struct EmitterCtx {
    intake: Arc<dyn Intake>,
}

unsafe extern "C" fn cb_emit(ctx: *const c_void, batch: *const BatchView, ack: AckCallback) -> Status {
    if ctx.is_null() || batch.is_null() {
        return Status::INVALID_ARGUMENT;
    }
    let c = &*ctx.cast::<EmitterCtx>();
    let Ok(view) = BatchRef::from_view(&*batch) else {
        return Status::INVALID_ARGUMENT;
    };
    let guard = AckGuard { cb: Some(ack), count: view.len() };
    match c.intake.offer(view.to_owned(), guard) {
        Ok(()) => Status::OK,
        Err((status, guard)) => {
            guard.disarm();
            status
        }
    }
}

unsafe extern "C" fn cb_finish(ctx: *const c_void) {
    if !ctx.is_null() {
        (*ctx.cast::<EmitterCtx>()).intake.finish();
    }
}

/// Builds the emitter for a source; it lives for the life of the process.
pub fn emitter(intake: Arc<dyn Intake>) -> EmitterApi {
    let ctx: &'static EmitterCtx = Box::leak(Box::new(EmitterCtx { intake }));
    EmitterApi {
        struct_size: std::mem::size_of::<EmitterApi>() as u32,
        ctx: (ctx as *const EmitterCtx).cast(),
        emit: cb_emit,
        finish: cb_finish,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_the_host_finds_read_without_a_status() {
        assert_eq!(CallError::host("bad output: x".into()).to_string(), "bad output: x");
        let plugin = CallError { status: Status::FATAL, message: "boom".into(), retry_after_ms: 0, by_host: false };
        assert_eq!(plugin.to_string(), "boom (fatal)");
    }
    use weir_plugin::abi::{Kind, ABI_MAJOR};

    unsafe extern "C" fn validate(_: StrRef, _: *mut OwnedBytes) -> Status {
        Status::OK
    }
    unsafe extern "C" fn create(_: StrRef, _: *const HostApi, _: *mut *mut c_void, _: *mut OwnedBytes) -> Status {
        Status::FATAL
    }
    unsafe extern "C" fn destroy(_: *mut c_void) {}
    unsafe extern "C" fn acknowledge(_: *mut c_void, _: *const Settled, _: u32, _: *mut OwnedBytes) -> Status {
        Status::OK
    }

    fn descriptor(name: &'static str, struct_size: usize) -> PluginDescriptor {
        PluginDescriptor {
            struct_size: struct_size as u32,
            kind: Kind::TRANSFORM,
            name: StrRef::new(name),
            description: StrRef::EMPTY,
            config_schema: StrRef::new("{}"),
            validate,
            create,
            destroy,
            start: None,
            stop: None,
            process: None,
            acknowledge: Some(acknowledge),
            flags: 0,
            control: None,
            condition: None,
        }
    }

    fn manifest(plugins: *const PluginDescriptor, count: u32) -> &'static Manifest {
        Box::leak(Box::new(Manifest {
            abi_major: ABI_MAJOR,
            abi_minor: 0,
            struct_size: std::mem::size_of::<Manifest>() as u32,
            library_name: StrRef::EMPTY,
            library_version: StrRef::EMPTY,
            build_info: StrRef::EMPTY,
            plugin_count: count,
            plugins,
            flags: 0,
        }))
    }

    #[test]
    fn minor_0_descriptors_are_read_at_their_own_size_and_lack_acknowledge() {
        // Two descriptors laid out as a minor-0 library does: back to back, each ending
        // with `process`. What follows each in memory is the next one, not `acknowledge`.
        let size = PluginDescriptor::MINOR_0_SIZE;
        let words = (2 * size).div_ceil(8);
        let buffer: &'static mut [u64] = Box::leak(vec![0u64; words].into_boxed_slice());
        for (i, name) in ["first", "second"].into_iter().enumerate() {
            let d = descriptor(name, size);
            // SAFETY: the buffer holds two descriptors of `size` bytes; `d` is a full one.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    (&d as *const PluginDescriptor).cast::<u8>(),
                    buffer.as_mut_ptr().cast::<u8>().add(i * size),
                    size,
                )
            };
        }
        let read = descriptors(manifest(buffer.as_ptr().cast(), 2)).unwrap();
        assert_eq!(read.len(), 2);
        // SAFETY: the names are static strings.
        assert_eq!(unsafe { (read[0].name.as_str(), read[1].name.as_str()) }, ("first", "second"));
        assert!(read.iter().all(|d| d.acknowledge.is_none()), "a minor-0 descriptor has no acknowledge");

        // A current library's descriptors are used in place, acknowledge included.
        let current: &'static [PluginDescriptor] = Box::leak(Box::new([descriptor("now", std::mem::size_of::<PluginDescriptor>())]));
        let read = descriptors(manifest(current.as_ptr(), 1)).unwrap();
        assert!(read[0].acknowledge.is_some());
        assert!(std::ptr::eq(read[0], &current[0]));

        // A descriptor shorter than ABI 1.0's is refused with the reason.
        let short: &'static [PluginDescriptor] = Box::leak(Box::new([descriptor("short", 16)]));
        let err = descriptors(manifest(short.as_ptr(), 1)).unwrap_err();
        assert_eq!(err, crate::loader::LoadProblem::ShortDescriptors { stride: 16, needed: PluginDescriptor::MINOR_0_SIZE });
        assert!(err.to_string().contains("16 bytes"), "{err}");
    }
}
