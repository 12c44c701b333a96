//! A minimal OTLP/gRPC trace receiver for benchmarks: accepts every export and prints how
//! many spans it received when it gets SIGTERM or SIGINT.
//!
//! `otlp_counter 127.0.0.1:4317`

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};

struct Counter(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Counter {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = req.get_ref().resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.0.fetch_add(n as u64, Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:4317".into()).parse().expect("an address, host:port");
    let spans = Arc::new(AtomicU64::new(0));
    let server = tonic::transport::Server::builder().add_service(TraceServiceServer::new(Counter(spans.clone()))).serve(addr);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        r = server => r.expect("serve"),
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!("{}", spans.load(Relaxed));
}
