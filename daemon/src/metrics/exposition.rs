//! The text exposition as served and written: the recorder's families and
//! the process metrics, in a stable order. The recorder walks hash maps,
//! so two scrapes listed families (and samples) in different orders, and
//! diffs of the textfile or of two scrapes were noise.

use std::collections::BTreeMap;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::metrics_http::family;

/// Everything this process exports (`extra`: families rendered as text
/// elsewhere), families sorted by name.
pub fn render(handle: &PrometheusHandle, extra: &str) -> String {
    let mut text = handle.render();
    text.push('\n');
    text.push_str(extra);
    if let Some(s) = super::process::sample() {
        text.push_str(&super::process::exposition(&s));
    }
    sorted(&text)
}

#[derive(Debug, Default)]
struct Family<'a> {
    comments: Vec<&'a str>,
    samples: Vec<&'a str>,
    /// Histograms and summaries: samples keep their order, since each
    /// label set's buckets, sum and count belong together, `le` ascending.
    grouped: bool,
}

/// `text` with families sorted by name, and the samples of counters and
/// gauges sorted within their family.
pub fn sorted(text: &str) -> String {
    let mut families: BTreeMap<&str, Family<'_>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f = families.entry(family(line)).or_default();
        if line.starts_with('#') {
            if line.ends_with(" histogram") || line.ends_with(" summary") {
                f.grouped = line.starts_with("# TYPE ");
            }
            f.comments.push(line);
        } else {
            f.samples.push(line);
        }
    }
    let mut out = String::with_capacity(text.len());
    for f in families.values_mut() {
        if !f.grouped {
            f.samples.sort_unstable();
        }
        for line in f.comments.iter().chain(&f.samples) {
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_their_samples_come_in_one_order() {
        let a = "# TYPE b_total counter\nb_total{x=\"2\"} 1\nb_total{x=\"1\"} 1\n\n\
# TYPE a_seconds histogram\na_seconds_bucket{le=\"0.5\"} 1\na_seconds_bucket{le=\"+Inf\"} 1\na_seconds_sum 0.2\na_seconds_count 1\n\n";
        let b = "# TYPE a_seconds histogram\na_seconds_bucket{le=\"0.5\"} 1\na_seconds_bucket{le=\"+Inf\"} 1\na_seconds_sum 0.2\na_seconds_count 1\n\n\
# TYPE b_total counter\nb_total{x=\"1\"} 1\nb_total{x=\"2\"} 1\n\n";
        assert_eq!(sorted(a), sorted(b));
        assert_eq!(
            sorted(a),
            "# TYPE a_seconds histogram\na_seconds_bucket{le=\"0.5\"} 1\na_seconds_bucket{le=\"+Inf\"} 1\n\
a_seconds_sum 0.2\na_seconds_count 1\n\n# TYPE b_total counter\nb_total{x=\"1\"} 1\nb_total{x=\"2\"} 1\n\n"
        );
    }

    #[test]
    fn a_real_recorder_renders_in_a_stable_order_with_process_metrics() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            for i in 0..50 {
                metrics::counter!(format!("m{i}_total"), "k" => format!("{}", 50 - i)).increment(1);
            }
        });
        let first = render(&handle, "");
        let names: Vec<&str> = first
            .lines()
            .filter(|l| l.starts_with("# TYPE"))
            .map(family)
            .collect();
        let mut expected = names.clone();
        expected.sort_unstable();
        assert_eq!(names, expected);
        assert!(names.contains(&"process_cpu_seconds_total") && names.contains(&"m7_total"));
        let strip = |t: &str| {
            t.lines()
                .filter(|l| !l.starts_with("process_"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(strip(&first), strip(&render(&handle, "")));
    }
}
