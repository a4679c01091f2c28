//! Real traffic through `veg gateway` in network namespaces (see veg-testbed's topology.rs for the topology). Every
//! assertion is about what the far side saw: the source address a server observed, what reached a client.
//!
//! Run serially (`--test-threads=1`): each test builds its own namespaces, but timing-sensitive traffic should not
//! compete with other tests for the two cores.

use std::{
    collections::HashSet,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    time::Duration,
};

use veg_testbed::{
    iperf::{self, Iperf3Server},
    servers::{
        connect_from, icmp_echo_sources, tcp_echo, tcp_round_trip, udp_echo, udp_round_trip,
    },
    skip_unless_root,
    topology::{
        GATEWAY_EXTERNAL_IP, GATEWAY_INTERNAL_IP, SERVER_IP, Topology, external_ip, server,
    },
};

const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 9000;

#[test]
fn tcp_udp_and_ping_leave_with_the_external_address() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.0.2");
    let gateway = topo.start_gateway(&[]);
    let tcp = tcp_echo(&topo.server, TCP_PORT);
    let udp = udp_echo(&topo.server, UDP_PORT);
    let icmp = icmp_echo_sources(&topo.server);

    assert_eq!(
        tcp_round_trip(topo.client(client), 0, server(TCP_PORT), b"over tcp").unwrap(),
        b"over tcp"
    );
    assert_eq!(
        udp_round_trip(topo.client(client), 0, server(UDP_PORT), b"over udp").unwrap(),
        b"over udp"
    );
    let ping = topo
        .client(client)
        .exec("ping", &["-c", "3", "-i", "0.2", "-W", "2", SERVER_IP]);
    assert!(
        ping.status.success(),
        "ping through the gateway failed:\n{}",
        String::from_utf8_lossy(&ping.stdout)
    );

    for (what, peers) in [
        ("tcp", tcp.peers()),
        ("udp", udp.peers()),
        ("icmp", icmp.peers()),
    ] {
        assert!(!peers.is_empty(), "the server saw no {what}");
        assert!(
            peers.iter().all(|p| p.ip() == external_ip()),
            "{what} seen from {peers:?}, not {GATEWAY_EXTERNAL_IP}"
        );
    }
    let flows = gateway.flows();
    for protocol in ["tcp", "udp", "icmp"] {
        assert!(
            flows.iter().any(|f| f["protocol"] == protocol
                && f["original_source"]
                    .as_str()
                    .unwrap()
                    .starts_with("10.16.0.2:")),
            "veg flows lacks the {protocol} flow: {flows:?}"
        );
    }
}

#[test]
fn traceroute_through_the_gateway_works() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.0.2");
    let gateway = topo.start_gateway(&[]);
    // TTL 1 expires at the gateway, which must say so (ICMP time exceeded from its VPC address)...
    let first_hop = topo
        .client(client)
        .exec("ping", &["-c", "1", "-W", "2", "-t", "1", SERVER_IP]);
    let text = String::from_utf8_lossy(&first_hop.stdout);
    assert!(
        text.contains("From 10.16.0.12") && text.contains("Time to live exceeded"),
        "ping -t 1 said:\n{text}"
    );
    assert!(gateway.counter("ttl_expired") > 0);
    // ...and TTL 2 is just enough to reach the server behind it.
    let second_hop = topo
        .client(client)
        .exec("ping", &["-c", "1", "-W", "2", "-t", "2", SERVER_IP]);
    assert!(
        second_hop.status.success(),
        "ping -t 2 failed:\n{}",
        String::from_utf8_lossy(&second_hop.stdout)
    );
}

#[test]
fn forward_policy_client_is_seen_with_its_own_address() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.1.2");
    let gateway = topo.start_gateway(&[]);
    let tcp = tcp_echo(&topo.server, TCP_PORT);
    assert_eq!(
        tcp_round_trip(topo.client(client), 0, server(TCP_PORT), b"routed").unwrap(),
        b"routed"
    );
    assert_eq!(tcp.peers()[0].ip(), "10.16.1.2".parse::<IpAddr>().unwrap());
    assert!(gateway.counter("forwarded_out") > 0 && gateway.counter("forwarded_in") > 0);
    assert!(
        gateway.flows().is_empty(),
        "forwarded traffic must not create translations"
    );
}

/// Packets an interface has sent and received, as its own counters say (`ip -s link`).
fn packet_counters(ns: &veg_testbed::netns::Netns, interface: &str) -> (u64, u64) {
    let out = ns.exec_ok("ip", &["-j", "-s", "link", "show", "dev", interface]);
    let link: serde_json::Value = serde_json::from_str(&out).expect("ip -j prints JSON");
    let stats = &link[0]["stats64"];
    let count = |way: &str| stats[way]["packets"].as_u64().expect("packet counter");
    (count("tx"), count("rx"))
}

#[test]
fn replies_go_straight_into_the_internal_veth_peer_unless_its_transmit_has_work() {
    if skip_unless_root() {
        return;
    }
    const ROUND_TRIPS: u64 = 50;
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.0.2");
    let gateway = topo.start_gateway(&[]);
    let _udp = udp_echo(&topo.server, UDP_PORT);
    let round_trips = |topo: &Topology| {
        let (sent_before, _) = packet_counters(&topo.gateway, "eth0");
        let (_, received_before) = packet_counters(&topo.vpc, "gw");
        for i in 0..ROUND_TRIPS {
            let payload = format!("reply {i}");
            assert_eq!(
                udp_round_trip(topo.client(client), 0, server(UDP_PORT), payload.as_bytes())
                    .unwrap(),
                payload.as_bytes()
            );
        }
        let (sent_after, _) = packet_counters(&topo.gateway, "eth0");
        let (_, received_after) = packet_counters(&topo.vpc, "gw");
        (sent_after - sent_before, received_after - received_before)
    };

    // The replies reach the client through the peer's receive path: eth0 itself transmits none of them (a
    // handful of its own packets at most, such as ARP), while its peer on the VPC switch receives every one.
    let (sent, received) = round_trips(&topo);
    assert!(
        received >= ROUND_TRIPS && sent < ROUND_TRIPS / 5,
        "eth0 sent {sent} and its peer received {received} packets for {ROUND_TRIPS} replies"
    );

    // With a limit toward the VPC the replies must pass eth0's shaper, so they go through its transmit.
    drop(gateway);
    let shaped = topo.start_gateway(&["--ingress-rate", "1000M"]);
    let (sent, received) = round_trips(&topo);
    assert!(
        sent >= ROUND_TRIPS && received >= ROUND_TRIPS,
        "with a shaper, eth0 sent {sent} and its peer received {received} packets for {ROUND_TRIPS} replies"
    );

    // And whenever eth0's transmit has work to do: with tx checksumming off (as OVS's userspace datapath wants
    // it), the kernel finishes checksums there.
    drop(shaped);
    topo.gateway
        .exec_ok("ethtool", &["-K", "eth0", "tx", "off"]);
    let _unoffloaded = topo.start_gateway(&[]);
    let (sent, received) = round_trips(&topo);
    assert!(
        sent >= ROUND_TRIPS && received >= ROUND_TRIPS,
        "with tx checksumming off, eth0 sent {sent} and its peer received {received} packets for {ROUND_TRIPS} replies"
    );
}

#[test]
fn two_clients_with_the_same_source_port_both_work() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let first = topo.add_client("10.16.0.2");
    let second = topo.add_client("10.16.0.3");
    let _gateway = topo.start_gateway(&[]);
    let udp = udp_echo(&topo.server, UDP_PORT);
    let tcp = tcp_echo(&topo.server, TCP_PORT);
    for client in [first, second] {
        assert_eq!(
            udp_round_trip(topo.client(client), 5555, server(UDP_PORT), b"same port").unwrap(),
            b"same port"
        );
    }
    // Both TCP connections open at the same time: a closed connection's port may be reused, a live one's never.
    let target = server(TCP_PORT);
    let connections: Vec<_> = [first, second]
        .into_iter()
        .map(|client| {
            let connection = topo
                .client(client)
                .spawn(move || -> std::io::Result<Vec<u8>> {
                    let mut stream = connect_from(5555, target)?;
                    stream.write_all(b"same port")?;
                    let mut echo = vec![0u8; 9];
                    stream.read_exact(&mut echo)?;
                    std::thread::sleep(Duration::from_millis(600));
                    Ok(echo)
                });
            std::thread::sleep(Duration::from_millis(200));
            connection
        })
        .collect();
    for connection in connections {
        assert_eq!(connection.join().unwrap().unwrap(), b"same port");
    }
    for peers in [udp.peers(), tcp.peers()] {
        assert_eq!(peers.len(), 2);
        assert!(peers.iter().all(|p| p.ip() == external_ip()));
        assert_ne!(
            peers[0].port(),
            peers[1].port(),
            "both clients were given the same translated port"
        );
    }
}

/// A table sized for exactly FLOWS translations holds them all at once, although every one is created on the
/// CPU the client's thread runs on (the kernel runs the whole path there): no live translation is lost.
#[test]
fn ten_thousand_udp_flows_fill_a_table_sized_for_them_with_distinct_external_tuples() {
    if skip_unless_root() {
        return;
    }
    const FLOWS: u16 = 10_000;
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.0.2");
    let gateway = topo.start_gateway(&["--max-flows", &FLOWS.to_string()]);
    let udp = udp_echo(&topo.server, UDP_PORT);
    let target = server(UDP_PORT);
    // One socket per flow, each waiting for its echo (one retry), so no datagram is lost to a full buffer.
    let unanswered = topo.client(client).run(move || {
        let mut unanswered = 0;
        for port in 20_000..20_000 + FLOWS {
            let socket = UdpSocket::bind(("0.0.0.0", port)).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut buf = [0u8; 16];
            let answered = (0..2).any(|_| {
                socket.send_to(&port.to_be_bytes(), target).unwrap();
                socket.recv_from(&mut buf).is_ok()
            });
            if !answered {
                unanswered += 1;
            }
        }
        unanswered
    });
    assert_eq!(
        unanswered, 0,
        "{unanswered} flows got no answer through the gateway"
    );
    let peers = udp.peers();
    let distinct: HashSet<SocketAddr> = peers.iter().copied().collect();
    assert!(
        peers.iter().all(|p| p.ip() == external_ip()),
        "some flows were not translated"
    );
    assert_eq!(
        distinct.len(),
        FLOWS as usize,
        "flows shared an external tuple"
    );
    let flows = gateway.flows();
    let translated: HashSet<&str> = flows
        .iter()
        .map(|f| f["translated_source"].as_str().unwrap())
        .collect();
    assert_eq!(flows.len(), FLOWS as usize, "translations were evicted");
    assert_eq!(translated.len(), FLOWS as usize);
    assert_eq!(gateway.flow_count(), u64::from(FLOWS));
}

#[test]
fn open_tcp_connection_survives_a_gateway_restart() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.0.2");
    let mut gateway = topo.start_gateway(&[]);
    let tcp = tcp_echo(&topo.server, TCP_PORT);
    let (to_client, from_test) = std::sync::mpsc::channel::<()>();
    let (to_test, from_client) = std::sync::mpsc::channel::<Result<(), String>>();
    let target = server(TCP_PORT);
    let connection = topo.client(client).spawn(move || {
        let round_trip = |stream: &mut std::net::TcpStream, payload: &[u8]| -> Result<(), String> {
            stream.write_all(payload).map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; payload.len()];
            stream.read_exact(&mut buf).map_err(|e| e.to_string())?;
            if buf == payload {
                Ok(())
            } else {
                Err("wrong echo".into())
            }
        };
        let mut stream = connect_from(0, target).unwrap();
        to_test
            .send(round_trip(&mut stream, b"before restart"))
            .unwrap();
        from_test.recv().unwrap();
        to_test
            .send(round_trip(&mut stream, b"after restart"))
            .unwrap();
    });
    from_client.recv().unwrap().expect("first exchange");
    let before = translations(&gateway.flows());
    gateway.restart();
    assert_eq!(
        translations(&gateway.flows()),
        before,
        "the restarted agent lost the flow"
    );
    to_client.send(()).unwrap();
    from_client
        .recv()
        .unwrap()
        .expect("the connection broke across the restart");
    connection.join().unwrap();
    assert_eq!(tcp.peers().len(), 1, "the client had to reconnect");
}

#[test]
fn nothing_is_forwarded_untranslated_while_the_agent_is_stopped() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.0.2");
    let mut gateway = topo.start_gateway(&[]);
    let udp = udp_echo(&topo.server, UDP_PORT);
    udp_round_trip(topo.client(client), 0, server(UDP_PORT), b"running").unwrap();
    gateway.stop();
    // The server routes 10.16.0.0/16 back through the gateway, so a leaked packet would even get its answer.
    assert!(udp_round_trip(topo.client(client), 0, server(UDP_PORT), b"stopped").is_err());
    assert_eq!(
        udp.peers().len(),
        1,
        "packets crossed the stopped gateway: {:?}",
        udp.peers()
    );
}

/// The part of `veg flows` that must not change: who was translated to what, toward whom.
fn translations(flows: &[serde_json::Value]) -> Vec<(String, String, String, String)> {
    let field = |f: &serde_json::Value, k: &str| f[k].as_str().unwrap().to_owned();
    flows
        .iter()
        .map(|f| {
            (
                field(f, "protocol"),
                field(f, "original_source"),
                field(f, "translated_source"),
                field(f, "remote"),
            )
        })
        .collect()
}

#[test]
fn unsolicited_packets_never_reach_a_client() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.0.2");
    let gateway = topo.start_gateway(&[]);
    // The client listens on ports inside and outside the NAT range.
    let ports = [7000u16, 40000];
    let listeners = topo.client(client).spawn(move || {
        let tcp: Vec<TcpListener> = ports
            .iter()
            .map(|p| TcpListener::bind(("0.0.0.0", *p)).unwrap())
            .collect();
        let udp: Vec<UdpSocket> = ports
            .iter()
            .map(|p| UdpSocket::bind(("0.0.0.0", *p)).unwrap())
            .collect();
        for l in &tcp {
            l.set_nonblocking(true).unwrap();
        }
        for u in &udp {
            u.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        }
        let mut reached = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(4);
        while std::time::Instant::now() < deadline {
            for l in &tcp {
                if let Ok((_, peer)) = l.accept() {
                    reached.push(format!("tcp from {peer}"));
                }
            }
            for u in &udp {
                let mut buf = [0u8; 64];
                if let Ok((_, peer)) = u.recv_from(&mut buf) {
                    reached.push(format!("udp from {peer}"));
                }
            }
        }
        reached
    });
    std::thread::sleep(Duration::from_millis(200));
    let targets: Vec<Ipv4Addr> = vec![
        GATEWAY_EXTERNAL_IP.parse().unwrap(),
        "10.16.0.2".parse().unwrap(),
    ];
    let connected = topo.server.run(move || {
        let mut connected = Vec::new();
        for ip in &targets {
            for port in ports {
                let to = SocketAddr::from((*ip, port));
                if std::net::TcpStream::connect_timeout(&to, Duration::from_millis(500)).is_ok() {
                    connected.push(to);
                }
                let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
                for _ in 0..3 {
                    socket.send_to(b"unsolicited", to).unwrap();
                }
            }
        }
        connected
    });
    let reached = listeners.join().unwrap();
    assert!(
        connected.is_empty(),
        "unsolicited connections succeeded: {connected:?}"
    );
    assert!(
        reached.is_empty(),
        "unsolicited packets reached the client: {reached:?}"
    );
    assert!(gateway.counter("dropped_unsolicited") > 0);
}

#[test]
fn client_outside_every_policy_is_dropped_and_counted() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.2.2");
    let gateway = topo.start_gateway(&[]);
    let udp = udp_echo(&topo.server, UDP_PORT);
    assert!(udp_round_trip(topo.client(client), 0, server(UDP_PORT), b"no policy").is_err());
    assert!(
        udp.peers().is_empty(),
        "traffic from outside every policy reached the server: {:?}",
        udp.peers()
    );
    assert!(gateway.counter("dropped_no_policy") > 0);
}

#[test]
fn the_instance_own_connections_still_work() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.0.2");
    let _gateway = topo.start_gateway(&[]);
    let tcp = tcp_echo(&topo.server, TCP_PORT);
    // A translated flow first, then the instance's own connection through net1 beside it.
    tcp_round_trip(topo.client(client), 0, server(TCP_PORT), b"client").unwrap();
    assert_eq!(
        tcp_round_trip(&topo.gateway, 0, server(TCP_PORT), b"instance").unwrap(),
        b"instance"
    );
    let own = tcp.peers()[1];
    assert_eq!(own.ip(), external_ip());
    assert!(
        own.port() >= 32768,
        "the instance's own connection should use the kernel's ephemeral range: {own}"
    );
}

/// `veg` run where /proc/sys is read-only, as container runtimes mount it in a pod (a private mount namespace with
/// /proc/sys bound read-only). The script goes away with the value.
struct ReadOnlyProcSys {
    dir: std::path::PathBuf,
}

impl ReadOnlyProcSys {
    fn new() -> ReadOnlyProcSys {
        let dir = std::env::temp_dir().join(format!("veg-ro-proc-sys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = format!(
            "#!/bin/sh\nexec unshare --mount --propagation private sh -c \
             'mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec \"$0\" \"$@\"' {} \"$@\"\n",
            env!("CARGO_BIN_EXE_veg")
        );
        let path = dir.join("veg");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        ReadOnlyProcSys { dir }
    }

    fn veg(&self) -> String {
        self.dir.join("veg").display().to_string()
    }
}

impl Drop for ReadOnlyProcSys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_gateway_turns_forwarding_on_and_off_where_proc_sys_is_read_only_as_in_a_pod() {
    if skip_unless_root() {
        return;
    }
    let wrapper = ReadOnlyProcSys::new();
    // The wrapper really takes /proc/sys away from writers.
    let probe = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && echo 1 > /proc/sys/net/ipv4/ip_forward")
        .output()
        .unwrap();
    assert!(!probe.status.success(), "/proc/sys was still writable");

    let mut topo = Topology::new(&wrapper.veg());
    let client = topo.add_client("10.16.0.2");
    let mut gateway = topo.start_gateway(&[]);
    let udp = udp_echo(&topo.server, UDP_PORT);
    udp_round_trip(topo.client(client), 0, server(UDP_PORT), b"running").unwrap();
    assert_eq!(udp.peers()[0].ip(), external_ip());
    gateway.stop();
    assert!(
        udp_round_trip(topo.client(client), 0, server(UDP_PORT), b"stopped").is_err(),
        "forwarding stayed on after the agent stopped"
    );
    assert_eq!(udp.peers().len(), 1);
}

/// How many TCX links hold veg's two programs (from VPC, from outside), as bpftool lists the kernel's links. The
/// tests run one at a time, so these are this test's.
fn tcx_links() -> (usize, usize) {
    let bpftool = |args: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new("bpftool")
            .arg("-j")
            .args(args)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    let mut counts = (0, 0);
    for link in bpftool(&["link", "show"]).as_array().into_iter().flatten() {
        let Some(id) = link["prog_id"].as_u64() else {
            continue;
        };
        match bpftool(&["prog", "show", "id", &id.to_string()])["name"].as_str() {
            Some("veg_from_vpc") => counts.0 += 1,
            Some("veg_from_outsid" | "veg_from_outside") => counts.1 += 1,
            _ => {}
        }
    }
    counts
}

#[test]
fn a_killed_agent_leaves_its_programs_translating_until_the_next_takes_over() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.0.2");
    let mut gateway = topo.start_gateway(&[]);
    let udp = udp_echo(&topo.server, UDP_PORT);
    udp_round_trip(topo.client(client), 0, server(UDP_PORT), b"running").unwrap();
    // Killed: nothing detaches, forwarding stays on. The pinned programs still translate every packet.
    gateway.kill();
    for _ in 0..3 {
        udp_round_trip(topo.client(client), 0, server(UDP_PORT), b"agent dead").unwrap();
    }
    let sources: HashSet<IpAddr> = udp.peers().iter().map(|p| p.ip()).collect();
    assert_eq!(
        sources,
        HashSet::from([external_ip()]),
        "a packet left untranslated"
    );
    // The next agent takes over: one program per interface, and traffic still flows.
    gateway.restart();
    assert_eq!(
        tcx_links(),
        (1, 1),
        "the killed agent's programs are still attached"
    );
    udp_round_trip(topo.client(client), 0, server(UDP_PORT), b"taken over").unwrap();
    // An orderly stop detaches for good.
    gateway.stop();
    assert_eq!(
        tcx_links(),
        (0, 0),
        "programs still attached after an orderly stop"
    );
}

/// spec.bandwidth: each direction held to its limit by departure-time pacing, as iperf3 on the far side measures
/// it, TCP and UDP, while without limits the same path carries far more.
#[test]
fn bandwidth_limits_hold_each_way() {
    if skip_unless_root() {
        return;
    }
    const EGRESS_MBIT: f64 = 40.0;
    const INGRESS_MBIT: f64 = 20.0;
    const UDP_FLOOD: [&str; 5] = ["-u", "-b", "100M", "-l", "1400"];
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.0.2");
    let iperf = Iperf3Server::start(&topo.server, 5201);
    let mbit = |bits: f64| bits / 1e6;

    let unlimited = topo.start_gateway(&[]);
    let free = mbit(iperf.measure(topo.client(client), SERVER_IP, 2, &[]));
    drop(unlimited);
    assert!(
        free > 4.0 * EGRESS_MBIT,
        "without a limit the path carries only {free:.1} Mbit/s: too little to show a limit"
    );

    let limits = ["--egress-rate", "40", "--ingress-rate", "20M"];
    let gateway = topo.start_gateway(&limits);
    let within = |what: &str, measured: f64, limit: f64| {
        assert!(
            (measured - limit).abs() <= 0.1 * limit,
            "{what}: {measured:.1} Mbit/s, not within 10% of the {limit} Mbit/s limit"
        );
    };
    let c = topo.client(client);
    let measured = [
        ("tcp out", iperf.measure(c, SERVER_IP, 4, &[]), EGRESS_MBIT),
        (
            "tcp in",
            iperf.measure(c, SERVER_IP, 4, &["-R"]),
            INGRESS_MBIT,
        ),
        (
            "udp out",
            iperf.measure(c, SERVER_IP, 3, &UDP_FLOOD),
            EGRESS_MBIT,
        ),
    ];
    for (what, bits, limit) in measured {
        eprintln!("{what}: {:.1} Mbit/s (limit {limit})", mbit(bits));
        within(what, mbit(bits), limit);
    }

    // While a flood fills the inward queue, the instance's own packets toward the VPC (here ping replies, as BFD
    // would be) pass the shaper by: none lost, none waiting behind the queue (over 100 ms when full).
    let client_ns = topo.client(client).name.clone();
    let iperf_port = iperf.port();
    let flood = std::thread::spawn(move || {
        let mut reverse_flood = vec!["-R"];
        reverse_flood.extend(UDP_FLOOD);
        iperf::measure(&client_ns, SERVER_IP, iperf_port, 4, &reverse_flood)
    });
    std::thread::sleep(Duration::from_millis(1000));
    let ping = topo.client(client).exec(
        "ping",
        &["-c", "20", "-i", "0.1", "-W", "1", GATEWAY_INTERNAL_IP],
    );
    let ping = String::from_utf8_lossy(&ping.stdout).into_owned();
    let inward = flood.join().unwrap();
    eprintln!(
        "udp in: {:.1} Mbit/s (limit {INGRESS_MBIT}); ping to the instance meanwhile: {ping}",
        mbit(inward)
    );
    assert!(
        ping.contains(" 0% packet loss"),
        "the instance's own packets were lost behind the shaper:\n{ping}"
    );
    let average_ms: f64 = ping
        .split("rtt min/avg/max/mdev = ")
        .nth(1)
        .and_then(|rtt| rtt.split('/').nth(1))
        .and_then(|avg| avg.parse().ok())
        .unwrap_or_else(|| panic!("no round-trip times in {ping}"));
    assert!(
        average_ms < 50.0,
        "the instance's own packets waited behind the shaper: {average_ms} ms on average"
    );
    drop(gateway);
    for dev in ["net1", "eth0"] {
        let qdisc = topo.gateway.exec_ok("tc", &["qdisc", "show", "dev", dev]);
        assert!(
            !qdisc.contains("htb"),
            "the shaper stayed on {dev}: {qdisc}"
        );
    }
}
