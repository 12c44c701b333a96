//! The dead-letter sink's queue and the envelopes refused records travel in.

use super::*;

/// The dead-letter sink's queue.
#[derive(Clone)]
pub(super) struct DeadLetters {
    pub(super) queue: SinkQueue,
}

/// Records bound for the dead-letter sink, as envelopes, with their source origins.
#[derive(Default)]
pub(super) struct Letters {
    pub(super) batch: BatchBuf,
    pub(super) origins: Vec<u32>,
}

impl Letters {
    /// Adds `record` refused at `stage` as an envelope.
    pub(super) fn add(&mut self, record: &weir_plugin::RecordRef<'_>, origin: u32, stage: &str, outcome: &str, reason: &str) {
        /// The record as it came (JSON as written, numbers keep their digits), or as text.
        #[derive(Serialize)]
        #[serde(untagged)]
        enum Recorded<'a> {
            Json(&'a serde_json::value::RawValue),
            Text(String),
        }
        #[derive(Serialize)]
        struct Envelope<'a> {
            record: Recorded<'a>,
            stage: &'a str,
            outcome: &'a str,
            reason: &'a str,
            time: String,
            key: Option<String>,
            headers: serde_json::Map<String, serde_json::Value>,
        }
        let envelope = Envelope {
            record: serde_json::from_slice(record.value)
                .map(Recorded::Json)
                .unwrap_or_else(|_| Recorded::Text(String::from_utf8_lossy(record.value).into_owned())),
            stage,
            outcome,
            reason,
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            key: record.key.map(|k| String::from_utf8_lossy(k).into_owned()),
            headers: record.headers().map(|(k, v)| (k.to_owned(), String::from_utf8_lossy(v).into_owned().into())).collect(),
        };
        let envelope = serde_json::to_string(&envelope).unwrap_or_default();
        let marks: [(&str, &[u8]); 3] = [
            ("weir.dead_letter.stage", stage.as_bytes()),
            ("weir.dead_letter.outcome", outcome.as_bytes()),
            ("weir.dead_letter.reason", reason.as_bytes()),
        ];
        let n = self.origins.len() as u32;
        self.batch.push(n, weir_plugin::Head { extra_headers: &marks, ..weir_plugin::Head::from(record) }, envelope.as_bytes());
        self.origins.push(origin);
    }
}

impl DeadLetters {
    /// Queues `letters` for the dead-letter sink; the source's acknowledgement waits for it.
    pub(super) fn send(&self, letters: Letters, tracker: &Arc<Tracker>, trace: Option<SpanContext>) {
        if letters.origins.is_empty() {
            return;
        }
        tracker.remaining.fetch_add(1, Relaxed);
        let job =
            SinkJob { batch: Arc::new(Current::Host(letters.batch)), origins: Arc::new(letters.origins), tracker: tracker.clone(), trace };
        if self.queue.send(job).is_err() {
            self.queue.metrics.errors.fetch_add(1, Relaxed);
            tracing::error!("The dead-letter sink has stopped; refused records could not be kept.");
            tracker.done();
        }
    }
}
