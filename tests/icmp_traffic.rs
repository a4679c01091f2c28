//! ICMP errors through `veg gateway` with real stacks on both sides (veg-testbed's topology.rs topology, plus a host
//! one router beyond the server): a closed port refuses a client at once, a hop past the gateway answers an
//! expiring probe, and a pod's own port unreachable reaches the remote. What is asserted is what the sockets
//! were told by their kernels, which match an ICMP error to a socket only through the quoted packet.
//!
//! Run serially (`--test-threads=1`), as the other traffic suites.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use veg_testbed::{
    netns::Netns,
    packet::{send_raw, udp_fragments_last_first},
    servers::{
        answer_first_datagram, echo_bulk, learned_mtu, receive_datagram, report_icmp_errors,
    },
    skip_unless_root,
    topology::{SERVER_IP, Topology, server},
};

const UDP_PORT: u16 = 9000;
/// A host one router beyond the server, which routes for it.
const FAR_IP: &str = "172.18.0.2";

/// Send one datagram from a connected socket in `ns` and return the error its kernel reported, if any.
fn udp_error(ns: &Netns, to: SocketAddr, ttl: Option<u32>) -> Option<i32> {
    ns.run(move || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket.connect(to).unwrap();
        report_icmp_errors(&socket);
        if let Some(ttl) = ttl {
            socket.set_ttl(ttl).unwrap();
        }
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        socket.send(b"anyone?").unwrap();
        let mut buf = [0u8; 64];
        socket.recv(&mut buf).err().and_then(|e| e.raw_os_error())
    })
}

/// A host beyond the server, which forwards for it: client -> gateway -> server (a router) -> far.
fn add_far_host(topo: &Topology) -> Netns {
    let far = Netns::new(&format!("{}-far", topo.prefix));
    topo.server.add_veth("far0", "far1", &far);
    topo.server
        .ip(&["addr", "add", "172.18.0.1/24", "dev", "far0"]);
    topo.server.ip(&["link", "set", "far0", "up"]);
    topo.server.sysctl("net.ipv4.conf.all.forwarding", "1");
    far.ip(&["addr", "add", &format!("{FAR_IP}/24"), "dev", "far1"]);
    far.ip(&["link", "set", "far1", "up"]);
    far.ip(&["route", "add", "default", "via", "172.18.0.1"]);
    // The gateway reaches 172.18.0.0/24 through its default route, the server.
    far
}

#[test]
fn a_closed_server_port_refuses_a_udp_client_at_once() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.0.2");
    let gateway = topo.start_gateway(&[]);
    // Nothing listens on the port: the server's kernel answers port unreachable, quoting the translated datagram.
    let started = std::time::Instant::now();
    assert_eq!(
        udp_error(topo.client(client), server(UDP_PORT + 1), None),
        Some(libc::ECONNREFUSED),
        "the client was not told the port is closed"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused only after a timeout"
    );
    assert_eq!(gateway.counter("icmp_errors_translated_in"), 1);
}

#[test]
fn a_hop_beyond_the_gateway_answers_expiring_probes_for_udp_and_ping() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.0.2");
    let _far = add_far_host(&topo);
    let gateway = topo.start_gateway(&[]);
    let far = SocketAddr::new(FAR_IP.parse().unwrap(), 33434);
    // TTL 1 expires at the gateway, TTL 2 at the server (the router beyond it), whose error quotes the translated
    // probe: only its translation back lets the client's socket hear of it.
    for ttl in [1, 2] {
        assert_eq!(
            udp_error(topo.client(client), far, Some(ttl)),
            Some(libc::EHOSTUNREACH),
            "no time exceeded for a UDP probe with TTL {ttl}"
        );
    }
    let ping = topo
        .client(client)
        .exec("ping", &["-c", "1", "-W", "2", "-t", "2", FAR_IP]);
    let said = String::from_utf8_lossy(&ping.stdout);
    assert!(
        said.contains(&format!("From {SERVER_IP}")) && said.contains("Time to live exceeded"),
        "ping -t 2 said:\n{said}"
    );
    // And the far host itself answers with TTL 3.
    let reached = topo
        .client(client)
        .exec("ping", &["-c", "1", "-W", "2", "-t", "3", FAR_IP]);
    assert!(
        reached.status.success(),
        "ping -t 3 did not reach the far host"
    );
    assert_eq!(gateway.counter("icmp_errors_translated_in"), 2);
}

#[test]
fn a_pods_port_unreachable_reaches_the_remote_with_the_external_tuple() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.0.2");
    let gateway = topo.start_gateway(&[]);
    // The remote learns the flow's external tuple from a first datagram, then the client closes its socket.
    let remote = answer_first_datagram(
        &topo.server,
        UDP_PORT,
        |_| std::thread::sleep(Duration::from_millis(300)),
        b"reply to a closed port",
    );
    std::thread::sleep(Duration::from_millis(100));
    topo.client(client).run(|| {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket.send_to(b"hello", server(UDP_PORT)).unwrap();
        // Closed when dropped: the reply finds no socket.
    });
    let (peer, error) = remote.join().unwrap();
    assert_eq!(
        peer.ip().to_string(),
        veg_testbed::topology::GATEWAY_EXTERNAL_IP
    );
    assert_eq!(
        error,
        Some(libc::ECONNREFUSED),
        "the remote was not told: the pod's error must quote the reply as the remote sent it"
    );
    assert_eq!(gateway.counter("icmp_errors_translated_out"), 1);
}

#[test]
fn traceroute_from_a_pod_shows_every_hop_with_udp_and_icmp_probes() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.0.2");
    let _far = add_far_host(&topo);
    let _gateway = topo.start_gateway(&[]);
    // The gateway (its VPC address), the router beyond it, the far host: the last answers UDP probes with port
    // unreachable, ICMP ones with an echo reply, and both reach the pod only through their translation back.
    let hops = [
        veg_testbed::topology::GATEWAY_INTERNAL_IP,
        SERVER_IP,
        FAR_IP,
    ];
    for probes in [&[][..], &["-I"][..]] {
        let mut args = vec!["-n", "-q", "1", "-w", "2", "-m", "3"];
        args.extend_from_slice(probes);
        args.push(FAR_IP);
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
                "traceroute {probes:?}: hop {} should be {hop}:\n{said}",
                n + 1
            );
        }
    }
}

#[test]
fn a_smaller_mtu_beyond_the_gateway_is_learned_by_the_client_and_a_large_write_completes() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.0.2");
    let far = add_far_host(&topo);
    // The router's route to the far host carries 1200 bytes at most; the far host, on a 1500-byte link, announces
    // a larger MSS, so only path MTU discovery through the gateway can make the client's segments fit.
    topo.server.ip(&[
        "route",
        "replace",
        "172.18.0.0/24",
        "dev",
        "far0",
        "mtu",
        "1200",
    ]);
    let _gateway = topo.start_gateway(&[]);
    let _echo = veg_testbed::servers::tcp_echo(&far, 8080);
    let to = SocketAddr::new(FAR_IP.parse().unwrap(), 8080);
    echo_bulk(topo.client(client), to, 256 * 1024).expect("the large write did not complete");
    assert_eq!(learned_mtu(topo.client(client), FAR_IP), Some(1200));
}

#[test]
fn a_smaller_mtu_on_the_vpc_side_is_learned_by_the_remote_for_inbound_data() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.0.2");
    // The gateway's VPC side carries 1200 bytes at most; the client announces a larger MSS (advmss), as a client
    // on a wider link would, but sends no more than 1200 itself: a larger frame of its own would be dropped by the
    // VPC's bridge in front of the narrower port, silently, which is a misconfigured link, not what is tested.
    topo.gateway.ip(&["link", "set", "eth0", "mtu", "1200"]);
    topo.client(client).ip(&[
        "route",
        "replace",
        "default",
        "via",
        veg_testbed::topology::GATEWAY_INTERNAL_IP,
        "mtu",
        "1200",
        "advmss",
        "1460",
    ]);
    let gateway = topo.start_gateway(&[]);
    let _echo = veg_testbed::servers::tcp_echo(&topo.server, 8080);
    echo_bulk(topo.client(client), server(8080), 256 * 1024)
        .expect("the echo of a large write did not come back");
    assert_eq!(
        learned_mtu(&topo.server, veg_testbed::topology::GATEWAY_EXTERNAL_IP),
        Some(1200)
    );
    assert!(gateway.counter("too_big") > 0);
}

#[test]
fn a_4000_byte_datagram_arrives_whole_each_way_from_a_snat_and_a_forward_source() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let snat = topo.add_client("10.16.0.2");
    let forward = topo.add_client("10.16.1.2");
    let gateway = topo.start_gateway(&[]);
    let echo = veg_testbed::servers::udp_echo(&topo.server, UDP_PORT);
    // 4000 bytes leave a client in three fragments, and the echo comes back in three.
    let datagram: Vec<u8> = (0..4000).map(|i| (i % 253) as u8).collect();
    for client in [snat, forward] {
        let echoed = veg_testbed::servers::udp_round_trip(
            topo.client(client),
            0,
            server(UDP_PORT),
            &datagram,
        )
        .expect("the fragmented datagram or its echo was lost");
        assert!(echoed == datagram, "the echo came back changed");
    }
    let sources: Vec<String> = echo.peers().iter().map(|p| p.ip().to_string()).collect();
    assert_eq!(
        sources,
        [veg_testbed::topology::GATEWAY_EXTERNAL_IP, "10.16.1.2"]
    );
    assert_eq!(gateway.counter("fragments_translated_out"), 2);
    assert_eq!(gateway.counter("fragments_translated_in"), 2);
}

/// A 4000-byte UDP datagram as the fragments a sender makes of it, last first.
fn fragments_last_first(src: &str, sport: u16, dst: &str, dport: u16, id: u16) -> Vec<Vec<u8>> {
    udp_fragments_last_first(
        (src.parse().unwrap(), sport),
        (dst.parse().unwrap(), dport),
        big_payload(),
        id,
        1480,
    )
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
    let snat = topo.add_client("10.16.0.2");
    let forward = topo.add_client("10.16.1.2");
    let gateway = topo.start_gateway(&[]);
    let server_socket = topo
        .server
        .run(|| UdpSocket::bind(("0.0.0.0", UDP_PORT)).unwrap());
    for (client, address, id) in [(snat, "10.16.0.2", 0x4101), (forward, "10.16.1.2", 0x4201)] {
        let client_socket = topo
            .client(client)
            .run(|| UdpSocket::bind(("0.0.0.0", 7500)).unwrap());
        // Out: the client's stack would send the first fragment first, so the fragments are crafted and sent
        // last first; the server's stack reassembles what came through.
        let pieces = fragments_last_first(address, 7500, SERVER_IP, UDP_PORT, id);
        topo.client(client)
            .run(move || pieces.iter().for_each(|p| send_raw(p)));
        let (datagram, peer) = receive_datagram(&server_socket);
        assert!(datagram == big_payload(), "the datagram arrived changed");
        let expected_source = if client == snat {
            veg_testbed::topology::GATEWAY_EXTERNAL_IP
        } else {
            address
        };
        assert_eq!(peer.ip().to_string(), expected_source);
        // Back: the server's answer, last fragment first, to the address and port it saw.
        let pieces = fragments_last_first(
            SERVER_IP,
            UDP_PORT,
            &peer.ip().to_string(),
            peer.port(),
            id + 1,
        );
        topo.server
            .run(move || pieces.iter().for_each(|p| send_raw(p)));
        let (answer, from) = receive_datagram(&client_socket);
        assert!(answer == big_payload(), "the answer arrived changed");
        assert_eq!(from, server(UDP_PORT));
    }
    // The SNAT client's datagrams are followed, one each way, each with its translated end.
    let followed = gateway.followed_datagrams();
    let expected = [
        (
            0x4101,
            "source".to_owned(),
            veg_testbed::topology::GATEWAY_EXTERNAL_IP.to_owned(),
        ),
        (0x4102, "destination".to_owned(), "10.16.0.2".to_owned()),
    ];
    assert!(
        expected.iter().all(|d| followed.contains(d)),
        "{followed:?}"
    );
    // The SNAT client's fragments waited for their first fragment, both ways; the forward client's needed no
    // translation.
    assert_eq!(gateway.counter("fragments_held"), 4);
    assert_eq!(gateway.agent_counter("fragments_released", 4), 4);
    assert_eq!(gateway.counter("fragments_expired"), 0);
}

/// Clear DF on the packets `socket` sends (IP_PMTUDISC_DONT): the network may fragment them.
fn allow_fragmenting(socket: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let value: libc::c_int = libc::IP_PMTUDISC_DONT;
    // SAFETY: setsockopt with a valid int option value.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "IP_MTU_DISCOVER");
}

#[test]
fn a_datagram_too_big_for_the_next_hop_without_df_is_fragmented_each_way() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.0.2");
    // The gateway's routes to the server and back to the client carry 1200 bytes (locked: never raised).
    topo.gateway.ip(&[
        "route", "replace", SERVER_IP, "dev", "net1", "mtu", "lock", "1200",
    ]);
    topo.gateway.ip(&[
        "route",
        "replace",
        "10.16.0.2",
        "dev",
        "eth0",
        "mtu",
        "lock",
        "1200",
    ]);
    let gateway = topo.start_gateway(&[]);
    let server_socket = topo.server.run(|| {
        let socket = UdpSocket::bind(("0.0.0.0", UDP_PORT)).unwrap();
        allow_fragmenting(&socket);
        socket
    });
    let client_socket = topo.client(client).run(|| {
        let socket = UdpSocket::bind(("0.0.0.0", 7600)).unwrap();
        allow_fragmenting(&socket);
        socket
    });
    let datagram: Vec<u8> = (0..1400).map(|i| (i % 251) as u8).collect();
    client_socket.send_to(&datagram, server(UDP_PORT)).unwrap();
    let (got, peer) = receive_datagram(&server_socket);
    assert!(got == datagram, "the datagram arrived changed");
    assert_eq!(
        peer.ip().to_string(),
        veg_testbed::topology::GATEWAY_EXTERNAL_IP
    );
    server_socket.send_to(&datagram, peer).unwrap();
    let (answer, _) = receive_datagram(&client_socket);
    assert!(answer == datagram, "the answer arrived changed");
    assert_eq!(gateway.counter("too_big_fragmented"), 2);
    assert_eq!(gateway.agent_counter("fragments_created", 4), 4);
}
