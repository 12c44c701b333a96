//! The glue between the typed traits and the C ABI, used by [`crate::export_plugins!`].
//! Every exported function runs inside `catch_unwind`; a panic poisons the instance.
#![allow(unsafe_code)]

use std::any::Any;
use std::cell::RefCell;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use crate::abi::{
    self, BatchView, EmitterApi, HostApi, Kind, Manifest, OwnedBytes, PluginDescriptor, Settled, StageOutput, Status, StrRef,
};
use crate::batch::{BatchRef, Output};
use crate::context::{Context, Emitter};
use crate::error::PluginError;

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Routes this library's panic messages to the status message instead of stderr.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let text = format!("{info}");
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(text));
        }))
    });
}

fn panic_text(payload: Box<dyn Any + Send>) -> String {
    if let Some(text) = LAST_PANIC.with(|p| p.borrow_mut().take()) {
        return text;
    }
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

unsafe fn set_message(message: *mut OwnedBytes, text: String) {
    if !message.is_null() {
        *message = abi::owned_bytes(text.into_bytes());
    }
}

fn error_status(e: &PluginError) -> Status {
    match e {
        PluginError::Config(_) => Status::INVALID_CONFIG,
        PluginError::Retry { .. } => Status::RETRY,
        PluginError::Fatal(_) => Status::FATAL,
    }
}

struct Instance<T> {
    inner: T,
    poisoned: bool,
}

/// Runs `f` on the instance with panic containment.
unsafe fn guarded<T>(instance: *mut c_void, message: *mut OwnedBytes, f: impl FnOnce(&mut T) -> Result<(), PluginError>) -> Status {
    if instance.is_null() {
        return Status::INVALID_ARGUMENT;
    }
    let inst = &mut *instance.cast::<Instance<T>>();
    if inst.poisoned {
        set_message(message, "the instance panicked earlier and is poisoned".into());
        return Status::POISONED;
    }
    match catch_unwind(AssertUnwindSafe(|| f(&mut inst.inner))) {
        Ok(Ok(())) => Status::OK,
        Ok(Err(e)) => {
            let status = error_status(&e);
            set_message(message, e.to_string());
            status
        }
        Err(payload) => {
            inst.poisoned = true;
            set_message(message, panic_text(payload));
            Status::PANICKED
        }
    }
}

fn parse_config<C: DeserializeOwned>(config: StrRef) -> Result<C, PluginError> {
    // SAFETY: the host passes a valid borrowed string.
    let bytes = unsafe { config.as_bytes() };
    let bytes = if bytes.is_empty() { b"{}" } else { bytes };
    serde_json::from_slice(bytes).map_err(|e| PluginError::config(format!("invalid config: {e}")))
}

unsafe fn run_unguarded(message: *mut OwnedBytes, f: impl FnOnce() -> Result<(), PluginError>) -> Status {
    install_panic_hook();
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => Status::OK,
        Ok(Err(e)) => {
            let status = error_status(&e);
            set_message(message, e.to_string());
            status
        }
        Err(payload) => {
            set_message(message, panic_text(payload));
            Status::PANICKED
        }
    }
}

/// The trait-independent parts each kind shares.
pub(crate) trait Erased: Sized + Send + 'static {
    type Config: DeserializeOwned + JsonSchema;
    fn check(config: &Self::Config) -> Result<(), PluginError>;
    fn build(config: Self::Config, ctx: Context) -> Result<Self, PluginError>;
}

macro_rules! erased {
    ($tr:ident) => {
        pub(crate) struct $tr<T>(pub(crate) T);
        impl<T: crate::plugin::$tr> Erased for $tr<T> {
            type Config = T::Config;
            fn check(config: &Self::Config) -> Result<(), PluginError> {
                T::validate(config)
            }
            fn build(config: Self::Config, ctx: Context) -> Result<Self, PluginError> {
                T::create(config, ctx).map($tr)
            }
        }
    };
}
erased!(Source);
erased!(Transform);
erased!(Sink);

unsafe extern "C" fn validate<E: Erased>(config: StrRef, message: *mut OwnedBytes) -> Status {
    run_unguarded(message, || E::check(&parse_config::<E::Config>(config)?))
}

unsafe extern "C" fn create<E: Erased>(
    config: StrRef,
    host: *const HostApi,
    instance: *mut *mut c_void,
    message: *mut OwnedBytes,
) -> Status {
    if host.is_null() || instance.is_null() {
        return Status::INVALID_ARGUMENT;
    }
    let ctx = Context::from_api(abi::read_host_api(host));
    run_unguarded(message, || {
        let config = parse_config::<E::Config>(config)?;
        E::check(&config)?;
        let built = E::build(config, ctx)?;
        *instance = Box::into_raw(Box::new(Instance { inner: built, poisoned: false })).cast();
        Ok(())
    })
}

unsafe extern "C" fn destroy<E: Erased>(instance: *mut c_void) {
    if !instance.is_null() {
        let boxed = Box::from_raw(instance.cast::<Instance<E>>());
        // A panicking destructor must not cross the boundary; leak instead.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(boxed)));
    }
}

unsafe extern "C" fn source_start<T: crate::plugin::Source>(
    instance: *mut c_void,
    emitter: EmitterApi,
    message: *mut OwnedBytes,
) -> Status {
    let emitter = Emitter::from_api(emitter);
    guarded::<Source<T>>(instance, message, |s| s.0.start(emitter))
}

unsafe extern "C" fn source_stop<T: crate::plugin::Source>(instance: *mut c_void, message: *mut OwnedBytes) -> Status {
    guarded::<Source<T>>(instance, message, |s| s.0.stop())
}

unsafe extern "C" fn source_control<T: crate::plugin::Source>(
    instance: *mut c_void,
    request: StrRef,
    response: *mut OwnedBytes,
    message: *mut OwnedBytes,
) -> Status {
    guarded::<Source<T>>(instance, message, |s| {
        let request: serde_json::Value =
            serde_json::from_slice(request.as_bytes()).map_err(|e| PluginError::config(format!("the control request is not JSON: {e}")))?;
        let answer = s.0.control(&request)?;
        set_message(response, answer.to_string());
        Ok(())
    })
}

unsafe extern "C" fn sink_stop<T: crate::plugin::Sink>(instance: *mut c_void, message: *mut OwnedBytes) -> Status {
    guarded::<Sink<T>>(instance, message, |s| s.0.stop())
}

unsafe extern "C" fn release_output(private: *mut c_void) {
    if !private.is_null() {
        drop(Box::from_raw(private.cast::<Output>()));
    }
}

/// Hands `out` to the host through `slot`.
unsafe fn fill_output(slot: *mut StageOutput, out: Box<Output>, retry_after_ms: u64) {
    if slot.is_null() {
        return;
    }
    let kept = !out.kept.is_empty();
    let mut view = out.batch.as_ref().view();
    let origins = if kept {
        view.count = out.kept.len() as u32;
        out.kept.as_ptr()
    } else {
        out.batch.origins().as_ptr()
    };
    let (rejections, text) = out.rejections.raw();
    *slot = StageOutput {
        struct_size: std::mem::size_of::<StageOutput>() as u32,
        batch: view,
        origins,
        rejections: rejections.as_ptr(),
        rejection_count: rejections.len() as u32,
        text: text.as_ptr(),
        text_len: text.len(),
        retry_after_ms,
        sequence: out.sequence,
        flags: if kept { abi::OUTPUT_KEPT } else { 0 },
        release: Some(release_output),
        private: Box::into_raw(out).cast(),
    };
}

unsafe fn process_with<E: Erased>(
    instance: *mut c_void,
    batch: *const BatchView,
    output: *mut StageOutput,
    message: *mut OwnedBytes,
    f: impl FnOnce(&mut E, &BatchRef<'_>, &mut Output) -> Result<(), PluginError>,
) -> Status {
    if batch.is_null() {
        return Status::INVALID_ARGUMENT;
    }
    let input = match BatchRef::from_view(&*batch) {
        Ok(b) => b,
        Err(e) => {
            set_message(message, format!("malformed batch: {e}"));
            return Status::INVALID_ARGUMENT;
        }
    };
    let mut out = Box::new(Output::default());
    let mut retry_after = 0;
    let status = guarded::<E>(instance, message, |inst| {
        let r = f(inst, &input, &mut out);
        if r.is_ok() && !out.batch.is_empty() {
            // Records passed before others were pushed are copied in after all (inside the
            // guard: a bad index panics here, and becomes this call's error).
            out.materialize(&input);
        }
        if let Err(PluginError::Retry { after: Some(d), .. }) = &r {
            retry_after = d.as_millis() as u64;
        }
        r
    });
    fill_output(output, out, retry_after);
    status
}

unsafe extern "C" fn transform_process<T: crate::plugin::Transform>(
    instance: *mut c_void,
    batch: *const BatchView,
    output: *mut StageOutput,
    message: *mut OwnedBytes,
) -> Status {
    process_with::<Transform<T>>(instance, batch, output, message, |t, input, out| {
        out.batch = crate::batch::BatchBuf::with_capacity(input.len(), input.data_len() + input.data_len() / 2);
        out.sequence = Output::next_sequence();
        t.0.process(input, out)
    })
}

unsafe extern "C" fn transform_acknowledge<T: crate::plugin::Transform>(
    instance: *mut c_void,
    settled: *const Settled,
    count: u32,
    message: *mut OwnedBytes,
) -> Status {
    if settled.is_null() && count > 0 {
        return Status::INVALID_ARGUMENT;
    }
    let raw = if count == 0 { &[][..] } else { std::slice::from_raw_parts(settled, count as usize) };
    let settled: Vec<crate::plugin::Settled> = raw
        .iter()
        .map(|s| crate::plugin::Settled { batch: s.sequence, outcomes: crate::context::outcomes(s.count, s.codes, s.reasons) })
        .collect();
    guarded::<Transform<T>>(instance, message, |t| t.0.acknowledge(&settled))
}

unsafe extern "C" fn transform_condition<T: crate::plugin::Transform>(
    instance: *mut c_void,
    condition: *mut OwnedBytes,
    message: *mut OwnedBytes,
) -> Status {
    guarded::<Transform<T>>(instance, message, |t| {
        if let Some(c) = t.0.condition() {
            set_message(condition, serde_json::to_string(&c).expect("a condition serializes"));
        }
        Ok(())
    })
}

unsafe extern "C" fn sink_process<T: crate::plugin::Sink>(
    instance: *mut c_void,
    batch: *const BatchView,
    output: *mut StageOutput,
    message: *mut OwnedBytes,
) -> Status {
    process_with::<Sink<T>>(instance, batch, output, message, |s, input, out| s.0.write(input, &mut out.rejections))
}

type ControlFn = unsafe extern "C" fn(*mut c_void, StrRef, *mut OwnedBytes, *mut OwnedBytes) -> Status;
type ConditionFn = unsafe extern "C" fn(*mut c_void, *mut OwnedBytes, *mut OwnedBytes) -> Status;

/// Descriptor parts that need owned storage.
pub struct DescriptorParts {
    kind: Kind,
    name: &'static str,
    description: &'static str,
    schema: String,
    start: Option<unsafe extern "C" fn(*mut c_void, EmitterApi, *mut OwnedBytes) -> Status>,
    stop: Option<unsafe extern "C" fn(*mut c_void, *mut OwnedBytes) -> Status>,
    process: Option<unsafe extern "C" fn(*mut c_void, *const BatchView, *mut StageOutput, *mut OwnedBytes) -> Status>,
    acknowledge: Option<unsafe extern "C" fn(*mut c_void, *const Settled, u32, *mut OwnedBytes) -> Status>,
    flags: u32,
    control: Option<ControlFn>,
    condition: Option<ConditionFn>,
    validate: unsafe extern "C" fn(StrRef, *mut OwnedBytes) -> Status,
    create: unsafe extern "C" fn(StrRef, *const HostApi, *mut *mut c_void, *mut OwnedBytes) -> Status,
    destroy: unsafe extern "C" fn(*mut c_void),
}

/// The JSON Schema of a config type, as JSON text.
pub fn schema_json<C: JsonSchema>() -> String {
    serde_json::to_string(&schemars::schema_for!(C)).unwrap_or_else(|_| "{}".into())
}

fn parts<E: Erased>(kind: Kind, name: &'static str, description: &'static str) -> DescriptorParts {
    DescriptorParts {
        kind,
        name,
        description,
        schema: schema_json::<E::Config>(),
        start: None,
        stop: None,
        process: None,
        acknowledge: None,
        flags: 0,
        control: None,
        condition: None,
        validate: validate::<E>,
        create: create::<E>,
        destroy: destroy::<E>,
    }
}

/// Describes a source for the manifest.
pub fn source<T: crate::plugin::Source>() -> DescriptorParts {
    DescriptorParts {
        start: Some(source_start::<T>),
        stop: Some(source_stop::<T>),
        control: if T::CONTROLS { Some(source_control::<T>) } else { None },
        ..parts::<Source<T>>(Kind::SOURCE, T::NAME, T::DESCRIPTION)
    }
}

/// Describes a transform for the manifest.
pub fn transform<T: crate::plugin::Transform>() -> DescriptorParts {
    DescriptorParts {
        process: Some(transform_process::<T>),
        acknowledge: if T::ACKNOWLEDGES { Some(transform_acknowledge::<T>) } else { None },
        flags: if T::IN_ORDER { abi::PLUGIN_IN_ORDER } else { 0 },
        condition: Some(transform_condition::<T>),
        ..parts::<Transform<T>>(Kind::TRANSFORM, T::NAME, T::DESCRIPTION)
    }
}

/// Describes a sink for the manifest.
pub fn sink<T: crate::plugin::Sink>() -> DescriptorParts {
    DescriptorParts {
        stop: Some(sink_stop::<T>),
        process: Some(sink_process::<T>),
        flags: if T::WORKERS { abi::PLUGIN_WORKERS } else { 0 },
        ..parts::<Sink<T>>(Kind::SINK, T::NAME, T::DESCRIPTION)
    }
}

/// The manifest's build information: `key=value` pairs separated by `; ` (ABI.md).
pub fn build_info() -> String {
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    format!(
        "sdk=weir-plugin {}; compiler={}; target={}; profile={profile}",
        env!("CARGO_PKG_VERSION"),
        env!("WEIR_SDK_COMPILER"),
        env!("WEIR_SDK_TARGET")
    )
}

/// Owns the manifest and everything it points to. Lives in a `static`.
pub struct ManifestHolder {
    manifest: Manifest,
    _descriptors: Vec<PluginDescriptor>,
    _parts: Vec<DescriptorParts>,
    _strings: [String; 3],
}

impl ManifestHolder {
    /// Builds the manifest of a library.
    pub fn new(library: &'static str, version: &'static str, parts: Vec<DescriptorParts>) -> Self {
        install_panic_hook();
        let strings = [library.to_owned(), version.to_owned(), build_info()];
        let descriptors: Vec<PluginDescriptor> = parts
            .iter()
            .map(|p| PluginDescriptor {
                struct_size: std::mem::size_of::<PluginDescriptor>() as u32,
                kind: p.kind,
                name: StrRef::new(p.name),
                description: StrRef::new(p.description),
                config_schema: StrRef::new(&p.schema),
                validate: p.validate,
                create: p.create,
                destroy: p.destroy,
                start: p.start,
                stop: p.stop,
                process: p.process,
                acknowledge: p.acknowledge,
                flags: p.flags,
                control: p.control,
                condition: p.condition,
            })
            .collect();
        let manifest = Manifest {
            abi_major: abi::ABI_MAJOR,
            abi_minor: abi::ABI_MINOR,
            struct_size: std::mem::size_of::<Manifest>() as u32,
            library_name: StrRef::new(&strings[0]),
            library_version: StrRef::new(&strings[1]),
            build_info: StrRef::new(&strings[2]),
            plugin_count: descriptors.len() as u32,
            plugins: descriptors.as_ptr(),
            flags: 0,
        };
        ManifestHolder { manifest, _descriptors: descriptors, _parts: parts, _strings: strings }
    }

    /// Sets the manifest's flags (such as [`abi::LIBRARY_OPT_IN`]).
    pub fn with_flags(mut self, flags: u32) -> Self {
        self.manifest.flags = flags;
        self
    }

    /// The manifest; valid as long as the holder.
    pub fn manifest(&self) -> *const Manifest {
        &self.manifest
    }
}

/// Exports the plugins of a library through the versioned entry symbol.
///
/// ```ignore
/// weir_plugin::export_plugins!(source HttpSource, sink WebSocketSink);
/// ```
///
/// A library for tests or a tutorial starts the list with `opt_in;`: the host then loads it
/// only from a plugin directory the user names, not by default from beside the `weir`
/// executable ([`abi::LIBRARY_OPT_IN`]):
///
/// ```ignore
/// weir_plugin::export_plugins!(opt_in; sink Counter);
/// ```
#[macro_export]
macro_rules! export_plugins {
    (opt_in; $($kind:ident $ty:ty),+ $(,)?) => {
        $crate::export_plugins!(@flags $crate::abi::LIBRARY_OPT_IN; $($kind $ty),+);
    };
    (@flags $flags:expr; $($kind:ident $ty:ty),+ $(,)?) => {
        /// The library's entry symbol: returns its Weir plugin manifest.
        #[allow(unsafe_code)]
        #[no_mangle]
        pub extern "C" fn weir_plugin_manifest_v1() -> *const $crate::abi::Manifest {
            static HOLDER: ::std::sync::OnceLock<$crate::export::ManifestHolder> = ::std::sync::OnceLock::new();
            HOLDER
                .get_or_init(|| {
                    $crate::export::ManifestHolder::new(
                        env!("CARGO_PKG_NAME"),
                        env!("CARGO_PKG_VERSION"),
                        vec![$($crate::export::$kind::<$ty>()),+],
                    )
                    .with_flags($flags)
                })
                .manifest()
        }
    };
    ($($kind:ident $ty:ty),+ $(,)?) => {
        $crate::export_plugins!(@flags 0; $($kind $ty),+);
    };
}
