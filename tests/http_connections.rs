//! The http source's connections: reloads under keep-alive load answer every request and
//! close no connection under a client; connections are capped and time out; bodies that lie
//! about their length or are too large get the truth, and the client can read it.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Pipeline `ingest` at `version`: http (with the extra config `http`) → enrich → `out.jsonl`.
fn ingest(version: u32, http: &str) -> String {
    format!(
        "name: ingest\nsource: {{plugin: http, config: {{listen: \"127.0.0.1:@PORT@\"{http}}}}}\ntransforms:\n  - plugin: enrich\n    config: {{set: {{version: {version}}}}}\nsinks:\n  - plugin: file\n    config: {{path: @DIR@/out.jsonl}}\n"
    )
}

/// `ingest` at version 0 in its own directory, and its output file.
fn setup(http: &str) -> (Scene, std::path::PathBuf) {
    let s = Scene::nested();
    s.pipeline("ingest", &ingest(0, http));
    let out = s.path("out.jsonl");
    (s, out)
}

fn written_ids(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Replaces the pipeline `count` times through the admin API, each time waiting until the
/// new version writes.
fn reload_times(weir: &Weir, s: &Scene, count: u32) {
    for version in 1..=count {
        s.pipeline("ingest", &ingest(version, ""));
        let r = curl("POST", &weir.url("/reload"), None, None);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["replaced"], serde_json::json!(["ingest"]), "{r:?}");
        wait_for("the new version's events", Duration::from_secs(5), || {
            std::fs::read_to_string(s.path("out.jsonl"))
                .unwrap_or_default()
                .lines()
                .last()
                .is_some_and(|l| l.contains(&format!("\"version\":{version}")))
        });
    }
}

/// Every id written exactly once.
fn assert_written_once(out: &std::path::Path, answered: &[String]) {
    let written = written_ids(out);
    let unique: HashSet<&String> = written.iter().collect();
    assert_eq!(unique.len(), written.len(), "an event was written twice");
    let missing: Vec<&String> = answered.iter().filter(|id| !unique.contains(id)).collect();
    assert!(missing.is_empty(), "answered 200 but not written: {missing:?}");
}

// Observed before: 20 reloads under wrk (16 keep-alive connections) gave 0 non-2xx but 132
// socket read errors: the old version closed idle keep-alive connections under clients
// that were sending their next request.
#[test]
fn twenty_reloads_under_wrk_leave_no_socket_error() {
    let (s, out) = setup("");
    let weir = s.start(&["--no-watch"], &[]);
    let script = repo().join("tests/clients/wrk-events.lua");
    let wrk = Command::new("wrk")
        .args(["-t2", "-c16", "-d60s", "--latency", "-s"])
        .arg(&script)
        .arg(s.url("/produce"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wrk is installed (scripts/deps.sh)");
    wait_for("wrk's first events", Duration::from_secs(10), || written_ids(&out).len() > 100);
    reload_times(&weir, &s, 20);
    let pid = wrk.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let wrk = wrk.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&wrk.stdout);
    assert!(report.contains("requests in"), "wrk printed no summary: {report}\n{}", String::from_utf8_lossy(&wrk.stderr));
    assert!(!report.contains("Socket errors"), "socket errors across reloads:\n{report}");
    assert!(!report.contains("Non-2xx"), "failed requests across reloads:\n{report}");
    let requests: u64 =
        report.lines().find_map(|l| l.trim().split_once(" requests in").and_then(|(n, _)| n.trim().parse().ok())).expect("request count");
    let written = written_ids(&out);
    assert!(written.len() as u64 >= requests, "wrk saw {requests} answers, {} events written", written.len());
    let unique: HashSet<&String> = written.iter().collect();
    assert_eq!(unique.len(), written.len(), "an event was written twice");
    println!("wrk across 20 reloads: {requests} requests, 0 socket errors\n{report}");
}

// Observed before: 8 keep-alive clients across 8 reloads: 30 requests answered with EOF and
// no response. Clients here pause 0 to 1 s between requests: an idle connection is handed to
// the new version with the listener, not closed under the client.
#[test]
fn keep_alive_clients_across_reloads_get_every_answer() {
    let (s, out) = setup("");
    let weir = s.start(&["--no-watch"], &[]);
    let stop = s.path("stop");
    let client = Command::new("python3")
        .arg(repo().join("tests/clients/keepalive.py"))
        .arg(s.port.to_string())
        .arg(&stop)
        .arg("0,0,0,0,0.05,0.2,0.3,1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the clients' first events", Duration::from_secs(10), || written_ids(&out).len() > 50);
    reload_times(&weir, &s, 20);
    std::fs::write(&stop, "").unwrap();
    let client = client.wait_with_output().unwrap();
    assert!(client.status.success(), "{}", String::from_utf8_lossy(&client.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&client.stdout).unwrap();
    assert_eq!(summary["errors"], serde_json::json!([]), "requests without an answer: {summary}");
    assert_eq!(summary["statuses"], serde_json::json!({}), "requests not answered 200: {summary}");
    let ok: Vec<String> = summary["ok"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    assert!(ok.len() > 100, "too few requests to mean anything: {}", ok.len());
    assert_written_once(&out, &ok);
    println!("keep-alive clients across 20 reloads: {} requests, 0 errors", summary["requests"]);
}

fn read_all(stream: &mut TcpStream, limit: Duration) -> String {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

fn request(path: &str, body: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

// Observed before: 18,654 idle connections were held (no cap), RSS grew from 82 to 398 MB
// and stayed there after they closed.
#[test]
fn connections_beyond_max_connections_are_refused_and_memory_returns() {
    const MAX: usize = 4000;
    const OPEN: usize = 10_000;
    let (s, _) = setup(&format!(", max_connections: {MAX}, idle_timeout_ms: 120000, header_timeout_ms: 120000"));
    let weir = s.start(&["--no-watch"], &[]);
    let addr = format!("127.0.0.1:{}", s.port);
    for i in 0..200 {
        assert_eq!(post_json(&format!("http://{addr}/produce"), &format!(r#"{{"id":"warm-{i}"}}"#)).status, 200);
    }
    let before = rss_mb(weir.pid());
    let mut conns: Vec<TcpStream> = (0..OPEN).map(|_| TcpStream::connect(&addr).expect("connect")).collect();
    // The first MAX are held open; every later one is answered 503 and closed.
    let mut refused = 0;
    for c in conns[MAX..].iter_mut() {
        let answer = read_all(c, Duration::from_secs(10));
        assert!(answer.starts_with("HTTP/1.1 503"), "beyond the cap: {answer:?}");
        assert!(answer.to_ascii_lowercase().contains("retry-after: 1"), "{answer}");
        refused += 1;
    }
    let held = rss_mb(weir.pid());
    // Below the cap, connections are served.
    let mut first = conns.swap_remove(0);
    first.write_all(request("/produce", r#"{"id":"held"}"#).as_bytes()).unwrap();
    let mut buf = [0u8; 12];
    first.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    first.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    assert_eq!(
        weir.metric(r#"weir_plugin_http_connections_refused_total{pipeline="ingest",stage="http",plugin="http"}"#),
        Some(refused as f64)
    );
    drop(first);
    drop(conns);
    // Once they are closed, a new connection is served again and memory comes back.
    wait_for("a connection served again after the others closed", Duration::from_secs(10), || {
        post_json(&format!("http://{addr}/produce"), r#"{"id":"after"}"#).status == 200
    });
    let mut after = rss_mb(weir.pid());
    let deadline = Instant::now() + Duration::from_secs(10);
    while after > before * 1.2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        after = rss_mb(weir.pid());
    }
    println!("RSS: {before:.1} MiB before, {held:.1} MiB with {MAX} held and {refused} refused, {after:.1} MiB after close");
    assert!(after <= before * 1.2, "RSS {before:.1} MiB before, {held:.1} MiB held, {after:.1} MiB after close");
}

#[test]
fn slow_headers_and_idle_keep_alive_connections_are_closed() {
    let (s, _) = setup(", header_timeout_ms: 300, idle_timeout_ms: 600");
    let _weir = s.start(&["--no-watch"], &[]);
    let addr = format!("127.0.0.1:{}", s.port);
    // Headers that never finish: cut after the header timeout.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"POST /produce HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = Instant::now();
    assert_eq!(read_all(&mut slow, Duration::from_secs(5)), "");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(3), "cut after {took:?}");
    // A keep-alive connection is told the idle timeout and closed after it.
    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.write_all(request("/produce", r#"{"id":"a"}"#).as_bytes()).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = vec![0u8; 1024];
    let n = idle.read(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200") && head.contains("keep-alive: timeout=1"), "{head}");
    let started = Instant::now();
    let rest = read_all(&mut idle, Duration::from_secs(5));
    let took = started.elapsed();
    assert!(!rest.contains("HTTP/1.1"), "{rest}");
    assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(3), "closed after {took:?}");
}

// Observed before: a body shorter than its Content-Length answered 413 "larger than".
#[test]
fn a_body_shorter_than_its_content_length_gets_the_truth() {
    let (s, out) = setup(", idle_timeout_ms: 500");
    let _weir = s.start(&["--no-watch"], &[]);
    let addr = format!("127.0.0.1:{}", s.port);
    let body = r#"{"id":"short"}"#;
    // The client stops sending (and says so): 400 with what arrived.
    let mut c = TcpStream::connect(&addr).unwrap();
    write!(c, "POST /produce HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{body}").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let answer = read_all(&mut c, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains(&format!("the body ended after {} bytes of the 100 its Content-Length declared", body.len())), "{answer}");
    // The client goes silent: 408 after the idle timeout.
    let mut c = TcpStream::connect(&addr).unwrap();
    write!(c, "POST /produce HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{body}").unwrap();
    let answer = read_all(&mut c, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("no byte of the body arrived for 500 ms"), "{answer}");
    assert_eq!(written_ids(&out), Vec::<String>::new(), "nothing of a broken body is taken");
}

// Observed before: an 8 MiB body sent by Python's urllib ended in BrokenPipeError before
// the client could read the 413.
#[test]
fn a_client_sending_a_large_body_before_reading_gets_its_413() {
    let (s, _) = setup("");
    let _weir = s.start(&["--no-watch"], &[]);
    let script = format!(
        r#"
import json, urllib.request, urllib.error
body = b'[' + b','.join([b'{{"id":"x"}}'] * (8 * 1024 * 1024 // 11)) + b']'
request = urllib.request.Request("http://127.0.0.1:{}/produce", data=body, headers={{"Content-Type": "application/json"}})
try:
    urllib.request.urlopen(request, timeout=30)
    print("accepted")
except urllib.error.HTTPError as e:
    print(e.code, json.loads(e.read())["error"])
"#,
        s.port
    );
    let out = Command::new("python3").args(["-c", &script]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}{}", stdout, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("413 the body is"), "{stdout}");
    assert!(stdout.contains("larger than the 1048576 allowed"), "{stdout}");
}
