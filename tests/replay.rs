//! `weir replay`: dead letters from a file and from a Kafka topic (each written by a
//! `dead_letter` sink) go back into a running pipeline, each stored once in PostgreSQL
//! (its unique key) however often it is replayed, with headers saying it was replayed; and
//! `POST /pipelines/{name}/records`, which it uses.

#[path = "common/broker.rs"]
mod broker;
mod common;
#[path = "common/postgres.rs"]
mod postgres;

use std::time::Duration;

use broker::Broker;
use common::*;
use postgres::{psql, Schema, SERVER};

/// Posts `ids` as events marked `bad` (the refusing pipeline's sink rejects them).
fn post_bad(url: &str, ids: std::ops::Range<u64>) {
    let events: Vec<String> = ids.map(|i| format!(r#"{{"event_id":"e{i}","n":{i}.10,"bad":true}}"#)).collect();
    for chunk in events.chunks(500) {
        let r = post_json(url, &format!("[{}]", chunk.join(",")));
        // Every one refused by the sink, which the source answers with 400.
        assert_eq!((r.status, r.json()["accepted"].as_u64()), (400, Some(0)), "{}", &r.body[..r.body.len().min(300)]);
    }
}

#[test]
fn dead_letters_from_a_file_and_a_topic_are_replayed_into_a_pipeline_and_stored_once() {
    let broker = Broker::memory();
    broker.create_topic("dead", 1);
    let schema = Schema::new("replay");
    let table = format!("{}.events", schema.0);
    let dir = tempfile::tempdir().unwrap();
    let (refuse_file, refuse_topic, store) = (free_port(), free_port(), free_port());
    let dead_file = dir.path().join("dead.jsonl");
    // Two pipelines whose sink refuses every record: dead letters to a file, and to a topic.
    let refusing = |name: &str, port: u16, dead_letter: &str| {
        write_pipeline(
            dir.path(),
            name,
            &format!(
                "source: {{plugin: http, config: {{listen: \"127.0.0.1:{port}\"}}}}\nsinks:\n  - plugin: test-flaky\n    config: {{reject_marker: '\"bad\":true'}}\ndead_letter:\n{dead_letter}"
            ),
        )
    };
    refusing("to_file", refuse_file, &format!("  plugin: file\n  config: {{path: {}}}\n", dead_file.display()));
    refusing("to_topic", refuse_topic, &format!("  plugin: kafka\n  config: {{brokers: \"{}\", topic: dead}}\n", broker.addr));
    // The pipeline the dead letters go back into: each event once by its id, and which stage
    // refused it, from the replay's header.
    write_pipeline(
        dir.path(),
        "store",
        &format!(
            "source: {{plugin: http, config: {{listen: \"127.0.0.1:{store}\"}}}}\nsinks:\n  - plugin: postgres\n    config:\n      url: \"{SERVER}\"\n      table: {table}\n      create: true\n      unique_key: [event_id]\n      columns:\n        - {{name: event_id, type: TEXT NOT NULL, from: /event_id}}\n        - {{name: n, type: NUMERIC, from: /n}}\n        - {{name: replayed_from, type: TEXT, from: /replayed_from, fallback: \"{{{{header:weir.replay.stage}}}}\"}}\n"
        ),
    );
    let host = Weir::start(dir.path(), &["--no-watch"], &[]);
    post_bad(&format!("http://127.0.0.1:{refuse_file}/produce"), 0..1000);
    post_bad(&format!("http://127.0.0.1:{refuse_topic}/produce"), 1000..2000);
    assert_eq!(json_lines(&dead_file).len(), 1000);

    let admin = host.admin.clone();
    let replay = |from: &str, extra: &[&str]| {
        let mut args = vec!["replay", from, "--pipeline", "store", "--admin", admin.as_str()];
        args.extend_from_slice(extra);
        weir(&args, &[])
    };
    let count = || psql(SERVER, &format!("SELECT count(*) FROM {table}"));
    // A filter that matches nothing sends nothing.
    let none = replay(dead_file.to_str().unwrap(), &["--stage", "postgres"]);
    assert!(none.status.success(), "{}", String::from_utf8_lossy(&none.stderr));
    assert!(String::from_utf8_lossy(&none.stderr).contains("0 of 1000 dead letters chosen"), "{}", String::from_utf8_lossy(&none.stderr));
    // From the file, twice: each stored once.
    for _ in 0..2 {
        let out = replay(dead_file.to_str().unwrap(), &["--stage", "test-flaky", "--reason", "poison"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("replayed 1000 into store: 1000 accepted"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert_eq!(count(), "1000");
    // From the topic.
    let topic = format!("kafka://{}/dead", broker.addr);
    let out = replay(&topic, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(count(), "2000");
    assert_eq!(psql(SERVER, &format!("SELECT count(DISTINCT event_id) FROM {table}")), "2000");
    // Every value as it was written, every row marked as replayed from the refusing stage.
    assert_eq!(psql(SERVER, &format!("SELECT n FROM {table} WHERE event_id IN ('e7', 'e1999') ORDER BY n")), "7.10\n1999.10");
    assert_eq!(psql(SERVER, &format!("SELECT DISTINCT replayed_from FROM {table}")), "test-flaky");
}

#[test]
fn records_posted_to_a_pipeline_get_each_outcome_back() {
    let scene = Scene::new();
    scene.pipeline(
        "checked",
        "source:\n  plugin: http\n  config: {listen: \"127.0.0.1:@PORT@\"}\ntransforms:\n  - plugin: filter\n    config: {drop: 'has(record.skip) && record.skip == true'}\nsinks:\n  - plugin: test-flaky\n    config: {reject_marker: poison}\n",
    );
    let weir = scene.start(&["--no-watch"], &[]);
    let body = r#"{"records":[{"value":{"a":1}},{"value":{"a":"poison"}},{"value":{"skip":true}},{"text":"not json","key":"k"}]}"#;
    let r = curl("POST", &weir.url("/pipelines/checked/records"), Some("application/json"), Some(body.as_bytes()));
    assert_eq!(r.status, 200, "{r:?}");
    let a = r.json();
    assert_eq!(a["accepted"], 1, "{a}");
    assert_eq!(a["dropped"], 1, "{a}");
    let rejected: Vec<u64> = a["rejected"].as_array().unwrap().iter().map(|r| r["index"].as_u64().unwrap()).collect();
    assert_eq!(rejected, [1, 3], "{a}");
    assert!(a["rejected"][0]["reason"].as_str().unwrap().contains("poison record"), "{a}");
    let bad =
        curl("POST", &weir.url("/pipelines/checked/records"), Some("application/json"), Some(br#"{"records":[{"value":1,"text":"x"}]}"#));
    assert_eq!(bad.status, 422, "{bad:?}");
    assert_eq!(curl("POST", &weir.url("/pipelines/nothing/records"), Some("application/json"), Some(b"{\"records\":[]}")).status, 404);
    wait_for("the counters", Duration::from_secs(5), || {
        weir.metric(r#"weir_stage_records_in_total{pipeline="checked",stage="filter",plugin="filter"}"#) == Some(4.0)
    });
}
