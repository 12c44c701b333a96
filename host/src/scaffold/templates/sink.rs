//! The `__NAME__` sink: appends each record's value as one line to the file at `path`,
//! refusing empty records with a reason (the host sends refused records to the pipeline's
//! dead letters). Replace `write` with your own delivery (a database, an API).

use std::fs::File;
use std::io::{BufWriter, Write};

use weir_plugin::{BatchRef, Context, Deserialize, JsonSchema, PluginError, Rejections, Sink};

/// Config of the `__NAME__` sink.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct __TYPE__Config {
    /// The file to append to; a relative path is taken from the pipeline file's directory.
    pub path: String,
}

/// The `__NAME__` sink.
pub struct __TYPE__ {
    out: BufWriter<File>,
    ctx: Context,
}

impl Sink for __TYPE__ {
    type Config = __TYPE__Config;
    const NAME: &'static str = "__NAME__";
    const DESCRIPTION: &'static str = "Appends each record to a file, one line each.";

    fn validate(config: &__TYPE__Config) -> Result<(), PluginError> {
        // A message that starts with a JSON pointer is shown at that field's line.
        match config.path.is_empty() {
            true => Err(PluginError::config("/path: must not be empty")),
            false => Ok(()),
        }
    }

    fn create(config: __TYPE__Config, ctx: Context) -> Result<Self, PluginError> {
        let path = ctx.resolve(&config.path);
        let file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| {
                PluginError::config(format!("/path: cannot open {}: {e}", path.display()))
            })?;
        Ok(__TYPE__ {
            out: BufWriter::new(file),
            ctx,
        })
    }

    fn write(
        &mut self,
        batch: &BatchRef<'_>,
        rejections: &mut Rejections,
    ) -> Result<(), PluginError> {
        let mut written = 0;
        for (i, record) in batch.iter().enumerate() {
            if record.value.is_empty() {
                rejections.reject(i, "empty record");
                continue;
            }
            // An I/O error is worth retrying: the host retries the batch with backoff.
            let line = self
                .out
                .write_all(record.value)
                .and_then(|()| self.out.write_all(b"\n"));
            line.map_err(|e| PluginError::retry(e.to_string()))?;
            written += 1;
        }
        // Returning Ok means the records are delivered: flush before answering.
        self.out
            .flush()
            .map_err(|e| PluginError::retry(e.to_string()))?;
        self.ctx.counter_add(
            "__METRIC___lines",
            "Lines the __NAME__ sink wrote.",
            written,
        );
        Ok(())
    }

    fn stop(&mut self) -> Result<(), PluginError> {
        self.out
            .flush()
            .map_err(|e| PluginError::fatal(e.to_string()))
    }
}

weir_plugin::export_plugins!(sink __TYPE__);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::mock::{json_batch, run_sink, MockHost};
    use weir_plugin::serde_json::json;

    #[test]
    fn appends_lines_and_refuses_empty_records() {
        let dir = std::env::temp_dir().join(format!("__CRATE__-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let host = MockHost::with_base_dir(dir.to_str().unwrap());
        let mut sink: __TYPE__ = host.sink(json!({"path": "out.jsonl"})).unwrap();
        let refused = run_sink(&mut sink, &json_batch([r#"{"id":1}"#, "", r#"{"id":3}"#])).unwrap();
        assert_eq!(refused.iter().collect::<Vec<_>>(), [(1, "empty record")]);
        assert_eq!(
            std::fs::read_to_string(dir.join("out.jsonl")).unwrap(),
            "{\"id\":1}\n{\"id\":3}\n"
        );
        assert_eq!(host.metric("__METRIC___lines"), Some(2.0));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn configs_are_checked_as_the_host_checks_them() {
        let host = MockHost::new();
        let empty = host.sink::<__TYPE__>(json!({"path": ""})).err().unwrap();
        assert!(
            empty.to_string().contains("/path: must not be empty"),
            "{empty}"
        );
        let unknown = host
            .sink::<__TYPE__>(json!({"path": "x", "pth": "y"}))
            .err()
            .unwrap();
        assert!(
            unknown.to_string().contains("unknown field `pth`"),
            "{unknown}"
        );
    }
}
