//! The plugin boundary: incompatible and foreign libraries are refused with clear
//! reasons while other pipelines run, and a panicking transform does not take the host down.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const NOT_A_PLUGIN: &str = "#[no_mangle] pub extern \"C\" fn something_else() -> i32 { 7 }\n";

#[test]
fn foreign_libraries_are_listed_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let v2 = cdylib(dir.path(), "future", ABI_V2);
    let other = cdylib(dir.path(), "other", NOT_A_PLUGIN);
    let bins = bin_dir();
    let out = weir(&["plugins", "--plugins", dir.path().to_str().unwrap(), "--plugins", bins.to_str().unwrap()], &[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |p: &Path| {
        text.lines()
            .find(|l| l.contains(p.to_str().unwrap()) && l.contains(": "))
            .unwrap_or_else(|| panic!("{} not listed:\n{text}", p.display()))
            .to_owned()
    };
    let v2_line = line(&v2);
    assert!(
        v2_line.contains("built for plugin ABI 2.0") && v2_line.contains(&format!("this weir speaks ABI {}", host_abi_text())),
        "{v2_line}"
    );
    assert!(v2_line.contains("upgrade weir"), "says what to do: {v2_line}");
    assert!(line(&other).contains("not a Weir plugin"), "{text}");
    assert!(text.contains("source    http"), "the good plugins are still listed:\n{text}");
}

#[test]
fn an_incompatible_library_fails_only_the_pipelines_that_use_it() {
    let libs = tempfile::tempdir().unwrap();
    cdylib(libs.path(), "future", ABI_V2);
    let pipelines = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let port = free_port();
    write_pipeline(
        pipelines.path(),
        "future",
        "source: {plugin: http, config: {listen: \"127.0.0.1:1\"}}\nsinks: [{plugin: future-sink}]\n",
    );
    write_pipeline(
        pipelines.path(),
        "working",
        &format!(
            "source: {{plugin: http, config: {{listen: \"127.0.0.1:{port}\"}}}}\nsinks: [{{plugin: file, config: {{path: {}}}}}]\n",
            out.path().join("o.jsonl").display()
        ),
    );
    let bins = bin_dir();
    let weir = Weir::start(pipelines.path(), &["--plugins", libs.path().to_str().unwrap(), "--plugins", bins.to_str().unwrap()], &[]);
    let reply = post_json(&format!("http://127.0.0.1:{port}/produce"), r#"{"eventType":"x","userId":"u"}"#);
    assert_eq!(reply.status, 200, "{reply:?}");
    let health = curl("GET", &weir.url("/health"), None, None);
    assert_eq!(health.status, 503, "one pipeline failed, so the host is degraded: {health:?}");
    let h = health.json();
    assert_eq!(h["pipelines"]["working"], "running");
    assert_eq!(h["pipelines"]["future"], "failed");
    let pipelines = weir.get_json("/pipelines/future");
    assert!(pipelines["error"].as_str().unwrap().contains("unknown sink plugin \"future-sink\""), "{pipelines}");
    let logs = weir.logs();
    assert!(logs.contains(&format!("libfuture.so was built for plugin ABI 2.0, but this weir speaks ABI {}", host_abi_text())), "{logs}");
    assert_eq!(weir.metric("weir_plugin_load_failures_total"), Some(1.0));
}

#[test]
fn a_panicking_transform_fails_its_batch_and_the_pipeline_goes_on() {
    let pipelines = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("o.jsonl");
    let port = free_port();
    write_pipeline(
        pipelines.path(),
        "faulty",
        &format!(
            // One worker: the instance that panicked is the one the next batch re-creates.
            "settings: {{transform_workers: 1}}\nsource: {{plugin: http, config: {{listen: \"127.0.0.1:{port}\"}}}}\ntransforms: [{{plugin: test-panic, config: {{marker: BOOM}}}}]\nsinks: [{{plugin: file, config: {{path: {}}}}}]\n",
            file.display()
        ),
    );
    let weir = Weir::start(pipelines.path(), &[], &[]);
    let url = format!("http://127.0.0.1:{port}/produce");
    let reply = post_json(&url, r#"{"eventType":"BOOM","userId":"u"}"#);
    assert_eq!(reply.status, 500, "{reply:?}");
    assert!(reply.json()["error"].as_str().unwrap().contains("record 0 carries the marker"), "{reply:?}");
    for i in 0..3 {
        let reply = post_json(&url, &format!(r#"{{"eventType":"ok","userId":"u{i}"}}"#));
        assert_eq!(reply.status, 200, "the pipeline goes on after a panic: {reply:?}");
    }
    assert_eq!(weir.metric(r#"weir_stage_errors_total{pipeline="faulty",stage="test-panic",plugin="test-panic"}"#), Some(1.0));
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 3);
    let logs = weir.logs();
    assert!(logs.contains("Transform failed; its batch is failed.") && logs.contains("panicked"), "{logs}");
    assert!(logs.contains("Stage re-created after a panic."), "{logs}");
    wait_for("health", Duration::from_secs(5), || weir.get_json("/health")["status"] == "healthy");
}

#[test]
fn a_full_pipeline_answers_503_with_retry_after_and_recovers() {
    let pipelines = tempfile::tempdir().unwrap();
    let port = free_port();
    write_pipeline(
        pipelines.path(),
        "slow",
        &format!(
            "source: {{plugin: http, config: {{listen: \"127.0.0.1:{port}\", backpressure_wait_ms: 0, retry_after_secs: 2}}}}\nsinks: [{{plugin: test-slow, config: {{delay_ms: 300}}}}]\nsettings: {{queue_batches: 1, sink_queue_batches: 1}}\n"
        ),
    );
    let weir = Weir::start(pipelines.path(), &[], &[]);
    let url = format!("http://127.0.0.1:{port}/produce");
    // One batch in the sink, one in its queue, one in the pipeline queue: the rest is refused.
    let replies: Vec<Reply> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                s.spawn({
                    let url = url.clone();
                    move || post_json(&url, &format!(r#"{{"n":{i}}}"#))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let busy: Vec<&Reply> = replies.iter().filter(|r| r.status == 503).collect();
    assert!(!busy.is_empty(), "some requests were pushed back: {replies:?}");
    assert!(busy[0].headers.to_ascii_lowercase().contains("retry-after: 2"), "{:?}", busy[0]);
    assert!(busy[0].json()["error"].as_str().unwrap().contains("full"));
    assert!(replies.iter().all(|r| r.status == 200 || r.status == 503), "{replies:?}");
    assert!(weir.metric(r#"weir_stage_backpressure_total{pipeline="slow",stage="http",plugin="http"}"#).unwrap() >= busy.len() as f64);
    // Once the sink catches up, requests are taken again.
    wait_for("the pipeline to drain", Duration::from_secs(10), || {
        weir.metric(r#"weir_stage_queue_depth{pipeline="slow",stage="test-slow",plugin="test-slow"}"#) == Some(0.0)
            && weir.metric(r#"weir_stage_queue_depth{pipeline="slow",stage="http",plugin="http"}"#) == Some(0.0)
    });
    assert_eq!(post_json(&url, r#"{"n":99}"#).status, 200);
}

#[test]
fn two_pipeline_files_with_one_name_start_only_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (free_port(), free_port());
    write_pipeline(
        dir.path(),
        "a",
        &format!("name: ingest\nsource: {{plugin: http, config: {{listen: \"127.0.0.1:{a}\"}}}}\nsinks: [{{plugin: discard}}]\n"),
    );
    write_pipeline(
        dir.path(),
        "b",
        &format!("name: ingest\nsource: {{plugin: http, config: {{listen: \"127.0.0.1:{b}\"}}}}\nsinks: [{{plugin: discard}}]\n"),
    );
    let weir = Weir::start(dir.path(), &[], &[]);
    assert_eq!(post_json(&format!("http://127.0.0.1:{a}/produce"), "{}").status, 200);
    let logs = weir.logs();
    assert!(logs.contains("b.yaml:1:1: name: pipeline name \"ingest\" is also used by"), "{logs}");
}

#[test]
fn a_stage_that_keeps_panicking_is_restarted_with_backoff_and_marks_only_its_pipeline_failed_until_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (bad, good) = (free_port(), free_port());
    write_pipeline(
        dir.path(),
        "bad",
        // One worker: each batch meets the re-created instance, so the backoff is the stage's.
        &format!("settings: {{transform_workers: 1}}\nsource: {{plugin: http, config: {{listen: \"127.0.0.1:{bad}\"}}}}\ntransforms: [{{plugin: test-panic, config: {{marker: boom}}}}]\nsinks: [{{plugin: discard}}]\n"),
    );
    write_pipeline(
        dir.path(),
        "good",
        &format!("source: {{plugin: http, config: {{listen: \"127.0.0.1:{good}\"}}}}\nsinks: [{{plugin: discard}}]\n"),
    );
    let weir = Weir::start(dir.path(), &[], &[]);
    let (bad_url, good_url) = (format!("http://127.0.0.1:{bad}/produce"), format!("http://127.0.0.1:{good}/produce"));
    let started = std::time::Instant::now();
    for _ in 0..5 {
        assert_eq!(post_json(&bad_url, r#"{"x":"boom"}"#).status, 500);
        assert_eq!(post_json(&good_url, r#"{"x":1}"#).status, 200, "the other pipeline is unaffected");
    }
    // Re-created before the 2nd to 5th batch after 100, 200, 400 and 800 ms.
    assert!(started.elapsed() >= Duration::from_millis(1500), "restarted without backoff: {:?}", started.elapsed());
    let p = weir.get_json("/pipelines/bad");
    assert_eq!(p["state"], "failed", "{p}");
    assert!(p["error"].as_str().unwrap().contains("stage test-panic failed 5 times in a row"), "{p}");
    let health = curl("GET", &weir.url("/health"), None, None);
    assert_eq!(health.status, 503);
    assert_eq!(health.json()["pipelines"], serde_json::json!({"bad": "failed", "good": "running"}));
    assert_eq!(weir.metric(r#"weir_pipeline_up{pipeline="bad",state="failed"}"#), Some(0.0));
    // It recovers by itself once batches go through again.
    assert_eq!(post_json(&bad_url, r#"{"x":"fine"}"#).status, 200);
    assert_eq!(weir.get_json("/pipelines/bad")["state"], "running");
    assert_eq!(curl("GET", &weir.url("/health"), None, None).status, 200);
}

/// The ABI version this checkout's host speaks, `MAJOR.MINOR`.
fn host_abi_text() -> String {
    let (major, minor) = common::host_abi();
    format!("{major}.{minor}")
}
