//! Fault injection for Weir's own tests: the `test-panic` transform panics on any record
//! whose value contains the configured marker; the `test-slow` sink takes a fixed time
//! per batch, so tests can fill a pipeline and see it push back; the `test-stamp` transform
//! adds `"stamp": "<the library's stamp>"` to each record, so a test can tell which build
//! of this library handled it (tests make a "rebuilt" library by changing the stamp bytes).

use std::time::Duration;

use weir_plugin::{BatchRef, Context, Deserialize, JsonSchema, Output, PluginError, Rejections, Sink, Transform};

/// Config of `test-panic`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PanicConfig {
    /// A record whose value contains this text makes the transform panic.
    pub marker: String,
}

/// The `test-panic` transform.
pub struct PanicOn {
    marker: Vec<u8>,
}

impl Transform for PanicOn {
    type Config = PanicConfig;
    const NAME: &'static str = "test-panic";
    const DESCRIPTION: &'static str = "For Weir's tests: panics on records containing a marker.";

    fn create(config: PanicConfig, _ctx: Context) -> Result<Self, PluginError> {
        Ok(PanicOn { marker: config.marker.into_bytes() })
    }

    fn process(&mut self, input: &BatchRef<'_>, out: &mut Output) -> Result<(), PluginError> {
        for (i, r) in input.iter().enumerate() {
            if r.value.windows(self.marker.len().max(1)).any(|w| w == self.marker.as_slice()) {
                panic!("test-panic: record {i} carries the marker");
            }
            out.pass(i, &r);
        }
        Ok(())
    }
}

/// Config of `test-slow`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlowConfig {
    /// Milliseconds each batch takes.
    pub delay_ms: u64,
    /// A secret this careless sink logs at start (its schema marks it `writeOnly`, so the
    /// host masks it), for the tests of secrecy by schema.
    #[serde(default)]
    #[schemars(extend("writeOnly" = true))]
    pub handshake: Option<String>,
}

/// The `test-slow` sink: delivers nowhere, slowly.
pub struct Slow {
    delay: Duration,
}

impl Sink for Slow {
    type Config = SlowConfig;
    const NAME: &'static str = "test-slow";
    const DESCRIPTION: &'static str = "For Weir's tests: a sink that takes a fixed time per batch.";

    fn create(config: SlowConfig, ctx: Context) -> Result<Self, PluginError> {
        if let Some(handshake) = &config.handshake {
            ctx.warn(&format!("careless: connecting with handshake {handshake}"));
        }
        Ok(Slow { delay: Duration::from_millis(config.delay_ms) })
    }

    fn write(&mut self, _batch: &BatchRef<'_>, _rejections: &mut Rejections) -> Result<(), PluginError> {
        std::thread::sleep(self.delay);
        Ok(())
    }
}

/// The stamp of this build, found and replaced in the library file by the reload tests.
#[used]
pub static WEIR_TEST_STAMP: [u8; 16] = *b"weir-stamp:v0001";

/// Config of `test-stamp`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StampConfig {}

/// The `test-stamp` transform.
pub struct Stamp;

impl Transform for Stamp {
    type Config = StampConfig;
    const NAME: &'static str = "test-stamp";
    const DESCRIPTION: &'static str = "For Weir's tests: adds the library's build stamp to each record.";

    fn create(_config: StampConfig, _ctx: Context) -> Result<Self, PluginError> {
        Ok(Stamp)
    }

    fn process(&mut self, input: &BatchRef<'_>, out: &mut Output) -> Result<(), PluginError> {
        // Read through an opaque pointer, so the bytes in the file are what counts.
        let stamp = String::from_utf8_lossy(std::hint::black_box(&WEIR_TEST_STAMP)).into_owned();
        for (i, r) in input.iter().enumerate() {
            match weir_plugin::serde_json::from_slice::<weir_plugin::serde_json::Value>(r.value) {
                Ok(weir_plugin::serde_json::Value::Object(mut map)) => {
                    map.insert("stamp".into(), stamp.clone().into());
                    out.push(i, weir_plugin::Head::from(&r), weir_plugin::serde_json::Value::Object(map).to_string().as_bytes());
                }
                _ => out.reject(i, "not a JSON object"),
            }
        }
        Ok(())
    }
}

/// Config of `test-flaky`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlakyConfig {
    /// A record containing this text is rejected with the reason `poison record`.
    #[serde(default)]
    pub reject_marker: Option<String>,
    /// A batch with a record containing this text is answered `Retry` (an outage that never ends).
    #[serde(default)]
    pub outage_marker: Option<String>,
    /// The first this many batches are failed for good (`Fatal`), whatever they hold.
    #[serde(default)]
    pub fail_first_batches: u32,
}

/// The `test-flaky` sink: fails the first batches for good, rejects marked records, asks to
/// retry marked batches, delivers nowhere.
pub struct Flaky {
    config: FlakyConfig,
    /// Batches failed so far.
    failed: u32,
}

fn contains(value: &[u8], marker: &Option<String>) -> bool {
    marker.as_ref().is_some_and(|m| value.windows(m.len().max(1)).any(|w| w == m.as_bytes()))
}

impl Sink for Flaky {
    type Config = FlakyConfig;
    const NAME: &'static str = "test-flaky";
    const DESCRIPTION: &'static str = "For Weir's tests: a sink that rejects or keeps retrying marked records.";
    const WORKERS: bool = true;

    fn create(config: FlakyConfig, _ctx: Context) -> Result<Self, PluginError> {
        Ok(Flaky { config, failed: 0 })
    }

    fn write(&mut self, batch: &BatchRef<'_>, rejections: &mut Rejections) -> Result<(), PluginError> {
        if self.failed < self.config.fail_first_batches {
            self.failed += 1;
            return Err(PluginError::fatal("the destination refused the batch for good"));
        }
        if batch.iter().any(|r| contains(r.value, &self.config.outage_marker)) {
            return Err(PluginError::retry("the destination is down"));
        }
        for (i, r) in batch.iter().enumerate() {
            if contains(r.value, &self.config.reject_marker) {
                rejections.reject(i, "poison record");
            }
        }
        Ok(())
    }
}

/// Config of `test-meet`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MeetConfig {
    /// Each batch waits until this many batches have been written at the same moment (by
    /// the stage's instances in this process), proving that they overlap.
    pub together: usize,
    /// How long a batch waits for that before it is failed for good.
    #[serde(default = "meet_timeout")]
    pub timeout_ms: u64,
}

fn meet_timeout() -> u64 {
    10_000
}

/// Batches being written now, and the most there ever were at once.
static MEETING: (std::sync::Mutex<(usize, usize)>, std::sync::Condvar) = (std::sync::Mutex::new((0, 0)), std::sync::Condvar::new());

/// The `test-meet` sink: delivers nowhere, but only once `together` batches were written at
/// once; fails batches for good when they never are.
pub struct Meet {
    config: MeetConfig,
}

impl Sink for Meet {
    type Config = MeetConfig;
    const NAME: &'static str = "test-meet";
    const DESCRIPTION: &'static str = "For Weir's tests: a sink whose batches wait until several are written at once.";
    const WORKERS: bool = true;

    fn create(config: MeetConfig, _ctx: Context) -> Result<Self, PluginError> {
        Ok(Meet { config })
    }

    fn write(&mut self, _batch: &BatchRef<'_>, _rejections: &mut Rejections) -> Result<(), PluginError> {
        let (lock, met) = &MEETING;
        let mut state = lock.lock().unwrap_or_else(|p| p.into_inner());
        state.0 += 1;
        state.1 = state.1.max(state.0);
        met.notify_all();
        let wait = Duration::from_millis(self.config.timeout_ms);
        let (mut state, _) = met.wait_timeout_while(state, wait, |s| s.1 < self.config.together).unwrap_or_else(|p| p.into_inner());
        state.0 -= 1;
        if state.1 < self.config.together {
            return Err(PluginError::fatal(format!("only {} batches were written at once, not {}", state.1, self.config.together)));
        }
        Ok(())
    }
}

// opt_in: only for Weir's own tests; never loaded from beside the weir binary unless named.
weir_plugin::export_plugins!(opt_in; transform PanicOn, transform Stamp, sink Slow, sink Flaky, sink Meet);
