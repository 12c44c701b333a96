//! Reload under continuous load: changed pipelines are replaced make-before-break on the
//! same socket, with no refused connection, no failed request, and every accepted event
//! written exactly once; invalid new versions leave the old one serving.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// Pipeline `ingest` at `version`: http on the scene's port → enrich → `out.jsonl`.
fn ingest(version: u32) -> String {
    format!(
        "name: ingest\nsource: {{plugin: http, config: {{listen: \"127.0.0.1:@PORT@\"}}}}\ntransforms:\n  - plugin: enrich\n    config: {{set: {{version: {version}}}}}\nsinks:\n  - plugin: file\n    config: {{path: @DIR@/out.jsonl}}\n"
    )
}

/// A pipeline directory holding `ingest` at `version` (its output `out.jsonl` beside it).
fn setup(version: u32) -> Scene {
    let s = Scene::nested();
    s.pipeline("ingest", &ingest(version));
    s
}

#[test]
fn twenty_reloads_under_load_refuse_nothing_and_write_every_event_once() {
    let s = setup(0);
    let out = s.path("out.jsonl");
    let weir = s.start(&["--no-watch"], &[]);
    let load = Load::start(&s.url("/produce"));
    for version in 1..=20u32 {
        s.pipeline("ingest", &ingest(version));
        let r = curl("POST", &weir.url("/reload"), None, None);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["replaced"], serde_json::json!(["ingest"]), "{r:?}");
        // The new config is in effect within 2 s.
        wait_for("the new version's events", Duration::from_secs(2), || json_lines(&out).last().is_some_and(|l| l["version"] == version));
    }
    let (accepted, failures) = load.finish();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    let written: Vec<String> = json_lines(&out).iter().map(|l| l["id"].as_str().unwrap().to_owned()).collect();
    let unique: HashSet<&String> = written.iter().collect();
    assert_eq!(unique.len(), written.len(), "an event was written twice");
    assert_eq!(written.len(), accepted.len(), "every accepted event is written, once");
    assert_eq!(weir.metric(r#"weir_reloads_total{result="ok"}"#), Some(20.0));
}

#[test]
fn an_invalid_new_version_leaves_the_old_one_serving() {
    let s = setup(1);
    let weir = s.start(&["--no-watch"], &[]);
    let url = s.url("/produce");
    let bad = [
        ("name: ingest\nsource: {plugin: http\n", "ingest.yaml:"),
        ("name: ingest\nsource: {plugin: http}\nsinks: [{plugin: nope}]\n", "unknown sink plugin \\\"nope\\\""),
        ("name: ingest\nsource: {plugin: http}\nsinks: [{plugin: file, config: {paht: x}}]\n", "unknown field `paht`"),
        // The config passes every check, but the plugin's `create` fails.
        ("name: ingest\nsource: {plugin: http}\nsinks: [{plugin: file, config: {path: /etc/hostname/out.jsonl}}]\n", "could not start"),
    ];
    for (yaml, expect) in bad {
        s.pipeline("ingest", yaml);
        let r = curl("POST", &weir.url("/reload"), None, None);
        assert_eq!(r.status, 422, "{r:?}");
        assert!(r.body.contains(expect), "{expect} in {}", r.body);
        assert_eq!(post_json(&url, r#"{"id":"still"}"#).status, 200, "the old version still serves");
    }
    assert_eq!(weir.metric(r#"weir_reloads_total{result="failed"}"#), Some(4.0));
    let p = weir.get_json("/pipelines/ingest");
    assert_eq!(p["last_reload"]["result"], "refused", "{p}");
    assert!(p["last_reload"]["error"].as_str().unwrap().contains("ingest.yaml:"), "{p}");
    assert_eq!(p["version"], 1, "{p}");
    assert_eq!(weir.get_json("/health")["last_reload"]["result"], "failed");
}

#[test]
fn files_added_and_removed_start_and_stop_only_those_pipelines() {
    let s = Scene::nested();
    let b = free_port();
    s.pipeline("a", &ingest(1).replace("name: ingest", "name: a").replace("out.jsonl", "a.jsonl"));
    let weir = s.start(&["--no-watch"], &[]);
    s.pipeline("b", &format!("source: {{plugin: http, config: {{listen: \"127.0.0.1:{b}\"}}}}\nsinks: [{{plugin: discard}}]\n"));
    let r = curl("POST", &weir.url("/reload"), None, None).json();
    assert_eq!((r["started"].clone(), r["unchanged"].clone()), (serde_json::json!(["b"]), serde_json::json!(["a"])), "{r}");
    assert_eq!(post_json(&format!("http://127.0.0.1:{b}/produce"), "{}").status, 200);
    std::fs::remove_file(s.pipelines.join("b.yaml")).unwrap();
    let r = curl("POST", &weir.url("/reload"), None, None).json();
    assert_eq!(r["stopped"], serde_json::json!(["b"]), "{r}");
    assert_eq!(post_json(&s.url("/produce"), r#"{"id":"x"}"#).status, 200, "a kept running");
    let names: Vec<String> =
        weir.get_json("/pipelines").as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names, vec!["a".to_owned()]);
}

#[test]
fn editing_a_pipeline_file_reloads_it_by_itself() {
    let s = setup(1);
    let out = s.path("out.jsonl");
    let weir = s.start(&[], &[]);
    s.pipeline("ingest", &ingest(2));
    let url = s.url("/produce");
    wait_for("version 2 in effect", Duration::from_secs(5), || {
        assert_eq!(post_json(&url, r#"{"id":"w"}"#).status, 200);
        json_lines(&out).last().is_some_and(|l| l["version"] == 2)
    });
    // The report is written once the old version has drained, which may be after the new
    // one took its first event.
    wait_for("the reload reported", Duration::from_secs(10), || {
        weir.get_json("/health")["last_reload"]["replaced"] == serde_json::json!(["ingest"])
    });
}

#[test]
fn sighup_reloads() {
    let s = setup(1);
    let out = s.path("out.jsonl");
    let weir = s.start(&["--no-watch"], &[]);
    s.pipeline("ingest", &ingest(7));
    let status = std::process::Command::new("kill").args(["-HUP", &weir.pid().to_string()]).status().unwrap();
    assert!(status.success());
    wait_for("the reload", Duration::from_secs(5), || weir.get_json("/health")["last_reload"]["replaced"] == serde_json::json!(["ingest"]));
    assert_eq!(post_json(&s.url("/produce"), r#"{"id":"h"}"#).status, 200);
    assert_eq!(json_lines(&out).last().unwrap()["version"], 7);
}

#[test]
fn pause_resume_and_restart_through_the_api_under_load() {
    let s = setup(1);
    let out = s.path("out.jsonl");
    // Answer 503 at once while paused.
    s.pipeline("ingest", &ingest(1).replace("listen: \"", "backpressure_wait_ms: 0, listen: \""));
    let weir = s.start(&["--no-watch"], &[]);
    let url = s.url("/produce");
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::<(u16, bool, String)>::new()));
    let client = {
        let (stop, seen, url) = (stop.clone(), seen.clone(), url.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("p-{n}");
                let r = post_json(&url, &format!(r#"{{"id":"{id}"}}"#));
                seen.lock().unwrap().push((r.status, r.headers.to_ascii_lowercase().contains("retry-after: 1"), id));
                n += 1;
            }
        })
    };
    let count = |status: u16| seen.lock().unwrap().iter().filter(|s| s.0 == status).count();
    wait_for("traffic", Duration::from_secs(5), || count(200) > 5);
    assert_eq!(curl("POST", &weir.url("/pipelines/ingest/pause"), None, None).json()["paused"], true);
    wait_for("503 while paused", Duration::from_secs(5), || count(503) > 3);
    assert!(seen.lock().unwrap().iter().filter(|s| s.0 == 503).all(|s| s.1), "every 503 carries Retry-After");
    let before = count(200);
    assert_eq!(curl("POST", &weir.url("/pipelines/ingest/resume"), None, None).json()["paused"], false);
    wait_for("200 after resuming", Duration::from_secs(5), || count(200) > before + 3);
    let started = weir.get_json("/pipelines/ingest")["started_at"].clone();
    assert_eq!(curl("POST", &weir.url("/pipelines/ingest/restart"), None, None).status, 200);
    assert_ne!(weir.get_json("/pipelines/ingest")["started_at"], started, "a new version runs");
    let before = count(200);
    wait_for("200 after restarting", Duration::from_secs(5), || count(200) > before + 3);
    stop.store(true, Ordering::Relaxed);
    client.join().expect("no refused connection");
    let seen = seen.lock().unwrap().clone();
    assert!(seen.iter().all(|s| s.0 == 200 || s.0 == 503), "{:?}", seen.iter().find(|s| s.0 != 200 && s.0 != 503));
    let written: HashSet<String> = json_lines(&out).iter().map(|l| l["id"].as_str().unwrap().to_owned()).collect();
    let accepted: HashSet<String> = seen.iter().filter(|s| s.0 == 200).map(|s| s.2.clone()).collect();
    assert_eq!(written, accepted, "exactly the accepted events are written");
    assert_eq!(json_lines(&out).len(), written.len(), "once each");
}

/// A plugin directory with the libraries `ingest` needs and the test plugins' library.
fn plugin_dir(dir: &std::path::Path) -> std::path::PathBuf {
    let plugins = dir.join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    for lib in ["libweir_http.so", "libweir_file.so"] {
        std::os::unix::fs::symlink(bin_dir().join(lib), plugins.join(lib)).unwrap();
    }
    std::fs::copy(bin_dir().join("libweir_test_faulty.so"), plugins.join("libweir_test_faulty.so")).unwrap();
    plugins
}

/// Puts a new build of the test plugins' library in place the way a build does: a new file
/// renamed over the old one. `stamp` replaces the build's stamp (the change that shows).
fn rebuild(plugins: &std::path::Path, stamp: &[u8; 16]) {
    let bytes = std::fs::read(bin_dir().join("libweir_test_faulty.so")).unwrap();
    let at = bytes.windows(16).position(|w| w == b"weir-stamp:v0001").expect("the library carries its stamp");
    let mut new = bytes.clone();
    new[at..at + 16].copy_from_slice(stamp);
    let tmp = plugins.join(".libweir_test_faulty.so.new");
    std::fs::write(&tmp, new).unwrap();
    std::fs::rename(&tmp, plugins.join("libweir_test_faulty.so")).unwrap();
}

#[test]
fn a_rebuilt_plugin_library_is_picked_up_on_reload_under_load_and_an_incompatible_one_is_refused() {
    let s = Scene::nested();
    let plugins = plugin_dir(s.dir.path());
    let out = s.path("out.jsonl");
    s.pipeline(
        "ingest",
        "source: {plugin: http, config: {listen: \"127.0.0.1:@PORT@\"}}\ntransforms: [{plugin: test-stamp}]\nsinks: [{plugin: file, config: {path: @DIR@/out.jsonl}}]\n",
    );
    // A second pipeline that does not use the rebuilt library is left alone.
    s.pipeline(
        "other",
        &format!(
            "source: {{plugin: http, config: {{listen: \"127.0.0.1:{}\"}}}}\nsinks: [{{plugin: file, config: {{path: \"-\"}}}}]\n",
            free_port()
        ),
    );
    let weir = s.start(&["--no-watch", "--plugins", plugins.to_str().unwrap()], &[]);
    let url = s.url("/produce");
    let other_started = weir.get_json("/pipelines/other")["started_at"].clone();

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::<(u16, String)>::new()));
    let client = {
        let (stop, seen, url) = (stop.clone(), seen.clone(), url.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("u-{n}");
                let r = post_json(&url, &format!(r#"{{"id":"{id}"}}"#));
                seen.lock().unwrap().push((r.status, id));
                n += 1;
            }
        })
    };
    let stamped = |stamp: &str| json_lines(&out).iter().filter(|l| l["stamp"] == stamp).count();
    wait_for("events of the first build", Duration::from_secs(5), || stamped("weir-stamp:v0001") > 5);

    rebuild(&plugins, b"weir-stamp:v0002");
    let r = curl("POST", &weir.url("/reload"), None, None);
    assert_eq!(r.status, 200, "{r:?}");
    let report = r.json();
    assert_eq!(report["replaced"], serde_json::json!(["ingest"]), "{report}");
    assert_eq!(report["unchanged"], serde_json::json!(["other"]), "{report}");
    assert!(report["libraries_loaded"][0].as_str().unwrap().contains("libweir_test_faulty.so"), "{report}");
    wait_for("events of the rebuilt library", Duration::from_secs(2), || {
        json_lines(&out).last().is_some_and(|l| l["stamp"] == "weir-stamp:v0002")
    });
    let p = weir.get_json("/pipelines/ingest");
    assert_eq!(p["version"], 2, "{p}");
    assert_eq!(p["last_reload"]["result"], "replaced", "{p}");
    assert_eq!(weir.get_json("/pipelines/other")["started_at"], other_started, "the other pipeline was not touched");

    // A library built for another plugin ABI, in the same file: refused, the loaded one kept.
    let build = tempfile::tempdir().unwrap();
    let future = cdylib(build.path(), "future", ABI_V2);
    std::fs::copy(&future, plugins.join(".incoming")).unwrap();
    std::fs::rename(plugins.join(".incoming"), plugins.join("libweir_test_faulty.so")).unwrap();
    let r = curl("POST", &weir.url("/reload"), None, None);
    assert_eq!(r.status, 422, "{r:?}");
    assert!(r.body.contains("built for plugin ABI 2.0") && r.body.contains("is kept"), "{}", r.body);
    assert_eq!(r.json()["unchanged"], serde_json::json!(["ingest", "other"]), "{}", r.body);
    let before = stamped("weir-stamp:v0002");
    wait_for("the kept build to go on serving", Duration::from_secs(5), || stamped("weir-stamp:v0002") > before + 5);

    stop.store(true, Ordering::Relaxed);
    client.join().expect("no refused connection");
    let seen = seen.lock().unwrap().clone();
    assert!(seen.iter().all(|s| s.0 == 200), "{:?}", seen.iter().find(|s| s.0 != 200));
    let written: Vec<String> = json_lines(&out).iter().map(|l| l["id"].as_str().unwrap().to_owned()).collect();
    let unique: HashSet<&String> = written.iter().collect();
    assert_eq!(unique.len(), written.len(), "an event was written twice");
    assert_eq!(written.len(), seen.len(), "every accepted event is written, once");
    assert_eq!(stamped("weir-stamp:v0001") + stamped("weir-stamp:v0002"), written.len());
}

#[test]
fn the_dedupe_window_survives_reloads_under_load() {
    let s = Scene::nested();
    let out = s.path("out.jsonl");
    let version = |v: u32| {
        format!(
            "name: ingest\nsource: {{plugin: http, config: {{listen: \"127.0.0.1:@PORT@\"}}}}\ntransforms:\n  - plugin: dedupe\n    config: {{fields: [/id], max_entries: {}}}\n  - plugin: enrich\n    config: {{set: {{version: {v}}}}}\nsinks:\n  - plugin: file\n    config: {{path: @DIR@/out.jsonl}}\n",
            100_000 + v
        )
    };
    s.pipeline("ingest", &version(0));
    let weir = s.start(&["--no-watch"], &[]);
    let url = s.url("/produce");
    let stop = Arc::new(AtomicBool::new(false));
    // (id, answered as a duplicate) for every request, each id sent twice, the second time
    // some requests later (often across a reload).
    let seen = Arc::new(Mutex::new(Vec::<(u32, bool)>::new()));
    let client = {
        let (stop, seen, url) = (stop.clone(), seen.clone(), url.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                for id in [n, n.wrapping_sub(7)].into_iter().filter(|id| *id <= n) {
                    let r = post_json(&url, &format!(r#"{{"id":{id}}}"#));
                    assert_eq!(r.status, 200, "{r:?}");
                    seen.lock().unwrap().push((id, r.json()["duplicate"] == true));
                }
                n += 1;
            }
        })
    };
    for v in 1..=5u32 {
        let before = seen.lock().unwrap().len();
        wait_for("traffic", Duration::from_secs(5), || seen.lock().unwrap().len() > before + 20);
        s.pipeline("ingest", &version(v));
        let r = curl("POST", &weir.url("/reload"), None, None);
        assert_eq!(r.json()["replaced"], serde_json::json!(["ingest"]), "{r:?}");
    }
    let before = seen.lock().unwrap().len();
    wait_for("traffic after the last reload", Duration::from_secs(5), || seen.lock().unwrap().len() > before + 20);
    stop.store(true, Ordering::Relaxed);
    client.join().expect("every request answered 200");
    let seen = seen.lock().unwrap().clone();
    let written: Vec<u64> = json_lines(&out).iter().map(|l| l["id"].as_u64().unwrap()).collect();
    let unique: HashSet<u64> = written.iter().copied().collect();
    assert_eq!(unique.len(), written.len(), "a duplicate was written across a reload");
    let firsts: HashSet<u64> = seen.iter().filter(|s| !s.1).map(|s| u64::from(s.0)).collect();
    assert_eq!(unique, firsts, "exactly the first sending of each id is written");
    assert_eq!(seen.iter().filter(|s| s.1).count(), seen.len() - firsts.len(), "every second sending was a duplicate");
    assert_eq!(json_lines(&out).iter().map(|l| l["version"].as_u64().unwrap()).max(), Some(5));
}

#[test]
fn reloads_share_a_disk_buffer_between_versions_and_deliver_every_event_once() {
    let s = setup(0);
    let out = s.path("out.jsonl");
    // The same pipeline with a disk buffer in front of its file sink (relative to the pipeline file).
    let with_disk = |version: u32| format!("{}    buffer: {{disk: buffer}}\n", ingest(version));
    s.pipeline("ingest", &with_disk(0));
    let weir = s.start(&["--no-watch"], &[]);
    let url = s.url("/produce");
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let client = {
        let (stop, accepted, url) = (stop.clone(), accepted.clone(), url.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("d-{n}");
                let r = post_json(&url, &format!(r#"{{"id":"{id}"}}"#));
                assert_eq!(r.status, 200, "{r:?}");
                accepted.lock().unwrap().push(id);
                n += 1;
            }
        })
    };
    for version in 1..=10u32 {
        s.pipeline("ingest", &with_disk(version));
        let r = curl("POST", &weir.url("/reload"), None, None);
        assert_eq!(r.json()["replaced"], serde_json::json!(["ingest"]), "{r:?}");
        wait_for("the new version's events", Duration::from_secs(5), || json_lines(&out).last().is_some_and(|l| l["version"] == version));
    }
    stop.store(true, Ordering::Relaxed);
    client.join().expect("every request answered 200");
    let accepted = accepted.lock().unwrap().clone();
    wait_for("every accepted event out of the disk buffer", Duration::from_secs(10), || json_lines(&out).len() >= accepted.len());
    let written: Vec<String> = json_lines(&out).iter().map(|l| l["id"].as_str().unwrap().to_owned()).collect();
    let unique: HashSet<&String> = written.iter().collect();
    assert_eq!(unique.len(), written.len(), "an event was written twice");
    assert_eq!(written.len(), accepted.len(), "every accepted event is written, once");
    assert!(!weir.logs().contains("damaged"), "{}", weir.logs());
}
