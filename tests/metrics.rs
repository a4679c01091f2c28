//! The agent's metrics as Prometheus itself sees them: a real Prometheus server (Debian's) scrapes `veg gateway`'s
//! `/metrics` inside the instance's namespace, and the test asks Prometheus' HTTP API for the series after traffic
//! whose counts it knows.
//!
//! Run serially (`--test-threads=1`), as the other traffic suites.

use std::{
    io::{Read, Write},
    net::{TcpStream, UdpSocket},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use veg_testbed::{
    netns::Netns,
    servers::udp_round_trip,
    skip_unless_root,
    topology::{Topology, server},
};

const PROMETHEUS: &str = "127.0.0.1:9090";

/// Prometheus in `ns`, scraping the agent's health listener there every second. Stopped (and its data removed)
/// on drop.
struct Prometheus {
    child: Child,
    dir: std::path::PathBuf,
}

impl Prometheus {
    fn start(ns: &Netns) -> Prometheus {
        let dir = std::env::temp_dir().join(veg_testbed::unique("veg-prometheus-"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            "global: {scrape_interval: 1s}\n\
             scrape_configs: [{job_name: veg, static_configs: [{targets: ['127.0.0.1:8080']}]}]\n",
        )
        .unwrap();
        let child = ns
            .command(
                "prometheus",
                &[
                    &format!("--config.file={}", config.display()),
                    &format!("--storage.tsdb.path={}", dir.join("data").display()),
                    &format!("--web.listen-address={PROMETHEUS}"),
                ],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus (scripts/setup installs it)");
        Prometheus { child, dir }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `query` (PromQL) through Prometheus' HTTP API, from inside `ns`: the value of its single result, if any.
fn query(ns: &Netns, query: &str) -> Option<f64> {
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let response = ns.run(move || {
        let mut stream = TcpStream::connect(PROMETHEUS).ok()?;
        write!(
            stream,
            "GET /api/v1/query?query={encoded} HTTP/1.0\r\nHost: prometheus\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        Some(text)
    })?;
    let body: Value = serde_json::from_str(response.split("\r\n\r\n").nth(1)?).ok()?;
    body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// The query's value once it equals `expected`, or what it was after 30 s.
fn eventually(ns: &Netns, promql: &str, expected: f64) -> Option<f64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let value = query(ns, promql);
        if value == Some(expected) || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

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
    let _prometheus = Prometheus::start(&topo.gateway);
    assert_eq!(
        eventually(&topo.gateway, "up{job=\"veg\"}", 1.0),
        Some(1.0),
        "Prometheus could not scrape the agent"
    );
    assert_eq!(
        eventually(&topo.gateway, "veg_datapath_flows_created_total", 5.0),
        Some(5.0)
    );
    assert_eq!(
        eventually(&topo.gateway, "veg_datapath_dropped_no_policy_total", 3.0),
        Some(3.0)
    );
    assert_eq!(
        eventually(&topo.gateway, "veg_translations", 5.0),
        Some(5.0)
    );
    assert_eq!(
        eventually(&topo.gateway, "veg_translations_capacity", 262144.0),
        Some(262144.0)
    );
    assert_eq!(
        eventually(&topo.gateway, "count(veg_build_info)", 1.0),
        Some(1.0)
    );
    // What Prometheus holds is what `veg stats` says.
    assert_eq!(gateway.counter("flows_created"), 5);
}
