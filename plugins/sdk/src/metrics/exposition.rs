//! The Prometheus text exposition (format 0.0.4), written by prometheus-client, the
//! Prometheus project's Rust client: the host's `/metrics` and the `prometheus` sink
//! describe their figures as metric families of label pairs and values, and the client
//! writes the text (names, `# HELP`/`# TYPE`, escaping, cumulative histogram buckets).

use std::fmt;

use prometheus_client::encoding::{prometheus_text, EncodeLabelKey, NoLabelSet};
use prometheus_client::registry::Registry;

pub use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder};
pub use prometheus_client::metrics::MetricType;

/// Label pairs of one series, in order.
pub type Labels<K> = Vec<(K, String)>;

/// The exposition of everything `figures` encodes (once, as a scrape sees it).
pub fn encode(figures: impl Collector) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(figures));
    let mut out = String::with_capacity(4096);
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut out, &registry);
    out
}

/// One metric and its series; `each` encodes one value. A counter is named with its
/// `_total`, as it is exposed (the encoder writes the suffix).
pub fn family<K: EncodeLabelKey, V>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (Labels<K>, V)>,
    each: impl Fn(&mut MetricEncoder<'_>, V) -> fmt::Result,
) -> fmt::Result {
    let name = if kind == MetricType::Counter { name.strip_suffix("_total").unwrap_or(name) } else { name };
    let mut metric = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        if labels.is_empty() {
            each(&mut metric, value)?;
        } else {
            each(&mut metric.encode_family(&labels)?, value)?;
        }
    }
    Ok(())
}

/// A counter's value.
pub fn counter(m: &mut MetricEncoder<'_>, v: u64) -> fmt::Result {
    m.encode_counter::<NoLabelSet, _, f64>(&v, None)
}

/// A gauge's value.
pub fn gauge(m: &mut MetricEncoder<'_>, v: i64) -> fmt::Result {
    m.encode_gauge(&v)
}

/// A counter's (`true`) or gauge's value as a float, whole numbers written as integers
/// (`2`, not `2.0`).
pub fn number(m: &mut MetricEncoder<'_>, (v, is_counter): (f64, bool)) -> fmt::Result {
    let whole = v.fract() == 0.0 && v.abs() < 9.0e15;
    match (is_counter, whole) {
        (true, true) if v >= 0.0 => counter(m, v as u64),
        (true, _) => m.encode_counter::<NoLabelSet, _, f64>(&v, None),
        (false, true) => gauge(m, v as i64),
        (false, false) => m.encode_gauge(&v),
    }
}

/// A histogram: its sum, count and, per upper bound, the observations in that bucket
/// alone (the encoder adds them up and writes `+Inf`).
pub fn histogram(m: &mut MetricEncoder<'_>, (sum, count, buckets): (f64, u64, &[(f64, u64)])) -> fmt::Result {
    m.encode_histogram::<NoLabelSet>(sum, count, buckets, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Figures;

    impl Collector for Figures {
        fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
            let labels = |v: &str| vec![("stage", v.to_owned())];
            family(&mut enc, "x_total", "Xs.", MetricType::Counter, [(labels("a\"b"), 3)], counter)?;
            family(&mut enc, "g", "G.", MetricType::Gauge, [(Labels::<&str>::new(), (2.0, false)), (labels("f"), (0.5, false))], number)?;
            family(&mut enc, "h_seconds", "H.", MetricType::Histogram, [(labels("s"), (0.3, 2, &[(0.1, 1), (1.0, 1)][..]))], histogram)
        }
    }

    #[test]
    fn families_come_out_in_the_text_format_with_names_as_given() {
        let text = encode(Figures);
        let expected = "# HELP x_total Xs.\n# TYPE x_total counter\nx_total{stage=\"a\\\"b\"} 3\n\
                        # HELP g G.\n# TYPE g gauge\ng 2\ng{stage=\"f\"} 0.5\n\
                        # HELP h_seconds H.\n# TYPE h_seconds histogram\n\
                        h_seconds_bucket{stage=\"s\",le=\"0.1\"} 1\nh_seconds_bucket{stage=\"s\",le=\"1\"} 2\n\
                        h_seconds_bucket{stage=\"s\",le=\"+Inf\"} 2\nh_seconds_sum{stage=\"s\"} 0.3\nh_seconds_count{stage=\"s\"} 2\n";
        assert_eq!(text, expected);
    }
}
