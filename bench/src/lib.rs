//! What the bench programs share.

use rdkafka::ClientConfig;

/// The settings of the bare consumers (`kafka_bare consume`, `stores_bare kafka-s3`): group
/// `GROUP-<pid>`, no auto-commit, from the earliest offset; plus `KAFKA_SETTINGS`, more
/// librdkafka settings as `name=value` separated by spaces (as the kafka source's
/// `librdkafka` map takes them), to compare the same tuning in both.
pub fn bare_consumer(brokers: &str, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{group}-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("queued.max.messages.kbytes", "16384");
    for pair in std::env::var("KAFKA_SETTINGS").unwrap_or_default().split_whitespace() {
        let (name, value) = pair.split_once('=').expect("KAFKA_SETTINGS holds name=value pairs");
        config.set(name, value);
    }
    config
}

/// The host callbacks for one stage of a pipeline called `bench`, for benchmarks that call
/// a plugin directly.
pub fn stage_host(metrics: &weir::metrics::Metrics, stage: &str, plugin: &str) -> &'static weir_plugin::abi::HostApi {
    weir::ffi::host_api("bench", Default::default(), stage, plugin, ".", metrics.stage("bench", stage, plugin), &Default::default())
}
