//! The live console: a page served by the admin API (`GET /`) showing each pipeline as a
//! graph of its stages with live rates, queue depths, errors and state, and a tap of the
//! records passing any stage. Every asset is in the binary; the page asks nothing of any
//! other origin (its Content-Security-Policy allows only the API itself) and reads the same
//! API a program does (`/pipelines`, `/pipelines/{name}/tap`), with the admin token when one
//! is set (typed into the page, kept for the browser tab only).

use axum::http::header;
use axum::response::IntoResponse;

/// Headers of every console asset: nothing from elsewhere, no framing, not cached.
fn headers(content_type: &'static str) -> [(header::HeaderName, &'static str); 5] {
    [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ]
}

/// `GET /`: the console.
pub async fn page() -> impl IntoResponse {
    (headers("text/html; charset=utf-8"), include_str!("index.html"))
}

/// `GET /console.js`.
pub async fn script() -> impl IntoResponse {
    (headers("text/javascript; charset=utf-8"), include_str!("console.js"))
}

/// `GET /console.css`.
pub async fn style() -> impl IntoResponse {
    (headers("text/css; charset=utf-8"), include_str!("console.css"))
}
