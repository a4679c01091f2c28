//! The agent's metrics, in Prometheus' text format, served at `/metrics` on the health listener: every counter of
//! `veg stats` (with its meaning as the help text), port allocation failures per external address, translations
//! live and the table's capacity, ports in use, flows expired, policy entries, readiness, the BFD sessions' state
//! and transitions, and the build. A scrape reads the counters maps (one small per-CPU value and the agent's own)
//! and nothing else: what needs the whole flow table (live translations, ports in use) comes from the last sweep,
//! which reads it anyway, so a scrape costs the same at a million flows as at none.

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use veg_bfd::{engine::Snapshot, packet::State, session::Status};
use veg_common::stats::Counter;

use super::health::bfd_not_ready;
use crate::{
    datapath::{port_usage::PortUsage, stats::read_counters},
    metrics_text::{build_info, family, label, single},
};

/// What a scrape reads.
#[derive(Clone)]
pub struct Metrics {
    /// Where the gateway's maps are pinned (the counters are read from there).
    pub pin_dir: PathBuf,
    /// Translations the flow table holds at most.
    pub capacity: u64,
    /// The address translations take, and how many ports a remote endpoint can be given from it per protocol.
    pub external_ip: IpAddr,
    pub range_ports: u32,
    pub bfd: Arc<Mutex<Snapshot>>,
    pub agent: Arc<Mutex<AgentFacts>>,
}

/// What the agent's own loop learns (sweeps, policy syncs), kept for the next scrape.
#[derive(Debug, Default)]
pub struct AgentFacts {
    /// Translations live as of the last sweep.
    pub live_translations: u64,
    /// Ports in use as of the last sweep.
    pub ports: Vec<PortUsage>,
    /// Translations the sweeps removed since the agent started.
    pub flows_expired: u64,
    pub sweep_errors: u64,
    /// Source prefixes in the policy after the last sync, translated and forwarded.
    pub policy_snat: u64,
    pub policy_forward: u64,
    pub policy_sync_errors: u64,
    /// Why the agent withdrew the instance from OVN (it is draining before a stop), if it did.
    pub withdrawn: Option<String>,
}

/// The protocols whose ports are always reported, so that a dashboard shows 0 rather than nothing.
const PORT_PROTOCOLS: [&str; 3] = ["icmp", "tcp", "udp"];

impl Metrics {
    /// Why the instance is not ready (/readyz), or None when it is.
    pub fn not_ready_reason(&self) -> Option<String> {
        if let Some(why) = &self.agent.lock().unwrap().withdrawn {
            return Some(format!("withdrawn: {why}"));
        }
        bfd_not_ready(&self.bfd.lock().unwrap())
    }

    /// The text of one scrape. A counters map that cannot be read leaves its metrics out (and says so in
    /// `veg_scrape_errors`), so that the rest is still served.
    pub fn render(&self) -> String {
        let mut out = String::new();
        build_info(&mut out, "veg_build_info", "The agent");
        let counters = read_counters(&self.pin_dir);
        if let Ok(counters) = &counters {
            for (counter, value) in counters {
                let name = counter_metric(*counter);
                family(&mut out, &name, "counter", counter.meaning());
                let _ = writeln!(out, "{name} {value}");
            }
            self.render_allocation_failures(&mut out, counters);
        }
        single(
            &mut out,
            "veg_scrape_errors",
            "gauge",
            "1 when this scrape could not read the datapath's counters (they are left out), else 0.",
            u64::from(counters.is_err()),
        );
        self.render_agent(&mut out);
        self.render_bfd(&mut out);
        out
    }

    /// Port allocation failures per external address: the datapath counts them per instance, and an instance
    /// translates to one address.
    fn render_allocation_failures(&self, out: &mut String, counters: &[(Counter, u64)]) {
        let failures = counters
            .iter()
            .find(|(counter, _)| *counter == Counter::DropPortExhausted)
            .map_or(0, |(_, value)| *value);
        family(
            out,
            "veg_port_allocation_failures_total",
            "counter",
            "New flows dropped because no port toward their remote endpoint was free on this external address.",
        );
        let _ = writeln!(
            out,
            "veg_port_allocation_failures_total{{external=\"{}\"}} {failures}",
            self.external_ip
        );
    }

    fn render_agent(&self, out: &mut String) {
        let facts = self.agent.lock().unwrap();
        single(
            out,
            "veg_translations",
            "gauge",
            "Translations live as of the last sweep of expired flows.",
            facts.live_translations,
        );
        single(
            out,
            "veg_translations_capacity",
            "gauge",
            "Translations the flow table holds at most (--max-flows).",
            self.capacity,
        );
        single(
            out,
            "veg_flows_expired_total",
            "counter",
            "Translations the agent's sweep removed because they were idle past their timeout or closed.",
            facts.flows_expired,
        );
        single(
            out,
            "veg_sweep_errors_total",
            "counter",
            "Sweeps of expired flows that failed (the agent logs why).",
            facts.sweep_errors,
        );
        self.render_ports(out, &facts.ports);
        family(
            out,
            "veg_policy_entries",
            "gauge",
            "Source prefixes in the datapath's policy after the last sync, by action.",
        );
        let _ = writeln!(
            out,
            "veg_policy_entries{{action=\"snat\"}} {}",
            facts.policy_snat
        );
        let _ = writeln!(
            out,
            "veg_policy_entries{{action=\"forward\"}} {}",
            facts.policy_forward
        );
        single(
            out,
            "veg_policy_sync_errors_total",
            "counter",
            "Policy updates from the resource that could not be written to the datapath (retried on the next change).",
            facts.policy_sync_errors,
        );
    }

    /// How full the port range is, per external address and protocol.
    fn render_ports(&self, out: &mut String, ports: &[PortUsage]) {
        family(
            out,
            "veg_translation_ports",
            "gauge",
            "Ports a remote endpoint can be given from the external address, per protocol (--port-range).",
        );
        let external = self.external_ip;
        let _ = writeln!(
            out,
            "veg_translation_ports{{external=\"{external}\"}} {}",
            self.range_ports
        );
        let mut usage = ports.to_vec();
        for protocol in PORT_PROTOCOLS {
            if !usage
                .iter()
                .any(|u| u.external == external && u.protocol == protocol)
            {
                usage.push(PortUsage {
                    external,
                    protocol,
                    in_use: 0,
                    busiest_endpoint: 0,
                });
            }
        }
        usage.sort_by_key(|u| (u.external, u.protocol));
        let per_port_space =
            |out: &mut String, name: &str, help: &str, value: fn(&PortUsage) -> u64| {
                family(out, name, "gauge", help);
                for u in &usage {
                    let _ = writeln!(
                        out,
                        "{name}{{external=\"{}\",protocol=\"{}\"}} {}",
                        u.external,
                        u.protocol,
                        value(u)
                    );
                }
            };
        per_port_space(
            out,
            "veg_ports_in_use",
            "Ports in use on the external address toward all remote endpoints together, as of the last sweep.",
            |u| u.in_use,
        );
        per_port_space(
            out,
            "veg_ports_busiest_endpoint",
            "Ports in use toward the remote endpoint (address, port) that holds the most, as of the last sweep: \
             a port is unique per remote endpoint, so this is what runs out first (compare veg_translation_ports).",
            |u| u.busiest_endpoint,
        );
    }

    fn render_bfd(&self, out: &mut String) {
        single(
            out,
            "veg_ready",
            "gauge",
            "1 while the instance reports Ready (/readyz: the datapath attached, every BFD session Up, not \
             withdrawn), else 0.",
            u64::from(self.not_ready_reason().is_none()),
        );
        single(
            out,
            "veg_withdrawn",
            "gauge",
            "1 while the agent has withdrawn the instance from OVN (BFD AdminDown) and drains before stopping, \
             else 0.",
            u64::from(self.agent.lock().unwrap().withdrawn.is_some()),
        );
        let snapshot = self.bfd.lock().unwrap();
        let sessions = &snapshot.sessions;
        let per_session = |out: &mut String, name: &str, value: &dyn Fn(&Status) -> u64| {
            for (local, peer, status) in sessions {
                let _ = writeln!(
                    out,
                    "{name}{{local=\"{}\",peer=\"{}\"}} {}",
                    label(&local.to_string()),
                    label(&peer.to_string()),
                    value(status)
                );
            }
        };
        family(
            out,
            "veg_bfd_session_up",
            "gauge",
            "1 while the BFD session with the peer is Up, else 0.",
        );
        per_session(out, "veg_bfd_session_up", &|status| {
            u64::from(status.state == State::Up)
        });
        family(
            out,
            "veg_bfd_session_transitions_total",
            "counter",
            "State changes of the BFD session with the peer since the agent started: one that keeps growing is flapping.",
        );
        per_session(out, "veg_bfd_session_transitions_total", &|status| {
            status.transitions
        });
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
    fn counters_are_named_as_prometheus_names_counters() {
        assert_eq!(
            counter_metric(Counter::DropNoPolicy),
            "veg_datapath_dropped_no_policy_total"
        );
    }

    #[test]
    fn a_missing_counters_map_is_reported_and_the_rest_served() {
        let metrics = Metrics {
            pin_dir: "/nonexistent".into(),
            capacity: 100,
            external_ip: "172.30.0.10".parse().unwrap(),
            range_ports: 4536,
            bfd: Arc::default(),
            agent: Arc::new(Mutex::new(AgentFacts {
                live_translations: 7,
                ports: vec![PortUsage {
                    external: "172.30.0.10".parse().unwrap(),
                    protocol: "udp",
                    in_use: 9,
                    busiest_endpoint: 4,
                }],
                ..AgentFacts::default()
            })),
        };
        let text = metrics.render();
        assert!(text.contains("veg_scrape_errors 1\n"), "{text}");
        assert!(text.contains("veg_translations 7\n"));
        assert!(text.contains("veg_translations_capacity 100\n"));
        assert!(text.contains("veg_build_info{version=\""));
        assert!(!text.contains("veg_datapath_"));
        assert!(!text.contains("veg_port_allocation_failures_total{"));
        assert!(text.contains("veg_translation_ports{external=\"172.30.0.10\"} 4536\n"));
        assert!(
            text.contains(
                "veg_ports_busiest_endpoint{external=\"172.30.0.10\",protocol=\"udp\"} 4\n"
            )
        );
        assert!(text.contains("veg_ports_in_use{external=\"172.30.0.10\",protocol=\"udp\"} 9\n"));
        // Protocols without a translation read 0, not nothing.
        assert!(text.contains("veg_ports_in_use{external=\"172.30.0.10\",protocol=\"tcp\"} 0\n"));
        assert!(text.contains("veg_ready 1\n"));
        assert!(text.contains("veg_withdrawn 0\n"));
        metrics.agent.lock().unwrap().withdrawn = Some("stopping".into());
        let text = metrics.render();
        assert!(text.contains("veg_ready 0\n") && text.contains("veg_withdrawn 1\n"));
        assert_eq!(
            metrics.not_ready_reason().as_deref(),
            Some("withdrawn: stopping")
        );
    }
}
