//! The agent's metrics, in Prometheus' text format, served at `/metrics` on the health listener. Every counter of
//! `veg stats` (with its meaning as the help text), how many translations are live and how many the table holds,
//! the BFD sessions' state, and the build. A scrape reads the counters map (one small per-CPU array) and nothing
//! else: the live translations come from the last sweep, which reads the whole table anyway.

use std::{
    fmt::Write as _,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use veg_bfd::{engine::Snapshot, packet::State};
use veg_common::stats::Counter;

use crate::datapath::stats::read_counters;

/// What a scrape reads.
#[derive(Clone)]
pub struct Metrics {
    /// The pinned counters map.
    pub stats_pin: PathBuf,
    /// Translations live as of the last sweep.
    pub live_translations: Arc<AtomicU64>,
    /// Translations the flow table holds at most.
    pub capacity: u64,
    pub bfd: Arc<Mutex<Snapshot>>,
}

/// One metric family's header.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value, escaped as the text format asks.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// The text of one scrape. A counters map that cannot be read leaves its metrics out (and says so in
    /// `veg_scrape_errors`), so that the rest is still served.
    pub fn render(&self) -> String {
        let mut out = String::new();
        family(
            &mut out,
            "veg_build_info",
            "gauge",
            "The agent's build: its version.",
        );
        let _ = writeln!(
            out,
            "veg_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let counters = read_counters(&self.stats_pin);
        if let Ok(counters) = &counters {
            for (counter, value) in counters {
                let name = counter_metric(*counter);
                family(&mut out, &name, "counter", counter.meaning());
                let _ = writeln!(out, "{name} {value}");
            }
        }
        family(
            &mut out,
            "veg_scrape_errors",
            "gauge",
            "1 when this scrape could not read the datapath's counters (they are left out), else 0.",
        );
        let _ = writeln!(out, "veg_scrape_errors {}", u8::from(counters.is_err()));
        family(
            &mut out,
            "veg_translations",
            "gauge",
            "Translations live as of the last sweep of expired flows.",
        );
        let live = self.live_translations.load(Ordering::Relaxed);
        let _ = writeln!(out, "veg_translations {live}");
        family(
            &mut out,
            "veg_translations_capacity",
            "gauge",
            "Translations the flow table holds at most (--max-flows).",
        );
        let _ = writeln!(out, "veg_translations_capacity {}", self.capacity);
        self.render_bfd(&mut out);
        out
    }

    fn render_bfd(&self, out: &mut String) {
        family(
            out,
            "veg_bfd_session_up",
            "gauge",
            "1 while the BFD session with the peer is Up, else 0.",
        );
        let snapshot = self.bfd.lock().unwrap();
        for (local, peer, status) in &snapshot.sessions {
            let _ = writeln!(
                out,
                "veg_bfd_session_up{{local=\"{}\",peer=\"{}\"}} {}",
                label(&local.to_string()),
                label(&peer.to_string()),
                u8::from(status.state == State::Up)
            );
        }
    }
}

/// A datapath counter's metric name: `veg_datapath_<label>_total`, as Prometheus names counters.
pub fn counter_metric(counter: Counter) -> String {
    format!("veg_datapath_{}_total", counter.label())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_escaping_follow_the_text_format() {
        assert_eq!(
            counter_metric(Counter::DropNoPolicy),
            "veg_datapath_dropped_no_policy_total"
        );
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut out = String::new();
        family(&mut out, "m", "gauge", "line one\nback\\slash");
        assert_eq!(out, "# HELP m line one\\nback\\\\slash\n# TYPE m gauge\n");
    }

    #[test]
    fn a_missing_counters_map_is_reported_and_the_rest_served() {
        let metrics = Metrics {
            stats_pin: "/nonexistent/STATS".into(),
            live_translations: Arc::new(AtomicU64::new(7)),
            capacity: 100,
            bfd: Arc::default(),
        };
        let text = metrics.render();
        assert!(text.contains("veg_scrape_errors 1\n"), "{text}");
        assert!(text.contains("veg_translations 7\n"));
        assert!(text.contains("veg_translations_capacity 100\n"));
        assert!(text.contains("veg_build_info{version=\""));
        assert!(!text.contains("veg_datapath_"));
    }
}
