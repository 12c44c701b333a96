//! `bare_http`: the physical limit of the ingest work on this machine, with no pipeline: a
//! hyper server (HTTP/1.1 keep-alive, a thread per core) that reads each POST body, parses
//! it into its records (a JSON array of events, or one event, each kept as raw bytes, as the
//! `http` source does) and answers 200 with the count. `scripts/bench-workers.sh` loads it
//! like the pipelines.
//!
//! ```text
//! cargo run --release -p weir-bench --bin bare_http -- 127.0.0.1:3901
//! ```

use std::convert::Infallible;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use weir_plugin::serde_json::{self, value::RawValue};

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(Response::builder().status(400).body(Full::new(Bytes::from_static(b"{}"))).expect("response")),
    };
    let records = match serde_json::from_slice::<Vec<&RawValue>>(&body) {
        Ok(events) => events.len(),
        Err(_) => usize::from(serde_json::from_slice::<&RawValue>(&body).is_ok()),
    };
    let text = format!(r#"{{"success":true,"accepted":{records}}}"#);
    Ok(Response::builder().header("content-type", "application/json").body(Full::new(Bytes::from(text))).expect("response"))
}

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3901".into());
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, hyper::service::service_fn(answer)).await;
        });
    }
}
