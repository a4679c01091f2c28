//! Real IPv6 traffic through a dual-stack `veg gateway` in network namespaces (veg-testbed's topology.rs): every
//! assertion is about what the far side saw.
//!
//! Run serially (`--test-threads=1`), as the other traffic suites.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use veg_testbed::{
    netns::Netns,
    packet::{Frame6, L4, send_raw6},
    servers::{
        echo_bulk, icmpv6_echo_sources, learned_mtu, receive_datagram, tcp_echo, tcp_echo_at,
        tcp_round_trip, udp_echo_at, udp_round_trip,
    },
    skip_unless_root,
    topology::{
        GATEWAY_EXTERNAL_IPV6, GATEWAY_INTERNAL_IPV6, SERVER_IPV6, Stack, Topology, external_ip,
        external_ipv6, server, server6,
    },
};

/// A host one router beyond the server, which routes for it.
const FAR_IPV6: &str = "fd00:172:18::2";
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 9000;

/// The gateway netns's IPv6 forwarding switch of the loopback interface, as the kernel reports it.
fn loopback_ipv6_forwarding(topo: &Topology) -> String {
    topo.gateway
        .exec_ok("sysctl", &["-n", "net.ipv6.conf.lo.forwarding"])
        .trim()
        .to_owned()
}

#[test]
fn tcp_udp_and_ping6_leave_with_the_external_ipv6_address() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_dual_stack_client("10.16.0.2", "fd00:10:16::2");
    let mut gateway = topo.start_dual_stack_gateway(&[]);
    assert_eq!(
        loopback_ipv6_forwarding(&topo),
        "1",
        "the agent opens IPv6 route lookups"
    );
    let tcp = tcp_echo_at(&topo.server, server6(TCP_PORT));
    let udp = udp_echo_at(&topo.server, server6(UDP_PORT));
    let icmp = icmpv6_echo_sources(&topo.server);

    let c = topo.client(client);
    assert_eq!(
        tcp_round_trip(c, 0, server6(TCP_PORT), b"over tcp6").unwrap(),
        b"over tcp6"
    );
    assert_eq!(
        udp_round_trip(c, 0, server6(UDP_PORT), b"over udp6").unwrap(),
        b"over udp6"
    );
    let ping = c.exec(
        "ping",
        &["-6", "-c", "3", "-i", "0.2", "-W", "2", SERVER_IPV6],
    );
    assert!(
        ping.status.success(),
        "ping6 through the gateway failed:\n{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    for (what, peers) in [
        ("tcp", tcp.peers()),
        ("udp", udp.peers()),
        ("icmpv6", icmp.peers()),
    ] {
        assert!(!peers.is_empty(), "the server saw no {what}");
        assert!(
            peers.iter().all(|p| p.ip() == external_ipv6()),
            "{what} seen from {peers:?}, not {GATEWAY_EXTERNAL_IPV6}"
        );
    }
    let flows = gateway.flows();
    for protocol in ["tcp", "udp", "icmpv6"] {
        assert!(
            flows.iter().any(|f| f["protocol"] == protocol
                && f["original_source"]
                    .as_str()
                    .unwrap()
                    .starts_with("[fd00:10:16::2]:")
                && f["translated_source"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("[{GATEWAY_EXTERNAL_IPV6}]:"))),
            "veg flows lacks the {protocol} flow: {flows:?}"
        );
    }
    gateway.stop();
    assert_eq!(
        loopback_ipv6_forwarding(&topo),
        "0",
        "the agent closes IPv6 route lookups"
    );
}

#[test]
fn an_ipv6_only_gateway_translates_ipv6_and_lets_no_ipv4_through() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_dual_stack_client("10.16.0.2", "fd00:10:16::2");
    let gateway = topo.start_gateway_for(Stack::Ipv6, &[]);
    let udp6 = udp_echo_at(&topo.server, server6(UDP_PORT));
    let udp4 = udp_echo_at(&topo.server, server(UDP_PORT));
    let c = topo.client(client);
    assert_eq!(
        udp_round_trip(c, 0, server6(UDP_PORT), b"v6").unwrap(),
        b"v6"
    );
    assert!(udp_round_trip(c, 0, server(UDP_PORT), b"v4").is_err());
    assert_eq!(
        udp6.peers().iter().map(SocketAddr::ip).collect::<Vec<_>>(),
        [external_ipv6()]
    );
    assert!(
        udp4.peers().is_empty(),
        "IPv4 got through: {:?}",
        udp4.peers()
    );
    assert!(gateway.counter("dropped_no_policy") >= 1);
}

#[test]
fn two_clients_with_the_same_source_port_get_their_own_replies() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let first = topo.add_dual_stack_client("10.16.0.2", "fd00:10:16::2");
    let second = topo.add_dual_stack_client("10.16.0.3", "fd00:10:16::3");
    let _gateway = topo.start_dual_stack_gateway(&[]);
    let udp = udp_echo_at(&topo.server, server6(UDP_PORT));
    for (client, payload) in [(first, b"from the first"), (second, b"from the secnd")] {
        let echoed = udp_round_trip(topo.client(client), 40000, server6(UDP_PORT), payload);
        assert_eq!(echoed.unwrap(), payload);
    }
    let peers = udp.peers();
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert!(peers.iter().all(|p| p.ip() == external_ipv6()), "{peers:?}");
    assert_ne!(
        peers[0].port(),
        peers[1].port(),
        "one external port for two clients: {peers:?}"
    );
}

#[test]
fn a_dual_stack_client_egresses_both_families_at_once() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_dual_stack_client("10.16.0.2", "fd00:10:16::2");
    let _gateway = topo.start_dual_stack_gateway(&[]);
    let v4 = tcp_echo(&topo.server, TCP_PORT);
    let v6 = tcp_echo_at(&topo.server, server6(TCP_PORT + 1));
    // Both connections open together, each on its own thread.
    let c4 = topo
        .client(client)
        .spawn(move || tcp_round_trip_here(server(TCP_PORT), b"v4 at once"));
    let c6 = topo
        .client(client)
        .spawn(move || tcp_round_trip_here(server6(TCP_PORT + 1), b"v6 at once"));
    assert_eq!(c4.join().unwrap().unwrap(), b"v4 at once");
    assert_eq!(c6.join().unwrap().unwrap(), b"v6 at once");
    assert_eq!(
        v4.peers().iter().map(SocketAddr::ip).collect::<Vec<_>>(),
        [external_ip()]
    );
    assert_eq!(
        v6.peers().iter().map(SocketAddr::ip).collect::<Vec<_>>(),
        [external_ipv6()]
    );
}

/// A TCP round trip from the calling thread's namespace, holding the connection open a moment so that the two
/// families' connections overlap.
fn tcp_round_trip_here(server: SocketAddr, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let mut stream = veg_testbed::servers::connect_from(0, server)?;
    std::thread::sleep(Duration::from_millis(200));
    stream.write_all(payload)?;
    let mut buf = vec![0u8; payload.len()];
    stream.read_exact(&mut buf)?;
    Ok(buf)
}

#[test]
fn an_ipv6_packet_from_a_no_policy_source_never_leaves() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let stranger = topo.add_dual_stack_client("10.16.2.2", "fd00:10:16:2::2");
    let mut gateway = topo.start_dual_stack_gateway(&[]);
    let udp = udp_echo_at(&topo.server, server6(UDP_PORT));
    assert!(udp_round_trip(topo.client(stranger), 0, server6(UDP_PORT), b"let me out").is_err());
    assert!(gateway.counter("dropped_no_policy") >= 1);
    // Without the agent (killed: the programs stay attached) and without the programs (removed), the kernel
    // forwards no IPv6 either.
    gateway.kill();
    assert!(udp_round_trip(topo.client(stranger), 0, server6(UDP_PORT), b"now?").is_err());
    drop(gateway);
    assert!(udp_round_trip(topo.client(stranger), 0, server6(UDP_PORT), b"and now?").is_err());
    assert!(udp.peers().is_empty(), "the server heard {:?}", udp.peers());
}

#[test]
fn forward_sources_are_routed_unchanged_in_ipv6() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_dual_stack_client("10.16.1.2", "fd00:10:16:1::2");
    let _gateway = topo.start_dual_stack_gateway(&[]);
    let tcp = tcp_echo_at(&topo.server, server6(TCP_PORT));
    assert_eq!(
        tcp_round_trip(topo.client(client), 0, server6(TCP_PORT), b"routed").unwrap(),
        b"routed"
    );
    let seen: Vec<String> = tcp.peers().iter().map(|p| p.ip().to_string()).collect();
    assert_eq!(seen, ["fd00:10:16:1::2"]);
}

/// A host beyond the server, which forwards IPv6 for it: client -> gateway -> server (a router) -> far.
fn add_far_host(topo: &Topology) -> Netns {
    let far = Netns::new(&format!("{}-far", topo.prefix));
    topo.server.add_veth("far0", "far1", &far);
    topo.server.ip(&[
        "-6",
        "addr",
        "add",
        "fd00:172:18::1/64",
        "dev",
        "far0",
        "nodad",
    ]);
    topo.server.ip(&["link", "set", "far0", "up"]);
    topo.server.sysctl("net.ipv6.conf.all.forwarding", "1");
    // Its errors are the test's subject: none may be held back by the kernel's per-destination rate limit.
    topo.server.sysctl("net.ipv6.icmp.ratelimit", "0");
    far.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{FAR_IPV6}/64"),
        "dev",
        "far1",
        "nodad",
    ]);
    far.ip(&["link", "set", "far1", "up"]);
    far.ip(&["-6", "route", "add", "default", "via", "fd00:172:18::1"]);
    // The gateway reaches fd00:172:18::/64 through its default route, the server.
    far
}

#[test]
fn packet_too_big_beyond_the_gateway_is_learned_by_the_client_and_a_large_write_completes() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_dual_stack_client("10.16.0.2", "fd00:10:16::2");
    let far = add_far_host(&topo);
    // The router's route to the far host carries 1280 bytes at most (IPv6's minimum); the far host, on a
    // 1500-byte link, announces a larger MSS, so only Packet Too Big through the gateway makes the client's
    // segments fit: IPv6 routers never fragment. (The route replaces the link's own, metric 256: one with
    // another metric would sit beside it unused. A smaller link MTU instead would drop the far host's larger
    // replies at the link, unanswered.)
    topo.server.ip(&[
        "-6",
        "route",
        "replace",
        "fd00:172:18::/64",
        "dev",
        "far0",
        "metric",
        "256",
        "mtu",
        "1280",
    ]);
    let gateway = topo.start_dual_stack_gateway(&[]);
    let _echo = tcp_echo_at(&far, SocketAddr::new("::".parse().unwrap(), TCP_PORT));
    let to = SocketAddr::new(FAR_IPV6.parse().unwrap(), TCP_PORT);
    echo_bulk(topo.client(client), to, 256 * 1024).expect("the large write did not complete");
    assert_eq!(
        learned_mtu(topo.client(client), FAR_IPV6),
        Some(1280),
        "{}",
        topo.client(client)
            .exec_ok("ip", &["-6", "route", "get", FAR_IPV6]),
    );
    assert!(gateway.counter("icmp_errors_translated_in") > 0);
}

#[test]
fn a_smaller_mtu_on_the_vpc_side_is_answered_with_packet_too_big_to_the_remote() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_dual_stack_client("10.16.0.2", "fd00:10:16::2");
    // The gateway's VPC side carries 1280 bytes at most; the client announces a larger MSS but sends no more
    // than 1280 itself (see icmp_traffic.rs for why).
    topo.gateway.ip(&["link", "set", "eth0", "mtu", "1280"]);
    topo.client(client).ip(&[
        "-6",
        "route",
        "replace",
        "default",
        "via",
        GATEWAY_INTERNAL_IPV6,
        "mtu",
        "1280",
        "advmss",
        "1440",
    ]);
    let gateway = topo.start_dual_stack_gateway(&[]);
    let _echo = tcp_echo_at(&topo.server, server6(TCP_PORT));
    echo_bulk(topo.client(client), server6(TCP_PORT), 256 * 1024)
        .expect("the echo of a large write did not come back");
    assert_eq!(learned_mtu(&topo.server, GATEWAY_EXTERNAL_IPV6), Some(1280));
    assert!(gateway.counter("too_big") > 0);
}

#[test]
fn traceroute6_from_a_pod_shows_every_hop_with_udp_and_icmp_probes() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_dual_stack_client("10.16.0.2", "fd00:10:16::2");
    let _far = add_far_host(&topo);
    let _gateway = topo.start_dual_stack_gateway(&[]);
    // The gateway (its VPC address), the router beyond it, the far host: the router's time exceeded and the far
    // host's answers reach the pod only through their translation back.
    let hops = [GATEWAY_INTERNAL_IPV6, SERVER_IPV6, FAR_IPV6];
    for probes in [&[][..], &["-I"][..]] {
        let mut args = vec!["-6", "-n", "-q", "1", "-w", "2", "-m", "3"];
        args.extend_from_slice(probes);
        args.push(FAR_IPV6);
        let out = topo.client(client).exec("traceroute", &args);
        let said = String::from_utf8_lossy(&out.stdout);
        for (n, hop) in hops.iter().enumerate() {
            let number = (n + 1).to_string();
            let line = said
                .lines()
                .find(|l| l.split_whitespace().next() == Some(number.as_str()))
                .unwrap_or_default();
            assert!(
                line.split_whitespace().nth(1) == Some(hop),
                "traceroute6 {probes:?}: hop {} should be {hop}:\n{said}",
                n + 1
            );
        }
    }
}

#[test]
fn a_4000_byte_datagram_arrives_whole_each_way_from_a_snat_and_a_forward_source() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let snat = topo.add_dual_stack_client("10.16.0.2", "fd00:10:16::2");
    let forward = topo.add_dual_stack_client("10.16.1.2", "fd00:10:16:1::2");
    let gateway = topo.start_dual_stack_gateway(&[]);
    let echo = udp_echo_at(&topo.server, server6(UDP_PORT));
    // 4000 bytes leave a client in three fragments (the sender's own, first first), and the echo comes back in
    // three.
    let datagram: Vec<u8> = (0..4000).map(|i| (i % 253) as u8).collect();
    for client in [snat, forward] {
        let echoed = udp_round_trip(topo.client(client), 0, server6(UDP_PORT), &datagram)
            .expect("the fragmented datagram or its echo was lost");
        assert!(echoed == datagram, "the echo came back changed");
    }
    let sources: Vec<String> = echo.peers().iter().map(|p| p.ip().to_string()).collect();
    assert_eq!(sources, [GATEWAY_EXTERNAL_IPV6, "fd00:10:16:1::2"]);
    assert_eq!(gateway.counter("fragments_translated_out"), 2);
    assert_eq!(gateway.counter("fragments_translated_in"), 2);
}

/// A 4000-byte UDP datagram from `src`:`sport` to `dst`:`dport`, as the fragments a sender makes of it (1232 bytes
/// of it each: four), last first.
fn fragments_last_first(src: &str, sport: u16, dst: &str, dport: u16, id: u32) -> Vec<Vec<u8>> {
    let l4 = L4::Udp {
        sport,
        dport,
        payload: big_payload(),
        no_checksum: false,
    };
    let frame = Frame6::new(src.parse().unwrap(), dst.parse().unwrap(), l4);
    let mut pieces = frame.fragments(id, 1232);
    pieces.reverse();
    pieces
}

fn big_payload() -> Vec<u8> {
    (0..4000).map(|i| (i % 253) as u8).collect()
}

#[test]
fn a_4000_byte_datagram_whose_first_fragment_comes_last_arrives_whole_each_way() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let snat = topo.add_dual_stack_client("10.16.0.2", "fd00:10:16::2");
    let forward = topo.add_dual_stack_client("10.16.1.2", "fd00:10:16:1::2");
    let gateway = topo.start_dual_stack_gateway(&[]);
    let server_socket = topo
        .server
        .run(|| UdpSocket::bind(server6(UDP_PORT)).unwrap());
    for (client, address, id) in [
        (snat, "fd00:10:16::2", 0x4101),
        (forward, "fd00:10:16:1::2", 0x4201),
    ] {
        let client_socket = topo
            .client(client)
            .run(|| UdpSocket::bind("[::]:7500").unwrap());
        // Out: a sender's stack would send the first fragment first, so the fragments are crafted and sent last
        // first; the server's stack reassembles what came through.
        let pieces = fragments_last_first(address, 7500, SERVER_IPV6, UDP_PORT, id);
        topo.client(client)
            .run(move || pieces.iter().for_each(|p| send_raw6(p)));
        let (datagram, peer) = receive_datagram(&server_socket);
        assert!(datagram == big_payload(), "the datagram arrived changed");
        let expected_source = if client == snat {
            GATEWAY_EXTERNAL_IPV6
        } else {
            address
        };
        assert_eq!(peer.ip().to_string(), expected_source);
        // Back: the server's answer, last fragment first, to the address and port it saw.
        let pieces = fragments_last_first(
            SERVER_IPV6,
            UDP_PORT,
            &peer.ip().to_string(),
            peer.port(),
            id + 1,
        );
        topo.server
            .run(move || pieces.iter().for_each(|p| send_raw6(p)));
        let (answer, from) = receive_datagram(&client_socket);
        assert!(answer == big_payload(), "the answer arrived changed");
        assert_eq!(from, server6(UDP_PORT));
    }
    // The SNAT client's datagrams are followed, one each way, each with its translated end.
    let followed = gateway.followed_datagrams();
    let expected = [
        (
            0x4101,
            "source".to_owned(),
            GATEWAY_EXTERNAL_IPV6.to_owned(),
        ),
        (0x4102, "destination".to_owned(), "fd00:10:16::2".to_owned()),
    ];
    assert!(
        expected.iter().all(|d| followed.contains(d)),
        "{followed:?}"
    );
    // The SNAT client's three later fragments waited for their first fragment, each way; the forward client's
    // needed no translation.
    assert_eq!(gateway.counter("fragments_held"), 6);
    assert_eq!(gateway.agent_counter("fragments_released", 6), 6);
    assert_eq!(gateway.counter("fragments_expired"), 0);
}
