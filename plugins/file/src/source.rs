//! The `file` source: replays a JSON array or JSON-lines file into the pipeline, in
//! batches, then tells the host it has finished.

use std::io::{BufRead, BufReader};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weir_plugin::serde_json::{self, value::RawValue};
use weir_plugin::{BatchBuf, Context, Deserialize, EmitError, Emitter, Head, JsonSchema, Outcome, PluginError, Source, StopFlag, Worker};

/// How the file is laid out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// A JSON array when the file starts with `[`, JSON lines otherwise.
    #[default]
    Auto,
    /// One JSON array of records.
    Array,
    /// One JSON document per line (blank lines skipped).
    Lines,
}

/// Config of the `file` source.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// The file to replay; a relative path is taken from the pipeline file's directory.
    pub path: PathBuf,
    /// The file's layout.
    #[serde(default)]
    pub format: Format,
    /// Records per batch.
    #[serde(default = "default_batch")]
    pub batch_size: NonZeroUsize,
}

fn default_batch() -> NonZeroUsize {
    NonZeroUsize::new(1000).expect("non-zero")
}

/// The `file` source.
pub struct FileSource {
    config: FileSourceConfig,
    ctx: Context,
    path: PathBuf,
    worker: Option<Worker>,
}

/// Reads the records of the file.
fn records(path: &PathBuf, format: Format) -> Result<Vec<Vec<u8>>, PluginError> {
    let open = || std::fs::File::open(path).map_err(|e| PluginError::config(format!("cannot open {}: {e}", path.display())));
    let text_start = {
        let mut r = BufReader::new(open()?);
        let buf = r.fill_buf().map_err(|e| PluginError::config(e.to_string()))?;
        buf.iter().find(|b| !b.is_ascii_whitespace()).copied()
    };
    let array = match format {
        Format::Array => true,
        Format::Lines => false,
        Format::Auto => text_start == Some(b'['),
    };
    if array {
        let items: Vec<Box<RawValue>> = serde_json::from_reader(BufReader::new(open()?))
            .map_err(|e| PluginError::config(format!("{} is not a JSON array: {e}", path.display())))?;
        return Ok(items.into_iter().map(|v| v.get().as_bytes().to_vec()).collect());
    }
    let mut out = Vec::new();
    for (n, line) in BufReader::new(open()?).lines().enumerate() {
        let line = line.map_err(|e| PluginError::config(format!("{}: line {}: {e}", path.display(), n + 1)))?;
        if !line.trim().is_empty() {
            out.push(line.into_bytes());
        }
    }
    Ok(out)
}

/// How many undelivered records are logged one by one.
const LOGGED_FAILURES: u64 = 10;

fn replay(records: Vec<Vec<u8>>, batch_size: usize, emitter: Emitter, ctx: Context, stop: StopFlag, path: String) {
    let bad = Arc::new(AtomicU64::new(0));
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default();
    let mut sent = 0usize;
    for chunk in records.chunks(batch_size) {
        let mut batch = BatchBuf::with_capacity(chunk.len(), chunk.iter().map(Vec::len).sum());
        for (i, r) in chunk.iter().enumerate() {
            batch.push(i as u32, Head { timestamp_ms: Some(now_ms), ..Default::default() }, r);
        }
        let mut pause = Duration::from_millis(1);
        loop {
            if stop.is_set() {
                ctx.info(&format!("Stopped replaying {path} after {sent} records."));
                return;
            }
            let counter = bad.clone();
            let first = sent;
            let result = emitter.emit(&batch.as_ref(), move |ack| {
                for (i, o) in ack.outcomes.iter().enumerate() {
                    if let Outcome::Rejected(reason) | Outcome::Failed(reason) = o {
                        ctx.counter_add("file_records_not_delivered", "Replayed records rejected or failed by the pipeline.", 1);
                        // The first few are logged; the counter has them all.
                        if counter.fetch_add(1, Relaxed) < LOGGED_FAILURES {
                            ctx.warn(&format!("Record {} of the file was not delivered: {reason}", first + i));
                        }
                    }
                }
            });
            match result {
                Ok(()) => break,
                Err(EmitError::Full) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(e) => {
                    ctx.warn(&format!("Stopped replaying {path}: {e}"));
                    return;
                }
            }
        }
        sent += chunk.len();
    }
    ctx.info(&format!("Replayed {sent} records from {path}."));
    emitter.finish();
}

impl Source for FileSource {
    type Config = FileSourceConfig;
    const NAME: &'static str = "file";
    const DESCRIPTION: &'static str = "Replays a JSON array or JSON-lines file, then finishes.";

    fn create(config: FileSourceConfig, ctx: Context) -> Result<Self, PluginError> {
        let path = ctx.resolve(&config.path);
        if !path.is_file() {
            return Err(PluginError::config(format!("{} is not a file", path.display())));
        }
        Ok(FileSource { config, ctx, path, worker: None })
    }

    fn start(&mut self, emitter: Emitter) -> Result<(), PluginError> {
        let records = records(&self.path, self.config.format)?;
        let (ctx, size, path) = (self.ctx, self.config.batch_size.get(), self.path.display().to_string());
        self.worker = Some(Worker::spawn("weir-file-source", move |stop| replay(records, size, emitter, ctx, stop, path))?);
        Ok(())
    }

    fn stop(&mut self) -> Result<(), PluginError> {
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::mock::{run_source, MockHost};

    fn replay_file(name: &str, text: &str, batch: usize) -> weir_plugin::mock::Emitted {
        let dir = std::env::temp_dir().join(format!("weir-file-source-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
        let host = MockHost::with_base_dir(dir.to_str().unwrap());
        let mut src: FileSource = host.source(serde_json::json!({"path": name, "batch_size": batch})).unwrap();
        let emitted = run_source(&mut src, false).unwrap();
        src.worker.take().unwrap().join();
        emitted
    }

    #[test]
    fn replays_an_array_in_batches_then_finishes() {
        let e = replay_file("a.json", r#"[{"user_id":"u1"}, {"user_id":"u2"}, {"user_id":"u3"}]"#, 2);
        assert_eq!(e.batches.lock().unwrap().len(), 2);
        assert_eq!(e.values(), vec![br#"{"user_id":"u1"}"#.to_vec(), br#"{"user_id":"u2"}"#.to_vec(), br#"{"user_id":"u3"}"#.to_vec()]);
        assert!(e.is_finished());
    }

    #[test]
    fn replays_json_lines_skipping_blank_ones() {
        let e = replay_file("a.jsonl", "{\"a\":1}\n\n{\"a\":2}\n", 10);
        assert_eq!(e.values().len(), 2);
        assert!(e.is_finished());
    }

    #[test]
    fn a_malformed_array_is_a_config_error() {
        let dir = std::env::temp_dir().join(format!("weir-file-source-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("bad.json"), "[{\"a\":1},").unwrap();
        let host = MockHost::with_base_dir(dir.to_str().unwrap());
        let mut src: FileSource = host.source(serde_json::json!({"path": "bad.json"})).unwrap();
        let err = run_source(&mut src, false).err().unwrap();
        assert!(err.to_string().contains("is not a JSON array"), "{err}");
    }
}
