//! The `object_store` sink: renders each record's object key, then writes the batch's objects
//! concurrently. Any failed write retries the whole batch (rewriting an object is harmless:
//! names are idempotent), so the pipeline pushes back while the store is away.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{Attribute, Attributes, BackoffConfig, ClientOptions, ObjectStore, PutOptions, PutPayload, RetryConfig};
use sha2::{Digest, Sha256};
use weir_plugin::json::{Doc, Pointer};
use weir_plugin::serde_json;
use weir_plugin::{BatchRef, Context, PluginError, RecordRef, Rejections, Sink};

use crate::config::{Compression, Mode, ObjectStoreConfig, Target};
use crate::key::{Template, BATCH_MARK};

/// The `object_store` sink.
pub struct ObjectStoreSink {
    config: ObjectStoreConfig,
    template: Template,
    /// `time_field`, parsed.
    time_field: Option<Pointer>,
    store: Arc<dyn ObjectStore>,
    /// Prepended to every key (`PREFIX/` of `s3://BUCKET/PREFIX`), may be empty.
    prefix: String,
    /// The store as messages name it: `s3://bucket` or the directory.
    label: String,
    /// Whether objects carry a content type (S3 does; the filesystem has nowhere to keep it).
    attributes: bool,
    /// The dependency as health reports name it: `s3` or `filesystem`.
    dependency: &'static str,
    ctx: Context,
}

/// The longest object key S3 takes, in bytes.
const MAX_KEY_BYTES: usize = 1024;

/// One object to write.
struct Object {
    path: Path,
    body: PutPayload,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl ObjectStoreSink {
    fn open(config: &ObjectStoreConfig, ctx: &Context) -> Result<(Arc<dyn ObjectStore>, String, String, bool), PluginError> {
        match config.target()? {
            Target::File(dir) => {
                let dir = ctx.resolve(dir);
                std::fs::create_dir_all(&dir).map_err(|e| PluginError::config(format!("cannot create {}: {e}", dir.display())))?;
                let store = LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| PluginError::config(format!("cannot use {} as an object store: {e}", dir.display())))?;
                Ok((Arc::new(store), String::new(), dir.display().to_string(), false))
            }
            Target::S3 { bucket, prefix } => {
                let region =
                    config.region.clone().filter(|v| !v.is_empty()).or_else(|| env("AWS_REGION")).or_else(|| env("AWS_DEFAULT_REGION"));
                let mut b = AmazonS3Builder::new().with_bucket_name(&bucket).with_region(region.unwrap_or_else(|| "us-east-1".into()));
                let key_id = config.access_key_id.clone().filter(|v| !v.is_empty()).or_else(|| env("AWS_ACCESS_KEY_ID"));
                let secret = config.secret_access_key.clone().filter(|v| !v.is_empty()).or_else(|| env("AWS_SECRET_ACCESS_KEY"));
                match (key_id, secret) {
                    (Some(id), Some(secret)) => b = b.with_access_key_id(id).with_secret_access_key(secret),
                    (None, None) => {}
                    _ => {
                        return Err(PluginError::config(
                            "only one of access_key_id and secret_access_key is set (in the config or as AWS_ACCESS_KEY_ID / \
                             AWS_SECRET_ACCESS_KEY): give both, or neither to use the instance's role",
                        ))
                    }
                }
                if let Some(token) = config.session_token.clone().filter(|v| !v.is_empty()).or_else(|| env("AWS_SESSION_TOKEN")) {
                    b = b.with_token(token);
                }
                let mut options = ClientOptions::new().with_timeout(Duration::from_secs(config.request_timeout_secs.max(1)));
                if let Some(endpoint) = config.endpoint() {
                    b = b.with_endpoint(endpoint.trim_end_matches('/'));
                    options = options.with_allow_http(endpoint.starts_with("http://"));
                }
                // Few quick retries here; longer outages are the host's to retry, with pushback.
                let retry = RetryConfig {
                    backoff: BackoffConfig { init_backoff: Duration::from_millis(50), max_backoff: Duration::from_secs(1), base: 2.0 },
                    max_retries: 2,
                    retry_timeout: Duration::from_secs(config.request_timeout_secs.max(1) * 2),
                };
                let store = b
                    .with_client_options(options)
                    .with_retry(retry)
                    .build()
                    .map_err(|e| PluginError::config(format!("cannot set up S3 bucket {bucket}: {e}")))?;
                let prefix = if prefix.is_empty() { prefix } else { format!("{prefix}/") };
                Ok((Arc::new(store), prefix, format!("s3://{bucket}"), true))
            }
        }
    }

    /// The record's time: `time_field` when the record has it, else its timestamp, else now.
    fn time(&self, record: &RecordRef<'_>, value: Option<&Doc<'_>>) -> Result<DateTime<Utc>, String> {
        if let (Some(pointer), Some(v)) = (&self.time_field, value) {
            match v.get(pointer) {
                Some(t) if t.get() != "null" => {
                    return weir_plugin::json::raw_time_millis(t)
                        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
                        .ok_or_else(|| format!("field {pointer} is not a time (ISO-8601 text or epoch seconds or milliseconds): {t}"))
                }
                _ => {}
            }
        }
        Ok(record.timestamp_ms.and_then(|ms| Utc.timestamp_millis_opt(ms).single()).unwrap_or_else(Utc::now))
    }

    /// The objects of a batch; records that cannot be named are rejected with the reason.
    fn objects(&self, batch: &BatchRef<'_>, rejections: &mut Rejections) -> Result<Vec<Object>, PluginError> {
        let parse = self.template.needs_value() || self.time_field.is_some();
        let mut records = Vec::new();
        let mut groups: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for (i, r) in batch.iter().enumerate() {
            let value = if parse {
                match Doc::parse(r.value) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        rejections.reject(i, &format!("not valid JSON, so its object key cannot be made: {e}"));
                        continue;
                    }
                }
            } else {
                None
            };
            let key = self.time(&r, value.as_ref()).and_then(|t| self.template.render(&r, value.as_ref(), t));
            let key = match key {
                // S3's limit; the digest placeholder is longer than the 24 hex digits it becomes.
                Ok(k) if self.prefix.len() + k.len() > MAX_KEY_BYTES + BATCH_MARK.len() => {
                    rejections.reject(
                        i,
                        &format!("its object key would be {} bytes, more than S3's {MAX_KEY_BYTES}: {k:.80}…", self.prefix.len() + k.len()),
                    );
                    continue;
                }
                Ok(k) => format!("{}{k}", self.prefix),
                Err(e) => {
                    rejections.reject(i, &e);
                    continue;
                }
            };
            match self.config.mode {
                Mode::Record => match Path::parse(&key) {
                    Ok(path) => records.push(Object { path, body: PutPayload::from(r.value.to_vec()) }),
                    Err(e) => rejections.reject(i, &format!("object key {key:?} is not valid: {e}")),
                },
                Mode::Batch => {
                    if r.value.contains(&b'\n') && serde_json::from_slice::<weir_plugin::serde::de::IgnoredAny>(r.value).is_err() {
                        rejections.reject(i, "not valid JSON, so it cannot be written as one line");
                        continue;
                    }
                    let body = groups.entry(key).or_default();
                    body.extend(r.value.iter().map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }));
                    body.push(b'\n');
                }
            }
        }
        for (key, lines) in groups {
            let digest = Sha256::digest(&lines);
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            let key = key.replace(BATCH_MARK, &hex);
            let body = match self.config.compression {
                Compression::None => lines,
                Compression::Gzip => {
                    let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(lines.len() / 4), flate2::Compression::fast());
                    gz.write_all(&lines).and_then(|_| gz.finish()).expect("writing to memory does not fail")
                }
            };
            match Path::parse(&key) {
                Ok(path) => records.push(Object { path, body: PutPayload::from(body) }),
                // `check` has vetted the template's shape and placeholders' values are
                // encoded, so a rendered key always parses; if not, the batch fails with the
                // reason rather than counting as written.
                Err(e) => return Err(PluginError::fatal(format!("object key {key:?} is not valid: {e}"))),
            }
        }
        Ok(records)
    }
}

impl Sink for ObjectStoreSink {
    type Config = ObjectStoreConfig;
    const NAME: &'static str = "object_store";
    const DESCRIPTION: &'static str = "Archives records to S3, MinIO or a directory, one object per record or per batch.";
    const WORKERS: bool = true;

    fn validate(config: &ObjectStoreConfig) -> Result<(), PluginError> {
        config.check().map(|_| ())
    }

    fn create(config: ObjectStoreConfig, ctx: Context) -> Result<Self, PluginError> {
        let template = config.check()?;
        let (store, prefix, label, attributes) = Self::open(&config, &ctx)?;
        let dependency = if attributes { "s3" } else { "filesystem" };
        // Until the first write says, a look at the store: a missing object is an answer.
        let (probe, target) = (store.clone(), label.clone());
        weir_plugin::runtime().spawn(async move {
            // Listing a prefix answers for a bucket that exists (empty or not), and fails for one that does not.
            match probe.list_with_delimiter(Some(&Path::from("weir-health-probe"))).await {
                Ok(_) => ctx.report_health(dependency, &target, true, ""),
                Err(e) => ctx.report_health(dependency, &target, false, &one_line(&e)),
            }
        });
        let time_field = config.time_field.as_deref().map(Pointer::parse).transpose().map_err(PluginError::config)?;
        Ok(ObjectStoreSink { config, template, time_field, store, prefix, label, attributes, dependency, ctx })
    }

    fn write(&mut self, batch: &BatchRef<'_>, rejections: &mut Rejections) -> Result<(), PluginError> {
        let objects = self.objects(batch, rejections)?;
        let content_type = self.config.content_type.clone().unwrap_or_else(|| {
            match self.config.mode {
                Mode::Record => "application/json",
                Mode::Batch if self.config.compression == Compression::Gzip => "application/gzip",
                Mode::Batch => "application/x-ndjson",
            }
            .to_owned()
        });
        let options = || {
            let mut o = PutOptions::default();
            if self.attributes {
                o.attributes = Attributes::from_iter([(Attribute::ContentType, content_type.clone())]);
            }
            o
        };
        let store = &self.store;
        let label = &self.label;
        let puts = futures_util::stream::iter(objects).map(|o| async move {
            store
                .put_opts(&o.path, o.body, options())
                .await
                .map_err(|e| PluginError::retry(format!("cannot write {label}/{}: {}; the batch is retried", o.path, one_line(&e))))
        });
        let result =
            weir_plugin::runtime().block_on(puts.buffer_unordered(self.config.concurrency.get()).try_for_each(|_| async { Ok(()) }));
        match &result {
            Ok(()) => self.ctx.report_health(self.dependency, &self.label, true, ""),
            Err(e) => self.ctx.report_health(self.dependency, &self.label, false, &e.to_string()),
        }
        result
    }
}

/// The error with its causes, on one line.
fn one_line(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::mock::{json_batch, run_sink, MockHost};
    use weir_plugin::serde_json::json;

    fn files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(d).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    let name = e.path().strip_prefix(dir).unwrap().display().to_string();
                    out.push((name, std::fs::read(e.path()).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn one_object_per_record_under_its_hour_and_redelivery_overwrites() {
        let dir = tempfile_dir("record");
        let host = MockHost::with_base_dir(dir.to_str().unwrap());
        let config = json!({"url": "file:archive", "key": "events/{yyyy}/{MM}/{dd}/{HH}/{/eventId}.json", "time_field": "/timestamp"});
        let mut sink: ObjectStoreSink = host.sink(config).unwrap();
        let batch = json_batch([
            r#"{"eventId":"a","timestamp":"2024-01-15T10:59:59Z"}"#,
            r#"{"eventId":"b","timestamp":"2024-01-15T11:00:00.000Z"}"#,
            r#"{"timestamp":"2024-01-15T11:00:00Z"}"#,
            r#"{"eventId":"c","timestamp":"yesterday"}"#,
        ]);
        let rejections = run_sink(&mut sink, &batch).unwrap();
        let rejected: Vec<(usize, &str)> = rejections.iter().collect();
        assert_eq!(rejected[0], (2, "field /eventId is missing, and the object key needs it"));
        assert_eq!(rejected[1].0, 3);
        assert!(rejected[1].1.contains("is not a time"), "{}", rejected[1].1);
        run_sink(&mut sink, &batch).unwrap();
        let got = files(&dir.join("archive"));
        assert_eq!(
            got,
            vec![
                ("events/2024/01/15/10/a.json".to_owned(), br#"{"eventId":"a","timestamp":"2024-01-15T10:59:59Z"}"#.to_vec()),
                ("events/2024/01/15/11/b.json".to_owned(), br#"{"eventId":"b","timestamp":"2024-01-15T11:00:00.000Z"}"#.to_vec()),
            ],
            "the second delivery overwrote the same two objects"
        );
        assert_eq!(host.health("filesystem").unwrap()["up"], true);
    }

    #[test]
    fn batch_objects_are_gzipped_json_lines_named_by_their_records() {
        let dir = tempfile_dir("batch");
        let host = MockHost::with_base_dir(dir.to_str().unwrap());
        let config =
            json!({"url": "file:out", "mode": "batch", "compression": "gzip", "key": "{yyyy}/{HH}/{batch}.jsonl.gz", "time_field": "/t"});
        let mut sink: ObjectStoreSink = host.sink(config).unwrap();
        let batch = json_batch([r#"{"t":1705312800000,"n":1}"#, "{\"t\":1705312801,\n\"n\":2}", r#"{"t":1705316400,"n":3}"#]);
        run_sink(&mut sink, &batch).unwrap();
        run_sink(&mut sink, &batch).unwrap();
        let got = files(&dir.join("out"));
        assert_eq!(got.len(), 2, "one object per hour, the same names the second time: {got:?}");
        let text = |bytes: &[u8]| {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(bytes), &mut s).unwrap();
            s
        };
        assert!(got[0].0.starts_with("2024/10/") && got[1].0.starts_with("2024/11/"), "{got:?}");
        assert_eq!(text(&got[0].1), "{\"t\":1705312800000,\"n\":1}\n{\"t\":1705312801, \"n\":2}\n");
        assert_eq!(text(&got[1].1), "{\"t\":1705316400,\"n\":3}\n");
    }

    #[test]
    fn configs_that_cannot_work_are_refused_with_the_reason() {
        let host = MockHost::new();
        let err = |c: weir_plugin::serde_json::Value| host.sink::<ObjectStoreSink>(c).err().unwrap().to_string();
        assert!(err(json!({"url": "s3://ab", "key": "{/id}"})).contains("at least 3 characters"));
        assert!(err(json!({"url": "gs://bucket", "key": "{/id}"})).contains("not supported"));
        assert!(err(json!({"url": "s3://bucket", "key": "events/{HH}.json"})).contains("names no record"));
        assert!(err(json!({"url": "s3://bucket", "key": "events/{HH}.json", "mode": "batch"})).contains("{batch}"));
        assert!(err(json!({"url": "s3://bucket", "key": "{/id}", "compression": "gzip"})).contains("mode: batch"));
        assert!(err(json!({"url": "s3://bucket", "key": "{/id}", "endpoint": "minio:9000"})).contains("http://"));
    }

    fn tempfile_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("weir-object-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
