//! Web pages as clients: a page of an allowed origin, in headless Chromium, posts events to
//! the `http` source; a page of another origin is stopped by the browser, and what it sent
//! never enters the pipeline. Preflights and security headers checked with curl. A page
//! with the real socket.io-client (its browser build from npm) sees its own post arrive.

mod common;
#[path = "common/page.rs"]
mod page;
#[path = "common/socketio.rs"]
mod socketio;

use std::process::Command;

use common::*;
use page::{render, Page};

const PAGE: &str = r#"<html><body><pre id="out">pending</pre><script>
async function go() {
  const lines = [];
  for (const port of [ALLOWED, OTHER]) {
    try {
      const r = await fetch("http://127.0.0.1:" + port + "/produce", {method: "POST",
        headers: {"Content-Type": "application/json"}, body: JSON.stringify({eventType: "page_view", id: "from-" + port})});
      lines.push(port + " " + r.status + " " + (await r.text()));
    } catch (e) { lines.push(port + " blocked " + e.name); }
  }
  document.getElementById("out").textContent = "done\n" + lines.join("\n");
}
go();
</script></body></html>"#;

fn pipeline(port: u16, origin: &str, out: &std::path::Path) -> String {
    format!(
        "source: {{plugin: http, config: {{listen: \"127.0.0.1:{port}\", cors: {{allowed_origins: [\"{origin}\"]}}}}}}\nsinks: [{{plugin: file, config: {{path: {}}}}}]\n",
        out.display()
    )
}

// Observed before: `OPTIONS /produce` answered 405, so no page of another origin could post
// JSON at all.
#[test]
fn a_page_of_an_allowed_origin_posts_and_a_page_of_another_is_stopped_by_the_browser() {
    let dir = tempfile::tempdir().unwrap();
    let (allowed, other) = (free_port(), free_port());
    let html = PAGE.replace("ALLOWED", &allowed.to_string()).replace("OTHER", &other.to_string());
    let page = Page::serve(&html);
    let (out_allowed, out_other) = (dir.path().join("allowed.jsonl"), dir.path().join("other.jsonl"));
    write_pipeline(dir.path(), "allowed", &pipeline(allowed, &page.origin, &out_allowed));
    write_pipeline(dir.path(), "other", &pipeline(other, "https://dashboard.example", &out_other));
    let _weir = Weir::start(dir.path(), &["--no-watch"], &[]);

    let dom = render(&format!("{}/index.html", page.origin));
    assert!(dom.contains("done"), "the page's script did not finish: {dom}");
    assert!(dom.contains(&format!("{allowed} 200 ")), "the allowed origin's post: {dom}");
    assert!(dom.contains(&format!("{other} blocked TypeError")), "the other origin's post: {dom}");
    assert_eq!(std::fs::read_to_string(&out_allowed).unwrap().trim(), format!(r#"{{"eventType":"page_view","id":"from-{allowed}"}}"#));
    assert_eq!(std::fs::read_to_string(&out_other).unwrap_or_default(), "", "a refused origin's event entered the pipeline");

    // The same with curl: the preflight is answered without entering the pipeline.
    let preflight = |port: u16| {
        let out = Command::new("curl")
            .args(["-sS", "-D", "-", "-o", "/dev/null", "-X", "OPTIONS", &format!("http://127.0.0.1:{port}/produce")])
            .args(["-H", &format!("Origin: {}", page.origin), "-H", "Access-Control-Request-Method: POST"])
            .args(["-H", "Access-Control-Request-Headers: content-type"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
    };
    let ok = preflight(allowed);
    assert!(ok.starts_with("http/1.1 204"), "{ok}");
    assert!(ok.contains(&format!("access-control-allow-origin: {}", page.origin)), "{ok}");
    assert!(ok.contains("access-control-allow-methods: post, get") && ok.contains("access-control-max-age: 600"), "{ok}");
    let refused = preflight(other);
    assert!(refused.starts_with("http/1.1 403") && !refused.contains("access-control-allow-origin"), "{refused}");
    // A program (no Origin) posts as before, and every answer carries the security headers.
    let r = post_json(&format!("http://127.0.0.1:{other}/produce"), r#"{"id":"from-curl"}"#);
    assert_eq!(r.status, 200, "{r:?}");
    let headers = r.headers.to_ascii_lowercase();
    for h in ["x-content-type-options: nosniff", "x-frame-options: deny", "referrer-policy: no-referrer", "cache-control: no-store"] {
        assert!(headers.contains(h), "{h} missing: {headers}");
    }
}

fn relay(port: u16, origin: &str) -> String {
    format!(
        "source: {{plugin: http, config: {{listen: \"127.0.0.1:{port}\", path: /produce, cors: {{allowed_origins: [\"{origin}\"]}}}}}}\n\
         sinks: [{{plugin: socketio, config: {{listen: \"127.0.0.1:{port}\", room: dashboard, allowed_origins: [\"{origin}\"]}}}}]\n"
    )
}

#[test]
fn a_page_posts_with_fetch_and_sees_its_event_on_its_own_socketio_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (allowed, other) = (free_port(), free_port());
    let page = Page::serve(&page::ROUND_TRIP.replace("PORTS", &format!("{allowed}, {other}")));
    // Each address serves POST /produce and Socket.IO together, as the Neo example's 3001.
    write_pipeline(dir.path(), "allowed", &relay(allowed, &page.origin));
    write_pipeline(dir.path(), "other", &relay(other, "https://dashboard.example"));
    let weir = Weir::start(dir.path(), &["--no-watch"], &[]);

    let dom = render(&format!("{}/index.html", page.origin));
    assert!(dom.contains("done"), "the page's script did not finish: {dom}");
    assert!(dom.contains(&format!("{allowed} received page-{allowed}")), "the allowed page's own event: {dom}");
    assert!(dom.contains(&format!("{other} refused")), "the other page's handshake: {dom}");
    let series = r#"weir_plugin_socketio_origins_refused_total{pipeline="other",stage="socketio",plugin="socketio"}"#;
    assert!(weir.metric(series).is_some_and(|n| n >= 1.0), "the refusal is counted:\n{}", weir.metrics());
}
