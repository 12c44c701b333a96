//! The `socketio` sink and source against the real npm `socket.io-client@4` (run under Node
//! by tests/clients/socketio_client.js), over both transports (WebSocket and HTTP
//! long-polling): events POSTed to the `http` source arrive as `new_event` in order, rooms,
//! type filters, origins, a client that stops reading is dropped without slowing the
//! others, `log_event` is confirmed only once the file sink has it, a rejected one gets the
//! reason, and a source and a sink of two pipelines share one server through reloads.

mod common;
#[path = "common/socketio.rs"]
mod socketio;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use socketio::{signal, Client};

/// `seq` of each event, in arrival order.
fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap_or(u64::MAX)).collect()
}

fn series(name: &str, pipeline: &str) -> String {
    format!("weir_plugin_{name}{{pipeline=\"{pipeline}\",stage=\"socketio\",plugin=\"socketio\"}}")
}

fn relay(http: u16, sio: u16, extra: &str) -> String {
    format!(
        "name: relay\nsource: {{plugin: http, config: {{listen: \"127.0.0.1:{http}\", path: /produce}}}}\n\
         sinks:\n  - plugin: socketio\n    config: {{listen: \"127.0.0.1:{sio}\"{extra}}}\n"
    )
}

fn post_events(http: u16, events: &[Value]) -> Reply {
    let r = post_json(&format!("http://127.0.0.1:{http}/produce"), &Value::Array(events.to_vec()).to_string());
    assert_eq!(r.status, 200, "{r:?}");
    r
}

#[test]
fn events_reach_room_members_over_both_transports_in_order_and_filtered_by_type() {
    let dir = tempfile::tempdir().unwrap();
    let (http, sio) = (free_port(), free_port());
    write_pipeline(dir.path(), "relay", &relay(http, sio, ", room: dashboard, allowed_origins: [\"http://localhost:3000\"]"));
    let weir = Weir::start(dir.path(), &["--no-watch"], &[]);
    let url = format!("http://127.0.0.1:{sio}");

    let mut ws = Client::connect(&url, json!({"transports": ["websocket"]}));
    let mut poll = Client::connect(&url, json!({"transports": ["polling"]}));
    let mut likes = Client::connect(&url, json!({"transports": ["websocket"], "auth": {"types": ["like_clicked"]}}));
    let mut views = Client::connect(&url, json!({"transports": ["polling"], "query": {"types": "page_view"}}));
    let outsider = Client::connect(&url, json!({"transports": ["websocket"]}));
    assert_eq!(ws.connected()["transport"], "websocket");
    assert_eq!(poll.connected()["transport"], "polling");
    for c in [&mut ws, &mut poll, &mut likes, &mut views] {
        c.emit("join_dashboard", json!({}));
    }
    for c in [&ws, &poll, &likes, &views] {
        c.wait_count("dashboard_joined", 1, Duration::from_secs(10));
        let joined = &c.data("dashboard_joined")[0];
        assert_eq!(joined["room"], "dashboard", "{joined}");
        assert!(joined["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{joined}");
    }
    wait_for("the client gauges", Duration::from_secs(5), || {
        weir.metric(&series("connected_clients", "relay")) == Some(5.0) && weir.metric(&series("dashboard_clients", "relay")) == Some(4.0)
    });
    assert_eq!(weir.get_json("/health")["connected_clients"], 5);

    let types = ["like_clicked", "page_view", "song_played"];
    let events: Vec<Value> = (0..60).map(|i| json!({"eventType": types[i % 3], "userId": format!("u{}", i % 7), "seq": i})).collect();
    for chunk in events.chunks(20) {
        post_events(http, chunk);
    }
    let all: Vec<u64> = (0..60).collect();
    for (c, name) in [(&ws, "websocket"), (&poll, "polling")] {
        c.wait_count("new_event", 60, Duration::from_secs(15));
        assert_eq!(seqs(&c.data("new_event")), all, "every event in order over {name}");
    }
    likes.wait_count("new_event", 20, Duration::from_secs(15));
    assert_eq!(seqs(&likes.data("new_event")), (0..60).step_by(3).collect::<Vec<_>>(), "auth types filter");
    views.wait_count("new_event", 20, Duration::from_secs(15));
    assert_eq!(seqs(&views.data("new_event")), (1..60).step_by(3).collect::<Vec<_>>(), "query types filter");
    // A last event to the whole room: once the members have it, the outsider would have had the rest too.
    post_events(http, &[json!({"eventType": "like_clicked", "seq": 60})]);
    ws.wait_count("new_event", 61, Duration::from_secs(10));
    assert!(outsider.data("new_event").is_empty(), "a client outside the room gets nothing");
    assert_eq!(ws.data("new_event")[5], events[5], "the value as posted");

    // Pages: an unlisted origin is refused at the handshake; a listed one gets CORS headers.
    let handshake = format!("http://127.0.0.1:{sio}/socket.io/?EIO=4&transport=polling");
    let refused = Command::new("curl").args(["-s", "-i", "-H", "Origin: http://evil.example", &handshake]).output().unwrap();
    let refused = String::from_utf8_lossy(&refused.stdout);
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert!(refused.contains("allowed_origins"), "{refused}");
    let allowed = Command::new("curl").args(["-s", "-i", "-H", "Origin: http://localhost:3000", &handshake]).output().unwrap();
    let allowed = String::from_utf8_lossy(&allowed.stdout).to_ascii_lowercase();
    assert!(allowed.starts_with("http/1.1 200"), "{allowed}");
    assert!(allowed.contains("access-control-allow-origin: http://localhost:3000"), "{allowed}");

    ws.send(json!({"close": true}));
    wait_for("the gauges after a client left", Duration::from_secs(5), || {
        weir.metric(&series("connected_clients", "relay")) == Some(4.0) && weir.metric(&series("dashboard_clients", "relay")) == Some(3.0)
    });
}

#[test]
fn a_client_that_stops_reading_is_dropped_without_slowing_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let (http, sio) = (free_port(), free_port());
    write_pipeline(dir.path(), "relay", &relay(http, sio, ""));
    let weir = Weir::start(dir.path(), &["--no-watch"], &[]);
    let url = format!("http://127.0.0.1:{sio}");
    let fast_ws = Client::connect(&url, json!({"transports": ["websocket"]}));
    let fast_poll = Client::connect(&url, json!({"transports": ["polling"]}));
    let slow = Client::connect(&url, json!({"transports": ["websocket"]}));
    wait_for("3 clients", Duration::from_secs(5), || weir.metric(&series("connected_clients", "relay")) == Some(3.0));
    // The slow client stops reading: its process is frozen, its socket buffers fill up.
    signal(slow.pid(), "-STOP");

    let pad = "x".repeat(8000);
    let total = 3000;
    let started = Instant::now();
    let mut slowest_post = Duration::ZERO;
    let mut dropped_after = None;
    for chunk in 0..total / 100 {
        let events: Vec<Value> = (chunk * 100..chunk * 100 + 100).map(|i| json!({"eventType": "tick", "seq": i, "pad": pad})).collect();
        let t = Instant::now();
        post_events(http, &events);
        slowest_post = slowest_post.max(t.elapsed());
        if dropped_after.is_none() && weir.metric(&series("socketio_slow_clients_disconnected_total", "relay")) == Some(1.0) {
            dropped_after = Some((started.elapsed(), (chunk + 1) * 100));
        }
    }
    let posted = started.elapsed();
    for c in [&fast_ws, &fast_poll] {
        c.wait_count("new_event", total, Duration::from_secs(60));
        assert_eq!(seqs(&c.data("new_event")), (0..total as u64).collect::<Vec<_>>());
    }
    let delivered = started.elapsed();
    wait_for("the slow client dropped and counted", Duration::from_secs(10), || {
        weir.metric(&series("socketio_slow_clients_disconnected_total", "relay")) == Some(1.0)
            && weir.metric(&series("connected_clients", "relay")) == Some(2.0)
    });
    println!(
        "{total} events of 8 kB: posted in {posted:?} (slowest POST of 100: {slowest_post:?}), both fast clients had all of them after {delivered:?}; the frozen one was dropped after (time, events) {dropped_after:?}"
    );
    assert!(slowest_post < Duration::from_secs(2), "a POST waited {slowest_post:?}: the frozen client held the pipeline back");
    signal(slow.pid(), "-CONT");
    slow.wait("the dropped client to see its disconnect", Duration::from_secs(30), |seen| seen.iter().any(|v| v["on"] == "disconnect"));
    assert!(slow.data("new_event").len() < total, "the frozen client could not have read everything");
}

#[test]
fn log_events_are_confirmed_after_the_file_has_them_and_share_the_server_through_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir(&pipelines).unwrap();
    let (http, sio) = (free_port(), free_port());
    let out = dir.path().join("logged.jsonl");
    let schema = dir.path().join("song.schema.json");
    std::fs::write(&schema, r#"{"type":"object","required":["eventType","userId"],"properties":{"userId":{"type":"string"}}}"#).unwrap();
    let logs = |version: u32| {
        format!(
            "name: logs\ndescription: version {version}\nsource:\n  plugin: socketio\n  config: {{listen: \"127.0.0.1:{sio}\"}}\n\
             transforms:\n  - plugin: validate\n    config: {{schema: {}}}\n  - plugin: enrich\n    config:\n      set: {{clientIp: \"{{{{header:socketio.client_ip}}}}\", sid: \"{{{{header:socketio.sid}}}}\"}}\n\
             sinks:\n  - plugin: file\n    config: {{path: {}, append: true}}\n",
            schema.display(),
            out.display()
        )
    };
    write_pipeline(&pipelines, "logs", &logs(1));
    write_pipeline(&pipelines, "relay", &relay(http, sio, ", room: dashboard"));
    let weir = Weir::start(&pipelines, &["--no-watch"], &[]);
    let url = format!("http://127.0.0.1:{sio}");
    let lines = |path: &Path| -> Vec<Value> {
        std::fs::read_to_string(path).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };

    let mut ws = Client::connect(&url, json!({"transports": ["websocket"]}));
    let mut poll = Client::connect(&url, json!({"transports": ["polling"]}));
    let sid = ws.connected()["sid"].as_str().unwrap().to_owned();

    ws.emit("log_event", json!({"eventType": "song_played", "userId": "u1", "song": "s1", "seq": 1}));
    ws.wait_count("event_logged", 1, Duration::from_secs(10));
    // Confirmed only once the file sink had it: the line is there when the confirmation is.
    let written = lines(&out);
    assert_eq!(ws.data("event_logged")[0], json!({"success": true, "eventType": "song_played", "timestamp": null}));
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!((written[0]["seq"].clone(), written[0]["clientIp"].clone()), (json!(1), json!("127.0.0.1")), "{written:?}");
    assert_eq!(written[0]["sid"], sid.as_str(), "the record carries the client's socket id");

    ws.emit("log_event", json!({"eventType": "song_played", "seq": 2}));
    ws.wait_count("event_logged", 2, Duration::from_secs(10));
    let rejected = &ws.data("event_logged")[1];
    assert_eq!(rejected["success"], false, "{rejected}");
    assert!(rejected["error"].as_str().unwrap().contains("userId"), "the reason names the missing field: {rejected}");
    assert_eq!(lines(&out).len(), 1, "a rejected event is not written");

    // A client that asks for an acknowledgement gets the answer as the acknowledgement.
    poll.send(json!({"emit": "log_event", "data": {"eventType": "song_paused", "userId": "u2", "seq": 3}, "ack": 7}));
    poll.wait_count("ack", 1, Duration::from_secs(10));
    assert_eq!(poll.got("ack")[0]["data"]["success"], true, "{:?}", poll.got("ack"));
    assert!(poll.data("event_logged").is_empty(), "answered once, as the acknowledgement");
    assert_eq!(lines(&out).len(), 2);

    // The relay pipeline's sink serves the same connection.
    ws.emit("join_dashboard", json!({}));
    ws.wait_count("dashboard_joined", 1, Duration::from_secs(10));
    post_events(http, &[json!({"eventType": "like_clicked", "userId": "u1", "seq": 10})]);
    ws.wait_count("new_event", 1, Duration::from_secs(10));

    // Both pipelines replaced, one after the other: the server, its connections and rooms stay.
    for round in 2..=4u32 {
        let relay_v = relay(http, sio, ", room: dashboard").replace("name: relay", &format!("name: relay\ndescription: version {round}"));
        write_pipeline(&pipelines, "relay", &relay_v);
        let r = curl("POST", &weir.url("/reload"), None, None);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["replaced"], json!(["relay"]), "{r:?}");
        write_pipeline(&pipelines, "logs", &logs(round));
        let r = curl("POST", &weir.url("/reload"), None, None);
        assert_eq!(r.json()["replaced"], json!(["logs"]), "{r:?}");
        post_events(http, &[json!({"eventType": "like_clicked", "userId": "u1", "seq": 10 + round})]);
        ws.wait_count("new_event", round as usize, Duration::from_secs(10));
        ws.emit("log_event", json!({"eventType": "song_played", "userId": "u1", "seq": 100 + round}));
        ws.wait_count("event_logged", round as usize + 1, Duration::from_secs(10));
        assert_eq!(ws.data("event_logged")[round as usize]["success"], true);
    }
    assert!(ws.got("disconnect").is_empty() && poll.got("disconnect").is_empty(), "nobody was disconnected by the reloads");
    assert_eq!(seqs(&ws.data("new_event")), vec![10, 12, 13, 14]);
    assert_eq!(weir.get_json("/pipelines/relay")["version"], 4);
    assert_eq!(weir.metric(&series("dashboard_clients", "relay")), Some(1.0), "the room membership survived the reloads");

    // A third stage on the address asking for another path is refused with the reason; the others go on.
    let other = format!(
        "name: other\nsource: {{plugin: socketio, config: {{listen: \"127.0.0.1:{sio}\", path: /io/}}}}\nsinks: [{{plugin: discard}}]\n"
    );
    write_pipeline(&pipelines, "other", &other);
    let r = curl("POST", &weir.url("/reload"), None, None);
    assert_eq!(r.status, 422, "{r:?}");
    assert!(r.body.contains("path /socket.io") && r.body.contains("another listen address"), "{}", r.body);
    println!("refused: {}", r.body);
    std::fs::remove_file(pipelines.join("other.yaml")).unwrap();
    ws.emit("log_event", json!({"eventType": "song_played", "userId": "u1", "seq": 200}));
    ws.wait_count("event_logged", 6, Duration::from_secs(10));

    // Both pipelines removed: the server stops with its last stage and its clients lose their
    // connection, which socket.io-client reconnects by itself (it would not after being told
    // "io server disconnect").
    std::fs::remove_file(pipelines.join("relay.yaml")).unwrap();
    std::fs::remove_file(pipelines.join("logs.yaml")).unwrap();
    let r = curl("POST", &weir.url("/reload"), None, None);
    assert_eq!(r.json()["stopped"], json!(["logs", "relay"]), "{r:?}");
    for c in [&ws, &poll] {
        c.wait("the disconnect", Duration::from_secs(15), |seen| seen.iter().any(|v| v["on"] == "disconnect"));
        let reason = c.got("disconnect")[0]["reason"].clone();
        assert!(reason == "transport close" || reason == "transport error", "{reason}");
    }
}
