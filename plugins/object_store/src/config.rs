//! Config of the `object_store` sink.

use std::num::NonZeroUsize;

use weir_plugin::{Deserialize, JsonSchema, PluginError};

use crate::key::Template;

/// How records become objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// One object per record, its value as the body; `key` must name the record (a field
    /// such as `{/eventId}`, `{key}` or a header), so a redelivered record overwrites itself.
    #[default]
    Record,
    /// One object per batch and key prefix: the records' values as JSON lines, `key` with a
    /// `{batch}` placeholder that becomes a digest of the object's records, so a batch
    /// redelivered with the same records overwrites its object.
    Batch,
}

/// Compression of batch objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Plain JSON lines.
    #[default]
    None,
    /// gzip (end the key with `.gz`).
    Gzip,
}

/// Config of the `object_store` sink.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectStoreConfig {
    /// Where objects go: `s3://BUCKET` or `s3://BUCKET/PREFIX` for S3 and S3-compatible stores,
    /// `file:DIR` for a local directory (relative to the pipeline file's directory; created
    /// when missing) or `file:///ABSOLUTE/DIR`.
    pub url: String,
    /// Object key template. Placeholders: `{yyyy}`, `{MM}`, `{dd}`, `{HH}`, `{mm}` (the record's
    /// time, UTC), `{/json/pointer}` (a field of the record), `{key}` (the record's key),
    /// `{header:NAME}` (a header), `{batch}` (batch mode: the object's digest). Values are
    /// percent-encoded where a key could not carry them, so a field cannot add path segments.
    pub key: String,
    /// One object per record (`record`, the default) or per batch and key prefix (`batch`).
    #[serde(default)]
    pub mode: Mode,
    /// Compression of batch objects.
    #[serde(default)]
    pub compression: Compression,
    /// JSON pointer of the record's time (ISO-8601 text, or epoch seconds or milliseconds);
    /// without it, or when the record has no such field, the record's timestamp, else the
    /// time it is written.
    #[serde(default)]
    pub time_field: Option<String>,
    /// S3 endpoint of an S3-compatible store, such as `http://minio:9000` (usually
    /// `${MINIO_ENDPOINT}`); without it (or when empty), AWS. Plain `http://` is allowed for an endpoint given here.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// S3 region; without it `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// S3 access key id; without it `AWS_ACCESS_KEY_ID`.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// S3 secret access key; without it `AWS_SECRET_ACCESS_KEY`. Never shown in logs or errors.
    #[serde(default)]
    #[schemars(extend("writeOnly" = true))]
    pub secret_access_key: Option<String>,
    /// S3 session token for temporary credentials; without it `AWS_SESSION_TOKEN`.
    #[serde(default)]
    #[schemars(extend("writeOnly" = true))]
    pub session_token: Option<String>,
    /// Content type of the objects; without it `application/json` for records,
    /// `application/x-ndjson` for batches.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Most objects written at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: NonZeroUsize,
    /// How long one request may take, in seconds, before the batch is retried.
    #[serde(default = "default_timeout")]
    pub request_timeout_secs: u64,
}

fn default_concurrency() -> NonZeroUsize {
    NonZeroUsize::new(32).expect("non-zero")
}
fn default_timeout() -> u64 {
    10
}

/// Where the objects are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An S3 bucket, with a key prefix (no leading or trailing `/`, may be empty).
    S3 { bucket: String, prefix: String },
    /// A local directory.
    File(std::path::PathBuf),
}

impl ObjectStoreConfig {
    /// The endpoint, if one is given (an empty one, as `${VAR:-}` leaves it, is none).
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref().map(str::trim).filter(|e| !e.is_empty())
    }

    /// The storage `url` names.
    pub fn target(&self) -> Result<Target, PluginError> {
        if let Some(rest) = self.url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.len() < 3 {
                return Err(PluginError::config(format!(
                    "url {:?}: the bucket name must have at least 3 characters (s3://BUCKET or s3://BUCKET/PREFIX)",
                    self.url
                )));
            }
            return Ok(Target::S3 { bucket: bucket.to_owned(), prefix: prefix.trim_matches('/').to_owned() });
        }
        if let Some(rest) = self.url.strip_prefix("file://").or_else(|| self.url.strip_prefix("file:")) {
            if rest.is_empty() {
                return Err(PluginError::config("url \"file:\" names no directory: write file:DIR or file:///ABSOLUTE/DIR"));
            }
            return Ok(Target::File(rest.into()));
        }
        Err(PluginError::config(format!(
            "url {:?} is not supported: write s3://BUCKET[/PREFIX] for S3 or MinIO, or file:DIR for a local directory",
            self.url
        )))
    }

    /// Checks what the schema cannot: the url, the key template and its fit with the mode.
    pub fn check(&self) -> Result<Template, PluginError> {
        let target = self.target()?;
        if self.endpoint().is_some() && matches!(target, Target::File(_)) {
            return Err(PluginError::config("endpoint is for S3-compatible stores; a file: url takes none"));
        }
        if let Some(e) = self.endpoint() {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(PluginError::config(format!("endpoint {e:?} must start with http:// or https://")));
            }
        }
        if let Some(p) = &self.time_field {
            if !p.is_empty() && !p.starts_with('/') {
                return Err(PluginError::config(format!("time_field {p:?} is not a JSON pointer: it must start with `/`")));
            }
        }
        let template = Template::parse(&self.key).map_err(|e| PluginError::config(format!("key {:?}: {e}", self.key)))?;
        let prefix = match &target {
            Target::S3 { prefix, .. } if !prefix.is_empty() => format!("{prefix}/"),
            _ => String::new(),
        };
        let shape = format!("{prefix}{}", template.shape());
        if let Err(e) = object_store::path::Path::parse(&shape) {
            return Err(PluginError::config(format!(
                "url {:?} and key {:?} do not make a valid object key ({shape}): {e}",
                self.url, self.key
            )));
        }
        match self.mode {
            Mode::Record if template.has_batch() => {
                return Err(PluginError::config(format!(
                    "key {:?}: {{batch}} names batch objects; with mode: record name each record instead ({{/eventId}}, {{key}})",
                    self.key
                )))
            }
            Mode::Record if !template.names_record() => {
                return Err(PluginError::config(format!(
                    "key {:?} names no record (no {{/field}}, {{key}} or {{header:…}} placeholder), so every record \
                     of an hour would overwrite the same object; add the field that identifies a record, e.g. {{/eventId}}",
                    self.key
                )))
            }
            Mode::Batch if !template.has_batch() => {
                return Err(PluginError::config(format!(
                    "key {:?}: with mode: batch the key needs a {{batch}} placeholder, which becomes the digest of the \
                     object's records (e.g. events/{{yyyy}}/{{MM}}/{{dd}}/{{HH}}/{{batch}}.jsonl.gz)",
                    self.key
                )))
            }
            _ => {}
        }
        if self.compression != Compression::None && self.mode == Mode::Record {
            return Err(PluginError::config("compression applies to batch objects: set mode: batch, or remove compression"));
        }
        Ok(template)
    }
}
