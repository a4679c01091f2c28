//! The ways the gateway instance can translate: veg's datapath, or the kernel's NAT as the reference sets it up.

use veg_testbed::lab::{Gateway, Lab, SNAT_SOURCES};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Veg,
    /// `iptables -t nat -A POSTROUTING -s SRC -j MASQUERADE --random-fully`, as the reference's instance.
    Iptables,
    /// nftables `masquerade fully-random`.
    Nftables,
}

pub const ALL: [Mode; 3] = [Mode::Veg, Mode::Iptables, Mode::Nftables];

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Veg => "veg",
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
        }
    }
}

/// A mode set up in the lab's gateway instance; dropping it undoes everything (rules, conntrack, pins).
pub enum Active<'a> {
    /// The running agent; dropping it stops the agent and removes its pins.
    Veg {
        agent: Gateway,
    },
    Netfilter {
        lab: &'a Lab,
        mode: Mode,
    },
}

pub fn enable(lab: &Lab, mode: Mode) -> Active<'_> {
    enable_with(lab, mode, &[])
}

/// `enable`, with extra `veg gateway` flags for veg's agent.
pub fn enable_with<'a>(lab: &'a Lab, mode: Mode, veg_flags: &[&str]) -> Active<'a> {
    enable_translating(lab, mode, veg_flags, None)
}

/// `enable_with`, every mode translating into the ports `range` ("LO-HI") when given (netfilter's rules then
/// translate UDP alone: a port range needs a protocol there).
pub fn enable_translating<'a>(
    lab: &'a Lab,
    mode: Mode,
    veg_flags: &[&str],
    range: Option<&str>,
) -> Active<'a> {
    let gw = &lab.gateway;
    match mode {
        Mode::Veg => {
            let mut flags = veg_flags.to_vec();
            if let Some(range) = range {
                flags.extend(["--port-range", range]);
            }
            Active::Veg {
                agent: lab.start_gateway(&flags),
            }
        }
        Mode::Iptables => {
            gw.sysctl("net.ipv4.conf.all.forwarding", "1");
            let mut rule = vec![
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-s",
                SNAT_SOURCES,
                "-j",
                "MASQUERADE",
                "--random-fully",
            ];
            if let Some(range) = range {
                rule.extend(["-p", "udp", "--to-ports", range]);
            }
            run(gw.exec("iptables", &rule));
            Active::Netfilter { lab, mode }
        }
        Mode::Nftables => {
            gw.sysctl("net.ipv4.conf.all.forwarding", "1");
            run(gw.exec("nft", &["add", "table", "ip", "veg_bench"]));
            run(gw.exec(
                "nft",
                &["add chain ip veg_bench postrouting { type nat hook postrouting priority 100 ; }"],
            ));
            let to_ports = range.map(|r| format!("to :{r}"));
            let mut rule = vec![
                "add",
                "rule",
                "ip",
                "veg_bench",
                "postrouting",
                "ip",
                "saddr",
                SNAT_SOURCES,
            ];
            if let Some(to_ports) = &to_ports {
                rule.extend(["meta", "l4proto", "udp", "masquerade", to_ports]);
            } else {
                rule.push("masquerade");
            }
            rule.push("fully-random");
            run(gw.exec("nft", &rule));
            Active::Netfilter { lab, mode }
        }
    }
}

impl Active<'_> {
    /// veg's running agent, in veg mode.
    pub fn agent(&self) -> Option<&Gateway> {
        match self {
            Active::Veg { agent } => Some(agent),
            Active::Netfilter { .. } => None,
        }
    }
}

fn run(out: std::process::Output) {
    assert!(
        out.status.success(),
        "setting up the baseline failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        if let Active::Netfilter { lab, mode } = self {
            let gw = &lab.gateway;
            match mode {
                Mode::Iptables => drop(gw.exec("iptables", &["-t", "nat", "-F", "POSTROUTING"])),
                _ => drop(gw.exec("nft", &["delete", "table", "ip", "veg_bench"])),
            }
            drop(gw.exec("conntrack", &["-F"]));
            gw.sysctl("net.ipv4.conf.all.forwarding", "0");
        }
    }
}
