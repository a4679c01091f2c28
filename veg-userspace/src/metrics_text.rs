//! Prometheus' text exposition format, as the agent's and the controller's `/metrics` write it: family headers,
//! escaped label values, and histograms with fixed buckets. Small enough to write by hand; no registry, each
//! `/metrics` renders what it knows at the time of the scrape.

use std::fmt::Write as _;

/// One metric family's header.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value, escaped as the text format asks.
pub fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A family of one unlabelled sample.
pub fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// `name_build_info{version="..."} 1`: which build serves the metrics.
pub fn build_info(out: &mut String, name: &str, what: &str) {
    family(out, name, "gauge", &format!("{what}'s build: its version."));
    let _ = writeln!(out, "{name}{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
}

/// Observations counted into fixed buckets (upper bounds, ascending), with their sum and count.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket, not cumulative; the last slot is above every bound.
    counts: Vec<u64>,
    sum: f64,
}

/// Seconds, from 1 ms to 30 s: a reconcile or a database transaction.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Counts, from 1 to 1,000: operations in a database transaction.
pub const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket] += 1;
        self.sum += value;
    }

    /// The family, its cumulative buckets, sum and count.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        family(out, name, "histogram", help);
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let total: u64 = self.counts.iter().sum();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {total}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_escaping_follow_the_text_format() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut out = String::new();
        family(&mut out, "m", "gauge", "line one\nback\\slash");
        assert_eq!(out, "# HELP m line one\\nback\\\\slash\n# TYPE m gauge\n");
    }

    #[test]
    fn a_histogram_writes_cumulative_buckets_sum_and_count() {
        // Binary fractions, so that the sum prints exactly.
        let mut histogram = Histogram::new(&[0.125, 1.0]);
        for value in [0.0625, 0.125, 0.5, 7.0] {
            histogram.observe(value);
        }
        let mut out = String::new();
        histogram.render(&mut out, "h_seconds", "How long.");
        assert_eq!(
            out,
            "# HELP h_seconds How long.\n# TYPE h_seconds histogram\n\
             h_seconds_bucket{le=\"0.125\"} 2\nh_seconds_bucket{le=\"1\"} 3\nh_seconds_bucket{le=\"+Inf\"} 4\n\
             h_seconds_sum 7.6875\nh_seconds_count 4\n"
        );
    }
}
