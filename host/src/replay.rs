//! Replaying dead letters: `POST /pipelines/{name}/records` offers records to a running
//! pipeline as if its source had emitted them and answers with what became of each, and
//! `weir replay` reads the envelopes a `dead_letter` sink wrote (a file of JSON lines, or a
//! Kafka topic read with the kafka plugin in-process), keeps those asked for and posts
//! their original records there, each marked with `weir.replay` headers.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::{Path as UrlPath, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use weir_plugin::abi::outcome;
use weir_plugin::batch::BatchBuf;
use weir_plugin::Head;

use crate::admin::error;
use crate::host::Host;

/// Most records one request may carry.
pub const MAX_RECORDS: usize = 10_000;
/// How long a request waits for room in a full pipeline.
const ROOM_WAIT: Duration = Duration::from_secs(30);
/// How long it waits for the sinks.
const ACK_WAIT: Duration = Duration::from_secs(120);

/// One record to offer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offered {
    /// The record's value as JSON, kept as written.
    #[serde(default)]
    pub value: Option<Box<RawValue>>,
    /// Or its value as text, for a record that is not JSON.
    #[serde(default)]
    pub text: Option<String>,
    /// Its key.
    #[serde(default)]
    pub key: Option<String>,
    /// Its headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// The body of `POST /pipelines/{name}/records`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    /// The records, in order.
    pub records: Vec<Offered>,
}

/// `POST /pipelines/{name}/records`: offers the records to the pipeline as one batch, as
/// if its source had emitted them, and answers once every sink is done with them:
/// `{"accepted", "rejected": [{"index", "reason"}], "failed": [{"index", "reason"}], "dropped"}`.
pub async fn post(AxState(host): AxState<Arc<Host>>, UrlPath(name): UrlPath<String>, body: axum::body::Bytes) -> Response {
    let Some(p) = host.pipelines().into_iter().find(|p| p.name == name) else {
        return error(StatusCode::NOT_FOUND, format!("no pipeline called {name:?}"));
    };
    let offer: Offer = match serde_json::from_slice(&body) {
        Ok(o) => o,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{e}; the body is {{\"records\": [{{\"value\": JSON, or \"text\": \"…\", \"key\"?, \"headers\"?: {{…}}}}]}}"),
            )
        }
    };
    if offer.records.is_empty() || offer.records.len() > MAX_RECORDS {
        return error(StatusCode::UNPROCESSABLE_ENTITY, format!("give 1 to {MAX_RECORDS} records, not {}", offer.records.len()));
    }
    let mut batch = BatchBuf::new();
    for (i, r) in offer.records.iter().enumerate() {
        let value = match (&r.value, &r.text) {
            (Some(v), None) => v.get().as_bytes(),
            (None, Some(t)) => t.as_bytes(),
            _ => return error(StatusCode::UNPROCESSABLE_ENTITY, format!("record {i}: give exactly one of `value` and `text`")),
        };
        let headers: Vec<(&str, &[u8])> = r.headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect();
        let head = Head { key: r.key.as_deref().map(str::as_bytes), extra_headers: &headers, ..Head::default() };
        batch.push(i as u32, head, value);
    }
    let answer = tokio::task::spawn_blocking(move || {
        let ack = p.inject(&batch, ROOM_WAIT)?;
        ack.recv_timeout(ACK_WAIT).map_err(|_| format!("the sinks did not finish with the records within {} s", ACK_WAIT.as_secs()))
    })
    .await;
    match answer {
        Ok(Ok((codes, reasons))) => {
            let pick = |code: u8| -> Vec<Value> {
                codes
                    .iter()
                    .zip(&reasons)
                    .enumerate()
                    .filter(|(_, (c, _))| **c == code)
                    .map(|(i, (_, r))| json!({"index": i, "reason": r}))
                    .collect()
            };
            let accepted = codes.iter().filter(|c| **c == outcome::ACCEPTED).count();
            let dropped = codes.iter().filter(|c| **c == outcome::DROPPED).count();
            Json(json!({"accepted": accepted, "rejected": pick(outcome::REJECTED), "failed": pick(outcome::FAILED), "dropped": dropped}))
                .into_response()
        }
        Ok(Err(e)) => {
            let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, format!("pipeline {name:?}: {e}"));
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
            resp
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A dead letter, as a `dead_letter` sink writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct Letter {
    /// The record as it came to the stage that refused it (JSON as written, or a string for
    /// a record that was not JSON).
    pub record: Box<RawValue>,
    /// The stage that refused it.
    pub stage: String,
    /// `rejected` or `failed`.
    pub outcome: String,
    /// Why.
    pub reason: String,
    /// When (RFC 3339).
    pub time: String,
    /// Its key.
    #[serde(default)]
    pub key: Option<String>,
    /// Its headers.
    #[serde(default)]
    pub headers: BTreeMap<String, Value>,
}

/// Which dead letters to replay.
#[derive(Debug, Default, Clone)]
pub struct Pick {
    /// Only those this stage refused.
    pub stage: Option<String>,
    /// Only those whose reason contains this.
    pub reason: Option<String>,
    /// Only those refused at or after this time.
    pub since: Option<SystemTime>,
    /// Only those refused before this time.
    pub until: Option<SystemTime>,
}

impl Pick {
    /// Whether `letter` is one to replay.
    pub fn takes(&self, letter: &Letter) -> bool {
        let time = humantime::parse_rfc3339_weak(&letter.time).ok();
        self.stage.as_ref().is_none_or(|s| *s == letter.stage)
            && self.reason.as_ref().is_none_or(|r| letter.reason.contains(r.as_str()))
            && self.since.is_none_or(|s| time.is_some_and(|t| t >= s))
            && self.until.is_none_or(|u| time.is_some_and(|t| t < u))
    }
}

/// The dead letters of a file of JSON lines; the error names the line that is not one.
pub fn read_file(path: &Path) -> Result<Vec<Letter>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_lines(text.lines().map(str::to_owned), &path.display().to_string())
}

fn parse_lines(lines: impl Iterator<Item = String>, what: &str) -> Result<Vec<Letter>, String> {
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let letter: Letter = serde_json::from_str(&line)
            .map_err(|e| format!("{what}:{}: not a dead letter ({e}); a dead_letter sink writes {{\"record\",\"stage\",\"outcome\",\"reason\",\"time\",\"key\",\"headers\"}}", i + 1))?;
        out.push(letter);
    }
    Ok(out)
}

/// A record to offer, as the body of `POST /pipelines/{name}/records` holds it.
#[derive(Debug, serde::Serialize)]
pub struct ToOffer<'a> {
    /// The value as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<&'a RawValue>,
    /// Or its text, for a record that was not JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Its key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<&'a str>,
    /// Its headers and the replay's.
    pub headers: BTreeMap<String, String>,
}

/// The record to offer for `letter`: its original value (as written), key and headers,
/// and headers saying it is replayed, from which stage and why it was refused. A record
/// that was not JSON was kept as a JSON string of its text, and goes back as that text.
pub fn offered(letter: &Letter) -> ToOffer<'_> {
    let mut headers: BTreeMap<String, String> =
        letter.headers.iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned))).collect();
    headers.insert("weir.replay".into(), "true".into());
    headers.insert("weir.replay.stage".into(), letter.stage.clone());
    headers.insert("weir.replay.reason".into(), letter.reason.clone());
    headers.insert("weir.replay.time".into(), letter.time.clone());
    let text = serde_json::from_str::<String>(letter.record.get()).ok().filter(|t| serde_json::from_str::<&RawValue>(t).is_err());
    let value = text.is_none().then_some(&*letter.record);
    ToOffer { value, text, key: letter.key.as_deref(), headers }
}

/// The dead letters of a Kafka topic, read from its beginning with the kafka plugin's source
/// in this process (as a group of its own), until nothing more comes for `idle`.
pub fn read_topic(registry: &crate::loader::Registry, brokers: &str, topic: &str, idle: Duration) -> Result<Vec<Letter>, String> {
    use crate::ffi::{AckGuard, Instance, Intake};
    use weir_plugin::abi::{Kind, Status};

    struct Collect {
        lines: Mutex<Vec<String>>,
        last: Mutex<std::time::Instant>,
    }
    impl Intake for Collect {
        fn offer(&self, batch: BatchBuf, ack: AckGuard) -> Result<(), (Status, AckGuard)> {
            let n = batch.len();
            let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
            for r in batch.as_ref().iter() {
                lines.push(String::from_utf8_lossy(r.value).into_owned());
            }
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
            ack.send(&vec![outcome::ACCEPTED; n], &vec![String::new(); n]);
            Ok(())
        }
        fn finish(&self) {}
    }

    let plugin = registry.get("kafka", Kind::SOURCE).map_err(|e| format!("cannot read a topic: {e}"))?.clone();
    let group = format!("weir-replay-{}", std::process::id());
    let config = json!({"brokers": brokers, "topics": [topic], "group_id": group, "start": "earliest"}).to_string();
    let metrics = crate::metrics::Metrics::default();
    let host = crate::ffi::host_api(
        "replay",
        Default::default(),
        "kafka",
        "kafka",
        ".",
        metrics.stage("replay", "kafka", "kafka"),
        &Default::default(),
    );
    let mut source = Instance::create(&plugin, &config, host).map_err(|e| format!("cannot read {topic}: {e}"))?;
    let collect = Arc::new(Collect { lines: Mutex::default(), last: Mutex::new(std::time::Instant::now()) });
    source.start(crate::ffi::emitter(collect.clone())).map_err(|e| format!("cannot read {topic}: {e}"))?;
    // Until nothing new came for `idle` (the first records may take a group join to come).
    let started = std::time::Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let quiet = collect.last.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
        let any = !collect.lines.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
        if (any && quiet >= idle) || (!any && started.elapsed() >= idle * 10) {
            break;
        }
    }
    let _ = source.stop();
    let lines = std::mem::take(&mut *collect.lines.lock().unwrap_or_else(|p| p.into_inner()));
    parse_lines(lines.into_iter(), &format!("{topic} (message"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(line: &str) -> Letter {
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn letters_are_picked_by_stage_reason_and_time_and_offered_with_replay_headers() {
        let l = letter(
            r#"{"record":{"id":1.10},"stage":"postgres","outcome":"failed","reason":"connection refused","time":"2026-12-07T10:00:00.000Z","key":"k1","headers":{"kafka.offset":"7"}}"#,
        );
        let at = |t: &str| humantime::parse_rfc3339_weak(t).ok();
        assert!(Pick::default().takes(&l));
        assert!(Pick { stage: Some("postgres".into()), reason: Some("refused".into()), ..Pick::default() }.takes(&l));
        assert!(!Pick { stage: Some("validate".into()), ..Pick::default() }.takes(&l));
        assert!(Pick { since: at("2026-12-07T09:00:00Z"), until: at("2026-12-07T11:00:00Z"), ..Pick::default() }.takes(&l));
        assert!(!Pick { since: at("2026-12-07T10:00:01Z"), ..Pick::default() }.takes(&l));
        let o = serde_json::to_string(&offered(&l)).unwrap();
        assert!(o.starts_with(r#"{"value":{"id":1.10},"key":"k1","headers":{"#), "the value as written: {o}");
        let o: Value = serde_json::from_str(&o).unwrap();
        assert_eq!(o["headers"]["weir.replay"], "true");
        assert_eq!(o["headers"]["weir.replay.stage"], "postgres");
        assert_eq!(o["headers"]["kafka.offset"], "7");
        let text = letter(r#"{"record":"not json","stage":"validate","outcome":"rejected","reason":"x","time":"2026-12-07T10:00:00Z"}"#);
        assert_eq!(offered(&text).text.as_deref(), Some("not json"));
        let e = parse_lines(["{}".to_owned()].into_iter(), "dl.jsonl").unwrap_err();
        assert!(e.starts_with("dl.jsonl:1: not a dead letter"), "{e}");
    }
}
