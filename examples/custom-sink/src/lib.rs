//! A sink in a few lines: it counts records and bytes, reports them as host metrics
//! (`weir_plugin_example_records_total`, `weir_plugin_example_bytes_total`) and logs a
//! line every `every` records. Build it, point `weir --plugins` at it, use `plugin: counter`.

use weir_plugin::{BatchRef, Context, Deserialize, JsonSchema, PluginError, Rejections, Sink};

/// Config of the `counter` sink.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CounterConfig {
    /// Log a summary line every this many records.
    #[serde(default = "default_every")]
    pub every: u64,
}

fn default_every() -> u64 {
    1000
}

/// The `counter` sink.
pub struct Counter {
    ctx: Context,
    every: u64,
    records: u64,
    bytes: u64,
}

impl Sink for Counter {
    type Config = CounterConfig;
    const NAME: &'static str = "counter";
    const DESCRIPTION: &'static str = "Example sink: counts records and bytes, logs a summary.";

    fn validate(config: &CounterConfig) -> Result<(), PluginError> {
        match config.every {
            0 => Err(PluginError::config("every must be at least 1")),
            _ => Ok(()),
        }
    }

    fn create(config: CounterConfig, ctx: Context) -> Result<Self, PluginError> {
        Ok(Counter { ctx, every: config.every, records: 0, bytes: 0 })
    }

    fn write(&mut self, batch: &BatchRef<'_>, _rejections: &mut Rejections) -> Result<(), PluginError> {
        let bytes: u64 = batch.iter().map(|r| r.value.len() as u64).sum();
        let before = self.records / self.every;
        self.records += batch.len() as u64;
        self.bytes += bytes;
        self.ctx.counter_add("example_records", "Records the example sink counted.", batch.len() as u64);
        self.ctx.counter_add("example_bytes", "Bytes the example sink counted.", bytes);
        if self.records / self.every > before {
            self.ctx.info(&format!("Counted {} records ({} bytes).", self.records, self.bytes));
        }
        Ok(())
    }
}

// `opt_in;`: an example, so a plain `weir run` beside a workspace build leaves it out; it is
// loaded from a directory named with `--plugins`. Leave `opt_in;` out in a plugin of your own.
weir_plugin::export_plugins!(opt_in; sink Counter);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::mock::{json_batch, run_sink, MockHost};
    use weir_plugin::serde_json::json;

    #[test]
    fn counts_and_logs_through_the_mock_host() {
        let host = MockHost::new();
        let mut sink: Counter = host.sink(json!({"every": 2})).unwrap();
        let refused = run_sink(&mut sink, &json_batch(["{}", "[1]", "2"])).unwrap();
        assert!(refused.is_empty());
        assert_eq!(host.metric("example_records"), Some(3.0));
        assert_eq!(host.metric("example_bytes"), Some(6.0));
        assert_eq!(host.logs()[0].1, "Counted 3 records (6 bytes).");
        run_sink(&mut sink, &json_batch(["{}"])).unwrap();
        assert_eq!(host.logs().last().unwrap().1, "Counted 4 records (8 bytes).", "a line each time 2 more were counted");
        run_sink(&mut sink, &json_batch(["{}"])).unwrap();
        assert_eq!(host.logs().len(), 2, "5 records: no new line until the sixth");
    }

    #[test]
    fn configs_are_checked_as_the_host_checks_them() {
        let host = MockHost::new();
        let zero = host.sink::<Counter>(json!({"every": 0})).err().unwrap();
        assert!(zero.to_string().contains("every must be at least 1"), "{zero}");
        let unknown = host.sink::<Counter>(json!({"evrey": 2})).err().unwrap();
        assert!(unknown.to_string().contains("unknown field `evrey`"), "{unknown}");
    }
}
