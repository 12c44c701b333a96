//! API keys and per-key rate limits on the `http` source: a request without a known key is
//! refused before the pipeline sees it; each key's name and headers reach the records (here
//! made the tenant by `enrich`); a key over its limit gets 429 with `Retry-After`; secrets
//! never reach the log.

mod common;

use common::*;

const WEB: &str = "web-0123456789abcdef-secret";
const BATCH: &str = "batch-0123456789abcdef-secret";

#[test]
fn keys_decide_who_may_post_and_stamp_their_records_and_limits_answer_429() {
    let scene = Scene::new();
    let out = scene.path("out.jsonl");
    let batch_digest = {
        let o = std::process::Command::new("sh").args(["-c", &format!("printf %s '{BATCH}' | sha256sum")]).output().unwrap();
        String::from_utf8(o.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
    };
    scene.pipeline(
        "ingest",
        &format!(
            "source:
  plugin: http
  config:
    listen: 127.0.0.1:@PORT@
    auth:
      keys:
        - {{name: web, secret: \"${{WEB_API_SECRET}}\", headers: {{tenant: acme}}}}
        - {{name: batch, sha256: {batch_digest}, headers: {{tenant: globex}}, rate_limit: {{max: 2, window_ms: 60000}}}}
transforms:
  - plugin: enrich
    config: {{set: {{tenant: \"{{{{header:tenant}}}}\", key: \"{{{{header:auth.key}}}}\"}}}}
sinks: [{{plugin: file, config: {{path: @DIR@/out.jsonl}}}}]
"
        ),
    );
    let weir = scene.start(&[], &[("WEB_API_SECRET", WEB)]);
    let url = scene.url("/produce");
    let event = br#"{"userId":"u1","eventType":"e","tenant":"forged"}"#;
    let none = curl("POST", &url, Some("application/json"), Some(event));
    assert_eq!(none.status, 401, "{none:?}");
    assert!(none.headers.to_ascii_lowercase().contains("www-authenticate: apikey"), "{}", none.headers);
    let wrong = curl_with("POST", &url, &[("X-API-Key", "web-0123456789abcdef-secreT")], Some("application/json"), Some(event));
    assert_eq!(wrong.status, 401, "{wrong:?}");
    let web = curl_with("POST", &url, &[("X-API-Key", WEB)], Some("application/json"), Some(event));
    assert_eq!(web.status, 200, "{web:?}");
    for i in 0..2 {
        let r = curl_with("POST", &url, &[("x-api-key", BATCH)], Some("application/json"), Some(event));
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert!(r.headers.to_ascii_lowercase().contains(&format!("ratelimit-remaining: {}", 1 - i)), "{}", r.headers);
    }
    let over = curl_with("POST", &url, &[("X-API-Key", BATCH)], Some("application/json"), Some(event));
    assert_eq!(over.status, 429, "{over:?}");
    let head = over.headers.to_ascii_lowercase();
    assert!(head.contains("retry-after: ") && head.contains("ratelimit-limit: 2"), "{head}");
    wait_for("three records", std::time::Duration::from_secs(10), || json_lines(&out).len() == 3);
    let records = json_lines(&out);
    let tenants: Vec<(&str, &str)> = records.iter().map(|r| (r["tenant"].as_str().unwrap(), r["key"].as_str().unwrap())).collect();
    assert_eq!(tenants, [("acme", "web"), ("globex", "batch"), ("globex", "batch")], "the key decides, not the body");
    let logs = weir.logs();
    assert!(!logs.contains(WEB) && !logs.contains(BATCH), "secrets never reach the log:\n{logs}");
}

#[test]
fn a_bad_key_config_is_refused_naming_the_field() {
    let scene = Scene::new();
    let path = scene.pipeline(
        "ingest",
        "source: {plugin: http, config: {listen: \"127.0.0.1:@PORT@\", auth: {keys: [{name: web, sha256: nothex}]}}}\nsinks: [{plugin: discard}]\n",
    );
    let out = weir(&["validate", path.to_str().unwrap()], &[]);
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("auth.keys[0].sha256"), "{text}");
}
