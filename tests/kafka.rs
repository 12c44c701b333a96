//! Kafka end to end, against a real broker process (tansu) and an independent client
//! (Python confluent-kafka): the Neo seed through the broker, at-least-once across a
//! SIGKILL, a broker restart, SASL settings, and bad input.

#[path = "common/broker.rs"]
mod broker;
mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use broker::{consume, produce, produce_to, Broker};
use common::*;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neo_events_reach_websocket_through_the_broker_in_order_per_user() {
    let broker = Broker::memory();
    broker.create_topic("user_events", 1);
    let (http, ws) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let envs = [("KAFKA_BROKERS", broker.addr.as_str()), ("NEO_HTTP_LISTEN", http.as_str()), ("NEO_WS_LISTEN", ws.as_str())];
    let weir = tokio::task::block_in_place(|| Weir::start(&repo().join("examples/neo-analytics"), &[], &envs));
    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{ws}/")).await.expect("connect");

    let url = format!("http://{http}/produce");
    let total = 30;
    tokio::task::block_in_place(|| {
        for i in 0..total {
            let user = ["alice", "bob", "carol"][i % 3];
            let r =
                post_json(&url, &format!(r#"{{"eventType":"step","userId":"{user}","seq":{i},"timestamp":"2024-01-01T12:00:00.000Z"}}"#));
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.json()["eventType"], "step");
        }
    });
    let mut per_user: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for _ in 0..total {
        let msg = tokio::time::timeout(Duration::from_secs(20), client.next()).await.expect("a frame in time").unwrap().unwrap();
        let Message::Text(t) = msg else { continue };
        let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
        per_user.entry(v["userId"].as_str().unwrap().to_owned()).or_default().push(v["seq"].as_u64().unwrap());
    }
    assert_eq!(per_user.len(), 3);
    for (user, seqs) in &per_user {
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(seqs, &sorted, "{user}'s events arrived out of order");
        assert_eq!(seqs.len(), total / 3);
    }
    // The independent client sees the same messages, keyed by userId, with the request metadata.
    let read = tokio::task::block_in_place(|| consume(&broker, "user_events", total, 30));
    assert_eq!(read.len(), total);
    assert_eq!(read[0].key.as_deref(), Some("alice"));
    assert_eq!(read[1].key.as_deref(), Some("bob"));
    assert_eq!(read[0].headers["http.client_ip"], "127.0.0.1");
    let v: serde_json::Value = serde_json::from_str(&read[0].value).unwrap();
    assert!(v["eventId"].as_str().is_some_and(|id| id.len() == 36), "{v}");
    tokio::task::block_in_place(|| {
        assert_eq!(
            weir.metric(r#"weir_stage_records_out_total{pipeline="neo-relay",stage="websocket",plugin="websocket"}"#),
            Some(total as f64)
        );
    });
}

fn consumer_pipeline(dir: &std::path::Path, broker: &Broker, topic: &str, out: &std::path::Path, transforms: &str) {
    write_pipeline(
        dir,
        "consume",
        &format!(
            "source:\n  plugin: kafka\n  config: {{brokers: \"{}\", topics: [{topic}], group_id: weir-test, batch_size: 100, session_timeout_ms: 6000}}\n{transforms}sinks:\n  - plugin: file\n    config: {{path: {}}}\n",
            broker.addr,
            out.display()
        ),
    );
}

#[test]
fn every_record_arrives_after_a_sigkill_mid_stream() {
    // SQLite storage: tansu 0.6's memory engine returns nothing for a fetch that starts
    // inside a record batch, which a resumed consumer does.
    let broker = Broker::persistent();
    broker.create_topic("events", 3);
    let total = 3000;
    let values: Vec<String> = (0..total).map(|i| format!(r#"{{"id":{i}}}"#)).collect();
    let keyed: Vec<(Option<&str>, &str)> =
        values.iter().enumerate().map(|(i, v)| (Some(["a", "b", "c", "d"][i % 4]), v.as_str())).collect();
    produce(&broker, "events", &keyed);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    consumer_pipeline(dir.path(), &broker, "events", &out, "");
    let mut weir = Weir::start(dir.path(), &[], &[]);
    wait_for("some records written", Duration::from_secs(30), || lines(&out).len() >= 300);
    weir.kill();
    let before = lines(&out).len();
    let second = Weir::start(dir.path(), &[], &[]);
    let ids =
        || lines(&out).iter().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_u64().unwrap()).collect::<Vec<_>>();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let seen: HashSet<u64> = ids().into_iter().collect();
        if seen.len() == total {
            break;
        }
        if std::time::Instant::now() > deadline {
            let missing: Vec<u64> = (0..total as u64).filter(|i| !seen.contains(i)).take(20).collect();
            panic!("{} of {total} ids after the restart; missing e.g. {missing:?}\n{}", seen.len(), second.logs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let all = ids();
    let duplicates = all.len() - total;
    // Only what was in flight at the kill can come twice: at most the queues' worth.
    assert!(duplicates <= before.min(64 * 100 + 3 * 100), "{duplicates} duplicates");
    println!("written before the kill: {before}; duplicates after restart: {duplicates}");
}

#[test]
fn broker_restart_mid_stream_loses_nothing_and_the_source_pushes_back() {
    let mut broker = Broker::persistent();
    broker.create_topic("ingest", 1);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_pipeline(
        dir.path(),
        "ingest",
        &format!(
            "source:\n  plugin: http\n  config: {{listen: \"127.0.0.1:{port}\", backpressure_wait_ms: 0, ack_timeout_ms: 2000}}\nsinks:\n  - plugin: kafka\n    config: {{brokers: \"{}\", topic: ingest, message_timeout_ms: 1000}}\nsettings: {{queue_batches: 2, sink_queue_batches: 2}}\n",
            broker.addr
        ),
    );
    let weir = Weir::start(dir.path(), &[], &[]);
    let url = format!("http://127.0.0.1:{port}/produce");
    let mut accepted = Vec::new();
    let mut refused = 0;
    let mut send = |i: usize, accepted: &mut Vec<usize>| {
        let r = post_json(&url, &format!(r#"{{"n":{i}}}"#));
        match r.status {
            200 => accepted.push(i),
            503 => refused += 1,
            s => panic!("unexpected status {s}: {r:?}"),
        }
    };
    for i in 0..50 {
        send(i, &mut accepted);
    }
    broker.stop();
    let mut peak: f64 = 0.0;
    for i in 50..60 {
        send(i, &mut accepted);
        peak = peak.max(rss_mb(weir.pid()));
    }
    broker.restart();
    let restarted = std::time::Instant::now();
    let mut i = 60;
    // Generous: under a loaded machine the producer may need several backoff rounds.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        send(i, &mut accepted);
        i += 1;
        if accepted.last() == Some(&(i - 1)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no request accepted within 120 s of the broker's restart:\n{}", weir.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let recovered = restarted.elapsed();
    assert!(refused > 0, "the source pushed back while the broker was down");
    assert!(peak < 150.0, "memory stayed bounded while the broker was down: peak RSS {peak:.0} MiB");
    // Everything in the topic: events answered 503 may have landed too, and retried batches twice.
    let read = consume(&broker, "ingest", 0, 60);
    let got: HashSet<u64> =
        read.iter().map(|m| serde_json::from_str::<serde_json::Value>(&m.value).unwrap()["n"].as_u64().unwrap()).collect();
    for n in &accepted {
        assert!(got.contains(&(*n as u64)), "accepted event {n} is missing from the topic");
    }
    println!(
        "accepted {}, lost 0, refused while down {refused}, peak RSS {peak:.0} MiB, accepted again {recovered:?} after the restart",
        accepted.len()
    );
}

#[test]
fn sasl_settings_come_from_the_environment_and_never_show() {
    let broker = Broker::memory();
    let secret = "pa55-w0rd-never-shown";
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo().join("examples/activity-events/ingest.yaml"), dir.path().join("ingest.yaml")).unwrap();
    let text = std::fs::read_to_string(dir.path().join("ingest.yaml"))
        .unwrap()
        .replace("../../schemas/", &format!("{}/schemas/", repo().display()))
        .replace("path: /activity", "path: /activity\n    ack_timeout_ms: 2000");
    std::fs::write(dir.path().join("ingest.yaml"), text).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let envs = [
        ("KAFKA_BROKERS", broker.addr.as_str()),
        ("ACTIVITY_HTTP_LISTEN", listen.as_str()),
        ("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
        ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
        ("KAFKA_SASL_USERNAME", "api-key-1"),
        ("KAFKA_SASL_PASSWORD", secret),
    ];
    let out = weir(&["validate", dir.path().to_str().unwrap()], &envs);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let weir = Weir::start(dir.path(), &["--log", "info,weir::ffi=debug"], &envs);
    // The broker speaks no SASL: the request cannot be confirmed, and says so.
    let r = post_json(
        &format!("http://{listen}/activity"),
        r#"{"user_id":"u","event_type":"user_login","occurred_at":"2024-01-01T00:00:00Z"}"#,
    );
    assert_ne!(r.status, 200, "{r:?}");
    let logs = weir.logs();
    assert!(logs.contains("sasl.mechanism=SCRAM-SHA-512") && logs.contains("sasl.username=api-key-1"), "passed to librdkafka:\n{logs}");
    assert!(logs.contains("sasl.password=***"), "{logs}");
    for shown in [logs, r.body.clone(), curl("GET", &weir.url("/pipelines"), None, None).body, weir.metrics()] {
        assert!(!shown.contains(secret), "the password showed:\n{shown}");
    }
}

#[test]
fn an_unknown_topic_without_creation_fails_the_pipeline_with_a_clear_error() {
    let broker = Broker::memory();
    broker.create_topic("other", 1);
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(
        dir.path(),
        "bad",
        &format!("source: {{plugin: http, config: {{listen: \"127.0.0.1:{}\"}}}}\nsinks:\n  - plugin: kafka\n    config: {{brokers: \"{}\", topic: nope}}\n", free_port(), broker.addr),
    );
    write_pipeline(
        dir.path(),
        "good",
        &format!(
            "source: {{plugin: http, config: {{listen: \"127.0.0.1:{}\"}}}}\nsinks: [{{plugin: file, config: {{path: \"-\"}}}}]\n",
            free_port()
        ),
    );
    let weir = Weir::start(dir.path(), &[], &[]);
    let p = weir.get_json("/pipelines/bad");
    assert_eq!(p["state"], "failed");
    let error = p["error"].as_str().unwrap();
    assert!(error.contains("topic \"nope\" does not exist") && error.contains("create_topic"), "{error}");
}

#[test]
fn an_unreachable_broker_pushes_back_instead_of_losing_events() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let dead = format!("127.0.0.1:{}", free_port());
    write_pipeline(
        dir.path(),
        "dead",
        &format!(
            "source: {{plugin: http, config: {{listen: \"127.0.0.1:{port}\", backpressure_wait_ms: 0, ack_timeout_ms: 1500}}}}\nsinks:\n  - plugin: kafka\n    config: {{brokers: \"{dead}\", topic: t, message_timeout_ms: 500}}\nsettings: {{queue_batches: 1, sink_queue_batches: 1}}\n"
        ),
    );
    let weir = Weir::start(dir.path(), &[], &[]);
    let r = post_json(&format!("http://127.0.0.1:{port}/produce"), r#"{"a":1}"#);
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.headers.to_ascii_lowercase().contains("retry-after"), "{r:?}");
    assert!(r.json()["error"].as_str().unwrap().contains("did not confirm delivery"), "{r:?}");
    wait_for("retries logged", Duration::from_secs(10), || weir.logs().contains("Sink asked to retry the batch."));
    assert!(weir.logs().contains("not reachable yet"), "{}", weir.logs());
}

#[test]
fn a_message_that_is_not_json_is_rejected_with_its_offset_and_the_partition_goes_on() {
    let broker = Broker::memory();
    broker.create_topic("mixed", 1);
    produce(
        &broker,
        "mixed",
        &[(None, r#"{"eventType":"a","userId":"u1"}"#), (None, "this is not JSON"), (None, r#"{"eventType":"b","userId":"u2"}"#)],
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let schema = repo().join("schemas/neo-event.schema.json");
    consumer_pipeline(
        dir.path(),
        &broker,
        "mixed",
        &out,
        &format!("transforms:\n  - plugin: validate\n    config: {{schema: {}}}\n", schema.display()),
    );
    let weir = Weir::start(dir.path(), &[], &[]);
    wait_for("the valid records", Duration::from_secs(30), || lines(&out).len() == 2);
    // The source logs the refusal once the batch is acknowledged, just after the file has it.
    let logged = || weir.logs().contains("Record mixed/0@1 rejected: validate: not valid JSON");
    wait_for("the refusal in the log", Duration::from_secs(10), logged);
    // More records still flow on the same partition.
    produce(&broker, "mixed", &[(None, r#"{"eventType":"c","userId":"u3"}"#)]);
    wait_for("the next record", Duration::from_secs(30), || lines(&out).len() == 3);
}

#[test]
fn a_json_file_is_replayed_to_kafka_and_weir_exits() {
    let broker = Broker::memory();
    broker.create_topic("event", 1);
    let out = weir(
        &["run", "--once", "--pipelines", "examples/activity-events/replay", "--admin", &format!("127.0.0.1:{}", free_port())],
        &[("KAFKA_BROKERS", broker.addr.as_str())],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Replayed 10 records") && stderr.contains("Every pipeline finished."), "{stderr}");
    let read = consume(&broker, "event", 10, 30);
    assert_eq!(read.len(), 10);
    assert_eq!(read[0].key.as_deref(), Some("user100"));
    assert!(read[9].value.contains("community_joined"));
}

#[test]
fn a_slow_sink_pauses_the_consumer_and_every_record_still_arrives_in_order() {
    let broker = Broker::persistent();
    broker.create_topic("slow", 1);
    let values: Vec<String> = (0..400).map(|i| format!(r#"{{"id":{i}}}"#)).collect();
    produce(&broker, "slow", &values.iter().map(|v| (None, v.as_str())).collect::<Vec<_>>());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    write_pipeline(
        dir.path(),
        "slow",
        &format!(
            "source:\n  plugin: kafka\n  config: {{brokers: \"{}\", topics: [slow], group_id: slow, batch_size: 20}}\ntransforms: [{{plugin: noop}}]\nsinks:\n  - plugin: test-slow\n    config: {{delay_ms: 20}}\n  - plugin: file\n    config: {{path: {}}}\nsettings: {{queue_batches: 1, sink_queue_batches: 1}}\n",
            broker.addr,
            out.display()
        ),
    );
    let weir = Weir::start(dir.path(), &[], &[]);
    wait_for("every record", Duration::from_secs(60), || lines(&out).len() >= 400);
    let ids: Vec<u64> = lines(&out).iter().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (0..400).collect::<Vec<u64>>(), "in order, once each");
    let pushed_back = weir.metric(r#"weir_stage_backpressure_total{pipeline="slow",stage="kafka",plugin="kafka"}"#).unwrap();
    assert!(pushed_back > 0.0, "the consumer was pushed back");
}

#[test]
fn start_at_skips_older_messages_for_a_new_group() {
    let broker = Broker::persistent();
    broker.create_topic("timed", 1);
    produce(&broker, "timed", &[(None, r#"{"id":"old"}"#)]);
    std::thread::sleep(Duration::from_millis(1100));
    let cut = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    std::thread::sleep(Duration::from_millis(1100));
    produce(&broker, "timed", &[(None, r#"{"id":"new"}"#)]);
    let at = {
        let out = std::process::Command::new("date").args(["-u", "-d", &format!("@{cut}"), "+%Y-%m-%dT%H:%M:%SZ"]).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    write_pipeline(
        dir.path(),
        "timed",
        &format!(
            "source:\n  plugin: kafka\n  config: {{brokers: \"{}\", topics: [timed], group_id: timed, start_at: \"{at}\"}}\nsinks:\n  - plugin: file\n    config: {{path: {}}}\n",
            broker.addr,
            out.display()
        ),
    );
    let _weir = Weir::start(dir.path(), &[], &[]);
    produce(&broker, "timed", &[(None, r#"{"id":"newer"}"#)]);
    // In partition order: had start_at been ignored, "old" would come first.
    wait_for("two records", Duration::from_secs(30), || lines(&out).len() >= 2);
    assert_eq!(lines(&out)[..2], [r#"{"id":"new"}"#.to_owned(), r#"{"id":"newer"}"#.to_owned()]);
}

#[test]
fn reloads_hand_the_partitions_over_with_nothing_lost() {
    let broker = Broker::persistent();
    broker.create_topic("handover", 3);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let version = |v: u32| format!("transforms:\n  - plugin: enrich\n    config: {{set: {{version: {v}}}}}\n");
    consumer_pipeline(dir.path(), &broker, "handover", &out, &version(0));
    let weir = Weir::start(dir.path(), &["--no-watch"], &[]);

    // A producer that keeps producing while the pipeline is reloaded.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let (stop, addr) = (stop.clone(), broker.addr.clone());
        std::thread::spawn(move || {
            let mut next = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let values: Vec<String> = (next..next + 200).map(|i| format!(r#"{{"id":{i}}}"#)).collect();
                let keyed: Vec<(Option<&str>, &str)> = values.iter().map(|v| (None, v.as_str())).collect();
                produce_to(&addr, "handover", &keyed);
                next += 200;
            }
            next
        })
    };
    let records = || lines(&out).iter().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).collect::<Vec<_>>();
    let logs = || format!("weir's log:\n{}\nthe broker's log:\n{}", tail(&weir.logs(), 60), tail(&broker.log(), 20));
    wait_for_or("the first version's records", Duration::from_secs(60), || records().len() >= 200, logs);
    for v in 1..=5u32 {
        consumer_pipeline(dir.path(), &broker, "handover", &out, &version(v));
        let r = curl("POST", &weir.url("/reload"), None, None);
        assert_eq!(r.json()["replaced"], serde_json::json!(["consume"]), "{r:?}");
        wait_for_or("the new version's records", Duration::from_secs(60), || records().iter().any(|r| r["version"] == v), logs);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let produced = producer.join().unwrap();
    let mut seen = HashSet::new();
    wait_for_or(
        "every produced record",
        Duration::from_secs(60),
        || {
            seen = records().iter().map(|r| r["id"].as_u64().unwrap()).collect::<HashSet<_>>();
            seen.len() as u64 == produced
        },
        logs,
    );
    assert!((0..produced).all(|i| seen.contains(&i)));
    let written = records().len() as u64;
    // At-least-once: a record in flight when its partition moved may come twice, no more.
    println!("produced {produced}; written {written}; duplicates {}", written - produced);
    assert!(written - produced <= 5 * 64 * 100, "{} duplicates", written - produced);
}

#[test]
fn three_instances_in_one_group_share_the_partitions_and_one_killed_loses_nothing() {
    let broker = Broker::persistent();
    broker.create_topic("shared", 6);
    let batch = |from: u64| {
        let values: Vec<String> = (from..from + 1500).map(|i| format!(r#"{{"id":{i}}}"#)).collect();
        let keyed: Vec<(Option<String>, &str)> =
            values.iter().enumerate().map(|(i, v)| (Some(format!("k{}", i % 12)), v.as_str())).collect();
        let refs: Vec<(Option<&str>, &str)> = keyed.iter().map(|(k, v)| (k.as_deref(), *v)).collect();
        produce(&broker, "shared", &refs);
    };
    batch(0);
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let outs: Vec<std::path::PathBuf> = dirs.iter().map(|d| d.path().join("out.jsonl")).collect();
    for (d, out) in dirs.iter().zip(&outs) {
        consumer_pipeline(d.path(), &broker, "shared", out, "");
    }
    let mut instances: Vec<Weir> = dirs.iter().map(|d| Weir::start(d.path(), &["--no-watch"], &[])).collect();
    let ids = || -> Vec<u64> {
        outs.iter().flat_map(|o| lines(o)).map(|l| serde_json::from_str::<serde_json::Value>(&l).unwrap()["id"].as_u64().unwrap()).collect()
    };
    wait_for("the first records", Duration::from_secs(60), || ids().len() >= 300);
    instances[0].kill();
    batch(1500);
    let total = 3000u64;
    let mut seen = HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while seen.len() as u64 != total {
        assert!(std::time::Instant::now() < deadline, "{} of {total} records after one instance was killed", seen.len());
        std::thread::sleep(Duration::from_millis(100));
        seen = ids().into_iter().collect();
    }
    let per_instance: Vec<usize> = outs.iter().map(|o| lines(o).len()).collect();
    assert!(per_instance[1] + per_instance[2] > 0, "the survivors took over: {per_instance:?}");
    let duplicates = ids().len() as u64 - total;
    println!("records per instance {per_instance:?}; duplicates {duplicates}");
    assert!(duplicates <= 64 * 100 + 6 * 100, "{duplicates} duplicates");
    drop(instances);
}
