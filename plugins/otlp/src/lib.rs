//! The `otlp` sink: the event-derived metrics of the `prometheus` sink (counters, gauges,
//! histograms declared in YAML, label cardinality capped), exported over OTLP (gRPC or
//! HTTP/protobuf) on an interval, and optionally every record as an OTLP log record.
//!
//! Nothing here grows without bound when the endpoint is down: metrics are aggregated in
//! place (one series per label set, capped), and log records wait in a bounded queue;
//! what cannot be exported is dropped and counted (`weir_plugin_otlp_*_total`).

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::metrics::{Counter, Gauge, Histogram, MeterProvider as _};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter as _, LogProcessor, SdkLogRecord, SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{SdkMeterProvider, Temporality};
use opentelemetry_sdk::Resource;
use weir_plugin::json::{Doc, Pointer};
use weir_plugin::metrics::{MetricSpec, MetricType, Registry};
use weir_plugin::serde_json::Value;
use weir_plugin::{BatchRef, Context, Deserialize, JsonSchema, PluginError, Rejections, Sink};

/// How the sink reaches the endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// OTLP over gRPC (port 4317 by convention).
    #[default]
    Grpc,
    /// OTLP protobuf over HTTP (port 4318; `/v1/metrics` and `/v1/logs` are appended).
    HttpProtobuf,
}

/// Records as OTLP log records.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsConfig {
    /// JSON pointer of the log body; the whole record when not given.
    #[serde(default)]
    pub body: Option<String>,
    /// JSON pointer of the severity (`trace`, `debug`, `info`, `warn`, `error`, `fatal`).
    #[serde(default)]
    pub severity: Option<String>,
    /// Attribute name → JSON pointer of its value.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Log records waiting for export; beyond this they are dropped and counted.
    #[serde(default = "default_queue")]
    pub queue: NonZeroUsize,
}

fn default_queue() -> NonZeroUsize {
    NonZeroUsize::new(8192).expect("non-zero")
}

/// Config of the `otlp` sink.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// Endpoint. Default `http://127.0.0.1:4317` (gRPC) or `http://127.0.0.1:4318` (HTTP).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `grpc` or `http_protobuf`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Headers (gRPC metadata) sent with every export, for example an API key from `${VAR}`.
    #[serde(default)]
    #[schemars(extend("writeOnly" = true))]
    pub headers: BTreeMap<String, String>,
    /// How often metrics are exported, in milliseconds.
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// How long one export may take, in milliseconds.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Resource attributes; `service.name` defaults to the pipeline's name.
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
    /// Most label sets per metric; records beyond go to one series whose labels are all `other`.
    #[serde(default = "default_max_series")]
    pub max_series: NonZeroUsize,
    /// The metrics (same declarations as the `prometheus` sink).
    #[serde(default)]
    pub metrics: Vec<MetricSpec>,
    /// Also export every record as a log record.
    #[serde(default)]
    pub logs: Option<LogsConfig>,
}

fn default_interval() -> u64 {
    10_000
}
fn default_timeout() -> u64 {
    5_000
}
fn default_max_series() -> NonZeroUsize {
    NonZeroUsize::new(1000).expect("non-zero")
}

enum Instrument {
    Counter(Counter<f64>),
    Gauge(Gauge<f64>),
    Histogram(Histogram<f64>),
}

/// Export outcomes, reported as plugin metrics.
#[derive(Debug, Default)]
struct Stats {
    metric_exports_failed: AtomicU64,
    logs_exported: AtomicU64,
    logs_dropped: AtomicU64,
}

/// Counts failed metric exports, then passes everything to the OTLP exporter.
#[derive(Debug)]
struct CountingExporter {
    inner: opentelemetry_otlp::MetricExporter,
    stats: Arc<Stats>,
    /// For health reports (`otlp`) on each export.
    ctx: Context,
    endpoint: String,
}

impl PushMetricExporter for CountingExporter {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        match &result {
            Ok(()) => self.ctx.report_health("otlp", &self.endpoint, true, ""),
            Err(e) => {
                self.stats.metric_exports_failed.fetch_add(1, Relaxed);
                self.ctx.report_health("otlp", &self.endpoint, false, &e.to_string());
            }
        }
        result
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

/// Queues log records for the export task; a full queue drops and counts.
#[derive(Debug)]
struct QueueProcessor {
    tx: tokio::sync::mpsc::Sender<(SdkLogRecord, InstrumentationScope)>,
    stats: Arc<Stats>,
}

impl LogProcessor for QueueProcessor {
    fn emit(&self, data: &mut SdkLogRecord, scope: &InstrumentationScope) {
        if self.tx.try_send((data.clone(), scope.clone())).is_err() {
            self.stats.logs_dropped.fetch_add(1, Relaxed);
        }
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
}

struct Logs {
    /// `LogsConfig::body`, read once.
    body: Option<Pointer>,
    /// `LogsConfig::severity`, read once.
    severity: Option<Pointer>,
    /// `LogsConfig::attributes`, their pointers read once.
    attributes: Vec<(String, Pointer)>,
    logger: SdkLogger,
    provider: SdkLoggerProvider,
}

/// The `otlp` sink.
pub struct OtlpSink {
    registry: Registry,
    instruments: HashMap<String, Instrument>,
    meters: SdkMeterProvider,
    logs: Option<Logs>,
    stats: Arc<Stats>,
    reported: [u64; 3],
    ctx: Context,
}

fn endpoint(config: &OtlpConfig, signal: &str) -> String {
    match (config.protocol, &config.endpoint) {
        (Protocol::Grpc, Some(e)) => e.clone(),
        (Protocol::Grpc, None) => "http://127.0.0.1:4317".into(),
        (Protocol::HttpProtobuf, e) => format!("{}/v1/{signal}", e.as_deref().unwrap_or("http://127.0.0.1:4318").trim_end_matches('/')),
    }
}

fn metadata(headers: &BTreeMap<String, String>) -> Result<opentelemetry_otlp::tonic_types::metadata::MetadataMap, PluginError> {
    let mut map = http::HeaderMap::new();
    for (k, v) in headers {
        let name =
            http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| PluginError::config(format!("header name {k:?} is not valid")))?;
        let value = http::HeaderValue::from_str(v).map_err(|_| PluginError::config(format!("the value of header {k:?} is not valid")))?;
        map.insert(name, value);
    }
    Ok(opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(map))
}

macro_rules! exporter {
    ($ty:ty, $config:expr, $signal:expr) => {{
        let config: &OtlpConfig = $config;
        let timeout = Duration::from_millis(config.timeout_ms.max(1));
        let endpoint = endpoint(config, $signal);
        let built = match config.protocol {
            Protocol::Grpc => <$ty>::builder()
                .with_tonic()
                .with_endpoint(&endpoint)
                .with_timeout(timeout)
                .with_metadata(metadata(&config.headers)?)
                .build(),
            Protocol::HttpProtobuf => <$ty>::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(&endpoint)
                .with_timeout(timeout)
                .with_headers(config.headers.clone().into_iter().collect())
                .build(),
        };
        built.map_err(|e| PluginError::config(format!("cannot export to {endpoint}: {e}")))?
    }};
}

fn severity(word: &str) -> (&'static str, Severity) {
    match word.to_ascii_lowercase().as_str() {
        "trace" => ("TRACE", Severity::Trace),
        "debug" => ("DEBUG", Severity::Debug),
        "warn" | "warning" => ("WARN", Severity::Warn),
        "error" | "err" => ("ERROR", Severity::Error),
        "fatal" | "critical" => ("FATAL", Severity::Fatal),
        _ => ("INFO", Severity::Info),
    }
}

fn any_value(v: &Value) -> AnyValue {
    match v {
        Value::String(s) => AnyValue::from(s.clone()),
        Value::Bool(b) => AnyValue::from(*b),
        Value::Number(n) if n.is_i64() => AnyValue::from(n.as_i64().unwrap_or_default()),
        Value::Number(n) => AnyValue::from(n.as_f64().unwrap_or_default()),
        other => AnyValue::from(other.to_string()),
    }
}

impl Sink for OtlpSink {
    type Config = OtlpConfig;
    const NAME: &'static str = "otlp";
    const DESCRIPTION: &'static str = "Exports metrics derived from records, and optionally the records as logs, over OTLP (gRPC or HTTP).";

    fn validate(config: &OtlpConfig) -> Result<(), PluginError> {
        if config.metrics.is_empty() && config.logs.is_none() {
            return Err(PluginError::config("declare at least one of `metrics` and `logs`"));
        }
        weir_plugin::metrics::check_all(&config.metrics).map_err(PluginError::config)?;
        if let Some(logs) = &config.logs {
            for p in logs.body.iter().chain(&logs.severity).chain(logs.attributes.values()) {
                if !p.starts_with('/') {
                    return Err(PluginError::config(format!("logs: {p:?} must be a JSON pointer (starting with `/`)")));
                }
            }
        }
        if let Some(e) = &config.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(PluginError::config(format!("endpoint {e:?} must start with http:// or https://")));
            }
        }
        metadata(&config.headers)?;
        Ok(())
    }

    fn create(config: OtlpConfig, ctx: Context) -> Result<Self, PluginError> {
        let rt = weir_plugin::runtime();
        let _in_runtime = rt.enter();
        let stats = Arc::new(Stats::default());
        let mut attributes: Vec<KeyValue> = config.resource.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect();
        if !config.resource.contains_key("service.name") {
            attributes.push(KeyValue::new("service.name", ctx.pipeline().to_owned()));
        }
        let resource = Resource::builder_empty().with_attributes(attributes).build();
        let mut meters = SdkMeterProvider::builder().with_resource(resource.clone());
        if !config.metrics.is_empty() {
            let inner = exporter!(opentelemetry_otlp::MetricExporter, &config, "metrics");
            let reader = opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader::builder(
                CountingExporter { inner, stats: stats.clone(), ctx, endpoint: endpoint(&config, "metrics") },
                opentelemetry_sdk::runtime::Tokio,
            )
            .with_interval(Duration::from_millis(config.interval_ms.max(100)))
            .build();
            meters = meters.with_reader(reader);
        }
        let meters = meters.build();
        let meter = meters.meter("weir-otlp");
        let mut instruments = HashMap::new();
        for m in &config.metrics {
            let instrument = match m.kind {
                MetricType::Counter => Instrument::Counter(meter.f64_counter(m.name.clone()).with_description(m.help.clone()).build()),
                MetricType::Gauge => Instrument::Gauge(meter.f64_gauge(m.name.clone()).with_description(m.help.clone()).build()),
                MetricType::Histogram => Instrument::Histogram(
                    meter.f64_histogram(m.name.clone()).with_description(m.help.clone()).with_boundaries(m.buckets.clone()).build(),
                ),
            };
            instruments.insert(m.name.clone(), instrument);
        }
        let logs = match &config.logs {
            None => None,
            Some(spec) => {
                let mut exporter = exporter!(opentelemetry_otlp::LogExporter, &config, "logs");
                exporter.set_resource(&resource);
                let (tx, mut rx) = tokio::sync::mpsc::channel::<(SdkLogRecord, InstrumentationScope)>(spec.queue.get());
                let provider = SdkLoggerProvider::builder()
                    .with_resource(resource.clone())
                    .with_log_processor(QueueProcessor { tx, stats: stats.clone() })
                    .build();
                let s = stats.clone();
                let timeout = Duration::from_millis(config.timeout_ms.max(1));
                rt.spawn(async move {
                    let mut batch = Vec::with_capacity(512);
                    while rx.recv_many(&mut batch, 512).await > 0 {
                        let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> = batch.iter().map(|(r, s)| (r, s)).collect();
                        let n = refs.len() as u64;
                        match tokio::time::timeout(timeout, exporter.export(LogBatch::new(&refs))).await {
                            Ok(Ok(())) => s.logs_exported.fetch_add(n, Relaxed),
                            _ => s.logs_dropped.fetch_add(n, Relaxed),
                        };
                        drop(refs);
                        batch.clear();
                        if n < 512 {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                });
                let logger = provider.logger("weir-otlp");
                let at = |p: &String| Pointer::parse(p).map_err(|e| PluginError::config(format!("logs: {e}")));
                Some(Logs {
                    body: spec.body.as_ref().map(at).transpose()?,
                    severity: spec.severity.as_ref().map(at).transpose()?,
                    attributes: spec.attributes.iter().map(|(k, p)| Ok((k.clone(), at(p)?))).collect::<Result<_, PluginError>>()?,
                    logger,
                    provider,
                })
            }
        };
        ctx.info(&format!(
            "Exporting {} metric(s){} to {} every {} ms.",
            config.metrics.len(),
            if logs.is_some() { " and logs" } else { "" },
            config.endpoint.as_deref().unwrap_or("the default endpoint"),
            config.interval_ms
        ));
        Ok(OtlpSink {
            registry: Registry::new(config.metrics.clone(), config.max_series.get()),
            instruments,
            meters,
            logs,
            stats,
            reported: [0; 3],
            ctx,
        })
    }

    fn write(&mut self, batch: &BatchRef<'_>, rejections: &mut Rejections) -> Result<(), PluginError> {
        let before = self.registry.overflowed();
        for (i, r) in batch.iter().enumerate() {
            let instruments = &self.instruments;
            let doc = match Doc::parse(r.value) {
                Ok(doc) => doc,
                Err(e) => {
                    rejections.reject(i, &format!("not valid JSON: {e}"));
                    continue;
                }
            };
            let counted = self.registry.observe_doc(&doc, &r, |spec, labels, v| {
                let attrs: Vec<KeyValue> = spec.labels.keys().zip(labels).map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect();
                match instruments.get(&spec.name) {
                    Some(Instrument::Counter(c)) => c.add(v, &attrs),
                    Some(Instrument::Gauge(g)) => g.record(v, &attrs),
                    Some(Instrument::Histogram(h)) => h.record(v, &attrs),
                    None => {}
                }
            });
            if let Err(reason) = counted {
                rejections.reject(i, &reason);
                continue;
            }
            if let Some(logs) = &self.logs {
                // Only the fields the log takes are converted.
                let value = |p: &Pointer| doc.get(p).and_then(|raw| weir_plugin::serde_json::from_str::<Value>(raw.get()).ok());
                let mut record = logs.logger.create_log_record();
                let body = match &logs.body {
                    Some(p) => value(p).as_ref().map(any_value).unwrap_or(AnyValue::from(String::new())),
                    None => AnyValue::from(String::from_utf8_lossy(r.value).into_owned()),
                };
                record.set_body(body);
                if let Some(word) = logs.severity.as_ref().and_then(|p| doc.get_str(p)) {
                    let (text, number) = severity(&word);
                    record.set_severity_text(text);
                    record.set_severity_number(number);
                }
                if let Some(ts) = r.timestamp_ms.and_then(|ms| u64::try_from(ms).ok()) {
                    record.set_timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(ts));
                }
                for (name, p) in &logs.attributes {
                    if let Some(v) = value(p) {
                        record.add_attribute(name.clone(), any_value(&v));
                    }
                }
                logs.logger.emit(record);
            }
        }
        let overflowed = self.registry.overflowed() - before;
        if overflowed > 0 {
            self.ctx.counter_add("otlp_label_overflow", "Records counted in a metric's `other` series (max_series reached).", overflowed);
        }
        self.report();
        Ok(())
    }

    fn stop(&mut self) -> Result<(), PluginError> {
        // A last export of the metrics, and of the logs still queued.
        let _ = self.meters.shutdown();
        if let Some(logs) = &self.logs {
            let _ = logs.provider.shutdown();
        }
        self.report();
        Ok(())
    }
}

impl OtlpSink {
    fn report(&mut self) {
        let now = [&self.stats.metric_exports_failed, &self.stats.logs_exported, &self.stats.logs_dropped].map(|a| a.load(Relaxed));
        let names = [
            ("otlp_metric_exports_failed", "Metric exports the endpoint did not take (the next export sends the totals again)."),
            ("otlp_logs_exported", "Log records the endpoint took."),
            ("otlp_logs_dropped", "Log records dropped: the queue was full or the export failed."),
        ];
        for ((n, help), (new, old)) in names.iter().zip(now.iter().zip(self.reported.iter_mut())) {
            if *new > *old {
                self.ctx.counter_add(n, help, new - *old);
                *old = *new;
            }
        }
    }
}

weir_plugin::export_plugins!(sink OtlpSink);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::serde_json::json;

    fn config(v: Value) -> OtlpConfig {
        weir_plugin::serde_json::from_value(v).unwrap()
    }

    #[test]
    fn config_is_checked() {
        let err = OtlpSink::validate(&config(json!({}))).unwrap_err().to_string();
        assert!(err.contains("at least one of `metrics` and `logs`"), "{err}");
        let err = OtlpSink::validate(&config(json!({"logs": {"body": "message"}}))).unwrap_err().to_string();
        assert!(err.contains("JSON pointer"), "{err}");
        let err = OtlpSink::validate(&config(json!({"endpoint": "localhost:4317", "logs": {}}))).unwrap_err().to_string();
        assert!(err.contains("http://"), "{err}");
        OtlpSink::validate(&config(json!({"metrics": [{"name": "a_total", "type": "counter"}]}))).unwrap();
    }

    #[test]
    fn endpoints_by_protocol() {
        let c = config(json!({"protocol": "http_protobuf", "endpoint": "http://collector:4318/", "logs": {}}));
        assert_eq!(endpoint(&c, "logs"), "http://collector:4318/v1/logs");
        assert_eq!(endpoint(&config(json!({"logs": {}})), "metrics"), "http://127.0.0.1:4317");
    }
}
