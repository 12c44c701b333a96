//! One HTTP address shared by stages of different pipelines (ABI 1.2): each serves its own
//! paths, one keep-alive connection may carry requests for both, a path nobody serves gets a
//! 404 from the host, a reload of one pipeline under load loses no request on the address,
//! and a plugin built for ABI 1.0 still loads and runs.

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Pipeline `name` at `version` serving `path` on the scene's port, into the file `out` of
/// the scene's directory.
fn pipeline(name: &str, path: &str, out: &str, version: u32) -> String {
    format!(
        "name: {name}\nsource: {{plugin: http, config: {{listen: \"127.0.0.1:@PORT@\", path: {path}, health_path: \"{}\"}}}}\ntransforms: [{{plugin: enrich, config: {{set: {{version: {version}}}}}}}]\nsinks: [{{plugin: file, config: {{path: @DIR@/{out}}}}}]\n",
        if name == "ingest" { "/health" } else { "" }
    )
}

fn ids(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// `ingest` (`/produce`) and `legacy` (`/api/log`) on one address; their output files.
fn setup() -> (Scene, std::path::PathBuf, std::path::PathBuf) {
    let s = Scene::new();
    let (produce, log) = (s.path("produce.jsonl"), s.path("log.jsonl"));
    s.pipeline("ingest", &pipeline("ingest", "/produce", "produce.jsonl", 0));
    s.pipeline("legacy", &pipeline("legacy", "/api/log", "log.jsonl", 0));
    (s, produce, log)
}

// Before, two pipelines naming one address both accepted on it and took each other's
// requests at random (each answering 404 for the other's path).
#[test]
fn two_pipelines_serve_their_own_paths_on_one_address() {
    let (s, produce, log) = setup();
    let _weir = s.start(&["--no-watch"], &[]);
    let base = s.url("");
    for i in 0..20 {
        assert_eq!(post_json(&format!("{base}/produce"), &format!(r#"{{"id":"p{i}"}}"#)).status, 200);
        assert_eq!(post_json(&format!("{base}/api/log"), &format!(r#"{{"id":"l{i}"}}"#)).status, 200);
    }
    assert_eq!(ids(&produce), (0..20).map(|i| format!("p{i}")).collect::<Vec<_>>());
    assert_eq!(ids(&log), (0..20).map(|i| format!("l{i}")).collect::<Vec<_>>());
    let health = curl("GET", &format!("{base}/health"), None, None);
    assert_eq!((health.status, health.json()["status"].as_str()), (200, Some("healthy")), "{health:?}");
    let unknown = curl("GET", &format!("{base}/nothing"), None, None);
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert!(unknown.json()["error"].as_str().unwrap().contains("no pipeline serves /nothing on 127.0.0.1:"), "{unknown:?}");

    // One keep-alive connection alternating between the two paths (as a browser's would).
    let script = format!(
        r#"
import http.client, json
c = http.client.HTTPConnection("127.0.0.1", {port}, timeout=10)
statuses = []
for i in range(50):
    path = "/produce" if i % 2 == 0 else "/api/log"
    c.request("POST", path, body=json.dumps({{"id": f"k{{i}}"}}), headers={{"Content-Type": "application/json"}})
    r = c.getresponse(); r.read(); statuses.append(r.status)
    assert r.getheader("Connection") != "close", "the connection stays open"
print(json.dumps(statuses))
"#,
        port = s.port
    );
    let out = Command::new("python3").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let statuses: Vec<u16> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(statuses, vec![200; 50]);
    let (p, l) = (ids(&produce), ids(&log));
    for i in 0..50 {
        let id = format!("k{i}");
        assert!(
            if i % 2 == 0 { p.contains(&id) && !l.contains(&id) } else { l.contains(&id) && !p.contains(&id) },
            "{id} in the wrong pipeline"
        );
    }
}

#[test]
fn a_second_pipeline_cannot_take_a_path_already_served() {
    let (s, _, _) = setup();
    s.pipeline("thief", &pipeline("thief", "/produce", "t.jsonl", 0));
    let weir = s.start(&["--no-watch"], &[]);
    let thief = weir.get_json("/pipelines/thief");
    let error = thief["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("/produce on 127.0.0.1:") && error.contains("is already served by pipeline ingest"), "{thief}");
    assert_eq!(post_json(&s.url("/produce"), r#"{"id":"x"}"#).status, 200);
}

// A reload of one pipeline on a shared address, under keep-alive load on both paths: no
// socket error, every request answered 200, every event written once, in its own pipeline.
#[test]
fn reloads_of_one_pipeline_on_a_shared_address_lose_nothing() {
    let (s, produce, log) = setup();
    let weir = s.start(&["--no-watch"], &[]);
    let wrk = Command::new("wrk")
        .args(["-t1", "-c8", "-d60s", "-s"])
        .arg(repo().join("tests/clients/wrk-events.lua"))
        .arg(s.url("/produce"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wrk is installed (scripts/deps.sh)");
    wait_for("wrk's first events", Duration::from_secs(10), || ids(&produce).len() > 100);
    for version in 1..=10u32 {
        s.pipeline("ingest", &pipeline("ingest", "/produce", "produce.jsonl", version));
        let r = curl("POST", &weir.url("/reload"), None, None);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(post_json(&s.url("/api/log"), &format!(r#"{{"id":"during-{version}"}}"#)).status, 200);
        wait_for("the new version's events", Duration::from_secs(5), || {
            std::fs::read_to_string(&produce)
                .unwrap_or_default()
                .lines()
                .last()
                .is_some_and(|l| l.contains(&format!("\"version\":{version}")))
        });
    }
    assert!(Command::new("kill").args(["-INT", &wrk.id().to_string()]).status().unwrap().success());
    let out = wrk.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("requests in"), "{report}");
    assert!(!report.contains("Socket errors") && !report.contains("Non-2xx"), "across reloads on a shared address:\n{report}");
    let written = ids(&produce);
    assert_eq!(written.iter().collect::<HashSet<_>>().len(), written.len(), "an event was written twice");
    assert_eq!(ids(&log), (1..=10).map(|v| format!("during-{v}")).collect::<Vec<_>>());
}

// Plugins built for ABI 1.0 (before opt-in flags, transform acknowledgements and shared
// addresses) still load and run: tests/fixtures/abi_1_0_sink.rs is one, written by hand.
#[test]
fn a_plugin_built_for_abi_1_0_still_loads_and_runs() {
    let libs = tempfile::tempdir().unwrap();
    cdylib(libs.path(), "legacy", &std::fs::read_to_string(repo().join("tests/fixtures/abi_1_0_sink.rs")).unwrap());
    let scene = Scene::new();
    let counts = scene.path("counts.txt");
    scene.pipeline(
        "old",
        "source: {plugin: http, config: {listen: \"127.0.0.1:@PORT@\"}}\nsinks: [{plugin: legacy-count, config: {path: @DIR@/counts.txt}}]\n",
    );
    let listed = weir(&["plugins", "--plugins", libs.path().to_str().unwrap()], &[]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(text.contains("legacy-plugins") && text.contains("1.0") && text.contains("legacy-count"), "{text}");
    let bins = bin_dir();
    let weir = scene.start(&["--no-watch", "--plugins", libs.path().to_str().unwrap(), "--plugins", bins.to_str().unwrap()], &[]);
    let r = post_json(&scene.url("/produce"), r#"[{"id":"a"},{"id":"b"},{"id":"c"}]"#);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(std::fs::read_to_string(&counts).unwrap(), "3\n");
    // It knows no dependency health (ABI 1.4): the host shows none for it rather than a guess.
    let p = weir.get_json("/pipelines/old");
    let sink = p["stages"].as_array().unwrap().iter().find(|s| s["plugin"] == "legacy-count").unwrap().clone();
    assert_eq!(sink["health"], serde_json::json!({}), "{sink}");
    assert!(!weir.metrics().contains("weir_stage_up{"), "no weir_stage_up series without a report");
    assert_eq!(weir.get_json("/health")["dependencies"], serde_json::json!({}));
}
