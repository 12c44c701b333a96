//! `enrich`: what the `enrich` transform costs per batch, with the default pipeline's
//! config, on 100-record batches of 300-byte events, through the plugin ABI.
//!
//! ```text
//! cargo run --release -p weir-bench --bin enrich -- target/release
//! ```

use std::time::Instant;

use weir::loader::Registry;
use weir_plugin::{BatchBuf, Head};

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "target/release".into());
    let registry = Registry::discover(&[dir.clone().into()], true);
    let plugin = registry.get("enrich", weir_plugin::abi::Kind::TRANSFORM).unwrap_or_else(|e| panic!("{e} (in {dir})")).clone();
    let metrics = weir::metrics::Metrics::default();
    let host = weir_bench::stage_host(&metrics, "enrich", "enrich");
    // As in pipelines/default.yaml.
    let config = r#"{"set":{"receivedAt":"{{received_at}}","clientIp":"{{header:http.client_ip}}","userAgent":"{{header:http.user_agent}}","host":"{{hostname}}"},"set_if_missing":{"eventId":"{{uuid}}"},"key":"/userId"}"#;
    let mut instance = weir::ffi::Instance::create(&plugin, config, host).expect("create enrich");

    let mut batch = BatchBuf::new();
    let pad = "x".repeat(160);
    for i in 0..100 {
        let v = format!(
            r#"{{"eventType":"page_view","userId":"user-{i}","timestamp":"2024-01-01T12:00:00.000Z","screen":"main","n":{i}.50,"pad":"{pad}"}}"#
        );
        let headers: [(&str, &[u8]); 2] = [("http.client_ip", b"127.0.0.1"), ("http.user_agent", b"weir-bench/1")];
        batch.push(i, Head { extra_headers: &headers, timestamp_ms: Some(1_704_110_400_000), ..Default::default() }, v.as_bytes());
    }
    let input = batch.as_ref();
    let rounds = 50_000;
    for _ in 0..1_000 {
        std::hint::black_box(instance.process(&input).expect("process").batch().expect("valid").len());
    }
    let started = Instant::now();
    for _ in 0..rounds {
        let out = instance.process(&input).expect("process");
        std::hint::black_box(out.batch().expect("valid").len());
    }
    let per_batch = started.elapsed().as_nanos() as f64 / rounds as f64;
    println!("enrich: {per_batch:.0} ns per 100-record batch ({:.0} ns per record)", per_batch / 100.0);
}
