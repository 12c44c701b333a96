//! Per-stage metrics, measured by the host around every plugin call, and their
//! Prometheus text exposition.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use weir_plugin::metrics::exposition::{self, counter, family, gauge, histogram, number, Collector, DescriptorEncoder, MetricType};

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 14] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(d.as_nanos() as u64, Relaxed);
    }
}

/// A histogram's counts, summed over the versions of a stage.
#[derive(Debug, Default, Clone)]
struct HistogramTotals {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum_nanos: u64,
}

impl HistogramTotals {
    fn add(&mut self, h: &Histogram) {
        for (t, c) in self.counts.iter_mut().zip(&h.counts) {
            *t += c.load(Relaxed);
        }
        self.count += h.count.load(Relaxed);
        self.sum_nanos += h.sum_nanos.load(Relaxed);
    }

    fn merge(&mut self, other: &HistogramTotals) {
        for (t, c) in self.counts.iter_mut().zip(&other.counts) {
            *t += c;
        }
        self.count += other.count;
        self.sum_nanos += other.sum_nanos;
    }
}

/// One series (a pipeline, stage and plugin): the stage versions running now and the
/// final counts of those replaced before, added up. Counters so go on across reloads and
/// restarts instead of starting again from the new version's count, and while an old and a
/// new version run side by side both add to the same series.
#[derive(Debug, Default, Clone)]
struct Totals {
    /// The series' labels (`pipeline`, `stage`, `plugin`).
    labels: Labels,
    counters: [u64; 7],
    queue_depth: i64,
    latency: HistogramTotals,
    ack_latency: HistogramTotals,
    outcomes: [u64; 4],
    custom: BTreeMap<String, Custom>,
    /// Running versions' dependency reports: down wins over up.
    health: BTreeMap<String, bool>,
}

impl Totals {
    /// Adds a stage's counts; `running`: also its gauges (a replaced version's gauges are
    /// not carried: they describe a state that is gone).
    fn add(&mut self, s: &StageMetrics, running: bool) {
        if self.labels.is_empty() {
            self.labels = s.labels.clone();
        }
        let counters = [&s.records_in, &s.records_out, &s.rejected, &s.dropped, &s.errors, &s.batches, &s.backpressure];
        for (t, c) in self.counters.iter_mut().zip(counters) {
            *t += c.load(Relaxed);
        }
        if running {
            self.queue_depth += s.queue_depth.load(Relaxed).max(0);
            for (dependency, h) in s.health.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                let up = self.health.entry(dependency.clone()).or_insert(true);
                *up &= h.up;
            }
        }
        self.latency.add(&s.latency);
        self.ack_latency.add(&s.ack_latency);
        for (t, o) in self.outcomes.iter_mut().zip(&s.outcomes) {
            *t += o.load(Relaxed);
        }
        for (name, c) in s.custom.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if c.counter || running {
                self.add_custom(name, c);
            }
        }
    }

    fn add_custom(&mut self, name: &str, c: &Custom) {
        let entry = self.custom.entry(name.to_owned()).or_insert_with(|| Custom { value: 0.0, ..c.clone() });
        entry.value += c.value;
    }

    /// Adds the counts carried from replaced versions.
    fn merge(&mut self, other: &Totals) {
        if self.labels.is_empty() {
            self.labels = other.labels.clone();
        }
        for (t, c) in self.counters.iter_mut().zip(&other.counters) {
            *t += c;
        }
        self.queue_depth += other.queue_depth;
        self.latency.merge(&other.latency);
        self.ack_latency.merge(&other.ack_latency);
        for (t, o) in self.outcomes.iter_mut().zip(&other.outcomes) {
            *t += o;
        }
        for (name, c) in &other.custom {
            self.add_custom(name, c);
        }
    }
}

/// A metric a plugin reported through the host.
#[derive(Debug, Clone, Serialize)]
pub struct Custom {
    /// Counter or gauge.
    pub counter: bool,
    /// Help text.
    pub help: String,
    /// Current value.
    pub value: f64,
}

/// Everything measured for one stage.
#[derive(Debug, Default)]
pub struct StageMetrics {
    /// `pipeline`, `stage`, `plugin`: which series it adds to.
    labels: Labels,
    /// Records handed to the stage.
    pub records_in: AtomicU64,
    /// Records the stage passed on (for a source: emitted; for a sink: delivered).
    pub records_out: AtomicU64,
    /// Records the stage refused.
    pub rejected: AtomicU64,
    /// Records a transform dropped on purpose.
    pub dropped: AtomicU64,
    /// Failed calls (errors, panics, refused batches).
    pub errors: AtomicU64,
    /// Batches handled.
    pub batches: AtomicU64,
    /// Batches a source offered while the pipeline was full (pushed back).
    pub backpressure: AtomicU64,
    /// Batches waiting in front of the stage.
    pub queue_depth: AtomicI64,
    /// Time per call.
    pub latency: Histogram,
    /// Sources: time from emitting a batch to its acknowledgement.
    pub ack_latency: Histogram,
    /// Sources: records acknowledged, by outcome code (accepted, rejected, failed, dropped).
    pub outcomes: [AtomicU64; 4],
    /// Metrics the plugin reports.
    pub custom: Mutex<BTreeMap<String, Custom>>,
    /// What the stage last reported of each external system it depends on (ABI minor 4).
    pub health: Mutex<BTreeMap<String, DependencyHealth>>,
    /// The records it passes on, while someone reads them (the console, `weir tap`).
    pub tap: crate::tap::Tap,
}

/// The last report of a stage on one external system it depends on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DependencyHealth {
    /// Whether it answers.
    pub up: bool,
    /// Where it is (`s3://event-archive`, `127.0.0.1:9092`), as the plugin names it.
    pub target: String,
    /// Why it does not answer.
    pub message: Option<String>,
    /// Since when `up` has had its value (RFC 3339).
    pub since: String,
}

impl StageMetrics {
    /// Metrics for one stage.
    pub fn new(pipeline: &str, stage: &str, plugin: &str) -> Self {
        StageMetrics {
            labels: vec![("pipeline", pipeline.to_owned()), ("stage", stage.to_owned()), ("plugin", plugin.to_owned())],
            ..Default::default()
        }
    }

    /// Updates a plugin metric.
    pub fn custom(&self, name: &str, help: &str, counter: bool, value: f64) {
        let mut map = self.custom.lock().unwrap_or_else(|p| p.into_inner());
        // Plugins report per batch: the name is copied only the first time.
        if !map.contains_key(name) {
            map.insert(name.to_owned(), Custom { counter, help: help.to_owned(), value: 0.0 });
        }
        let Some(entry) = map.get_mut(name) else { return };
        if counter {
            entry.value += value;
        } else {
            entry.value = value;
        }
    }

    /// Keeps a stage's report on `dependency`; `since` moves only when `up` changes.
    pub fn report_health(&self, dependency: &str, target: &str, up: bool, message: &str) {
        let mut map = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let message = Some(message.to_owned()).filter(|m| !m.is_empty());
        match map.get_mut(dependency) {
            Some(h) if h.up == up => {
                if h.target != target {
                    h.target = target.to_owned();
                }
                h.message = message;
            }
            _ => {
                let since = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
                if !up {
                    tracing::warn!(stage = %self.labels[1].1, dependency, target, "Dependency down: {}", message.as_deref().unwrap_or("no answer"));
                } else if map.contains_key(dependency) {
                    tracing::info!(stage = %self.labels[1].1, dependency, target, "Dependency up again.");
                }
                map.insert(dependency.to_owned(), DependencyHealth { up, target: target.to_owned(), message, since });
            }
        }
    }

    /// The stage's name.
    pub fn stage_name(&self) -> &str {
        &self.labels[1].1
    }

    /// The stage's health reports, by dependency.
    pub fn health(&self) -> BTreeMap<String, DependencyHealth> {
        self.health.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A plugin gauge's value, if reported.
    pub fn gauge(&self, name: &str) -> Option<f64> {
        self.custom.lock().unwrap_or_else(|p| p.into_inner()).get(name).map(|c| c.value)
    }
}

/// All stages' metrics and the host's own.
#[derive(Debug, Default)]
pub struct Metrics {
    stages: Mutex<Vec<Arc<StageMetrics>>>,
    /// By labels: the final counts of stage versions replaced while the series goes on.
    carried: Mutex<BTreeMap<Labels, Totals>>,
    /// Plugin libraries that could not be used.
    pub plugin_load_failures: AtomicU64,
    /// Plugin libraries loaded.
    pub plugin_libraries: AtomicU64,
    /// Pipelines by state name.
    pub pipeline_states: Mutex<BTreeMap<String, String>>,
    /// Reloads that applied every change.
    pub reloads_ok: AtomicU64,
    /// Reloads that left at least one pipeline as it was because its new version was invalid.
    pub reloads_failed: AtomicU64,
}

/// Names a plugin metric: `weir_plugin_<name>`, counters ending in `_total`.
fn plugin_metric_name(name: &str, counter: bool) -> String {
    let clean: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    let mut full = format!("weir_plugin_{clean}");
    if counter && !full.ends_with("_total") {
        full.push_str("_total");
    }
    full
}

impl Metrics {
    /// Registers a stage.
    pub fn stage(&self, pipeline: &str, stage: &str, plugin: &str) -> Arc<StageMetrics> {
        let m = Arc::new(StageMetrics::new(pipeline, stage, plugin));
        self.stages.lock().unwrap_or_else(|p| p.into_inner()).push(m.clone());
        m
    }

    /// Removes the stages of a pipeline version that stopped. Where another version with
    /// the same labels runs (the one that replaced it), the stopped one's counts carry into
    /// the series; otherwise (the pipeline or the stage is gone) the series is forgotten.
    pub fn remove(&self, stages: &[Arc<StageMetrics>]) {
        let mut live = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|s| !stages.iter().any(|r| Arc::ptr_eq(r, s)));
        let mut carried = self.carried.lock().unwrap_or_else(|p| p.into_inner());
        for r in stages {
            if live.iter().any(|s| s.labels == r.labels) {
                carried.entry(r.labels.clone()).or_default().add(r, false);
            } else {
                carried.remove(&r.labels);
            }
        }
    }

    /// Every series, in the order its stages were registered: running versions plus what
    /// replaced ones carried.
    fn series(&self) -> Vec<Totals> {
        let stages = self.stages.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let carried = self.carried.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut series: Vec<Totals> = Vec::with_capacity(stages.len());
        for s in &stages {
            match series.iter_mut().find(|t| t.labels == s.labels) {
                Some(t) => t.add(s, true),
                None => {
                    let mut t = Totals::default();
                    t.add(s, true);
                    series.push(t);
                }
            }
        }
        for c in carried.into_values() {
            match series.iter_mut().find(|t| t.labels == c.labels) {
                Some(t) => t.merge(&c),
                None => series.push(c),
            }
        }
        series
    }

    /// The Prometheus text exposition, encoded by prometheus-client.
    pub fn render(&self) -> String {
        self.render_with(Vec::new())
    }

    /// [`Metrics::render`] with the sources' lag per partition.
    pub fn render_with(&self, lags: Vec<SourceLag>) -> String {
        let spans = crate::telemetry::stats();
        let scrape = Scrape {
            series: self.series(),
            states: self.pipeline_states.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            load_failures: self.plugin_load_failures.load(Relaxed),
            libraries: self.plugin_libraries.load(Relaxed),
            spans: [&spans.exported, &spans.dropped_queue_full, &spans.dropped_export_failed].map(|c| c.load(Relaxed)),
            reloads: [self.reloads_ok.load(Relaxed), self.reloads_failed.load(Relaxed)],
            lags,
        };
        exposition::encode(scrape)
    }
}

/// Label pairs of one series, in order.
type Labels = exposition::Labels<&'static str>;

/// What one scrape shows.
#[derive(Debug)]
struct Scrape {
    series: Vec<Totals>,
    states: BTreeMap<String, String>,
    load_failures: u64,
    libraries: u64,
    /// Host spans exported, dropped with the queue full, dropped when the export failed.
    spans: [u64; 3],
    /// Reloads that applied every change, and those that did not.
    reloads: [u64; 2],
    /// The sources' lag per partition.
    lags: Vec<SourceLag>,
}

/// A source's lag on one partition, as it last measured it.
#[derive(Debug, Clone)]
pub struct SourceLag {
    pub pipeline: String,
    pub stage: String,
    pub plugin: String,
    pub topic: String,
    pub partition: i64,
    /// Records not settled yet.
    pub lag: i64,
}

/// A histogram's figures as the exposition takes them.
fn buckets(h: &HistogramTotals) -> (f64, u64, Vec<(f64, u64)>) {
    (h.sum_nanos as f64 / 1e9, h.count, BUCKETS.iter().copied().zip(h.counts.iter().copied()).collect())
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        use MetricType::{Counter, Gauge, Histogram};
        let enc = &mut enc;
        family(enc, "weir_build_info", "Weir version.", Gauge, [(vec![("version", env!("CARGO_PKG_VERSION").to_owned())], 1)], gauge)?;
        let failures = "Plugin libraries that could not be used.";
        family(enc, "weir_plugin_load_failures_total", failures, Counter, [(Labels::new(), self.load_failures)], counter)?;
        family(enc, "weir_plugin_libraries", "Plugin libraries loaded.", Gauge, [(Labels::new(), self.libraries as i64)], gauge)?;
        let spans = ["exported", "dropped_queue_full", "dropped_export_failed"]
            .iter()
            .zip(self.spans)
            .map(|(o, n)| (vec![("outcome", (*o).to_owned())], n));
        family(enc, "weir_telemetry_spans_total", "Host trace spans, by what became of them.", Counter, spans, counter)?;
        let reloads = ["ok", "failed"].iter().zip(self.reloads).map(|(r, n)| (vec![("result", (*r).to_owned())], n));
        family(enc, "weir_reloads_total", "Reloads, by result.", Counter, reloads, counter)?;
        let up = self
            .states
            .iter()
            .map(|(name, state)| (vec![("pipeline", name.clone()), ("state", state.clone())], i64::from(state == "running")));
        family(enc, "weir_pipeline_up", "Whether the pipeline is running (1) or not (0).", Gauge, up, gauge)?;
        const COUNTERS: [(&str, &str); 7] = [
            ("weir_stage_records_in_total", "Records handed to the stage."),
            ("weir_stage_records_out_total", "Records the stage passed on (sources: emitted; sinks: delivered)."),
            ("weir_stage_records_rejected_total", "Records the stage refused, with a reason."),
            ("weir_stage_records_dropped_total", "Records a transform dropped on purpose (for example duplicates)."),
            ("weir_stage_errors_total", "Failed calls into the stage (errors, panics, refused batches)."),
            ("weir_stage_batches_total", "Batches the stage handled."),
            ("weir_stage_backpressure_total", "Batches a source offered while the pipeline was full (pushed back)."),
        ];
        for (i, (name, help)) in COUNTERS.iter().enumerate() {
            family(enc, name, help, Counter, self.series.iter().map(|t| (t.labels.clone(), t.counters[i])), counter)?;
        }
        let depth = "Batches waiting in front of the stage (sources: between the source and the transforms).";
        family(enc, "weir_stage_queue_depth", depth, Gauge, self.series.iter().map(|t| (t.labels.clone(), t.queue_depth)), gauge)?;
        let up = self.series.iter().flat_map(|t| {
            t.health.iter().map(|(dependency, up)| {
                let mut labels = t.labels.clone();
                labels.push(("dependency", dependency.clone()));
                (labels, i64::from(*up))
            })
        });
        let help = "Whether an external system the stage depends on answers (1) or not (0), as the stage last reported.";
        family(enc, "weir_stage_up", help, Gauge, up, gauge)?;
        let lags = self.lags.iter().map(|l| {
            let labels = vec![
                ("pipeline", l.pipeline.clone()),
                ("stage", l.stage.clone()),
                ("plugin", l.plugin.clone()),
                ("topic", l.topic.clone()),
                ("partition", l.partition.to_string()),
            ];
            (labels, l.lag)
        });
        let help = "Records of a partition its source has not settled yet: the high watermark less the settled offset, as last measured.";
        family(enc, "weir_source_lag", help, Gauge, lags, gauge)?;
        let sources = || self.series.iter().filter(|t| t.ack_latency.count > 0);
        let outcomes = sources().flat_map(|t| {
            ["accepted", "rejected", "failed", "dropped"].iter().zip(t.outcomes).map(|(name, n)| {
                let mut labels = t.labels.clone();
                labels.push(("outcome", (*name).to_owned()));
                (labels, n)
            })
        });
        let records = "Records its source emitted, by their acknowledged outcome (accepted, rejected, failed, dropped).";
        family(enc, "weir_pipeline_records_total", records, Counter, outcomes, counter)?;
        let latency: Vec<_> = self.series.iter().map(|t| (t.labels.clone(), buckets(&t.latency))).collect();
        let latency = latency.iter().map(|(l, (sum, count, b))| (l.clone(), (*sum, *count, b.as_slice())));
        family(enc, "weir_stage_latency_seconds", "Time per call into the stage.", Histogram, latency, histogram)?;
        let ack: Vec<_> = sources().map(|t| (t.labels.clone(), buckets(&t.ack_latency))).collect();
        let ack = ack.iter().map(|(l, (sum, count, b))| (l.clone(), (*sum, *count, b.as_slice())));
        let help = "Time from a source emitting a batch to its acknowledgement (delivery to every sink, or acceptance).";
        family(enc, "weir_pipeline_ack_latency_seconds", help, Histogram, ack, histogram)?;
        let mut custom: BTreeMap<String, (&Custom, Vec<(Labels, (f64, bool))>)> = BTreeMap::new();
        for t in &self.series {
            for (n, c) in &t.custom {
                custom
                    .entry(plugin_metric_name(n, c.counter))
                    .or_insert_with(|| (c, Vec::new()))
                    .1
                    .push((t.labels.clone(), (c.value, c.counter)));
            }
        }
        for (name, (meta, series)) in custom {
            let kind = if meta.counter { Counter } else { Gauge };
            family(enc, &name, &meta.help.replace('\n', " "), kind, series, number)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_stage_series_histogram_and_plugin_metrics() {
        let m = Metrics::default();
        let s = m.stage("p", "ws", "websocket");
        s.records_in.fetch_add(3, Relaxed);
        s.latency.observe(Duration::from_micros(300));
        s.custom("connected_clients", "Clients.", false, 2.0);
        s.custom("slow_clients_disconnected", "Slow.", true, 1.0);
        let text = m.render();
        assert!(text.contains("weir_stage_records_in_total{pipeline=\"p\",stage=\"ws\",plugin=\"websocket\"} 3"), "{text}");
        assert!(
            text.contains("weir_stage_latency_seconds_bucket{pipeline=\"p\",stage=\"ws\",plugin=\"websocket\",le=\"0.0005\"} 1"),
            "{text}"
        );
        assert!(text.contains("weir_plugin_connected_clients{pipeline=\"p\",stage=\"ws\",plugin=\"websocket\"} 2"), "{text}");
        assert!(text.contains("weir_plugin_slow_clients_disconnected_total{"), "{text}");
    }

    #[test]
    fn counters_go_on_across_versions_and_gauges_do_not_carry() {
        let m = Metrics::default();
        let series = |m: &Metrics, name: &str| {
            let text = m.render();
            let prefix = format!("{name}{{pipeline=\"p\",stage=\"file\",plugin=\"file\"}} ");
            let values: Vec<f64> = text.lines().filter_map(|l| l.strip_prefix(&prefix)).map(|v| v.parse().unwrap()).collect();
            assert!(values.len() <= 1, "one series per label set, not one per version:\n{text}");
            values.first().copied()
        };
        let v1 = m.stage("p", "file", "file");
        v1.records_in.fetch_add(10, Relaxed);
        v1.queue_depth.store(3, Relaxed);
        v1.latency.observe(Duration::from_millis(1));
        v1.custom("bytes_written", "Bytes.", true, 100.0);
        v1.custom("open_files", "Files.", false, 1.0);
        // Make-before-break: the new version runs beside the old one; both add.
        let v2 = m.stage("p", "file", "file");
        v2.records_in.fetch_add(5, Relaxed);
        v2.queue_depth.store(1, Relaxed);
        assert_eq!(series(&m, "weir_stage_records_in_total"), Some(15.0));
        assert_eq!(series(&m, "weir_stage_queue_depth"), Some(4.0));
        // The old one stops: its counts stay in the series, its gauges go.
        m.remove(&[v1]);
        assert_eq!(series(&m, "weir_stage_records_in_total"), Some(15.0));
        assert_eq!(series(&m, "weir_stage_queue_depth"), Some(1.0));
        assert_eq!(series(&m, "weir_stage_latency_seconds_count"), Some(1.0));
        assert_eq!(series(&m, "weir_plugin_bytes_written_total"), Some(100.0));
        assert_eq!(series(&m, "weir_plugin_open_files"), None);
        v2.records_in.fetch_add(1, Relaxed);
        assert_eq!(series(&m, "weir_stage_records_in_total"), Some(16.0));
        // A third version, then the pipeline is removed for good: the series goes.
        let v3 = m.stage("p", "file", "file");
        m.remove(&[v2]);
        assert_eq!(series(&m, "weir_stage_records_in_total"), Some(16.0));
        m.remove(&[v3]);
        assert_eq!(series(&m, "weir_stage_records_in_total"), None);
        let again = m.stage("p", "file", "file");
        assert_eq!(series(&m, "weir_stage_records_in_total"), Some(0.0), "a pipeline started anew starts from zero");
        drop(again);
    }
}
