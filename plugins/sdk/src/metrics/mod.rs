//! Metrics declared in YAML and updated from records (event-derived metrics): the specs,
//! their checks, label cardinality capping and the Prometheus text exposition. Used by
//! the `prometheus` and `otlp` sinks and by any plugin that turns records into metrics.

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::batch::RecordRef;
#[cfg(feature = "exposition")]
pub mod exposition;
use crate::json::{self, Doc, Pointer};

/// Metric types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MetricType {
    /// Only goes up: each record adds its value (1 when no `value` is given).
    Counter,
    /// Set to each record's value.
    Gauge,
    /// Each record's value is observed into `buckets`.
    Histogram,
}

/// One metric.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    /// Metric name, e.g. `analytics_events_processed_total`.
    pub name: String,
    /// Counter, gauge or histogram.
    #[serde(rename = "type")]
    pub kind: MetricType,
    /// Help text.
    #[serde(default)]
    pub help: String,
    /// Label name → JSON pointer of its value in the record (missing: empty).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// JSON pointer of the value, or `@age` for the seconds since the record's timestamp.
    /// Counters count records when it is not given; gauges and histograms need it.
    #[serde(default)]
    pub value: Option<String>,
    /// Histogram bucket upper bounds.
    #[serde(default = "default_buckets")]
    pub buckets: Vec<f64>,
    /// Count only records whose headers have these values, e.g. `weir.outcome: delivered`
    /// for a sink that runs `after` another.
    #[serde(default)]
    pub when: BTreeMap<String, String>,
}

fn default_buckets() -> Vec<f64> {
    vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') && !n.starts_with(|c: char| c.is_ascii_digit())
}

impl MetricSpec {
    /// Checks what the schema cannot.
    pub fn check(&self) -> Result<(), String> {
        if !valid_name(&self.name) {
            return Err(format!("metric name {:?} may only use letters, digits, `_` and `:`", self.name));
        }
        if let Some(l) = self.labels.keys().find(|l| !valid_name(l) || l.starts_with("__")) {
            return Err(format!("metric {}: label name {l:?} is not valid", self.name));
        }
        match &self.value {
            None if self.kind != MetricType::Counter => {
                Err(format!("metric {}: a {:?} needs a `value`", self.name, self.kind).to_lowercase())
            }
            Some(v) if v != "@age" && !v.starts_with('/') => {
                Err(format!("metric {}: value {v:?} must be a JSON pointer or @age", self.name))
            }
            _ if self.kind == MetricType::Histogram && (self.buckets.is_empty() || self.buckets.windows(2).any(|w| w[0] >= w[1])) => {
                Err(format!("metric {}: buckets must be increasing", self.name))
            }
            _ => Ok(()),
        }
    }
}

/// Checks that every counter's name ends in `_total`, as the Prometheus exposition writes
/// counters (OTLP has no such rule).
pub fn check_exposed_names(specs: &[MetricSpec]) -> Result<(), String> {
    match specs.iter().find(|m| m.kind == MetricType::Counter && !m.name.ends_with("_total")) {
        Some(m) => Err(format!("counter {:?} must end in `_total`, as Prometheus names counters; call it {}_total", m.name, m.name)),
        None => Ok(()),
    }
}

/// Checks every spec, and that no name is declared twice.
pub fn check_all(specs: &[MetricSpec]) -> Result<(), String> {
    for m in specs {
        m.check()?;
    }
    let mut names: Vec<&str> = specs.iter().map(|m| m.name.as_str()).collect();
    names.sort_unstable();
    match names.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(format!("metric {} is declared twice", w[0])),
        None => Ok(()),
    }
}

#[derive(Debug, Clone)]
enum Series {
    Scalar(f64),
    Histogram { counts: Vec<u64>, sum: f64, count: u64 },
}

/// Label value used once a metric has `max_series` label sets.
pub const OVERFLOW: &str = "other";

#[derive(Debug, Clone)]
struct Metric {
    spec: MetricSpec,
    /// The pointers of `spec.labels`, in its order, read once (`None`: not a pointer).
    labels_at: Vec<Option<Pointer>>,
    /// The pointer of `spec.value`, read once.
    value_at: Option<Pointer>,
    series: HashMap<Vec<String>, Series>,
    overflowed: u64,
}

/// Every metric's state.
#[derive(Debug, Clone)]
pub struct Registry {
    metrics: Vec<Metric>,
    max_series: usize,
}

/// A label's value: a string as its text, a missing field or `null` as empty, anything else
/// as its JSON.
fn label_value(doc: &Doc<'_>, pointer: Option<&Pointer>) -> String {
    match pointer.and_then(|p| doc.get(p)) {
        None => String::new(),
        Some(raw) => match json::string(raw) {
            Some(s) => s.into_owned(),
            None if raw.get() == "null" => String::new(),
            None => serde_json::from_str::<Value>(raw.get()).map(|v| v.to_string()).unwrap_or_else(|_| raw.get().to_owned()),
        },
    }
}

impl Registry {
    /// A registry for `specs`, each capped at `max_series` label sets.
    pub fn new(specs: Vec<MetricSpec>, max_series: usize) -> Self {
        let metrics = specs
            .into_iter()
            .map(|spec| Metric {
                labels_at: spec.labels.values().map(|p| Pointer::parse(p).ok()).collect(),
                value_at: spec.value.as_deref().and_then(|p| Pointer::parse(p).ok()),
                spec,
                series: HashMap::new(),
                overflowed: 0,
            })
            .collect();
        Registry { metrics, max_series }
    }

    /// Updates every metric from one record, or says why the record cannot be counted
    /// (then nothing is updated).
    pub fn observe(&mut self, record: &RecordRef<'_>) -> Result<(), String> {
        self.observe_with(record, |_, _, _| {})
    }

    /// Like [`Registry::observe`], and tells `applied` each update made: the metric, its
    /// label values (after capping, in the order of the spec's label names) and the value.
    pub fn observe_with(&mut self, record: &RecordRef<'_>, applied: impl FnMut(&MetricSpec, &[String], f64)) -> Result<(), String> {
        let doc = Doc::parse(record.value).map_err(|e| format!("not valid JSON: {e}"))?;
        self.observe_doc(&doc, record, applied)
    }

    /// Like [`Registry::observe_with`], for a record already read as `doc`.
    pub fn observe_doc(
        &mut self,
        doc: &Doc<'_>,
        record: &RecordRef<'_>,
        mut applied: impl FnMut(&MetricSpec, &[String], f64),
    ) -> Result<(), String> {
        let mut values = Vec::with_capacity(self.metrics.len());
        for m in &self.metrics {
            if !m.spec.when.iter().all(|(h, want)| record.header(h) == Some(want.as_bytes())) {
                values.push(None);
                continue;
            }
            let v = match m.spec.value.as_deref() {
                None => 1.0,
                Some("@age") => {
                    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default();
                    let ts = record.timestamp_ms.ok_or_else(|| format!("metric {}: the record has no timestamp for @age", m.spec.name))?;
                    ((now - ts).max(0)) as f64 / 1000.0
                }
                Some(p) => match m.value_at.as_ref().and_then(|at| doc.get(at)) {
                    Some(raw) if raw.get().starts_with(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9']) => {
                        raw.get().parse().unwrap_or(f64::NAN)
                    }
                    Some(raw) => match json::string(raw) {
                        Some(s) => {
                            s.trim().parse().map_err(|_| format!("metric {}: the value at {p} ({s:?}) is not a number", m.spec.name))?
                        }
                        None => return Err(format!("metric {}: the value at {p} ({}) is not a number", m.spec.name, raw.get())),
                    },
                    None => return Err(format!("metric {}: the record has no value at {p}", m.spec.name)),
                },
            };
            if !v.is_finite() || (m.spec.kind == MetricType::Counter && v < 0.0) {
                return Err(format!("metric {}: {v} cannot be added to a {:?}", m.spec.name, m.spec.kind).to_lowercase());
            }
            values.push(Some(v));
        }
        for (m, v) in self.metrics.iter_mut().zip(values) {
            let Some(v) = v else { continue };
            let mut labels: Vec<String> = m.labels_at.iter().map(|p| label_value(doc, p.as_ref())).collect();
            if !m.series.contains_key(&labels) && m.series.len() >= self.max_series {
                labels = vec![OVERFLOW.to_owned(); labels.len()];
                m.overflowed += 1;
            }
            applied(&m.spec, &labels, v);
            let buckets = m.spec.buckets.len();
            let s = m.series.entry(labels).or_insert_with(|| match m.spec.kind {
                MetricType::Histogram => Series::Histogram { counts: vec![0; buckets], sum: 0.0, count: 0 },
                _ => Series::Scalar(0.0),
            });
            match (m.spec.kind, s) {
                (MetricType::Counter, Series::Scalar(x)) => *x += v,
                (MetricType::Gauge, Series::Scalar(x)) => *x = v,
                (MetricType::Histogram, Series::Histogram { counts, sum, count }) => {
                    if let Some(i) = m.spec.buckets.iter().position(|b| v <= *b) {
                        counts[i] += 1;
                    }
                    *sum += v;
                    *count += 1;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Label sets that went to the `other` series, by metric.
    pub fn overflowed(&self) -> u64 {
        self.metrics.iter().map(|m| m.overflowed).sum()
    }
}

/// One scrape of a [`Registry`], encoded by prometheus-client.
#[cfg(feature = "exposition")]
#[derive(Debug)]
struct Scrape(Registry);

#[cfg(feature = "exposition")]
impl Registry {
    /// The Prometheus text exposition (needs the SDK's `exposition` feature). A counter is
    /// written with `_total` at the end of its name: name counters so (see
    /// [`check_exposed_names`]).
    pub fn render(&self) -> String {
        exposition::encode(Scrape(self.clone()))
    }
}

#[cfg(feature = "exposition")]
impl exposition::Collector for Scrape {
    fn encode(&self, mut enc: exposition::DescriptorEncoder<'_>) -> std::fmt::Result {
        use exposition::{family, histogram, number, MetricType as Kind};
        for m in &self.0.metrics {
            let spec = &m.spec;
            let help = if spec.help.is_empty() { spec.name.clone() } else { spec.help.replace('\n', " ") };
            let mut series: Vec<(&Vec<String>, &Series)> = m.series.iter().collect();
            series.sort_by(|a, b| a.0.cmp(b.0));
            let labels =
                |values: &Vec<String>| -> exposition::Labels<String> { spec.labels.keys().cloned().zip(values.iter().cloned()).collect() };
            match spec.kind {
                MetricType::Histogram => {
                    let buckets: Vec<Vec<(f64, u64)>> = series
                        .iter()
                        .map(|(_, s)| match s {
                            Series::Histogram { counts, .. } => spec.buckets.iter().copied().zip(counts.iter().copied()).collect(),
                            Series::Scalar(_) => Vec::new(),
                        })
                        .collect();
                    let values = series.iter().zip(&buckets).map(|((v, s), b)| {
                        let (sum, count) = match s {
                            Series::Histogram { sum, count, .. } => (*sum, *count),
                            Series::Scalar(_) => (0.0, 0),
                        };
                        (labels(v), (sum, count, b.as_slice()))
                    });
                    family(&mut enc, &spec.name, &help, Kind::Histogram, values, histogram)?;
                }
                kind => {
                    let counter = kind == MetricType::Counter;
                    let values = series.iter().map(|(v, s)| {
                        let x = match s {
                            Series::Scalar(x) => *x,
                            Series::Histogram { .. } => 0.0,
                        };
                        (labels(v), (x, counter))
                    });
                    family(&mut enc, &spec.name, &help, if counter { Kind::Counter } else { Kind::Gauge }, values, number)?;
                }
            }
        }
        let overflow = self.0.metrics.iter().map(|m| (vec![("metric", m.spec.name.clone())], m.overflowed));
        let help = "Records whose label set went to the `other` series because a metric reached max_series.";
        family(&mut enc, "weir_metric_label_overflow_total", help, Kind::Counter, overflow, exposition::counter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::json_batch;
    use serde_json::json;

    fn registry(specs: Value, max: usize) -> Registry {
        let specs: Vec<MetricSpec> = serde_json::from_value(specs).unwrap();
        specs.iter().for_each(|s| s.check().unwrap());
        Registry::new(specs, max)
    }

    #[test]
    #[cfg(feature = "exposition")]
    fn counters_by_label_gauges_and_histograms() {
        let mut r = registry(
            json!([
                {"name": "events_total", "type": "counter", "help": "Events.", "labels": {"event_type": "/t", "service": "/s"}},
                {"name": "temp", "type": "gauge", "value": "/v"},
                {"name": "size_bytes", "type": "histogram", "value": "/v", "buckets": [1, 10]}
            ]),
            100,
        );
        let b =
            json_batch([r#"{"t":"login","s":"auth","v":5}"#, r#"{"t":"login","s":"auth","v":"20"}"#, r#"{"t":"view","s":"user","v":0.5}"#]);
        for rec in b.as_ref().iter() {
            r.observe(&rec).unwrap();
        }
        let text = r.render();
        assert!(text.contains("events_total{event_type=\"login\",service=\"auth\"} 2\n"), "{text}");
        assert!(text.contains("events_total{event_type=\"view\",service=\"user\"} 1\n"), "{text}");
        assert!(text.contains("temp 0.5\n"), "{text}");
        assert!(text.contains("size_bytes_bucket{le=\"1\"} 1\nsize_bytes_bucket{le=\"10\"} 2\nsize_bytes_bucket{le=\"+Inf\"} 3\nsize_bytes_sum 25.5\nsize_bytes_count 3\n"), "{text}");
    }

    #[test]
    #[cfg(feature = "exposition")]
    fn a_value_that_is_not_a_number_rejects_the_record_and_changes_nothing() {
        let mut r = registry(json!([{"name": "a_total", "type": "counter"}, {"name": "g", "type": "gauge", "value": "/v"}]), 10);
        let b = json_batch([r#"{"v":"lots"}"#]);
        let err = r.observe(&b.as_ref().get(0)).unwrap_err();
        assert_eq!(err, "metric g: the value at /v (\"lots\") is not a number");
        assert!(r.render().contains("# TYPE a_total counter\n# HELP g"), "nothing counted:\n{}", r.render());
    }

    #[test]
    #[cfg(feature = "exposition")]
    fn label_cardinality_is_capped_into_other() {
        let mut r = registry(json!([{"name": "by_user_total", "type": "counter", "labels": {"user": "/u"}}]), 2);
        let b = json_batch([r#"{"u":"a"}"#, r#"{"u":"b"}"#, r#"{"u":"c"}"#, r#"{"u":"d"}"#, r#"{"u":"a"}"#]);
        for rec in b.as_ref().iter() {
            r.observe(&rec).unwrap();
        }
        let text = r.render();
        assert!(text.contains("by_user_total{user=\"a\"} 2\n") && text.contains("by_user_total{user=\"other\"} 2\n"), "{text}");
        assert!(text.contains("weir_metric_label_overflow_total{metric=\"by_user_total\"} 2\n"), "{text}");
        assert_eq!(r.overflowed(), 2);
    }

    #[test]
    #[cfg(feature = "exposition")]
    fn when_counts_only_matching_records() {
        let mut r = registry(json!([{"name": "stored_total", "type": "counter", "when": {"weir.outcome": "delivered"}}]), 10);
        let mut b = crate::BatchBuf::new();
        b.push(0, crate::Head { extra_headers: &[("weir.outcome", b"delivered")], ..Default::default() }, b"{}");
        b.push(1, crate::Head { extra_headers: &[("weir.outcome", b"refused")], ..Default::default() }, b"{}");
        b.push(2, crate::Head::default(), b"{}");
        for rec in b.as_ref().iter() {
            r.observe(&rec).unwrap();
        }
        assert!(r.render().contains("stored_total 1\n"), "{}", r.render());
    }

    #[test]
    fn specs_are_checked() {
        let bad: MetricSpec = serde_json::from_value(json!({"name": "g", "type": "gauge"})).unwrap();
        assert!(bad.check().unwrap_err().contains("needs a `value`"));
        let bad: MetricSpec = serde_json::from_value(json!({"name": "1x", "type": "counter"})).unwrap();
        assert!(bad.check().is_err());
        let plain: MetricSpec = serde_json::from_value(json!({"name": "events", "type": "counter"})).unwrap();
        assert!(plain.check().is_ok(), "OTLP counters need no suffix");
        assert!(check_exposed_names(&[plain]).unwrap_err().contains("call it events_total"));
    }
}
