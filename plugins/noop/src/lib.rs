//! The `noop` transform: passes every record through unchanged. Useful to measure what
//! the plugin boundary itself costs, and as a placeholder while building a pipeline.

use weir_plugin::{BatchRef, Context, Deserialize, JsonSchema, Output, PluginError, Transform};

/// Config of the `noop` transform: it takes none.
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

weir_plugin::export_plugins!(transform Noop);

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
