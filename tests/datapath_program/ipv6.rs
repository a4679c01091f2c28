//! NAT66: the programs on crafted IPv6 frames, compared byte for byte with what a router running ip6tables
//! MASQUERADE would send (checksums recomputed here from scratch, pseudo-header included).

use std::net::Ipv6Addr;

use veg_testbed::packet::{
    Frame6, IPPROTO_DSTOPTS, IPPROTO_HOPOPTS, L4, TCP_ACK, TCP_SYN, empty_options_header,
    icmp6_error_frame,
};

use veg_common::fragment::kind;

use super::{
    CLIENT_MAC, CLIENT2_MAC, FORWARD_CLIENT_MAC, NEXTHOP_MAC, PORT_MAX, PORT_MIN, ProgramLab,
    TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, VEX_MAC, VIN_MAC, tcp, udp, with_program_lab,
};

pub const EXTERNAL6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x172, 0x17, 0, 0, 0, 0, 0x11);
pub const INSTANCE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x16, 0, 0, 0, 0, 0x12);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x16, 0, 0, 0, 0, 2);
const CLIENT6_2: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x16, 0, 0, 0, 0, 3);
const FORWARD_CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x16, 1, 0, 0, 0, 2);
/// On the internal link but in no policy.
const OUTSIDER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x16, 2, 0, 0, 0, 2);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);

impl ProgramLab {
    fn send6_from_vpc(&self, frame: &Frame6) -> (u32, Vec<u8>) {
        self.run(super::PROGRAM_FROM_VPC, &frame.bytes())
    }

    fn send6_from_outside(&self, frame: &Frame6) -> (u32, Vec<u8>) {
        self.send6_from_outside_bytes(&frame.bytes())
    }

    fn send6_from_outside_bytes(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run(super::PROGRAM_FROM_OUTSIDE, frame)
    }
}

/// The frame a router sends after NAT66: new source and port, hop limit - 1, MACs of the external hop.
fn snat_expected(sent: &Frame6, translated_port: u16) -> Vec<u8> {
    let mut out = sent.clone();
    out.src = EXTERNAL6;
    out.hop_limit -= 1;
    out.src_mac = VEX_MAC;
    out.dst_mac = NEXTHOP_MAC;
    super::set_port(&mut out.l4, true, translated_port);
    out.bytes()
}

/// The frame a router sends after translating a reply back to `client`.
fn reverse_expected(reply: &Frame6, client: Ipv6Addr, client_mac: [u8; 6], port: u16) -> Vec<u8> {
    let mut out = reply.clone();
    out.dst = client;
    out.hop_limit -= 1;
    out.src_mac = VIN_MAC;
    out.dst_mac = client_mac;
    super::set_port(&mut out.l4, false, port);
    out.bytes()
}

/// The translated source port of an output frame without extension headers.
fn source_port(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[54], frame[55]])
}

fn echo(kind: u8, id: u16) -> L4 {
    L4::IcmpEcho {
        kind,
        id,
        seq: 1,
        payload: vec![0xab; 57],
    }
}

#[test]
fn tcp_is_translated_out_and_back_exactly() {
    with_program_lab(|lab| {
        let syn = Frame6::new(CLIENT6, SERVER6, tcp(5000, 443, TCP_SYN));
        let (verdict, out) = lab.send6_from_vpc(&syn);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out, snat_expected(&syn, 5000));
        let syn_ack = Frame6::new(SERVER6, EXTERNAL6, tcp(443, 5000, TCP_SYN | TCP_ACK));
        let (verdict, back) = lab.send6_from_outside(&syn_ack);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(back, reverse_expected(&syn_ack, CLIENT6, CLIENT_MAC, 5000));
        assert_eq!(lab.counter("translated_out"), 1);
        assert_eq!(lab.counter("translated_in"), 1);
        assert_eq!(lab.counter("flows_created"), 1);
    });
}

#[test]
fn udp_is_translated_out_and_back_exactly() {
    with_program_lab(|lab| {
        let request = Frame6::new(CLIENT6, SERVER6, udp(5353, 53, false));
        let (verdict, out) = lab.send6_from_vpc(&request);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out, snat_expected(&request, 5353));
        let reply = Frame6::new(SERVER6, EXTERNAL6, udp(53, 5353, false));
        let (verdict, back) = lab.send6_from_outside(&reply);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(back, reverse_expected(&reply, CLIENT6, CLIENT_MAC, 5353));
    });
}

#[test]
fn udp_without_checksum_is_malformed_in_ipv6() {
    with_program_lab(|lab| {
        let request = Frame6::new(CLIENT6, SERVER6, udp(5353, 53, true));
        assert_eq!(lab.send6_from_vpc(&request).0, TC_ACT_SHOT);
        assert_eq!(lab.counter("dropped_malformed"), 1);
    });
}

#[test]
fn icmpv6_echo_is_translated_by_identifier() {
    with_program_lab(|lab| {
        let request = Frame6::new(CLIENT6, SERVER6, echo(128, 0x4321));
        let (verdict, out) = lab.send6_from_vpc(&request);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out, snat_expected(&request, 0x4321));
        let reply = Frame6::new(SERVER6, EXTERNAL6, echo(129, 0x4321));
        let (verdict, back) = lab.send6_from_outside(&reply);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(back, reverse_expected(&reply, CLIENT6, CLIENT_MAC, 0x4321));
        // An echo request to the external address is the instance's to answer.
        let ping = Frame6::new(SERVER6, EXTERNAL6, echo(128, 7));
        assert_eq!(lab.send6_from_outside(&ping), (TC_ACT_OK, ping.bytes()));
    });
}

#[test]
fn same_source_port_from_two_clients_gets_two_ports() {
    with_program_lab(|lab| {
        let first = Frame6::new(CLIENT6, SERVER6, udp(7000, 53, false));
        let second = Frame6::new(CLIENT6_2, SERVER6, udp(7000, 53, false));
        let (_, out1) = lab.send6_from_vpc(&first);
        let (verdict, out2) = lab.send6_from_vpc(&second);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(source_port(&out1), 7000);
        let port2 = source_port(&out2);
        assert_ne!(port2, 7000, "the second client must get another port");
        assert!((PORT_MIN..=PORT_MAX).contains(&port2));
        assert_eq!(out2, snat_expected(&second, port2));
        let reply2 = Frame6::new(SERVER6, EXTERNAL6, udp(53, port2, false));
        assert_eq!(
            lab.send6_from_outside(&reply2).1,
            reverse_expected(&reply2, CLIENT6_2, CLIENT2_MAC, 7000)
        );
    });
}

#[test]
fn extension_headers_are_walked_and_kept() {
    with_program_lab(|lab| {
        let mut syn = Frame6::new(CLIENT6, SERVER6, tcp(5001, 443, TCP_SYN));
        syn.extension = vec![
            (IPPROTO_HOPOPTS, empty_options_header()),
            (IPPROTO_DSTOPTS, empty_options_header()),
        ];
        let (verdict, out) = lab.send6_from_vpc(&syn);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out, snat_expected(&syn, 5001));
        // More headers than the walk allows: dropped whole, never forwarded half-read.
        let mut long = Frame6::new(CLIENT6, SERVER6, tcp(5002, 443, TCP_SYN));
        long.extension = vec![(IPPROTO_DSTOPTS, empty_options_header()); 5];
        assert_eq!(lab.send6_from_vpc(&long).0, TC_ACT_SHOT);
        assert_eq!(lab.counter("dropped_malformed"), 1);
        // A header claiming more bytes than the packet has.
        let mut bytes = syn.bytes();
        bytes[14 + 40 + 1] = 200;
        assert_eq!(lab.run(super::PROGRAM_FROM_VPC, &bytes).0, TC_ACT_SHOT);
        assert_eq!(lab.counter("dropped_malformed"), 2);
    });
}

#[test]
fn forward_sources_are_routed_unchanged_both_ways() {
    with_program_lab(|lab| {
        let out = Frame6::new(FORWARD_CLIENT6, SERVER6, udp(4000, 53, false));
        let (verdict, sent) = lab.send6_from_vpc(&out);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let mut expected = out.clone();
        expected.hop_limit -= 1;
        expected.src_mac = VEX_MAC;
        expected.dst_mac = NEXTHOP_MAC;
        assert_eq!(sent, expected.bytes());
        let reply = Frame6::new(SERVER6, FORWARD_CLIENT6, udp(53, 4000, false));
        let (verdict, back) = lab.send6_from_outside(&reply);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let mut expected = reply.clone();
        expected.hop_limit -= 1;
        expected.src_mac = VIN_MAC;
        expected.dst_mac = FORWARD_CLIENT_MAC;
        assert_eq!(back, expected.bytes());
        assert_eq!(lab.counter("forwarded_out"), 1);
        assert_eq!(lab.counter("forwarded_in"), 1);
    });
}

#[test]
fn no_policy_unsolicited_and_inbound_strangers_are_dropped() {
    with_program_lab(|lab| {
        let stranger = Frame6::new(OUTSIDER6, SERVER6, udp(4000, 53, false));
        assert_eq!(lab.send6_from_vpc(&stranger).0, TC_ACT_SHOT);
        assert_eq!(lab.counter("dropped_no_policy"), 1);
        // To the external address, in the translation range, of no flow.
        let unsolicited = Frame6::new(SERVER6, EXTERNAL6, udp(53, 2000, false));
        assert_eq!(lab.send6_from_outside(&unsolicited).0, TC_ACT_SHOT);
        assert_eq!(lab.counter("dropped_unsolicited"), 1);
        // Straight to a SNAT source, and to an address behind the gateway that no policy names.
        let direct = Frame6::new(SERVER6, CLIENT6, udp(53, 5353, false));
        assert_eq!(lab.send6_from_outside(&direct).0, TC_ACT_SHOT);
        assert_eq!(lab.counter("dropped_unsolicited"), 2);
        let behind = Frame6::new(SERVER6, OUTSIDER6, udp(53, 5353, false));
        assert_eq!(lab.send6_from_outside(&behind).0, TC_ACT_SHOT);
        assert_eq!(lab.counter("dropped_inbound_no_policy"), 1);
        assert_eq!(lab.counter("translated_out"), 0);
    });
}

#[test]
fn link_scope_traffic_is_the_instances_own() {
    with_program_lab(|lab| {
        // A neighbour solicitation for the instance, to its solicited-node multicast group, and a router
        // solicitation from a link-local address: handed to the stack untouched, from either side.
        let solicited_node: Ipv6Addr = "ff02::1:ff00:12".parse().unwrap();
        let link_local: Ipv6Addr = "fe80::2".parse().unwrap();
        let ns = Frame6::new(CLIENT6, solicited_node, echo(135, 0));
        let rs = Frame6::new(link_local, "ff02::2".parse().unwrap(), echo(133, 0));
        for frame in [&ns, &rs] {
            assert_eq!(lab.send6_from_vpc(frame), (TC_ACT_OK, frame.bytes()));
            assert_eq!(lab.send6_from_outside(frame), (TC_ACT_OK, frame.bytes()));
        }
        assert_eq!(lab.counter("translated_out"), 0);
        // Martians: loopback and IPv4-mapped addresses never cross.
        let loopback = Frame6::new(CLIENT6, Ipv6Addr::LOCALHOST, udp(1, 2, false));
        let mapped = Frame6::new(
            CLIENT6,
            "::ffff:198.51.100.7".parse().unwrap(),
            udp(1, 2, false),
        );
        assert_eq!(lab.send6_from_vpc(&loopback).0, TC_ACT_SHOT);
        assert_eq!(lab.send6_from_vpc(&mapped).0, TC_ACT_SHOT);
        assert_eq!(lab.counter("dropped_martian"), 2);
    });
}

/// Bytes of the offender the gateway quotes after its IPv6 header.
const QUOTE_L4: usize = 20;
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1);

/// `ip ARGS` in the program lab's namespace (the calling thread's).
fn ip(args: &[&str]) {
    veg_testbed::netns::ip(args);
}

/// A 1,448-byte UDP datagram from CLIENT6: too big for a 1280-byte link.
fn big_udp(sport: u16) -> Frame6 {
    let l4 = L4::Udp {
        sport,
        dport: 443,
        payload: vec![7; 1400],
        no_checksum: false,
    };
    Frame6::new(CLIENT6, SERVER6, l4)
}

#[test]
fn too_big_is_answered_with_packet_too_big_and_the_mtu() {
    with_program_lab(|lab| {
        ip(&["link", "set", "vex", "mtu", "1280"]);
        let big = big_udp(6006);
        let (verdict, out) = lab.send6_from_vpc(&big);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let expected = icmp6_error_frame(
            &big.bytes(),
            CLIENT_MAC,
            VIN_MAC,
            INSTANCE6,
            (2, 0, [0, 0, 0x05, 0x00]),
            QUOTE_L4,
        );
        assert_eq!(out, expected);
        assert_eq!(lab.counter("too_big"), 1);
        assert_eq!(lab.counter("flows_created"), 0);
        // A packet with extension headers is not answered: its quote would lack them.
        let mut with_options = big_udp(6007);
        with_options.extension = vec![(IPPROTO_DSTOPTS, empty_options_header())];
        assert_eq!(lab.send6_from_vpc(&with_options).0, TC_ACT_SHOT);
        assert_eq!(lab.counter("icmp_errors_not_sent"), 1);
    });
}

#[test]
fn expiring_hop_limit_is_answered_with_time_exceeded() {
    with_program_lab(|lab| {
        for l4 in [
            udp(6003, 33434, false),
            tcp(6004, 80, TCP_SYN),
            echo(128, 77),
        ] {
            let mut probe = Frame6::new(CLIENT6, SERVER6, l4);
            probe.hop_limit = 1;
            let (verdict, out) = lab.send6_from_vpc(&probe);
            assert_eq!(verdict, TC_ACT_REDIRECT);
            let expected = icmp6_error_frame(
                &probe.bytes(),
                CLIENT_MAC,
                VIN_MAC,
                INSTANCE6,
                (3, 0, [0; 4]),
                QUOTE_L4,
            );
            assert_eq!(out, expected, "{:?}", probe.l4);
        }
        assert_eq!(lab.counter("ttl_expired"), 3);
        assert_eq!(lab.counter("flows_created"), 0);
        // A reply whose hop limit expires: answered from the external address, quoting it as the remote sent it.
        lab.send6_from_vpc(&Frame6::new(CLIENT6, SERVER6, tcp(6005, 80, TCP_SYN)));
        let mut reply = Frame6::new(SERVER6, EXTERNAL6, tcp(80, 6005, TCP_SYN | TCP_ACK));
        reply.hop_limit = 1;
        reply.src_mac = NEXTHOP_MAC;
        let (verdict, out) = lab.send6_from_outside(&reply);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let expected = icmp6_error_frame(
            &reply.bytes(),
            NEXTHOP_MAC,
            VEX_MAC,
            EXTERNAL6,
            (3, 0, [0; 4]),
            QUOTE_L4,
        );
        assert_eq!(out, expected);
        assert_eq!(lab.counter("translated_in"), 0);
    });
}

#[test]
fn packet_too_big_from_a_router_outside_reaches_the_client_translated() {
    with_program_lab(|lab| {
        let sent = Frame6::new(CLIENT6, SERVER6, tcp(5005, 443, TCP_ACK));
        let (_, translated) = lab.send6_from_vpc(&sent);
        let port = source_port(&translated);
        // A router past the gateway sends Packet Too Big to the external address, quoting the whole segment.
        let segment_len = translated.len() - 54;
        let router_error = icmp6_error_frame(
            &translated,
            VEX_MAC,
            NEXTHOP_MAC,
            ROUTER6,
            (2, 0, [0, 0, 0x05, 0x00]),
            segment_len,
        );
        let (verdict, out) = lab.send6_from_outside_bytes(&router_error);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        // The client gets it quoting what it sent (hop limit as the router saw it), one hop later.
        let mut quoted = sent.clone();
        quoted.hop_limit -= 1;
        let mut expected = icmp6_error_frame(
            &quoted.bytes(),
            CLIENT_MAC,
            VIN_MAC,
            ROUTER6,
            (2, 0, [0, 0, 0x05, 0x00]),
            segment_len,
        );
        expected[21] -= 1;
        assert_eq!(out, expected, "translated port was {port}");
        assert_eq!(lab.counter("icmp_errors_translated_in"), 1);
        // About no flow: dropped; about the instance's own traffic (outside the range): the instance's.
        let mut stale = translated.clone();
        stale[54..56].copy_from_slice(&3000u16.to_be_bytes());
        let stale = icmp6_error_frame(&stale, VEX_MAC, NEXTHOP_MAC, ROUTER6, (1, 4, [0; 4]), 20);
        assert_eq!(lab.send6_from_outside_bytes(&stale).0, TC_ACT_SHOT);
        assert_eq!(lab.counter("dropped_icmp_error_no_flow"), 1);
        let mut own = translated.clone();
        own[54..56].copy_from_slice(&40000u16.to_be_bytes());
        let own = icmp6_error_frame(&own, VEX_MAC, NEXTHOP_MAC, ROUTER6, (1, 4, [0; 4]), 20);
        assert_eq!(lab.send6_from_outside_bytes(&own), (TC_ACT_OK, own.clone()));
    });
}

#[test]
fn a_pods_error_about_a_reply_reaches_the_remote_translated() {
    with_program_lab(|lab| {
        let request = Frame6::new(CLIENT6, SERVER6, udp(5006, 53, false));
        let (_, out) = lab.send6_from_vpc(&request);
        let port = source_port(&out);
        let reply = Frame6::new(SERVER6, EXTERNAL6, udp(53, port, false));
        let (_, delivered) = lab.send6_from_outside(&reply);
        // The pod answers the reply with port unreachable, quoting it as it got it.
        let pod_error = icmp6_error_frame(
            &delivered,
            VIN_MAC,
            CLIENT_MAC,
            CLIENT6,
            (1, 4, [0; 4]),
            QUOTE_L4,
        );
        let (verdict, out) = lab.run(super::PROGRAM_FROM_VPC, &pod_error);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        // The remote gets it from the external address, quoting its reply as translated for it.
        let mut quoted = reply.clone();
        quoted.hop_limit -= 1;
        let mut expected = icmp6_error_frame(
            &quoted.bytes(),
            NEXTHOP_MAC,
            VEX_MAC,
            EXTERNAL6,
            (1, 4, [0; 4]),
            QUOTE_L4,
        );
        expected[21] -= 1;
        assert_eq!(out, expected);
        assert_eq!(lab.counter("icmp_errors_translated_out"), 1);
    });
}

/// A UDP datagram of 3,000 bytes: three fragments of at most 1,232 bytes of it.
fn big_datagram(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Frame6 {
    let l4 = L4::Udp {
        sport,
        dport,
        payload: (0..3000).map(|i| (i % 251) as u8).collect(),
        no_checksum: false,
    };
    Frame6::new(src, dst, l4)
}

/// `frame` one hop later out of `(src_mac, dst_mac)`: hop limit decremented (byte 21), no checksum involved.
fn one_hop_later(mut frame: Vec<u8>, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Vec<u8> {
    frame[0..6].copy_from_slice(&dst_mac);
    frame[6..12].copy_from_slice(&src_mac);
    frame[21] -= 1;
    frame
}

#[test]
fn fragments_follow_their_first_fragments_translation_both_ways() {
    with_program_lab(|lab| {
        let datagram = big_datagram(CLIENT6, SERVER6, 5100, 53);
        let sent = datagram.fragments(0x1234_5678, 1232);
        assert_eq!(sent.len(), 3);
        // Out: the first fragment carries the ports and is translated; the others get its address.
        let outs: Vec<(u32, Vec<u8>)> = sent
            .iter()
            .map(|f| lab.run(super::PROGRAM_FROM_VPC, f))
            .collect();
        assert!(
            outs.iter().all(|(verdict, _)| *verdict == TC_ACT_REDIRECT),
            "{:?}",
            outs.iter().map(|o| o.0).collect::<Vec<_>>()
        );
        let port = u16::from_be_bytes([outs[0].1[62], outs[0].1[63]]);
        let mut translated = datagram.clone();
        translated.src = EXTERNAL6;
        super::set_port(&mut translated.l4, true, port);
        for (out, expected) in outs.iter().zip(translated.fragments(0x1234_5678, 1232)) {
            assert_eq!(out.1, one_hop_later(expected, VEX_MAC, NEXTHOP_MAC));
        }
        assert_eq!(lab.counter("fragments_translated_out"), 2);
        // Back: the reply's fragments, first first, to the external address and port.
        let reply = big_datagram(SERVER6, EXTERNAL6, 53, port);
        let ins: Vec<(u32, Vec<u8>)> = reply
            .fragments(0x0abc_def0, 1232)
            .iter()
            .map(|f| lab.send6_from_outside_bytes(f))
            .collect();
        let mut back = reply.clone();
        back.dst = CLIENT6;
        super::set_port(&mut back.l4, false, 5100);
        for (inn, expected) in ins.iter().zip(back.fragments(0x0abc_def0, 1232)) {
            assert_eq!(inn.0, TC_ACT_REDIRECT);
            assert_eq!(inn.1, one_hop_later(expected, VIN_MAC, CLIENT_MAC));
        }
        assert_eq!(lab.counter("fragments_translated_in"), 2);
        // A later fragment whose first was not seen: never sent untranslated, but handed to the agent to hold
        // (from outside also left to the instance, as its own datagram might be).
        let orphan = big_datagram(CLIENT6, SERVER6, 5101, 53).fragments(0x99, 1232);
        assert_eq!(lab.run(super::PROGRAM_FROM_VPC, &orphan[1]).0, TC_ACT_SHOT);
        let reply_orphan = big_datagram(SERVER6, EXTERNAL6, 53, port).fragments(0x98, 1232);
        assert_eq!(
            lab.send6_from_outside_bytes(&reply_orphan[1]),
            (TC_ACT_OK, reply_orphan[1].clone())
        );
        assert_eq!(lab.counter("fragments_held"), 2);
        let held: Vec<(u8, Vec<u8>)> = lab
            .slow_path_records()
            .into_iter()
            .map(|r| (r.kind, r.data))
            .collect();
        assert_eq!(
            held,
            [
                (kind::HOLD_FROM_VPC, orphan[1][14..].to_vec()),
                (kind::HOLD_FROM_OUTSIDE, reply_orphan[1][14..].to_vec())
            ]
        );
    });
}
