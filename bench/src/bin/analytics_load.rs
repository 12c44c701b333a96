//! `analytics_load`: the Event Analytics Platform benchmark's data, loaded through the
//! ingest API. Seeded and reproducible: `--events` events (default 10 million) of `--users`
//! users (200,000) over `--days` days (30, from 2024-01-01) with ten event names, one
//! project, each event with its `eventId`, sent in batches of `--batch` (1,000) over
//! `--connections` keep-alive connections; a 503 or 429 is retried after a pause. Prints the
//! events/s and what was refused. With `--print`, writes the events as JSON lines instead.
//!
//! ```text
//! analytics_load --url http://127.0.0.1:3000/api/v1/events --key wk_… --events 10000000
//! ```

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../http1.rs"]
mod http1;

use clap::Parser;
use http1::{parse_url, read_response};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The names, most frequent first (a funnel's steps are rarer than page views).
const NAMES: [(&str, u32); 10] = [
    ("page_view", 30),
    ("click", 20),
    ("search", 10),
    ("signup", 5),
    ("add_to_cart", 10),
    ("checkout_start", 7),
    ("purchase", 5),
    ("share", 5),
    ("login", 5),
    ("logout", 3),
];

/// Loads the benchmark's events through the analytics ingest API.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
struct Args {
    /// The ingest endpoint, `http://host:port/api/v1/events`.
    #[arg(long, default_value = "http://127.0.0.1:3000/api/v1/events")]
    url: String,
    /// The API key (`X-API-Key`).
    #[arg(long)]
    key: String,
    /// Events in all.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Distinct users.
    #[arg(long, default_value_t = 200_000)]
    users: u64,
    /// Days the events span, from 2024-01-01.
    #[arg(long, default_value_t = 30)]
    days: u64,
    /// Events per request.
    #[arg(long, default_value_t = 1000)]
    batch: u64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 8)]
    connections: u64,
    /// The generator's seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The first event's number (to load more after an earlier run, with new ids).
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Print the events as JSON lines instead of sending them (for a bulk load with `COPY`).
    #[arg(long)]
    print: bool,
}

/// SplitMix64: event `i`'s random numbers depend only on the seed and `i`.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Event `i` as JSON.
fn event(args: &Args, i: u64, out: &mut Vec<u8>) {
    let r = mix(args.seed ^ mix(i));
    let user = r % args.users;
    let second = (mix(r) >> 8) % (args.days * 86_400);
    let total: u32 = NAMES.iter().map(|(_, w)| w).sum();
    let mut pick = (mix(r ^ 1) % u64::from(total)) as u32;
    let name = NAMES
        .iter()
        .find(|(_, w)| {
            if pick < *w {
                true
            } else {
                pick -= w;
                false
            }
        })
        .map(|(n, _)| *n)
        .unwrap_or("page_view");
    let (day, rest) = (second / 86_400, second % 86_400);
    let (y, m, d) = date(day);
    let plan = if user.is_multiple_of(3) { "pro" } else { "free" };
    let text = format!(
        r#"{{"eventId":"e{i}","userId":"user{user}","eventName":"{name}","timestamp":"{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z","sessionId":"s{user}-{day}","pageUrl":"/p/{}","properties":{{"plan":"{plan}","n":{}}}}}"#,
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        r % 50,
        r % 1000
    );
    out.extend_from_slice(text.as_bytes());
}

fn leap(y: u64) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

/// The civil date `days` after 2024-01-01.
fn date(days: u64) -> (u64, u64, u64) {
    let (mut y, mut left) = (2024u64, days);
    loop {
        let len = if leap(y) { 366 } else { 365 };
        if left < len {
            break;
        }
        left -= len;
        y += 1;
    }
    let feb = if leap(y) { 29 } else { 28 };
    let months = [31, feb, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut m = 0;
    while left >= months[m] {
        left -= months[m];
        m += 1;
    }
    (y, m as u64 + 1, left + 1)
}

#[derive(Default)]
struct Counts {
    accepted: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    retried: AtomicU64,
}

fn field(body: &str, name: &str) -> u64 {
    let key = format!("\"{name}\":");
    body.find(&key)
        .map(|at| body[at + key.len()..].chars().take_while(char::is_ascii_digit).collect::<String>())
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

async fn connection(args: Arc<Args>, conn: u64, next: Arc<AtomicU64>, counts: Arc<Counts>) {
    let (host, path) = parse_url(&args.url);
    let mut stream = TcpStream::connect(&host).await.expect("connect to the endpoint");
    stream.set_nodelay(true).ok();
    let mut buf = Vec::new();
    let mut body = Vec::new();
    loop {
        let first = next.fetch_add(args.batch, Relaxed);
        if first >= args.first + args.events {
            break;
        }
        let last = (first + args.batch).min(args.first + args.events);
        body.clear();
        body.push(b'[');
        for i in first..last {
            if i > first {
                body.push(b',');
            }
            event(&args, i, &mut body);
        }
        body.push(b']');
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nX-API-Key: {}\r\nContent-Length: {}\r\n\r\n",
            args.key,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        loop {
            stream.write_all(&req).await.expect("send");
            let (status, body) = read_response(&mut stream, &mut buf).await.expect("an answer");
            let text = String::from_utf8_lossy(&buf[body]).into_owned();
            match status {
                200 | 400 => {
                    counts.accepted.fetch_add(field(&text, "accepted"), Relaxed);
                    counts.duplicates.fetch_add(field(&text, "duplicates"), Relaxed);
                    counts.rejected.fetch_add(text.matches("\"index\"").count() as u64, Relaxed);
                    break;
                }
                429 | 503 => {
                    counts.retried.fetch_add(1, Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => panic!("connection {conn}: status {other}: {text}"),
            }
        }
    }
}

fn main() {
    let args = Arc::new(Args::parse());
    if args.print {
        use std::io::Write as _;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
        let mut line = Vec::with_capacity(512);
        for i in args.first..args.first + args.events {
            line.clear();
            event(&args, i, &mut line);
            line.push(b'\n');
            if out.write_all(&line).is_err() {
                return;
            }
        }
        let _ = out.flush();
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a runtime");
    let next = Arc::new(AtomicU64::new(args.first));
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> =
            (0..args.connections).map(|c| tokio::spawn(connection(args.clone(), c, next.clone(), counts.clone()))).collect();
        for t in tasks {
            t.await.expect("a connection");
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let accepted = counts.accepted.load(Relaxed);
    println!(
        r#"{{"events":{},"seconds":{secs:.1},"events_per_sec":{:.0},"accepted":{accepted},"duplicates":{},"rejected":{},"retried_requests":{}}}"#,
        args.events,
        args.events as f64 / secs,
        counts.duplicates.load(Relaxed),
        counts.rejected.load(Relaxed),
        counts.retried.load(Relaxed)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_events_are_reproducible() {
        assert_eq!(date(0), (2024, 1, 1));
        assert_eq!(date(59), (2024, 2, 29));
        assert_eq!(date(366), (2025, 1, 1));
        let args = Args::parse_from(["analytics_load", "--key", "k"]);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        event(&args, 7, &mut a);
        event(&args, 7, &mut b);
        assert_eq!(a, b);
        let v: weir_plugin::serde_json::Value = weir_plugin::serde_json::from_slice(&a).unwrap();
        assert!(v["timestamp"].as_str().unwrap().starts_with("2024-01"), "{v}");
    }
}
