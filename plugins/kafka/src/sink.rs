//! The `kafka` sink: produces each record to a topic, keyed by the record key, with the
//! record headers as Kafka headers. A batch counts as written only when every message in
//! it has a delivery report.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use weir_plugin::{BatchRef, Context, PluginError, RecordRef, Rejections, Sink};

use crate::config::{describe, SinkConfig};

/// How long start-up checks (metadata, topic creation) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The `kafka` sink.
pub struct KafkaSink {
    config: SinkConfig,
    producer: FutureProducer,
    ctx: Context,
    /// Batches in a row that Kafka did not acknowledge.
    failures: u32,
}

/// After this many unacknowledged batches in a row the producer is replaced: an idempotent
/// producer whose broker lost its state (a restart) may otherwise fail forever.
const FAILURES_BEFORE_NEW_PRODUCER: u32 = 3;

/// Whether a delivery error is the message's own fault and retrying cannot help. Anything
/// else (a broker down, a leader moving, an error this list does not know) is retried:
/// the pipeline pushes back rather than dropping a record on an unknown error.
pub fn permanent(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        e.rdkafka_error_code(),
        Some(
            MessageSizeTooLarge
                | InvalidMessage
                | InvalidMessageSize
                | InvalidRecord
                | InvalidTopic
                | TopicAuthorizationFailed
                | InvalidRequiredAcks
                | UnsupportedCompressionType
        )
    )
}

fn create_topic(config: &SinkConfig, topic: &str, ctx: &Context) -> Result<(), PluginError> {
    let Some(spec) = &config.create_topic else { return Ok(()) };
    let admin: AdminClient<DefaultClientContext> =
        config.client().create().map_err(|e| PluginError::config(format!("cannot create an admin client: {e}")))?;
    let retention = spec.retention_ms.map(|r| r.to_string());
    let mut new = NewTopic::new(topic, spec.partitions, TopicReplication::Fixed(spec.replication));
    if let Some(r) = &retention {
        new = new.set("retention.ms", r);
    }
    let options = AdminOptions::new().operation_timeout(Some(SETUP_TIMEOUT)).request_timeout(Some(SETUP_TIMEOUT));
    let result = weir_plugin::runtime().block_on(admin.create_topics(&[new], &options));
    match result {
        Ok(results) => {
            for r in results {
                match r {
                    Ok(name) => ctx.info(&format!("Created topic {name} ({} partitions).", spec.partitions)),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((name, code)) => return Err(PluginError::retry(format!("cannot create topic {name}: {code}"))),
                }
            }
            Ok(())
        }
        Err(e) => Err(PluginError::retry(format!("cannot create topic {topic}: {e}"))),
    }
}

/// The string at a JSON pointer of a record, opening only the objects and arrays on the
/// way: the record is not parsed whole, so no value elsewhere in it (a number beyond a
/// float's range) can make the field unreadable.
fn string_at(value: &[u8], pointer: &str) -> Option<String> {
    if !pointer.starts_with('/') {
        return None;
    }
    let at = weir_plugin::json::Pointer::parse(pointer).ok()?;
    weir_plugin::json::Doc::parse(value).ok()?.get_str(&at).map(std::borrow::Cow::into_owned)
}

impl KafkaSink {
    fn topic_for<'a>(&'a self, record: &RecordRef<'_>) -> Option<std::borrow::Cow<'a, str>> {
        if let Some(field) = &self.config.topic_field {
            if let Some(t) = string_at(record.value, field).filter(|t| !t.is_empty()) {
                return Some(std::borrow::Cow::Owned(t));
            }
        }
        self.config.topic.as_deref().map(std::borrow::Cow::Borrowed)
    }

    /// Checks the fixed topic exists when the broker answers; an unreachable broker only
    /// warns, since it may come up later and the pipeline pushes back meanwhile.
    fn check_topic(&self) -> Result<(), PluginError> {
        let Some(topic) = &self.config.topic else { return Ok(()) };
        match self.producer.client().fetch_metadata(Some(topic), SETUP_TIMEOUT) {
            Ok(md) => {
                let missing = md.topics().iter().any(|t| t.name() == topic && t.error().is_some());
                if missing {
                    return Err(PluginError::config(format!(
                        "topic {topic:?} does not exist on {}; create it, or set create_topic so the sink creates it",
                        self.config.brokers
                    )));
                }
                Ok(())
            }
            Err(e) => {
                self.ctx.warn(&format!(
                    "Brokers {} not reachable yet ({e}); the sink keeps trying and the pipeline pushes back meanwhile.",
                    self.config.brokers
                ));
                Ok(())
            }
        }
    }
}

impl Sink for KafkaSink {
    type Config = SinkConfig;
    const NAME: &'static str = "kafka";
    const DESCRIPTION: &'static str =
        "Produces records to Kafka (idempotent, acks=all); a batch counts once every message is acknowledged.";

    fn validate(config: &SinkConfig) -> Result<(), PluginError> {
        config.check()
    }

    fn create(config: SinkConfig, ctx: Context) -> Result<Self, PluginError> {
        let client = config.client();
        ctx.log(weir_plugin::Level::Debug, &format!("Kafka producer settings: {}", describe(&client)));
        let producer: FutureProducer =
            client.create().map_err(|e| PluginError::config(format!("cannot create the Kafka producer: {e}")))?;
        if let Some(topic) = &config.topic {
            create_topic(&config, topic, &ctx)?;
        }
        let sink = KafkaSink { config, producer, ctx, failures: 0 };
        sink.check_topic()?;
        Ok(sink)
    }

    fn write(&mut self, batch: &BatchRef<'_>, rejections: &mut Rejections) -> Result<(), PluginError> {
        let result = self.send(batch, rejections);
        match &result {
            Ok(()) => self.ctx.report_health("kafka", &self.config.brokers, true, ""),
            Err(PluginError::Retry { message, .. }) => self.ctx.report_health("kafka", &self.config.brokers, false, message),
            Err(_) => {}
        }
        result
    }

    fn stop(&mut self) -> Result<(), PluginError> {
        self.producer.flush(SETUP_TIMEOUT).map_err(|e| PluginError::retry(format!("flush failed: {e}")))
    }
}

impl KafkaSink {
    /// Sends a batch and waits for every delivery report.
    fn send(&mut self, batch: &BatchRef<'_>, rejections: &mut Rejections) -> Result<(), PluginError> {
        let mut pending = Vec::with_capacity(batch.len());
        let mut immediate: Option<String> = None;
        for (i, r) in batch.iter().enumerate() {
            let Some(topic) = self.topic_for(&r) else {
                rejections.reject(i, "the record names no topic and the sink has no default `topic`");
                continue;
            };
            let mut record = FutureRecord::to(&topic).payload(r.value);
            if let Some(k) = r.key {
                record = record.key(k);
            }
            if let Some(ts) = r.timestamp_ms {
                record = record.timestamp(ts);
            }
            if self.config.headers && !r.headers_raw.is_empty() {
                let mut h = OwnedHeaders::new();
                for (key, value) in r.headers() {
                    h = h.insert(Header { key, value: Some(value) });
                }
                record = record.headers(h);
            }
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push((i, delivery));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        self.producer.poll(Duration::from_millis(5));
                    }
                    Err((e, _)) if permanent(&e) => {
                        rejections.reject(i, &format!("Kafka refused the message: {e}"));
                        break;
                    }
                    Err((e, _)) => {
                        immediate.get_or_insert_with(|| e.to_string());
                        break;
                    }
                }
            }
        }
        let results = weir_plugin::runtime().block_on(async move {
            let mut out = Vec::with_capacity(pending.len());
            for (i, d) in pending {
                out.push((i, d.await));
            }
            out
        });
        let mut retry = immediate;
        for (i, result) in results {
            match result {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) if permanent(&e) => rejections.reject(i, &format!("Kafka refused the message: {e}")),
                Ok(Err((e, _))) => {
                    retry.get_or_insert_with(|| e.to_string());
                }
                Err(_) => {
                    retry.get_or_insert_with(|| "the producer shut down".to_owned());
                }
            }
        }
        let Some(message) = retry else {
            self.failures = 0;
            return Ok(());
        };
        self.failures += 1;
        let fatal = self.producer.client().fatal_error();
        if fatal.is_some() || self.failures >= FAILURES_BEFORE_NEW_PRODUCER {
            self.ctx.warn(&format!("Kafka has not acknowledged {} batches in a row ({message}); starting a new producer.", self.failures));
            self.producer =
                self.config.client().create().map_err(|e| PluginError::retry(format!("cannot re-create the Kafka producer: {e}")))?;
            self.failures = 0;
        }
        Err(PluginError::Retry { message: format!("Kafka did not acknowledge the batch: {message}"), after: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_field_is_read_without_parsing_the_whole_record() {
        let record = br#"{"n":1e999999,"route":{"topic":"t\u002d1","list":["a","b"]}}"#;
        assert_eq!(string_at(record, "/route/topic").as_deref(), Some("t-1"), "a number out of a float's range elsewhere is no matter");
        assert_eq!(string_at(record, "/route/list/1").as_deref(), Some("b"));
        assert_eq!(string_at(record, "/n"), None, "not a string");
        assert_eq!(string_at(record, "/missing"), None);
        assert_eq!(string_at(b"{oops", "/route"), None);
    }
}
