//! `weir-bench`: drives an HTTP ingest endpoint over keep-alive connections with batches
//! of unique JSON events and prints events/s and request latency percentiles.
//!
//! ```text
//! weir-bench --url http://127.0.0.1:3001/produce --batch 100 --event-bytes 300 --seconds 10
//! ```

mod http1;

use std::time::{Duration, Instant};

use clap::Parser;
use http1::{parse_url, read_response};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Load generator for Weir's HTTP ingest benchmark.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
struct Args {
    /// Endpoint, `http://host:port/path` (plain HTTP/1.1 only).
    #[arg(long, default_value = "http://127.0.0.1:3001/produce")]
    url: String,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Events per request (a JSON array).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Approximate size of one event in bytes.
    #[arg(long, default_value_t = 300)]
    event_bytes: usize,
    /// Measured duration in seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Warm-up in seconds, not measured.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Events per second over all connections; 0 sends as fast as answers come.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
}

#[derive(Default)]
struct Stats {
    ok: u64,
    busy: u64,
    other: u64,
    latencies_us: Vec<u32>,
}

/// One request body: `batch` unique events of about `size` bytes each.
fn body(conn: usize, seq: u64, batch: usize, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch * (size + 2) + 2);
    out.push(b'[');
    for i in 0..batch {
        if i > 0 {
            out.push(b',');
        }
        let start = out.len();
        let head = format!(
            r#"{{"eventType":"page_view","userId":"user-{}","eventId":"c{conn}-s{seq}-i{i}","timestamp":"2024-01-01T12:00:00.000Z","screen":"main_post","pad":""#,
            (seq as usize * batch + i) % 1000
        );
        out.extend_from_slice(head.as_bytes());
        let used = out.len() - start + 2;
        out.extend(std::iter::repeat_n(b'x', size.saturating_sub(used)));
        out.extend_from_slice(b"\"}");
    }
    out.push(b']');
    out
}

async fn connection(args: Args, conn: usize, measure_from: Instant, until: Instant) -> Stats {
    let (host, path) = parse_url(&args.url);
    let mut stream = TcpStream::connect(&host).await.expect("connect to the endpoint");
    stream.set_nodelay(true).ok();
    let mut stats = Stats::default();
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut seq = 0u64;
    let pace = (args.rate > 0.0).then(|| std::time::Duration::from_secs_f64(args.connections as f64 * args.batch as f64 / args.rate));
    let mut next = Instant::now();
    while Instant::now() < until {
        if let Some(pace) = pace {
            tokio::time::sleep_until(next.into()).await;
            next += pace;
        }
        let payload = body(conn, seq, args.batch, args.event_bytes);
        seq += 1;
        let mut req =
            format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", payload.len())
                .into_bytes();
        req.extend_from_slice(&payload);
        let started = Instant::now();
        stream.write_all(&req).await.expect("send");
        let (status, _) = read_response(&mut stream, &mut buf).await.expect("response");
        if started < measure_from {
            continue;
        }
        stats.latencies_us.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
        match status {
            200 | 202 => stats.ok += 1,
            503 => stats.busy += 1,
            _ => stats.other += 1,
        }
    }
    stats
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads.max(1)).enable_all().build().expect("runtime");
    let total = rt.block_on(async {
        let start = Instant::now();
        let measure_from = start + Duration::from_secs_f64(args.warmup);
        let until = measure_from + Duration::from_secs_f64(args.seconds);
        let tasks: Vec<_> = (0..args.connections).map(|c| tokio::spawn(connection(args.clone(), c, measure_from, until))).collect();
        let mut total = Stats::default();
        for t in tasks {
            let s = t.await.expect("connection task");
            total.ok += s.ok;
            total.busy += s.busy;
            total.other += s.other;
            total.latencies_us.extend(s.latencies_us);
        }
        total
    });
    let mut lat = total.latencies_us;
    lat.sort_unstable();
    let events_per_sec = (total.ok as f64 * args.batch as f64) / args.seconds;
    let (p50, p99) = (percentile(&lat, 0.50), percentile(&lat, 0.99));
    if args.json {
        println!(
            "{{\"events_per_sec\":{events_per_sec:.0},\"requests_ok\":{},\"requests_503\":{},\"requests_other\":{},\"p50_ms\":{p50:.2},\"p99_ms\":{p99:.2}}}",
            total.ok, total.busy, total.other
        );
    } else {
        println!(
            "events/s: {events_per_sec:.0}  requests ok: {}  503: {}  other: {}  latency p50: {p50:.2} ms  p99: {p99:.2} ms",
            total.ok, total.busy, total.other
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_json_arrays_of_unique_events_of_the_asked_size() {
        let b = body(3, 7, 5, 300);
        let text = String::from_utf8(b).unwrap();
        assert!(text.starts_with('[') && text.ends_with(']'));
        let events: Vec<&str> = text[1..text.len() - 1].split("},{").collect();
        assert_eq!(events.len(), 5);
        assert!(text.contains(r#""eventId":"c3-s7-i4""#));
        assert!((295..=305).contains(&(events[1].len() + 2)), "{}", events[1].len());
    }

    #[test]
    fn urls_split_into_host_and_path() {
        assert_eq!(parse_url("http://127.0.0.1:3001/produce"), ("127.0.0.1:3001".into(), "/produce".into()));
    }
}
