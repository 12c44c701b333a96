//! The `prometheus` sink and the admin API's metrics, checked by `promtool` and scraped by
//! a real Prometheus server started by the test.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// `http` on the scene's port → `prometheus` on port `metrics`.
fn nexus_metrics_pipeline(scene: &Scene, metrics: u16) {
    scene.pipeline(
        "metrics",
        &format!(
            r#"source: {{plugin: http, config: {{listen: "127.0.0.1:@PORT@"}}}}
sinks:
  - plugin: prometheus
    config:
      listen: 127.0.0.1:{metrics}
      health_service: analytics-service
      max_series: 3
      metrics:
        - name: analytics_events_processed_total
          type: counter
          help: Total events processed, by type and service.
          labels: {{event_type: /event_type, service: /service}}
        - name: analytics_events_processing_duration_seconds
          type: histogram
          help: Time from the event's arrival to its processing.
          value: "@age"
        - name: analytics_event_payload_items
          type: gauge
          help: Items in the last event's payload.
          value: /data/items
"#
        ),
    );
}

fn event(kind: &str, service: &str, items: &str) -> String {
    format!(r#"{{"event_type":"{kind}","user_id":"u","service":"{service}","data":{{"items":{items}}}}}"#)
}

#[test]
fn records_become_metrics_that_promtool_accepts_and_labels_are_capped() {
    let scene = Scene::new();
    let metrics = free_port();
    nexus_metrics_pipeline(&scene, metrics);
    let weir = scene.start(&[], &[]);
    let url = scene.url("/produce");
    let batch = format!(
        "[{},{},{}]",
        event("user.login", "auth-service", "3"),
        event("user.login", "auth-service", "4"),
        event("user.registered", "auth-service", "1")
    );
    assert_eq!(post_json(&url, &batch).status, 200);
    let text = curl("GET", &format!("http://127.0.0.1:{metrics}/metrics"), None, None).body;
    assert!(text.contains(r#"analytics_events_processed_total{event_type="user.login",service="auth-service"} 2"#), "{text}");
    assert!(text.contains("analytics_event_payload_items 1\n"), "{text}");
    assert!(text.contains("analytics_events_processing_duration_seconds_count 3\n"), "{text}");
    let (ok, report) = promtool_check(&text);
    assert!(ok && report.trim().is_empty(), "promtool: {report}\n{text}");
    let (ok, report) = promtool_check(&weir.metrics());
    assert!(ok && report.trim().is_empty(), "promtool on the admin API: {report}");

    // A value that is not a number is rejected with the reason.
    let r = post_json(&url, &event("user.login", "auth-service", "\"many\""));
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json()["error"], "prometheus: metric analytics_event_payload_items: the value at /data/items (\"many\") is not a number");

    // max_series: 3 — further label sets share one `other` series, counted.
    for kind in ["a", "b", "c"] {
        assert_eq!(post_json(&url, &event(kind, "svc", "1")).status, 200);
    }
    let text = curl("GET", &format!("http://127.0.0.1:{metrics}/metrics"), None, None).body;
    assert!(text.contains(r#"analytics_events_processed_total{event_type="other",service="other"} 2"#), "{text}");
    assert!(text.contains(r#"weir_metric_label_overflow_total{metric="analytics_events_processed_total"} 2"#), "{text}");
    let health = curl("GET", &format!("http://127.0.0.1:{metrics}/health"), None, None).json();
    assert_eq!(health, serde_json::json!({"status": "healthy", "service": "analytics-service"}));
}

#[test]
fn a_real_prometheus_server_scrapes_the_sink_and_the_admin_api() {
    let scene = Scene::new();
    let (metrics, prom) = (free_port(), free_port());
    nexus_metrics_pipeline(&scene, metrics);
    let weir = scene.start(&[], &[]);
    for _ in 0..5 {
        assert_eq!(post_json(&scene.url("/produce"), &event("user.login", "auth-service", "2")).status, 200);
    }
    let config = scene.path("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: nexus\n    static_configs: [{{targets: ['127.0.0.1:{metrics}']}}]\n  - job_name: weir\n    static_configs: [{{targets: ['{}']}}]\n",
            weir.admin
        ),
    )
    .unwrap();
    let _server = Server(
        Command::new("prometheus")
            .args([
                &format!("--config.file={}", config.display()),
                &format!("--storage.tsdb.path={}", scene.path("tsdb").display()),
                &format!("--web.listen-address=127.0.0.1:{prom}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus)"),
    );
    let query = |q: &str| {
        let out = Command::new("curl")
            .args(["-s", "--get", &format!("http://127.0.0.1:{prom}/api/v1/query"), "--data-urlencode", &format!("query={q}")])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let value = |q: &str| query(q)["data"]["result"][0]["value"][1].as_str().map(str::to_owned);
    wait_for("Prometheus to scrape the sink", Duration::from_secs(60), || {
        value(r#"analytics_events_processed_total{event_type="user.login",service="auth-service"}"#).as_deref() == Some("5")
    });
    wait_for("Prometheus to scrape the admin API", Duration::from_secs(60), || {
        value(r#"weir_stage_records_out_total{pipeline="metrics",stage="prometheus"}"#).as_deref() == Some("5")
    });
}

/// Kills the Prometheus server when the test ends, passed or not.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
