//! NAT66: the programs on crafted IPv6 frames, compared byte for byte with what a router running ip6tables
//! MASQUERADE would send (checksums recomputed here from scratch, pseudo-header included).

use std::net::Ipv6Addr;

use veg_testbed::packet::{
    Frame6, IPPROTO_DSTOPTS, IPPROTO_HOPOPTS, L4, TCP_ACK, TCP_SYN, empty_options_header,
};

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
        self.run(super::PROGRAM_FROM_OUTSIDE, &frame.bytes())
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

#[test]
fn hop_limit_one_is_not_forwarded() {
    with_program_lab(|lab| {
        let mut last_hop = Frame6::new(CLIENT6, SERVER6, udp(4001, 53, false));
        last_hop.hop_limit = 1;
        assert_eq!(lab.send6_from_vpc(&last_hop).0, TC_ACT_SHOT);
        assert_eq!(lab.counter("ttl_expired"), 1);
        assert_eq!(lab.counter("flows_created"), 0);
    });
}
