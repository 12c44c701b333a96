//! `boundary`: what one call across the plugin ABI costs. Loads the `noop` transform from
//! a plugin directory and runs 100-record batches of 300-byte events through it, against
//! the same copy done in-process with no boundary.
//!
//! ```text
//! cargo run --release -p weir-bench --bin boundary -- target/release
//! ```

use std::time::Instant;

use weir::loader::Registry;
use weir_plugin::{BatchBuf, Head, Output};

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "target/release".into());
    let registry = Registry::discover(&[dir.clone().into()], true);
    let plugin = registry.get("noop", weir_plugin::abi::Kind::TRANSFORM).unwrap_or_else(|e| panic!("{e} (in {dir})")).clone();
    let metrics = weir::metrics::Metrics::default();
    let host = weir_bench::stage_host(&metrics, "noop", "noop");
    let mut instance = weir::ffi::Instance::create(&plugin, "{}", host).expect("create noop");

    let mut batch = BatchBuf::new();
    let pad = "x".repeat(200);
    for i in 0..100 {
        let v = format!(r#"{{"eventType":"page_view","userId":"user-{i}","eventId":"id-{i}","pad":"{pad}"}}"#);
        batch.push(
            i,
            Head { extra_headers: &[("http.client_ip", b"127.0.0.1")], timestamp_ms: Some(0), ..Default::default() },
            v.as_bytes(),
        );
    }
    let input = batch.as_ref();
    let rounds = 200_000;

    let started = Instant::now();
    for _ in 0..rounds {
        let out = instance.process(&input).expect("process");
        std::hint::black_box(out.batch().expect("valid").len());
    }
    let abi = started.elapsed().as_nanos() as f64 / rounds as f64;

    let started = Instant::now();
    for _ in 0..rounds {
        let mut out = Output { batch: BatchBuf::with_capacity(input.len(), input.data_len() * 3 / 2), ..Default::default() };
        for (i, r) in input.iter().enumerate() {
            out.pass(i, &r);
        }
        std::hint::black_box(out.batch.len());
    }
    let direct = started.elapsed().as_nanos() as f64 / rounds as f64;
    println!(
        "{{\"batch_records\":100,\"abi_ns_per_batch\":{abi:.0},\"in_process_ns_per_batch\":{direct:.0},\"boundary_ns_per_batch\":{:.0}}}",
        abi - direct
    );
    weir::loader::remove_private_copies();
}
