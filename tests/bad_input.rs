//! Bad input gets a status and a message that says what is wrong: over HTTP from the
//! `http` source, and from `weir validate` for pipeline files.

mod common;

use common::*;

fn start_ingest() -> (Weir, String, Scene) {
    let scene = Scene::new();
    let schema = repo().join("schemas/neo-event.schema.json");
    scene.pipeline(
        "ingest",
        &format!(
            "source:\n  plugin: http\n  config:\n    listen: 127.0.0.1:@PORT@\n    max_body_bytes: 2000\n    max_events: 3\ntransforms:\n  - plugin: validate\n    config:\n      schema: {}\nsinks:\n  - plugin: file\n    config:\n      path: @DIR@/out.jsonl\n",
            schema.display()
        ),
    );
    let weir = scene.start(&[], &[]);
    (weir, scene.url("/produce"), scene)
}

#[test]
fn http_source_answers_each_kind_of_bad_request() {
    let (_weir, url, _scene) = start_ingest();

    let r = post_json(&url, "{\"eventType\": \"a\",\n \"userId\": }");
    assert_eq!(r.status, 400, "{r:?}");
    let body = r.json();
    assert!(body["error"].as_str().unwrap().starts_with("malformed JSON"), "{body}");
    assert_eq!((body["line"].as_u64(), body["column"].as_u64()), (Some(2), Some(12)), "{body}");

    let r = curl("POST", &url, Some("text/plain"), Some(br#"{"eventType":"a","userId":"u"}"#));
    assert_eq!(r.status, 415, "{r:?}");
    assert!(r.json()["error"].as_str().unwrap().contains("application/json"));

    let big = format!(r#"{{"eventType":"a","userId":"u","pad":"{}"}}"#, "x".repeat(3000));
    let r = post_json(&url, &big);
    assert_eq!(r.status, 413, "{r:?}");
    assert!(r.json()["error"].as_str().unwrap().contains("larger than the 2000 allowed"));

    let r = post_json(
        &url,
        r#"[{"eventType":"a","userId":"u"},{"eventType":"a","userId":"u"},{"eventType":"a","userId":"u"},{"eventType":"a","userId":"u"}]"#,
    );
    assert_eq!(r.status, 413, "{r:?}");
    assert!(r.json()["error"].as_str().unwrap().contains("holds 4 events; the most one request may carry is 3"), "{r:?}");

    let r = post_json(&url, r#"{"eventType":"a","userId":42}"#);
    assert_eq!(r.status, 400, "{r:?}");
    let error = r.json()["error"].as_str().unwrap().to_owned();
    assert!(error.starts_with("validate: /userId: 42 is not of type \"string\""), "{error}");

    let r = post_json(&url, "[1]");
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("event 0 is not a JSON object"));

    let r = post_json(&url, r#"{"eventType":"a","userId":"u"}"#);
    assert_eq!(r.status, 200, "good events still pass: {r:?}");
}

fn validate(yaml: &str, envs: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_pipeline(dir.path(), "p", yaml);
    let out = weir(&["validate", path.to_str().unwrap()], envs);
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
            .replace(&format!("{}/", dir.path().display()), ""),
    )
}

#[test]
fn validate_reports_yaml_syntax_errors_with_line_and_column() {
    let (ok, out) = validate("source:\n  plugin: http\n  config: {listen: [1,\nsinks: []\n", &[]);
    assert!(!ok);
    assert!(out.contains("error: p.yaml:5:1: did not find expected ',' or ']', while parsing a flow sequence"), "{out}");
}

#[test]
fn validate_lists_known_plugins_for_an_unknown_one() {
    let (ok, out) = validate("source:\n  plugin: http\nsinks:\n  - plugin: kafkaa\n", &[]);
    assert!(!ok);
    assert!(out.contains("p.yaml:4:5: sinks[0].plugin: unknown sink plugin \"kafkaa\"; sinks found: "), "{out}");
    assert!(out.contains("websocket"), "{out}");
}

#[test]
fn validate_names_an_unknown_config_field_and_its_position() {
    let (ok, out) = validate(
        "source:\n  plugin: http\n  config:\n    listen: 127.0.0.1:9\n    max_event: 5\nsinks:\n  - plugin: file\n    config: {path: x}\n",
        &[],
    );
    assert!(!ok);
    assert!(out.contains("p.yaml:5:5: source.config.max_event: unknown field `max_event`; http accepts: "), "{out}");
    assert!(out.contains("`max_events`"), "{out}");
}

#[test]
fn validate_checks_types_without_echoing_secrets() {
    let (ok, out) = validate(
        "source:\n  plugin: http\n  config:\n    max_events: ${TOKEN}\nsinks:\n  - plugin: file\n    config: {path: x}\n",
        &[("TOKEN", "s3cr3t-token")],
    );
    assert!(!ok);
    assert!(out.contains("p.yaml:4:5: source.config.max_events:"), "{out}");
    assert!(!out.contains("s3cr3t-token"), "the secret leaked: {out}");
}

#[test]
fn validate_accepts_the_default_pipeline_and_does_no_io() {
    // Port 1 is privileged: were validate to bind it, it would fail.
    let (ok, out) = validate(
        "source:\n  plugin: http\n  config: {listen: \"127.0.0.1:1\"}\ntransforms:\n  - plugin: validate\n    config: {schema: /nonexistent.json}\nsinks:\n  - plugin: websocket\n    config: {listen: \"127.0.0.1:1\"}\n",
        &[],
    );
    assert!(ok, "{out}");
    let out = weir(&["validate"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: pipelines/default.yaml"));
}

#[test]
fn validate_as_json_gives_every_problem_with_file_line_field_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write_pipeline(
        dir.path(),
        "bad",
        "source:\n  plugin: http\n  config: {max_event: 5, max_body_bytes: ${TOKEN}}\nsinks:\n  - plugin: kafkaa\n",
    );
    let good = write_pipeline(dir.path(), "good", "source: {plugin: http}\nsinks: [{plugin: discard}]\n");
    let unset =
        write_pipeline(dir.path(), "unset", "source: {plugin: http, config: {listen: \"${HOST}:${PORT}\"}}\nsinks: [{plugin: discard}]\n");
    let out = weir(&["validate", "--format", "json", dir.path().to_str().unwrap()], &[("TOKEN", "s3cr3t-token")]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("s3cr3t-token"), "the secret leaked: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert_eq!(v["valid"], false);
    let file = |p: &std::path::Path| v["files"].as_array().unwrap().iter().find(|f| f["file"] == p.to_str().unwrap()).cloned().unwrap();
    assert_eq!((file(&good)["valid"].as_bool(), file(&good)["pipeline"].as_str()), (Some(true), Some("good")));
    let errors = file(&bad)["errors"].as_array().unwrap().clone();
    let at = |field: &str| errors.iter().find(|e| e["field"] == field).unwrap_or_else(|| panic!("nothing at {field}: {errors:?}")).clone();
    assert_eq!(
        (at("source.config.max_event")["line"].as_u64(), at("source.config.max_event")["pointer"].as_str()),
        (Some(3), Some("/source/config/max_event"))
    );
    assert_eq!(at("sinks[0].plugin")["line"], 5);
    assert!(at("sinks[0].plugin")["message"].as_str().unwrap().contains("unknown sink plugin \"kafkaa\""));
    let unset = file(&unset)["errors"][0].clone();
    assert_eq!((unset["line"].as_u64(), unset["column"].as_u64()), (Some(1), Some(42)), "{unset}");
    assert!(unset["message"].as_str().unwrap().contains("HOST (line 1, column 42), PORT (line 1, column 50)"), "both at once: {unset}");
}

#[test]
fn a_value_in_a_field_its_plugin_marks_secret_never_shows_in_the_log() {
    // `handshake` is marked `writeOnly` in the test-slow sink's schema; neither its name
    // nor its variable's says secret, and one of the two values is written out.
    let scene = Scene::new();
    scene.pipeline(
        "careless",
        "source:\n  plugin: http\n  config: {listen: \"127.0.0.1:@PORT@\"}\nsinks:\n  - plugin: test-slow\n    config: {delay_ms: 1, handshake: hs-literal-4242}\n  - plugin: test-slow\n    name: other\n    config: {delay_ms: 1, handshake: \"${PLAIN_SETTING}\"}\n",
    );
    let weir = scene.start(&["--no-watch"], &[("PLAIN_SETTING", "from-env-7777")]);
    wait_for("both sinks to log", std::time::Duration::from_secs(10), || {
        weir.logs().matches("careless: connecting with handshake").count() >= 2
    });
    let logs = weir.logs();
    assert!(!logs.contains("hs-literal-4242") && !logs.contains("from-env-7777"), "a secret leaked: {logs}");
    assert_eq!(logs.matches("connecting with handshake ***").count(), 2, "{logs}");
}
