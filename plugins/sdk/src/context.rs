//! Safe wrappers over the host's callbacks: [`Context`] (logs, metrics, errors, sockets)
//! and [`Emitter`] (how a source hands batches to the pipeline).
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::path::{Path, PathBuf};

use crate::abi::{self, AckCallback, AckView, EmitterApi, HostApi, OwnedBytes, Status, StrRef};
use crate::batch::BatchRef;
use crate::error::PluginError;

/// Log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Something failed.
    Error,
    /// Something is wrong but work goes on.
    Warn,
    /// Normal operation.
    Info,
    /// Detail for debugging.
    Debug,
}

impl Level {
    fn code(self) -> u32 {
        match self {
            Level::Error => abi::level::ERROR,
            Level::Warn => abi::level::WARN,
            Level::Info => abi::level::INFO,
            Level::Debug => abi::level::DEBUG,
        }
    }
}

/// What a plugin instance knows of its host: where it runs and how to call back.
/// Cheap to clone; usable from any thread for the life of the process.
#[derive(Clone, Copy)]
pub struct Context {
    api: HostApi,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("pipeline", &self.pipeline()).field("stage", &self.stage()).finish()
    }
}

impl Context {
    /// Wraps the host's API.
    ///
    /// # Safety
    /// `api` must satisfy `ABI.md`: its pointers stay valid for the life of the process.
    pub unsafe fn from_api(api: HostApi) -> Self {
        Context { api }
    }

    /// The pipeline's name.
    pub fn pipeline(&self) -> &str {
        // SAFETY: the host keeps these strings for the life of the process.
        unsafe { self.api.pipeline.as_str() }
    }

    /// The stage's name.
    pub fn stage(&self) -> &str {
        // SAFETY: as above.
        unsafe { self.api.stage.as_str() }
    }

    /// The directory of the pipeline file.
    pub fn base_dir(&self) -> &Path {
        // SAFETY: as above.
        Path::new(unsafe { self.api.base_dir.as_str() })
    }

    /// Resolves a path from a config: absolute paths stay, relative ones are taken from the
    /// pipeline file's directory.
    pub fn resolve(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir().join(path)
        }
    }

    /// Writes a log line through the host.
    pub fn log(&self, level: Level, message: &str) {
        // SAFETY: the function pointer and ctx come from the host per ABI.md.
        unsafe { (self.api.log)(self.api.ctx, level.code(), StrRef::new(message)) }
    }

    /// Logs at info level.
    pub fn info(&self, message: &str) {
        self.log(Level::Info, message)
    }

    /// Logs at warn level.
    pub fn warn(&self, message: &str) {
        self.log(Level::Warn, message)
    }

    /// Adds to the counter `weir_plugin_<name>` (labelled with this stage).
    pub fn counter_add(&self, name: &str, help: &str, value: u64) {
        // SAFETY: as above.
        unsafe { (self.api.metric)(self.api.ctx, abi::metric::COUNTER_ADD, StrRef::new(name), StrRef::new(help), value as f64) }
    }

    /// Sets the gauge `weir_plugin_<name>` (labelled with this stage).
    pub fn gauge_set(&self, name: &str, help: &str, value: f64) {
        // SAFETY: as above.
        unsafe { (self.api.metric)(self.api.ctx, abi::metric::GAUGE_SET, StrRef::new(name), StrRef::new(help), value) }
    }

    /// Reports an error that happened outside a call (counted and logged by the host).
    pub fn report_error(&self, message: &str) {
        // SAFETY: as above.
        unsafe { (self.api.error)(self.api.ctx, StrRef::new(message)) }
    }

    /// Asks the host for a listening socket on `address` (`host:port`). The host owns the
    /// socket, so a reloaded pipeline gets the same one back without a gap.
    pub fn listen(&self, address: &str) -> Result<std::net::TcpListener, PluginError> {
        let mut fd: i32 = -1;
        let mut message = OwnedBytes::EMPTY;
        // SAFETY: as above; `fd` and `message` are valid out-pointers.
        let status = unsafe { (self.api.listen)(self.api.ctx, StrRef::new(address), &mut fd, &mut message) };
        // SAFETY: filled by the host or still empty.
        let text = unsafe { abi::take_owned_string(&mut message) };
        if status != Status::OK || fd < 0 {
            return Err(PluginError::config(format!("cannot listen on {address}: {text}")));
        }
        use std::os::fd::FromRawFd;
        // SAFETY: on OK the host handed us a new descriptor that we now own.
        Ok(unsafe { std::net::TcpListener::from_raw_fd(fd) })
    }
}

impl Context {
    /// Serves the HTTP paths `routes` on `address`, an address stages of other plugins and
    /// pipelines may share (a route ending in `/` is a prefix; others match the path
    /// exactly). `None` when the host is older than ABI minor 2: use [`Context::listen`].
    /// Must be called inside a tokio runtime (for example [`crate::runtime()`]'s).
    pub fn listen_routes(&self, address: &str, routes: &[&str]) -> Result<Option<crate::routes::RoutedListener>, PluginError> {
        let Some(listen_routes) = self.api.listen_routes else { return Ok(None) };
        let mut fd: i32 = -1;
        let mut message = OwnedBytes::EMPTY;
        let routes = routes.join("\n");
        // SAFETY: as above; `fd` and `message` are valid out-pointers.
        let status = unsafe { listen_routes(self.api.ctx, StrRef::new(address), StrRef::new(&routes), &mut fd, &mut message) };
        // SAFETY: filled by the host or still empty.
        let text = unsafe { abi::take_owned_string(&mut message) };
        if status != Status::OK || fd < 0 {
            return Err(PluginError::config(format!("cannot listen on {address}: {text}")));
        }
        use std::os::fd::FromRawFd;
        // SAFETY: on OK the host handed us a new descriptor that we now own.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        crate::routes::RoutedListener::new(fd)
            .map(Some)
            .map_err(|e| PluginError::fatal(format!("cannot use the socket for {address}: {e}")))
    }

    /// Reports whether the external system `dependency` (`kafka`, `s3`, `postgres`) at
    /// `target` (where it is, without secrets) answers; `message` says why not. The host
    /// shows the last report per dependency in `/health`, `/pipelines/{name}` and as
    /// `weir_stage_up`. Does nothing on a host older than ABI minor 4.
    pub fn report_health(&self, dependency: &str, target: &str, up: bool, message: &str) {
        if let Some(report) = self.api.report_health {
            // SAFETY: as above.
            unsafe { report(self.api.ctx, StrRef::new(dependency), StrRef::new(target), u32::from(up), StrRef::new(message)) }
        }
    }

    /// The last health reports of every stage of this pipeline:
    /// `{"STAGE": {"DEPENDENCY": {"up", "target", "message", "since"}}}`. `None` on a host
    /// older than ABI minor 4.
    pub fn pipeline_health(&self) -> Option<serde_json::Value> {
        let get = self.api.pipeline_health?;
        let mut out = OwnedBytes::EMPTY;
        // SAFETY: as above; `out` is a valid out-pointer.
        let status = unsafe { get(self.api.ctx, &mut out) };
        // SAFETY: filled by the host or still empty.
        let text = unsafe { abi::take_owned_string(&mut out) };
        if status != Status::OK {
            return None;
        }
        serde_json::from_str(&text).ok()
    }

    /// [`Context::listen`], ready for async use on the library's runtime ([`crate::runtime()`]).
    pub fn listen_async(&self, address: &str) -> Result<tokio::net::TcpListener, PluginError> {
        let listener = self.listen(address)?;
        listener.set_nonblocking(true).map_err(|e| PluginError::fatal(format!("cannot use the socket for {address}: {e}")))?;
        let _guard = crate::runtime().enter();
        tokio::net::TcpListener::from_std(listener).map_err(|e| PluginError::fatal(format!("cannot use the socket for {address}: {e}")))
    }
}

/// What became of one emitted record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Taken by the pipeline.
    Accepted,
    /// Refused by a stage (the client's fault, for example a schema violation).
    Rejected(String),
    /// Could not be processed (a stage failed or the pipeline stopped).
    Failed(String),
    /// Dropped on purpose by a transform (for example a duplicate).
    Dropped,
}

/// The acknowledgement of one emitted batch: an outcome per record, in emitted order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// One outcome per record.
    pub outcomes: Vec<Outcome>,
}

impl Ack {
    /// Whether every record was accepted or dropped on purpose.
    pub fn all_ok(&self) -> bool {
        self.outcomes.iter().all(|o| matches!(o, Outcome::Accepted | Outcome::Dropped))
    }

    /// Reads an acknowledgement from the host.
    ///
    /// # Safety
    /// `view` must be valid per ABI.md.
    pub unsafe fn from_view(view: &AckView) -> Ack {
        Ack { outcomes: outcomes(view.count, view.codes, view.reasons) }
    }
}

/// Reads `count` outcome codes and reasons from the host.
///
/// # Safety
/// `codes` and `reasons` must be null or point to `count` valid entries (per ABI.md).
pub(crate) unsafe fn outcomes(count: u32, codes: *const u8, reasons: *const StrRef) -> Vec<Outcome> {
    let n = count as usize;
    let codes = if n == 0 || codes.is_null() { &[][..] } else { std::slice::from_raw_parts(codes, n) };
    let reasons = if n == 0 || reasons.is_null() { &[][..] } else { std::slice::from_raw_parts(reasons, n) };
    codes
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let reason = || reasons.get(i).map(|r| r.as_str().to_owned()).unwrap_or_default();
            match c {
                abi::outcome::ACCEPTED => Outcome::Accepted,
                abi::outcome::REJECTED => Outcome::Rejected(reason()),
                abi::outcome::DROPPED => Outcome::Dropped,
                _ => Outcome::Failed(reason()),
            }
        })
        .collect()
}

/// Why the host did not take a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// Backpressure: the pipeline is full; offer the batch again later.
    #[error("the pipeline is full")]
    Full,
    /// The pipeline is stopping.
    #[error("the pipeline is closed")]
    Closed,
    /// The host refused the batch as malformed.
    #[error("the host refused the batch: {0}")]
    Refused(&'static str),
}

/// How a source hands batches to its pipeline. Cheap to clone; usable from any thread.
#[derive(Clone, Copy)]
pub struct Emitter {
    api: EmitterApi,
}

type AckFn = Box<dyn FnOnce(Ack) + Send>;

unsafe extern "C" fn call_ack(ctx: *mut c_void, view: *const AckView) {
    let f: Box<AckFn> = Box::from_raw(ctx.cast::<AckFn>());
    let ack = if view.is_null() { Ack { outcomes: Vec::new() } } else { Ack::from_view(&*view) };
    // A panic must not cross into the host.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || f(ack)));
}

impl Emitter {
    /// Wraps the host's emitter.
    ///
    /// # Safety
    /// `api` must satisfy ABI.md.
    pub unsafe fn from_api(api: EmitterApi) -> Self {
        Emitter { api }
    }

    /// Offers a batch without blocking. On `Ok`, `on_ack` is called exactly once, from
    /// some host thread, when the pipeline is done with the batch.
    pub fn emit(&self, batch: &BatchRef<'_>, on_ack: impl FnOnce(Ack) + Send + 'static) -> Result<(), EmitError> {
        let boxed: Box<AckFn> = Box::new(Box::new(on_ack));
        let ctx = Box::into_raw(boxed).cast::<c_void>();
        let view = batch.view();
        // SAFETY: per ABI.md; `view` points into `batch`, borrowed for the call.
        let status = unsafe { (self.api.emit)(self.api.ctx, &view, AckCallback { ctx, call: Some(call_ack) }) };
        if status == Status::OK {
            return Ok(());
        }
        // SAFETY: the host will not call back; we still own the closure.
        drop(unsafe { Box::from_raw(ctx.cast::<AckFn>()) });
        Err(match status {
            Status::FULL => EmitError::Full,
            Status::CLOSED => EmitError::Closed,
            s => EmitError::Refused(s.name()),
        })
    }

    /// Says the source has emitted everything it ever will: the host drains the pipeline
    /// and stops it (with `weir run --once`, the host exits once every pipeline finished).
    pub fn finish(&self) {
        // SAFETY: per ABI.md.
        unsafe { (self.api.finish)(self.api.ctx) }
    }

    /// Runs `try_once` (an [`Emitter::emit`] or [`Emitter::send`]) and, while the pipeline
    /// is full, again for up to `wait`, pausing 1 ms, then twice as long each time up to
    /// 50 ms: a source that can hold its caller a little (an HTTP request) rides out a
    /// short burst instead of refusing it.
    pub async fn offer<T, F: std::future::Future<Output = Result<T, EmitError>>>(
        wait: std::time::Duration,
        mut try_once: impl FnMut() -> F,
    ) -> Result<T, EmitError> {
        let deadline = std::time::Instant::now() + wait;
        let mut pause = std::time::Duration::from_millis(1);
        loop {
            match try_once().await {
                Err(EmitError::Full) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    /// Offers a batch and waits for its acknowledgement.
    pub async fn send(&self, batch: &BatchRef<'_>) -> Result<Ack, EmitError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.emit(batch, move |ack| {
            let _ = tx.send(ack);
        })?;
        rx.await.map_err(|_| EmitError::Closed)
    }
}
