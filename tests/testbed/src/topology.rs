//! The gateway topology: VPC clients on a switch, a gateway instance (eth0 on the switch, net1 a macvlan on an
//! underlay link), and an external server on the underlay. Addresses:
//!
//!   VPC 10.16.0.0/16: gateway eth0 10.16.0.12; SNAT clients 10.16.0.x, forward clients 10.16.1.x,
//!                     clients outside every policy 10.16.2.x
//!   underlay 172.17.0.0/16: server 172.17.0.1 (also the external gateway), gateway net1 172.17.0.11
//!
//! and IPv6 alike, on every link (a gateway serves it when started with `start_dual_stack_gateway`):
//!
//!   VPC fd00:10:16::/48: gateway eth0 fd00:10:16::12; SNAT clients fd00:10:16::x, forward clients
//!                        fd00:10:16:1::x, clients outside every policy fd00:10:16:2::x
//!   underlay fd00:172:17::/64: server fd00:172:17::1, gateway net1 fd00:172:17::11

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{netns::Netns, unique};

pub const GATEWAY_INTERNAL_IP: &str = "10.16.0.12";
pub const GATEWAY_EXTERNAL_IP: &str = "172.17.0.11";
pub const SERVER_IP: &str = "172.17.0.1";
pub const SNAT_SOURCES: &str = "10.16.0.0/24";
pub const FORWARD_SOURCES: &str = "10.16.1.0/24";
pub const GATEWAY_INTERNAL_IPV6: &str = "fd00:10:16::12";
pub const GATEWAY_EXTERNAL_IPV6: &str = "fd00:172:17::11";
pub const SERVER_IPV6: &str = "fd00:172:17::1";
pub const SNAT_SOURCES_V6: &str = "fd00:10:16::/64";
pub const FORWARD_SOURCES_V6: &str = "fd00:10:16:1::/64";

/// The external server's IPv6 address at `port`.
pub fn server6(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::new(
        SERVER_IPV6.parse().expect("SERVER_IPV6 is an address"),
        port,
    )
}

/// The gateway's external IPv6 address.
pub fn external_ipv6() -> std::net::IpAddr {
    GATEWAY_EXTERNAL_IPV6
        .parse()
        .expect("GATEWAY_EXTERNAL_IPV6 is an address")
}

/// The external server's address at `port`.
pub fn server(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::new(SERVER_IP.parse().expect("SERVER_IP is an address"), port)
}

/// The gateway's external address: the source the server sees for translated traffic.
pub fn external_ip() -> std::net::IpAddr {
    GATEWAY_EXTERNAL_IP
        .parse()
        .expect("GATEWAY_EXTERNAL_IP is an address")
}

pub struct Topology {
    pub prefix: String,
    /// The `veg` binary that runs the gateway.
    pub veg: String,
    // Field order is drop order: clients, then the instance, then the rest.
    pub clients: Vec<Netns>,
    pub gateway: Netns,
    pub server: Netns,
    pub underlay: Netns,
    pub vpc: Netns,
}

impl Topology {
    pub fn new(veg: &str) -> Topology {
        let prefix = unique("veg");
        let vpc = Netns::new(&format!("{prefix}-vpc"));
        let gateway = Netns::new(&format!("{prefix}-gw"));
        let underlay = Netns::new(&format!("{prefix}-ul"));
        let server = Netns::new(&format!("{prefix}-srv"));

        vpc.ip(&["link", "add", "br0", "type", "bridge"]);
        vpc.ip(&["link", "set", "br0", "up"]);
        // Gateway eth0 on the VPC switch.
        vpc.add_veth("gw", "eth0", &gateway);
        vpc.ip(&["link", "set", "gw", "master", "br0", "up"]);
        gateway.ip(&[
            "addr",
            "add",
            &format!("{GATEWAY_INTERNAL_IP}/16"),
            "dev",
            "eth0",
        ]);
        gateway.ip(&["link", "set", "eth0", "up"]);
        // The underlay: the node's link, the server on its far end, net1 a macvlan moved into the instance as
        // Multus does.
        underlay.add_veth("ul0", "ul1", &server);
        underlay.ip(&["link", "set", "ul0", "up"]);
        underlay.ip(&[
            "link", "add", "net1", "link", "ul0", "type", "macvlan", "mode", "bridge",
        ]);
        underlay.ip(&["link", "set", "net1", "netns", &gateway.name]);
        gateway.ip(&[
            "addr",
            "add",
            &format!("{GATEWAY_EXTERNAL_IP}/16"),
            "dev",
            "net1",
        ]);
        gateway.ip(&["link", "set", "net1", "up"]);
        gateway.ip(&["route", "add", "default", "via", SERVER_IP]);
        server.ip(&["addr", "add", &format!("{SERVER_IP}/16"), "dev", "ul1"]);
        server.ip(&["link", "set", "ul1", "up"]);
        // Forward (no-SNAT) clients are routed, not translated: the outside reaches them through the gateway.
        server.ip(&["route", "add", "10.16.0.0/16", "via", GATEWAY_EXTERNAL_IP]);
        // IPv6 on the same links; without duplicate address detection, so that the addresses work at once.
        for (ns, address, dev) in [
            (&gateway, format!("{GATEWAY_INTERNAL_IPV6}/48"), "eth0"),
            (&gateway, format!("{GATEWAY_EXTERNAL_IPV6}/64"), "net1"),
            (&server, format!("{SERVER_IPV6}/64"), "ul1"),
        ] {
            ns.ip(&["-6", "addr", "add", &address, "dev", dev, "nodad"]);
        }
        gateway.ip(&["-6", "route", "add", "default", "via", SERVER_IPV6]);
        server.ip(&[
            "-6",
            "route",
            "add",
            "fd00:10:16::/48",
            "via",
            GATEWAY_EXTERNAL_IPV6,
        ]);
        Topology {
            prefix,
            veg: veg.to_owned(),
            clients: Vec::new(),
            gateway,
            server,
            underlay,
            vpc,
        }
    }

    /// A client namespace on the VPC switch with this address, routing everything through the gateway.
    pub fn add_client(&mut self, address: &str) -> usize {
        let index = self.clients.len();
        let client = Netns::new(&format!("{}-c{index}", self.prefix));
        let port = format!("c{index}");
        self.vpc.add_veth(&port, "eth0", &client);
        self.vpc.ip(&["link", "set", &port, "master", "br0", "up"]);
        client.ip(&["addr", "add", &format!("{address}/16"), "dev", "eth0"]);
        client.ip(&["link", "set", "eth0", "up"]);
        client.ip(&["route", "add", "default", "via", GATEWAY_INTERNAL_IP]);
        self.clients.push(client);
        index
    }

    /// A client with an IPv4 and an IPv6 address, routing both families through the gateway.
    pub fn add_dual_stack_client(&mut self, address: &str, address6: &str) -> usize {
        let index = self.add_client(address);
        let client = &self.clients[index];
        client.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{address6}/48"),
            "dev",
            "eth0",
            "nodad",
        ]);
        client.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            GATEWAY_INTERNAL_IPV6,
        ]);
        index
    }

    pub fn client(&self, index: usize) -> &Netns {
        &self.clients[index]
    }

    /// Start `veg gateway` in the instance with the topology's policies plus `extra` arguments.
    pub fn start_gateway(&self, extra: &[&str]) -> Gateway {
        self.start_gateway_for(Stack::Ipv4, extra)
    }

    /// The same, translating IPv6 too: both external addresses and the IPv6 policies.
    pub fn start_dual_stack_gateway(&self, extra: &[&str]) -> Gateway {
        self.start_gateway_for(Stack::Dual, extra)
    }

    /// The same, for the families of `stack`.
    pub fn start_gateway_for(&self, stack: Stack, extra: &[&str]) -> Gateway {
        let name = format!("{}-gw", self.prefix);
        Gateway::start(&self.veg, &name, &self.gateway.name, stack, extra)
    }
}

/// The families a gateway translates: its external addresses and the policies of their families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stack {
    Ipv4,
    Dual,
    Ipv6,
}

/// `veg gateway NAME` in the topology's instance `netns`, with the topology's interfaces, external address and policies.
pub fn gateway_command(veg: &str, name: &str, netns: &str) -> Command {
    gateway_command_families(veg, name, netns, Stack::Ipv4)
}

/// `gateway_command`, with the external addresses and policies of `stack`'s families.
pub fn gateway_command_families(veg: &str, name: &str, netns: &str, stack: Stack) -> Command {
    let mut command = Command::new(veg);
    command
        .args(["gateway", "--name", name, "--netns", netns])
        .args([
            "--internal-interface",
            "eth0",
            "--external-interface",
            "net1",
        ]);
    let external = match stack {
        Stack::Ipv4 => GATEWAY_EXTERNAL_IP.to_owned(),
        Stack::Dual => format!("{GATEWAY_EXTERNAL_IP},{GATEWAY_EXTERNAL_IPV6}"),
        Stack::Ipv6 => GATEWAY_EXTERNAL_IPV6.to_owned(),
    };
    command.args(["--external-ip", &external]);
    if stack != Stack::Ipv6 {
        command.args(["--snat", SNAT_SOURCES, "--forward", FORWARD_SOURCES]);
    }
    if stack != Stack::Ipv4 {
        command.args(["--snat", SNAT_SOURCES_V6, "--forward", FORWARD_SOURCES_V6]);
    }
    command
}

/// A running `veg gateway`. Dropping it stops the agent and removes its pinned state.
pub struct Gateway {
    pub name: String,
    veg: String,
    netns: String,
    stack: Stack,
    extra: Vec<String>,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

impl Gateway {
    fn start(veg: &str, name: &str, netns: &str, stack: Stack, extra: &[&str]) -> Gateway {
        let mut gateway = Gateway {
            name: name.to_owned(),
            veg: veg.to_owned(),
            netns: netns.to_owned(),
            stack,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            log: Arc::new(Mutex::new(String::new())),
        };
        gateway.spawn();
        gateway
    }

    fn spawn(&mut self) {
        let mut child = gateway_command_families(&self.veg, &self.name, &self.netns, self.stack)
            .args(&self.extra)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting veg gateway");
        let stderr = child.stderr.take().unwrap();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        self.child = Some(child);
        self.wait_for_log("gateway datapath attached", Duration::from_secs(20));
    }

    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().matches(needle).count() > 0 {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "veg gateway exited ({status}) before {needle:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "veg gateway did not log {needle:?} in time:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM and wait: the agent detaches and keeps its pins.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = child.wait().expect("waiting for veg gateway");
            assert!(
                status.success(),
                "veg gateway exited with {status} on SIGTERM:\n{}",
                self.log()
            );
        }
    }

    /// Send SIGTERM without waiting: a drain (`--drain-seconds`) begins.
    pub fn begin_stop(&self) {
        if let Some(child) = &self.child {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
    }

    /// Whether the agent has exited (successfully, or the test fails).
    pub fn exited(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        let Some(status) = child.try_wait().expect("waiting for veg gateway") else {
            return false;
        };
        assert!(
            status.success(),
            "veg gateway exited with {status}:\n{}",
            self.log()
        );
        self.child = None;
        true
    }

    /// SIGKILL and wait: the agent dies without detaching anything, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stop and start again with the same settings.
    pub fn restart(&mut self) {
        self.stop();
        self.log.lock().unwrap().clear();
        self.spawn();
    }

    fn veg(&self, command: &str) -> serde_json::Value {
        self.veg_with(command, &[])
    }

    fn veg_with(&self, command: &str, extra: &[&str]) -> serde_json::Value {
        let out = crate::command::run(
            Command::new(&self.veg)
                .args([command, "--name", &self.name, "--json"])
                .args(extra),
        );
        serde_json::from_str(&out).unwrap()
    }

    /// `veg flows` as a person reads it.
    pub fn flows_table(&self) -> String {
        let out = Command::new(&self.veg)
            .args(["flows", "--name", &self.name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `veg flows --json`.
    pub fn flows(&self) -> Vec<serde_json::Value> {
        self.veg("flows").as_array().unwrap().clone()
    }

    /// `veg flows --fragments --json`: the fragmented datagrams followed.
    pub fn fragmented_datagrams(&self) -> Vec<serde_json::Value> {
        self.veg_with("flows", &["--fragments"])
            .as_array()
            .unwrap()
            .clone()
    }

    /// The fragmented datagrams followed, as (identification, translated end, the address it is translated to).
    pub fn followed_datagrams(&self) -> Vec<(u64, String, String)> {
        let text =
            |d: &serde_json::Value, field: &str| d[field].as_str().unwrap_or_default().to_owned();
        self.fragmented_datagrams()
            .iter()
            .map(|d| {
                (
                    d["id"].as_u64().unwrap_or_default(),
                    text(d, "translated"),
                    text(d, "to"),
                )
            })
            .collect()
    }

    /// `veg flows --count`: how many translations are live.
    pub fn flow_count(&self) -> u64 {
        self.veg_with("flows", &["--count"])["flows"]
            .as_u64()
            .expect("veg flows --count --json prints {\"flows\": N}")
    }

    /// One counter from `veg stats --json` (`{"name": {"value": N, "meaning": "..."}}`).
    pub fn counter(&self, label: &str) -> u64 {
        self.veg("stats")[label]["value"]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {label}"))
    }

    /// A counter the agent keeps (it writes them a moment after the packets went): its value once it reaches
    /// `expected`, or after 3 s.
    pub fn agent_counter(&self, label: &str, expected: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let value = self.counter(label);
            if value >= expected || Instant::now() > deadline {
                return value;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
        let _ = Command::new(&self.veg)
            .args(["gateway", "--name", &self.name, "--cleanup"])
            .output();
    }
}
