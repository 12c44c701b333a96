//! Filtering and routing by content: the `filter` transform and sinks with `when`, end to
//! end through the built binary. Expected outputs are computed here from the events with
//! plain Rust, not with the expressions under test.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn ids(path: &std::path::Path) -> BTreeSet<u64> {
    json_lines(path).iter().map(|r| r["id"].as_u64().unwrap()).collect()
}

/// The events posted: every combination the conditions tell apart.
fn events() -> Vec<Value> {
    let mut out = Vec::new();
    for id in 0..60u64 {
        let level = ["info", "error", "warn"][id as usize % 3];
        let kind = ["user.signup", "user.deactivated", "order.placed", "page.view", "heartbeat"][id as usize % 5];
        let mut e = json!({"id": id, "level": level, "type": kind, "user": {"tier": if id % 4 == 0 { "gold" } else { "free" }}});
        match id % 6 {
            0 => e["amount"] = json!(id as f64 * 10.0),
            1 => e["amount"] = json!("not a number"),
            _ => {}
        }
        out.push(e);
    }
    out
}

/// Starts the scene's `weir` and posts [`events`] to it in one request, answered 200: the
/// running `weir`, the events and the answer.
fn post_events(scene: &Scene) -> (Weir, Vec<Value>, Value) {
    let weir = scene.start(&["--no-watch"], &[]);
    let all = events();
    let r = post_json(&scene.url("/produce"), &Value::Array(all.clone()).to_string());
    assert_eq!(r.status, 200, "{r:?}");
    (weir, all, r.json())
}

#[test]
fn three_sinks_get_exactly_their_records_and_what_no_sink_takes_is_dead_lettered() {
    let scene = Scene::new();
    scene.pipeline(
        "routed",
        r#"source:
  plugin: http
  config: {listen: "127.0.0.1:@PORT@"}
transforms:
  - plugin: filter
    config: {drop: 'record.type == "heartbeat"'}
sinks:
  - plugin: file
    name: errors
    when: 'record.level == "error"'
    config: {path: "@DIR@/errors.jsonl"}
  - plugin: file
    name: users
    when: 'record.type.startsWith("user.") && headers["http.client_ip"] == "127.0.0.1"'
    config: {path: "@DIR@/users.jsonl"}
  - plugin: file
    name: big
    when: 'has(record.amount) && record.amount > 100.0'
    config: {path: "@DIR@/big.jsonl"}
dead_letter:
  plugin: file
  config: {path: "@DIR@/dead.jsonl"}
"#,
    );
    let (weir, all, answer) = post_events(&scene);

    // What each sink should get, decided here without CEL.
    let (mut errors, mut users, mut big, mut no_route, mut failed, mut dropped) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new(), BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for e in &all {
        let id = e["id"].as_u64().unwrap();
        if e["type"] == "heartbeat" {
            dropped.insert(id);
            continue;
        }
        let is_error = e["level"] == "error";
        let is_user = e["type"].as_str().unwrap().starts_with("user.");
        // The third condition cannot be evaluated on a text amount: the record is refused.
        if e["amount"].is_string() {
            failed.insert(id);
            continue;
        }
        let is_big = e["amount"].as_f64().is_some_and(|a| a > 100.0);
        if is_error {
            errors.insert(id);
        }
        if is_user {
            users.insert(id);
        }
        if is_big {
            big.insert(id);
        }
        if !is_error && !is_user && !is_big {
            no_route.insert(id);
        }
    }
    assert!(!errors.is_empty() && !users.is_empty() && !big.is_empty() && !no_route.is_empty() && !failed.is_empty());
    let dir = scene.dir.path();
    wait_for("the routed records", Duration::from_secs(10), || {
        ids(&dir.join("errors.jsonl")) == errors && ids(&dir.join("users.jsonl")) == users && ids(&dir.join("big.jsonl")) == big
    });
    let dead = json_lines(&dir.join("dead.jsonl"));
    let dead_ids = |reason: &str| -> BTreeSet<u64> {
        dead.iter().filter(|d| d["reason"].as_str().unwrap().contains(reason)).map(|d| d["record"]["id"].as_u64().unwrap()).collect()
    };
    assert_eq!(dead_ids("no route"), no_route, "unrouted records are dead-lettered with the reason");
    assert_eq!(dead_ids("record.amount > 100.0"), failed, "records a condition fails on are refused with it");
    assert!(dead.iter().filter(|d| d["reason"].as_str().unwrap().contains("no route")).all(|d| d["stage"] == "routing"));
    assert!(dead.iter().filter(|d| d["reason"].as_str().unwrap().contains("amount")).all(|d| d["stage"] == "big"));
    // The client hears the same: refused records with their reasons, the rest accepted.
    let rejected: BTreeSet<u64> = answer["rejected"].as_array().unwrap().iter().map(|r| r["index"].as_u64().unwrap()).collect();
    assert_eq!(rejected, no_route.union(&failed).copied().collect::<BTreeSet<_>>(), "{answer}");
    assert_eq!(answer["accepted"].as_u64().unwrap() as usize, all.len() - rejected.len() - dropped.len(), "{answer}");
    let m = weir.metrics();
    assert!(m.contains(r#"weir_stage_records_dropped_total{pipeline="routed",stage="filter",plugin="filter"} 12"#), "{m}");
    assert!(
        m.contains(&format!(r#"weir_stage_records_in_total{{pipeline="routed",stage="errors",plugin="file"}} {}"#, errors.len())),
        "{m}"
    );
}

/// `filter` declares its condition (ABI minor 7) and the host evaluates it: in the middle of
/// the chain on its own, and at its end together with the sinks' `when`. Both must do what
/// the plugin does: the same records kept, the same rejections (stage and reason) and the
/// same counts.
#[test]
fn declared_conditions_mid_chain_and_before_the_routes_do_what_the_plugin_does() {
    let scene = Scene::new();
    scene.pipeline(
        "gated",
        r#"source:
  plugin: http
  config: {listen: "127.0.0.1:@PORT@"}
transforms:
  - plugin: filter
    name: not-warnings
    config: {drop: 'record.level == "warn"'}
  - plugin: map
    config:
      set: {seen: 'true'}
  - plugin: filter
    name: priced
    config: {keep: 'record.amount >= 0.0'}
  - plugin: filter
    name: not-heartbeats
    config: {drop: 'record.type == "heartbeat"', on_error: keep}
sinks:
  - plugin: file
    name: gold
    when: 'record.user.tier == "gold"'
    config: {path: "@DIR@/gold.jsonl"}
  - plugin: file
    name: rest
    when: 'record.user.tier != "gold"'
    config: {path: "@DIR@/rest.jsonl"}
dead_letter:
  plugin: file
  config: {path: "@DIR@/dead.jsonl"}
"#,
    );
    let (weir, all, _) = post_events(&scene);

    // Decided here without CEL: warnings dropped first; then `amount` must be a number of
    // at least 0 (no amount: the condition cannot be evaluated, the record is rejected by
    // `priced`); then heartbeats dropped.
    let (mut warn, mut unpriced, mut heartbeats, mut gold, mut rest) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for e in &all {
        let id = e["id"].as_u64().unwrap();
        if e["level"] == "warn" {
            warn.insert(id);
        } else if !e["amount"].is_f64() {
            unpriced.insert(id);
        } else if e["type"] == "heartbeat" {
            heartbeats.insert(id);
        } else if e["user"]["tier"] == "gold" {
            gold.insert(id);
        } else {
            rest.insert(id);
        }
    }
    assert!([&warn, &unpriced, &heartbeats, &gold, &rest].iter().all(|s| !s.is_empty()));
    let dir = scene.dir.path();
    wait_for("the routed records", Duration::from_secs(10), || {
        ids(&dir.join("gold.jsonl")) == gold && ids(&dir.join("rest.jsonl")) == rest
    });
    assert!(json_lines(&dir.join("rest.jsonl")).iter().all(|r| r["seen"] == true), "the map between the filters ran");
    let dead = json_lines(&dir.join("dead.jsonl"));
    let dead_ids: BTreeSet<u64> = dead.iter().map(|d| d["record"]["id"].as_u64().unwrap()).collect();
    assert_eq!(dead_ids, unpriced, "{dead:?}");
    assert!(dead.iter().all(|d| d["stage"] == "priced" && d["reason"].as_str().unwrap().contains("record.amount >= 0.0")), "{dead:?}");
    let m = weir.metrics();
    let count = |stage: &str, what: &str| {
        weir.metric(&format!(r#"weir_stage_records_{what}_total{{pipeline="gated",stage="{stage}",plugin="filter"}}"#))
            .unwrap_or_else(|| panic!("no records_{what} series for stage {stage}: {m}")) as usize
    };
    let after_warn = all.len() - warn.len();
    assert_eq!(
        (count("not-warnings", "in"), count("not-warnings", "dropped"), count("not-warnings", "out")),
        (all.len(), warn.len(), after_warn),
        "{m}"
    );
    assert_eq!(
        (count("priced", "in"), count("priced", "rejected"), count("priced", "out")),
        (after_warn, unpriced.len(), after_warn - unpriced.len()),
        "{m}"
    );
    let last_in = after_warn - unpriced.len();
    assert_eq!(
        (count("not-heartbeats", "in"), count("not-heartbeats", "dropped"), count("not-heartbeats", "out")),
        (last_in, heartbeats.len(), last_in - heartbeats.len()),
        "{m}"
    );
}

#[test]
fn a_source_waits_only_for_the_sinks_its_records_were_routed_to_and_unrouted_records_may_be_dropped() {
    let scene = Scene::new();
    scene.pipeline(
        "partial",
        r#"source:
  plugin: http
  config: {listen: "127.0.0.1:@PORT@"}
settings:
  unrouted: drop
sinks:
  - plugin: test-flaky
    name: stuck
    when: 'record.type == "stuck"'
    config: {outage_marker: stuck}
  - plugin: file
    name: kept
    when: 'record.type == "kept"'
    config: {path: "@DIR@/kept.jsonl"}
"#,
    );
    let weir = scene.start(&["--no-watch"], &[]);
    // Nothing for the sink that never delivers: answered at once.
    let r = post_json(&scene.url("/produce"), r#"[{"type":"kept","id":1},{"type":"other","id":2}]"#);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["accepted"], 1, "{r:?}");
    assert_eq!(ids(&scene.path("kept.jsonl")), BTreeSet::from([1]));
    wait_for("the unrouted record counted as dropped", Duration::from_secs(5), || {
        weir.metric(r#"weir_pipeline_records_total{pipeline="partial",stage="http",plugin="http",outcome="dropped"}"#) == Some(1.0)
    });
    // A record routed to it waits for it: no answer while it keeps retrying.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "3", "-H", "Content-Type: application/json", "--data-binary", r#"{"type":"stuck","id":3}"#])
        .arg(scene.url("/produce"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "answered before the sink it was routed to had it: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn a_condition_that_does_not_compile_is_refused_at_its_line() {
    let scene = Scene::new();
    let filter = scene.pipeline(
        "filtered",
        "source:\n  plugin: http\ntransforms:\n  - plugin: filter\n    config:\n      keep: 'record.n >'\nsinks:\n  - plugin: discard\n",
    );
    let out = weir(&["validate", "--format", "json", filter.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors = report["files"][0]["errors"].as_array().unwrap_or_else(|| panic!("{report}"));
    let keep = errors.iter().find(|e| e["field"] == "transforms[0].config.keep").unwrap_or_else(|| panic!("{report}"));
    assert_eq!(keep["line"], 6, "{keep}");
    assert!(keep["message"].as_str().unwrap().contains("not a valid expression"), "{keep}");

    let routed = scene.pipeline("routed", "source:\n  plugin: http\nsinks:\n  - plugin: discard\n    when: 'amount > 3'\n");
    let out = weir(&["validate", routed.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("routed.yaml:5:5: sinks[0].when: unknown variable `amount`"), "{text}");

    // Type errors that need no record: a condition that gives a number, a string ordered
    // against a number.
    let typed = scene.pipeline(
        "typed",
        "source:\n  plugin: http\ntransforms:\n  - plugin: filter\n    config:\n      keep: 'record.n * 2'\nsinks:\n  - plugin: discard\n    when: 'record.n + 1 > \"x\"'\n",
    );
    let out = weir(&["validate", typed.to_str().unwrap()], &[]);
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("typed.yaml:9:5: sinks[0].when: type error: cannot order a number against a string (column 16 of the condition)"),
        "{text}"
    );
    std::fs::write(
        &typed,
        "source:\n  plugin: http\ntransforms:\n  - plugin: filter\n    config:\n      keep: 'record.n * 2'\nsinks:\n  - plugin: discard\n",
    )
    .unwrap();
    let out = weir(&["validate", typed.to_str().unwrap()], &[]);
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("typed.yaml:6:7: transforms[0].config.keep: type error: a condition gives true or false, and this gives a number"),
        "{text}"
    );
}

#[test]
fn map_sets_renames_and_removes_and_every_other_byte_stays() {
    let scene = Scene::new();
    scene.pipeline(
        "mapped",
        r#"source:
  plugin: http
  config: {listen: "127.0.0.1:@PORT@"}
transforms:
  - plugin: map
    config:
      set: {amountCents: 'int(record.amount * 100.0)', /user/vip: 'record.user.tier in ["gold", "platinum"]'}
      rename: {ts: timestamp}
      remove: [/password]
sinks:
  - plugin: file
    config: {path: "@DIR@/out.jsonl"}
"#,
    );
    let _weir = scene.start(&["--no-watch"], &[]);
    let sent = r#"{"id":1.10,"amount":12.5,"ts":"2024-01-01T00:00:00Z","password":"hunter2","note":"caf\u00e9 \"q\"","user":{"tier":"gold","n":-0},"big":123456789012345678901234567890}"#;
    let r = post_json(&scene.url("/produce"), sent);
    assert_eq!(r.status, 200, "{r:?}");
    let written = std::fs::read_to_string(scene.path("out.jsonl")).unwrap();
    assert_eq!(
        written.trim_end(),
        r#"{"id":1.10,"amount":12.5,"note":"caf\u00e9 \"q\"","user":{"tier":"gold","n":-0,"vip":true},"big":123456789012345678901234567890,"timestamp":"2024-01-01T00:00:00Z","amountCents":1250}"#
    );
}
