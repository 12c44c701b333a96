//! Host traces: a span per batch per stage, exported over OTLP, joined to the W3C
//! `traceparent` the records carry so one trace follows an event across hosts.
//!
//! Spans wait in one bounded queue; when it is full, or the endpoint does not answer,
//! spans are dropped and counted (`weir_telemetry_spans_total{outcome}`), never buffered
//! without bound and never in the way of the pipeline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter as _, SpanProcessor};
use opentelemetry_sdk::Resource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use weir_plugin::batch::{encode_header, BatchBuf, BatchRef};
use weir_plugin::Head;

use crate::error::HostError;

/// How spans reach the OTLP endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// OTLP over gRPC (port 4317 by convention).
    #[default]
    Grpc,
    /// OTLP protobuf over HTTP (port 4318, path `/v1/traces`).
    HttpProtobuf,
}

/// Host traces. Off by default; `enabled: true` (or `WEIR_TRACES_ENABLED=true`) turns
/// them on. The standard `OTEL_*` variables override what is set here.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracesConfig {
    /// Export a span per batch per stage.
    #[serde(default)]
    pub enabled: bool,
    /// OTLP endpoint. Default `http://127.0.0.1:4317` (gRPC) or
    /// `http://127.0.0.1:4318/v1/traces` (HTTP). `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` and
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` override it.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `grpc` or `http_protobuf`. `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` /
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`, `http/protobuf`) override it.
    #[serde(default)]
    pub protocol: Protocol,
    /// Share of the traces starting here that are recorded, 0 to 1. Traces that arrive
    /// with a `traceparent` follow the caller's decision. `OTEL_TRACES_SAMPLER_ARG` overrides it.
    #[serde(default = "one")]
    pub sampling_ratio: f64,
    /// `service.name`; `OTEL_SERVICE_NAME` overrides it.
    #[serde(default = "default_service")]
    pub service_name: String,
    /// `service.instance.id`; defaults to the host name and process id.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Further resource attributes; `OTEL_RESOURCE_ATTRIBUTES` adds to and overrides them.
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
    /// Spans waiting for export; beyond this they are dropped and counted.
    #[serde(default = "default_queue")]
    pub queue_spans: usize,
    /// How long one export may take before its spans count as dropped, in milliseconds.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn one() -> f64 {
    1.0
}
fn default_service() -> String {
    "weir".into()
}
fn default_queue() -> usize {
    4096
}
fn default_timeout() -> u64 {
    5000
}

impl Default for TracesConfig {
    fn default() -> Self {
        TracesConfig {
            enabled: false,
            endpoint: None,
            protocol: Protocol::default(),
            sampling_ratio: one(),
            service_name: default_service(),
            instance_id: None,
            resource: BTreeMap::new(),
            queue_spans: default_queue(),
            timeout_ms: default_timeout(),
        }
    }
}

/// What happened to the spans.
#[derive(Debug, Default)]
pub struct SpanStats {
    /// Accepted by the endpoint.
    pub exported: AtomicU64,
    /// Dropped because the queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Dropped because the export failed or timed out.
    pub dropped_export_failed: AtomicU64,
}

/// The host's tracer, once traces are on.
pub struct Tracing {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
    /// Counters for `/metrics`.
    pub stats: Arc<SpanStats>,
    flushed: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

static TRACING: OnceLock<Tracing> = OnceLock::new();
/// Counters shown in `/metrics` even when traces are off (all zero then).
static NO_STATS: OnceLock<Arc<SpanStats>> = OnceLock::new();

/// The tracer, when traces are on.
pub fn tracer() -> Option<&'static Tracing> {
    TRACING.get()
}

/// The span counters.
pub fn stats() -> Arc<SpanStats> {
    match TRACING.get() {
        Some(t) => t.stats.clone(),
        None => NO_STATS.get_or_init(Arc::default).clone(),
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "localhost".into());
    format!("{host}-{}", std::process::id())
}

#[derive(Debug)]
struct QueueProcessor {
    tx: tokio::sync::mpsc::Sender<SpanData>,
    stats: Arc<SpanStats>,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.tx.try_send(span).is_err() {
            self.stats.dropped_queue_full.fetch_add(1, Relaxed);
        }
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

/// Most spans in one export request.
const EXPORT_BATCH: usize = 512;

/// Turns traces on, exporting from the current tokio runtime. Returns what it exports to.
pub fn init(config: &TracesConfig) -> Result<String, HostError> {
    let protocol = match env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL")).as_deref() {
        Some("grpc") => Protocol::Grpc,
        Some("http/protobuf") => Protocol::HttpProtobuf,
        Some(other) => {
            return Err(HostError::Telemetry(format!("OTEL_EXPORTER_OTLP_PROTOCOL {other:?} is not supported; use grpc or http/protobuf")))
        }
        None => config.protocol,
    };
    let endpoint = match (env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), env("OTEL_EXPORTER_OTLP_ENDPOINT"), &config.endpoint) {
        (Some(e), _, _) => e,
        (None, Some(base), _) if protocol == Protocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
        (None, Some(base), _) => base,
        (None, None, Some(e)) => e.clone(),
        (None, None, None) if protocol == Protocol::HttpProtobuf => "http://127.0.0.1:4318/v1/traces".into(),
        (None, None, None) => "http://127.0.0.1:4317".into(),
    };
    let ratio = match env("OTEL_TRACES_SAMPLER_ARG") {
        Some(v) => {
            v.parse::<f64>().map_err(|_| HostError::Telemetry(format!("OTEL_TRACES_SAMPLER_ARG {v:?} is not a number between 0 and 1")))?
        }
        None => config.sampling_ratio,
    };
    if !(0.0..=1.0).contains(&ratio) {
        return Err(HostError::Telemetry(format!("traces.sampling_ratio {ratio} must be between 0 and 1")));
    }
    let timeout = Duration::from_millis(config.timeout_ms.max(1));
    let mut exporter = match protocol {
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(&endpoint).with_timeout(timeout).build(),
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(&endpoint)
            .with_timeout(timeout)
            .build(),
    }
    .map_err(|e| HostError::Telemetry(format!("traces: cannot export to {endpoint}: {e}")))?;
    let mut attributes: Vec<KeyValue> = config.resource.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect();
    attributes.push(KeyValue::new("service.instance.id", config.instance_id.clone().unwrap_or_else(instance_id)));
    attributes.push(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    let resource = Resource::builder_empty()
        .with_attributes(attributes)
        .with_detector(Box::new(opentelemetry_sdk::resource::EnvResourceDetector::new()))
        .with_service_name(env("OTEL_SERVICE_NAME").unwrap_or_else(|| config.service_name.clone()))
        .build();
    exporter.set_resource(&resource);
    let stats = Arc::new(SpanStats::default());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<SpanData>(config.queue_spans.max(1));
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
        .with_resource(resource)
        .with_span_processor(QueueProcessor { tx, stats: stats.clone() })
        .build();
    let tracer = provider.tracer("weir");
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let s = stats.clone();
    let target = endpoint.clone();
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(EXPORT_BATCH);
        let mut failing = false;
        while rx.recv_many(&mut batch, EXPORT_BATCH).await > 0 {
            let n = batch.len() as u64;
            let result = tokio::time::timeout(timeout, exporter.export(std::mem::take(&mut batch))).await;
            match result {
                Ok(Ok(())) => {
                    s.exported.fetch_add(n, Relaxed);
                    if failing {
                        tracing::info!(endpoint = %target, "Traces reach the OTLP endpoint again.");
                        failing = false;
                    }
                }
                Ok(Err(e)) => {
                    s.dropped_export_failed.fetch_add(n, Relaxed);
                    if !failing {
                        tracing::warn!(endpoint = %target, error = %e, "Spans dropped: the OTLP endpoint did not take them (counted in weir_telemetry_spans_total).");
                        failing = true;
                    }
                }
                Err(_) => {
                    s.dropped_export_failed.fetch_add(n, Relaxed);
                    if !failing {
                        tracing::warn!(endpoint = %target, "Spans dropped: the OTLP export timed out (counted in weir_telemetry_spans_total).");
                        failing = true;
                    }
                }
            }
            if n < EXPORT_BATCH as u64 {
                // Let the next request gather more spans.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let _ = done_tx.send(());
    });
    TRACING
        .set(Tracing { tracer, provider, stats, flushed: Mutex::new(Some(done_rx)) })
        .map_err(|_| HostError::Telemetry("traces are already on".to_owned()))?;
    Ok(format!("{endpoint} ({protocol:?}, sampling {ratio})"))
}

impl Tracing {
    /// Exports the spans still queued, waiting at most `timeout`.
    pub async fn flush(&self, timeout: Duration) {
        let _ = self.provider.shutdown();
        let done = self.flushed.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(done) = done {
            let _ = tokio::time::timeout(timeout, done).await;
        }
    }
}

/// Parses a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
pub fn parse_traceparent(value: &[u8]) -> Option<SpanContext> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let mut parts = s.split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok().filter(|t| *t != TraceId::INVALID)?;
    let span_id = SpanId::from_hex(span).ok().filter(|s| *s != SpanId::INVALID)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(SpanContext::new(trace_id, span_id, TraceFlags::new(flags) & TraceFlags::SAMPLED, true, TraceState::default()))
}

/// Formats a span context as a W3C `traceparent`.
pub fn traceparent(cx: &SpanContext) -> String {
    format!("00-{}-{}-{:02x}", cx.trace_id(), cx.span_id(), cx.trace_flags().to_u8())
}

/// Most links a span keeps to the other traces in its batch.
const MAX_LINKS: usize = 32;

/// The trace a batch continues: the first record's `traceparent`, and links to the others.
pub fn batch_parent(batch: &BatchRef<'_>) -> (Option<SpanContext>, Vec<Link>) {
    let mut parent: Option<SpanContext> = None;
    let mut links = Vec::new();
    for r in batch.iter() {
        let Some(cx) = r.header("traceparent").and_then(parse_traceparent) else { continue };
        match &parent {
            None => parent = Some(cx),
            Some(p)
                if p.trace_id() != cx.trace_id()
                    && links.len() < MAX_LINKS
                    && !links.iter().any(|l: &Link| l.span_context.trace_id() == cx.trace_id()) =>
            {
                links.push(Link::with_context(cx))
            }
            Some(_) => {}
        }
    }
    (parent, links)
}

/// Where a span sits in the pipeline.
pub struct SpanSite<'a> {
    /// The pipeline's name.
    pub pipeline: &'a str,
    /// The stage's name.
    pub stage: &'a str,
    /// The plugin's name.
    pub plugin: &'a str,
    /// `source`, `transform` or `sink`.
    pub kind: &'static str,
}

/// One stage's span for one batch.
pub struct StageSpan(opentelemetry_sdk::trace::Span);

impl Tracing {
    /// Starts the span of one stage for one batch of `records`, child of `parent` (a new
    /// trace when there is none).
    pub fn start(
        &self,
        site: &SpanSite<'_>,
        parent: Option<&SpanContext>,
        links: Vec<Link>,
        records: usize,
        start: SystemTime,
    ) -> StageSpan {
        let cx = match parent {
            Some(p) => Context::new().with_remote_span_context(p.clone()),
            None => Context::new(),
        };
        let kind = match site.kind {
            "source" => SpanKind::Consumer,
            "sink" => SpanKind::Producer,
            _ => SpanKind::Internal,
        };
        let span = self
            .tracer
            .span_builder(format!("{} {}", site.kind, site.stage))
            .with_kind(kind)
            .with_start_time(start)
            .with_links(links)
            .with_attributes([
                KeyValue::new("weir.pipeline", site.pipeline.to_owned()),
                KeyValue::new("weir.stage", site.stage.to_owned()),
                KeyValue::new("weir.stage.kind", site.kind),
                KeyValue::new("weir.plugin", site.plugin.to_owned()),
                KeyValue::new("weir.records", records as i64),
            ])
            .start_with_context(&self.tracer, &cx);
        StageSpan(span)
    }
}

impl StageSpan {
    /// The span's context, for its children.
    pub fn context(&self) -> SpanContext {
        self.0.span_context().clone()
    }

    /// Whether the span is recorded.
    pub fn sampled(&self) -> bool {
        self.0.span_context().is_sampled()
    }

    /// Adds a count attribute.
    pub fn count(&mut self, key: &'static str, n: usize) {
        if n > 0 {
            self.0.set_attribute(KeyValue::new(key, n as i64));
        }
    }

    /// Marks the span failed.
    pub fn fail(&mut self, message: &str) {
        self.0.set_status(Status::error(message.to_owned()));
    }

    /// Ends the span now.
    pub fn end(mut self) {
        self.0.end();
    }

    /// Ends the span at `at`.
    pub fn end_at(mut self, at: SystemTime) {
        self.0.end_with_timestamp(at);
    }
}

/// Copies `batch` with each record's `traceparent` pointing at `cx`, for the records of
/// `cx`'s trace and those without one (records of other traces keep theirs).
pub fn with_traceparent(batch: &BatchRef<'_>, cx: &SpanContext) -> BatchBuf {
    let value = traceparent(cx);
    let mut out = BatchBuf::with_capacity(batch.len(), batch.data_len() + batch.len() * 64);
    let mut raw = Vec::new();
    for (i, r) in batch.iter().enumerate() {
        let own = r.header("traceparent").and_then(parse_traceparent);
        if own.as_ref().is_some_and(|o| o.trace_id() != cx.trace_id()) {
            out.push_record(i as u32, &r);
            continue;
        }
        raw.clear();
        for (name, v) in r.headers().filter(|(n, _)| *n != "traceparent") {
            encode_header(&mut raw, name, v);
        }
        out.push(i as u32, Head { headers_raw: &raw, extra_headers: &[("traceparent", value.as_bytes())], ..Head::from(&r) }, r.value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_bad_ones_are_ignored() {
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = parse_traceparent(tp).expect("valid");
        assert!(cx.is_sampled());
        assert_eq!(traceparent(&cx).as_bytes(), tp);
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"garbage",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn rewriting_keeps_other_headers_and_other_traces() {
        let mine = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let other = "00-11111111111111111111111111111111-00f067aa0ba902b7-01";
        let mut b = BatchBuf::new();
        b.push(0, Head { extra_headers: &[("a", b"1"), ("traceparent", mine.as_bytes())], ..Default::default() }, b"x");
        b.push(1, Head { extra_headers: &[("traceparent", other.as_bytes())], ..Default::default() }, b"y");
        b.push(2, Head::default(), b"z");
        let cx = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("1111111111111111").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let out = with_traceparent(&b.as_ref(), &cx);
        let out = out.as_ref();
        let new = "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01";
        assert_eq!(out.get(0).header("a"), Some(&b"1"[..]));
        assert_eq!(out.get(0).header("traceparent"), Some(new.as_bytes()));
        assert_eq!(out.get(0).headers().filter(|(n, _)| *n == "traceparent").count(), 1);
        assert_eq!(out.get(1).header("traceparent"), Some(other.as_bytes()));
        assert_eq!(out.get(2).header("traceparent"), Some(new.as_bytes()));
        assert_eq!(out.get(2).value, b"z");
        let (parent, links) = batch_parent(&b.as_ref());
        assert_eq!(parent.unwrap().span_id(), SpanId::from_hex("00f067aa0ba902b7").unwrap());
        assert_eq!(links.len(), 1);
    }
}
