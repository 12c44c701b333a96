//! Fault injection for Weir's own tests: the `test-panic` transform panics on any record
//! whose value contains the configured marker, and passes the others through.

use weir_plugin::{BatchRef, Context, Deserialize, JsonSchema, Output, PluginError, Transform};

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
        Ok(PanicOn {
            marker: config.marker.into_bytes(),
        })
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

weir_plugin::export_plugins!(transform PanicOn);
