//! The live console (`GET /` on the admin API) in headless Chromium: it loads with nothing
//! from any other origin, shows each pipeline's stages, its counters move while events are
//! posted, and its tap shows the records passing a stage with secrets masked; `weir tap`
//! prints the same stream in a terminal. A screenshot is kept as a test artifact
//! (`target/test-artifacts/console.png`).

mod common;
#[path = "common/page.rs"]
mod page;
#[path = "common/socketio.rs"]
mod socketio;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use page::render;

const PIPELINE: &str = "source: {plugin: http, config: {listen: \"127.0.0.1:@PORT@\"}}\ntransforms: [{plugin: enrich, config: {set: {seen: true}}}]\nsinks:\n  - {plugin: file, config: {path: @DIR@/out.jsonl}}\n  - {name: audit, plugin: discard, after: file}\n";

/// The `data-out` of the stage box for `stage` in a rendered DOM.
fn shown_out(dom: &str, stage: &str) -> Option<u64> {
    let at = dom.find(&format!("data-stage=\"{stage}\""))?;
    let tag = &dom[at..at + dom[at..].find('>')?];
    let start = tag.find("data-out=\"")? + "data-out=\"".len();
    tag[start..start + tag[start..].find('"')?].parse().ok()
}

fn post(scene: &Scene, n: usize) {
    for i in 0..n {
        assert_eq!(post_json(&scene.url("/produce"), &format!(r#"{{"eventType":"view","userId":"u{i}"}}"#)).status, 200);
    }
}

/// Posts events carrying a password until dropped.
struct Poster {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Poster {
    fn start(url: String) -> Poster {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                post_json(&url, r#"{"eventType":"login","userId":"ann","password":"hunter22"}"#);
            }
        });
        Poster { stop, thread: Some(thread) }
    }
}

impl Drop for Poster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn the_console_shows_the_default_pipeline_live_and_taps_records_with_nothing_from_elsewhere() {
    // The shipped default pipeline, on free ports, writing into a scratch directory.
    let scene = Scene::new();
    let (http, ws, events) = (format!("127.0.0.1:{}", scene.port), format!("127.0.0.1:{}", free_port()), scene.path("events.jsonl"));
    let envs = [("WEIR_HTTP_LISTEN", http.as_str()), ("WEIR_WS_LISTEN", ws.as_str()), ("WEIR_EVENTS_FILE", events.to_str().unwrap())];
    let weir = Weir::start(&repo().join("pipelines"), &["--no-watch"], &envs);
    for asset in ["/", "/console.js", "/console.css"] {
        let r = curl("GET", &weir.url(asset), None, None);
        assert_eq!(r.status, 200, "{asset}: {r:?}");
        let headers = r.headers.to_ascii_lowercase();
        assert!(headers.contains("content-security-policy: default-src 'self'"), "{asset}: {}", r.headers);
        assert!(headers.contains("x-frame-options: deny"), "{asset}: {}", r.headers);
        assert!(!r.body.contains("http://") && !r.body.contains("https://") && !r.body.contains("//cdn"), "{asset} names another origin");
    }

    post(&scene, 5);
    let dom = render(&weir.url("/"));
    for stage in ["http", "validate", "enrich", "dedupe", "websocket", "file"] {
        assert!(dom.contains(&format!("data-stage=\"{stage}\"")), "stage {stage} of the default pipeline is shown: {dom}");
    }
    assert!(dom.contains("data-pipeline=\"default\"") && dom.contains("data-state=\"running\""), "{dom}");
    assert_eq!(shown_out(&dom, "file"), Some(5), "{dom}");
    post(&scene, 7);
    let dom = render(&weir.url("/"));
    assert_eq!(shown_out(&dom, "file"), Some(12), "the counters moved: {dom}");
    assert_eq!(shown_out(&dom, "http"), Some(12), "{dom}");

    let poster = Poster::start(scene.url("/produce"));
    let dom = render(&weir.url("/#tap=default/enrich"));
    let screenshot = bin_dir().parent().unwrap().join("test-artifacts");
    std::fs::create_dir_all(&screenshot).unwrap();
    let screenshot = screenshot.join("console.png");
    let shot = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,800", "--virtual-time-budget=8000"])
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(weir.url("/#tap=default/enrich"))
        .output()
        .unwrap();
    drop(poster);
    assert!(dom.contains("default / enrich"), "the tap panel is open: {dom}");
    assert!(dom.contains(r#""password":"***""#) && dom.contains(r#""receivedAt":"#), "records tapped after enrich, masked: {dom}");
    assert!(!dom.contains("hunter22"), "a secret reached the page");
    assert!(shot.status.success(), "{}", String::from_utf8_lossy(&shot.stderr));
    assert!(std::fs::metadata(&screenshot).map(|m| m.len() > 10_000).unwrap_or(false), "a screenshot at {}", screenshot.display());
}

#[test]
fn weir_tap_prints_the_records_of_a_stage_as_they_flow() {
    let scene = Scene::new();
    scene.pipeline("shop", PIPELINE);
    let weir = scene.start(&["--no-watch"], &[]);
    let mut child = Command::new(bin_dir().join("weir"))
        .args(["tap", "shop.enrich", "--limit", "3", "--admin", &weir.admin])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let poster = Poster::start(scene.url("/produce"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "weir tap did not print 3 records");
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(poster);
    let lines: Vec<serde_json::Value> =
        BufReader::new(child.stdout.take().unwrap()).lines().map(|l| serde_json::from_str(&l.unwrap()).unwrap()).collect();
    assert!(status.success(), "{status}");
    assert_eq!(lines.len(), 3, "{lines:?}");
    for l in &lines {
        assert_eq!(l["stage"], "enrich");
        assert_eq!(l["value"], serde_json::json!({"eventType": "login", "userId": "ann", "password": "***", "seen": true}));
    }
    let wrong = common::weir(&["tap", "shop.nope", "--admin", &weir.admin], &[]);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("has no stage called \"nope\""), "{wrong:?}");
}

#[test]
fn with_an_admin_token_the_console_loads_and_its_data_needs_the_token() {
    let scene = Scene::new();
    scene.pipeline("shop", PIPELINE);
    let weir = scene.start(&["--no-watch"], &[("WEIR_ADMIN_TOKEN", "console-token-1234")]);
    for asset in ["/", "/console.js", "/console.css"] {
        assert_eq!(curl("GET", &weir.url(asset), None, None).status, 200, "{asset} holds no data");
    }
    assert_eq!(curl("GET", &weir.url("/pipelines"), None, None).status, 401);
    assert_eq!(curl("GET", &weir.url("/pipelines/shop/tap"), None, None).status, 401);
    let dom = render(&weir.url("/"));
    assert!(dom.contains("the admin API needs its token") && dom.contains("id=\"token-form\""), "the page asks for the token: {dom}");
    assert!(!dom.contains("id=\"token-form\" hidden"), "the token form is shown: {dom}");
}
