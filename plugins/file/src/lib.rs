//! The `file` sink writes each record's value as one JSON line to a file or stdout; the
//! `file` source replays a JSON array or JSON-lines file, then finishes.

mod source;

pub use source::{FileSource, FileSourceConfig};

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use weir_plugin::serde::de::IgnoredAny;
use weir_plugin::serde_json;
use weir_plugin::{BatchRef, Context, Deserialize, JsonSchema, PluginError, Rejections, Sink};

/// Config of the `file` sink.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The file (`-` for stdout); a relative path is taken from the pipeline file's
    /// directory. Missing parent directories are created.
    pub path: PathBuf,
    /// Append to an existing file (otherwise it is truncated at start).
    #[serde(default = "yes")]
    pub append: bool,
    /// Call fsync after each batch, so an acknowledged batch survives a power loss.
    #[serde(default)]
    pub fsync: bool,
}

fn yes() -> bool {
    true
}

enum Out {
    Stdout(std::io::Stdout),
    File(BufWriter<std::fs::File>),
}

/// The `file` sink.
pub struct FileSink {
    out: Out,
    fsync: bool,
    line: Vec<u8>,
}

impl FileSink {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.out {
            Out::Stdout(s) => s.lock().write_all(bytes),
            Out::File(f) => f.write_all(bytes),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.out {
            Out::Stdout(s) => s.flush(),
            Out::File(f) => {
                f.flush()?;
                if self.fsync {
                    f.get_ref().sync_data()?;
                }
                Ok(())
            }
        }
    }
}

fn io_error(e: std::io::Error) -> PluginError {
    PluginError::retry(format!("cannot write: {e}"))
}

impl Sink for FileSink {
    type Config = FileConfig;
    const NAME: &'static str = "file";
    const DESCRIPTION: &'static str = "Writes records as JSON lines to a file or stdout.";

    fn create(config: FileConfig, ctx: Context) -> Result<Self, PluginError> {
        let out = if config.path.as_os_str() == "-" {
            Out::Stdout(std::io::stdout())
        } else {
            let path = ctx.resolve(&config.path);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| PluginError::config(format!("cannot create {}: {e}", dir.display())))?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(config.append)
                .write(true)
                .truncate(!config.append)
                .open(&path)
                .map_err(|e| PluginError::config(format!("cannot open {}: {e}", path.display())))?;
            Out::File(BufWriter::with_capacity(256 * 1024, file))
        };
        Ok(FileSink { out, fsync: config.fsync, line: Vec::new() })
    }

    fn write(&mut self, batch: &BatchRef<'_>, rejections: &mut Rejections) -> Result<(), PluginError> {
        let mut buf = std::mem::take(&mut self.line);
        buf.clear();
        for (i, r) in batch.iter().enumerate() {
            if r.value.contains(&b'\n') {
                // A JSON line must be one line. Valid JSON has line breaks only between
                // tokens (inside strings they are escaped), so each becomes a space; every
                // value keeps its bytes.
                if let Err(e) = serde_json::from_slice::<IgnoredAny>(r.value) {
                    rejections.reject(i, &format!("not valid JSON, so it cannot be written as one line: {e}"));
                    continue;
                }
                buf.extend(r.value.iter().map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }));
            } else {
                buf.extend_from_slice(r.value);
            }
            buf.push(b'\n');
        }
        let result = self.write_all(&buf).and_then(|_| self.flush()).map_err(io_error);
        self.line = buf;
        result
    }

    fn stop(&mut self) -> Result<(), PluginError> {
        self.flush().map_err(io_error)
    }
}

weir_plugin::export_plugins!(source FileSource, sink FileSink);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::mock::{json_batch, MockHost};

    #[test]
    fn writes_one_line_per_record() {
        let dir = std::env::temp_dir().join(format!("weir-file-{}", std::process::id()));
        let host = MockHost::with_base_dir(dir.to_str().unwrap());
        let config: FileConfig = serde_json::from_value(serde_json::json!({"path": "out/events.jsonl", "append": false})).unwrap();
        let mut sink = FileSink::create(config, host.context()).unwrap();
        let mut rejections = Rejections::new();
        let pretty = "{\r\n\"b\": 12345678901234567890123,\n\"c\": [1.10,\n-0]\n}";
        sink.write(&json_batch([r#"{"a":1}"#, pretty, "{oops\n"]).as_ref(), &mut rejections).unwrap();
        sink.stop().unwrap();
        let text = std::fs::read_to_string(dir.join("out/events.jsonl")).unwrap();
        assert_eq!(
            text, "{\"a\":1}\n{  \"b\": 12345678901234567890123, \"c\": [1.10, -0] }\n",
            "line breaks become spaces, values keep their bytes"
        );
        assert_eq!(rejections.iter().next().unwrap().0, 2);
    }
}
