//! `cargo xtask lab demo`: the walkthrough of Kube-OVN's VPC Egress Gateway guide (docs/contract.md) on the lab,
//! narrated.
//! gateway1 on the default VPC with one instance, then two; gateway2 on vpc1 with BFD and two instances; one
//! instance killed under a steady stream, and how long the traffic took to flow again; `veg flows` of the
//! survivor. The demo runs its own lab (prefix vegdemo) and takes it down at the end, also on failure.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use veg_testbed::{
    command::output_of,
    udp::{Echo, Stream, round_trip},
};

use crate::workspace::{build_veg, setup, step};

const DIR: &str = "/run/veg-demo";
const PREFIX: &str = "vegdemo";
const PORT: u16 = 9000;

const GATEWAY1: &str = "apiVersion: kubeovn.io/v1
kind: VpcEgressGateway
metadata:
  name: gateway1
  namespace: default
spec:
  vpc: ovn-cluster
  replicas: 1
  externalSubnet: macvlan1
  policies:
    - snat: true
      subnets:
        - ovn-default
";

pub const GATEWAY2: &str = "apiVersion: kubeovn.io/v1
kind: Vpc
metadata:
  name: vpc1
spec:
  bfdPort:
    enabled: true
    ip: 10.255.255.255,fd00:255::ff
status:
  defaultLogicalSwitch: subnet1
---
apiVersion: kubeovn.io/v1
kind: VpcEgressGateway
metadata:
  name: gateway2
  namespace: default
spec:
  vpc: vpc1
  replicas: 2
  internalSubnet: subnet1
  externalSubnet: macvlan1
  bfd:
    enabled: true
    minRX: 100
    minTX: 100
    multiplier: 3
  policies:
    - snat: true
      ipBlocks:
        - 192.168.0.0/24
        - fd00:192:168::/64
";

/// A lab driven through `veg lab` (the demo's, or the failover bench's), narrated unless quiet.
pub struct Demo<'a> {
    pub veg: &'a Path,
    pub dir: &'static str,
    pub prefix: &'static str,
    pub quiet: bool,
}

fn server() -> SocketAddr {
    SocketAddr::from(([172, 17, 0, 1], PORT))
}

/// The external server's IPv6 address: the lab's vpc1 and underlay are dual-stack.
fn server6() -> SocketAddr {
    SocketAddr::new(
        IpAddr::V6("fd00:172:17::1".parse().expect("an address")),
        PORT,
    )
}

impl Demo<'_> {
    pub fn netns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// `veg lab ARGS` on the demo's lab; its output, shown indented.
    pub fn lab(&self, args: &[&str]) -> anyhow::Result<String> {
        output_of(
            Command::new(self.veg)
                .args(["lab", "--dir", self.dir, "--prefix", self.prefix])
                .args(args),
        )
        .map_err(anyhow::Error::msg)
    }

    fn show(&self, command: &str, output: &str) {
        if self.quiet {
            return;
        }
        println!("  $ {command}");
        for line in output.lines() {
            println!("    {line}");
        }
    }

    pub fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        let file = format!("{}/demo-manifest.yaml", self.dir);
        std::fs::write(&file, yaml)?;
        self.show("cat gateway.yaml", yaml);
        let out = self.lab(&["apply", "-f", &file])?;
        self.show("veg lab apply -f gateway.yaml", &out);
        Ok(())
    }

    fn get_wide(&self) -> anyhow::Result<()> {
        let out = self.lab(&["get", "veg", "-o", "wide"])?;
        self.show("veg lab get veg -o wide", &out);
        Ok(())
    }

    /// Wait until the gateway is Completed and ready with `instances` internal IPs.
    pub fn wait_ready(&self, gateway: &str, instances: usize) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            let table = self.lab(&["get", "veg", gateway, "-o", "wide"])?;
            let row = table.lines().nth(1).unwrap_or_default();
            let ips = row.split_whitespace().nth(7).unwrap_or_default();
            if row.contains("Completed")
                && row.contains(" true ")
                && ips.matches('.').count() == 3 * instances
            {
                return Ok(started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "{gateway} not ready after 60 s:\n{table}\nsee {}/controller-lab.log",
                    self.dir
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn nbctl(&self, args: &[&str]) -> anyhow::Result<String> {
        output_of(
            Command::new("ovn-nbctl")
                .arg(format!("--db=unix:{}/nb.sock", self.dir))
                .args(args),
        )
        .map_err(anyhow::Error::msg)
    }

    fn show_nbctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = self.nbctl(args)?;
        self.show(&format!("ovn-nbctl {}", args.join(" ")), &out);
        Ok(())
    }

    /// A client sends through the gateway; say which address the external server saw.
    fn send(&self, echo: &Echo, client: &str, address: &str) -> anyhow::Result<IpAddr> {
        self.send_to(echo, client, address, server())
    }

    /// The same to the server's address `to` (its IPv4 or IPv6 one).
    fn send_to(
        &self,
        echo: &Echo,
        client: &str,
        address: &str,
        to: SocketAddr,
    ) -> anyhow::Result<IpAddr> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !round_trip(&self.netns(client), to) {
            ensure!(
                Instant::now() < deadline,
                "{client} got no answer from the external server"
            );
        }
        let seen = *echo.sources().last().context("the server heard nothing")?;
        println!(
            "  {client} ({address}) -> external server {}: the server saw {seen}",
            to.ip()
        );
        Ok(seen)
    }

    // Long because it is the walkthrough's script: each step of the guide, narrated in order.
    fn walkthrough(&self) -> anyhow::Result<()> {
        step("the lab: real OVN and Open vSwitch, pods and instances as network namespaces");
        let out = self.lab(&["up"])?;
        self.show("veg lab up", &out);
        let echo = Echo::start(&self.netns("external"), PORT);
        let echo6 = Echo::start_at(&self.netns("external"), server6());

        step("gateway1 on the default VPC (ovn-cluster), one instance");
        self.apply(GATEWAY1)?;
        let took = self.wait_ready("gateway1", 1)?;
        println!("  ready in {:.1} s", took.as_secs_f64());
        self.get_wide()?;
        self.show_nbctl(&["lr-policy-list", "ovn-cluster"])?;
        let seen = self.send(&echo, "client1", "10.16.0.2")?;
        ensure!(
            seen.to_string().starts_with("172.17."),
            "client1 was not translated: the server saw {seen}"
        );

        step("gateway1 scaled to two instances (`kubectl scale veg gateway1 --replicas 2`)");
        let out = self.lab(&["scale", "veg", "gateway1", "--replicas", "2"])?;
        self.show("veg lab scale veg gateway1 --replicas 2", &out);
        self.wait_ready("gateway1", 2)?;
        self.get_wide()?;
        self.show_nbctl(&["lr-policy-list", "ovn-cluster"])?;

        step("gateway2 on dual-stack vpc1 with BFD (100 ms x 3) in both families, two instances");
        self.apply(GATEWAY2)?;
        let took = self.wait_ready("gateway2", 2)?;
        println!(
            "  ready in {:.1} s (every BFD session up, IPv4 and IPv6)",
            took.as_secs_f64()
        );
        self.get_wide()?;
        self.show_nbctl(&["lr-route-list", "vpc1"])?;
        self.show_nbctl(&[
            "--columns=logical_port,dst_ip,min_rx,min_tx,detect_mult,status",
            "list",
            "BFD",
        ])?;
        let status = Command::new(self.veg)
            .args(["bfd", "status", "--name", "default_gateway2-0"])
            .output()?;
        self.show(
            "veg bfd status --name default_gateway2-0   (in instance gateway2-0)",
            &String::from_utf8_lossy(&status.stdout),
        );
        let seen = self.send(&echo, "vpc1-client1", "192.168.0.2")?;
        // NAT66: the same client's IPv6 egress leaves as an instance's external IPv6 address.
        let seen6 = self.send_to(&echo6, "vpc1-client1", "fd00:192:168::2", server6())?;
        ensure!(
            seen6.to_string().starts_with("fd00:172:17::"),
            "vpc1-client1's IPv6 was not translated: the server saw {seen6}"
        );

        step("failover: kill the instance carrying a steady stream (a datagram every 5 ms)");
        let stream = Stream::start(&self.netns("vpc1-client1"), server());
        std::thread::sleep(Duration::from_millis(500));
        let carrier = echo.sources().last().copied().unwrap_or(seen);
        let (victim, survivor) = instances_of_gateway2(self.dir, carrier)?;
        println!(
            "  the stream leaves as {carrier}, through {}: killing it",
            victim.pod
        );
        let heard = echo.heard();
        let killed = Instant::now();
        let out = self.lab(&["kill", &victim.pod])?;
        self.show(&format!("veg lab kill {}", victim.pod), &out);
        std::thread::sleep(Duration::from_millis(1500));
        let gap = stream.longest_gap_after(killed);
        drop(stream);
        let after = echo.sources_since(heard);
        println!(
            "  traffic flowed again after {} ms through {} ({}); the server saw {:?} since the kill",
            gap.as_millis(),
            survivor.pod,
            survivor.external_ip,
            after
        );
        ensure!(gap < Duration::from_secs(1), "the failover took {gap:?}");
        ensure!(
            after.contains(&survivor.external_ip),
            "the stream never left through {}",
            survivor.pod
        );
        let survivor = survivor.pod;

        step(&format!("veg flows of the survivor ({survivor})"));
        let flows = Command::new(self.veg)
            .args(["flows", "--name", &format!("default_{survivor}")])
            .output()?;
        self.show(
            &format!("veg flows --name default_{survivor}"),
            &String::from_utf8_lossy(&flows.stdout),
        );

        step("the killed instance is restarted, and returns to service once OVN routes to it");
        // Its pod is Ready only once OVN has its BFD session up (the readiness gate), and so is the gateway.
        self.wait_restarted(&victim)?;
        self.wait_ready("gateway2", 2)?;
        println!(
            "  {} restarted and gateway2 Ready again {} ms after the kill",
            victim.pod,
            killed.elapsed().as_millis()
        );
        let bfd = self.nbctl(&["--bare", "--columns=status", "list", "BFD"])?;
        self.show_nbctl(&["--columns=dst_ip,status", "list", "BFD"])?;
        ensure!(
            bfd.split_whitespace().all(|s| s == "up"),
            "gateway2 reported Ready while OVN had a session down:\n{bfd}"
        );
        Ok(())
    }

    /// Wait until the lab's kubelet has started `instance` again (its record's start time moved on).
    fn wait_restarted(&self, instance: &Instance) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let path = format!("{}/instances/{}.{}.json", self.dir, "default", instance.pod);
            let now: Option<Instance> = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| serde_json::from_str(&text).ok());
            if now.is_some_and(|now| now.started > instance.started) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{} was not restarted within 30 s",
                instance.pod
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The lab's record of an instance (the part the demo needs).
#[derive(serde::Deserialize)]
pub struct Instance {
    pub pod: String,
    gateway: String,
    pub external_ip: IpAddr,
    /// When the lab's kubelet last started its agent (seconds since the epoch).
    #[serde(default)]
    started: u64,
}

/// gateway2's instance leaving as `carrier`, and the other one.
pub fn instances_of_gateway2(dir: &str, carrier: IpAddr) -> anyhow::Result<(Instance, Instance)> {
    let mut instances: Vec<Instance> = std::fs::read_dir(format!("{dir}/instances"))?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|x| x == "json"))
        .filter_map(|path| serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok())
        .filter(|i: &Instance| i.gateway == "default/gateway2")
        .collect();
    let at = instances
        .iter()
        .position(|i| i.external_ip == carrier)
        .context("no instance of gateway2 carries the stream")?;
    let victim = instances.remove(at);
    let survivor = instances.pop().context("gateway2 has no second instance")?;
    Ok((victim, survivor))
}

pub fn run() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab creates network namespaces and runs OVN and eBPF programs: run it as root");
    }
    setup()?;
    let veg = build_veg()?;
    let demo = Demo {
        veg: &veg,
        dir: DIR,
        prefix: PREFIX,
        quiet: false,
    };
    let started = Instant::now();
    let result = demo.walkthrough();
    step("tearing the lab down");
    let down = demo.lab(&["down"]);
    result?;
    print!("{}", down?);
    println!("demo finished in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
