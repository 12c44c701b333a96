//! `GET`, `PATCH` and `DELETE /pipelines/{name}/offsets`: a source's offsets as Kafka
//! Connect shows them (KIP-875), forwarded to the running source (ABI minor 6 control
//! requests). Offsets move only while the pipeline is paused: the source is then its
//! group's member with nothing in flight, and the records read from the new positions wait
//! until it is resumed.

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use weir_plugin::abi::Status;

use crate::admin::error;
use crate::host::Host;
use crate::pipeline::Pipeline;

/// Why a request is refused before it reaches the source.
type Refusal = (StatusCode, String);

fn find(host: &Host, name: &str) -> Result<Arc<Pipeline>, Refusal> {
    host.pipelines().into_iter().find(|p| p.name == name).ok_or_else(|| (StatusCode::NOT_FOUND, format!("no pipeline called {name:?}")))
}

/// The pipeline `name`, paused: offsets move only then.
fn paused(host: &Host, name: &str) -> Result<Arc<Pipeline>, Refusal> {
    let p = find(host, name)?;
    if p.paused() {
        return Ok(p);
    }
    Err((
        StatusCode::CONFLICT,
        format!(
            "pipeline {name:?} is running: offsets move only while it is paused. Pause it (POST /pipelines/{name}/pause), \
             move the offsets, then resume it (POST /pipelines/{name}/resume)"
        ),
    ))
}

/// Sends `request` to the pipeline's source on a blocking thread and answers with what it
/// says, under the pipeline's and the source stage's names.
async fn forward(p: Arc<Pipeline>, request: Value) -> Response {
    let (stage, plugin) = p.source_stage().map(|(s, p)| (s.to_owned(), p.to_owned())).unwrap_or_default();
    let name = p.name.clone();
    let paused = p.paused();
    let answer = tokio::task::spawn_blocking(move || p.control(&request)).await;
    match answer {
        Ok(Some(Ok(Value::Object(mut body)))) => {
            body.insert("pipeline".into(), json!(name));
            body.insert("stage".into(), json!(stage));
            body.insert("plugin".into(), json!(plugin));
            body.insert("paused".into(), json!(paused));
            Json(Value::Object(body)).into_response()
        }
        Ok(Some(Ok(other))) => error(StatusCode::BAD_GATEWAY, format!("the {plugin} source answered {other} instead of an object")),
        Ok(Some(Err(e))) => {
            let status = match e.status {
                Status::INVALID_CONFIG | Status::INVALID_ARGUMENT => StatusCode::UNPROCESSABLE_ENTITY,
                Status::RETRY => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_GATEWAY,
            };
            let mut resp = error(status, format!("source {stage} ({plugin}): {}", e.message));
            if status == StatusCode::SERVICE_UNAVAILABLE {
                resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
            resp
        }
        Ok(None) => error(
            StatusCode::CONFLICT,
            format!("pipeline {name:?}: its source ({plugin}) keeps no offsets, or it is not running (see GET /pipelines/{name})"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /pipelines/{name}/offsets`: per partition the committed offset, the watermarks and
/// the lag.
pub async fn get(AxState(host): AxState<Arc<Host>>, Path(name): Path<String>) -> Response {
    match find(&host, &name) {
        Ok(p) => forward(p, json!({"op": "offsets"})).await,
        Err((status, message)) => error(status, message),
    }
}

/// `PATCH /pipelines/{name}/offsets` with `{"to": "earliest"|"latest"}`, `{"timestamp":
/// RFC 3339 or ms}` or `{"offsets": [{"topic", "partition", "offset"}]}`: moves the
/// committed offsets of a paused pipeline.
pub async fn patch(AxState(host): AxState<Arc<Host>>, Path(name): Path<String>, body: axum::body::Bytes) -> Response {
    let p = match paused(&host, &name) {
        Ok(p) => p,
        Err((status, message)) => return error(status, message),
    };
    let mut request = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(o)) => o,
        Ok(_) | Err(_) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "the body must be a JSON object: {\"to\": \"earliest\"|\"latest\"}, {\"timestamp\": \"2024-01-01T00:00:00Z\"} \
                 or {\"offsets\": [{\"topic\", \"partition\", \"offset\"}]}"
                    .into(),
            )
        }
    };
    request.insert("op".into(), json!("alter"));
    forward(p, Value::Object(request)).await
}

/// `DELETE /pipelines/{name}/offsets`: moves the committed offsets of a paused pipeline to
/// where its source starts without any (its `start_at` or `start`).
pub async fn delete(AxState(host): AxState<Arc<Host>>, Path(name): Path<String>) -> Response {
    match paused(&host, &name) {
        Ok(p) => forward(p, json!({"op": "reset"})).await,
        Err((status, message)) => error(status, message),
    }
}

/// `weir_source_lag` series for every running source that measures its lag.
pub fn lags(host: &Host) -> Vec<crate::metrics::SourceLag> {
    let mut out = Vec::new();
    for p in host.pipelines() {
        let Some(lag) = p.source_lag() else { continue };
        let (stage, plugin) = p.source_stage().map(|(s, p)| (s.to_owned(), p.to_owned())).unwrap_or_default();
        for part in lag["partitions"].as_array().into_iter().flatten() {
            let (Some(topic), Some(partition), Some(n)) = (part["topic"].as_str(), part["partition"].as_i64(), part["lag"].as_i64()) else {
                continue;
            };
            out.push(crate::metrics::SourceLag {
                pipeline: p.name.clone(),
                stage: stage.clone(),
                plugin: plugin.clone(),
                topic: topic.to_owned(),
                partition,
                lag: n,
            });
        }
    }
    out
}
