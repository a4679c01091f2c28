//! veg against the reference, packet for packet: the same crafted ICMP errors and out-of-order fragments go
//! through the topology's instance once with `veg gateway` and once with iptables MASQUERADE (the kernel forwarding,
//! conntrack translating), and what the far sides received must be the same bytes: addresses, ports, quoted
//! headers and every checksum. (The reference adds --random-fully, which only changes which port a flow gets;
//! without it both keep the client's port, so the outputs can be compared whole.)
//!
//! Run serially (`--test-threads=1`), as the other traffic suites.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};

use veg_testbed::{
    packet::{Frame, icmp_error_frame, send_raw, udp_fragments_last_first},
    servers::{IcmpListener, receive_datagram},
    skip_unless_root,
    topology::{GATEWAY_EXTERNAL_IP, SERVER_IP, SNAT_SOURCES, Topology, server},
};

const CLIENT_IP: &str = "10.16.0.2";
const CLIENT_PORT: u16 = 7700;
const SERVER_PORT: u16 = 9000;
const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// What the far sides received in one run.
#[derive(Debug, PartialEq)]
struct Seen {
    /// The server's port unreachable about the client's datagram (8 bytes of UDP quoted), as the client got it.
    short_quote_error_at_client: Vec<u8>,
    /// The server's time exceeded quoting the whole datagram, with IP options, as the client got it.
    whole_quote_error_at_client: Vec<u8>,
    /// The client's port unreachable about the server's datagram, as the server got it.
    error_at_server: Vec<u8>,
    /// The client's 4000-byte datagram, sent last fragment first, as the server's socket got it, and from where.
    datagram_at_server: (Vec<u8>, SocketAddr),
    /// The server's 4000-byte answer, sent last fragment first, as the client's socket got it.
    answer_at_client: Vec<u8>,
}

fn udp_frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: Vec<u8>) -> Frame {
    let mut frame = Frame::udp((src, sport), (dst, dport), payload);
    frame.src_mac = MAC;
    frame.dst_mac = MAC;
    frame
}

fn big_payload() -> Vec<u8> {
    (0..4000).map(|i| (i % 253) as u8).collect()
}

// Long because it is the exchange both runs must make in the same order: splitting it would hide that order.
/// The same exchange whatever translates: a flow from the client, errors about it both ways, and a fragmented
/// datagram each way with its first fragment last.
fn exchange(topo: &Topology, client: usize) -> Seen {
    let client_ns = topo.client(client);
    let client_ip: Ipv4Addr = CLIENT_IP.parse().unwrap();
    let server_ip: Ipv4Addr = SERVER_IP.parse().unwrap();
    let external: Ipv4Addr = GATEWAY_EXTERNAL_IP.parse().unwrap();
    let server_socket = topo
        .server
        .run(|| UdpSocket::bind(("0.0.0.0", SERVER_PORT)).unwrap());
    let client_socket = client_ns.run(|| UdpSocket::bind(("0.0.0.0", CLIENT_PORT)).unwrap());
    let at_client = client_ns.run(IcmpListener::open);
    let at_server = topo.server.run(IcmpListener::open);

    client_socket
        .send_to(b"hello", server(SERVER_PORT))
        .unwrap();
    let (_, peer) = receive_datagram(&server_socket);
    assert_eq!(peer, SocketAddr::from((external, CLIENT_PORT)));

    // Errors from a router past the gateway about the client's datagram, as it arrived there.
    let arrived = udp_frame(
        external,
        CLIENT_PORT,
        server_ip,
        SERVER_PORT,
        b"hello".to_vec(),
    );
    let short = icmp_error_frame(&arrived.bytes(), MAC, MAC, server_ip, (3, 3, [0; 4]), 8);
    topo.server.run(move || send_raw(&short));
    let short_quote_error_at_client = at_client.next_error();
    let mut with_options = arrived.clone();
    with_options.options = vec![0x94, 0x04, 0, 0]; // router alert
    let whole = icmp_error_frame(
        &with_options.bytes(),
        MAC,
        MAC,
        server_ip,
        (11, 0, [0; 4]),
        13,
    );
    topo.server.run(move || send_raw(&whole));
    let whole_quote_error_at_client = at_client.next_error();

    // The client's error about a datagram of the server, as it reached the client.
    let reply = udp_frame(
        server_ip,
        SERVER_PORT,
        client_ip,
        CLIENT_PORT,
        b"reply".to_vec(),
    );
    let error = icmp_error_frame(&reply.bytes(), MAC, MAC, client_ip, (3, 3, [0; 4]), 13);
    client_ns.run(move || send_raw(&error));
    let error_at_server = at_server.next_error();

    let pieces = udp_fragments_last_first(
        (client_ip, CLIENT_PORT),
        (server_ip, SERVER_PORT),
        big_payload(),
        0x4301,
        1480,
    );
    client_ns.run(move || pieces.iter().for_each(|p| send_raw(p)));
    let datagram_at_server = receive_datagram(&server_socket);
    let pieces = udp_fragments_last_first(
        (server_ip, SERVER_PORT),
        (external, CLIENT_PORT),
        big_payload(),
        0x4302,
        1480,
    );
    topo.server
        .run(move || pieces.iter().for_each(|p| send_raw(p)));
    let answer_at_client = receive_datagram(&client_socket).0;
    Seen {
        short_quote_error_at_client,
        whole_quote_error_at_client,
        error_at_server,
        datagram_at_server,
        answer_at_client,
    }
}

/// The reference's instance: the kernel forwards between the interfaces and MASQUERADE translates the SNAT
/// sources (conntrack reassembles fragments and translates ICMP errors).
fn masquerade(topo: &Topology) {
    for key in [
        "net.ipv4.conf.all.forwarding",
        "net.ipv4.conf.eth0.forwarding",
        "net.ipv4.conf.net1.forwarding",
    ] {
        topo.gateway.sysctl(key, "1");
    }
    topo.gateway.exec_ok(
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            SNAT_SOURCES,
            "-o",
            "net1",
            "-j",
            "MASQUERADE",
        ],
    );
}

#[test]
fn icmp_errors_and_out_of_order_fragments_leave_veg_as_they_leave_masquerade() {
    if skip_unless_root() {
        return;
    }
    let seen_through_veg = {
        let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
        let client = topo.add_client(CLIENT_IP);
        let _gateway = topo.start_gateway(&[]);
        exchange(&topo, client)
    };
    let seen_through_masquerade = {
        let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
        let client = topo.add_client(CLIENT_IP);
        masquerade(&topo);
        exchange(&topo, client)
    };
    // Sanity: the errors reached their flows' original ends, and the datagrams came whole.
    assert_eq!(
        &seen_through_veg.short_quote_error_at_client[16..20],
        &[10, 16, 0, 2]
    );
    assert_eq!(seen_through_veg.datagram_at_server.0, big_payload());
    assert_eq!(seen_through_veg.answer_at_client, big_payload());
    assert_eq!(seen_through_veg, seen_through_masquerade);
}
