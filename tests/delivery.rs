//! Delivery on a bad day: dead letters (a poison record reaches the dead-letter sink with its
//! reason while the rest flows) and retries that give up after their maximum duration.

mod common;
#[path = "common/postgres.rs"]
mod pg;

use std::time::{Duration, Instant};

use common::*;
use pg::{psql, SERVER};

/// `http` → `validate` (requires `id`) → `file` (`out.jsonl`) + `test-flaky` (rejects
/// "poison"), with `dead_letter` as given.
fn poison_pipeline(scene: &Scene, dead_letter: &str) {
    std::fs::write(scene.path("event.schema.json"), r#"{"type":"object","required":["id"]}"#).unwrap();
    let yaml = "source: {plugin: http, config: {listen: \"127.0.0.1:@PORT@\"}}\ntransforms: [{plugin: validate, config: {schema: event.schema.json}}]\nsinks:\n  - {plugin: file, config: {path: @DIR@/out.jsonl}}\n  - {plugin: test-flaky, config: {reject_marker: poison}}\ndead_letter:\n";
    scene.pipeline("ingest", &format!("{yaml}{dead_letter}"));
}

const BATCH: &str = r#"[{"id":1},{"nope":2},{"id":3,"x":"poison"},{"id":4}]"#;

#[test]
fn poison_records_reach_the_dead_letter_file_with_stage_and_reason_while_the_rest_flows() {
    let scene = Scene::new();
    let (out, dlq) = (scene.path("out.jsonl"), scene.path("dlq.jsonl"));
    poison_pipeline(&scene, "  plugin: file\n  config: {path: @DIR@/dlq.jsonl}\n");
    let weir = scene.start(&[], &[]);
    let url = scene.url("/produce");
    let r = post_json(&url, BATCH);
    assert_eq!(r.status, 200, "{r:?}");
    let body = r.json();
    assert_eq!(body["accepted"], 2, "{body}");
    assert_eq!(body["rejected"].as_array().unwrap().len(), 2, "{body}");
    // The answer came after the dead letters were written.
    let letters = json_lines(&dlq);
    assert_eq!(letters.len(), 2, "{letters:?}");
    let validate = letters.iter().find(|l| l["stage"] == "validate").expect("the validate rejection");
    assert_eq!(validate["record"], serde_json::json!({"nope": 2}));
    assert_eq!(validate["outcome"], "rejected");
    assert!(validate["reason"].as_str().unwrap().contains("\"id\" is a required property"), "{validate}");
    assert!(validate["time"].as_str().unwrap().starts_with("20"), "{validate}");
    assert_eq!(validate["headers"]["http.client_ip"], "127.0.0.1");
    let flaky = letters.iter().find(|l| l["stage"] == "test-flaky").expect("the sink's rejection");
    assert_eq!(flaky["record"], serde_json::json!({"id": 3, "x": "poison"}));
    assert_eq!(flaky["reason"], "poison record");
    // The rest flows: the file sink has every valid record, and more keep coming.
    assert_eq!(json_lines(&out).iter().map(|l| l["id"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 3, 4]);
    assert_eq!(post_json(&url, r#"{"id":5}"#).status, 200);
    assert_eq!(weir.metric(r#"weir_stage_records_out_total{pipeline="ingest",stage="dead_letter",plugin="file"}"#), Some(2.0));
    assert_eq!(weir.metric(r#"weir_pipeline_records_total{pipeline="ingest",stage="http",plugin="http",outcome="rejected"}"#), Some(2.0));
}

#[test]
fn dead_letters_can_go_to_a_postgresql_table() {
    let scene = Scene::new();
    let table = format!("public.weir_dead_letters_{}", free_port());
    psql(SERVER, &format!("DROP TABLE IF EXISTS {table}"));
    poison_pipeline(
        &scene,
        &format!(
            "  plugin: postgres\n  config:\n    url: \"{SERVER}\"\n    table: {table}\n    create: true\n    columns:\n      - {{name: stage, type: TEXT NOT NULL, from: /stage}}\n      - {{name: reason, type: TEXT NOT NULL, from: /reason}}\n      - {{name: record, type: JSONB NOT NULL, from: /record}}\n      - {{name: failed_at, type: TIMESTAMPTZ NOT NULL, from: /time}}\n"
        ),
    );
    let _weir = scene.start(&[], &[]);
    assert_eq!(post_json(&scene.url("/produce"), BATCH).status, 200);
    let rows = psql(SERVER, &format!("SELECT stage, reason, record::text FROM {table} ORDER BY stage DESC"));
    let rows: Vec<&str> = rows.lines().collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows[0].starts_with("validate|") && rows[0].ends_with(r#"|{"nope": 2}"#), "{rows:?}");
    assert_eq!(rows[1], r#"test-flaky|poison record|{"x": "poison", "id": 3}"#);
    psql(SERVER, &format!("DROP TABLE IF EXISTS {table}"));
}

#[test]
fn a_sink_that_keeps_asking_to_retry_gives_up_after_its_maximum_duration_into_the_dead_letters() {
    let scene = Scene::new();
    let dlq = scene.path("dlq.jsonl");
    scene.pipeline(
        "ingest",
        "source: {plugin: http, config: {listen: \"127.0.0.1:@PORT@\"}}\nsinks:\n  - plugin: test-flaky\n    config: {outage_marker: down}\n    retry: {initial_backoff_ms: 20, max_backoff_ms: 200, max_duration: 1500ms}\ndead_letter: {plugin: file, config: {path: @DIR@/dlq.jsonl}}\n",
    );
    let weir = scene.start(&[], &[]);
    let url = scene.url("/produce");
    let started = Instant::now();
    let r = post_json(&url, r#"{"id":"a","status":"down"}"#);
    let took = started.elapsed();
    assert_eq!(r.status, 500, "{r:?}");
    assert!(r.body.contains("gave up after") && r.body.contains("the destination is down"), "{}", r.body);
    assert!(took >= Duration::from_millis(1500), "gave up after {took:?}");
    let letters = json_lines(&dlq);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["outcome"], "failed");
    assert_eq!(letters[0]["record"]["id"], "a");
    assert!(letters[0]["reason"].as_str().unwrap().starts_with("gave up after"), "{}", letters[0]);
    // Retried with backoff, not in a tight loop: from 20 ms doubling to 200 ms, about 10 tries.
    let errors = weir.metric(r#"weir_stage_errors_total{pipeline="ingest",stage="test-flaky",plugin="test-flaky"}"#).unwrap();
    assert!((5.0..=40.0).contains(&errors), "{errors} tries");
    // The sink is free again for what comes next.
    assert_eq!(post_json(&url, r#"{"id":"b"}"#).status, 200);
}

#[test]
fn a_dedupe_window_in_redis_survives_a_sigkill_and_restart() {
    let scene = Scene::new();
    let out = scene.path("out.jsonl");
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    scene.pipeline(
        "ingest",
        &format!(
            "source: {{plugin: http, config: {{listen: \"127.0.0.1:@PORT@\"}}}}\ntransforms:\n  - plugin: dedupe\n    config: {{fields: [/id], store: \"redis://127.0.0.1:6379\", key_prefix: \"weir:e2e:{nanos}:\"}}\nsinks: [{{plugin: file, config: {{path: @DIR@/out.jsonl}}}}]\n"
        ),
    );
    let url = scene.url("/produce");
    let mut weir = scene.start(&[], &[]);
    assert_eq!(post_json(&url, r#"[{"id":1},{"id":2}]"#).json()["accepted"], 2);
    weir.kill();
    let _weir = scene.start(&[], &[]);
    let r = post_json(&url, r#"[{"id":2},{"id":3}]"#).json();
    assert_eq!((r["accepted"].clone(), r["duplicates"].clone()), (1.into(), 1.into()), "{r}");
    assert_eq!(json_lines(&out).iter().map(|l| l["id"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
}

#[test]
fn the_http_source_can_answer_on_acceptance_and_refusals_still_reach_the_dead_letters() {
    let scene = Scene::new();
    let (out, dlq) = (scene.path("out.jsonl"), scene.path("dlq.jsonl"));
    std::fs::write(scene.path("event.schema.json"), r#"{"type":"object","required":["id"]}"#).unwrap();
    scene.pipeline(
        "ingest",
        "source: {plugin: http, config: {listen: \"127.0.0.1:@PORT@\", respond_after: accepted}}\ntransforms: [{plugin: validate, config: {schema: event.schema.json}}]\nsinks: [{plugin: file, config: {path: @DIR@/out.jsonl}}]\ndead_letter: {plugin: file, config: {path: @DIR@/dlq.jsonl}}\n",
    );
    let _weir = scene.start(&[], &[]);
    let r = post_json(&scene.url("/produce"), r#"[{"id":1},{"nope":2}]"#);
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json(), serde_json::json!({"success": true, "queued": 2}));
    wait_for("the accepted event delivered", Duration::from_secs(5), || json_lines(&out).len() == 1);
    wait_for("the refused one dead-lettered", Duration::from_secs(5), || json_lines(&dlq).len() == 1);
    assert_eq!(json_lines(&dlq)[0]["record"], serde_json::json!({"nope": 2}));
}

#[test]
fn a_full_drop_newest_buffer_drops_and_counts_for_its_sink_only() {
    let scene = Scene::new();
    let out = scene.path("out.jsonl");
    scene.pipeline(
        "ingest",
        "source: {plugin: http, config: {listen: \"127.0.0.1:@PORT@\"}}\nsinks:\n  - plugin: test-slow\n    config: {delay_ms: 200}\n    buffer: {max_events: 20, when_full: drop_newest}\n  - plugin: file\n    config: {path: @DIR@/out.jsonl}\nsettings: {acknowledge: accepted}\n",
    );
    let weir = scene.start(&[], &[]);
    let url = scene.url("/produce");
    for n in 0..30 {
        let events: Vec<String> = (0..10).map(|i| format!(r#"{{"id":{}}}"#, n * 10 + i)).collect();
        assert_eq!(post_json(&url, &format!("[{}]", events.join(","))).status, 200);
    }
    wait_for("the file sink to have every event", Duration::from_secs(10), || json_lines(&out).len() == 300);
    let slow = r#"{pipeline="ingest",stage="test-slow",plugin="test-slow"}"#;
    let mut dropped = 0.0;
    wait_for("the slow sink to finish", Duration::from_secs(20), || {
        dropped = weir.metric(&format!("weir_stage_records_dropped_total{slow}")).unwrap_or_default();
        let taken = weir.metric(&format!("weir_stage_records_in_total{slow}")).unwrap_or_default();
        taken + dropped == 300.0 && weir.metric(&format!("weir_stage_queue_depth{slow}")) == Some(0.0)
    });
    assert!(dropped >= 100.0, "the slow sink dropped {dropped} of 300");
}

#[test]
fn a_full_blocking_buffer_pushes_back_to_503_and_recovers_by_itself() {
    let scene = Scene::new();
    scene.pipeline(
        "ingest",
        "source: {plugin: http, config: {listen: \"127.0.0.1:@PORT@\", backpressure_wait_ms: 0}}\nsinks:\n  - plugin: test-slow\n    config: {delay_ms: 300}\n    buffer: {max_bytes: 200}\nsettings: {acknowledge: accepted, queue_batches: 1}\n",
    );
    let weir = scene.start(&[], &[]);
    let url = scene.url("/produce");
    let body = format!("[{}]", (0..10).map(|i| format!(r#"{{"id":{i},"pad":"{}"}}"#, "x".repeat(10))).collect::<Vec<_>>().join(","));
    // Ten clients at once against a sink that takes 300 ms per batch and a buffer of 200 bytes.
    let clients: Vec<_> = (0..10)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            std::thread::spawn(move || post_json(&url, &body))
        })
        .collect();
    let mut statuses = Vec::new();
    for c in clients {
        let r = c.join().unwrap();
        if r.status == 503 {
            assert!(r.headers.to_ascii_lowercase().contains("retry-after:"), "{r:?}");
        }
        statuses.push(r.status);
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!(statuses.contains(&503), "pushed back while full: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 503), "{statuses:?}");
    // Room again once the sink catches up, with nothing accepted lost.
    wait_for("an accepted request after the backlog", Duration::from_secs(10), || post_json(&url, &body).status == 200);
    let slow = r#"{pipeline="ingest",stage="test-slow",plugin="test-slow"}"#;
    wait_for("every accepted event at the sink", Duration::from_secs(10), || {
        weir.metric(&format!("weir_stage_records_out_total{slow}")) == Some(((ok + 1) * 10) as f64)
    });
    assert_eq!(weir.metric(&format!("weir_stage_records_dropped_total{slow}")), Some(0.0));
}

/// Accepts 20 requests of 5 events into a disk buffer in front of a sink that is down, then
/// kills `weir` with SIGKILL. Returns the pipeline directory (with its port) and the buffer.
fn fill_disk_buffer_and_crash(graceful: bool) -> (Scene, std::path::PathBuf) {
    let scene = Scene::new();
    scene.pipeline(
        "ingest",
        "source: {plugin: http, config: {listen: \"127.0.0.1:@PORT@\"}}\nsinks:\n  - plugin: test-flaky\n    config: {outage_marker: down}\n    buffer: {disk: buffer}\n",
    );
    let mut weir = scene.start(&[], &[("WEIR_DRAIN_TIMEOUT_SECS", "1")]);
    let url = scene.url("/produce");
    for n in 0..20 {
        let events: Vec<String> =
            (0..5).map(|i| format!(r#"{{"id":{},"state":"{}"}}"#, n * 5 + i, if n == 0 { "down" } else { "ok" })).collect();
        let r = post_json(&url, &format!("[{}]", events.join(",")));
        assert_eq!(r.status, 200, "accepted once on disk, although the sink is down: {r:?}");
    }
    if graceful {
        // SIGTERM: the drain gives up on the sink after 1 s; the batches stay on disk.
        assert!(weir.stop().success());
    } else {
        weir.kill();
    }
    let buffer = scene.path("buffer");
    (scene, buffer)
}

/// Restarts the pipeline with a working `file` sink on the same disk buffer; returns the
/// ids it writes once the buffer is empty, and the running `weir`.
fn replay_into_file(scene: &Scene) -> (Vec<u64>, Weir) {
    let out = scene.path("out.jsonl");
    scene.pipeline(
        "ingest",
        "source: {plugin: http, config: {listen: \"127.0.0.1:@PORT@\"}}\nsinks:\n  - plugin: file\n    name: test-flaky\n    config: {path: @DIR@/out.jsonl}\n    buffer: {disk: buffer}\n",
    );
    let weir = scene.start(&[], &[]);
    let gauge = r#"weir_plugin_disk_buffer_bytes{pipeline="ingest",stage="test-flaky",plugin="file"}"#;
    wait_for("the disk buffer replayed", Duration::from_secs(10), || weir.metric(gauge) == Some(0.0) && !json_lines(&out).is_empty());
    (json_lines(&out).iter().map(|l| l["id"].as_u64().unwrap()).collect(), weir)
}

#[test]
fn a_disk_buffer_keeps_what_was_accepted_across_a_sigkill_or_a_stop_and_replays_it() {
    for graceful in [false, true] {
        let (scene, _buffer) = fill_disk_buffer_and_crash(graceful);
        let (ids, weir) = replay_into_file(&scene);
        assert_eq!(ids, (0..100).collect::<Vec<u64>>(), "every accepted event, once, in order (graceful stop: {graceful})");
        assert!(!weir.logs().contains("damaged"), "{}", weir.logs());
    }
}

#[test]
fn a_corrupted_last_segment_is_reported_and_the_rest_delivered() {
    let (scene, buffer) = fill_disk_buffer_and_crash(false);
    let segment = buffer.join(format!("{:020}.seg", 0));
    let mut bytes = std::fs::read(&segment).unwrap();
    *bytes.last_mut().unwrap() ^= 0xff;
    std::fs::write(&segment, bytes).unwrap();
    let (ids, weir) = replay_into_file(&scene);
    assert_eq!(ids, (0..95).collect::<Vec<u64>>(), "all but the damaged last batch");
    assert!(weir.logs().contains("Disk buffer damaged") && weir.logs().contains("checksum"), "{}", weir.logs());
    assert_eq!(weir.metric(r#"weir_plugin_disk_buffer_corruptions_total{pipeline="ingest",stage="test-flaky",plugin="file"}"#), Some(1.0));
}

#[test]
fn a_disk_buffered_sink_with_a_sink_after_it_answers_success_and_both_get_every_record() {
    // The batch counts as delivered once on disk, for the sink and the one that runs after it
    // (which gets the records when the first delivers them from disk).
    let scene = Scene::new();
    scene.pipeline(
        "buffered",
        "source: {plugin: http, config: {listen: \"127.0.0.1:@PORT@\"}}\nsinks:\n  - {plugin: file, name: first, config: {path: @DIR@/first.jsonl}, buffer: {disk: @DIR@/buf}}\n  - {plugin: file, name: follower, after: first, config: {path: @DIR@/follower.jsonl}}\n",
    );
    let _weir = scene.start(&["--no-watch"], &[]);
    for i in 0..5 {
        let r = post_json(&scene.url("/produce"), &format!(r#"{{"id":{i}}}"#));
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["success"], true, "{r:?}");
    }
    wait_for("both files", Duration::from_secs(10), || {
        json_lines(&scene.path("first.jsonl")).len() == 5 && json_lines(&scene.path("follower.jsonl")).len() == 5
    });
}
