//! Hostile and overloading traffic through `veg gateway` in network namespaces (veg-testbed's topology.rs topology):
//! what the far side saw when outside hosts probe the VPC, when a client broadcasts, when the agent starts or
//! dies under a flood, when a client offers more flows than the port range holds, and when a reply's TTL expires.
//!
//! Run serially (`--test-threads=1`), as the other traffic suites.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use veg_testbed::{
    capture::Capture,
    servers::{
        answer_first_datagram, connect_from, tcp_echo, tcp_round_trip, udp_echo, udp_round_trip,
    },
    skip_unless_root,
    topology::{GATEWAY_EXTERNAL_IP, Topology, external_ip, server},
};

const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 9000;

/// Listen on UDP `port` in a client for `for_how_long` and return the sources of what arrived.
fn udp_arrivals(
    topo: &Topology,
    client: usize,
    port: u16,
    for_how_long: Duration,
) -> std::thread::JoinHandle<Vec<SocketAddr>> {
    topo.client(client).spawn(move || {
        let socket = UdpSocket::bind(("0.0.0.0", port)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let deadline = Instant::now() + for_how_long;
        let mut seen = Vec::new();
        let mut buf = [0u8; 64];
        while Instant::now() < deadline {
            if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                seen.push(peer);
            }
        }
        seen
    })
}

#[test]
fn an_outside_host_routing_the_vpc_via_the_gateway_reaches_only_forward_policy_pods() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let snat = topo.add_client("10.16.0.2");
    let forward = topo.add_client("10.16.1.2");
    let no_policy = topo.add_client("10.16.2.2");
    let gateway = topo.start_gateway(&[]);
    // The server routes 10.16.0.0/16 via the gateway's external address (topology.rs), as a hostile neighbour could.
    let listen = Duration::from_secs(2);
    let arrivals = [snat, forward, no_policy].map(|c| udp_arrivals(&topo, c, 7000, listen));
    std::thread::sleep(Duration::from_millis(200));
    topo.server.run(|| {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..5 {
            for ip in ["10.16.0.2", "10.16.1.2", "10.16.2.2"] {
                socket.send_to(b"probe", (ip, 7000)).unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let [snat_seen, forward_seen, no_policy_seen] = arrivals.map(|a| a.join().unwrap());
    assert!(
        snat_seen.is_empty(),
        "a SNAT source was reached directly: {snat_seen:?}"
    );
    assert!(
        no_policy_seen.is_empty(),
        "a pod no policy names was reached: {no_policy_seen:?}"
    );
    assert_eq!(
        forward_seen.len(),
        5,
        "the forward-policy pod must be reachable"
    );
    assert!(gateway.counter("dropped_inbound_no_policy") >= 5);
    assert!(gateway.counter("dropped_unsolicited") >= 5);
}

#[test]
fn broadcast_and_multicast_from_a_snat_client_never_leave_the_external_interface() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.0.2");
    let gateway = topo.start_gateway(&[]);
    let udp = udp_echo(&topo.server, UDP_PORT);
    let capture = Capture::start(&topo.server, "ul1", "udp");
    topo.client(client).run(|| {
        let socket = UdpSocket::bind("0.0.0.0:5353").unwrap();
        socket.set_broadcast(true).unwrap();
        socket.set_multicast_ttl_v4(8).unwrap();
        for _ in 0..3 {
            for to in [
                "224.0.0.251:5353",
                "239.255.255.250:1900",
                "255.255.255.255:5353",
            ] {
                socket.send_to(b"who is there?", to).unwrap();
            }
        }
    });
    // A unicast datagram beside them shows the capture sees what does leave.
    udp_round_trip(topo.client(client), 0, server(UDP_PORT), b"unicast").unwrap();
    let seen = capture.stop(Duration::from_millis(300));
    assert!(
        seen.iter()
            .any(|l| l.contains(&format!("{GATEWAY_EXTERNAL_IP}."))),
        "the capture saw nothing at all: {seen:?}"
    );
    let leaked: Vec<&String> = seen
        .iter()
        .filter(|l| {
            ["224.0.0.251", "239.255.255.250", "255.255.255.255"]
                .iter()
                .any(|a| l.contains(a))
        })
        .collect();
    assert!(leaked.is_empty(), "broadcast or multicast left: {leaked:?}");
    assert_eq!(udp.peers().len(), 1);
    assert_eq!(gateway.counter("dropped_broadcast_multicast"), 9);
}

/// Send UDP datagrams from a client to the server every millisecond until stopped; returns how many were sent.
fn flood(
    topo: &Topology,
    client: usize,
    to: SocketAddr,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = topo.client(client).spawn(move || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut sent = 0;
        while !stopped.load(Ordering::Relaxed) {
            if socket.send_to(b"flood", to).is_ok() {
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        sent
    });
    (stop, thread)
}

#[test]
fn nothing_leaves_untranslated_while_the_agent_starts_or_after_it_dies_without_its_links() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.0.2");
    // A pod's namespace inherits forwarding on from its node.
    topo.gateway.sysctl("net.ipv4.conf.all.forwarding", "1");
    // What the instances' init container runs before the agent.
    let init = std::process::Command::new(env!("CARGO_BIN_EXE_veg"))
        .args(["gateway", "--init", "--netns", &topo.gateway.name])
        .args([
            "--internal-interface",
            "eth0",
            "--external-interface",
            "net1",
        ])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "veg gateway --init: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let udp = udp_echo(&topo.server, UDP_PORT);
    let untranslated = Capture::start(&topo.server, "ul1", "src net 10.16.0.0/16");
    let (stop, flooding) = flood(&topo, client, server(UDP_PORT));
    std::thread::sleep(Duration::from_millis(300));
    let mut gateway = topo.start_gateway(&[]);
    std::thread::sleep(Duration::from_millis(300));
    // Killed, and its pinned links gone with it: the programs detach, and nothing takes over.
    gateway.kill();
    for link in ["LINK_FROM_VPC", "LINK_FROM_OUTSIDE"] {
        let pin = std::path::Path::new("/sys/fs/bpf/veg")
            .join(&gateway.name)
            .join(link);
        std::fs::remove_file(&pin).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let sent = flooding.join().unwrap();
    let leaked = untranslated.stop(Duration::from_millis(300));
    assert!(leaked.is_empty(), "untranslated packets left: {leaked:?}");
    let translated = udp
        .peers()
        .iter()
        .filter(|p| p.ip() == external_ip())
        .count();
    assert!(
        translated > 0 && (translated as u64) < sent,
        "{translated} of {sent} datagrams arrived translated: the flood did not span the agent's life"
    );
}

/// A TCP connection from a client that echoes a message every 50 ms until stopped; returns the failures.
fn held_connection(
    topo: &Topology,
    client: usize,
    to: SocketAddr,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<Vec<String>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = topo.client(client).spawn(move || {
        let mut failures = Vec::new();
        let mut stream = connect_from(0, to).expect("opening the held connection");
        let mut round = 0u32;
        while !stopped.load(Ordering::Relaxed) {
            let message = format!("round {round:06}");
            let mut echo = vec![0u8; message.len()];
            let result = stream
                .write_all(message.as_bytes())
                .and_then(|()| stream.read_exact(&mut echo));
            if let Err(e) = result {
                failures.push(format!("{message}: {e}"));
                break;
            }
            round += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        failures
    });
    (stop, thread)
}

#[test]
fn a_client_offering_more_flows_than_the_range_holds_stalls_no_one_else() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let greedy = topo.add_client("10.16.0.2");
    let other = topo.add_client("10.16.0.3");
    // 64 ports toward each remote endpoint.
    let gateway = topo.start_gateway(&["--port-range", "2000-2063"]);
    let _udp = udp_echo(&topo.server, UDP_PORT);
    let _tcp = tcp_echo(&topo.server, TCP_PORT);
    let _tcp2 = tcp_echo(&topo.server, TCP_PORT + 1);
    let (stop_held, held) = held_connection(&topo, other, server(TCP_PORT));
    std::thread::sleep(Duration::from_millis(200));
    // 3,000 flows toward one endpoint, as fast as they go: 47 times what the range holds.
    let offered = Arc::new(AtomicU64::new(0));
    let counted = offered.clone();
    let greedy_flows = topo.client(greedy).spawn(move || {
        for _ in 0..3000 {
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            let _ = socket.send_to(b"one more flow", server(UDP_PORT));
            counted.fetch_add(1, Ordering::Relaxed);
        }
    });
    // Meanwhile new connections to another endpoint, from both clients, go through.
    for client in [other, greedy, other] {
        tcp_round_trip(topo.client(client), 0, server(TCP_PORT + 1), b"elsewhere")
            .expect("a new connection to another endpoint failed during the flood");
    }
    greedy_flows.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stop_held.store(true, Ordering::Relaxed);
    let failures = held.join().unwrap();
    assert!(
        failures.is_empty(),
        "the held connection broke: {failures:?}"
    );
    let dropped = gateway.counter("dropped_port_exhausted");
    let searches = gateway.counter("port_searches_failed");
    assert!(
        dropped >= 2000,
        "only {dropped} of {} flows found the range full",
        offered.load(Ordering::Relaxed)
    );
    // Each failed search makes the endpoint skipped for 250 ms: far fewer searches than drops.
    assert!(
        searches * 20 < dropped,
        "{searches} full searches for {dropped} drops: the exhausted endpoint is not remembered"
    );
    // The datapath logs nothing unless asked (--datapath-log).
    assert!(!gateway.log().contains("no free port"), "{}", gateway.log());
}

#[test]
fn with_datapath_logs_on_a_port_search_that_finds_nothing_is_logged() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.0.2");
    // Two ports toward each remote endpoint.
    let mut gateway = topo.start_gateway(&["--port-range", "2000-2001", "--datapath-log", "warn"]);
    let _udp = udp_echo(&topo.server, UDP_PORT);
    for port in [7001, 7002] {
        udp_round_trip(topo.client(client), port, server(UDP_PORT), b"fits")
            .expect("a datagram through the gateway was lost");
    }
    topo.client(client).run(|| {
        let socket = UdpSocket::bind("0.0.0.0:7003").unwrap();
        socket.send_to(b"no port left", server(UDP_PORT)).unwrap();
    });
    let expected = format!("no free port toward {}", server(UDP_PORT));
    gateway.wait_for_log(&expected, Duration::from_secs(10));
    assert_eq!(gateway.counter("port_searches_failed"), 1);
}

#[test]
fn a_reply_whose_ttl_expires_at_the_gateway_gets_time_exceeded_not_a_reset_or_unreachable() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.0.2");
    let gateway = topo.start_gateway(&[]);
    // The remote end of a translated UDP flow replies with TTL 1: its kernel hears of what became of it.
    let remote = answer_first_datagram(
        &topo.server,
        UDP_PORT,
        |socket| socket.set_ttl(1).unwrap(),
        b"reply that expires",
    );
    let reached = topo.client(client).run(|| {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        socket.send_to(b"request", server(UDP_PORT)).unwrap();
        let mut buf = [0u8; 64];
        socket.recv_from(&mut buf).is_ok()
    });
    let (peer, answer) = remote.join().unwrap();
    assert_eq!(peer.ip(), external_ip());
    assert!(
        !reached,
        "a reply with TTL 1 was delivered past the gateway"
    );
    assert_eq!(
        answer,
        Some(libc::EHOSTUNREACH),
        "the remote should learn of a time exceeded (EHOSTUNREACH), not a port unreachable (ECONNREFUSED)"
    );
    assert_eq!(gateway.counter("ttl_expired"), 1);
}

/// Send a TCP RST from `from` to `to` with sequence number `seq`, through a raw socket of the calling thread's
/// namespace (as an off-path host that knows the tuple would).
fn spoof_rst(from: SocketAddr, to: SocketAddr, seq: u32) {
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (from.ip(), to.ip()) else {
        panic!("IPv4 only");
    };
    let l4 = veg_testbed::packet::L4::Tcp {
        sport: from.port(),
        dport: to.port(),
        seq,
        ack: 0,
        flags: veg_testbed::packet::TCP_RST,
        payload: Vec::new(),
    };
    veg_testbed::packet::send_raw(&veg_testbed::packet::Frame::new(src, dst, l4).bytes());
}

/// The server's next sequence number once it has sent `segments` segments of data: the end of the last one (in a
/// capture of the server's segments, "seq FIRST:END"). Waits for tcpdump to report them.
fn server_next_seq(capture: &Capture, segments: usize) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ends: Vec<u32> = capture
            .lines()
            .iter()
            .filter_map(|l| {
                l.split(" seq ")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .split(':')
                    .nth(1)?
                    .parse()
                    .ok()
            })
            .collect();
        if ends.len() >= segments {
            return ends[segments - 1];
        }
        assert!(
            Instant::now() < deadline,
            "the capture saw {} data segments",
            ends.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn echo(stream: &mut std::net::TcpStream, message: &[u8]) -> std::io::Result<()> {
    stream.write_all(message)?;
    let mut back = vec![0u8; message.len()];
    stream.read_exact(&mut back)
}

#[test]
fn a_spoofed_rst_outside_the_flow_window_never_reaches_the_client() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.0.2");
    let gateway = topo.start_gateway(&[]);
    let tcp = tcp_echo(&topo.server, TCP_PORT);
    let sent = Capture::start(&topo.server, "ul1", &format!("tcp and src port {TCP_PORT}"));
    let resets = Capture::start(topo.client(client), "eth0", "tcp[tcpflags] & tcp-rst != 0");
    let mut stream = topo
        .client(client)
        .run(|| connect_from(0, server(TCP_PORT)))
        .unwrap();
    echo(&mut stream, b"hello").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let external = tcp.peers()[0];
    // An off-path host knows the server and guesses the external port, but not the numbers.
    let next = server_next_seq(&sent, 1);
    topo.server.run(move || {
        for far in [0x4000_0000u32, 0x8000_0000, 0xc000_0000] {
            spoof_rst(server(TCP_PORT), external, next.wrapping_add(far));
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        resets.lines().is_empty(),
        "spoofed RSTs reached the client: {:?}",
        resets.lines()
    );
    assert_eq!(gateway.counter("dropped_rst_implausible"), 3);
    echo(&mut stream, b"still").expect("the connection broke");
    // The remote's own numbers make a RST that goes through, as netfilter's window check lets it: so the capture
    // and the spoofing above are sound.
    let next = server_next_seq(&sent, 2);
    topo.server
        .run(move || spoof_rst(server(TCP_PORT), external, next));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        resets.stop(Duration::ZERO).len(),
        1,
        "the in-window RST did not arrive"
    );
    assert!(
        echo(&mut stream, b"reset?").is_err(),
        "the in-window RST did not close the connection"
    );
}

#[test]
fn by_default_every_port_the_instance_does_not_use_is_translated_into() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.0.2");
    // As the instances' Deployment sets it: the instance's own sockets keep to 61000-65535.
    topo.gateway
        .sysctl("net.ipv4.ip_local_port_range", "61000 65535");
    let gateway = topo.start_gateway(&[]);
    let udp = udp_echo(&topo.server, UDP_PORT);
    // A client's own port is kept when it is free and in the range: 45000 is in 1024-60999 (and was not in the
    // old 1024-32767), 60999 is its last port.
    for port in [45000, 60999] {
        udp_round_trip(topo.client(client), port, server(UDP_PORT), b"kept?").unwrap();
    }
    let seen: Vec<u16> = udp.peers().iter().map(|p| p.port()).collect();
    assert_eq!(seen, [45000, 60999]);
    assert!(gateway.log().contains("1024-60999"), "{}", gateway.log());
}

#[test]
fn a_flow_that_gets_no_port_is_refused_at_once_not_left_to_time_out() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let first = topo.add_client("10.16.0.2");
    let second = topo.add_client("10.16.0.3");
    // One port toward each remote endpoint: the first client's flow takes it.
    let gateway = topo.start_gateway(&["--port-range", "2000-2000"]);
    let _udp = udp_echo(&topo.server, UDP_PORT);
    udp_round_trip(topo.client(first), 0, server(UDP_PORT), b"mine").unwrap();
    let refused = topo.client(second).run(|| {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket.connect(server(UDP_PORT)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        socket.send(b"mine too?").unwrap();
        let started = Instant::now();
        let error = socket
            .recv(&mut [0u8; 64])
            .err()
            .and_then(|e| e.raw_os_error());
        (error, started.elapsed())
    });
    // ICMP administratively prohibited reaches the socket as "no route to host".
    assert_eq!(refused.0, Some(libc::EHOSTUNREACH), "{refused:?}");
    assert!(
        refused.1 < Duration::from_secs(1),
        "refused only after {:?}",
        refused.1
    );
    assert_eq!(gateway.counter("dropped_port_exhausted"), 1);
}
