//! The ways the gateway instance can translate: veg's datapath (with or without translation records), or the
//! kernel's NAT as the reference sets it up.

use std::path::PathBuf;

use veg_testbed::topology::{Gateway, SNAT_SOURCES, SNAT_SOURCES_V6, Topology};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Veg,
    /// veg writing a translation record for every translation created and ended (`--flow-records FILE`): what
    /// the records cost, beside veg without them.
    VegRecords,
    /// `iptables -t nat -A POSTROUTING -s SRC -j MASQUERADE --random-fully`, as the reference's instance, and
    /// ip6tables' alike for IPv6.
    Iptables,
    /// nftables `masquerade fully-random`, in an ip and an ip6 table.
    Nftables,
}

pub const ALL: [Mode; 4] = [Mode::Veg, Mode::VegRecords, Mode::Iptables, Mode::Nftables];

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Veg => "veg",
            Mode::VegRecords => "veg+records",
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
        }
    }
}

/// A mode set up in the topology's gateway instance; dropping it undoes everything (rules, conntrack, pins).
pub enum Active<'a> {
    /// The running agent; dropping it stops the agent and removes its pins, and its records file when it wrote
    /// one.
    Veg {
        /// Always there; an Option so that dropping stops it before its records file is removed.
        agent: Option<Gateway>,
        records: Option<PathBuf>,
    },
    Netfilter {
        topo: &'a Topology,
        mode: Mode,
    },
}

pub fn enable(topo: &Topology, mode: Mode) -> Active<'_> {
    enable_with(topo, mode, &[])
}

/// `enable`, with extra `veg gateway` flags for veg's agent.
pub fn enable_with<'a>(topo: &'a Topology, mode: Mode, veg_flags: &[&str]) -> Active<'a> {
    enable_translating(topo, mode, veg_flags, None)
}

/// `enable_with`, every mode translating into the ports `range` ("LO-HI") when given (netfilter's rules then
/// translate UDP alone: a port range needs a protocol there).
pub fn enable_translating<'a>(
    topo: &'a Topology,
    mode: Mode,
    veg_flags: &[&str],
    range: Option<&str>,
) -> Active<'a> {
    let gw = &topo.gateway;
    match mode {
        Mode::Veg | Mode::VegRecords => {
            let mut flags = veg_flags.to_vec();
            if let Some(range) = range {
                flags.extend(["--port-range", range]);
            }
            // A file, as a log shipper would read: the records' whole path, from the ring to the disk.
            let records = (mode == Mode::VegRecords).then(|| {
                std::env::temp_dir().join(format!("veg-bench-records-{}.jsonl", std::process::id()))
            });
            let records_flag = records
                .as_ref()
                .map(|path| path.to_string_lossy().into_owned());
            if let Some(path) = &records_flag {
                flags.extend(["--flow-records", path]);
            }
            // Both families, as a dual-stack instance: the IPv4 scenarios take the same path as with IPv4 alone.
            Active::Veg {
                agent: Some(topo.start_dual_stack_gateway(&flags)),
                records,
            }
        }
        Mode::Iptables => {
            gw.sysctl("net.ipv4.conf.all.forwarding", "1");
            gw.sysctl("net.ipv6.conf.all.forwarding", "1");
            for (tool, sources) in [("iptables", SNAT_SOURCES), ("ip6tables", SNAT_SOURCES_V6)] {
                let mut rule = vec![
                    "-t",
                    "nat",
                    "-A",
                    "POSTROUTING",
                    "-s",
                    sources,
                    "-j",
                    "MASQUERADE",
                    "--random-fully",
                ];
                if let Some(range) = range {
                    rule.extend(["-p", "udp", "--to-ports", range]);
                }
                gw.exec_ok(tool, &rule);
            }
            Active::Netfilter { topo, mode }
        }
        Mode::Nftables => {
            gw.sysctl("net.ipv4.conf.all.forwarding", "1");
            gw.sysctl("net.ipv6.conf.all.forwarding", "1");
            for (family, match_source, sources) in
                [("ip", "ip", SNAT_SOURCES), ("ip6", "ip6", SNAT_SOURCES_V6)]
            {
                gw.exec_ok("nft", &["add", "table", family, "veg_bench"]);
                let chain = format!(
                    "add chain {family} veg_bench postrouting {{ type nat hook postrouting priority 100 ; }}"
                );
                gw.exec_ok("nft", &[&chain]);
                let to_ports = range.map(|r| format!("to :{r}"));
                let mut rule = vec![
                    "add",
                    "rule",
                    family,
                    "veg_bench",
                    "postrouting",
                    match_source,
                    "saddr",
                    sources,
                ];
                if let Some(to_ports) = &to_ports {
                    rule.extend(["meta", "l4proto", "udp", "masquerade", to_ports]);
                } else {
                    rule.push("masquerade");
                }
                rule.push("fully-random");
                gw.exec_ok("nft", &rule);
            }
            Active::Netfilter { topo, mode }
        }
    }
}

impl Active<'_> {
    /// veg's running agent, in veg mode.
    pub fn agent(&self) -> Option<&Gateway> {
        match self {
            Active::Veg { agent, .. } => agent.as_ref(),
            Active::Netfilter { .. } => None,
        }
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        if let Active::Veg { agent, records } = self {
            drop(agent.take());
            if let Some(path) = records {
                let _ = std::fs::remove_file(path.with_extension("jsonl.1"));
                let _ = std::fs::remove_file(path);
            }
        }
        if let Active::Netfilter { topo, mode } = self {
            let gw = &topo.gateway;
            match mode {
                Mode::Iptables => {
                    drop(gw.exec("iptables", &["-t", "nat", "-F", "POSTROUTING"]));
                    drop(gw.exec("ip6tables", &["-t", "nat", "-F", "POSTROUTING"]));
                }
                _ => {
                    drop(gw.exec("nft", &["delete", "table", "ip", "veg_bench"]));
                    drop(gw.exec("nft", &["delete", "table", "ip6", "veg_bench"]));
                }
            }
            drop(gw.exec("conntrack", &["-F"]));
            drop(gw.exec("conntrack", &["-F", "-f", "ipv6"]));
            gw.sysctl("net.ipv4.conf.all.forwarding", "0");
            gw.sysctl("net.ipv6.conf.all.forwarding", "0");
        }
    }
}
