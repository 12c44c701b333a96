//! The `__NAME__` source: emits `count` numbered records, `{"n": 0, "message": "…"}`, in
//! batches of `batch_size`, then says it has finished. Replace the loop in `start` with
//! your own reading (a socket, a client library's poll loop, a directory to watch).

use std::time::Duration;

use weir_plugin::serde_json::json;
use weir_plugin::{
    BatchBuf, Context, Deserialize, EmitError, Emitter, JsonSchema, PluginError, Source, Worker,
};

/// Config of the `__NAME__` source.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct __TYPE__Config {
    /// How many records to emit before finishing.
    #[serde(default = "default_count")]
    pub count: u64,
    /// The text each record carries in its `message` member.
    #[serde(default = "default_message")]
    pub message: String,
    /// Records per batch (at least 1).
    #[serde(default = "default_batch_size")]
    pub batch_size: u64,
}

fn default_count() -> u64 {
    10
}

fn default_message() -> String {
    "hello".to_owned()
}

fn default_batch_size() -> u64 {
    100
}

/// The `__NAME__` source.
pub struct __TYPE__ {
    config: __TYPE__Config,
    ctx: Context,
    worker: Option<Worker>,
}

impl Source for __TYPE__ {
    type Config = __TYPE__Config;
    const NAME: &'static str = "__NAME__";
    const DESCRIPTION: &'static str = "Emits `count` numbered records, then finishes.";

    fn validate(config: &__TYPE__Config) -> Result<(), PluginError> {
        // A message that starts with a JSON pointer is shown at that field's line.
        match config.batch_size {
            0 => Err(PluginError::config("/batch_size: must be at least 1")),
            _ => Ok(()),
        }
    }

    fn create(config: __TYPE__Config, ctx: Context) -> Result<Self, PluginError> {
        Ok(__TYPE__ {
            config,
            ctx,
            worker: None,
        })
    }

    fn start(&mut self, emitter: Emitter) -> Result<(), PluginError> {
        // `start` must not block: the loop runs on a thread of its own until `stop`.
        let config = self.config.clone();
        let ctx = self.ctx;
        self.worker = Some(Worker::spawn("__NAME__", move |stop| {
            let mut next = 0;
            while next < config.count && !stop.is_set() {
                let end = (next + config.batch_size).min(config.count);
                let mut batch = BatchBuf::new();
                for (i, n) in (next..end).enumerate() {
                    let value = json!({"n": n, "message": config.message}).to_string();
                    batch.push(i as u32, Default::default(), value.as_bytes());
                }
                // The callback hears what became of the batch once every sink is done
                // with it: the place to commit a position in the system read from.
                match emitter.emit(&batch.as_ref(), |_ack| {}) {
                    Ok(()) => next = end,
                    // Backpressure: the pipeline is full; offer the same batch again soon.
                    Err(EmitError::Full) => std::thread::sleep(Duration::from_millis(5)),
                    Err(EmitError::Closed) => return,
                    Err(e) => return ctx.report_error(&format!("batch refused: {e}")),
                }
            }
            if next == config.count {
                emitter.finish();
            }
        })?);
        Ok(())
    }

    fn stop(&mut self) -> Result<(), PluginError> {
        if let Some(mut worker) = self.worker.take() {
            worker.stop();
        }
        Ok(())
    }
}

weir_plugin::export_plugins!(source __TYPE__);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::mock::{run_source, MockHost};

    #[test]
    fn emits_every_record_then_finishes() {
        let host = MockHost::new();
        let mut source: __TYPE__ = host
            .source(json!({"count": 5, "message": "hi", "batch_size": 2}))
            .unwrap();
        let emitted = run_source(&mut source, false).unwrap();
        // The records come from the source's own thread: wait until it says it finished.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !emitted.is_finished() && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        source.stop().unwrap();
        let values: Vec<String> = emitted
            .values()
            .into_iter()
            .map(|v| String::from_utf8(v).unwrap())
            .collect();
        assert_eq!(values.len(), 5);
        assert_eq!(values[4], r#"{"message":"hi","n":4}"#);
        assert_eq!(
            emitted.batches.lock().unwrap().len(),
            3,
            "batches of 2, 2 and 1"
        );
        assert!(emitted.is_finished());
    }

    #[test]
    fn configs_are_checked_as_the_host_checks_them() {
        let host = MockHost::new();
        let zero = host
            .source::<__TYPE__>(json!({"batch_size": 0}))
            .err()
            .unwrap();
        assert!(
            zero.to_string().contains("/batch_size: must be at least 1"),
            "{zero}"
        );
        let unknown = host.source::<__TYPE__>(json!({"cuont": 2})).err().unwrap();
        assert!(
            unknown.to_string().contains("unknown field `cuont`"),
            "{unknown}"
        );
    }
}
