//! Request bodies: reading one within its limits (size, silence, a `Content-Length` that
//! lies) and finding the events in it.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use http_body_util::BodyExt;
use weir_plugin::serde_json::{self, value::RawValue};

use crate::source::error;

/// The most of an oversized body read and thrown away so the client can read its 413
/// (a client that sends the whole body before reading, as most do, otherwise sees the
/// connection reset instead of the answer).
const DRAIN_BYTES: u64 = 64 << 20;
/// The longest an oversized body is drained.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// How reading a body ended.
#[derive(Debug)]
pub enum BodyRead {
    /// The whole body.
    Complete(Bytes),
    /// More than the limit (declared or sent).
    TooLarge {
        /// The limit.
        max: usize,
        /// What `Content-Length` declared.
        declared: Option<u64>,
    },
    /// The client stopped before the `Content-Length` it declared.
    Short {
        /// Bytes that arrived.
        received: u64,
        /// What `Content-Length` declared.
        declared: Option<u64>,
    },
    /// No byte arrived for the idle timeout.
    Stalled {
        /// Bytes that arrived.
        received: u64,
        /// What `Content-Length` declared.
        declared: Option<u64>,
        /// The timeout.
        idle: Duration,
    },
}

impl BodyRead {
    /// The answer for a body that was not read whole.
    pub fn response(&self) -> Response {
        let of = |declared: &Option<u64>| declared.map(|d| format!(" of the {d} its Content-Length declared")).unwrap_or_default();
        match self {
            BodyRead::Complete(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the body was read"),
            BodyRead::TooLarge { max, declared } => error(
                StatusCode::PAYLOAD_TOO_LARGE,
                match declared {
                    Some(d) => format!("the body is {d} bytes, larger than the {max} allowed; send fewer events per request"),
                    None => format!("the body is larger than the {max} bytes allowed; send fewer events per request"),
                },
            ),
            BodyRead::Short { received, declared } => error(
                StatusCode::BAD_REQUEST,
                format!("the body ended after {received} bytes{}; send the whole body, or a Content-Length that matches it", of(declared)),
            ),
            BodyRead::Stalled { received, declared, idle } => error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "no byte of the body arrived for {} ms after {received} bytes{}; send the body without pausing",
                    idle.as_millis(),
                    of(declared)
                ),
            ),
        }
    }
}

/// Reads a request body of at most `max` bytes, waiting at most `idle` for each piece.
/// An oversized body is read to its end (within bounds) and thrown away, unless the client
/// waits for `100 Continue` before sending it, so that the client reads the 413.
pub async fn read_body(headers: &HeaderMap, mut body: Body, max: usize, idle: Duration) -> BodyRead {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    let expects_continue =
        headers.get(header::EXPECT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    let too_large = BodyRead::TooLarge { max, declared };
    if declared.is_some_and(|d| d > max as u64 && (expects_continue || d > DRAIN_BYTES)) {
        return too_large;
    }
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(max as u64) as usize);
    let (mut received, mut over) = (0u64, false);
    let drain_until = Instant::now() + DRAIN_TIME;
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) if over => return too_large,
            Err(_) => return BodyRead::Stalled { received, declared, idle },
            Ok(None) => break,
            Ok(Some(Err(_))) if over => return too_large,
            Ok(Some(Err(_))) => return BodyRead::Short { received, declared },
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        received += data.len() as u64;
        if received > max as u64 {
            over = true;
            buf = Vec::new();
        }
        if over {
            if received > DRAIN_BYTES || Instant::now() > drain_until {
                return too_large;
            }
            continue;
        }
        buf.extend_from_slice(&data);
    }
    if over {
        return too_large;
    }
    if declared.is_some_and(|d| d != received) {
        return BodyRead::Short { received, declared };
    }
    BodyRead::Complete(Bytes::from(buf))
}

/// Why a request body is refused.
#[derive(Debug)]
pub enum BodyError {
    /// Not JSON (with line and column).
    Malformed(serde_json::Error),
    /// JSON, but not events: the status to answer and why.
    Refused(StatusCode, String),
}

/// Reads a request body: one JSON object or an array of at most `max_events` objects.
/// Returns the events, as raw JSON borrowed from `body`, and whether it was a single object.
pub fn parse_events(body: &[u8], max_events: usize) -> Result<(Vec<&RawValue>, bool), BodyError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let (events, single): (Vec<&RawValue>, bool) = if first == Some(b'[') {
        (serde_json::from_slice::<Vec<&RawValue>>(body).map_err(BodyError::Malformed)?, false)
    } else {
        (vec![serde_json::from_slice::<&RawValue>(body).map_err(BodyError::Malformed)?], true)
    };
    if events.is_empty() {
        return Err(BodyError::Refused(StatusCode::BAD_REQUEST, "the array holds no events".into()));
    }
    if events.len() > max_events {
        return Err(BodyError::Refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the array holds {} events; the most one request may carry is {max_events}", events.len()),
        ));
    }
    if let Some(i) = events.iter().position(|e| !e.get().starts_with('{')) {
        let what = if single { "the event".to_owned() } else { format!("event {i}") };
        return Err(BodyError::Refused(StatusCode::BAD_REQUEST, format!("{what} is not a JSON object")));
    }
    Ok((events, single))
}
