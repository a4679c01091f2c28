//! `cargo xtask demo`: the gateway at work, narrated. Clients in a VPC, one gateway instance with eth0 on the VPC
//! switch and net1 a macvlan on the underlay, and an external server that reports who it saw. Everything is torn
//! down at the end, also on failure.

use std::net::SocketAddr;

use anyhow::{Context as _, bail, ensure};
use veg_testbed::{
    servers::{icmp_echo_sources, tcp_echo, tcp_round_trip, udp_echo, udp_round_trip},
    topology::{
        FORWARD_SOURCES, GATEWAY_EXTERNAL_IP, GATEWAY_INTERNAL_IP, SERVER_IP, SNAT_SOURCES,
        Topology,
    },
};

use crate::workspace::{build_veg, setup, step};

// Long because it is the demo's script: each step narrated in the order a reader follows it.
pub fn run() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces and loads eBPF programs: run it as root");
    }
    setup()?;
    let veg = build_veg()?;
    let veg = veg.to_str().context("non-UTF-8 path")?;

    step("building the topology (network namespaces)");
    let mut topo = Topology::new(veg);
    let snat_client = topo.add_client("10.16.0.2");
    let forward_client = topo.add_client("10.16.1.2");
    println!(
        "  VPC 10.16.0.0/16: SNAT client 10.16.0.2, forward client 10.16.1.2, gateway eth0 {GATEWAY_INTERNAL_IP}"
    );
    println!(
        "  underlay 172.17.0.0/16: gateway net1 {GATEWAY_EXTERNAL_IP} (macvlan), external server {SERVER_IP}"
    );

    step(&format!(
        "starting veg gateway: --snat {SNAT_SOURCES} --forward {FORWARD_SOURCES}"
    ));
    let gateway = topo.start_gateway(&[]);
    let tcp = tcp_echo(&topo.server, 8080);
    let udp = udp_echo(&topo.server, 9000);
    let icmp = icmp_echo_sources(&topo.server);
    let server = |port| SocketAddr::new(SERVER_IP.parse().unwrap(), port);

    step("the SNAT client talks to the external server over TCP, UDP and ping");
    let echoed = tcp_round_trip(topo.client(snat_client), 0, server(8080), b"hello over tcp")?;
    ensure!(echoed == b"hello over tcp", "TCP echo came back wrong");
    let echoed = udp_round_trip(topo.client(snat_client), 0, server(9000), b"hello over udp")?;
    ensure!(echoed == b"hello over udp", "UDP echo came back wrong");
    let ping = topo
        .client(snat_client)
        .exec("ping", &["-c", "2", "-i", "0.2", "-W", "2", SERVER_IP]);
    ensure!(ping.status.success(), "ping through the gateway failed");
    println!("  replies reached the client; the server saw:");
    for (what, peers) in [
        ("tcp", tcp.peers()),
        ("udp", udp.peers()),
        ("icmp (source, echo id)", icmp.peers()),
    ] {
        for peer in &peers {
            println!("    {what:<22} from {peer}");
        }
        ensure!(
            peers
                .iter()
                .all(|p| p.ip().to_string() == GATEWAY_EXTERNAL_IP),
            "{what} was not translated"
        );
    }

    step("the forward client is routed unchanged");
    tcp_round_trip(topo.client(forward_client), 0, server(8080), b"routed")?;
    let seen = *tcp.peers().last().unwrap();
    println!("    tcp                    from {seen}");
    ensure!(
        seen.ip().to_string() == "10.16.1.2",
        "the forward client was translated"
    );

    step("veg flows");
    print!("{}", gateway.flows_table());
    step("veg stats (non-zero)");
    for label in [
        "translated_out",
        "translated_in",
        "forwarded_out",
        "forwarded_in",
        "flows_created",
    ] {
        println!("  {label:<16} {}", gateway.counter(label));
    }

    step("tearing down (gateway, pins, namespaces)");
    let (prefix, pins) = (
        topo.prefix.clone(),
        std::path::Path::new("/sys/fs/bpf/veg").join(&gateway.name),
    );
    drop((tcp, udp, icmp, gateway, topo));
    let namespaces = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    let left = String::from_utf8_lossy(&namespaces.stdout)
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .count();
    ensure!(
        left == 0 && !pins.exists(),
        "the demo left {left} namespace(s) or its pins behind"
    );
    println!("  done: no namespace, process or pin left behind");
    Ok(())
}
