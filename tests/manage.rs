//! Pipelines managed through the admin API, as Kafka Connect users manage connectors: a host
//! started with no pipeline waits for one; `PUT /pipelines/{name}` creates and replaces
//! (make-before-break, under load, nothing lost or doubled), `DELETE` drains and removes,
//! `POST /pipelines/validate` lists every error with its field and position, `If-Match`
//! keeps concurrent writers apart, `GET /plugins` describes what is installed; and the CLI
//! verbs `weir apply`, `weir status`, `weir delete` do the same from a terminal.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

/// Pipeline `ingest` at `version`: http on `port` → enrich (`version`) → `out`.
fn ingest(port: u16, out: &std::path::Path, version: u32) -> String {
    format!(
        "name: ingest\nsource: {{plugin: http, config: {{listen: \"127.0.0.1:{port}\"}}}}\ntransforms:\n  - plugin: enrich\n    config: {{set: {{version: {version}}}}}\nsinks:\n  - plugin: file\n    config: {{path: {}}}\n",
        out.display()
    )
}

fn put(weir: &Weir, name: &str, content_type: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
    curl_with("PUT", &weir.url(&format!("/pipelines/{name}")), headers, Some(content_type), Some(body.as_bytes()))
}

/// The `ETag` header of a reply.
fn etag(r: &Reply) -> String {
    r.headers
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("etag")).map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_else(|| panic!("no ETag: {r:?}"))
}

#[test]
fn a_host_with_no_pipeline_waits_and_pipelines_come_and_go_through_the_api_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir(&pipelines).unwrap();
    let out = dir.path().join("out.jsonl");
    let port = free_port();
    let weir = Weir::start(&pipelines, &["--no-watch"], &[]);
    assert!(weir.get_json("/pipelines").as_array().unwrap().is_empty());
    assert!(weir.logs().contains("No pipeline files yet"), "{}", weir.logs());

    let created = put(&weir, "ingest", "application/yaml", &ingest(port, &out, 1), &[]);
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.json()["result"], "created");
    assert_eq!(created.json()["pipeline"]["state"], "running");
    let file = pipelines.join("ingest.yaml");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), ingest(port, &out, 1), "written into the directory as sent");
    let mut tag = etag(&created);
    assert_eq!(etag(&curl("GET", &weir.url("/pipelines/ingest"), None, None)), tag, "GET shows the same ETag");

    let load = Load::start(&format!("http://127.0.0.1:{port}/produce"));
    wait_for("events of version 1", Duration::from_secs(10), || json_lines(&out).len() >= 20);
    let mut last = (String::new(), String::new());
    for version in 2..=6u32 {
        // Every other version as JSON (the same pipeline, spelled as JSON).
        let yaml = ingest(port, &out, version);
        let (ct, body) = if version % 2 == 0 {
            let v: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
            ("application/json", v.to_string())
        } else {
            ("application/yaml", yaml)
        };
        last = (ct.to_owned(), body.clone());
        let r = put(&weir, "ingest", ct, &body, &[("If-Match", &tag)]);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["result"], "replaced");
        tag = etag(&r);
        wait_for("the new version's events", Duration::from_secs(5), || json_lines(&out).last().is_some_and(|l| l["version"] == version));
    }
    let again = put(&weir, "ingest", &last.0, &last.1, &[]);
    assert_eq!((again.status, again.json()["result"].as_str()), (200, Some("unchanged")), "{again:?}");
    let (accepted, failures) = load.finish();
    assert!(failures.is_empty(), "failed requests: {failures:?}");

    let deleted = curl_with("DELETE", &weir.url("/pipelines/ingest"), &[("If-Match", &etag(&again))], None, None);
    assert_eq!(deleted.status, 200, "{deleted:?}");
    assert!(!file.exists(), "the file is removed");
    assert!(weir.get_json("/pipelines").as_array().unwrap().is_empty());
    assert_eq!(curl("DELETE", &weir.url("/pipelines/ingest"), None, None).status, 404);
    let written: Vec<String> = json_lines(&out).iter().map(|l| l["id"].as_str().unwrap().to_owned()).collect();
    let unique: HashSet<&String> = written.iter().collect();
    assert_eq!(unique.len(), written.len(), "an event was written twice");
    assert_eq!(written.len(), accepted.len(), "every accepted event is written, once, the last before DELETE answered");
}

#[test]
fn invalid_pipelines_get_every_error_with_its_field_and_position_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let weir = Weir::start(dir.path(), &["--no-watch"], &[]);
    let body = "source: {plugin: http}\ntransforms:\n  - plugin: enrich\n    config: {sett: {}}\nsinks:\n  - plugin: nope\n";
    let v = post_json_like(&weir, "/pipelines/validate", "application/yaml", body);
    assert_eq!(v.status, 200, "{v:?}");
    let v = v.json();
    assert_eq!((v["valid"].as_bool(), v["error_count"].as_u64()), (Some(false), Some(2)), "{v}");
    let errors = v["errors"].as_array().unwrap();
    let by_field = |f: &str| errors.iter().find(|e| e["field"] == f).unwrap_or_else(|| panic!("no error at {f}: {v}"));
    let unknown = by_field("transforms[0].config.sett");
    assert!(unknown["message"].as_str().unwrap().contains("unknown field `sett`"), "{unknown}");
    assert_eq!((unknown["line"].as_u64(), unknown["pointer"].as_str()), (Some(4), Some("/transforms/0/config/sett")));
    let plugin = by_field("sinks[0].plugin");
    assert!(plugin["message"].as_str().unwrap().contains("unknown sink plugin \"nope\""), "{plugin}");
    assert_eq!(plugin["line"].as_u64(), Some(6));
    let ok = post_json_like(&weir, "/pipelines/validate", "application/yaml", "source: {plugin: http}\nsinks: [{plugin: discard}]\n");
    assert_eq!(ok.json()["valid"], true, "{ok:?}");

    let r = put(&weir, "bad", "application/yaml", body, &[]);
    assert_eq!(r.status, 422, "{r:?}");
    assert_eq!(r.json()["errors"].as_array().unwrap().len(), 2, "{r:?}");
    let r = put(&weir, "bad", "application/json", r#"{"source": {"plugin": "http"}, "sinks": [}"#, &[]);
    assert_eq!(r.status, 422, "{r:?}");
    assert_eq!(r.json()["errors"][0]["line"], 1, "a syntax error has its position: {r:?}");
    let r = put(&weir, "bad", "application/yaml", "name: other\nsource: {plugin: http}\nsinks: [{plugin: discard}]\n", &[]);
    assert_eq!((r.status, r.json()["errors"][0]["field"].as_str()), (422, Some("name")), "{r:?}");
    let r = put(&weir, "bad", "text/plain", "source: {plugin: http}\nsinks: [{plugin: discard}]\n", &[]);
    assert_eq!(r.status, 415, "text/plain could come from any web page: {r:?}");
    let r = put(&weir, "..%2Fx", "application/yaml", "source: {plugin: http}\nsinks: [{plugin: discard}]\n", &[]);
    assert_eq!(r.status, 422, "a name with a path in it: {r:?}");
    assert!(r.json()["error"].as_str().unwrap().contains("may only use letters"), "{r:?}");
    let r = put(&weir, "shop.test", "application/yaml", "source: {plugin: http}\nsinks: [{plugin: discard}]\n", &[]);
    assert_eq!(r.status, 422, "a name that would make a test file: {r:?}");
    // Valid, but its source cannot start (the port is taken): nothing changes.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let yaml = format!("source: {{plugin: http, config: {{listen: \"{}\"}}}}\nsinks: [{{plugin: discard}}]\n", taken.local_addr().unwrap());
    let r = put(&weir, "late", "application/yaml", &yaml, &[]);
    assert_eq!(r.status, 422, "{r:?}");
    assert!(r.json()["error"].as_str().unwrap().contains("did not start"), "{r:?}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "no file was left behind: {left:?}");
    assert!(weir.get_json("/pipelines").as_array().unwrap().is_empty());

    // A file put there by hand that does not load runs nothing: PUT may replace it, DELETE
    // removes it.
    std::fs::write(dir.path().join("hand.yaml"), "source: {plugin: http\n").unwrap();
    assert_eq!(curl("POST", &weir.url("/reload"), None, None).status, 422);
    let ok = format!("source: {{plugin: http, config: {{listen: \"127.0.0.1:{}\"}}}}\nsinks: [{{plugin: discard}}]\n", free_port());
    let r = put(&weir, "hand", "application/yaml", &ok, &[]);
    assert_eq!(r.status, 201, "{r:?}");
    std::fs::write(dir.path().join("stray.yaml"), "source: {plugin: nope}\nsinks: [{plugin: discard}]\n").unwrap();
    let r = curl("DELETE", &weir.url("/pipelines/stray"), None, None);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!dir.path().join("stray.yaml").exists());
}

fn post_json_like(weir: &Weir, path: &str, content_type: &str, body: &str) -> Reply {
    curl("POST", &weir.url(path), Some(content_type), Some(body.as_bytes()))
}

#[test]
fn concurrent_writers_with_the_same_etag_get_one_success_and_one_412() {
    let dir = tempfile::tempdir().unwrap();
    let weir = Weir::start(dir.path(), &["--no-watch"], &[]);
    let port = free_port();
    let v1 = format!("source: {{plugin: http, config: {{listen: \"127.0.0.1:{port}\"}}}}\nsinks: [{{plugin: discard}}]\n");
    let v1 = v1.as_str();
    let created = put(&weir, "shared", "application/yaml", v1, &[("If-None-Match", "*")]);
    assert_eq!(created.status, 201, "{created:?}");
    let again = put(&weir, "shared", "application/yaml", v1, &[("If-None-Match", "*")]);
    assert_eq!(again.status, 412, "If-None-Match: * creates only: {again:?}");
    let tag = etag(&created);
    let writers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|who| {
            let (url, tag) = (weir.url("/pipelines/shared"), tag.clone());
            std::thread::spawn(move || {
                let body = format!("description: written by {who}\nsource: {{plugin: http, config: {{listen: \"127.0.0.1:{port}\"}}}}\nsinks: [{{plugin: discard}}]\n");
                (who, curl_with("PUT", &url, &[("If-Match", &tag)], Some("application/yaml"), Some(body.as_bytes())))
            })
        })
        .collect();
    let answers: Vec<(&str, Reply)> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let statuses: HashSet<u16> = answers.iter().map(|(_, r)| r.status).collect();
    assert_eq!(statuses, HashSet::from([200, 412]), "{answers:?}");
    let (winner, won) = answers.iter().find(|(_, r)| r.status == 200).unwrap();
    let (_, lost) = answers.iter().find(|(_, r)| r.status == 412).unwrap();
    assert!(lost.json()["error"].as_str().unwrap().contains(&etag(won)), "the loser is told the ETag now: {lost:?}");
    let text = std::fs::read_to_string(dir.path().join("shared.yaml")).unwrap();
    assert!(text.contains(&format!("written by {winner}")), "the file holds the winner's version: {text}");
    let stale = curl_with("DELETE", &weir.url("/pipelines/shared"), &[("If-Match", &tag)], None, None);
    assert_eq!(stale.status, 412, "{stale:?}");
}

#[test]
fn plugins_are_described_with_their_library_and_schema() {
    let dir = tempfile::tempdir().unwrap();
    let weir = Weir::start(dir.path(), &["--no-watch"], &[]);
    let all = weir.get_json("/plugins");
    let http = all.as_array().unwrap().iter().find(|p| p["kind"] == "source" && p["name"] == "http").expect("the http source");
    assert_eq!(http["library"]["name"], "weir-http");
    assert!(http["library"]["abi"].as_str().unwrap().starts_with("1."), "{http}");
    assert!(http.get("schema").is_none(), "the list leaves schemas out");
    let file = weir.get_json("/plugins/sink/file");
    assert_eq!(file["schema"]["properties"]["path"]["type"], "string", "{file}");
    let missing = curl("GET", &weir.url("/plugins/sink/nope"), None, None);
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].as_str().unwrap().contains("no sink plugin called \"nope\""), "{missing:?}");
}

#[test]
fn weir_apply_status_and_delete_drive_a_running_host() {
    let dir = tempfile::tempdir().unwrap();
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir(&pipelines).unwrap();
    let weir = Weir::start(&pipelines, &["--no-watch"], &[]);
    let mine = dir.path().join("mine.yaml");
    std::fs::write(
        &mine,
        format!("source: {{plugin: http, config: {{listen: \"127.0.0.1:{}\"}}}}\nsinks: [{{plugin: discard}}]\n", free_port()),
    )
    .unwrap();
    let admin = ["--admin", weir.admin.as_str()];
    let out = weir_cli(&[&["apply", mine.to_str().unwrap()], &admin[..]].concat());
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("pipeline mine created"), "{out:?}");
    assert!(pipelines.join("mine.yaml").exists());
    let out = weir_cli(&[&["status"], &admin[..]].concat());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("mine") && text.contains("discard"), "{text}");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "source: {plugin: http}\nsinks:\n  - {plugin: file, config: {paht: x}}\n").unwrap();
    let out = weir_cli(&[&["apply", bad.to_str().unwrap()], &admin[..]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(err.contains(&format!("{}:3:", bad.display())) && err.contains("sinks[0].config.paht"), "positions map onto the file: {err}");

    let out = weir_cli(&[&["delete", "mine"], &admin[..]].concat());
    assert!(out.status.success(), "{out:?}");
    assert!(!pipelines.join("mine.yaml").exists());
    let out = weir_cli(&[&["delete", "mine"], &admin[..]].concat());
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no pipeline called \"mine\""), "{out:?}");
    let out = weir_cli(&["status", "--admin", &format!("127.0.0.1:{}", free_port())]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin API"), "{out:?}");
}

fn weir_cli(args: &[&str]) -> std::process::Output {
    weir(args, &[])
}
