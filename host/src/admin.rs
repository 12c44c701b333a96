//! The admin API: `/health`, `/pipelines`, `/metrics`.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State as AxState;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use crate::host::Host;
use crate::pipeline::State;

/// The admin API's routes. `drain` is how long a reload waits for a replaced pipeline.
pub fn router(host: Arc<Host>, drain: std::time::Duration) -> Router {
    Router::new()
        .route(
            "/reload",
            axum::routing::post(move |AxState(host): AxState<Arc<Host>>| async move {
                let report = tokio::task::spawn_blocking(move || host.reload(drain)).await.unwrap_or_default();
                let status = if report.result == "ok" { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
                (status, Json(report))
            }),
        )
        .route("/pipelines/{name}/pause", axum::routing::post(|h, n| control(h, n, Control::Pause)))
        .route("/pipelines/{name}/resume", axum::routing::post(|h, n| control(h, n, Control::Resume)))
        .route(
            "/pipelines/{name}/restart",
            axum::routing::post(
                move |AxState(host): AxState<Arc<Host>>, axum::extract::Path(name): axum::extract::Path<String>| async move {
                    let n = name.clone();
                    match tokio::task::spawn_blocking(move || host.restart(&n, drain)).await {
                        Ok(Ok(())) => (StatusCode::OK, Json(serde_json::json!({ "restarted": name }))),
                        Ok(Err(e)) => (StatusCode::UNPROCESSABLE_ENTITY, Json(serde_json::json!({ "error": e }))),
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, Json(serde_json::json!({ "error": e.to_string() }))),
                    }
                },
            ),
        )
        .route("/health", get(health))
        .route("/pipelines", get(pipelines))
        .route("/pipelines/{name}", get(pipeline))
        .route("/metrics", get(metrics))
        .with_state(host)
}

async fn health(AxState(host): AxState<Arc<Host>>) -> impl IntoResponse {
    let pipelines = host.pipelines();
    let states: serde_json::Map<String, serde_json::Value> =
        pipelines.iter().map(|p| (p.name.clone(), p.state().0.name().into())).collect();
    let all_running = pipelines.iter().all(|p| p.state().0 == State::Running);
    let clients: f64 = pipelines.iter().map(|p| p.gauge("connected_clients")).sum();
    let body = serde_json::json!({
        "status": if all_running { "healthy" } else { "degraded" },
        "timestamp": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        "uptime_seconds": host.started.elapsed().as_secs(),
        "pipelines": states,
        "connected_clients": clients as u64,
        "last_reload": host.last_reload(),
    });
    (if all_running { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}

async fn pipelines(AxState(host): AxState<Arc<Host>>) -> impl IntoResponse {
    Json(host.pipelines().iter().map(|p| host.report(p)).collect::<Vec<_>>())
}

async fn pipeline(AxState(host): AxState<Arc<Host>>, axum::extract::Path(name): axum::extract::Path<String>) -> impl IntoResponse {
    match host.pipelines().into_iter().find(|p| p.name == name) {
        Some(p) => (StatusCode::OK, Json(host.report(&p))),
        None => (StatusCode::NOT_FOUND, Json(serde_json::json!({ "error": format!("no pipeline called {name:?}") }))),
    }
}

enum Control {
    Pause,
    Resume,
}

async fn control(
    AxState(host): AxState<Arc<Host>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    what: Control,
) -> impl IntoResponse {
    let Some(p) = host.pipelines().into_iter().find(|p| p.name == name) else {
        return (StatusCode::NOT_FOUND, Json(serde_json::json!({ "error": format!("no pipeline called {name:?}") })));
    };
    if p.set_paused(matches!(what, Control::Pause)) {
        (StatusCode::OK, Json(host.report(&p)))
    } else {
        (StatusCode::CONFLICT, Json(serde_json::json!({ "error": format!("pipeline {name:?} is not running") })))
    }
}

async fn metrics(AxState(host): AxState<Arc<Host>>) -> impl IntoResponse {
    {
        // A pipeline whose stage keeps failing shows as failed in `weir_pipeline_up` too.
        let pipelines = host.pipelines();
        let mut states = host.metrics.pipeline_states.lock().unwrap_or_else(|p| p.into_inner());
        for p in &pipelines {
            if let Some(state) = states.get_mut(&p.name) {
                *state = p.state().0.name().into();
            }
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], host.metrics.render())
}
