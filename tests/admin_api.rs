//! The admin API and the WebSocket sink cannot be steered or read by a web page: Host,
//! Origin, Content-Type and token checks against the built `weir`, with curl as the client;
//! the WebSocket sink's Origin allow-list with a real WebSocket client; and masking that
//! hides secrets but not addresses.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// curl with any extra arguments (headers, `-F`, `--data-binary`).
fn curl_with(method: &str, url: &str, args: &[&str]) -> Reply {
    let out = Command::new("curl")
        .args(["-sS", "-D", "-", "-X", method, url, "--max-time", "20"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("curl is installed");
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Reply { status, headers: head.to_owned(), body: body.to_owned() }
}

/// A pipeline `ingest`: http on the scene's port into a file.
fn ingest(scene: &Scene) {
    scene.pipeline(
        "ingest",
        "source: {plugin: http, config: {listen: \"127.0.0.1:@PORT@\"}}\nsinks: [{plugin: file, config: {path: \"@DIR@/events.jsonl\"}}]\n",
    );
}

fn paused(weir: &Weir, token: Option<&str>) -> bool {
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let args: Vec<&str> = auth.iter().flat_map(|a| ["-H", a.as_str()]).collect();
    let r = curl_with("GET", &weir.url("/pipelines/ingest"), &args);
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["paused"].as_bool().expect("paused is reported")
}

// Observed before: `POST /pipelines/ingest/pause` with `Origin: http://evil.example`,
// `Content-Type: text/plain` or a form body answered 200 and paused the pipeline.
#[test]
fn cross_origin_and_non_json_posts_are_refused_and_change_nothing() {
    let scene = Scene::new();
    ingest(&scene);
    let weir = scene.start(&[], &[("WEIR_ADMIN_ALLOWED_ORIGINS", "[https://ops.example.com]")]);
    let pause = weir.url("/pipelines/ingest/pause");

    let r = curl_with("POST", &pause, &["-H", "Origin: http://evil.example"]);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.json()["error"].as_str().unwrap().contains("admin_allowed_origins"), "says what to do: {r:?}");
    let r = curl_with("POST", &pause, &["-H", "Sec-Fetch-Site: cross-site"]);
    assert_eq!(r.status, 403, "{r:?}");
    for (what, args) in [
        ("text/plain", vec!["-H", "Content-Type: text/plain", "--data-binary", "{}"]),
        ("form", vec!["--data-binary", "paused=true"]),
        ("empty form", vec!["-H", "Content-Type: application/x-www-form-urlencoded", "--data-binary", ""]),
        ("multipart", vec!["-F", "paused=true"]),
        ("a body without Content-Type", vec!["-H", "Content-Type:", "--data-binary", "x"]),
    ] {
        let r = curl_with("POST", &pause, &args);
        assert_eq!(r.status, 415, "{what}: {r:?}");
        assert!(r.json()["error"].as_str().unwrap().contains("application/json"), "{what}: {r:?}");
        // The body was not read: the connection is closed, not left to a keep-alive client.
        assert_eq!(r.headers.to_ascii_lowercase().contains("connection: close"), what != "empty form", "{what}: {r:?}");
    }
    let r = curl_with("POST", &weir.url("/reload"), &["-H", "Content-Type: text/plain", "--data-binary", "x"]);
    assert_eq!(r.status, 415, "{r:?}");
    assert!(!paused(&weir, None), "a refused request paused the pipeline");

    // A program (no Origin), the API's own origin, an allowed origin: served.
    let r = curl_with("POST", &pause, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(paused(&weir, None));
    let own = format!("Origin: http://{}", weir.admin);
    let r = curl_with("POST", &weir.url("/pipelines/ingest/resume"), &["-H", &own, "-H", "Content-Type: application/json", "-d", "{}"]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!paused(&weir, None));
    let r = curl_with("POST", &pause, &["-H", "Origin: https://ops.example.com", "-H", "Content-Type: application/json; charset=utf-8"]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.headers.to_ascii_lowercase().contains("access-control-allow-origin: https://ops.example.com"), "{r:?}");
    assert!(paused(&weir, None));
    // Its browser's preflight is answered without a token or body.
    let r = curl_with(
        "OPTIONS",
        &pause,
        &[
            "-H",
            "Origin: https://ops.example.com",
            "-H",
            "Access-Control-Request-Method: POST",
            "-H",
            "Access-Control-Request-Headers: authorization, content-type",
        ],
    );
    assert_eq!(r.status, 204, "{r:?}");
    assert!(r.headers.to_ascii_lowercase().contains("access-control-allow-headers: authorization, content-type"), "{r:?}");
}

// Observed before: any `Host` header was served, so a DNS-rebinding page (evil.example
// resolving to 127.0.0.1) could read `/pipelines` and POST `/reload`.
#[test]
fn a_host_that_is_not_loopback_an_address_or_configured_is_refused_on_get_too() {
    let scene = Scene::new();
    ingest(&scene);
    let weir = scene.start(&[], &[("WEIR_ADMIN_HOSTS", "[weir.internal]")]);
    let port = weir.admin.rsplit_once(':').unwrap().1.to_owned();
    let evil = format!("Host: evil.example:{port}");
    for (method, path) in
        [("GET", "/pipelines"), ("GET", "/pipelines/ingest"), ("GET", "/health"), ("GET", "/metrics"), ("POST", "/reload")]
    {
        let r = curl_with(method, &weir.url(path), &["-H", &evil]);
        assert_eq!(r.status, 421, "{method} {path}: {r:?}");
        assert!(!r.body.contains("ingest"), "{method} {path} leaked the pipeline: {r:?}");
        assert!(r.json()["error"].as_str().unwrap().contains("admin_hosts"), "says what to do: {r:?}");
    }
    let r = curl_with("POST", &weir.url("/pipelines/ingest/pause"), &["-H", "Host: 127.0.0.1.evil.example"]);
    assert_eq!(r.status, 421, "{r:?}");
    assert!(!paused(&weir, None));
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("weir.internal:{port}"), "weir.internal".to_owned()] {
        let r = curl_with("GET", &weir.url("/pipelines"), &["-H", &format!("Host: {host}")]);
        assert_eq!(r.status, 200, "{host}: {r:?}");
        assert!(r.body.contains("ingest"), "{r:?}");
    }
}

// Observed before: no credential was needed for anything.
#[test]
fn a_token_when_set_is_required_and_never_shows() {
    let token = "adm-tok-3f9a8c1e5b7d";
    let scene = Scene::new();
    ingest(&scene);
    let weir = scene.start(&[], &[("WEIR_ADMIN_TOKEN", token)]);
    let bearer = format!("Authorization: Bearer {token}");
    let mut shown = Vec::new();
    for (method, path) in
        [("GET", "/pipelines"), ("GET", "/pipelines/ingest"), ("GET", "/metrics"), ("POST", "/pipelines/ingest/pause"), ("POST", "/reload")]
    {
        let r = curl_with(method, &weir.url(path), &[]);
        assert_eq!(r.status, 401, "{method} {path} without the token: {r:?}");
        assert!(r.headers.contains("WWW-Authenticate: Bearer") || r.headers.contains("www-authenticate: Bearer"), "{r:?}");
        assert!(r.json()["error"].as_str().unwrap().contains("Authorization: Bearer"), "says how: {r:?}");
        let wrong = curl_with(method, &weir.url(path), &["-H", "Authorization: Bearer adm-tok-3f9a8c1e5b7e"]);
        assert_eq!(wrong.status, 401, "{method} {path} with a wrong token: {wrong:?}");
        assert!(wrong.headers.contains("invalid_token"), "{wrong:?}");
        shown.extend([format!("{r:?}"), format!("{wrong:?}")]);
    }
    assert!(!paused(&weir, Some(token)), "an unauthenticated pause went through");
    // Probes keep working: the status, nothing more.
    let r = curl_with("GET", &weir.url("/health"), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["status"], "healthy");
    assert!(r.json().get("pipelines").is_none() && !r.body.contains("ingest"), "/health without the token shows pipelines: {r:?}");
    let r = curl_with("GET", &weir.url("/health"), &["-H", &bearer]);
    assert_eq!(r.json()["pipelines"]["ingest"], "running", "{r:?}");
    shown.push(format!("{r:?}"));
    for (method, path) in [("GET", "/pipelines"), ("GET", "/metrics"), ("POST", "/pipelines/ingest/pause"), ("POST", "/reload")] {
        let r = curl_with(method, &weir.url(path), &["-H", &bearer]);
        assert_eq!(r.status, 200, "{method} {path} with the token: {r:?}");
        shown.push(format!("{r:?}"));
    }
    assert!(paused(&weir, Some(token)));
    shown.push(weir.logs());
    for s in shown {
        assert!(!s.contains(token), "the token showed: {s}");
    }
}

/// `weir run --admin ADDR` with the given environment, stopped when dropped.
struct Exposed(std::process::Child);

impl Drop for Exposed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// Observed before: `--admin 0.0.0.0:PORT` started with no warning, open to the network.
#[test]
fn beyond_loopback_the_admin_api_needs_a_token_to_start() {
    let scene = Scene::new();
    ingest(&scene);
    let port = free_port();
    let any = format!("0.0.0.0:{port}");
    let pipelines = scene.pipelines.to_str().unwrap();
    let out = weir(&["run", "--pipelines", pipelines, "--admin", &any], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("0.0.0.0") && err.contains("not a loopback address"), "{err}");
    assert!(
        err.contains("WEIR_ADMIN_TOKEN") && err.contains("admin_token_file") && err.contains("--admin 127.0.0.1:8083"),
        "says how to fix it: {err}"
    );

    let token_file = scene.path("admin.token");
    std::fs::write(&token_file, "\n").unwrap();
    let out = weir(&["run", "--pipelines", pipelines, "--admin", &any], &[("WEIR_ADMIN_TOKEN_FILE", token_file.to_str().unwrap())]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is empty"), "an empty token is refused: {err}");

    std::fs::write(&token_file, "file-token-77c2e0\n").unwrap();
    let log = scene.path("weir.log");
    let child = Command::new(bin_dir().join("weir"))
        .args(["run", "--pipelines", pipelines, "--admin", &any])
        .env("WEIR_ADMIN_TOKEN_FILE", &token_file)
        .env("NO_COLOR", "1")
        .current_dir(repo())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut run = Exposed(child);
    let url = format!("http://127.0.0.1:{port}/pipelines");
    wait_for("the admin API on 0.0.0.0", Duration::from_secs(20), || {
        assert!(run.0.try_wait().unwrap().is_none(), "weir exited:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert_eq!(curl_with("GET", &url, &[]).status, 401);
    // The trailing newline of the file is not part of the token.
    let r = curl_with("GET", &url, &["-H", "Authorization: Bearer file-token-77c2e0"]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!std::fs::read_to_string(&log).unwrap().contains("file-token-77c2e0"), "the token is in the log");
    drop(run);
}

async fn next_text(ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin)) -> String {
    loop {
        let msg =
            tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("a frame within 10 s").expect("open").expect("frame");
        if let Message::Text(t) = msg {
            return t.as_str().to_owned();
        }
    }
}

// Observed before: any web page could open the event stream (user ids, client IPs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_sink_refuses_origins_it_does_not_list() {
    let scene = Scene::new();
    let ws = format!("127.0.0.1:{}", free_port());
    scene.pipeline(
        "live",
        &format!("source: {{plugin: http, config: {{listen: \"127.0.0.1:@PORT@\"}}}}\nsinks:\n  - plugin: websocket\n    config: {{listen: \"{ws}\", allowed_origins: [\"https://dash.example.com\"]}}\n"),
    );
    let weir = tokio::task::block_in_place(|| scene.start(&[], &[]));
    let with_origin = |origin: &str| {
        let mut req = format!("ws://{ws}/").into_client_request().unwrap();
        req.headers_mut().insert("Origin", origin.parse().unwrap());
        req
    };
    for origin in ["http://evil.example", "null", "https://dash.example.com.evil.example"] {
        match tokio_tungstenite::connect_async(with_origin(origin)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403, "{origin}"),
            other => panic!("{origin}: expected 403, got {:?}", other.map(|(_, r)| r.status())),
        }
    }
    let (mut dash, _) = tokio_tungstenite::connect_async(with_origin("https://dash.example.com")).await.expect("listed origin");
    let (mut program, _) = tokio_tungstenite::connect_async(format!("ws://{ws}/")).await.expect("no Origin: a program");
    let health = weir.url("/health");
    tokio::task::block_in_place(|| {
        wait_for("two clients", Duration::from_secs(10), || curl("GET", &health, None, None).json()["connected_clients"] == 2)
    });
    let r = tokio::task::block_in_place(|| post_json(&scene.url("/produce"), r#"{"eventType":"x","userId":"u1"}"#));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(next_text(&mut dash).await.contains("\"u1\""));
    assert!(next_text(&mut program).await.contains("\"u1\""));
    let refused = tokio::task::block_in_place(|| {
        weir.metric("weir_plugin_websocket_origins_refused_total{pipeline=\"live\",stage=\"websocket\",plugin=\"websocket\"}")
    });
    assert_eq!(refused, Some(3.0), "{}", weir.metrics());
}

// Observed before: a `listen` address from `${VAR}` showed as `***` in errors.
#[test]
fn addresses_from_variables_show_in_errors_passwords_do_not() {
    let scene = Scene::new();
    let listen_from = |var: &str| {
        scene.pipeline(
            "p",
            &format!("source:\n  plugin: http\n  config:\n    listen: \"${{{var}}}\"\nsinks:\n  - plugin: file\n    config: {{path: x}}\n"),
        )
    };
    let path = listen_from("P2_LISTEN");
    let out = weir(&["validate", path.to_str().unwrap()], &[("P2_LISTEN", "no-port-here")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen \"no-port-here\" must be host:port"), "the address is hidden: {err}");
    // The same mistake with a value from a variable named as a secret is not echoed.
    let path = listen_from("P2_DB_PASSWORD");
    let out = weir(&["validate", path.to_str().unwrap()], &[("P2_DB_PASSWORD", "hunter2-pw-secret")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen \"***\" must be host:port") && !err.contains("hunter2-pw-secret"), "the password showed: {err}");

    // Running: a taken port from `${VAR}` is named in the error.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    ingest(&scene);
    std::fs::remove_file(&path).unwrap();
    scene.pipeline(
        "busy",
        "source: {plugin: http, config: {listen: \"${P2_BUSY_LISTEN}\"}}\nsinks: [{plugin: file, config: {path: \"-\"}}]\n",
    );
    let weir = scene.start(&[], &[("P2_BUSY_LISTEN", &taken_addr)]);
    let report = weir.get_json("/pipelines");
    let busy = report.as_array().unwrap().iter().find(|p| p["name"] == "busy").expect("the failed pipeline is listed");
    assert_eq!(busy["state"], "failed", "{busy}");
    let error = busy["error"].as_str().unwrap();
    assert!(error.contains(&format!("cannot listen on {taken_addr}")), "the address is hidden: {error}");
    assert!(weir.logs().contains(&format!("cannot listen on {taken_addr}")), "{}", weir.logs());
    drop(taken);
}
