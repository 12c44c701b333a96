//! Transform workers: several threads run a pipeline's transforms at once and the sinks
//! still get batches in source order; duplicates posted at the same moment from many
//! connections pass `dedupe` once, whichever worker sees them.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// One keep-alive HTTP/1.1 connection posting JSON; returns each answer's status.
struct Conn {
    reader: BufReader<TcpStream>,
    port: u16,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Conn { reader: BufReader::new(stream), port }
    }

    fn post(&mut self, body: &str) -> u16 {
        let request = format!(
            "POST /produce HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.port,
            body.len()
        );
        self.reader.get_mut().write_all(request.as_bytes()).unwrap();
        let mut status = String::new();
        self.reader.read_line(&mut status).unwrap();
        let code = status.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        code
    }
}

#[test]
fn four_workers_hand_batches_to_the_sinks_in_source_order() {
    let scene = Scene::new();
    let out = scene.path("out.jsonl");
    // Answered once queued: the next batch is on its way before this one is through, so
    // batches overtake each other in the workers unless they are put back in order.
    scene.pipeline(
        "ordered",
        "settings: {transform_workers: 4}\nsource: {plugin: http, config: {listen: \"127.0.0.1:@PORT@\", respond_after: accepted}}\n\
         transforms:\n  - {plugin: enrich, config: {set: {checked: \"yes\"}}}\n  - {plugin: noop}\n\
         sinks: [{plugin: file, config: {path: @DIR@/out.jsonl}}]\n",
    );
    let weir = scene.start(&["--no-watch"], &[]);
    let (batches, per_batch) = (400, 25);
    let mut conn = Conn::open(scene.port);
    for b in 0..batches {
        let events: Vec<Value> =
            (0..per_batch).map(|i| json!({"eventType": "tick", "userId": format!("u{}", i % 5), "seq": b * per_batch + i})).collect();
        assert_eq!(conn.post(&Value::Array(events).to_string()), 202);
    }
    let total = (batches * per_batch) as usize;
    wait_for("every event written", Duration::from_secs(30), || json_lines(&out).len() >= total);
    let seqs: Vec<u64> = json_lines(&out).iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..total as u64).collect::<Vec<_>>(), "the file has the events in the order they were posted");
    let workers = std::fs::read_dir(format!("/proc/{}/task", weir.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .filter(|name| name.starts_with("weir-transforms"))
        .count();
    assert_eq!(workers, 4, "four transform threads");
}

#[test]
fn duplicates_posted_at_once_from_many_connections_pass_dedupe_once() {
    let scene = Scene::new();
    let (port, out) = (scene.port, scene.path("out.jsonl"));
    scene.pipeline(
        "dedupe",
        "settings: {transform_workers: 4}\nsource: {plugin: http, config: {listen: \"127.0.0.1:@PORT@\"}}\n\
         transforms: [{plugin: dedupe, config: {fields: [/eventId], window: 10m}}]\n\
         sinks: [{plugin: file, config: {path: @DIR@/out.jsonl}}]\n",
    );
    let weir = scene.start(&["--no-watch"], &[]);
    // 8 connections post the same 1,500 ids in the same order, 20 to a batch, at once.
    let ids = 1500;
    let posters: Vec<_> = (0..8)
        .map(|c| {
            std::thread::spawn(move || {
                let mut conn = Conn::open(port);
                for chunk in (0..ids).collect::<Vec<u32>>().chunks(20) {
                    let events: Vec<Value> = chunk.iter().map(|i| json!({"eventId": format!("e{i}"), "from": c})).collect();
                    assert_eq!(conn.post(&Value::Array(events).to_string()), 200);
                }
            })
        })
        .collect();
    for p in posters {
        p.join().unwrap();
    }
    let written = json_lines(&out);
    let mut count: HashMap<String, usize> = HashMap::new();
    for v in &written {
        *count.entry(v["eventId"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "written more than once: {twice:?}");
    let missing: HashSet<u32> = (0..ids).filter(|i| !count.contains_key(&format!("e{i}"))).collect();
    assert!(missing.is_empty(), "never written: {missing:?}");
    let dropped = weir.metric(r#"weir_stage_records_dropped_total{pipeline="dedupe",stage="dedupe",plugin="dedupe"}"#);
    assert_eq!(dropped, Some(7.0 * ids as f64), "the other seven copies of each were dropped as duplicates");
}

/// Writes `n` JSON lines `{"id": i, "mark": …}` with every 50th record marked `poison`.
fn marked_records(path: &std::path::Path, n: usize) {
    let lines: String = (0..n).map(|i| format!("{{\"id\":{i},\"mark\":\"{}\"}}\n", if i % 50 == 0 { "poison" } else { "ok" })).collect();
    std::fs::write(path, lines).unwrap();
}

/// The `id` of each JSON line of `path` (of its `record` for dead letters), counted.
fn ids(path: &std::path::Path, pointer: &str) -> HashMap<u64, usize> {
    let mut seen = HashMap::new();
    for v in common::json_lines(path) {
        *seen.entry(v.pointer(pointer).and_then(Value::as_u64).unwrap_or_else(|| panic!("no {pointer} in {v}"))).or_default() += 1;
    }
    seen
}

#[test]
fn a_sinks_workers_write_batches_at_once_and_every_record_is_settled_once() {
    let scene = Scene::new();
    marked_records(&scene.path("in.jsonl"), 2_000);
    // `test-meet` passes a batch only once four batches are being written at the same
    // moment, so the pipeline finishes only if the four workers overlap.
    scene.pipeline(
        "fan",
        "source: {plugin: file, config: {path: @DIR@/in.jsonl, batch_size: 20}}\nsinks:\n  - {name: meet, plugin: test-meet, workers: 4, config: {together: 4}}\n  - {name: flaky, plugin: test-flaky, workers: 3, config: {reject_marker: poison}}\n  - {name: out, plugin: file, after: flaky, takes: delivered, config: {path: @DIR@/out.jsonl}}\ndead_letter: {plugin: file, config: {path: @DIR@/dlq.jsonl}}\n",
    );
    let admin = format!("127.0.0.1:{}", free_port());
    let out = weir(&["run", "--once", "--no-watch", "--pipelines", scene.pipelines.to_str().unwrap(), "--admin", &admin], &[]);
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{logs}");
    assert!(!logs.contains("Sink failed the batch"), "no batch failed: {logs}");
    let poison: HashSet<u64> = (0..2_000).step_by(50).collect();
    let delivered = ids(&scene.path("out.jsonl"), "/id");
    assert_eq!(delivered.len(), 2_000 - poison.len(), "every record not refused reaches the sink after `flaky`");
    assert!(delivered.iter().all(|(id, &n)| n == 1 && !poison.contains(id)), "each once, none refused");
    let letters = common::json_lines(&scene.path("dlq.jsonl"));
    let refused = ids(&scene.path("dlq.jsonl"), "/record/id");
    assert_eq!(refused.keys().copied().collect::<HashSet<_>>(), poison, "exactly the poison records are dead letters");
    assert!(refused.values().all(|&n| n == 1), "each once: {refused:?}");
    assert!(letters.iter().all(|l| l["stage"] == "flaky" && l["reason"] == "poison record"), "{:?}", letters.first());
}

#[test]
fn without_workers_a_sink_writes_one_batch_at_a_time() {
    // The same meeting sink with one instance: its batches never overlap, so each fails for
    // good with the reason and goes to the dead letters (the test above can fail).
    let scene = Scene::new();
    marked_records(&scene.path("in.jsonl"), 40);
    scene.pipeline(
        "single",
        "source: {plugin: file, config: {path: @DIR@/in.jsonl, batch_size: 20}}\nsinks: [{name: meet, plugin: test-meet, config: {together: 2, timeout_ms: 200}}]\ndead_letter: {plugin: file, config: {path: @DIR@/dlq.jsonl}}\n",
    );
    let admin = format!("127.0.0.1:{}", free_port());
    let out = weir(&["run", "--once", "--no-watch", "--pipelines", scene.pipelines.to_str().unwrap(), "--admin", &admin], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let letters = common::json_lines(&scene.path("dlq.jsonl"));
    assert_eq!(letters.len(), 40, "{:?}", letters.first());
    let why = |l: &Value| {
        l["stage"] == "meet" && l["reason"].as_str().is_some_and(|r| r.starts_with("only 1 batches were written at once, not 2"))
    };
    assert!(letters.iter().all(why), "{:?}", letters.iter().find(|l| !why(l)));
}

#[test]
fn workers_are_refused_for_a_sink_that_holds_one_file() {
    let scene = Scene::new();
    let path = scene.pipeline(
        "p",
        "source: {plugin: file, config: {path: in.jsonl}}\nsinks:\n  - {name: out, plugin: file, workers: 2, config: {path: out.jsonl}}\n",
    );
    let out = weir(&["validate", path.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("p.yaml:3:") && err.contains("sinks[0].workers: sink file cannot run several instances side by side"), "{err}");
}
