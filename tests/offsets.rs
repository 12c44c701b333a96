//! A Kafka source's offsets through the admin API (Kafka Connect's KIP-875): read with lag
//! while a producer runs, refused while the pipeline runs, moved to a time and reset while
//! it is paused, checked against what the independent client (confluent-kafka) reads of
//! the group's committed offsets, and `weir_source_lag` in `/metrics`.

#[path = "common/broker.rs"]
mod broker;
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use broker::{committed, produce, Broker};
use common::*;

fn ids(path: &std::path::Path) -> Vec<u64> {
    json_lines(path).iter().map(|r| r["id"].as_u64().unwrap()).collect()
}

fn produce_ids(broker: &Broker, from: u64, to: u64) {
    let values: Vec<String> = (from..to).map(|i| format!(r#"{{"id":{i}}}"#)).collect();
    let keyed: Vec<(Option<String>, &str)> = values.iter().enumerate().map(|(i, v)| (Some(format!("k{}", i % 6)), v.as_str())).collect();
    let refs: Vec<(Option<&str>, &str)> = keyed.iter().map(|(k, v)| (k.as_deref(), *v)).collect();
    produce(broker, "moves", &refs);
}

fn send(weir: &Weir, method: &str, path: &str, body: Option<&str>) -> Reply {
    curl(method, &weir.url(path), body.map(|_| "application/json"), body.map(str::as_bytes))
}

/// Sums a field over the partitions of a `GET …/offsets` answer.
fn total(offsets: &serde_json::Value, field: &str) -> i64 {
    offsets["partitions"].as_array().unwrap().iter().map(|p| p[field].as_i64().unwrap_or(0)).sum()
}

#[test]
fn offsets_are_read_with_lag_moved_to_a_time_while_paused_and_reset() {
    // SQLite storage: a consumer moved into the middle of a record batch must get the rest
    // of it (tansu 0.6's memory engine returns nothing then).
    let broker = Broker::persistent();
    broker.create_topic("moves", 2);
    produce_ids(&broker, 0, 60);
    // Every record produced from now on is stamped at or after `t`.
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    produce_ids(&broker, 60, 100);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    write_pipeline(
        dir.path(),
        "consume",
        &format!(
            "source:\n  plugin: kafka\n  config: {{brokers: \"{}\", topics: [moves], group_id: mover, batch_size: 20, session_timeout_ms: 6000}}\nsinks:\n  - plugin: file\n    config: {{path: {}}}\n",
            broker.addr,
            out.display()
        ),
    );
    let weir = Weir::start(dir.path(), &["--no-watch"], &[]);
    wait_for("the first 100 records", Duration::from_secs(60), || ids(&out).len() >= 100);
    wait_for("the group to commit 100", Duration::from_secs(30), || committed(&broker, "moves", "mover").0 == 100);

    // Read: the same committed offsets as the independent client, nothing left to read.
    let offsets = send(&weir, "GET", "/pipelines/consume/offsets", None);
    assert_eq!(offsets.status, 200, "{offsets:?}");
    let o = offsets.json();
    assert_eq!((o["group"].as_str(), o["stage"].as_str(), o["plugin"].as_str()), (Some("mover"), Some("kafka"), Some("kafka")), "{o}");
    assert_eq!(o["partitions"].as_array().unwrap().len(), 2, "{o}");
    assert_eq!(total(&o, "committed"), 100, "{o}");
    assert_eq!(o["lag"], 0, "{o}");

    // Moving offsets of a running pipeline is refused with what to do.
    let refused = send(&weir, "PATCH", "/pipelines/consume/offsets", Some(r#"{"to": "earliest"}"#));
    assert_eq!(refused.status, 409, "{refused:?}");
    assert!(refused.body.contains("only while it is paused"), "{}", refused.body);
    let refused = send(&weir, "DELETE", "/pipelines/consume/offsets", None);
    assert_eq!(refused.status, 409, "{refused:?}");

    // Paused while a producer goes on: the lag grows by what was produced.
    assert_eq!(send(&weir, "POST", "/pipelines/consume/pause", None).status, 200);
    produce_ids(&broker, 100, 130);
    wait_for("a lag of 30", Duration::from_secs(30), || send(&weir, "GET", "/pipelines/consume/offsets", None).json()["lag"] == 30);
    let o = send(&weir, "GET", "/pipelines/consume/offsets", None).json();
    assert_eq!(total(&o, "committed"), 100, "nothing more was committed while paused: {o}");
    assert_eq!(total(&o, "high_watermark"), 130, "{o}");
    assert_eq!(o["paused"], true);
    wait_for("weir_source_lag to add up to 30", Duration::from_secs(30), || {
        let m = weir.metrics();
        let lag: f64 = m
            .lines()
            .filter(|l| l.starts_with("weir_source_lag{") && l.contains(r#"pipeline="consume""#) && l.contains(r#"topic="moves""#))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        lag == 30.0
    });

    // Bad bodies say what is expected; nothing moves.
    for body in [r#"{"to": "yesterday"}"#, r#"{"offset": 3}"#, r#"[1]"#, r#"{"to": "earliest", "timestamp": 0}"#] {
        let r = send(&weir, "PATCH", "/pipelines/consume/offsets", Some(body));
        assert_eq!(r.status, 422, "{body}: {r:?}");
        assert!(r.json()["error"].as_str().unwrap().contains("earliest"), "{body}: {}", r.body);
    }
    let r = send(&weir, "PATCH", "/pipelines/consume/offsets", Some(r#"{"offsets": [{"topic": "moves", "partition": 7, "offset": 0}]}"#));
    assert_eq!(r.status, 422, "{r:?}");
    assert!(r.body.contains("moves/7 is not assigned"), "{}", r.body);
    assert_eq!(committed(&broker, "moves", "mover").0, 100);

    // To a time: the group's committed offsets are where the first record at or after it is.
    let moved = send(&weir, "PATCH", "/pipelines/consume/offsets", Some(&format!(r#"{{"timestamp": {t}}}"#)));
    assert_eq!(moved.status, 200, "{moved:?}");
    assert_eq!(committed(&broker, "moves", "mover").0, 60, "the independent client reads the moved offsets");
    let before = ids(&out).len();
    assert_eq!(send(&weir, "POST", "/pipelines/consume/resume", None).status, 200);
    // Exactly the records from the time on come again (60..100), then the new ones (100..130).
    let expected: Vec<u64> = (60..130).collect();
    let mut again = Vec::new();
    wait_for("the records after the time", Duration::from_secs(60), || {
        again = ids(&out)[before..].to_vec();
        again.len() >= expected.len()
    });
    again.sort();
    assert_eq!(again, expected);
    wait_for("the group to commit 130", Duration::from_secs(30), || committed(&broker, "moves", "mover").0 == 130);

    // Reset: back to where the source starts without offsets (`start: earliest`).
    assert_eq!(send(&weir, "POST", "/pipelines/consume/pause", None).status, 200);
    let reset = send(&weir, "DELETE", "/pipelines/consume/offsets", None);
    assert_eq!(reset.status, 200, "{reset:?}");
    assert_eq!(committed(&broker, "moves", "mover").0, 0);
    let before = ids(&out).len();
    assert_eq!(send(&weir, "POST", "/pipelines/consume/resume", None).status, 200);
    wait_for("every record once more", Duration::from_secs(60), || ids(&out).len() >= before + 130);
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for id in &ids(&out)[before..] {
        *counts.entry(*id).or_default() += 1;
    }
    assert_eq!(counts.len(), 130);
    assert!(counts.values().all(|&n| n == 1), "each record once after the reset");
}

#[test]
fn a_source_without_offsets_says_so() {
    let scene = Scene::new();
    scene.pipeline("plain", "source:\n  plugin: http\n  config: {listen: \"127.0.0.1:@PORT@\"}\nsinks:\n  - plugin: discard\n");
    let weir = scene.start(&["--no-watch"], &[]);
    let r = send(&weir, "GET", "/pipelines/plain/offsets", None);
    assert_eq!(r.status, 409, "{r:?}");
    assert!(r.body.contains("keeps no offsets"), "{}", r.body);
    assert_eq!(send(&weir, "GET", "/pipelines/nothing/offsets", None).status, 404);
}
