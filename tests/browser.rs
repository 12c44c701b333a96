//! Web pages as clients: a page of an allowed origin, in headless Chromium, posts events to
//! the `http` source; a page of another origin is stopped by the browser, and what it sent
//! never enters the pipeline. Preflights and security headers checked with curl.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// A static page served by Python's http.server on its own port (its own origin).
struct Page {
    child: Child,
    origin: String,
    _dir: tempfile::TempDir,
}

impl Page {
    fn serve(html: &str) -> Page {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), html).unwrap();
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let origin = format!("http://127.0.0.1:{port}");
        wait_for("the page server", Duration::from_secs(10), || std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_ok());
        Page { child, origin, _dir: dir }
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The page's DOM once its scripts ran, as headless Chromium renders it.
fn render(url: &str) -> String {
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000", "--dump-dom", url])
        .output()
        .expect("chromium is installed (scripts/deps.sh)");
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

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
