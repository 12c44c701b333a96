//! How long finding one field of a record takes, per record, for the events `weir-bench`
//! sends (~300 B objects): the SDK's `json::Doc` (one serde_json scan keeping the top-level
//! members, then a lookup), a full `serde_json::Value` parse, and sonic-rs's lazy `get`
//! (SIMD skipping, no tree) and its object iterator (every top-level member, like `Doc`).
//!
//!   cargo run --release --manifest-path bench/scan/Cargo.toml      # ROUNDS=5 RECORDS=200000

use std::time::Instant;

use weir_plugin::json::{Doc, Pointer};

fn records(n: usize) -> Vec<String> {
    let pad = "x".repeat(160);
    (0..n)
        .map(|i| {
            format!(r#"{{"eventType":"page_view","userId":"user-{}","eventId":"c1-s{i}-i{}","timestamp":"2024-01-01T12:00:00.000Z","screen":"main_post","pad":"{pad}"}}"#, i % 1000, i % 100)
        })
        .collect()
}

fn time(name: &str, records: &[String], mut f: impl FnMut(&str) -> usize) {
    let started = Instant::now();
    let mut found = 0;
    for r in records {
        found += f(r);
    }
    let elapsed = started.elapsed();
    let bytes: usize = records.iter().map(String::len).sum();
    assert_eq!(found, records.len(), "{name} found every eventId");
    println!(
        "{name:<34} {:>7.1} ns/record {:>7.0} MB/s",
        elapsed.as_nanos() as f64 / records.len() as f64,
        bytes as f64 / elapsed.as_secs_f64() / 1e6
    );
}

fn main() {
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (rounds, n) = (env("ROUNDS", 5), env("RECORDS", 200_000));
    let records = records(n);
    println!("{n} records of {} bytes, {rounds} rounds", records[0].len());
    let field = Pointer::parse("/eventId").unwrap();
    for round in 1..=rounds {
        println!("round {round}");
        time("json::Doc (serde_json RawValue)", &records, |r| {
            Doc::parse(r.as_bytes()).ok().and_then(|d| d.get_str(&field)).map_or(0, |s| usize::from(!s.is_empty()))
        });
        time("serde_json::Value, full parse", &records, |r| {
            let v: serde_json::Value = serde_json::from_str(r).unwrap();
            usize::from(v.pointer("/eventId").and_then(|v| v.as_str()).is_some())
        });
        time("sonic_rs::get (lazy)", &records, |r| usize::from(sonic_rs::get(r, &["eventId"]).is_ok()));
        time("sonic_rs::to_object_iter (members)", &records, |r| {
            let mut found = 0;
            for item in sonic_rs::to_object_iter(r) {
                let (k, _v) = item.unwrap();
                if k == "eventId" {
                    found = 1;
                }
            }
            found
        });
    }
}
