//! `weir test`: pipeline tests as code. A passing and a failing test file against one
//! pipeline: the failure names the test, the stage, the record and where it differs; the
//! JUnit XML says the same; the pipeline's sources and sinks are never started (its HTTP
//! port stays free, its Kafka broker is never dialled).

mod common;

use common::*;

const PIPELINE: &str = "name: shop\nsource:\n  plugin: http\n  config: {listen: \"127.0.0.1:@PORT@\"}\ntransforms:\n  - plugin: validate\n    config: {schema: event.schema.json}\n  - plugin: enrich\n    config: {set: {stage: checked}}\nsinks:\n  - {name: store, plugin: kafka, config: {brokers: \"127.0.0.1:1\", topic: t}}\n  - {name: audit, plugin: file, after: store, takes: all, config: {path: /nonexistent/dir/x.jsonl}}\n";

const SCHEMA: &str = r#"{"type":"object","required":["userId"],"properties":{"userId":{"type":"string"}}}"#;

#[test]
fn a_passing_and_a_failing_test_file_report_the_record_the_stage_and_the_difference() {
    let scene = Scene::new();
    scene.pipeline("shop", PIPELINE);
    std::fs::write(scene.path("event.schema.json"), SCHEMA).unwrap();
    std::fs::write(
        scene.path("shop.test.yaml"),
        "tests:\n  - name: valid events are enriched\n    input: [{userId: u1}, {userId: u2}]\n    sinks:\n      store: {records: [{userId: u1, stage: checked}, {userId: u2, stage: checked}]}\n      audit: {count: 2}\n    dead_letters: {count: 0}\n  - name: an event without userId is refused\n    input: [{name: x}]\n    sinks: {store: {count: 0}}\n    dead_letters: {records: [{name: x}], reasons: ['validate: /: \"userId\" is a required property']}\n",
    )
    .unwrap();
    std::fs::write(
        scene.path("wrong.test.yaml"),
        "pipeline: shop.yaml\ntests:\n  - name: expects the wrong user\n    input: [{userId: u1}]\n    sinks:\n      store: {records: [{userId: u2, stage: checked}]}\n  - name: expects a sink that does not exist\n    input: [{userId: u1}]\n    sinks: {nope: {count: 1}}\n",
    )
    .unwrap();
    let junit = scene.path("results.xml");
    let out = weir(&["test", scene.pipelines.to_str().unwrap(), "--junit", junit.to_str().unwrap()], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a failing test fails the run: {text}");
    assert!(text.contains("ok   ") && text.contains("shop.test.yaml: valid events are enriched"), "{text}");
    assert!(text.contains("shop.test.yaml: an event without userId is refused"), "{text}");
    assert!(text.contains("FAIL ") && text.contains("wrong.test.yaml: expects the wrong user"), "{text}");
    assert!(
        text.contains("sink store: record 0 differs at /userId: expected \"u2\", got \"u1\"")
            && text.contains("record: {\"userId\":\"u1\",\"stage\":\"checked\"}"),
        "the stage, the difference and the record: {text}"
    );
    assert!(text.contains("the pipeline has no sink called \"nope\"; its sinks are [\"store\", \"audit\"]"), "{text}");
    assert!(text.contains("4 tests in 2 files: 2 passed, 2 failed"), "{text}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("<testsuites name=\"weir test\" tests=\"4\" failures=\"2\">"), "{xml}");
    assert!(
        xml.contains("<failure message=\"sink store: record 0 differs at /userId: expected &quot;u2&quot;, got &quot;u1&quot;\">"),
        "{xml}"
    );
    assert!(std::net::TcpListener::bind(("127.0.0.1", scene.port)).is_ok(), "the HTTP source was stood in for");

    // Only the passing file: the run passes.
    std::fs::remove_file(scene.path("wrong.test.yaml")).unwrap();
    let out = weir(&["test", scene.path("shop.test.yaml").to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn test_files_beside_pipelines_are_not_pipelines() {
    let scene = Scene::new();
    scene.pipeline(
        "shop",
        PIPELINE
            .replace("kafka, config: {brokers: \"127.0.0.1:1\", topic: t}", "discard")
            .replace("/nonexistent/dir/x.jsonl", "@DIR@/audit.jsonl")
            .as_str(),
    );
    std::fs::write(scene.path("event.schema.json"), SCHEMA).unwrap();
    std::fs::write(scene.path("shop.test.yaml"), "tests: []\n").unwrap();
    let out = weir(&["validate", scene.pipelines.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("shop.test.yaml"), "{}", String::from_utf8_lossy(&out.stdout));
}
