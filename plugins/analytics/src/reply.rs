//! Answers: JSON bodies, and the API's errors with their status.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use weir_plugin::serde_json::{json, Value};

/// An error answered to the client: its status and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// What is wrong, naming the parameter or field.
    pub message: String,
}

impl ApiError {
    /// 422: a parameter is wrong.
    pub fn parameter(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::UNPROCESSABLE_ENTITY, message: message.into() }
    }
    /// 400: the body is wrong.
    pub fn body(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, message: message.into() }
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::NOT_FOUND, message: message.into() }
    }
    /// 503: the database cannot answer now (the reason is logged, not shown).
    pub fn unavailable() -> ApiError {
        ApiError { status: StatusCode::SERVICE_UNAVAILABLE, message: "the analytics database is not available; retry later".into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.status, json!({ "success": false, "error": self.message }))
    }
}

/// A JSON answer.
pub fn json_response(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}
