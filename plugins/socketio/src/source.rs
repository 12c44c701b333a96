//! The `socketio` source: a client's event (`log_event`) becomes a record, and the client
//! hears what became of it (`event_logged`, or the acknowledgement it asked for) only once
//! the pipeline acknowledged it.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use socketioxide::extract::{AckSender, SocketRef};
use weir_plugin::serde_json::{self, json, value::RawValue, Value};
use weir_plugin::{Ack, BatchBuf, Context, EmitError, Emitter, Head, Outcome, PluginError, Source};

use crate::config::SourceConfig;
use crate::server::{self, Attached, Role};
use weir_plugin::origins::Origins;

/// A source as the shared server calls it.
pub(crate) struct SourceRole {
    /// The client event it takes.
    pub event: String,
    confirm_event: String,
    emitter: Emitter,
    backpressure_wait: Duration,
    ack_timeout: Duration,
    /// Events taken and not yet answered.
    in_flight: AtomicUsize,
}

/// The `socketio` source.
pub struct SocketIoSource {
    config: SourceConfig,
    ctx: Context,
    role: Option<Arc<SourceRole>>,
    attached: Option<Attached>,
}

impl Source for SocketIoSource {
    type Config = SourceConfig;
    const NAME: &'static str = "socketio";
    const DESCRIPTION: &'static str =
        "Socket.IO server (WebSocket and long-polling) taking a client event as a record; confirms it once the pipeline did.";

    fn validate(config: &SourceConfig) -> Result<(), PluginError> {
        config.check().map_err(PluginError::from)
    }

    fn create(config: SourceConfig, ctx: Context) -> Result<Self, PluginError> {
        Ok(SocketIoSource { config, ctx, role: None, attached: None })
    }

    fn start(&mut self, emitter: Emitter) -> Result<(), PluginError> {
        if self.attached.is_some() {
            return Err(PluginError::fatal("the source was already started"));
        }
        let role = Arc::new(SourceRole {
            event: self.config.event.clone(),
            confirm_event: self.config.confirm_event.clone(),
            emitter,
            backpressure_wait: Duration::from_millis(self.config.backpressure_wait_ms),
            ack_timeout: Duration::from_millis(self.config.ack_timeout_ms.get()),
            in_flight: AtomicUsize::new(0),
        });
        let origins = Origins::new(&self.config.allowed_origins);
        self.attached = Some(server::attach(&self.config.server(), self.ctx, origins, Role::Source(role.clone()))?);
        self.role = Some(role);
        Ok(())
    }

    fn stop(&mut self) -> Result<(), PluginError> {
        // No new events reach this version; those it took are answered first.
        self.attached = None;
        if let Some(role) = self.role.take() {
            let deadline = Instant::now() + role.backpressure_wait + role.ack_timeout + Duration::from_secs(1);
            while role.in_flight.load(SeqCst) > 0 {
                if Instant::now() > deadline {
                    return Err(PluginError::fatal("events taken from Socket.IO clients were not answered in time"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(())
    }
}

/// Decrements the in-flight count when the event is answered (or its task dropped).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl SourceRole {
    /// Takes one client event into the pipeline and answers the client.
    pub(crate) async fn handle(
        &self,
        ctx: &Context,
        socket: SocketRef,
        ip: String,
        data: Option<Box<RawValue>>,
        ack_id: Option<i64>,
        ack: AckSender,
    ) {
        self.in_flight.fetch_add(1, SeqCst);
        let _guard = InFlight(&self.in_flight);
        let answer = match data {
            None => refusal(format!("{} needs one JSON value as its payload", self.event)),
            Some(value) => self.take(&socket.id.to_string(), &ip, &value).await,
        };
        if let Err(e) = server::reply(&socket, &self.confirm_event, ack_id, ack, &answer) {
            ctx.log(weir_plugin::Level::Debug, &format!("Could not answer Socket.IO client {}: {e}", socket.id));
        }
    }

    async fn take(&self, sid: &str, ip: &str, value: &RawValue) -> Value {
        let meta: [(&str, &[u8]); 2] = [("socketio.client_ip", ip.as_bytes()), ("socketio.sid", sid.as_bytes())];
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default();
        let mut batch = BatchBuf::with_capacity(1, value.get().len() + 96);
        batch.push(0, Head { key: None, headers_raw: &[], extra_headers: &meta, timestamp_ms: Some(now_ms) }, value.get().as_bytes());
        let view = batch.as_ref();
        let deadline = Instant::now() + self.backpressure_wait;
        let mut pause = Duration::from_millis(1);
        let sent = loop {
            match tokio::time::timeout(self.ack_timeout, self.emitter.send(&view)).await {
                Ok(Err(EmitError::Full)) if Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                other => break other,
            }
        };
        match sent {
            Ok(Ok(ack)) => answer(value, &ack),
            Ok(Err(EmitError::Full)) => refusal("the pipeline is full; retry later".into()),
            Ok(Err(e)) => refusal(format!("the pipeline is not taking events ({e}); retry later")),
            Err(_) => refusal(format!(
                "the pipeline did not confirm the event within {} ms (a sink is failing or slow); it may still be delivered; retry later",
                self.ack_timeout.as_millis()
            )),
        }
    }
}

fn refusal(error: String) -> Value {
    json!({ "success": false, "error": error })
}

/// The answer for an acknowledged event, as the `http` source answers one event.
fn answer(value: &RawValue, ack: &Ack) -> Value {
    match ack.outcomes.first() {
        Some(o @ (Outcome::Accepted | Outcome::Dropped)) => {
            let event: Value = serde_json::from_str(value.get()).unwrap_or(Value::Null);
            let mut body = json!({ "success": true, "eventType": event.get("eventType"), "timestamp": event.get("timestamp") });
            if *o == Outcome::Dropped {
                body["duplicate"] = Value::Bool(true);
            }
            body
        }
        Some(Outcome::Rejected(reason)) | Some(Outcome::Failed(reason)) => refusal(reason.clone()),
        None => refusal("the pipeline returned no outcome".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn answers_say_what_became_of_the_event() {
        let v = raw(r#"{"eventType":"song_played","timestamp":"2024-01-01T12:00:00.000Z"}"#);
        let ok = answer(&v, &Ack { outcomes: vec![Outcome::Accepted] });
        assert_eq!(ok, json!({"success": true, "eventType": "song_played", "timestamp": "2024-01-01T12:00:00.000Z"}));
        let dup = answer(&v, &Ack { outcomes: vec![Outcome::Dropped] });
        assert_eq!(dup["duplicate"], json!(true));
        let no = answer(&v, &Ack { outcomes: vec![Outcome::Rejected("validate: /: \"userId\" is a required property".into())] });
        assert_eq!(no, json!({"success": false, "error": "validate: /: \"userId\" is a required property"}));
        assert_eq!(answer(&v, &Ack { outcomes: vec![] })["success"], json!(false));
    }

    fn role(emitter: Emitter, wait_ms: u64) -> SourceRole {
        SourceRole {
            event: "log_event".into(),
            confirm_event: "event_logged".into(),
            emitter,
            backpressure_wait: Duration::from_millis(wait_ms),
            ack_timeout: Duration::from_secs(5),
            in_flight: AtomicUsize::new(0),
        }
    }

    #[test]
    fn an_event_becomes_a_record_with_the_client_in_its_headers() {
        let (emitter, emitted) = weir_plugin::mock::mock_emitter(false);
        let role = role(emitter, 0);
        let value = raw(r#"{"eventType":"song_played","n":1.50}"#);
        let answer = weir_plugin::runtime().block_on(role.take("sid-1", "10.1.2.3", &value));
        assert_eq!(answer["success"], true, "{answer}");
        let batches = emitted.batches.lock().unwrap();
        let record = batches[0].as_ref().get(0);
        assert_eq!(record.value, br#"{"eventType":"song_played","n":1.50}"#, "byte for byte");
        assert_eq!(record.header("socketio.client_ip"), Some(&b"10.1.2.3"[..]));
        assert_eq!(record.header("socketio.sid"), Some(&b"sid-1"[..]));
    }

    #[test]
    fn a_full_pipeline_is_answered_retry_later_after_the_wait() {
        let (emitter, emitted) = weir_plugin::mock::mock_emitter(true);
        let role = role(emitter, 100);
        let t = Instant::now();
        let answer = weir_plugin::runtime().block_on(role.take("sid-1", "127.0.0.1", &raw("{}")));
        assert!(t.elapsed() >= Duration::from_millis(100), "kept offering for backpressure_wait_ms");
        assert_eq!(answer, json!({"success": false, "error": "the pipeline is full; retry later"}));
        assert!(emitted.values().is_empty());
    }

    #[test]
    fn stops_at_once_when_nothing_is_in_flight() {
        let host = weir_plugin::mock::MockHost::new();
        let config: SourceConfig = serde_json::from_value(json!({"listen": "127.0.0.1:0"})).unwrap();
        let mut source = SocketIoSource::create(config, host.context()).unwrap();
        let (emitter, _emitted) = weir_plugin::mock::mock_emitter(false);
        source.start(emitter).unwrap();
        assert!(source.start(weir_plugin::mock::mock_emitter(false).0).is_err());
        let t = Instant::now();
        source.stop().unwrap();
        assert!(t.elapsed() < Duration::from_millis(500));
    }
}
