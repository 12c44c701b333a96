//! Traces and the `otlp` sink end to end, against an OTLP receiver built from the official
//! protobuf definitions: one trace from an HTTP request through Kafka into PostgreSQL
//! across two `weir` processes, an endpoint that is down, and metrics and logs from records.

#[path = "common/broker.rs"]
mod broker;
mod common;
#[path = "common/otlp.rs"]
mod otlp;
#[path = "common/postgres.rs"]
mod pg;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use broker::Broker;
use common::*;
use otlp::Receiver;
use pg::{psql, SERVER};

/// POSTs one JSON body with extra headers, with curl.
fn post_with(url: &str, body: &str, headers: &[&str]) -> Reply {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        url,
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        body,
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.output().expect("curl");
    Reply { status: String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0), headers: String::new(), body: String::new() }
}

#[test]
fn one_trace_follows_an_event_from_http_through_kafka_into_postgres_across_two_hosts() {
    let receiver = Receiver::start();
    let broker = Broker::memory();
    broker.create_topic("traced", 1);
    let table = format!("public.weir_traced_{}", free_port());
    psql(SERVER, &format!("DROP TABLE IF EXISTS {table}"));

    // Host A: HTTP ingest → validate → Kafka, exporting over gRPC.
    let ingest_scene = Scene::new();
    std::fs::write(ingest_scene.path("event.schema.json"), r#"{"type":"object","required":["event_id"]}"#).unwrap();
    ingest_scene.pipeline(
        "ingest",
        &format!(
            "source: {{plugin: http, config: {{listen: \"127.0.0.1:@PORT@\"}}}}\ntransforms:\n  - plugin: validate\n    config: {{schema: event.schema.json}}\nsinks:\n  - plugin: kafka\n    config: {{brokers: \"{}\", topic: traced}}\n",
            broker.addr
        ),
    );
    let grpc = receiver.grpc_url();
    let ingest = ingest_scene
        .start(&[], &[("WEIR_TRACES_ENABLED", "true"), ("WEIR_TRACES_ENDPOINT", &grpc), ("WEIR_TRACES_SERVICE_NAME", "weir-ingest")]);

    // Host B: Kafka → PostgreSQL, exporting over HTTP/protobuf.
    let store_dir = tempfile::tempdir().unwrap();
    write_pipeline(
        store_dir.path(),
        "store",
        &format!(
            "source:\n  plugin: kafka\n  config: {{brokers: \"{}\", topics: [traced], group_id: weir-traced, session_timeout_ms: 6000}}\nsinks:\n  - plugin: postgres\n    config:\n      url: \"{SERVER}\"\n      table: {table}\n      create: true\n      unique_key: [event_id]\n      columns:\n        - {{name: event_id, type: TEXT NOT NULL, from: /event_id}}\n        - {{name: data, type: JSONB, from: /data}}\n",
            broker.addr
        ),
    );
    let http = format!("{}/v1/traces", receiver.http_url());
    let store = Weir::start(
        store_dir.path(),
        &[],
        &[
            ("WEIR_TRACES_ENABLED", "true"),
            ("WEIR_TRACES_PROTOCOL", "http_protobuf"),
            ("WEIR_TRACES_ENDPOINT", &http),
            ("OTEL_SERVICE_NAME", "weir-store"),
        ],
    );

    // The client's own span: the trace starts there.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let r = post_with(
        &ingest_scene.url("/produce"),
        r#"{"event_id":"traced-1","data":{"n":1}}"#,
        &[&format!("traceparent: 00-{trace_id}-{client_span}-01")],
    );
    assert_eq!(r.status, 200, "{r:?}\n{}", ingest.logs());
    wait_for("the row in PostgreSQL", Duration::from_secs(60), || {
        psql(SERVER, &format!("SELECT count(*) FROM {table} WHERE event_id = 'traced-1'")) == "1"
    });

    let mut spans = Vec::new();
    wait_for("the PostgreSQL sink's span", Duration::from_secs(30), || {
        spans = receiver.spans().into_iter().filter(|s| s.trace_id == trace_id).collect();
        spans.iter().any(|s| s.name == "sink postgres")
    });
    // Walk from the PostgreSQL sink's span to the client's span, parent by parent.
    let by_id: HashMap<&str, &otlp::Span> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut chain = Vec::new();
    let mut at = spans.iter().find(|s| s.name == "sink postgres").unwrap();
    loop {
        chain.push(format!("{}/{}", at.service, at.name));
        if at.parent_id == client_span {
            break;
        }
        at = by_id
            .get(at.parent_id.as_str())
            .unwrap_or_else(|| panic!("span {} has parent {} not received; chain so far {chain:?}", at.name, at.parent_id));
    }
    chain.reverse();
    assert_eq!(
        chain,
        [
            "weir-ingest/source http",
            "weir-ingest/transform validate",
            "weir-ingest/sink kafka",
            "weir-store/source kafka",
            "weir-store/sink postgres"
        ],
        "{spans:#?}"
    );
    let pg = spans.iter().find(|s| s.name == "sink postgres").unwrap();
    assert_eq!(pg.attributes.get("weir.pipeline").map(String::as_str), Some("store"));
    assert_eq!(pg.attributes.get("weir.plugin").map(String::as_str), Some("postgres"));
    assert_eq!(pg.attributes.get("weir.records").map(String::as_str), Some("1"));
    assert!(store.metric("weir_telemetry_spans_total{outcome=\"exported\"}").unwrap() >= 2.0);
    psql(SERVER, &format!("DROP TABLE IF EXISTS {table}"));
}

#[test]
fn an_otlp_endpoint_that_is_down_drops_and_counts_spans_and_logs_and_the_pipeline_does_not_notice() {
    let scene = Scene::new();
    let dead = free_port();
    scene.pipeline(
        "p",
        &format!("source: {{plugin: http, config: {{listen: \"127.0.0.1:@PORT@\"}}}}\ntransforms: [{{plugin: enrich, config: {{set: {{seen: \"yes\"}}}}}}]\nsinks:\n  - plugin: discard\n  - plugin: otlp\n    config: {{endpoint: \"http://127.0.0.1:{dead}\", interval_ms: 200, timeout_ms: 500, metrics: [{{name: seen_total, type: counter}}], logs: {{queue: 256}}}}\n"),
    );
    let weir = scene.start(
        &[],
        &[
            ("WEIR_TRACES_ENABLED", "true"),
            ("WEIR_TRACES_ENDPOINT", &format!("http://127.0.0.1:{dead}")),
            ("WEIR_TRACES_QUEUE_SPANS", "256"),
            ("WEIR_TRACES_TIMEOUT_MS", "500"),
        ],
    );
    let url = scene.url("/produce");
    let send = |n: usize| {
        for i in 0..n {
            let r = post_json(&url, &format!(r#"{{"i":{i}}}"#));
            assert_eq!(r.status, 200, "{r:?}");
        }
    };
    send(200);
    let warm = rss_mb(weir.pid());
    send(1000);
    let after = rss_mb(weir.pid());
    let delivered = weir.metric("weir_stage_records_in_total{pipeline=\"p\",stage=\"discard\",plugin=\"discard\"}").unwrap();
    assert_eq!(delivered, 1200.0);
    wait_for("dropped spans to be counted", Duration::from_secs(20), || {
        let failed = weir.metric("weir_telemetry_spans_total{outcome=\"dropped_export_failed\"}").unwrap_or_default();
        let full = weir.metric("weir_telemetry_spans_total{outcome=\"dropped_queue_full\"}").unwrap_or_default();
        failed + full >= 1200.0 * 3.0 - 256.0
    });
    assert_eq!(weir.metric("weir_telemetry_spans_total{outcome=\"exported\"}"), Some(0.0));
    // 3,600 spans were made; the queue holds 256 at most.
    assert!(after < warm + 8.0, "memory grew from {warm:.1} MiB to {after:.1} MiB");
    assert!(weir.logs().contains("Spans dropped"), "{}", weir.logs());
    // The otlp sink behind the same dead endpoint: its log records are dropped and counted.
    let sink = "{pipeline=\"p\",stage=\"otlp\",plugin=\"otlp\"}";
    assert_eq!(weir.metric(&format!("weir_stage_records_out_total{sink}")), Some(1200.0));
    assert!(weir.metric(&format!("weir_plugin_otlp_logs_dropped_total{sink}")).unwrap_or_default() > 0.0, "{}", weir.metrics());
    assert!(weir.metric(&format!("weir_plugin_otlp_metric_exports_failed_total{sink}")).unwrap_or_default() > 0.0, "{}", weir.metrics());
}

#[test]
fn the_otlp_sink_exports_event_metrics_and_logs_and_rejects_a_value_that_is_not_a_number() {
    let receiver = Receiver::start();
    for (protocol, endpoint) in [("grpc", receiver.grpc_url()), ("http_protobuf", receiver.http_url())] {
        let scene = Scene::new();
        scene.pipeline(
            "metrics",
            &format!(
                r#"source: {{plugin: http, config: {{listen: "127.0.0.1:@PORT@"}}}}
sinks:
  - plugin: otlp
    config:
      endpoint: "{endpoint}"
      protocol: {protocol}
      interval_ms: 200
      max_series: 2
      resource: {{service.name: nexus-{protocol}}}
      metrics:
        - {{name: analytics_events_processed_total, type: counter, labels: {{event_type: /event_type, service: /service}}}}
        - {{name: analytics_events_processing_duration_seconds, type: histogram, value: /duration, buckets: [0.1, 1]}}
      logs: {{body: /message, severity: /level, attributes: {{event_type: /event_type}}}}
"#
            ),
        );
        let weir = scene.start(&[], &[]);
        let url = scene.url("/produce");
        for (t, s, d) in [("login", "auth", 0.05), ("login", "auth", 0.5), ("view", "web", 2.0), ("buy", "shop", 0.2)] {
            let body = format!(r#"{{"event_type":"{t}","service":"{s}","duration":{d},"message":"{t} by {s}","level":"warn"}}"#);
            assert_eq!(post_json(&url, &body).status, 200);
        }
        let r = post_json(&url, r#"{"event_type":"login","service":"auth","duration":"slow"}"#);
        assert_eq!(r.status, 400, "{r:?}");
        assert!(r.body.contains("the value at /duration (\\\"slow\\\") is not a number"), "{}", r.body);

        let series = |points: &[otlp::Point]| {
            let mut v: Vec<(String, String, f64)> =
                points.iter().map(|p| (p.attributes["event_type"].clone(), p.attributes["service"].clone(), p.value)).collect();
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v
        };
        let service = format!("nexus-{protocol}");
        let mut counted = Vec::new();
        wait_for("the counter over OTLP", Duration::from_secs(20), || {
            counted = receiver.metric(&service, "analytics_events_processed_total").map(|p| series(&p)).unwrap_or_default();
            counted.iter().map(|s| s.2).sum::<f64>() == 4.0
        });
        // max_series 2: the third label set goes to `other`.
        let expected: Vec<(String, String, f64)> =
            [("login", "auth", 2.0), ("other", "other", 1.0), ("view", "web", 1.0)].map(|(t, s, n)| (t.into(), s.into(), n)).into();
        assert_eq!(counted, expected, "{protocol}");
        let hist = receiver.metric(&service, "analytics_events_processing_duration_seconds").unwrap();
        assert_eq!(hist.iter().map(|p| p.count).sum::<u64>(), 4, "{protocol}: {hist:?}");
        assert!((hist.iter().map(|p| p.value).sum::<f64>() - 2.75).abs() < 1e-9, "{hist:?}");
        wait_for("the logs over OTLP", Duration::from_secs(20), || receiver.logs().iter().filter(|l| l.service == service).count() == 4);
        let logs: Vec<_> = receiver.logs().into_iter().filter(|l| l.service == service).collect();
        assert!(logs.iter().any(|l| l.body == "view by web" && l.severity == "WARN" && l.attributes["event_type"] == "view"), "{logs:?}");
        drop(weir);
    }
}

/// Every PromQL expression of the dashboard, with Grafana's variables filled in.
fn dashboard_queries() -> Vec<String> {
    let path = repo().join("examples/observability/grafana/dashboards/weir.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            if let Some(e) = t["expr"].as_str() {
                exprs.push(e.replace("$__rate_interval", "1m").replace("$pipeline", ".*"));
            }
        }
    }
    exprs
}

#[test]
fn the_observability_example_checks_out_with_promtool_and_names_only_metrics_weir_exposes() {
    let exprs = dashboard_queries();
    assert!(exprs.len() >= 8, "{exprs:?}");
    let dir = tempfile::tempdir().unwrap();
    let rules: Vec<serde_json::Value> =
        exprs.iter().enumerate().map(|(i, e)| serde_json::json!({"record": format!("weir:dashboard_{i}"), "expr": e})).collect();
    let rules_file = dir.path().join("rules.yml");
    std::fs::write(&rules_file, serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]}).to_string()).unwrap();
    let out = Command::new("promtool").args(["check", "rules"]).arg(&rules_file).output().expect("promtool");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let out =
        Command::new("promtool").args(["check", "config"]).arg(repo().join("examples/observability/prometheus.yml")).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    for file in ["tempo.yaml", "grafana/provisioning/datasources/weir.yaml", "grafana/provisioning/dashboards/weir.yaml"] {
        let text = std::fs::read_to_string(repo().join("examples/observability").join(file)).unwrap();
        serde_yaml::from_str::<serde_yaml::Value>(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    }

    // Every weir_* metric the dashboard reads is in a running Weir's exposition.
    let scene = Scene::new();
    scene.pipeline("p", "source: {plugin: http, config: {listen: \"127.0.0.1:@PORT@\"}}\nsinks: [{plugin: discard}]\n");
    let weir = scene.start(&[], &[]);
    assert_eq!(post_json(&scene.url("/produce"), r#"{"a":1}"#).status, 200);
    let exposition = weir.metrics();
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("weir_")) {
            let family = word.strip_suffix("_bucket").unwrap_or(word);
            assert!(
                exposition.contains(&format!("# TYPE {family} ")),
                "the dashboard reads {family}, which Weir does not expose:\n{exposition}"
            );
        }
    }
}
