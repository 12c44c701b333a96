//! Web pages as clients: a static page on an origin of its own, rendered by headless
//! Chromium (Debian's `chromium`) once its scripts ran.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{free_port, wait_for};

/// A static page served by Python's http.server on its own port (its own origin).
pub struct Page {
    child: Child,
    pub origin: String,
    _dir: tempfile::TempDir,
}

impl Page {
    pub fn serve(html: &str) -> Page {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), html).unwrap();
        // socket.io-client's browser build, served with the page (nothing is downloaded).
        if html.contains("socket.io.min.js") {
            let bundle = crate::socketio::node_modules().join("socket.io-client/dist/socket.io.min.js");
            std::fs::copy(&bundle, dir.path().join("socket.io.min.js")).unwrap();
        }
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

    /// Replaces the page (served as it is at each request).
    pub fn write(&self, html: &str) {
        std::fs::write(self._dir.path().join("index.html"), html).unwrap();
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The page's DOM once its scripts ran, as headless Chromium renders it.
pub fn render(url: &str) -> String {
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000", "--dump-dom", url])
        .output()
        .expect("chromium is installed (scripts/deps.sh)");
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A page that, for each port in PORTS (replace it: `3001, 3002`), connects with
/// socket.io-client, joins the dashboard, posts an event with fetch to `/produce`, and waits
/// for it to come back as `new_event`; then shows one line per port: `PORT received ID`,
/// `PORT refused …` or `PORT post …`.
pub const ROUND_TRIP: &str = r#"<html><body><pre id="out">pending</pre><script src="socket.io.min.js"></script><script>
// For each address: connect with socket.io-client, join the dashboard, post an event with
// fetch, and wait for it to come back as new_event.
function attempt(port) {
  return new Promise((resolve) => {
    const base = "http://127.0.0.1:" + port, id = "page-" + port;
    // Long-polling: a request is always in flight, which holds Chromium's virtual time
    // (--virtual-time-budget) while the event makes its way through the pipelines.
    const socket = io(base, {reconnection: false, timeout: 60000, transports: ["polling"]});
    socket.on("connect_error", (e) => resolve("refused " + e.message));
    socket.on("connect", () => socket.emit("join_dashboard", {}));
    socket.on("dashboard_joined", async () => {
      try {
        const r = await fetch(base + "/produce", {method: "POST", headers: {"Content-Type": "application/json"},
          body: JSON.stringify({eventType: "page_view", userId: "page-user", id: id})});
        if (r.status !== 200) resolve("post answered " + r.status);
      } catch (e) { resolve("post blocked " + e.name); }
    });
    socket.on("new_event", (e) => {
      if (e.id === id) { resolve("received " + e.id); socket.close(); }
    });
  });
}
async function go() {
  const lines = [];
  for (const port of [PORTS]) lines.push(port + " " + await attempt(port));
  document.getElementById("out").textContent = "done\n" + lines.join("\n");
}
go();
</script></body></html>"#;
