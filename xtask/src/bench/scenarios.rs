//! What is measured, each scenario the same way for every mode.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::Value;
use veg_testbed::{lab::{Lab, SERVER_IP}, netns::Netns};

pub const SCENARIOS: &[&str] = &["udp-many", "udp-one", "tcp-stream-1", "tcp-stream-8", "tcp-crr", "tcp-rr"];
pub const CLIENT_IP: &str = "10.16.0.2";
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
    Command::new("ip")
        .args(["netns", "exec", &ns.name, program])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program} in {}", ns.name))
}

fn finish(child: Child, what: &str) -> anyhow::Result<Value> {
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("{what} printed no JSON"))
}

/// Whole-machine kernel time (system + irq + softirq) in ns, from /proc/stat.
fn kernel_cpu_ns() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> = stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq ...; USER_HZ is 100 on Linux.
    let ticks = fields.get(2).unwrap_or(&0.0) + fields.get(5).unwrap_or(&0.0) + fields.get(6).unwrap_or(&0.0);
    ticks * 10_000_000.0
}

pub fn measure(scenario: &str, lab: &Lab, tools: &Tools, seconds: f64) -> anyhow::Result<Sample> {
    let client = &lab.clients[0];
    let secs = format!("{seconds}");
    match scenario {
        "udp-many" | "udp-one" => {
            let flows = if scenario == "udp-many" { MANY_FLOWS } else { 1 };
            let sink = spawn_in(&lab.server, &tools.loadgen, &["udp-sink", "--port", &UDP_PORT.to_string(), "--seconds", &secs])?;
            std::thread::sleep(Duration::from_millis(200));
            let cpu_before = kernel_cpu_ns();
            let flood_secs = format!("{}", seconds + 0.5);
            let dst = format!("{SERVER_IP}:{UDP_PORT}");
            let flood = spawn_in(
                client,
                &tools.loadgen,
                &["udp-flood", "--src", CLIENT_IP, "--dst", &dst, "--flows", &flows.to_string(), "--seconds", &flood_secs],
            )?;
            let sent = finish(flood, "udp-flood")?;
            let cpu = kernel_cpu_ns() - cpu_before;
            let received = finish(sink, "udp-sink")?;
            let count = received["received"].as_f64().unwrap_or(0.0);
            let window = received["seconds"].as_f64().unwrap_or(0.0).max(1e-9);
            let sent_count = sent["sent"].as_f64().unwrap_or(0.0);
            Ok(vec![
                ("kpps", count / window / 1000.0),
                ("delivered_pct", if sent_count > 0.0 { 100.0 * count / sent_count } else { 0.0 }),
                ("kernel_ns_per_packet", if count > 0.0 { cpu / sent_count.max(count) } else { 0.0 }),
            ])
        }
        "tcp-stream-1" | "tcp-stream-8" => {
            let streams = if scenario == "tcp-stream-1" { "1" } else { "8" };
            let server = spawn_in(&lab.server, "iperf3", &["-s", "-1", "-p", &IPERF_PORT.to_string()])?;
            std::thread::sleep(Duration::from_millis(300));
            let client_run = spawn_in(
                client,
                "iperf3",
                &["-c", SERVER_IP, "-p", &IPERF_PORT.to_string(), "-P", streams, "-t", &secs, "-J"],
            )?;
            let report = finish(client_run, "iperf3 client")?;
            let _ = server.wait_with_output();
            let bps = report["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0);
            Ok(vec![("gbit_per_s", bps / 1e9)])
        }
        "tcp-crr" => {
            let dst = format!("{SERVER_IP}:{TCP_PORT}");
            let run = spawn_in(client, &tools.loadgen, &["tcp-crr", "--dst", &dst, "--seconds", &secs])?;
            let r = finish(run, "tcp-crr")?;
            let seconds = r["seconds"].as_f64().unwrap_or(1.0);
            Ok(vec![
                ("connections_per_s", r["connections"].as_f64().unwrap_or(0.0) / seconds),
                ("failed", r["failed"].as_f64().unwrap_or(0.0)),
            ])
        }
        "tcp-rr" => {
            let dst = format!("{SERVER_IP}:{TCP_PORT}");
            let run = spawn_in(client, &tools.loadgen, &["tcp-rr", "--dst", &dst, "--seconds", &secs])?;
            let r = finish(run, "tcp-rr")?;
            Ok(vec![
                ("p50_us", r["p50_us"].as_f64().unwrap_or(0.0)),
                ("p99_us", r["p99_us"].as_f64().unwrap_or(0.0)),
            ])
        }
        other => bail!("unknown scenario {other:?}: choose from {}", SCENARIOS.join(", ")),
    }
}

/// The TCP server the crr and rr scenarios talk to, for the whole run.
pub fn start_tcp_server(lab: &Lab, tools: &Tools) -> anyhow::Result<Child> {
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.server.name, &tools.loadgen, "tcp-server", "--port", &TCP_PORT.to_string()])
        .stdout(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(200));
    Ok(child)
}
