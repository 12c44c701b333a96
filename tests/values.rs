//! Values pass through unchanged: big integers, long decimals, number spellings, string
//! escapes and key order reach the file sink and PostgreSQL byte for byte, through the
//! default pipeline and through enrich into the machine's PostgreSQL (read back with psql).

mod common;
#[path = "common/postgres.rs"]
mod pg;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use pg::{psql, Schema, SERVER};
use serde_json::value::RawValue;

/// Members whose bytes must survive: no float would keep any of them as written.
const FIELDS: [(&str, &str); 10] = [
    ("n", "12345678901234567890123"),
    ("big", "123456789012345678901234567890"),
    ("dec", "0.1000000000000000055511151231257827"),
    ("x", "1.10"),
    ("e", "1e3"),
    ("E", "-2.5E-7"),
    ("z", "-0"),
    ("u", r#""caf\u00e9 \ud83d\ude00 \/ \"q\"""#),
    ("nested", r#"{"zeta":1.50,"alpha":[1.0,-0.0,100000000000000000000000000001]}"#),
    ("last", "true"),
];

/// An event's members: `head`, then the fields above in that order (not sorted).
fn members(head: &[&str]) -> Vec<String> {
    head.iter().map(|m| m.to_string()).chain(FIELDS.iter().map(|(k, v)| format!("\"{k}\":{v}"))).collect()
}

/// A JSON object's members as written.
fn raw_members(text: &str) -> BTreeMap<String, Box<RawValue>> {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not a JSON object ({e}): {text}"))
}

#[test]
fn the_default_pipeline_writes_numbers_escapes_and_key_order_byte_for_byte() {
    let out = tempfile::tempdir().unwrap();
    let events = out.path().join("events.jsonl");
    let (http, ws) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let envs = [("WEIR_HTTP_LISTEN", http.as_str()), ("WEIR_WS_LISTEN", ws.as_str()), ("WEIR_EVENTS_FILE", events.to_str().unwrap())];
    let mut weir = Weir::start(&repo().join("pipelines"), &[], &envs);
    let produce = format!("http://{http}/produce");

    let compact = format!("{{{}}}", members(&[r#""eventType":"amount_set""#, r#""userId":"u-1""#]).join(","));
    let reply = post_json(&produce, &compact);
    assert_eq!(reply.status, 200, "{reply:?}");
    // Pretty-printed, in an array: the line breaks go, the values stay as written.
    let head = [r#""eventType": "amount_set""#, r#""userId" : "u-2""#, r#""eventId":"e-2""#];
    let pretty = format!("[\n  {{\n    {}\n  }}\n]", members(&head).join(",\n    "));
    let reply = post_json(&produce, &pretty);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["accepted"], 1, "{reply:?}");

    assert!(weir.stop().success());
    let text = std::fs::read_to_string(&events).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");

    // The compact event: its members come out as the same bytes, in the same order, with
    // enrich's fields after them.
    let prefix = &compact[..compact.len() - 1];
    assert!(lines[0].starts_with(prefix), "the event's bytes changed:\n sent {compact}\n  got {}", lines[0]);
    let added = raw_members(lines[0]);
    for field in ["receivedAt", "clientIp", "userAgent", "host", "eventId"] {
        assert!(added.contains_key(field), "enrich added {field}: {}", lines[0]);
    }
    assert!(lines[0][prefix.len()..].starts_with(",\"clientIp\":"), "{}", lines[0]);

    // The pretty one: each member's value is the bytes it was sent with.
    let members = raw_members(lines[1]);
    for (k, v) in FIELDS {
        assert_eq!(members[k].get(), v, "member {k} of {}", lines[1]);
    }
    assert_eq!(members["eventId"].get(), r#""e-2""#, "set_if_missing kept the event's id");
    let order: Vec<usize> = FIELDS.iter().map(|(k, _)| lines[1].find(&format!("\"{k}\":")).unwrap()).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "members keep their order: {}", lines[1]);
}

#[test]
fn numeric_columns_get_the_exact_digits_and_json_columns_the_record_as_sent() {
    let schema = Schema(format!("weir_values_{}", free_port()));
    psql(SERVER, &format!("DROP SCHEMA IF EXISTS {} CASCADE", schema.0));
    let table = format!("{}.amounts", schema.0);
    let scene = Scene::new();
    scene.pipeline(
        "amounts",
        &format!(
            r#"source: {{plugin: http, config: {{listen: "127.0.0.1:@PORT@"}}}}
transforms:
  - plugin: enrich
    config: {{set: {{stored: true}}}}
sinks:
  - plugin: postgres
    config:
      url: "{SERVER}"
      table: {table}
      create: true
      unique_key: [id]
      columns:
        - {{name: id, type: TEXT NOT NULL, from: /id}}
        - {{name: amount, type: NUMERIC, from: /amount}}
        - {{name: scaled, type: "NUMERIC(40, 10)", from: /amount}}
        - {{name: amount_text, type: TEXT, from: /amount}}
        - {{name: doc, type: JSON, from: ""}}
        - {{name: docb, type: JSONB, from: ""}}
"#
        ),
    );
    let _weir = scene.start(&[], &[]);
    // (id, amount as sent, what numeric shows: its digits and its scale as written).
    let cases = [
        ("a", "12345678901234567890123", "12345678901234567890123"),
        ("b", "123456789012345678901234567890", "123456789012345678901234567890"),
        ("c", "0.1000000000000000055511151231257827", "0.1000000000000000055511151231257827"),
        ("d", "1.10", "1.10"),
        ("e", "1e3", "1000"),
        ("f", "-2.5E-7", "-0.00000025"),
        ("g", "-0", "0"),
        ("h", "\"42.4200\"", "42.4200"),
    ];
    let sent: Vec<String> = cases
        .iter()
        .map(|(id, amount, _)| format!(r#"{{"id":"{id}","amount":{amount},"note":"caf\u00e9","k":{{"z":1,"a":2}}}}"#))
        .collect();
    let reply = post_json(&scene.url("/produce"), &format!("[{}]", sent.join(",")));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["accepted"], cases.len(), "{reply:?}");

    for ((id, amount, shown), sent) in cases.iter().zip(&sent) {
        assert_eq!(psql(SERVER, &format!("SELECT amount FROM {table} WHERE id = '{id}'")), *shown, "numeric from {amount}");
        assert_eq!(psql(SERVER, &format!("SELECT amount = {shown}::numeric FROM {table} WHERE id = '{id}'")), "t");
        // A json column keeps the record's text: what was sent, plus enrich's member.
        let doc = psql(SERVER, &format!("SELECT doc FROM {table} WHERE id = '{id}'"));
        assert_eq!(doc, format!("{},\"stored\":true}}", &sent[..sent.len() - 1]), "json column of {id}");
        // jsonb normalises by design (key order, escapes) but the number is still exact.
        let docb_amount = psql(SERVER, &format!("SELECT (docb->>'amount')::numeric = {shown}::numeric FROM {table} WHERE id = '{id}'"));
        assert_eq!(docb_amount, "t", "jsonb amount of {id}");
    }
    // A number into a text column keeps its spelling.
    assert_eq!(psql(SERVER, &format!("SELECT amount_text FROM {table} WHERE id = 'e'")), "1e3");
    assert_eq!(psql(SERVER, &format!("SELECT scaled FROM {table} WHERE id = 'd'")), "1.1000000000");

    // A number numeric cannot hold is refused with the reason, the rest of the batch lands.
    let reply = post_json(&scene.url("/produce"), r#"[{"id":"x","amount":1e999999},{"id":"y","amount":"soon"},{"id":"z","amount":7}]"#);
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = reply.json();
    assert_eq!(body["accepted"], 1, "{body}");
    let reasons: Vec<&str> = body["rejected"].as_array().unwrap().iter().map(|r| r["error"].as_str().unwrap()).collect();
    assert!(reasons[0].contains("column amount") && reasons[0].contains("numeric can hold"), "{reasons:?}");
    assert!(reasons[1].contains(r#""soon" is not a number"#), "{reasons:?}");
    wait_for("the good record", Duration::from_secs(10), || psql(SERVER, &format!("SELECT count(*) FROM {table} WHERE id = 'z'")) == "1");
}
