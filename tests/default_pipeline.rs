//! The default pipeline end to end: the Neo seed's example events, POSTed with curl,
//! arrive at a real WebSocket client; the admin API reports the counts.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

async fn next_json(ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin)) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("stream open")
            .expect("frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).expect("frames are JSON");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neo_events_reach_websocket_clients_and_are_counted() {
    let (http_port, ws_port) = (free_port(), free_port());
    let out_dir = tempfile::tempdir().unwrap();
    let events_file = out_dir.path().join("events.jsonl");
    let http_listen = format!("127.0.0.1:{http_port}");
    let ws_listen = format!("127.0.0.1:{ws_port}");
    let envs = [
        ("WEIR_HTTP_LISTEN", http_listen.as_str()),
        ("WEIR_WS_LISTEN", ws_listen.as_str()),
        ("WEIR_EVENTS_FILE", events_file.to_str().unwrap()),
    ];
    let mut weir = tokio::task::block_in_place(|| Weir::start(&repo().join("pipelines"), &[], &envs));

    let (mut all, _) = tokio_tungstenite::connect_async(format!("ws://{ws_listen}/")).await.expect("connect");
    let (mut likes, _) = tokio_tungstenite::connect_async(format!("ws://{ws_listen}/?types=like_clicked")).await.expect("connect filtered");
    let health_url = weir.url("/health");
    tokio::task::block_in_place(|| {
        wait_for("two WebSocket clients in /health", Duration::from_secs(10), || {
            curl("GET", &health_url, None, None).json()["connected_clients"] == 2
        })
    });

    let produce = format!("http://{http_listen}/produce");
    // The Neo seed's documented example request.
    let reply = tokio::task::block_in_place(|| {
        post_json(
            &produce,
            r#"{"eventType":"like_clicked","userId":"user-123","timestamp":"2024-01-01T12:00:00.000Z","screen":"main_post"}"#,
        )
    });
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json(), serde_json::json!({"success": true, "eventType": "like_clicked", "timestamp": "2024-01-01T12:00:00.000Z"}));

    let first = next_json(&mut all).await;
    assert_eq!(first["eventType"], "like_clicked");
    assert_eq!(first["userId"], "user-123");
    assert_eq!(first["screen"], "main_post");
    assert_eq!(first["clientIp"], "127.0.0.1");
    assert!(first["eventId"].as_str().is_some_and(|id| id.len() == 36), "enrich generated an id: {first}");
    assert!(first["receivedAt"].as_str().is_some_and(|t| t.ends_with('Z')), "{first}");
    assert_eq!(next_json(&mut likes).await["userId"], "user-123");

    // The seed's test event, then an array with a duplicate and an invalid event.
    let batch = r#"[{"eventType":"test_event","userId":"test-user","timestamp":"2024-01-01T12:00:00.000Z"},
        {"eventType":"like_clicked","userId":"u2","eventId":"e-1"},
        {"eventType":"like_clicked","userId":"u2","eventId":"e-1"},
        {"eventType":"page_view"}]"#;
    let reply = tokio::task::block_in_place(|| post_json(&produce, batch));
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = reply.json();
    assert_eq!(body["count"], 4);
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["duplicates"], 1);
    assert_eq!(body["rejected"][0]["index"], 3);
    assert!(body["rejected"][0]["error"].as_str().unwrap().contains("userId"), "{body}");

    assert_eq!(next_json(&mut all).await["eventType"], "test_event");
    assert_eq!(next_json(&mut all).await["eventId"], "e-1");
    // The filtered client gets only like_clicked, once.
    let second_like = next_json(&mut likes).await;
    assert_eq!(second_like["eventId"], "e-1");

    tokio::task::block_in_place(|| {
        let pipelines = weir.get_json("/pipelines");
        let stages = pipelines[0]["stages"].as_array().unwrap().clone();
        let stage = |name: &str| stages.iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("stage {name} in {pipelines}")).clone();
        assert_eq!(pipelines[0]["state"], "running");
        assert_eq!(stage("http")["records_out"], 5);
        assert_eq!(stage("validate")["rejected"], 1);
        assert_eq!(stage("dedupe")["dropped"], 1);
        assert_eq!(stage("websocket")["records_out"], 3);
        assert_eq!(stage("websocket")["metrics"]["connected_clients"], 2.0);
        assert_eq!(weir.metric(r#"weir_stage_records_out_total{pipeline="default",stage="file",plugin="file"}"#), Some(3.0));
        assert_eq!(weir.metric(r#"weir_stage_records_rejected_total{pipeline="default",stage="validate",plugin="validate"}"#), Some(1.0));
        assert_eq!(weir.metric(r#"weir_plugin_connected_clients{pipeline="default",stage="websocket",plugin="websocket"}"#), Some(2.0));
        assert!(weir.metric(r#"weir_stage_latency_seconds_count{pipeline="default",stage="enrich",plugin="enrich"}"#).unwrap() >= 2.0);
        assert_eq!(weir.metric(r#"weir_pipeline_ack_latency_seconds_count{pipeline="default",stage="http",plugin="http"}"#), Some(2.0));

        // Graceful shutdown: SIGTERM drains and exits 0; the file holds every delivered event.
        let status = weir.stop();
        assert!(status.success(), "exit status {status}");
        let lines = std::fs::read_to_string(&events_file).unwrap();
        assert_eq!(lines.lines().count(), 3, "{lines}");
        assert!(weir.logs().contains("Pipeline stopped."), "{}", weir.logs());
    });
}
