//! The flow table at scale: the client opens 1,000,000 distinct UDP flows, one packet each, as fast as the path
//! takes them, and the gateway must hold a translation for every one at once.
//!
//! The sender writes frames with AF_PACKET, and the kernel runs the whole path (client veth, gateway, server veth)
//! on the sender's CPU before the next frame, so the elapsed time is what creating a translation costs the gateway,
//! plus a sender cost that is the same in every mode. Nothing is lost to queue overflow: every flow reaches the
//! gateway, and the server's ingress drops the packets (no socket, no ICMP answer).
//!
//! Memory is counted the way each table pays for it. veg's flow map, and its counts table (one entry per
//! translation with records on, one in all without), are preallocated for `--max-flows` and their size is the
//! kernel's own accounting of the maps (bytes_memlock). conntrack allocates per connection: the growth
//! of slab objects during the fill (nf_conn and its extensions), plus its hash table (8 bytes per bucket).
//!
//! With the table full, veg's modes also say what a Prometheus scrape of the agent costs (it must not grow with
//! the table) and, with translation records on, how many records the ring could not take.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use veg_testbed::topology::Topology;

use super::{
    modes::{Active, enable_with},
    report::{self, Record},
    scenarios::{Sample, ServerDrop, Tools, finish, spawn_frames},
};

pub const SCENARIO: &str = "flow-table";
/// Concurrent translations in the full run.
pub const FLOWS: u32 = 1_000_000;
/// Enough for the smoke run to show every mode held every flow, in a second or two.
pub const SMOKE_FLOWS: u32 = 20_000;
/// Remote endpoints the flows spread over: 15,625 flows each at a million, within half of either NAT's port range
/// (veg 1024-32767, MASQUERADE 1024-65535), so neither runs its port search near exhaustion.
const DST_PORTS: u16 = 64;
const FIRST_DST_PORT: u16 = 20000;
/// UDP idle timeout for conntrack in the gateway, as veg's (RFC 4787's recommended 5 minutes): the kernel's 30 s
/// for unreplied flows could expire the first flows before the count is read.
const UDP_TIMEOUT_SECONDS: &str = "300";

/// Every mode in turn, `rounds` times: veg's agent with its table sized for `flows` translations, conntrack with
/// the host's limits raised for them.
pub fn run(
    topo: &Topology,
    tools: &Tools,
    rounds: usize,
    flows: u32,
) -> anyhow::Result<Vec<Record>> {
    let _room = ConntrackRoom::make(flows)?;
    let max_flows = flows.to_string();
    report::interleaved(
        SCENARIO,
        rounds,
        &format!("holding {flows} flows"),
        |mode| {
            let active = enable_with(topo, mode, &["--max-flows", &max_flows]);
            measure(topo, tools, &active, flows)
        },
    )
}

const CONNTRACK_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";
const CONNTRACK_BUCKETS: &str = "/proc/sys/net/netfilter/nf_conntrack_buckets";

/// conntrack's limits are the host's (writable only outside network namespaces): raised for the run so that a
/// million connections fit with the same hash load as veg's map, and put back as they were when dropped.
struct ConntrackRoom {
    saved: Vec<(&'static str, String)>,
}

impl ConntrackRoom {
    fn make(flows: u32) -> anyhow::Result<ConntrackRoom> {
        // Two tuples per connection share the table, as veg's two entries per translation share its map.
        let buckets = (2 * u64::from(flows)).next_power_of_two();
        let max = u64::from(flows) + u64::from(flows) / 10;
        let mut room = ConntrackRoom { saved: Vec::new() };
        for (path, wanted) in [(CONNTRACK_BUCKETS, buckets), (CONNTRACK_MAX, max)] {
            let current = read_u64(path)?;
            if current < wanted {
                room.saved.push((path, current.to_string()));
                std::fs::write(path, wanted.to_string())
                    .with_context(|| format!("raising {path} to {wanted}"))?;
            }
        }
        Ok(room)
    }

    fn buckets() -> anyhow::Result<u64> {
        read_u64(CONNTRACK_BUCKETS)
    }
}

impl Drop for ConntrackRoom {
    fn drop(&mut self) {
        for (path, value) in self.saved.iter().rev() {
            if let Err(e) = std::fs::write(path, value) {
                eprintln!("could not restore {path} to {value}: {e}");
            }
        }
    }
}

fn read_u64(path: &str) -> anyhow::Result<u64> {
    std::fs::read_to_string(path)
        .with_context(|| format!("reading {path}"))?
        .trim()
        .parse()
        .with_context(|| format!("parsing {path}"))
}

/// Bytes in live slab objects, over every cache (/proc/slabinfo: active_objs x objsize).
fn slab_object_bytes() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/slabinfo").context("reading /proc/slabinfo")?;
    Ok(text
        .lines()
        .skip(2)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(f.get(1)?.parse::<u64>().ok()? * f.get(3)?.parse::<u64>().ok()?)
        })
        .sum())
}

/// The gateway's conntrack entries.
fn conntrack_count(topo: &Topology) -> anyhow::Result<u64> {
    let out = topo
        .gateway
        .exec("cat", &["/proc/sys/net/netfilter/nf_conntrack_count"]);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("reading the gateway's nf_conntrack_count")
}

/// The kernel's accounting of veg's pinned flow and counts tables, in bytes.
fn veg_map_bytes(gateway_name: &str) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for table in ["FLOWS", "FLOW_COUNTS"] {
        let pin = format!("/sys/fs/bpf/veg/{gateway_name}/{table}");
        let out = std::process::Command::new("bpftool")
            .args(["-j", "map", "show", "pinned", &pin])
            .output()
            .context("running bpftool")?;
        let map: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("bpftool map show printed no JSON")?;
        bytes += map["bytes_memlock"]
            .as_u64()
            .with_context(|| format!("no bytes_memlock for {pin}: {map}"))?;
    }
    Ok(bytes)
}

/// Open `flows` flows through the gateway in its current mode and measure the table that holds them.
fn measure(topo: &Topology, tools: &Tools, active: &Active, flows: u32) -> anyhow::Result<Sample> {
    let netfilter = active.agent().is_none();
    if netfilter {
        topo.gateway.sysctl(
            "net.netfilter.nf_conntrack_udp_timeout",
            UDP_TIMEOUT_SECONDS,
        );
    }
    let entries_before = if netfilter { conntrack_count(topo)? } else { 0 };
    let slab_before = slab_object_bytes()?;
    let _drop = ServerDrop::install(&topo.server)?;
    let open = spawn_frames(
        topo,
        tools,
        "udp-open-flows",
        FIRST_DST_PORT,
        &[
            "--flows",
            &flows.to_string(),
            "--dst-ports",
            &DST_PORTS.to_string(),
        ],
    )?;
    let sent = finish(open, "udp-open-flows")?;
    let seconds = sent["seconds"].as_f64().unwrap_or(0.0).max(1e-9);
    // Let the last packets leave the backlog before counting.
    std::thread::sleep(Duration::from_millis(200));

    let (held, memory) = match active.agent() {
        Some(agent) => (agent.flow_count(), veg_map_bytes(&agent.name)?),
        None => {
            let held = conntrack_count(topo)?.saturating_sub(entries_before);
            let slab = slab_object_bytes()?.saturating_sub(slab_before);
            (held, slab + 8 * ConntrackRoom::buckets()?)
        }
    };
    ensure!(held > 0, "the gateway holds no translation after the fill");
    let mut sample = vec![
        ("kflows_per_s", held as f64 / seconds / 1000.0),
        ("seconds", seconds),
        ("held", held as f64),
        ("memory_mib", memory as f64 / (1024.0 * 1024.0)),
        ("bytes_per_flow", memory as f64 / held as f64),
    ];
    if let Some(agent) = active.agent() {
        let scraped = scrape_ms(topo).with_context(|| {
            let log = agent.log();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            format!(
                "the agent's last lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })?;
        sample.push(("metrics_scrape_ms", scraped));
        sample.push(("records_lost", agent.counter("flow_records_lost") as f64));
    }
    Ok(sample)
}

/// The fastest of three scrapes of the agent's /metrics with the table full (curl's own timing, from inside the
/// instance): what Prometheus costs the agent.
fn scrape_ms(topo: &Topology) -> anyhow::Result<f64> {
    let url = format!("http://{AGENT_HEALTH}/metrics");
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let out = topo.gateway.exec(
            "curl",
            &[
                "-sf",
                "-m",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{time_total}",
                &url,
            ],
        );
        ensure!(
            out.status.success(),
            "curl {url} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seconds: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("curl's time_total")?;
        best = best.min(seconds * 1000.0);
    }
    Ok(best)
}

/// The agent's health listener in the instance's namespace (`veg gateway`'s default --health-listen).
const AGENT_HEALTH: &str = "127.0.0.1:8080";
