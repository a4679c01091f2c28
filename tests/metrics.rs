//! The agent's metrics as Prometheus itself sees them: a real Prometheus server (Debian's) scrapes `veg gateway`'s
//! `/metrics` inside the instance's namespace, and the test asks Prometheus' HTTP API for the series after traffic
//! whose counts it knows. The alert rules of deploy/monitoring load in promtool and fire in that Prometheus for a
//! staged port exhaustion; they and the Grafana dashboard use only metrics the agent and the controller export.
//!
//! Run serially (`--test-threads=1`), as the other traffic suites.

use std::{collections::BTreeSet, net::UdpSocket, path::PathBuf, process::Command};

use serde_json::Value;
use veg_testbed::{
    netns::Netns,
    prometheus::{Prometheus, assert_eventually, eventually, exported_names, http_get, query},
    servers::udp_round_trip,
    skip_unless_root,
    topology::{Topology, server},
};

/// The agent's health listener, in the instance's namespace.
const AGENT: &str = "127.0.0.1:8080";

#[test]
fn prometheus_scrapes_the_agents_counters_after_known_traffic() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let snat = topo.add_client("10.16.0.2");
    let no_policy = topo.add_client("10.16.2.2");
    let gateway = topo.start_gateway(&["--sweep-interval", "1"]);
    let _echo = veg_testbed::servers::udp_echo(&topo.server, 9000);
    // Five translations: five source ports to one server port.
    for port in 7001..=7005 {
        udp_round_trip(topo.client(snat), port, server(9000), b"count me")
            .expect("a datagram through the gateway was lost");
    }
    // Three datagrams from a source no policy names: dropped and counted.
    topo.client(no_policy).run(|| {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..3 {
            socket.send_to(b"not mine", server(9000)).unwrap();
        }
    });
    let _prometheus = Prometheus::start(&topo.gateway, AGENT, None);
    assert_eq!(
        eventually(&topo.gateway, "up{job=\"veg\"}", 1.0),
        Some(1.0),
        "Prometheus could not scrape the agent"
    );
    assert_eventually(&topo.gateway, "veg_datapath_flows_created_total", 5.0);
    assert_eventually(&topo.gateway, "veg_datapath_dropped_no_policy_total", 3.0);
    assert_eventually(&topo.gateway, "veg_translations", 5.0);
    assert_eventually(&topo.gateway, "veg_translations_capacity", 262144.0);
    assert_eventually(&topo.gateway, "count(veg_build_info)", 1.0);
    // The five translations hold five ports toward one remote endpoint, out of the whole range.
    assert_eventually(
        &topo.gateway,
        "veg_ports_busiest_endpoint{external=\"172.17.0.11\",protocol=\"udp\"}",
        5.0,
    );
    assert_eventually(&topo.gateway, "veg_ports_in_use{protocol=\"udp\"}", 5.0);
    assert_eventually(&topo.gateway, "veg_ports_in_use{protocol=\"tcp\"}", 0.0);
    assert_eventually(
        &topo.gateway,
        "veg_port_allocation_failures_total{external=\"172.17.0.11\"}",
        0.0,
    );
    // The topology's policy: one translated prefix, one forwarded.
    assert_eventually(&topo.gateway, "veg_policy_entries{action=\"snat\"}", 1.0);
    assert_eventually(&topo.gateway, "veg_policy_entries{action=\"forward\"}", 1.0);
    assert_eventually(&topo.gateway, "veg_ready", 1.0);
    assert_eventually(&topo.gateway, "veg_flows_expired_total", 0.0);
    // What Prometheus holds is what `veg stats` says.
    assert_eq!(gateway.counter("flows_created"), 5);
}

/// The PrometheusRule of deploy/monitoring.
fn prometheus_rule() -> serde_yaml::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/monitoring/prometheus-rule.yaml"
    );
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The PrometheusRule's groups as a plain rule file; with `immediate`, every `for` set to 0s, so that a test need
/// not wait minutes for an alert whose condition it staged (the expressions stay as shipped).
fn rule_file(immediate: bool) -> String {
    let mut spec = prometheus_rule()["spec"].clone();
    if immediate {
        for group in spec["groups"].as_sequence_mut().unwrap() {
            for rule in group["rules"].as_sequence_mut().unwrap() {
                if let Some(duration) = rule.get_mut("for") {
                    *duration = "0s".into();
                }
            }
        }
    }
    serde_yaml::to_string(&spec).unwrap()
}

/// `promtool check rules` on `rules`.
fn promtool_check(rules: &str) {
    let dir = std::env::temp_dir().join(veg_testbed::unique("veg-promtool-"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("veg.rules.yaml");
    std::fs::write(&path, rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("running promtool (scripts/setup installs prometheus)");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "promtool refused the rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether the alert is firing, once it is, or false after 30 s.
fn fires(ns: &Netns, alert: &str) -> bool {
    let promql = format!("ALERTS{{alertname=\"{alert}\",alertstate=\"firing\"}}");
    eventually(ns, &promql, 1.0) == Some(1.0)
}

#[test]
fn the_alert_rules_load_and_fire_for_a_staged_port_exhaustion() {
    if skip_unless_root() {
        return;
    }
    promtool_check(&rule_file(false));
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.0.2");
    // Ten ports per remote endpoint, above the namespace's ephemeral range.
    let _gateway = topo.start_gateway(&["--sweep-interval", "1", "--port-range", "61000-61009"]);
    let _echo = veg_testbed::servers::udp_echo(&topo.server, 9000);
    let _prometheus = Prometheus::start(&topo.gateway, AGENT, Some(&rule_file(true)));
    // Prometheus holds a sample before the failures, so that their increase shows.
    assert_eq!(
        eventually(&topo.gateway, "veg_port_allocation_failures_total", 0.0),
        Some(0.0),
        "Prometheus could not scrape the agent"
    );
    assert!(!fires_now(&topo.gateway, "VegPortsNearExhaustion"));
    // Nine of the ten ports toward the server's endpoint: over the 80% the rule warns at.
    for port in 7001..=7009 {
        udp_round_trip(topo.client(client), port, server(9000), b"fill")
            .expect("a datagram through the gateway was lost");
    }
    assert!(
        fires(&topo.gateway, "VegPortsNearExhaustion"),
        "9 of 10 ports toward one endpoint did not fire VegPortsNearExhaustion"
    );
    assert!(!fires_now(&topo.gateway, "VegPortAllocationFailing"));
    // The tenth port, then three flows that find none: dropped, counted, alerted.
    udp_round_trip(topo.client(client), 7010, server(9000), b"last")
        .expect("the last free port was not given");
    topo.client(client).run(|| {
        for port in 7011..=7013 {
            let socket = UdpSocket::bind(("0.0.0.0", port)).unwrap();
            socket.send_to(b"no port left", server(9000)).unwrap();
        }
    });
    assert_eventually(
        &topo.gateway,
        "veg_port_allocation_failures_total{external=\"172.17.0.11\"}",
        3.0,
    );
    assert!(
        fires(&topo.gateway, "VegPortAllocationFailing"),
        "dropped flows did not fire VegPortAllocationFailing"
    );
    assert_eventually(
        &topo.gateway,
        "veg_ports_busiest_endpoint{protocol=\"udp\"}",
        10.0,
    );
}

/// Whether the alert fires right now (no waiting).
fn fires_now(ns: &Netns, alert: &str) -> bool {
    let promql = format!("ALERTS{{alertname=\"{alert}\",alertstate=\"firing\"}}");
    query(ns, &promql) == Some(1.0)
}

/// The metric names in `text` (PromQL or a dashboard's JSON): every `veg_...` identifier, and whether a regex
/// follows it (`veg_datapath_dropped_.+_total` names a prefix).
fn metric_names(text: &str) -> BTreeSet<(String, bool)> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("veg_") {
        let name: String = rest[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let after = &rest[start + name.len()..];
        names.insert((name.clone(), after.starts_with('.')));
        rest = after;
    }
    names
}

#[test]
fn the_dashboard_and_the_alert_rules_use_only_exported_metrics() {
    if skip_unless_root() {
        return;
    }
    let topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let _gateway = topo.start_gateway(&[]);
    let exposition = http_get(&topo.gateway, AGENT, "/metrics".into())
        .expect("the agent's /metrics did not answer");
    let mut exported: BTreeSet<String> = exported_names(&exposition).into_iter().collect();
    assert!(
        exported.contains("veg_ports_busiest_endpoint"),
        "{exposition}"
    );
    // The controller's, from the library the binary serves them with.
    let controller = veg_userspace::controller::metrics::render();
    exported.extend(exported_names(&controller));
    assert!(
        exported.contains("veg_controller_gateway_ready"),
        "{controller}"
    );

    let dashboard_path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/monitoring/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&dashboard_path).unwrap())
        .expect("the Grafana dashboard is not valid JSON");
    let mut expressions = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        // Rows hold no queries.
        for target in panel["targets"].as_array().into_iter().flatten() {
            expressions.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(expressions.len() >= 10, "the dashboard lost its panels");
    for group in prometheus_rule()["spec"]["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            expressions.push(rule["expr"].as_str().unwrap().to_owned());
        }
    }
    for expression in &expressions {
        let names = metric_names(expression);
        assert!(
            !names.is_empty() || expression.contains("up{"),
            "{expression}"
        );
        for (name, is_prefix) in names {
            let known = if is_prefix {
                exported.iter().any(|e| e.starts_with(&name))
            } else {
                // A histogram's series are its name with _bucket, _sum or _count.
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .filter(|family| exported.contains(*family));
                exported.contains(&name) || family.is_some()
            };
            assert!(
                known,
                "{expression} uses {name}, which neither the agent nor the controller exports"
            );
        }
    }
}
