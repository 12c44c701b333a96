//! An OTLP receiver built from the official OpenTelemetry protobuf definitions
//! (`opentelemetry-proto`): gRPC (tonic) and HTTP/protobuf on two loopback ports. It keeps
//! what it receives so a test can look at spans, metrics and logs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{MetricsService, MetricsServiceServer};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use prost::Message;

/// One received span.
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_id: String,
    pub name: String,
    /// The resource's `service.name`.
    pub service: String,
    pub attributes: BTreeMap<String, String>,
}

/// One received log record.
#[derive(Debug, Clone)]
pub struct Log {
    pub body: String,
    pub severity: String,
    pub service: String,
    pub attributes: BTreeMap<String, String>,
}

/// One data point of a metric: its attributes and its value (sums and gauges), or its
/// count and sum (histograms).
#[derive(Debug, Clone)]
pub struct Point {
    pub attributes: BTreeMap<String, String>,
    pub value: f64,
    pub count: u64,
}

#[derive(Default)]
struct Store {
    spans: Mutex<Vec<Span>>,
    logs: Mutex<Vec<Log>>,
    metrics: Mutex<Vec<ExportMetricsServiceRequest>>,
    requests: Mutex<BTreeMap<&'static str, u32>>,
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter().map(|kv| (kv.key.clone(), text(&kv.value))).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    fn count(&self, signal: &'static str) {
        *self.requests.lock().unwrap().entry(signal).or_default() += 1;
    }

    fn traces(&self, req: ExportTraceServiceRequest) {
        self.count("traces");
        let mut spans = self.spans.lock().unwrap();
        for rs in req.resource_spans {
            let service =
                rs.resource.as_ref().map(|r| attributes(&r.attributes)).unwrap_or_default().remove("service.name").unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push(Span {
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_id: hex(&s.parent_span_id),
                        name: s.name.clone(),
                        service: service.clone(),
                        attributes: attributes(&s.attributes),
                    });
                }
            }
        }
    }

    fn logs(&self, req: ExportLogsServiceRequest) {
        self.count("logs");
        let mut logs = self.logs.lock().unwrap();
        for rl in req.resource_logs {
            let service =
                rl.resource.as_ref().map(|r| attributes(&r.attributes)).unwrap_or_default().remove("service.name").unwrap_or_default();
            for sl in rl.scope_logs {
                for l in sl.log_records {
                    logs.push(Log {
                        body: text(&l.body),
                        severity: l.severity_text.clone(),
                        service: service.clone(),
                        attributes: attributes(&l.attributes),
                    });
                }
            }
        }
    }

    fn metrics(&self, req: ExportMetricsServiceRequest) {
        self.count("metrics");
        self.metrics.lock().unwrap().push(req);
    }
}

struct Grpc(Arc<Store>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.traces(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        req: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.metrics(req.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        req: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.0.logs(req.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

/// The receiver; stops when dropped.
pub struct Receiver {
    /// gRPC address (`http://…` for an OTLP exporter).
    pub grpc: SocketAddr,
    /// HTTP/protobuf address.
    pub http: SocketAddr,
    store: Arc<Store>,
    _rt: tokio::runtime::Runtime,
}

fn protobuf(bytes: Vec<u8>) -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/x-protobuf")], bytes)
}

impl Receiver {
    /// Starts both listeners on free loopback ports.
    pub fn start() -> Receiver {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let store = Arc::new(Store::default());
        let (grpc, http) = rt.block_on(async {
            let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addrs = (grpc_listener.local_addr().unwrap(), http_listener.local_addr().unwrap());
            let s = store.clone();
            tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(Grpc(s.clone())))
                    .add_service(MetricsServiceServer::new(Grpc(s.clone())))
                    .add_service(LogsServiceServer::new(Grpc(s)))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc_listener))
                    .await
                    .unwrap();
            });
            let (t, m, l) = (store.clone(), store.clone(), store.clone());
            let app = axum::Router::new()
                .route(
                    "/v1/traces",
                    post(move |body: Bytes| async move {
                        t.traces(ExportTraceServiceRequest::decode(body).expect("a valid OTLP trace request"));
                        protobuf(ExportTraceServiceResponse::default().encode_to_vec())
                    }),
                )
                .route(
                    "/v1/metrics",
                    post(move |body: Bytes| async move {
                        m.metrics(ExportMetricsServiceRequest::decode(body).expect("a valid OTLP metrics request"));
                        protobuf(ExportMetricsServiceResponse::default().encode_to_vec())
                    }),
                )
                .route(
                    "/v1/logs",
                    post(move |body: Bytes| async move {
                        l.logs(ExportLogsServiceRequest::decode(body).expect("a valid OTLP logs request"));
                        protobuf(ExportLogsServiceResponse::default().encode_to_vec())
                    }),
                );
            tokio::spawn(async move { axum::serve(http_listener, app).await.unwrap() });
            addrs
        });
        Receiver { grpc, http, store, _rt: rt }
    }

    /// `http://127.0.0.1:PORT` of the gRPC listener.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// `http://127.0.0.1:PORT` of the HTTP listener.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.store.spans.lock().unwrap().clone()
    }

    /// Every log record received so far.
    pub fn logs(&self) -> Vec<Log> {
        self.store.logs.lock().unwrap().clone()
    }

    /// Export requests received, by signal.
    pub fn requests(&self, signal: &str) -> u32 {
        self.store.requests.lock().unwrap().get(signal).copied().unwrap_or_default()
    }

    /// The data points of metric `name` from `service` in the latest export that has it.
    pub fn metric(&self, service: &str, name: &str) -> Option<Vec<Point>> {
        let all = self.store.metrics.lock().unwrap();
        for req in all.iter().rev() {
            for rm in &req.resource_metrics {
                let from = rm.resource.as_ref().map(|r| attributes(&r.attributes)).unwrap_or_default().remove("service.name");
                if from.as_deref() != Some(service) {
                    continue;
                }
                for sm in &rm.scope_metrics {
                    if let Some(m) = sm.metrics.iter().find(|m| m.name == name) {
                        let number = |v: &Option<number_data_point::Value>| match v {
                            Some(number_data_point::Value::AsDouble(d)) => *d,
                            Some(number_data_point::Value::AsInt(i)) => *i as f64,
                            None => f64::NAN,
                        };
                        let points = match &m.data {
                            Some(metric::Data::Sum(s)) => s
                                .data_points
                                .iter()
                                .map(|p| Point { attributes: attributes(&p.attributes), value: number(&p.value), count: 0 })
                                .collect(),
                            Some(metric::Data::Gauge(g)) => g
                                .data_points
                                .iter()
                                .map(|p| Point { attributes: attributes(&p.attributes), value: number(&p.value), count: 0 })
                                .collect(),
                            Some(metric::Data::Histogram(h)) => h
                                .data_points
                                .iter()
                                .map(|p| Point { attributes: attributes(&p.attributes), value: p.sum.unwrap_or_default(), count: p.count })
                                .collect(),
                            _ => Vec::new(),
                        };
                        return Some(points);
                    }
                }
            }
        }
        None
    }
}
