//! The `prometheus` sink: turns records into the counters, gauges and histograms declared
//! in YAML (names, help, labels from JSON pointers, values from fields) and serves them on
//! its own listener at `/metrics`. Label cardinality is capped per metric.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use weir_plugin::serde_json::json;
use weir_plugin::{BatchRef, Context, Deserialize, JsonSchema, PluginError, Rejections, Sink};

pub use weir_plugin::metrics::{MetricSpec, MetricType, Registry};

/// Config of the `prometheus` sink.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Address to serve on, `host:port`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Path of the text exposition.
    #[serde(default = "default_path")]
    pub path: String,
    /// When set, `GET /health` answers `{"status":"healthy","service":SERVICE}`.
    #[serde(default)]
    pub health_service: Option<String>,
    /// Most label sets per metric; records beyond go to one series whose labels are all `other`.
    #[serde(default = "default_max_series")]
    pub max_series: NonZeroUsize,
    /// The metrics.
    pub metrics: Vec<MetricSpec>,
}

fn default_listen() -> String {
    "127.0.0.1:9090".into()
}
fn default_path() -> String {
    "/metrics".into()
}
fn default_max_series() -> NonZeroUsize {
    NonZeroUsize::new(1000).expect("non-zero")
}

/// The `prometheus` sink.
pub struct PrometheusSink {
    registry: Arc<Mutex<Registry>>,
    ctx: Context,
    server: tokio::task::JoinHandle<()>,
}

impl Sink for PrometheusSink {
    type Config = PrometheusConfig;
    const NAME: &'static str = "prometheus";
    const DESCRIPTION: &'static str = "Turns records into Prometheus counters, gauges and histograms served on its own /metrics.";

    fn validate(config: &PrometheusConfig) -> Result<(), PluginError> {
        if config.metrics.is_empty() {
            return Err(PluginError::config("metrics needs at least one metric"));
        }
        weir_plugin::metrics::check_all(&config.metrics).map_err(PluginError::config)?;
        weir_plugin::metrics::check_exposed_names(&config.metrics).map_err(PluginError::config)?;
        if !config.path.starts_with('/') {
            return Err(PluginError::config(format!("path {:?} must start with `/`", config.path)));
        }
        Ok(())
    }

    fn create(config: PrometheusConfig, ctx: Context) -> Result<Self, PluginError> {
        let registry = Arc::new(Mutex::new(Registry::new(config.metrics.clone(), config.max_series.get())));
        let listener = ctx.listen_async(&config.listen)?;
        let rt = weir_plugin::runtime();
        let r = registry.clone();
        let mut app = Router::new().route(
            &config.path,
            get(move || {
                let text = r.lock().unwrap_or_else(|p| p.into_inner()).render();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response() }
            }),
        );
        if let Some(service) = config.health_service.clone() {
            let body = json!({"status": "healthy", "service": service}).to_string();
            app = app.route("/health", get(move || async move { ([(header::CONTENT_TYPE, "application/json")], body).into_response() }));
        }
        let server = rt.spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                ctx.report_error(&format!("metrics server failed: {e}"));
            }
        });
        ctx.info(&format!("Serving metrics on {}{}.", config.listen, config.path));
        Ok(PrometheusSink { registry, ctx, server })
    }

    fn write(&mut self, batch: &BatchRef<'_>, rejections: &mut Rejections) -> Result<(), PluginError> {
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let before = registry.overflowed();
        for (i, r) in batch.iter().enumerate() {
            if let Err(reason) = registry.observe(&r) {
                rejections.reject(i, &reason);
            }
        }
        let overflowed = registry.overflowed() - before;
        if overflowed > 0 {
            self.ctx.counter_add(
                "prometheus_label_overflow",
                "Records counted in a metric's `other` series (max_series reached).",
                overflowed,
            );
        }
        Ok(())
    }

    fn stop(&mut self) -> Result<(), PluginError> {
        self.server.abort();
        Ok(())
    }
}

weir_plugin::export_plugins!(sink PrometheusSink);
