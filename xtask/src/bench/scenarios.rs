//! What is measured, each scenario the same way for every mode.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::Value;
use veg_testbed::{
    command::output_of,
    netns::Netns,
    topology::{SERVER_IP, SERVER_IPV6, Topology},
};

/// Each over IPv4, then the same over IPv6 (the "-ipv6" ones: veg's NAT66 against ip6tables and nftables).
pub const SCENARIOS: &[&str] = &[
    "udp-many",
    "udp-many-2cpu",
    "udp-one",
    "tcp-stream-1",
    "tcp-stream-8",
    "tcp-crr",
    "tcp-crr-1cpu",
    "tcp-crr-2cpu",
    "tcp-rr",
    "udp-many-ipv6",
    "udp-one-ipv6",
    "tcp-stream-1-ipv6",
    "tcp-crr-ipv6",
    "tcp-rr-ipv6",
];
pub const CLIENT_IP: &str = "10.16.0.2";
pub const CLIENT_IPV6: &str = "fd00:10:16::2";

/// The client's and the server's addresses for a scenario, and the scenario's name without its family.
fn family_of(scenario: &str) -> (&'static str, &'static str, &str) {
    match scenario.strip_suffix("-ipv6") {
        Some(base) => (CLIENT_IPV6, SERVER_IPV6, base),
        None => (CLIENT_IP, SERVER_IP, scenario),
    }
}

/// "ADDRESS:PORT", bracketed for IPv6.
fn endpoint(address: &str, port: u16) -> String {
    std::net::SocketAddr::new(address.parse().expect("a constant address"), port).to_string()
}
const UDP_PORT: u16 = 9000;
pub const TCP_PORT: u16 = 8080;
const IPERF_PORT: u16 = 5201;
/// Flows in the many-flow UDP scenario.
const MANY_FLOWS: u16 = 1024;

/// One measurement: named numbers.
pub type Sample = Vec<(&'static str, f64)>;

pub struct Tools {
    pub loadgen: String,
}

fn spawn_in(ns: &Netns, program: &str, args: &[&str]) -> anyhow::Result<Child> {
    spawn_on(ns, None, program, args)
}

/// `spawn_in`, pinned to `cpu` when given (taskset).
fn spawn_on(ns: &Netns, cpu: Option<usize>, program: &str, args: &[&str]) -> anyhow::Result<Child> {
    if let Some(cpu) = cpu {
        let cpu = cpu.to_string();
        let pinned = [["-c", cpu.as_str(), program].as_slice(), args].concat();
        return spawn_on(ns, None, "taskset", &pinned);
    }
    Command::new("ip")
        .args(["netns", "exec", &ns.name, program])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program} in {}", ns.name))
}

pub(super) fn finish(child: Child, what: &str) -> anyhow::Result<Value> {
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("{what} printed no JSON"))
}

/// Whole-machine kernel time (system + irq + softirq) in ns, from /proc/stat.
pub(super) fn kernel_cpu_ns() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq ...; USER_HZ is 100 on Linux.
    let ticks = fields.get(2).unwrap_or(&0.0)
        + fields.get(5).unwrap_or(&0.0)
        + fields.get(6).unwrap_or(&0.0);
    ticks * 10_000_000.0
}

/// What a UDP flood did: datagrams sent and delivered, over how many seconds, at what kernel CPU cost (ns).
pub(super) struct Flood {
    pub sent: f64,
    pub delivered: f64,
    pub seconds: f64,
    pub kernel_cpu_ns: f64,
}

/// Flood the server's `port` from the client with UDP over `flows` source ports for `seconds`, over IPv4 or (with
/// `ipv6`) IPv6. The server drops UDP at its interface's ingress: arrivals are counted, and no socket or ICMP
/// answer costs anything, so the gateway is what limits the rate. ARP and neighbour discovery still pass.
pub(super) fn flood(
    topo: &Topology,
    tools: &Tools,
    port: u16,
    flows: u16,
    seconds: f64,
) -> anyhow::Result<Flood> {
    flood_family(topo, tools, (CLIENT_IP, SERVER_IP), port, flows, seconds)
}

fn flood_family(
    topo: &Topology,
    tools: &Tools,
    addresses: (&str, &str),
    port: u16,
    flows: u16,
    seconds: f64,
) -> anyhow::Result<Flood> {
    flood_from(topo, tools, addresses, &[(None, port)], flows, seconds)
}

/// The CPUs the two-CPU scenario's senders run on. On veth a frame is carried through the whole path (client,
/// bridge, gateway, macvlan, server) in the softirq of the CPU that sent it, so each sender's share of the
/// gateway's work runs on its own CPU, and both CPUs create and use flows in the one table at once.
const TWO_CPUS: [usize; 2] = [0, 1];

/// `flood_family`, from one sender per `(cpu, port)` (pinned to the CPU when given, toward the server's port), all
/// at once, each over its own `flows` source ports; their packets summed.
fn flood_from(
    topo: &Topology,
    tools: &Tools,
    (src, dst): (&str, &str),
    senders: &[(Option<usize>, u16)],
    flows: u16,
    seconds: f64,
) -> anyhow::Result<Flood> {
    let _drop = ServerDrop::install(&topo.server)?;
    let rx_before = rx_packets(&topo.server)?;
    let cpu_before = kernel_cpu_ns();
    let runs = senders
        .iter()
        .map(|(cpu, port)| {
            spawn_frames_on(
                topo,
                tools,
                *cpu,
                "udp-flood",
                (src, &endpoint(dst, *port)),
                &[
                    "--flows",
                    &flows.to_string(),
                    "--seconds",
                    &seconds.to_string(),
                ],
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut sent = 0.0;
    let mut elapsed: f64 = 1e-9;
    for run in runs {
        let report = finish(run, "udp-flood")?;
        sent += report["sent"].as_f64().unwrap_or(0.0);
        elapsed = elapsed.max(report["seconds"].as_f64().unwrap_or(0.0));
    }
    Ok(Flood {
        kernel_cpu_ns: kernel_cpu_ns() - cpu_before,
        delivered: (rx_packets(&topo.server)? - rx_before) as f64,
        sent,
        seconds: elapsed,
    })
}

// Long because it is one measurement from start to end (servers, load, counters, teardown); splitting it would
// scatter what must happen in order.
pub fn measure(
    scenario: &str,
    topo: &Topology,
    tools: &Tools,
    seconds: f64,
) -> anyhow::Result<Sample> {
    let client = &topo.clients[0];
    let secs = format!("{seconds}");
    let (client_ip, server_ip, base) = family_of(scenario);
    match base {
        "udp-many" | "udp-one" | "udp-many-2cpu" => {
            let flood = match base {
                // The same 1,024 flows as udp-many, half from each CPU (to two server ports).
                "udp-many-2cpu" => {
                    let senders = TWO_CPUS.map(|cpu| (Some(cpu), UDP_PORT + cpu as u16));
                    let addresses = (client_ip, server_ip);
                    flood_from(topo, tools, addresses, &senders, MANY_FLOWS / 2, seconds)?
                }
                _ => {
                    let flows = if base == "udp-many" { MANY_FLOWS } else { 1 };
                    let addresses = (client_ip, server_ip);
                    flood_family(topo, tools, addresses, UDP_PORT, flows, seconds)?
                }
            };
            Ok(vec![
                ("kpps", flood.delivered / flood.seconds / 1000.0),
                (
                    "delivered_pct",
                    if flood.sent > 0.0 {
                        100.0 * flood.delivered / flood.sent
                    } else {
                        0.0
                    },
                ),
                (
                    "kernel_ns_per_packet",
                    if flood.delivered > 0.0 {
                        flood.kernel_cpu_ns / flood.delivered
                    } else {
                        0.0
                    },
                ),
            ])
        }
        "tcp-stream-1" | "tcp-stream-8" => {
            let streams = if base == "tcp-stream-1" { "1" } else { "8" };
            let server = spawn_in(
                &topo.server,
                "iperf3",
                &["-s", "-1", "-p", &IPERF_PORT.to_string()],
            )?;
            std::thread::sleep(Duration::from_millis(300));
            let client_run = spawn_in(
                client,
                "iperf3",
                &[
                    "-c",
                    server_ip,
                    "-p",
                    &IPERF_PORT.to_string(),
                    "-P",
                    streams,
                    "-t",
                    &secs,
                    "-J",
                ],
            )?;
            let report = finish(client_run, "iperf3 client")?;
            let _ = server.wait_with_output();
            let bps = report["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap_or(0.0);
            Ok(vec![("gbit_per_s", bps / 1e9)])
        }
        "tcp-crr" | "tcp-crr-1cpu" | "tcp-crr-2cpu" => {
            let dst = endpoint(server_ip, TCP_PORT);
            // Connecting clients: (CPU, threads). A connection's packets are carried in the softirq of the CPU
            // that sent them, so pinned clients make new flows in the one table from one CPU or from both at once.
            let clients: Vec<(Option<usize>, &str)> = match base {
                "tcp-crr-1cpu" => vec![(Some(0), "2")],
                "tcp-crr-2cpu" => TWO_CPUS.iter().map(|cpu| (Some(*cpu), "1")).collect(),
                _ => vec![(None, "2")],
            };
            let cpu_before = kernel_cpu_ns();
            let runs = clients
                .iter()
                .map(|(cpu, threads)| {
                    let args = [
                        "tcp-crr",
                        "--dst",
                        &dst,
                        "--threads",
                        threads,
                        "--seconds",
                        &secs,
                    ];
                    spawn_on(client, *cpu, &tools.loadgen, &args)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let (mut connections, mut failed, mut elapsed) = (0.0, 0.0, 1e-9_f64);
            for run in runs {
                let r = finish(run, "tcp-crr")?;
                connections += r["connections"].as_f64().unwrap_or(0.0);
                failed += r["failed"].as_f64().unwrap_or(0.0);
                elapsed = elapsed.max(r["seconds"].as_f64().unwrap_or(0.0));
            }
            let kernel_ns = kernel_cpu_ns() - cpu_before;
            Ok(vec![
                ("connections_per_s", connections / elapsed),
                ("failed", failed),
                (
                    "kernel_ns_per_connection",
                    if connections > 0.0 {
                        kernel_ns / connections
                    } else {
                        0.0
                    },
                ),
            ])
        }
        "tcp-rr" => {
            let dst = endpoint(server_ip, TCP_PORT);
            let run = spawn_in(
                client,
                &tools.loadgen,
                &["tcp-rr", "--dst", &dst, "--seconds", &secs],
            )?;
            let r = finish(run, "tcp-rr")?;
            Ok(vec![
                ("p50_us", r["p50_us"].as_f64().unwrap_or(0.0)),
                ("p99_us", r["p99_us"].as_f64().unwrap_or(0.0)),
            ])
        }
        other => bail!(
            "unknown scenario {other:?}: choose from {}",
            SCENARIOS.join(", ")
        ),
    }
}

/// A frame-sending subcommand of the load generator in the first client, toward the server's `port`, through the
/// gateway's eth0.
pub(super) fn spawn_frames(
    topo: &Topology,
    tools: &Tools,
    subcommand: &str,
    port: u16,
    extra: &[&str],
) -> anyhow::Result<Child> {
    let dst = endpoint(SERVER_IP, port);
    spawn_frames_between(topo, tools, subcommand, (CLIENT_IP, &dst), extra)
}

/// `spawn_frames` from the client's address `src` to `dst` ("ADDRESS:PORT"), either family.
fn spawn_frames_between(
    topo: &Topology,
    tools: &Tools,
    subcommand: &str,
    addresses: (&str, &str),
    extra: &[&str],
) -> anyhow::Result<Child> {
    spawn_frames_on(topo, tools, None, subcommand, addresses, extra)
}

/// `spawn_frames_between`, pinned to `cpu` when given.
fn spawn_frames_on(
    topo: &Topology,
    tools: &Tools,
    cpu: Option<usize>,
    subcommand: &str,
    (src, dst): (&str, &str),
    extra: &[&str],
) -> anyhow::Result<Child> {
    let gateway_mac = link(&topo.gateway, "eth0")?["address"]
        .as_str()
        .context("no MAC on the gateway's eth0")?
        .to_owned();
    let mut args = vec![
        subcommand,
        "--interface",
        "eth0",
        "--gateway-mac",
        &gateway_mac,
        "--src",
        src,
        "--dst",
        dst,
    ];
    args.extend_from_slice(extra);
    spawn_on(&topo.clients[0], cpu, &tools.loadgen, &args)
}

/// `ip -j link show DEV` of the topology's server or gateway.
fn link(ns: &Netns, device: &str) -> anyhow::Result<Value> {
    let out = Command::new("ip")
        .args(["-n", &ns.name, "-j", "-s", "link", "show", device])
        .output()?;
    let links: Value = serde_json::from_slice(&out.stdout).context("ip -j link show")?;
    Ok(links[0].clone())
}

/// Packets received on the server's underlay interface.
fn rx_packets(server: &Netns) -> anyhow::Result<u64> {
    link(server, SERVER_INTERFACE)?["stats64"]["rx"]["packets"]
        .as_u64()
        .context("no rx counter")
}

const SERVER_INTERFACE: &str = "ul1";

/// An nftables netdev-ingress rule dropping UDP at the server's interface (this kernel has no classic TC
/// classifiers), removed on drop.
pub(super) struct ServerDrop<'a>(&'a Netns);

impl<'a> ServerDrop<'a> {
    pub(super) fn install(server: &'a Netns) -> anyhow::Result<ServerDrop<'a>> {
        let rule = format!(
            "add table netdev veg_bench_sink\n\
             add chain netdev veg_bench_sink ingress {{ type filter hook ingress device \"{SERVER_INTERFACE}\" priority 0; }}\n\
             add rule netdev veg_bench_sink ingress ip protocol udp drop\n\
             add rule netdev veg_bench_sink ingress ip6 nexthdr udp drop\n"
        );
        output_of(&mut server.command("nft", &[&rule]))
            .map_err(|e| anyhow::anyhow!("installing the server's drop rule: {e}"))?;
        Ok(ServerDrop(server))
    }
}

impl Drop for ServerDrop<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .exec("nft", &["delete", "table", "netdev", "veg_bench_sink"]);
    }
}

/// The TCP server the crr and rr scenarios talk to, for the whole run.
pub fn start_tcp_server(topo: &Topology, tools: &Tools) -> anyhow::Result<Child> {
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &topo.server.name,
            &tools.loadgen,
            "tcp-server",
            "--port",
            &TCP_PORT.to_string(),
        ])
        .stdout(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(200));
    Ok(child)
}
