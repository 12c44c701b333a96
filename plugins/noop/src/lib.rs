//! The `noop` transform passes every record through unchanged; the `discard` sink drops
//! every record. Useful to measure what the plugin boundary and a source cost, and as
//! placeholders while building a pipeline.

use weir_plugin::{BatchRef, Context, Deserialize, JsonSchema, Output, PluginError, Rejections, Sink, Transform};

/// Config of the `noop` transform and the `discard` sink: they take none.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoopConfig {}

/// The `noop` transform.
pub struct Noop;

impl Transform for Noop {
    type Config = NoopConfig;
    const NAME: &'static str = "noop";
    const DESCRIPTION: &'static str = "Passes every record through unchanged.";

    fn create(_config: NoopConfig, _ctx: Context) -> Result<Self, PluginError> {
        Ok(Noop)
    }

    fn process(&mut self, input: &BatchRef<'_>, out: &mut Output) -> Result<(), PluginError> {
        for (i, r) in input.iter().enumerate() {
            out.pass(i, &r);
        }
        Ok(())
    }
}

/// The `discard` sink: accepts every batch and keeps nothing.
pub struct Discard;

impl Sink for Discard {
    type Config = NoopConfig;
    const NAME: &'static str = "discard";
    const DESCRIPTION: &'static str = "Accepts every record and keeps nothing.";
    const WORKERS: bool = true;

    fn create(_config: NoopConfig, _ctx: Context) -> Result<Self, PluginError> {
        Ok(Discard)
    }

    fn write(&mut self, _batch: &BatchRef<'_>, _rejections: &mut Rejections) -> Result<(), PluginError> {
        Ok(())
    }
}

weir_plugin::export_plugins!(transform Noop, sink Discard);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::mock::{json_batch, run_transform, MockHost};

    #[test]
    fn passes_everything() {
        let mut t: Noop = MockHost::new().transform(weir_plugin::serde_json::json!({})).unwrap();
        let out = run_transform(&mut t, &json_batch(["{}", "[1]"])).unwrap();
        assert_eq!(out.batch.len(), 2);
        assert_eq!(out.batch.as_ref().get(1).value, b"[1]");
    }
}
