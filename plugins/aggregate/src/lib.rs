//! The `aggregate` sink keeps counts of the records it gets in memory (totals, counters by
//! field with bounded cardinality, time buckets with a periodic cleanup, entities by their
//! latest value), snapshots them to a file so a restart goes on from them, and serves them
//! as JSON on its own listener: `GET /metrics` (counts and processing figures) and
//! `GET /health` (the dependencies the pipeline's stages report, and the headline counts).

mod config;
mod counts;

pub use config::{AggregateConfig, BucketSpec, LatestSpec, SnapshotSpec};
pub use counts::Counts;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{SecondsFormat, Utc};
use weir_plugin::serde_json::{self, json, Map, Value};
use weir_plugin::{BatchRef, Context, PluginError, Rejections, Sink};

/// Processing figures for `/metrics`.
#[derive(Debug, Default)]
struct Processing {
    batches: u64,
    rejected: u64,
    last_batch_at: Option<String>,
    last_batch_records: u64,
    last_batch_seconds: f64,
}

struct Shared {
    config: AggregateConfig,
    counts: Mutex<Counts>,
    processing: Mutex<Processing>,
    started: Instant,
    started_at: String,
    ctx: Context,
}

fn now_iso() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Shared {
    fn metrics(&self) -> Value {
        let mut out = self.counts.lock().unwrap_or_else(|p| p.into_inner()).render(&self.config);
        let p = self.processing.lock().unwrap_or_else(|p| p.into_inner());
        let uptime = self.started.elapsed().as_secs_f64();
        let total = out["totalEvents"].as_u64().unwrap_or(0);
        out.insert(
            "processing".into(),
            json!({
                "startedAt": self.started_at,
                "uptimeSeconds": uptime.floor(),
                "batches": p.batches,
                "rejected": p.rejected,
                "eventsPerSecond": if uptime > 0.0 { (total as f64 / uptime * 10.0).round() / 10.0 } else { 0.0 },
                "lastBatchAt": p.last_batch_at,
                "lastBatchRecords": p.last_batch_records,
                "lastBatchMilliseconds": (p.last_batch_seconds * 1e4).round() / 10.0,
            }),
        );
        Value::Object(out)
    }

    /// The seed's `/health`: each dependency healthy, unhealthy or unknown; 503 when one is down.
    fn health(&self) -> (StatusCode, Value) {
        let mut services: Map<String, Value> = self.config.services.iter().map(|s| (s.clone(), json!({"status": "unknown"}))).collect();
        let mut down = false;
        let reports = self.ctx.pipeline_health().unwrap_or_default();
        for deps in reports.as_object().into_iter().flat_map(|o| o.values()) {
            for (dependency, h) in deps.as_object().into_iter().flatten() {
                let up = h["up"].as_bool().unwrap_or(false);
                let entry = services.entry(dependency.clone()).or_insert_with(|| json!({"status": "unknown"}));
                // With several stages on one dependency, one that cannot reach it makes it unhealthy.
                if entry["status"] != "unhealthy" {
                    *entry = if up { json!({"status": "healthy"}) } else { json!({"status": "unhealthy", "message": h["message"]}) };
                }
                down |= !up;
            }
        }
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mut metrics = Map::new();
        metrics.insert("totalEvents".into(), counts.total.into());
        for name in &self.config.health_metrics {
            metrics.insert(name.clone(), json!(counts.by.get(name).cloned().unwrap_or_default()));
        }
        let body = json!({
            "status": if down { "unhealthy" } else { "healthy" },
            "timestamp": now_iso(),
            "services": services,
            "metrics": metrics,
        });
        (if down { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK }, body)
    }

    fn snapshot(&self, path: &std::path::Path) -> std::io::Result<()> {
        let text = serde_json::to_vec(&*self.counts.lock().unwrap_or_else(|p| p.into_inner())).map_err(std::io::Error::other)?;
        // Its own temporary name: during a reload the old and the new version both write.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("{}.{n}.tmp", std::process::id()));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }
}

/// The `aggregate` sink.
pub struct AggregateSink {
    shared: Arc<Shared>,
    snapshot: Option<PathBuf>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Sink for AggregateSink {
    type Config = AggregateConfig;
    const NAME: &'static str = "aggregate";
    const DESCRIPTION: &'static str =
        "Counts records by fields and time buckets in memory and serves the counts and the pipeline's health as JSON.";

    fn validate(config: &AggregateConfig) -> Result<(), PluginError> {
        config.check()
    }

    fn create(config: AggregateConfig, ctx: Context) -> Result<Self, PluginError> {
        config.check()?;
        let snapshot = config.snapshot.as_ref().map(|s| ctx.resolve(&s.path));
        let counts = match &snapshot {
            Some(path) if path.exists() => {
                let text = std::fs::read(path).map_err(|e| PluginError::config(format!("cannot read snapshot {}: {e}", path.display())))?;
                serde_json::from_slice(&text).map_err(|e| {
                    PluginError::config(format!(
                        "snapshot {} is not a snapshot of this sink ({e}); move it away to start from zero",
                        path.display()
                    ))
                })?
            }
            Some(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| PluginError::config(format!("cannot create {}: {e}", dir.display())))?;
                }
                Counts::default()
            }
            None => Counts::default(),
        };
        let listener = ctx.listen_async(&config.listen)?;
        let interval = config.snapshot.as_ref().map(|s| Duration::from_secs(s.interval_secs.max(1)));
        let shared = Arc::new(Shared {
            config,
            counts: Mutex::new(counts),
            processing: Mutex::default(),
            started: Instant::now(),
            started_at: now_iso(),
            ctx,
        });
        let app = Router::new()
            .route("/metrics", get(|State(s): State<Arc<Shared>>| async move { Json(s.metrics()) }))
            .route(
                "/health",
                get(|State(s): State<Arc<Shared>>| async move {
                    let (status, body) = s.health();
                    (status, Json(body)).into_response()
                }),
            )
            .with_state(shared.clone());
        let rt = weir_plugin::runtime();
        let mut tasks = vec![rt.spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                ctx.report_error(&format!("aggregate server failed: {e}"));
            }
        })];
        let (s, path) = (shared.clone(), snapshot.clone());
        tasks.push(rt.spawn(async move {
            let mut tick = tokio::time::interval(interval.unwrap_or(Duration::from_secs(60)));
            tick.tick().await;
            loop {
                tick.tick().await;
                s.counts.lock().unwrap_or_else(|p| p.into_inner()).clean(&s.config);
                if let Some(path) = &path {
                    if let Err(e) = s.snapshot(path) {
                        s.ctx.warn(&format!("cannot write snapshot {}: {e}", path.display()));
                    }
                }
            }
        }));
        Ok(AggregateSink { shared, snapshot, tasks })
    }

    fn write(&mut self, batch: &BatchRef<'_>, rejections: &mut Rejections) -> Result<(), PluginError> {
        let began = Instant::now();
        let now = Utc::now().timestamp_millis();
        let values: Vec<Option<Value>> = batch.iter().map(|r| serde_json::from_slice(r.value).ok()).collect();
        let mut rejected = 0;
        {
            let mut counts = self.shared.counts.lock().unwrap_or_else(|p| p.into_inner());
            for (i, (r, v)) in batch.iter().zip(&values).enumerate() {
                match v {
                    Some(v) => counts.add(&self.shared.config, &r, v, now),
                    None => {
                        rejections.reject(i, "not valid JSON, so it cannot be counted");
                        rejected += 1;
                    }
                }
            }
        }
        let mut p = self.shared.processing.lock().unwrap_or_else(|p| p.into_inner());
        p.batches += 1;
        p.rejected += rejected;
        p.last_batch_at = Some(now_iso());
        p.last_batch_records = batch.len() as u64;
        p.last_batch_seconds = began.elapsed().as_secs_f64();
        Ok(())
    }

    fn stop(&mut self) -> Result<(), PluginError> {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(path) = &self.snapshot {
            self.shared.snapshot(path).map_err(|e| PluginError::retry(format!("cannot write snapshot {}: {e}", path.display())))?;
        }
        Ok(())
    }
}

weir_plugin::export_plugins!(sink AggregateSink);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::mock::{json_batch, run_sink, MockHost};

    #[test]
    fn a_restart_goes_on_from_the_snapshot() {
        let dir = std::env::temp_dir().join(format!("weir-aggregate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let host = MockHost::with_base_dir(dir.to_str().unwrap());
        let config = json!({"listen": "127.0.0.1:0", "count_by": {"eventsByType": "/eventType"}, "snapshot": {"path": "state/agg.json"}});
        let mut first: AggregateSink = host.sink(config.clone()).unwrap();
        let batch = json_batch([r#"{"eventType":"A"}"#, r#"{"eventType":"B"}"#, "not json"]);
        let rejections = run_sink(&mut first, &batch).unwrap();
        assert_eq!(rejections.iter().map(|(i, _)| i).collect::<Vec<_>>(), [2]);
        first.stop().unwrap();
        let mut second: AggregateSink = host.sink(config).unwrap();
        run_sink(&mut second, &json_batch([r#"{"eventType":"A"}"#])).unwrap();
        let m = second.shared.metrics();
        assert_eq!(m["totalEvents"], 3);
        assert_eq!(m["eventsByType"], json!({"A": 2, "B": 1}));
        let (status, health) = second.shared.health();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(health["metrics"]["totalEvents"], 3);
        std::fs::write(dir.join("state/agg.json"), "{oops").unwrap();
        let err = host.sink::<AggregateSink>(json!({"listen": "127.0.0.1:0", "snapshot": {"path": "state/agg.json"}})).err().unwrap();
        assert!(err.to_string().contains("move it away to start from zero"), "{err}");
    }
}
