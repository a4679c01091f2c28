//! The lab's cluster network, as a Kube-OVN cluster has it:
//!
//!   default VPC: router ovn-cluster, switch ovn-default 10.16.0.0/16 (gateway 10.16.0.1); its default route
//!                points nowhere (10.16.0.254), so only what a gateway reroutes leaves the VPC
//!   vpc1:        router vpc1 bound to the chassis (OVN 23.03 runs BFD and ecmp-symmetric-reply only on such
//!                gateway routers), switch subnet1 192.168.0.0/24 and fd00:192:168::/64, dual-stack (gateways
//!                192.168.0.1 and fd00:192:168::1)
//!   pods:        network namespaces on those switches (a veth into br-int with the pod's logical switch port);
//!                on a dual-stack switch a pod's IPv6 address ends as its IPv4 one does (192.168.0.2 ->
//!                fd00:192:168::2)
//!   underlay:    the node's link, dual-stack, with the external server 172.17.0.1 and fd00:172:17::1 (also the
//!                external subnet's gateways) on its far end; instances get a macvlan on it, as Multus gives them
//!                net1
//!
//! Pods and instances join a switch the same way; checksum offload is off on both ends of their veth, as OVS's
//! userspace datapath needs.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Context as _;

use crate::{Lab, command::run};

pub struct Switch {
    pub name: &'static str,
    pub router: &'static str,
    pub cidr: &'static str,
    pub gateway: &'static str,
    /// The IPv6 prefix (a /64) and gateway of a dual-stack switch.
    pub cidr6: Option<&'static str>,
    pub gateway6: Option<&'static str>,
}

pub const DEFAULT_SWITCH: Switch = Switch {
    name: "ovn-default",
    router: "ovn-cluster",
    cidr: "10.16.0.0/16",
    gateway: "10.16.0.1",
    cidr6: None,
    gateway6: None,
};

pub const VPC1_SWITCH: Switch = Switch {
    name: "subnet1",
    router: "vpc1",
    cidr: "192.168.0.0/24",
    gateway: "192.168.0.1",
    cidr6: Some("fd00:192:168::/64"),
    gateway6: Some("fd00:192:168::1"),
};

pub const SWITCHES: [&Switch; 2] = [&DEFAULT_SWITCH, &VPC1_SWITCH];

/// The external network: the underlay, its gateway and the external server (one namespace).
pub const EXTERNAL_CIDR: &str = "172.17.0.0/16";
pub const EXTERNAL_GATEWAY: &str = "172.17.0.1";
pub const EXTERNAL_CIDR6: &str = "fd00:172:17::/64";
pub const EXTERNAL_GATEWAY6: &str = "fd00:172:17::1";

/// The IPv6 address in `cidr6` (a /64) that ends as `v4` does: its last two octets as the last 16 bits, the lab's
/// IPAM rule for dual-stack pods.
pub fn ipv6_in(cidr6: &str, v4: Ipv4Addr) -> anyhow::Result<Ipv6Addr> {
    let net: ipnet::Ipv6Net = cidr6.parse()?;
    let [_, _, c, d] = v4.octets();
    Ok(Ipv6Addr::from(
        u128::from(net.network()) | u128::from(u16::from_be_bytes([c, d])),
    ))
}

/// The client pods, all in Kubernetes namespace "default": (name, switch, address).
pub const CLIENTS: [(&str, &Switch, &str); 6] = [
    ("client1", &DEFAULT_SWITCH, "10.16.0.2"),
    ("client2", &DEFAULT_SWITCH, "10.16.0.3"),
    ("client3", &DEFAULT_SWITCH, "10.16.0.4"),
    ("vpc1-client1", &VPC1_SWITCH, "192.168.0.2"),
    ("vpc1-client2", &VPC1_SWITCH, "192.168.0.3"),
    ("vpc1-client3", &VPC1_SWITCH, "192.168.0.4"),
];

/// A MAC address that only this IPv4 address gets (locally administered).
pub fn mac_of(address: Ipv4Addr) -> String {
    let [a, b, c, d] = address.octets();
    format!("0a:58:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

fn prefix_len(cidr: &str) -> &str {
    cidr.split_once('/').map_or("32", |(_, len)| len)
}

impl Lab {
    /// Routers, switches and their router ports; the default VPC's route to nowhere; vpc1 bound to the chassis.
    pub fn build_switches(&self) -> anyhow::Result<()> {
        for switch in SWITCHES {
            let gateway: Ipv4Addr = switch.gateway.parse()?;
            let router_port = format!("{}-{}", switch.router, switch.name);
            let switch_port = format!("{}-{}", switch.name, switch.router);
            let network = format!("{}/{}", switch.gateway, prefix_len(switch.cidr));
            let network6 = switch
                .cidr6
                .zip(switch.gateway6)
                .map(|(cidr, gateway)| format!("{gateway}/{}", prefix_len(cidr)));
            self.nbctl(&["--may-exist", "lr-add", switch.router])?;
            self.nbctl(&["--may-exist", "ls-add", switch.name])?;
            let mac = mac_of(gateway);
            let mut lrp = vec![
                "--may-exist",
                "lrp-add",
                switch.router,
                &router_port,
                &mac,
                &network,
            ];
            lrp.extend(network6.as_deref());
            self.nbctl(&lrp)?;
            self.nbctl(&[
                "--may-exist",
                "lsp-add",
                switch.name,
                &switch_port,
                "--",
                "lsp-set-type",
                &switch_port,
                "router",
                "--",
                "lsp-set-addresses",
                &switch_port,
                "router",
                "--",
                "lsp-set-options",
                &switch_port,
                &format!("router-port={router_port}"),
            ])?;
        }
        self.nbctl(&[
            "--may-exist",
            "lr-route-add",
            DEFAULT_SWITCH.router,
            "0.0.0.0/0",
            "10.16.0.254",
        ])?;
        self.nbctl(&[
            "set",
            "Logical_Router",
            VPC1_SWITCH.router,
            &format!("options:chassis={}", crate::CHASSIS),
        ])?;
        Ok(())
    }

    /// Put network namespace `netns` on `switch` as logical switch port `port`, with `address`; its default route
    /// through the switch's gateway unless `default_route` is false.
    pub fn attach(
        &self,
        netns: &str,
        switch: &Switch,
        port: &str,
        address: Ipv4Addr,
        default_route: bool,
    ) -> anyhow::Result<()> {
        let mac = mac_of(address);
        let address6 = switch.cidr6.map(|c| ipv6_in(c, address)).transpose()?;
        let addresses = match address6 {
            Some(v6) => format!("{mac} {address} {v6}"),
            None => format!("{mac} {address}"),
        };
        self.nbctl(&[
            "--may-exist",
            "lsp-add",
            switch.name,
            port,
            "--",
            "lsp-set-addresses",
            port,
            &addresses,
        ])?;
        let host = self.host_netns();
        // The host end is named after the namespace (at most 15 characters), inside the lab's host namespace.
        let host_end = self.host_end(netns);
        run(
            "ip",
            &[
                "link", "add", &host_end, "netns", &host, "type", "veth", "peer", "name", "eth0",
                "netns", netns,
            ],
        )?;
        let in_host = |args: &[&str]| crate::command::run_in(&host, args[0], &args[1..]);
        in_host(&["ip", "link", "set", &host_end, "up"])?;
        in_host(&["ethtool", "-K", &host_end, "tx", "off"])?;
        let in_ns = |args: &[&str]| crate::command::run_in(netns, args[0], &args[1..]);
        in_ns(&["ip", "link", "set", "eth0", "address", &mac, "up"])?;
        in_ns(&["ethtool", "-K", "eth0", "tx", "off"])?;
        in_ns(&[
            "ip",
            "addr",
            "add",
            &format!("{address}/{}", prefix_len(switch.cidr)),
            "dev",
            "eth0",
        ])?;
        if default_route {
            in_ns(&["ip", "route", "add", "default", "via", switch.gateway])?;
        }
        if let (Some(v6), Some(cidr6)) = (address6, switch.cidr6) {
            // Without duplicate address detection: usable at once.
            let v6 = format!("{v6}/{}", prefix_len(cidr6));
            in_ns(&["ip", "-6", "addr", "add", &v6, "dev", "eth0", "nodad"])?;
            if let (true, Some(gateway6)) = (default_route, switch.gateway6) {
                in_ns(&["ip", "-6", "route", "add", "default", "via", gateway6])?;
            }
        }
        self.vsctl(&[
            "--may-exist",
            "add-port",
            "br-int",
            &host_end,
            "--",
            "set",
            "Interface",
            &host_end,
            &format!("external_ids:iface-id={port}"),
        ])?;
        Ok(())
    }

    /// Take a namespace off its switch: its port, and its host end (the veth goes with it).
    pub fn detach(&self, netns: &str, port: &str) -> anyhow::Result<()> {
        let host_end = self.host_end(netns);
        self.vsctl(&["--if-exists", "del-port", "br-int", &host_end])?;
        self.nbctl(&["--if-exists", "lsp-del", port])?;
        let _ = crate::command::run_in(&self.host_netns(), "ip", &["link", "del", &host_end]);
        Ok(())
    }

    /// Wire a VPC's BFD port (bfd@<vpc>, made by the controller's OVN model) to the VPC's switch, as the lab's
    /// stand-in for Kube-OVN. OVN 23.03 sends a BFD packet straight out of its logical port, so the port needs a
    /// peer on the switch where the instances are.
    pub fn wire_bfd_port(&self, vpc: &str, switch: &str) -> anyhow::Result<()> {
        let port = format!("{switch}-bfd");
        self.nbctl(&[
            "--may-exist",
            "lsp-add",
            switch,
            &port,
            "--",
            "lsp-set-type",
            &port,
            "router",
            "--",
            "lsp-set-addresses",
            &port,
            "router",
            "--",
            "lsp-set-options",
            &port,
            &format!("router-port=bfd@{vpc}"),
        ])?;
        Ok(())
    }

    /// The client pods, each in its namespace on its switch.
    pub fn build_clients(&self) -> anyhow::Result<()> {
        for (name, switch, address) in CLIENTS {
            let netns = self.netns(name);
            self.add_netns(&netns)?;
            self.attach(
                &netns,
                switch,
                &format!("{name}.default"),
                address.parse()?,
                true,
            )
            .with_context(|| format!("attaching pod {name}"))?;
        }
        Ok(())
    }

    /// The underlay link and the external server on its far end.
    pub fn build_underlay(&self) -> anyhow::Result<()> {
        let (underlay, external) = (self.underlay_netns(), self.external_netns());
        self.add_netns(&underlay)?;
        self.add_netns(&external)?;
        run(
            "ip",
            &[
                "link", "add", "ul0", "netns", &underlay, "type", "veth", "peer", "name", "eth0",
                "netns", &external,
            ],
        )?;
        crate::command::run_in(&underlay, "ip", &["link", "set", "ul0", "up"])?;
        let prefix = prefix_len(EXTERNAL_CIDR);
        crate::command::run_in(
            &external,
            "ip",
            &[
                "addr",
                "add",
                &format!("{EXTERNAL_GATEWAY}/{prefix}"),
                "dev",
                "eth0",
            ],
        )?;
        let prefix6 = prefix_len(EXTERNAL_CIDR6);
        crate::command::run_in(
            &external,
            "ip",
            &[
                "-6",
                "addr",
                "add",
                &format!("{EXTERNAL_GATEWAY6}/{prefix6}"),
                "dev",
                "eth0",
                "nodad",
            ],
        )?;
        crate::command::run_in(&external, "ip", &["link", "set", "eth0", "up"])?;
        Ok(())
    }

    /// Give `netns` a macvlan on the underlay named net1 with `address` (and `address6`), and its default route
    /// to the outside.
    pub fn attach_underlay(
        &self,
        netns: &str,
        address: Ipv4Addr,
        address6: Option<Ipv6Addr>,
    ) -> anyhow::Result<()> {
        let underlay = self.underlay_netns();
        let link = format!("m{}", self.host_end(netns));
        crate::command::run_in(
            &underlay,
            "ip",
            &[
                "link", "add", &link, "link", "ul0", "type", "macvlan", "mode", "bridge",
            ],
        )?;
        crate::command::run_in(&underlay, "ip", &["link", "set", &link, "netns", netns])?;
        let in_ns = |args: &[&str]| crate::command::run_in(netns, args[0], &args[1..]);
        in_ns(&["ip", "link", "set", &link, "name", "net1"])?;
        in_ns(&[
            "ip",
            "addr",
            "add",
            &format!("{address}/{}", prefix_len(EXTERNAL_CIDR)),
            "dev",
            "net1",
        ])?;
        if let Some(v6) = address6 {
            let v6 = format!("{v6}/{}", prefix_len(EXTERNAL_CIDR6));
            in_ns(&["ip", "-6", "addr", "add", &v6, "dev", "net1", "nodad"])?;
        }
        in_ns(&["ip", "link", "set", "net1", "up"])?;
        in_ns(&["ip", "route", "add", "default", "via", EXTERNAL_GATEWAY])?;
        if address6.is_some() {
            in_ns(&[
                "ip",
                "-6",
                "route",
                "add",
                "default",
                "via",
                EXTERNAL_GATEWAY6,
            ])?;
        }
        Ok(())
    }
}
