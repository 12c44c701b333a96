//! TLS: a test CA made with openssl. The admin API with curl `--cacert` as the client, a
//! certificate rotated under load (no request fails, an open connection keeps working),
//! mutual TLS, the CLI verbs over TLS, and a wrong certificate file refused at start. The
//! `http` source over HTTPS through reloads; the `socketio` sink to socket.io-client and the
//! `websocket` sink to Node's `ws` client over `wss://`, each trusting only the test CA.

mod common;
#[path = "common/socketio.rs"]
mod socketio;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().expect("openssl is installed");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A certificate authority in a temporary directory, and the certificates it issued.
struct Ca {
    dir: tempfile::TempDir,
    name: &'static str,
}

impl Ca {
    fn new(name: &'static str) -> Ca {
        let dir = tempfile::tempdir().unwrap();
        let (key, pem) = (dir.path().join(format!("{name}.key")), dir.path().join(format!("{name}.pem")));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            pem.to_str().unwrap(),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        Ca { dir, name }
    }

    fn pem(&self) -> PathBuf {
        self.dir.path().join(format!("{}.pem", self.name))
    }

    /// Issues a certificate for `cn` (for 127.0.0.1 and localhost), for a server or a
    /// client; returns its certificate and key files.
    fn issue(&self, file: &str, cn: &str, usage: &str) -> (PathBuf, PathBuf) {
        let d = self.dir.path();
        let (key, csr, pem, ext) =
            (d.join(format!("{file}.key")), d.join(format!("{file}.csr")), d.join(format!("{file}.pem")), d.join(format!("{file}.ext")));
        std::fs::write(&ext, format!("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n")).unwrap();
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            csr.to_str().unwrap(),
        ]);
        let ca_key = d.join(format!("{}.key", self.name));
        openssl(&[
            "x509",
            "-req",
            "-in",
            csr.to_str().unwrap(),
            "-CA",
            self.pem().to_str().unwrap(),
            "-CAkey",
            ca_key.to_str().unwrap(),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            ext.to_str().unwrap(),
            "-out",
            pem.to_str().unwrap(),
        ]);
        (pem, key)
    }
}

/// What curl saw of one HTTPS request: the status (None when the request failed) and the
/// subject of the server's certificate.
#[derive(Debug)]
struct Seen {
    status: Option<u16>,
    subject: Option<String>,
    /// curl's own error line, shown in failure messages.
    #[allow(dead_code)]
    error: String,
}

fn https(url: &str, ca: &Path, client: Option<(&Path, &Path)>) -> Seen {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-v", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", ca.to_str().unwrap(), url]);
    if let Some((cert, key)) = client {
        cmd.args(["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()]);
    }
    let out = cmd.output().expect("curl is installed");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let subject = err.lines().find_map(|l| l.trim_start_matches('*').trim().strip_prefix("subject: ").map(str::to_owned));
    let status = out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().parse().ok()).flatten();
    Seen { status, subject, error: err.lines().filter(|l| l.starts_with("curl:")).collect::<Vec<_>>().join("; ") }
}

/// `weir run` with an empty pipeline directory and the admin API over TLS.
fn start(pipelines: &Path, envs: &[(&str, &str)]) -> Weir {
    Weir::start_until(pipelines, &[], envs, |_| true)
}

fn tls_env<'a>(cert: &'a Path, key: &'a Path) -> Vec<(&'static str, &'a str)> {
    vec![("WEIR_ADMIN_TLS_CERT", cert.to_str().unwrap()), ("WEIR_ADMIN_TLS_KEY", key.to_str().unwrap())]
}

fn wait_https(w: &Weir, ca: &Path, client: Option<(&Path, &Path)>) {
    let url = format!("https://{}/health", w.admin);
    wait_for("the admin API over TLS", Duration::from_secs(20), || https(&url, ca, client).status.is_some());
}

#[test]
fn the_admin_api_answers_over_tls_only() {
    let ca = Ca::new("weir-test-ca");
    let (cert, key) = ca.issue("server", "weir-one", "serverAuth");
    let pipelines = tempfile::tempdir().unwrap();
    let w = start(pipelines.path(), &tls_env(&cert, &key));
    wait_https(&w, &ca.pem(), None);
    let seen = https(&format!("https://{}/health", w.admin), &ca.pem(), None);
    assert_eq!(seen.status, Some(200), "{seen:?}");
    assert_eq!(seen.subject.as_deref(), Some("CN=weir-one"));
    // Plain HTTP on the same port gets no answer.
    let plain = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://{}/health", w.admin)])
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&plain.stdout).trim(), "200");
    // An untrusting client refuses the certificate.
    let other = Ca::new("other-ca");
    let refused = https(&format!("https://{}/health", w.admin), &other.pem(), None);
    assert_eq!(refused.status, None, "{refused:?}");
    // The CLI verbs speak TLS to it, trusting the CA they are given.
    let admin = w.admin.clone();
    let ca_pem = ca.pem();
    let mut envs = tls_env(&cert, &key);
    envs.push(("WEIR_ADMIN_CA", ca_pem.to_str().unwrap()));
    let out = weir(&["status", "--admin", &admin], &envs);
    assert!(out.status.success(), "weir status over TLS: {}", String::from_utf8_lossy(&out.stderr));
    assert!(w.logs().contains("tls=true"), "{}", w.logs());
}

/// A client on one keep-alive connection (Python's http.client and ssl, another TLS stack
/// than the server's): one request, then another when told, each printing the status and
/// the certificate's common name.
const KEEP_ALIVE: &str = r#"
import http.client, json, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
c = http.client.HTTPSConnection("127.0.0.1", int(sys.argv[1]), context=ctx, timeout=20)
def get():
    c.request("GET", "/health")
    r = c.getresponse()
    r.read()
    cn = dict(x[0] for x in c.sock.getpeercert()["subject"])["commonName"]
    print(json.dumps([r.status, cn]), flush=True)
get()
sys.stdin.readline()
get()
"#;

#[test]
fn a_certificate_rotated_under_load_fails_no_request() {
    let ca = Ca::new("weir-test-ca");
    let (cert, key) = ca.issue("server", "weir-one", "serverAuth");
    let (next_cert, next_key) = ca.issue("next", "weir-two", "serverAuth");
    let live = tempfile::tempdir().unwrap();
    let (live_cert, live_key) = (live.path().join("cert.pem"), live.path().join("key.pem"));
    std::fs::copy(&cert, &live_cert).unwrap();
    std::fs::copy(&key, &live_key).unwrap();
    let pipelines = tempfile::tempdir().unwrap();
    let w = start(pipelines.path(), &tls_env(&live_cert, &live_key));
    wait_https(&w, &ca.pem(), None);
    let url = format!("https://{}/health", w.admin);

    let port = w.admin.rsplit_once(':').unwrap().1.to_owned();
    let mut python = Command::new("python3")
        .args(["-c", KEEP_ALIVE, &port, ca.pem().to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = BufReader::new(python.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&said.next().unwrap().unwrap()).unwrap();
    assert_eq!(first, serde_json::json!([200, "weir-one"]));

    // Load: new connections one after the other, each recorded.
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let load = {
        let (stop, seen, url, ca) = (stop.clone(), seen.clone(), url.clone(), ca.pem());
        std::thread::spawn(move || {
            while !stop.load(Relaxed) {
                let s = https(&url, &ca, None);
                seen.lock().unwrap().push(s);
            }
        })
    };
    wait_for("requests before the rotation", Duration::from_secs(20), || seen.lock().unwrap().len() >= 5);
    // Rotated as a deploy script might: the key first (it does not fit the old certificate
    // for a moment), then the certificate.
    std::fs::copy(&next_key, &live_key).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    std::fs::copy(&next_cert, &live_cert).unwrap();
    wait_for("new connections to get the new certificate", Duration::from_secs(20), || {
        seen.lock().unwrap().iter().rev().take(3).all(|s| s.subject.as_deref() == Some("CN=weir-two"))
    });
    // A broken file is not taken: the certificate in use stays.
    std::fs::write(&live_cert, "-----BEGIN CERTIFICATE-----\ntruncated\n").unwrap();
    wait_for("the broken file to be refused", Duration::from_secs(20), || w.logs().contains("changed TLS files not taken"));
    let after = seen.lock().unwrap().len();
    wait_for("requests after the broken file", Duration::from_secs(20), || seen.lock().unwrap().len() >= after + 5);
    stop.store(true, Relaxed);
    load.join().unwrap();

    // The connection opened before the rotation still works, with the certificate it began with.
    python.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    let second: serde_json::Value = serde_json::from_str(&said.next().unwrap().unwrap()).unwrap();
    assert_eq!(second, serde_json::json!([200, "weir-one"]));
    assert!(python.wait().unwrap().success());

    let seen = seen.lock().unwrap();
    let failed: Vec<&Seen> = seen.iter().filter(|s| s.status != Some(200)).collect();
    assert!(failed.is_empty(), "{} of {} requests failed during the rotation: {failed:?}", failed.len(), seen.len());
    let one = seen.iter().filter(|s| s.subject.as_deref() == Some("CN=weir-one")).count();
    let two = seen.iter().filter(|s| s.subject.as_deref() == Some("CN=weir-two")).count();
    assert!(one >= 5 && two >= 5 && one + two == seen.len(), "weir-one {one}, weir-two {two}, of {}", seen.len());
    let log = w.logs();
    assert!(log.contains("new TLS certificate in use"), "{log}");
    assert!(log.contains("does not fit the certificate"), "the key written first was refused until its certificate came: {log}");
}

#[test]
fn mutual_tls_takes_only_clients_the_ca_signed() {
    let ca = Ca::new("weir-test-ca");
    let (cert, key) = ca.issue("server", "weir-one", "serverAuth");
    let (client_cert, client_key) = ca.issue("client", "operator", "clientAuth");
    let stranger = Ca::new("stranger-ca");
    let (stranger_cert, stranger_key) = stranger.issue("client", "stranger", "clientAuth");
    let pipelines = tempfile::tempdir().unwrap();
    let ca_pem = ca.pem();
    let mut envs = tls_env(&cert, &key);
    envs.push(("WEIR_ADMIN_TLS_CLIENT_CA", ca_pem.to_str().unwrap()));
    let w = start(pipelines.path(), &envs);
    let client = Some((client_cert.as_path(), client_key.as_path()));
    wait_https(&w, &ca.pem(), client);
    let url = format!("https://{}/pipelines", w.admin);

    let ok = https(&url, &ca.pem(), client);
    assert_eq!(ok.status, Some(200), "{ok:?}");
    let none = https(&url, &ca.pem(), None);
    assert_eq!(none.status, None, "without a client certificate: {none:?}");
    let wrong = https(&url, &ca.pem(), Some((&stranger_cert, &stranger_key)));
    assert_eq!(wrong.status, None, "with a certificate another CA signed: {wrong:?}");
    assert!(w.logs().contains("TLS handshake failed"), "{}", w.logs());

    // The CLI presents its certificate when given one, and says what failed when not.
    envs.push(("WEIR_ADMIN_CA", ca_pem.to_str().unwrap()));
    let out = weir(&["status", "--admin", &w.admin], &envs);
    assert!(!out.status.success(), "weir status without a client certificate succeeded");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin API"), "{}", String::from_utf8_lossy(&out.stderr));
    envs.push(("WEIR_ADMIN_CLIENT_CERT", client_cert.to_str().unwrap()));
    envs.push(("WEIR_ADMIN_CLIENT_KEY", client_key.to_str().unwrap()));
    let out = weir(&["status", "--admin", &w.admin], &envs);
    assert!(out.status.success(), "weir status with a client certificate: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_wrong_certificate_file_stops_the_start_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("missing.pem"), dir.path().join("key.pem"));
    std::fs::write(&key, "not a key\n").unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let out = weir(&["run", "--pipelines", dir.path().to_str().unwrap(), "--admin", &admin, "--once"], &tls_env(&cert, &key));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin_tls") && err.contains("missing.pem"), "{err}");
}

/// POSTs one event over HTTPS with curl; the status, or None when the request failed.
fn post_https(url: &str, ca: &Path, client: Option<(&Path, &Path)>, body: &str) -> Option<u16> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", ca.to_str().unwrap()]);
    cmd.args(["-H", "Content-Type: application/json", "--data-binary", body, url]);
    if let Some((cert, key)) = client {
        cmd.args(["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()]);
    }
    let out = cmd.output().expect("curl is installed");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().parse().ok()).flatten()
}

#[test]
fn the_http_source_serves_https_through_reloads_without_a_refused_request() {
    let ca = Ca::new("weir-test-ca");
    let (cert, key) = ca.issue("server", "ingest", "serverAuth");
    let (client_cert, client_key) = ca.issue("client", "producer", "clientAuth");
    let scene = Scene::new();
    let out = scene.path("events.jsonl");
    let pipeline = |version: u32, client_ca: bool| {
        let client_ca = if client_ca { format!(", client_ca: {}", ca.pem().display()) } else { String::new() };
        format!(
            "source:\n  plugin: http\n  config:\n    listen: \"127.0.0.1:@PORT@\"\n    tls: {{cert: {}, key: {}{client_ca}}}\ntransforms:\n  - plugin: enrich\n    config: {{set: {{version: {version}}}}}\nsinks:\n  - plugin: file\n    config: {{path: {}}}\n",
            cert.display(),
            key.display(),
            out.display()
        )
    };
    let file = scene.pipeline("ingest", &pipeline(0, false));
    let weir = scene.start(&["--no-watch"], &[]);
    let url = format!("https://127.0.0.1:{}/produce", scene.port);
    wait_for("the source over TLS", Duration::from_secs(20), || post_https(&url, &ca.pem(), None, r#"{"id":-1}"#) == Some(200));
    let seen = https(&format!("https://127.0.0.1:{}/health", scene.port), &ca.pem(), None);
    assert_eq!((seen.status, seen.subject.as_deref()), (Some(200), Some("CN=ingest")), "{seen:?}");
    // Plain HTTP on the same port gets no answer.
    assert_ne!(curl_status_plain(&scene.url("/health")), "200");

    // Posting one event after the other while the pipeline is replaced three times.
    let stop = Arc::new(AtomicBool::new(false));
    let statuses: Arc<Mutex<Vec<(u64, Option<u16>)>>> = Arc::default();
    let load = {
        let (stop, statuses, url, ca) = (stop.clone(), statuses.clone(), url.clone(), ca.pem());
        std::thread::spawn(move || {
            let mut id = 0u64;
            while !stop.load(Relaxed) {
                let status = post_https(&url, &ca, None, &format!(r#"{{"id":{id}}}"#));
                statuses.lock().unwrap().push((id, status));
                id += 1;
            }
        })
    };
    for version in 1..=3 {
        let before = statuses.lock().unwrap().len();
        wait_for("requests before the reload", Duration::from_secs(20), || statuses.lock().unwrap().len() >= before + 5);
        std::fs::write(&file, pipeline(version, false).replace("@PORT@", &scene.port.to_string())).unwrap();
        let r = curl("POST", &weir.url("/reload"), None, None);
        assert_eq!(r.json()["replaced"], serde_json::json!(["ingest"]), "{r:?}");
    }
    let before = statuses.lock().unwrap().len();
    wait_for("requests after the reloads", Duration::from_secs(20), || statuses.lock().unwrap().len() >= before + 5);
    stop.store(true, Relaxed);
    load.join().unwrap();
    let statuses = statuses.lock().unwrap().clone();
    let failed: Vec<_> = statuses.iter().filter(|(_, s)| *s != Some(200)).collect();
    assert!(failed.is_empty(), "{} of {} requests failed across the reloads: {failed:?}", failed.len(), statuses.len());
    let written: Vec<serde_json::Value> = json_lines(&out);
    for (id, _) in &statuses {
        assert_eq!(written.iter().filter(|r| r["id"] == *id).count(), 1, "event {id} written once");
    }
    assert!(written.iter().any(|r| r["version"] == 3), "the last version took events");

    // Mutual TLS: only clients with a certificate the CA signed may post.
    std::fs::write(&file, pipeline(4, true).replace("@PORT@", &scene.port.to_string())).unwrap();
    let r = curl("POST", &weir.url("/reload"), None, None);
    assert_eq!(r.json()["replaced"], serde_json::json!(["ingest"]), "{r:?}");
    let client = Some((client_cert.as_path(), client_key.as_path()));
    wait_for("the source to ask for client certificates", Duration::from_secs(20), || {
        post_https(&url, &ca.pem(), None, r#"{"id":-2}"#).is_none()
    });
    assert_eq!(post_https(&url, &ca.pem(), client, r#"{"id":-3}"#), Some(200));
}

#[test]
fn an_http_source_with_a_wrong_certificate_file_does_not_start_and_says_which() {
    let scene = Scene::new();
    scene.pipeline("ingest", "source:\n  plugin: http\n  config: {listen: \"127.0.0.1:@PORT@\", tls: {cert: @DIR@/absent.pem, key: @DIR@/absent.key}}\nsinks:\n  - plugin: discard\n");
    let out = weir(&["validate", scene.pipelines.to_str().unwrap()], &[]);
    assert!(out.status.success(), "the files are read when the source starts, not by validate: {}", String::from_utf8_lossy(&out.stderr));
    let admin = format!("127.0.0.1:{}", free_port());
    let out = weir(&["run", "--pipelines", scene.pipelines.to_str().unwrap(), "--admin", &admin, "--once"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls: cannot read") && err.contains("absent.pem"), "{err}");
}

fn curl_status_plain(url: &str) -> String {
    let out = Command::new("curl").args(["-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", url]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A WebSocket client on Node's `ws` package (installed with socket.io-client), trusting
/// the CA file given: prints `{"on":"open"}`, then each frame's text, one per line.
const WSS_CLIENT: &str = r#"
const WebSocket = require("ws");
const fs = require("fs");
const ws = new WebSocket(process.argv[1], { ca: fs.readFileSync(process.argv[2]) });
ws.on("open", () => console.log(JSON.stringify({ on: "open" })));
ws.on("message", (m) => console.log(m.toString()));
ws.on("error", (e) => { console.log(JSON.stringify({ on: "error", message: String(e.message) })); process.exit(1); });
"#;

#[test]
fn dashboards_get_events_over_wss_from_the_socketio_and_websocket_sinks() {
    let ca = Ca::new("weir-test-ca");
    let (cert, key) = ca.issue("server", "dashboards", "serverAuth");
    let (http, sio, ws) = (free_port(), free_port(), free_port());
    let tls = format!("tls: {{cert: {}, key: {}}}", cert.display(), key.display());
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(
        dir.path(),
        "relay",
        &format!(
            "source: {{plugin: http, config: {{listen: \"127.0.0.1:{http}\"}}}}\nsinks:\n  - plugin: socketio\n    config: {{listen: \"127.0.0.1:{sio}\", {tls}}}\n  - plugin: websocket\n    config: {{listen: \"127.0.0.1:{ws}\", {tls}}}\n"
        ),
    );
    let _weir = Weir::start(dir.path(), &["--no-watch"], &[]);
    let pem = std::fs::read_to_string(ca.pem()).unwrap();
    let sio_url = format!("https://127.0.0.1:{sio}");
    let over_ws = socketio::Client::connect(&sio_url, serde_json::json!({"transports": ["websocket"], "ca": pem}));
    let over_polling = socketio::Client::connect(&sio_url, serde_json::json!({"transports": ["polling"], "ca": pem}));
    assert_eq!(over_polling.connected()["transport"], "polling");
    // A client that does not trust the CA gets no answer from either server.
    let other = Ca::new("other-ca");
    assert_eq!(https(&format!("{sio_url}/socket.io/?EIO=4&transport=polling"), &other.pem(), None).status, None);
    assert_eq!(https(&format!("https://127.0.0.1:{ws}/"), &other.pem(), None).status, None);

    let mut node = Command::new("node")
        .args(["-e", WSS_CLIENT, &format!("wss://127.0.0.1:{ws}/"), ca.pem().to_str().unwrap()])
        .env("NODE_PATH", socketio::node_modules())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node is installed (scripts/deps.sh)");
    let mut frames = BufReader::new(node.stdout.take().unwrap()).lines();
    assert_eq!(frames.next().unwrap().unwrap(), r#"{"on":"open"}"#);

    let events: Vec<String> = (0..5).map(|i| format!(r#"{{"eventType":"like_clicked","userId":"u{i}","seq":{i}}}"#)).collect();
    let r = post_json(&format!("http://127.0.0.1:{http}/produce"), &format!("[{}]", events.join(",")));
    assert_eq!(r.status, 200, "{r:?}");
    for c in [&over_ws, &over_polling] {
        c.wait_count("new_event", 5, Duration::from_secs(15));
        let seqs: Vec<u64> = c.data("new_event").iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, vec![0, 1, 2, 3, 4]);
    }
    let got: Vec<serde_json::Value> = (0..5).map(|_| serde_json::from_str(&frames.next().unwrap().unwrap()).unwrap()).collect();
    assert_eq!(got.iter().map(|e| e["seq"].as_u64().unwrap()).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    let _ = node.kill();
    let _ = node.wait();
}
