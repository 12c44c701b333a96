//! The C ABI between the Weir host and plugin libraries: the "header".
//!
//! Everything in this module is `#[repr(C)]` and is specified in `plugins/sdk/ABI.md`.
//! Nothing here allocates; ownership rules are spelled out per type.
#![allow(unsafe_code)]

use std::ffi::c_void;

/// ABI major version. A host refuses a library with a different major.
pub const ABI_MAJOR: u16 = 1;
/// ABI minor version. A host refuses a library with a newer minor than its own.
pub const ABI_MINOR: u16 = 7;
/// Name of the one symbol every plugin library exports (NUL-terminated).
pub const ENTRY_SYMBOL: &[u8] = b"weir_plugin_manifest_v1\0";
/// Signature of the entry symbol.
pub type EntryFn = unsafe extern "C" fn() -> *const Manifest;

/// Status returned by every exported function and host callback.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub i32);

impl Status {
    /// Success.
    pub const OK: Status = Status(0);
    /// The configuration is invalid (the user's error; retrying does not help).
    pub const INVALID_CONFIG: Status = Status(1);
    /// A transient failure (an external system); the call may be retried.
    pub const RETRY: Status = Status(2);
    /// A permanent failure; retrying does not help.
    pub const FATAL: Status = Status(3);
    /// The plugin panicked; the instance is now poisoned.
    pub const PANICKED: Status = Status(4);
    /// The instance panicked earlier and refuses further calls.
    pub const POISONED: Status = Status(5);
    /// Backpressure: the host cannot take the batch now; try again later.
    pub const FULL: Status = Status(6);
    /// The pipeline is closing and takes no more batches.
    pub const CLOSED: Status = Status(7);
    /// An argument was malformed (for example a null pointer or a short struct).
    pub const INVALID_ARGUMENT: Status = Status(8);

    /// A short lower-case name for logs.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "ok",
            1 => "invalid_config",
            2 => "retry",
            3 => "fatal",
            4 => "panicked",
            5 => "poisoned",
            6 => "full",
            7 => "closed",
            8 => "invalid_argument",
            _ => "unknown",
        }
    }
}

/// A borrowed UTF-8 string (not NUL-terminated). Valid only for the duration of the call
/// it is passed to, unless stated otherwise.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct StrRef {
    /// First byte; may be dangling when `len` is 0.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

impl StrRef {
    /// A reference to `s`. The caller keeps `s` alive while the `StrRef` is used.
    pub fn new(s: &str) -> Self {
        StrRef { ptr: s.as_ptr(), len: s.len() }
    }

    /// The empty string.
    pub const EMPTY: StrRef = StrRef { ptr: std::ptr::null(), len: 0 };

    /// Reads the string back.
    ///
    /// # Safety
    /// `ptr` must point to `len` readable bytes that stay valid for `'a`.
    pub unsafe fn as_str<'a>(self) -> &'a str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("<invalid utf-8>")
    }

    /// Reads the bytes back.
    ///
    /// # Safety
    /// `ptr` must point to `len` readable bytes that stay valid for `'a`.
    pub unsafe fn as_bytes<'a>(self) -> &'a [u8] {
        if self.len == 0 || self.ptr.is_null() {
            &[]
        } else {
            std::slice::from_raw_parts(self.ptr, self.len)
        }
    }
}

/// A buffer handed from one side to the other. The receiver calls `release` exactly once
/// when done (from any thread); the allocator's code frees it.
#[repr(C)]
pub struct OwnedBytes {
    /// First byte.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
    /// Frees the buffer; null when there is nothing to free.
    pub release: Option<unsafe extern "C" fn(private: *mut c_void)>,
    /// Opaque to the receiver.
    pub private: *mut c_void,
}

impl OwnedBytes {
    /// An empty buffer with nothing to release.
    pub const EMPTY: OwnedBytes = OwnedBytes { ptr: std::ptr::null(), len: 0, release: None, private: std::ptr::null_mut() };
}

/// Plugin kinds.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind(pub u32);

impl Kind {
    /// Produces batches.
    pub const SOURCE: Kind = Kind(1);
    /// Turns a batch into another batch.
    pub const TRANSFORM: Kind = Kind(2);
    /// Delivers batches somewhere.
    pub const SINK: Kind = Kind(3);

    /// A lower-case name.
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "source",
            2 => "transform",
            3 => "sink",
            _ => "unknown",
        }
    }
}

/// Where a record's parts live in the batch's data buffer. Offsets are from the start of
/// `BatchView::data`. A part that is absent has `len == ABSENT`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordMeta {
    /// Offset of the key.
    pub key_off: u32,
    /// Length of the key, or `ABSENT` for no key.
    pub key_len: u32,
    /// Offset of the value.
    pub value_off: u32,
    /// Length of the value.
    pub value_len: u32,
    /// Offset of the encoded headers (see ABI.md).
    pub headers_off: u32,
    /// Length of the encoded headers; 0 for none.
    pub headers_len: u32,
    /// Milliseconds since the Unix epoch; the smallest `i64` (`INT64_MIN`) when unknown.
    pub timestamp_ms: i64,
}

/// Marks an absent key (`RecordMeta::key_len`).
pub const ABSENT: u32 = u32::MAX;

/// A borrowed batch: one data buffer and one `RecordMeta` per record.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BatchView {
    /// Size of this struct as the sender knows it.
    pub struct_size: u32,
    /// Number of records.
    pub count: u32,
    /// The contiguous data buffer.
    pub data: *const u8,
    /// Its length in bytes.
    pub data_len: usize,
    /// `count` record descriptors.
    pub records: *const RecordMeta,
}

/// One record a stage refuses, with the reason.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Rejection {
    /// Index of the record in the batch the stage received.
    pub index: u32,
    /// Reason, UTF-8, in the rejection text buffer.
    pub reason_off: u32,
    /// Length of the reason.
    pub reason_len: u32,
}

/// The result of a transform or sink call, allocated by the plugin. The host calls
/// `release(private)` exactly once when done with it, from any thread.
#[repr(C)]
pub struct StageOutput {
    /// Size of this struct as the plugin knows it.
    pub struct_size: u32,
    /// The output batch (transforms only; empty for sinks).
    pub batch: BatchView,
    /// For each output record, the index of the input record it came from.
    pub origins: *const u32,
    /// Records refused, with reasons.
    pub rejections: *const Rejection,
    /// Number of rejections.
    pub rejection_count: u32,
    /// Text of the reasons.
    pub text: *const u8,
    /// Length of the text.
    pub text_len: usize,
    /// For `Status::RETRY`: how long to wait before retrying, in milliseconds (0: host decides).
    pub retry_after_ms: u64,
    /// Frees everything above.
    pub release: Option<unsafe extern "C" fn(private: *mut c_void)>,
    /// Opaque to the host.
    pub private: *mut c_void,
    /// Minor 1, transforms with `acknowledge`: the plugin's number for this batch, handed
    /// back with the batch's [`Settled`] outcomes. Read only when `struct_size` covers it.
    pub sequence: u64,
    /// Minor 3: [`OUTPUT_KEPT`] or 0. Read only when `struct_size` covers it.
    pub flags: u32,
}

/// `StageOutput::flags` bit (minor 3): the output records are input records passed on
/// unchanged, `origins` naming `batch.count` of them in order; `batch.data` and
/// `batch.records` are not read (null is fine), the host keeps its own bytes.
pub const OUTPUT_KEPT: u32 = 1;

impl StageOutput {
    /// Whether a `StageOutput` of `struct_size` bytes has the `sequence` field (minor 1).
    pub fn has_sequence(struct_size: u32) -> bool {
        struct_size as usize >= std::mem::offset_of!(StageOutput, sequence) + std::mem::size_of::<u64>()
    }

    /// Whether a `StageOutput` of `struct_size` bytes has the `flags` field (minor 3).
    pub fn has_flags(struct_size: u32) -> bool {
        struct_size as usize >= std::mem::offset_of!(StageOutput, flags) + std::mem::size_of::<u32>()
    }

    /// An empty output with nothing to release.
    pub fn empty() -> Self {
        StageOutput {
            struct_size: std::mem::size_of::<StageOutput>() as u32,
            batch: BatchView {
                struct_size: std::mem::size_of::<BatchView>() as u32,
                count: 0,
                data: std::ptr::null(),
                data_len: 0,
                records: std::ptr::null(),
            },
            origins: std::ptr::null(),
            rejections: std::ptr::null(),
            rejection_count: 0,
            text: std::ptr::null(),
            text_len: 0,
            retry_after_ms: 0,
            release: None,
            private: std::ptr::null_mut(),
            sequence: 0,
            flags: 0,
        }
    }
}

/// Per-record outcome codes carried by an acknowledgement.
pub mod outcome {
    /// Taken by the pipeline (and, when the pipeline acknowledges after delivery, delivered).
    pub const ACCEPTED: u8 = 0;
    /// Refused by a stage, with a reason (for example a schema violation).
    pub const REJECTED: u8 = 1;
    /// Could not be processed (a stage failed or the pipeline stopped), with a reason.
    pub const FAILED: u8 = 2;
    /// Dropped on purpose by a transform (for example a duplicate).
    pub const DROPPED: u8 = 3;
}

/// An acknowledgement for one emitted batch, borrowed for the duration of the callback.
#[repr(C)]
pub struct AckView {
    /// Size of this struct as the host knows it.
    pub struct_size: u32,
    /// Number of records (as emitted).
    pub count: u32,
    /// `count` outcome codes (see [`outcome`]).
    pub codes: *const u8,
    /// `count` reasons; empty for accepted records.
    pub reasons: *const StrRef,
}

/// Minor 1: what became of the records of one batch a transform passed on, handed to its
/// `acknowledge` function. Borrowed for the duration of the call.
#[repr(C)]
pub struct Settled {
    /// The `StageOutput::sequence` the transform gave the batch.
    pub sequence: u64,
    /// Number of records: the transform's input records, in its input order.
    pub count: u32,
    /// `count` outcome codes (see [`outcome`]).
    pub codes: *const u8,
    /// `count` reasons; empty for accepted records.
    pub reasons: *const StrRef,
}

/// The callback a source hands with each batch. When `emit` returns `Status::OK` the host
/// calls `call(ctx, ack)` exactly once, from any thread; otherwise never.
#[repr(C)]
pub struct AckCallback {
    /// Opaque to the host.
    pub ctx: *mut c_void,
    /// Receives the acknowledgement.
    pub call: Option<unsafe extern "C" fn(ctx: *mut c_void, ack: *const AckView)>,
}

/// The host's emitter, handed to a source at start. Valid for the life of the process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EmitterApi {
    /// Size of this struct as the host knows it.
    pub struct_size: u32,
    /// Opaque to the plugin.
    pub ctx: *const c_void,
    /// Offers a batch. Never blocks: returns `OK`, `FULL` (backpressure) or `CLOSED`.
    /// The batch is copied before it returns.
    pub emit: unsafe extern "C" fn(ctx: *const c_void, batch: *const BatchView, ack: AckCallback) -> Status,
    /// Says the source has emitted everything it ever will (for example a file replayed to
    /// its end). The host drains the pipeline and stops it; later emits get `CLOSED`.
    pub finish: unsafe extern "C" fn(ctx: *const c_void),
}

/// Log levels for [`HostApi::log`].
pub mod level {
    /// Errors.
    pub const ERROR: u32 = 1;
    /// Warnings.
    pub const WARN: u32 = 2;
    /// Information.
    pub const INFO: u32 = 3;
    /// Debugging.
    pub const DEBUG: u32 = 4;
    /// Tracing.
    pub const TRACE: u32 = 5;
}

/// Metric kinds for [`HostApi::metric`].
pub mod metric {
    /// Adds `value` to a counter.
    pub const COUNTER_ADD: u32 = 1;
    /// Sets a gauge to `value`.
    pub const GAUGE_SET: u32 = 2;
}

/// Callbacks from a plugin instance into the host, handed at `create`. The struct and its
/// `ctx` stay valid for the life of the process; all functions may be called from any thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HostApi {
    /// Size of this struct as the host knows it.
    pub struct_size: u32,
    /// Opaque to the plugin.
    pub ctx: *const c_void,
    /// Writes a log line through the host's subscriber, labelled with the stage.
    pub log: unsafe extern "C" fn(ctx: *const c_void, level: u32, message: StrRef),
    /// Updates a plugin metric; the host names it `weir_plugin_<name>` and labels it with the stage.
    pub metric: unsafe extern "C" fn(ctx: *const c_void, kind: u32, name: StrRef, help: StrRef, value: f64),
    /// Reports an error that happened outside a call (for example in a background task).
    pub error: unsafe extern "C" fn(ctx: *const c_void, message: StrRef),
    /// Asks the host for a listening TCP socket on `address`. On `OK` `*fd` is a new file
    /// descriptor the plugin owns. On error `*message` describes it (release it).
    pub listen: unsafe extern "C" fn(ctx: *const c_void, address: StrRef, fd: *mut i32, message: *mut OwnedBytes) -> Status,
    /// The pipeline's name.
    pub pipeline: StrRef,
    /// The stage's name.
    pub stage: StrRef,
    /// The directory of the pipeline file; relative paths in configs are relative to it.
    pub base_dir: StrRef,
    /// Minor 2: serves the HTTP paths `routes` (newline-separated; ending in `/` for a
    /// prefix) on `address`, which stages of other plugins and pipelines may share. On `OK`
    /// `*fd` is the stage's end of a Unix `SOCK_SEQPACKET` socket over which connections for
    /// those paths arrive (see ABI.md, "Shared HTTP addresses"). Read only when
    /// `struct_size` covers it.
    pub listen_routes:
        Option<unsafe extern "C" fn(ctx: *const c_void, address: StrRef, routes: StrRef, fd: *mut i32, message: *mut OwnedBytes) -> Status>,
    /// Minor 4: reports whether an external system the stage depends on answers.
    /// `dependency` names it (`kafka`, `s3`, `postgres`), `target` says where it is (no
    /// secrets), `up` is 1 or 0, `message` says why not (may be empty). The host keeps the
    /// last report per dependency (see ABI.md, "Dependency health"). Read only when
    /// `struct_size` covers it.
    pub report_health: Option<unsafe extern "C" fn(ctx: *const c_void, dependency: StrRef, target: StrRef, up: u32, message: StrRef)>,
    /// Minor 4: the last health reports of every stage of the stage's pipeline, as JSON in
    /// `*out` (release it): `{"STAGE": {"DEPENDENCY": {"up", "target", "message", "since"}}}`.
    /// Read only when `struct_size` covers it.
    pub pipeline_health: Option<unsafe extern "C" fn(ctx: *const c_void, out: *mut OwnedBytes) -> Status>,
}

/// Copies the host's callbacks as far as the host's `struct_size` goes; fields a host of an
/// older minor does not have are left zero (they are all `Option`s: `None`).
///
/// # Safety
/// `host` points at a `HostApi` whose `struct_size` says how many bytes of it are valid.
pub unsafe fn read_host_api(host: *const HostApi) -> HostApi {
    let size = ((*host).struct_size as usize).min(std::mem::size_of::<HostApi>());
    let mut out = std::mem::MaybeUninit::<HostApi>::zeroed();
    std::ptr::copy_nonoverlapping(host.cast::<u8>(), out.as_mut_ptr().cast::<u8>(), size);
    // Every field past a minor-0 host's size is an Option of a function pointer, for which
    // zero is None.
    out.assume_init()
}

/// One plugin in a library.
#[repr(C)]
#[derive(Debug)]
pub struct PluginDescriptor {
    /// Size of this struct as the library knows it.
    pub struct_size: u32,
    /// Source, transform or sink.
    pub kind: Kind,
    /// The name used in pipeline files (`plugin: NAME`).
    pub name: StrRef,
    /// One line for `weir plugins`.
    pub description: StrRef,
    /// JSON Schema of the config, as JSON text.
    pub config_schema: StrRef,
    /// Checks a JSON config without side effects. On error fills `message`.
    pub validate: unsafe extern "C" fn(config: StrRef, message: *mut OwnedBytes) -> Status,
    /// Creates an instance from a JSON config. On error fills `message`.
    pub create: unsafe extern "C" fn(config: StrRef, host: *const HostApi, instance: *mut *mut c_void, message: *mut OwnedBytes) -> Status,
    /// Frees an instance. Called once, after every other call on it returned.
    pub destroy: unsafe extern "C" fn(instance: *mut c_void),
    /// Sources: starts producing through `emitter`.
    pub start: Option<unsafe extern "C" fn(instance: *mut c_void, emitter: EmitterApi, message: *mut OwnedBytes) -> Status>,
    /// Sources and sinks: stops (sources stop emitting; sinks flush). Returns when done.
    pub stop: Option<unsafe extern "C" fn(instance: *mut c_void, message: *mut OwnedBytes) -> Status>,
    /// Transforms and sinks: processes one batch. On any status the plugin may fill
    /// `output`; the host releases it.
    pub process: Option<
        unsafe extern "C" fn(instance: *mut c_void, batch: *const BatchView, output: *mut StageOutput, message: *mut OwnedBytes) -> Status,
    >,
    /// Minor 1, transforms (optional): the outcomes of batches the instance processed, once
    /// every sink is done with them and before their source is acknowledged (`settled` points
    /// to `count` of them). From any thread, never concurrently with another call on the
    /// instance. Read only when `struct_size` covers it.
    pub acknowledge:
        Option<unsafe extern "C" fn(instance: *mut c_void, settled: *const Settled, count: u32, message: *mut OwnedBytes) -> Status>,
    /// Minor 3: [`PLUGIN_IN_ORDER`] (transforms), minor 5: [`PLUGIN_WORKERS`] (sinks), or 0.
    /// Read only when `struct_size` covers it (0 otherwise).
    pub flags: u32,
    /// Minor 6, sources (optional): answers an operator's request about the running
    /// instance, such as its offsets (see ABI.md, "Source control"). `request` is JSON; on
    /// `OK` the plugin fills `response` with JSON, otherwise `message` with the reason
    /// (`INVALID_ARGUMENT`: the request cannot be done now or is malformed). May be called
    /// from any thread between `start` and `stop`, never concurrently with another call on
    /// the instance. Read only when `struct_size` covers it.
    pub control:
        Option<unsafe extern "C" fn(instance: *mut c_void, request: StrRef, response: *mut OwnedBytes, message: *mut OwnedBytes) -> Status>,
    /// Minor 7, transforms (optional): the condition the instance's whole work is, when it
    /// is one (see ABI.md, "Declared conditions"). On `OK` the plugin fills `condition` with
    /// JSON (`{"expression", "keeps", "on_error"}`), or leaves it empty when the instance
    /// declares none. A host that takes the declaration evaluates the condition itself and
    /// no longer calls `process` for the instance. Called once, after `create`. Read only
    /// when `struct_size` covers it.
    pub condition: Option<unsafe extern "C" fn(instance: *mut c_void, condition: *mut OwnedBytes, message: *mut OwnedBytes) -> Status>,
}

/// `PluginDescriptor::flags` bit (minor 3), transforms: the stage must see batches in
/// source order, one at a time, also when a pipeline runs several transform workers (its
/// state depends on which record came first: `dedupe` passes the first copy of a key).
pub const PLUGIN_IN_ORDER: u32 = 1;

/// `PluginDescriptor::flags` bit (minor 5), sinks: several instances of the sink may write
/// side by side, each a batch (`workers` in a pipeline), and batches may be written out of
/// order. Not for a sink that holds one resource (a file it truncates, an address it
/// listens on) or whose destination keeps arrival order (a Kafka partition).
pub const PLUGIN_WORKERS: u32 = 2;

impl PluginDescriptor {
    /// Size of a descriptor of ABI minor 0, which ends with `process`.
    pub const MINOR_0_SIZE: usize = std::mem::offset_of!(PluginDescriptor, acknowledge);
}

/// What the entry symbol returns. Static: valid for the life of the process.
#[repr(C)]
pub struct Manifest {
    /// ABI major version the library was built for.
    pub abi_major: u16,
    /// ABI minor version the library was built for.
    pub abi_minor: u16,
    /// Size of this struct as the library knows it.
    pub struct_size: u32,
    /// The library's name (its crate name).
    pub library_name: StrRef,
    /// The library's version.
    pub library_version: StrRef,
    /// How the library was built: `key=value` pairs separated by `; ` (keys `sdk`,
    /// `compiler`, `target`, `profile`), or free text.
    pub build_info: StrRef,
    /// Number of plugins.
    pub plugin_count: u32,
    /// `plugin_count` descriptors.
    pub plugins: *const PluginDescriptor,
    /// Minor 1: bits about the library ([`LIBRARY_OPT_IN`]); 0 for none. Read only when
    /// `struct_size` covers it (see [`Manifest::flags`]).
    pub flags: u32,
}

/// [`Manifest::flags`] bit: a test or example library. The host loads it only from a plugin
/// directory the user named (`--plugins`, `WEIR_PLUGINS`, `plugins:`), never by default from
/// the directory of the `weir` executable, where a workspace build puts it beside the real
/// plugins.
pub const LIBRARY_OPT_IN: u32 = 1;

impl Manifest {
    /// Size of a manifest of ABI minor 0, which ends with `plugins`.
    pub const MINOR_0_SIZE: usize = std::mem::offset_of!(Manifest, flags);

    /// The library's flags; 0 for a library whose manifest has no `flags` field (minor 0).
    pub fn flags(&self) -> u32 {
        if self.struct_size as usize >= std::mem::offset_of!(Manifest, flags) + std::mem::size_of::<u32>() {
            self.flags
        } else {
            0
        }
    }
}

// SAFETY: the manifest and descriptors are immutable after creation and point only to
// `'static` data.
unsafe impl Send for Manifest {}
unsafe impl Sync for Manifest {}
unsafe impl Send for PluginDescriptor {}
unsafe impl Sync for PluginDescriptor {}
unsafe impl Send for HostApi {}
unsafe impl Sync for HostApi {}
unsafe impl Send for EmitterApi {}
unsafe impl Sync for EmitterApi {}

/// Moves a `Vec<u8>` across the boundary as an [`OwnedBytes`].
pub fn owned_bytes(bytes: Vec<u8>) -> OwnedBytes {
    let boxed: Box<Vec<u8>> = Box::new(bytes);
    let ptr = boxed.as_ptr();
    let len = boxed.len();
    OwnedBytes { ptr, len, release: Some(release_vec), private: Box::into_raw(boxed).cast() }
}

unsafe extern "C" fn release_vec(private: *mut c_void) {
    if !private.is_null() {
        drop(Box::from_raw(private.cast::<Vec<u8>>()));
    }
}

/// Takes the text out of an [`OwnedBytes`] and releases it.
///
/// # Safety
/// `buf` must be empty or a buffer filled by the other side that was not released yet.
pub unsafe fn take_owned_string(buf: &mut OwnedBytes) -> String {
    let text = String::from_utf8_lossy(StrRef { ptr: buf.ptr, len: buf.len }.as_bytes()).into_owned();
    if let Some(release) = buf.release.take() {
        release(buf.private);
    }
    *buf = OwnedBytes::EMPTY;
    text
}
