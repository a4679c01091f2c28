//! The datapath programs run on crafted packets (BPF_PROG_TEST_RUN): for every protocol and direction the output
//! must be byte for byte the frame a netfilter router would send, with checksums recomputed here from scratch.
//!
//! The programs run in a namespace whose routes and static neighbours make every route lookup deterministic:
//!   vin 10.16.0.12/16 (internal), clients' MACs pinned; vex 172.17.0.11/16 (external), default via 172.17.0.1.
//!   IPv6 alike (ipv6.rs): vin fd00:10:16::12/48, vex fd00:172:17::11/64, default via fd00:172:17::1.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData, RingBuf};
use aya::programs::{TestRun, TestRunOptions};
use veg_common::{
    address::Address,
    config::GatewayConfig,
    flow::{
        DIRECTION_OUTBOUND, FlowCounts, FlowEntry, FlowKey, PROTO_UDP, UDP_TIMEOUT_NS, is_closed,
    },
    fragment::{DatagramKey, END_DESTINATION, END_SOURCE, kind},
    record::{FlowRecord, end_reason, event},
};
use veg_testbed::{
    netns::Netns,
    packet::{Frame, L4, TCP_ACK, TCP_RST, TCP_SYN, fragments, icmp_error_frame, l4_port},
    skip_unless_root, unique,
};
use veg_userspace::{
    datapath::{
        TableSizes,
        loader::{Datapath, PROGRAM_FROM_OUTSIDE, PROGRAM_FROM_VPC},
        log::DatapathLog,
        monotonic_now_ns, pins,
        policy::{Action, DesiredPolicy},
        slow_path::{self, held::datagram_key},
        stats::read_counters,
    },
    gateway::host::interface_index,
};

#[path = "datapath_program/ipv6.rs"]
mod ipv6;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const VIN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
const VEX_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];
const NEXTHOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x02];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];
const CLIENT2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x03];
const FORWARD_CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x04];

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 16, 0, 2);
const CLIENT2: Ipv4Addr = Ipv4Addr::new(10, 16, 0, 3);
const FORWARD_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 16, 1, 2);
const OUTSIDER: Ipv4Addr = Ipv4Addr::new(10, 16, 2, 2);
const INSTANCE: Ipv4Addr = Ipv4Addr::new(10, 16, 0, 12);
/// Another address of the instance's own, in no policy (as a service the instance runs would have).
const INSTANCE_OWN: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 11);
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const PORT_MIN: u16 = 1024;
const PORT_MAX: u16 = 32767;

struct ProgramLab {
    datapath: Datapath,
    /// The programs' hand-overs to the agent, read here instead.
    slow_path: RingBuf<MapData>,
    flow_records: RingBuf<MapData>,
    name: String,
    config: GatewayConfig,
}

/// A record the programs handed to the agent: its kind, the MTU it names, its data.
#[derive(Debug, PartialEq)]
struct SlowPathRecord {
    kind: u8,
    mtu: u16,
    data: Vec<u8>,
}

impl ProgramLab {
    /// The records handed to the agent since the last call, as the agent parses them.
    fn slow_path_records(&mut self) -> Vec<SlowPathRecord> {
        let mut records = Vec::new();
        while let Some(item) = self.slow_path.next() {
            let (header, data) = slow_path::parse(&item).expect("a whole record");
            records.push(SlowPathRecord {
                kind: header.kind,
                mtu: header.mtu,
                data: data.to_vec(),
            });
        }
        records
    }

    /// The translation records the programs sent since the last call.
    fn flow_records(&mut self) -> Vec<FlowRecord> {
        let mut records = Vec::new();
        while let Some(item) = self.flow_records.next() {
            assert_eq!(item.len(), std::mem::size_of::<FlowRecord>());
            records.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const FlowRecord) });
        }
        records
    }

    fn run(&self, program: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 256];
        let result = self
            .datapath
            .program(program)
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    fn send_from_vpc(&self, frame: &Frame) -> (u32, Vec<u8>) {
        self.run(PROGRAM_FROM_VPC, &frame.bytes())
    }

    fn send_from_vpc_bytes(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run(PROGRAM_FROM_VPC, frame)
    }

    fn send_from_outside(&self, frame: &Frame) -> (u32, Vec<u8>) {
        self.run(PROGRAM_FROM_OUTSIDE, &frame.bytes())
    }

    fn reconfigure(&mut self, change: impl FnOnce(&mut GatewayConfig)) {
        change(&mut self.config);
        self.datapath.configure(&self.config).unwrap();
    }

    /// The pinned flow table, writable, for ageing and evicting entries by hand.
    fn flow_map(&self) -> HashMap<MapData, FlowKey, FlowEntry> {
        let data = MapData::from_pin(pins::gateway_dir(&self.name).join(pins::FLOWS)).unwrap();
        HashMap::try_from(Map::HashMap(data)).unwrap()
    }

    /// The counts of the translation whose outbound key is `key`, if the counts table holds them.
    fn counts(&self, key: &FlowKey) -> Option<FlowCounts> {
        let data =
            MapData::from_pin(pins::gateway_dir(&self.name).join(pins::FLOW_COUNTS)).unwrap();
        let map: HashMap<MapData, FlowKey, FlowCounts> =
            HashMap::try_from(Map::HashMap(data)).unwrap();
        map.get(key, 0).ok()
    }

    /// Both entries of the flow from client:port (the only one from there in the test).
    fn pair(&self, client: Ipv4Addr, port: u16) -> [(FlowKey, FlowEntry); 2] {
        let map = self.flow_map();
        let forward = map
            .iter()
            .map(Result::unwrap)
            .find(|(k, e)| {
                e.direction == DIRECTION_OUTBOUND
                    && k.src_addr == Address::from_ip(client.into())
                    && k.src_port == port.to_be()
            })
            .expect("flow not in the table");
        let reverse_key = forward.0.partner(&forward.1);
        let reverse = map.get(&reverse_key, 0).expect("reverse entry missing");
        [forward, (reverse_key, reverse)]
    }

    fn set_last_seen(&self, key: &FlowKey, last_seen_ns: u64) {
        let mut map = self.flow_map();
        let entry = map.get(key, 0).unwrap();
        map.insert(
            key,
            FlowEntry {
                last_seen_ns,
                ..entry
            },
            0,
        )
        .unwrap();
    }

    fn counter(&self, label: &str) -> u64 {
        let counters = read_counters(&pins::gateway_dir(&self.name)).unwrap();
        counters
            .iter()
            .find(|(c, _)| c.label() == label)
            .map(|(_, v)| *v)
            .unwrap()
    }
}

impl Drop for ProgramLab {
    fn drop(&mut self) {
        let _ = pins::remove_gateway_pins(&self.name);
    }
}

/// Build the namespace, load the datapath, and run `test` on a thread inside the namespace (route lookups use
/// the calling thread's namespace).
fn with_program_lab(test: impl FnOnce(&mut ProgramLab) + Send + 'static) {
    with_program_lab_sized(65536, test)
}

/// `with_program_lab` with a flow table of `entries` entries (two per translation).
fn with_program_lab_sized(entries: u32, test: impl FnOnce(&mut ProgramLab) + Send + 'static) {
    if skip_unless_root() {
        return;
    }
    let ns = Netns::new(&unique("vegprog"));
    for (dev, peer, mac, addr) in [
        ("vin", "vinp", VIN_MAC, "10.16.0.12/16"),
        ("vex", "vexp", VEX_MAC, "172.17.0.11/16"),
    ] {
        ns.ip(&["link", "add", dev, "type", "veth", "peer", "name", peer]);
        ns.ip(&["link", "set", dev, "address", &mac_text(mac)]);
        ns.ip(&["addr", "add", addr, "dev", dev]);
        ns.ip(&["link", "set", dev, "up"]);
        ns.ip(&["link", "set", peer, "up"]);
    }
    ns.ip(&["route", "add", "default", "via", "172.17.0.1", "dev", "vex"]);
    for (dev, addr) in [("vin", "fd00:10:16::12/48"), ("vex", "fd00:172:17::11/64")] {
        ns.ip(&["-6", "addr", "add", addr, "dev", dev, "nodad"]);
    }
    ns.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        "fd00:172:17::1",
        "dev",
        "vex",
    ]);
    ns.ip(&["addr", "add", "192.0.2.1/32", "dev", "lo"]);
    for (ip, mac, dev) in [
        ("172.17.0.1", NEXTHOP_MAC, "vex"),
        ("10.16.0.2", CLIENT_MAC, "vin"),
        ("10.16.0.3", CLIENT2_MAC, "vin"),
        ("10.16.1.2", FORWARD_CLIENT_MAC, "vin"),
        ("fd00:172:17::1", NEXTHOP_MAC, "vex"),
        ("fd00:10:16::2", CLIENT_MAC, "vin"),
        ("fd00:10:16::3", CLIENT2_MAC, "vin"),
        ("fd00:10:16:1::2", FORWARD_CLIENT_MAC, "vin"),
    ] {
        ns.ip(&[
            "neigh",
            "replace",
            ip,
            "lladdr",
            &mac_text(mac),
            "dev",
            dev,
            "nud",
            "permanent",
        ]);
    }
    // As the agent leaves an instance: the kernel forwards on neither interface; the programs' route lookups use
    // the loopback interface's setting.
    ns.sysctl("net.ipv4.conf.lo.forwarding", "1");
    ns.sysctl("net.ipv6.conf.all.forwarding", "0");
    ns.sysctl("net.ipv6.conf.lo.forwarding", "1");
    let name = unique("vegprog");
    ns.run(move || {
        // The bench times the programs with their log lines off and on (xtask's program.rs).
        let log: DatapathLog = std::env::var("VEG_DATAPATH_LOG")
            .map(|level| level.parse().expect("VEG_DATAPATH_LOG"))
            .unwrap_or_default();
        // Sized for records' counts: tests turn records on.
        let sizes = TableSizes::new(entries, true);
        let mut datapath = Datapath::load_logging(&pins::gateway_dir(&name), sizes, log)
            .expect("loading the datapath");
        let lab_name = name.clone();
        let policy: DesiredPolicy = [
            ("10.16.0.0/24".parse().unwrap(), Action::Snat),
            ("10.16.1.0/24".parse().unwrap(), Action::Forward),
            ("fd00:10:16::/64".parse().unwrap(), Action::Snat),
            ("fd00:10:16:1::/64".parse().unwrap(), Action::Forward),
        ]
        .into();
        datapath.policy().unwrap().sync(&policy).unwrap();
        let config = GatewayConfig {
            external_addr_v4: Address::from_ip(EXTERNAL.into()),
            internal_addr_v4: Address::from_ip(INSTANCE.into()),
            internal_ifindex: interface_index("vin", "internal").unwrap(),
            external_ifindex: interface_index("vex", "external").unwrap(),
            port_min: PORT_MIN,
            port_max: PORT_MAX,
            ready: 1,
            flow_records: 0,
            external_addr_v6: Address::from_ip(ipv6::EXTERNAL6.into()),
            internal_addr_v6: Address::from_ip(ipv6::INSTANCE6.into()),
            ..GatewayConfig::default()
        };
        datapath.configure(&config).unwrap();
        let slow_path = datapath.take_slow_path_ring().unwrap();
        let flow_records = datapath.take_flow_records_ring().unwrap();
        let mut lab = ProgramLab {
            datapath,
            slow_path,
            flow_records,
            name: lab_name,
            config,
        };
        test(&mut lab);
    });
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The frame a router sends after SNAT: new source, TTL - 1, MACs of the external hop.
fn snat_expected(sent: &Frame, translated_port: u16) -> Vec<u8> {
    let mut out = sent.clone();
    out.src = EXTERNAL;
    out.ttl -= 1;
    out.src_mac = VEX_MAC;
    out.dst_mac = NEXTHOP_MAC;
    set_port(&mut out.l4, true, translated_port);
    out.bytes()
}

/// The frame a router sends after translating a reply back to `client`.
fn reverse_expected(
    reply: &Frame,
    client: Ipv4Addr,
    client_mac: [u8; 6],
    client_port: u16,
) -> Vec<u8> {
    let mut out = reply.clone();
    out.dst = client;
    out.ttl -= 1;
    out.src_mac = VIN_MAC;
    out.dst_mac = client_mac;
    set_port(&mut out.l4, false, client_port);
    out.bytes()
}

fn set_port(l4: &mut L4, source: bool, port: u16) {
    match l4 {
        L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport, .. } => {
            *(if source { sport } else { dport }) = port
        }
        L4::IcmpEcho { id, .. } => *id = port,
    }
}

fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
    L4::Tcp {
        sport,
        dport,
        seq: 0x01020304,
        ack: 0,
        flags,
        payload: b"GET / HTTP/1.0\r\n\r\n".to_vec(),
    }
}

/// A TCP segment with chosen numbers and no payload.
fn tcp_numbered(sport: u16, dport: u16, flags: u8, seq: u32, ack: u32) -> L4 {
    L4::Tcp {
        sport,
        dport,
        seq,
        ack,
        flags,
        payload: Vec::new(),
    }
}

fn udp(sport: u16, dport: u16, no_checksum: bool) -> L4 {
    // An odd length exercises the checksum's padding byte.
    L4::Udp {
        sport,
        dport,
        payload: b"odd-length payload".to_vec(),
        no_checksum,
    }
}

#[test]
fn tcp_is_translated_out_and_back_exactly() {
    with_program_lab(|lab| {
        let syn = Frame::new(CLIENT, SERVER, tcp(5000, 80, TCP_SYN));
        let (verdict, out) = lab.send_from_vpc(&syn);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        // 5000 is free and inside the range: kept.
        assert_eq!(out, snat_expected(&syn, 5000));

        let syn_ack = Frame::new(SERVER, EXTERNAL, tcp(80, 5000, TCP_SYN | TCP_ACK));
        let (verdict, back) = lab.send_from_outside(&syn_ack);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(back, reverse_expected(&syn_ack, CLIENT, CLIENT_MAC, 5000));
        assert_eq!(lab.counter("translated_out"), 1);
        assert_eq!(lab.counter("translated_in"), 1);
        assert_eq!(lab.counter("flows_created"), 1);
    });
}

#[test]
fn udp_is_translated_out_and_back_exactly() {
    with_program_lab(|lab| {
        let request = Frame::new(CLIENT, SERVER, udp(5353, 53, false));
        let (verdict, out) = lab.send_from_vpc(&request);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out, snat_expected(&request, 5353));
        let reply = Frame::new(SERVER, EXTERNAL, udp(53, 5353, false));
        let (verdict, back) = lab.send_from_outside(&reply);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(back, reverse_expected(&reply, CLIENT, CLIENT_MAC, 5353));
    });
}

#[test]
fn udp_without_checksum_stays_without() {
    with_program_lab(|lab| {
        let request = Frame::new(CLIENT, SERVER, udp(6000, 9000, true));
        let (verdict, out) = lab.send_from_vpc(&request);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let expected = snat_expected(&request, 6000);
        assert_eq!(out, expected);
        assert_eq!(&out[40..42], &[0, 0], "UDP checksum must stay zero");
        let reply = Frame::new(SERVER, EXTERNAL, udp(9000, 6000, true));
        let (_, back) = lab.send_from_outside(&reply);
        assert_eq!(back, reverse_expected(&reply, CLIENT, CLIENT_MAC, 6000));
    });
}

#[test]
fn icmp_echo_is_translated_by_identifier() {
    with_program_lab(|lab| {
        let echo = L4::IcmpEcho {
            kind: 8,
            id: 0x1234,
            seq: 1,
            payload: vec![0xab; 56],
        };
        let request = Frame::new(CLIENT, SERVER, echo);
        let (verdict, out) = lab.send_from_vpc(&request);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out, snat_expected(&request, 0x1234));
        let reply = Frame::new(
            SERVER,
            EXTERNAL,
            L4::IcmpEcho {
                kind: 0,
                id: 0x1234,
                seq: 1,
                payload: vec![0xab; 56],
            },
        );
        let (verdict, back) = lab.send_from_outside(&reply);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(back, reverse_expected(&reply, CLIENT, CLIENT_MAC, 0x1234));
    });
}

#[test]
fn same_source_port_from_two_clients_gets_two_ports() {
    with_program_lab(|lab| {
        let first = Frame::new(CLIENT, SERVER, udp(7000, 53, false));
        let second = Frame::new(CLIENT2, SERVER, udp(7000, 53, false));
        let (_, out1) = lab.send_from_vpc(&first);
        let (verdict, out2) = lab.send_from_vpc(&second);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let port2 = l4_port(&out2, true);
        assert_eq!(l4_port(&out1, true), 7000);
        assert_ne!(port2, 7000, "the second client must get another port");
        assert!(
            (PORT_MIN..=PORT_MAX).contains(&port2),
            "port {port2} outside the range"
        );
        assert_eq!(out2, snat_expected(&second, port2));
        // Each reply goes to its own client.
        let reply2 = Frame::new(SERVER, EXTERNAL, udp(53, port2, false));
        assert_eq!(
            lab.send_from_outside(&reply2).1,
            reverse_expected(&reply2, CLIENT2, CLIENT2_MAC, 7000)
        );
        // A source port outside the range is never kept.
        let high = Frame::new(CLIENT, SERVER, udp(40000, 53, false));
        let port = l4_port(&lab.send_from_vpc(&high).1, true);
        assert!((PORT_MIN..=PORT_MAX).contains(&port));
    });
}

#[test]
fn ipv4_options_are_kept() {
    with_program_lab(|lab| {
        let mut request = Frame::new(CLIENT, SERVER, tcp(5001, 443, TCP_SYN));
        request.options = vec![0x01, 0x01, 0x01, 0x00]; // NOP NOP NOP EOL
        let (verdict, out) = lab.send_from_vpc(&request);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out, snat_expected(&request, 5001));
    });
}

#[test]
fn forward_sources_are_routed_unchanged() {
    with_program_lab(|lab| {
        let request = Frame::new(FORWARD_CLIENT, SERVER, tcp(5002, 80, TCP_SYN));
        let (verdict, out) = lab.send_from_vpc(&request);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let mut expected = request.clone();
        expected.ttl -= 1;
        expected.src_mac = VEX_MAC;
        expected.dst_mac = NEXTHOP_MAC;
        assert_eq!(out, expected.bytes());
        let reply = Frame::new(SERVER, FORWARD_CLIENT, tcp(80, 5002, TCP_SYN | TCP_ACK));
        let (verdict, back) = lab.send_from_outside(&reply);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(
            back,
            reverse_expected(&reply, FORWARD_CLIENT, FORWARD_CLIENT_MAC, 5002)
        );
        assert_eq!(lab.counter("forwarded_out"), 1);
        assert_eq!(lab.counter("forwarded_in"), 1);
    });
}

#[test]
fn sources_outside_every_policy_are_dropped_and_counted() {
    with_program_lab(|lab| {
        let (verdict, _) = lab.send_from_vpc(&Frame::new(OUTSIDER, SERVER, tcp(5003, 80, TCP_SYN)));
        assert_eq!(verdict, TC_ACT_SHOT);
        assert_eq!(lab.counter("dropped_no_policy"), 1);
        // ...but traffic to the instance itself (BFD, health checks) is not ours to judge.
        let bfd = Frame::new(OUTSIDER, INSTANCE, udp(49152, 3784, false));
        assert_eq!(lab.send_from_vpc(&bfd).0, TC_ACT_OK);
    });
}

#[test]
fn unsolicited_packets_from_outside_are_dropped() {
    with_program_lab(|lab| {
        for l4 in [tcp(80, 6000, TCP_SYN), udp(53, 6001, false)] {
            let (verdict, _) = lab.send_from_outside(&Frame::new(SERVER, EXTERNAL, l4));
            assert_eq!(verdict, TC_ACT_SHOT);
        }
        // Straight at a SNAT client's own address: never routed in.
        assert_eq!(
            lab.send_from_outside(&Frame::new(SERVER, CLIENT, tcp(80, 5004, TCP_SYN)))
                .0,
            TC_ACT_SHOT
        );
        assert_eq!(lab.counter("dropped_unsolicited"), 3);
        // Outside the NAT range it is for the instance's own sockets.
        assert_eq!(
            lab.send_from_outside(&Frame::new(SERVER, EXTERNAL, tcp(80, 40000, TCP_ACK)))
                .0,
            TC_ACT_OK
        );
        // A reply to a flow of another remote port does not match either.
        lab.send_from_vpc(&Frame::new(CLIENT, SERVER, udp(6002, 53, false)));
        assert_eq!(
            lab.send_from_outside(&Frame::new(SERVER, EXTERNAL, udp(54, 6002, false)))
                .0,
            TC_ACT_SHOT
        );
    });
}

#[test]
fn from_outside_only_policy_named_destinations_get_through() {
    with_program_lab(|lab| {
        // A host that routes the VPC via the external address: a pod no policy names is not reachable...
        let probe = |dst| Frame::new(SERVER, dst, tcp(80, 5010, TCP_SYN));
        assert_eq!(lab.send_from_outside(&probe(OUTSIDER)).0, TC_ACT_SHOT);
        assert_eq!(lab.counter("dropped_inbound_no_policy"), 1);
        // ...nor a SNAT source except through its translation...
        assert_eq!(lab.send_from_outside(&probe(CLIENT)).0, TC_ACT_SHOT);
        assert_eq!(lab.counter("dropped_unsolicited"), 1);
        // ...nor anything the kernel would route back out.
        let elsewhere = Ipv4Addr::new(203, 0, 113, 9);
        assert_eq!(lab.send_from_outside(&probe(elsewhere)).0, TC_ACT_SHOT);
        assert_eq!(lab.counter("dropped_inbound_no_policy"), 2);
        // A forward-policy pod is, and the instance's own addresses are the kernel's business.
        assert_eq!(
            lab.send_from_outside(&probe(FORWARD_CLIENT)).0,
            TC_ACT_REDIRECT
        );
        assert_eq!(lab.send_from_outside(&probe(INSTANCE_OWN)).0, TC_ACT_OK);
        assert_eq!(lab.counter("forwarded_in"), 1);
        assert_eq!(lab.counter("dropped_inbound_no_policy"), 2);
    });
}

#[test]
fn martian_addresses_are_dropped_on_both_sides() {
    with_program_lab(|lab| {
        let from_vpc = [
            Frame::new(Ipv4Addr::new(127, 0, 0, 1), SERVER, udp(6010, 53, false)),
            Frame::new(Ipv4Addr::new(0, 0, 0, 0), SERVER, udp(68, 67, false)),
            Frame::new(CLIENT, Ipv4Addr::new(0, 1, 2, 3), udp(6011, 53, false)),
            Frame::new(CLIENT, Ipv4Addr::new(127, 0, 0, 53), udp(6012, 53, false)),
            Frame::new(CLIENT, Ipv4Addr::new(240, 0, 0, 1), udp(6013, 53, false)),
        ];
        for frame in &from_vpc {
            assert_eq!(lab.send_from_vpc(frame).0, TC_ACT_SHOT, "{frame:?}");
        }
        let from_outside = [
            Frame::new(Ipv4Addr::new(224, 0, 0, 1), EXTERNAL, udp(53, 2000, false)),
            Frame::new(Ipv4Addr::new(127, 0, 0, 1), EXTERNAL, udp(53, 2000, false)),
            Frame::new(SERVER, Ipv4Addr::new(127, 0, 0, 1), udp(53, 2000, false)),
        ];
        for frame in &from_outside {
            assert_eq!(lab.send_from_outside(frame).0, TC_ACT_SHOT, "{frame:?}");
        }
        assert_eq!(
            lab.counter("dropped_martian"),
            (from_vpc.len() + from_outside.len()) as u64
        );
        assert_eq!(lab.counter("translated_out"), 0);
    });
}

#[test]
fn broadcast_and_multicast_from_the_vpc_are_never_translated() {
    with_program_lab(|lab| {
        for dst in [
            Ipv4Addr::new(224, 0, 0, 251),     // mDNS
            Ipv4Addr::new(239, 255, 255, 250), // SSDP
            Ipv4Addr::BROADCAST,
        ] {
            let frame = Frame::new(CLIENT, dst, udp(5353, 5353, false));
            assert_eq!(lab.send_from_vpc(&frame).0, TC_ACT_SHOT, "to {dst}");
        }
        assert_eq!(lab.counter("dropped_broadcast_multicast"), 3);
        assert_eq!(lab.counter("translated_out"), 0);
        assert_eq!(lab.counter("flows_created"), 0);
    });
}

/// Bytes of the offender the gateway quotes after its IP header.
const QUOTE_L4: usize = 20;

#[test]
fn expiring_ttl_is_answered_with_time_exceeded_from_the_vpc_address() {
    with_program_lab(|lab| {
        for l4 in [
            udp(6003, 33434, false),
            tcp(6004, 80, TCP_SYN),
            L4::IcmpEcho {
                kind: 8,
                id: 77,
                seq: 1,
                payload: vec![1; 3],
            },
        ] {
            let mut probe = Frame::new(CLIENT, SERVER, l4);
            probe.ttl = 1;
            let sent = probe.bytes();
            let (verdict, out) = lab.send_from_vpc(&probe);
            assert_eq!(verdict, TC_ACT_REDIRECT);
            let expected = icmp_error_frame(
                &sent,
                CLIENT_MAC,
                VIN_MAC,
                INSTANCE,
                (11, 0, [0; 4]),
                QUOTE_L4,
            );
            assert_eq!(out, expected, "{:?}", probe.l4);
        }
        assert_eq!(lab.counter("ttl_expired"), 3);
        assert_eq!(lab.counter("flows_created"), 0, "nothing was translated");
    });
}

#[test]
fn an_inbound_reply_whose_ttl_expires_gets_time_exceeded_not_a_reset() {
    with_program_lab(|lab| {
        lab.send_from_vpc(&Frame::new(CLIENT, SERVER, tcp(6005, 80, TCP_SYN)));
        let mut reply = Frame::new(SERVER, EXTERNAL, tcp(80, 6005, TCP_SYN | TCP_ACK));
        reply.ttl = 1;
        reply.src_mac = NEXTHOP_MAC;
        let arrived = reply.bytes();
        let (verdict, out) = lab.send_from_outside(&reply);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        // From the external address, quoting the reply as the remote sent it.
        let expected = icmp_error_frame(
            &arrived,
            NEXTHOP_MAC,
            VEX_MAC,
            EXTERNAL,
            (11, 0, [0; 4]),
            QUOTE_L4,
        );
        assert_eq!(out, expected);
        assert_eq!(lab.counter("ttl_expired"), 1);
        assert_eq!(lab.counter("translated_in"), 0);
    });
}

/// `ip ARGS` in the program lab's namespace (the calling thread's).
fn ip(args: &[&str]) {
    veg_testbed::netns::ip(args);
}

/// A 1,428-byte UDP packet with DF from CLIENT.
fn big_udp(sport: u16) -> Frame {
    let payload = vec![7; 1400];
    Frame::new(
        CLIENT,
        SERVER,
        L4::Udp {
            sport,
            dport: 443,
            payload,
            no_checksum: false,
        },
    )
}

/// The fragmentation needed the gateway sends CLIENT about `offender`, with `mtu`.
fn fragmentation_needed(offender: &Frame, mtu: u16) -> Vec<u8> {
    let [hi, lo] = mtu.to_be_bytes();
    icmp_error_frame(
        &offender.bytes(),
        CLIENT_MAC,
        VIN_MAC,
        INSTANCE,
        (3, 4, [0, 0, hi, lo]),
        QUOTE_L4,
    )
}

#[test]
fn too_big_with_df_is_answered_with_fragmentation_needed_and_the_mtu() {
    with_program_lab(|lab| {
        ip(&["link", "set", "vex", "mtu", "1280"]);
        let big = big_udp(6006);
        let (verdict, out) = lab.send_from_vpc(&big);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out, fragmentation_needed(&big, 1280));
        assert_eq!(lab.counter("too_big"), 1);
        assert!(lab.slow_path_records().is_empty());
        // Without DF: translated, then handed to the agent to fragment (none is sent on here).
        let mut no_df = big.clone();
        no_df.frag = 0;
        assert_eq!(lab.send_from_vpc(&no_df).0, TC_ACT_SHOT);
        assert_eq!(lab.counter("flows_created"), 1);
        assert_eq!(lab.counter("too_big_fragmented"), 1);
        let mut translated = no_df.clone();
        translated.src = EXTERNAL;
        let ready = one_hop_later(&translated.bytes(), NEXTHOP_MAC, VEX_MAC);
        assert_eq!(
            lab.slow_path_records(),
            [SlowPathRecord {
                kind: kind::FRAGMENT,
                mtu: 1280,
                data: ready[14..].to_vec(),
            }]
        );
    });
}

/// The destination MAC of the frame an established flow's next packet leaves with.
fn next_hop_mac(lab: &ProgramLab, frame: &Frame) -> [u8; 6] {
    let (verdict, out) = lab.send_from_vpc(frame);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    out[..6].try_into().unwrap()
}

/// How long after a route or neighbour change the programs may still use what they cached before it. Well under
/// the cache's one-second age limit, so that only the agent's announcement of the change can meet it.
const NEXT_HOP_CHANGE_BOUND: Duration = Duration::from_millis(500);

/// Send `frame` again and again until it leaves for `mac`; how long that took from the change.
fn until_sent_to(lab: &ProgramLab, frame: &Frame, mac: [u8; 6], changed: Instant) -> Duration {
    while next_hop_mac(lab, frame) != mac {
        assert!(
            changed.elapsed() < NEXT_HOP_CHANGE_BOUND,
            "still sent to the old next hop {:?} after the change",
            changed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    changed.elapsed()
}

#[test]
fn an_established_flow_follows_a_new_neighbour_mac_and_a_new_route_at_once() {
    with_program_lab(|lab| {
        let frame = Frame::new(CLIENT, SERVER, udp(6100, 53, false));
        assert_eq!(next_hop_mac(lab, &frame), NEXTHOP_MAC);
        // The route is cached: the flow's next packets ask the kernel for none.
        let lookups = lab.counter("route_lookups");
        for _ in 0..10 {
            assert_eq!(next_hop_mac(lab, &frame), NEXTHOP_MAC);
        }
        assert_eq!(lab.counter("route_lookups"), lookups, "route not cached");
        // The next hop answers from a new MAC (a replaced router, a failed-over VRRP address).
        let moved = [0x02, 0, 0, 0, 0x02, 0x03];
        ip(&[
            "neigh",
            "replace",
            "172.17.0.1",
            "lladdr",
            &mac_text(moved),
            "dev",
            "vex",
        ]);
        let took = until_sent_to(lab, &frame, moved, Instant::now());
        eprintln!("new neighbour MAC used {took:?} after the change");
        // Another next hop altogether.
        let other = [0x02, 0, 0, 0, 0x02, 0x04];
        ip(&[
            "neigh",
            "replace",
            "172.17.0.2",
            "lladdr",
            &mac_text(other),
            "dev",
            "vex",
        ]);
        assert_eq!(next_hop_mac(lab, &frame), moved);
        ip(&[
            "route",
            "replace",
            "default",
            "via",
            "172.17.0.2",
            "dev",
            "vex",
        ]);
        let took = until_sent_to(lab, &frame, other, Instant::now());
        eprintln!("new route used {took:?} after the change");
    });
}

#[test]
fn the_routes_mtu_counts_not_only_the_devices() {
    with_program_lab(|lab| {
        // The device carries 1500 bytes; the route out of it, 1280.
        ip(&[
            "route",
            "replace",
            "default",
            "via",
            "172.17.0.1",
            "dev",
            "vex",
            "mtu",
            "lock",
            "1280",
        ]);
        let big = big_udp(6009);
        let (verdict, out) = lab.send_from_vpc(&big);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out, fragmentation_needed(&big, 1280));
    });
}

#[test]
fn icmp_errors_are_never_sent_about_icmp_errors_and_are_rate_limited() {
    with_program_lab(|lab| {
        // An ICMP error (here: a port unreachable) whose TTL expires is dropped, not answered.
        let mut error = Frame::new(CLIENT, SERVER, udp(6007, 53, false)).bytes();
        error[23] = 1; // protocol ICMP; the first L4 byte is the type
        error[34] = 3;
        let ttl_at = 22;
        error[ttl_at] = 1;
        let csum = veg_testbed::packet::checksum(
            &{
                let mut h = error[14..34].to_vec();
                h[10] = 0;
                h[11] = 0;
                h
            },
            0,
        );
        error[24..26].copy_from_slice(&csum.to_be_bytes());
        assert_eq!(lab.run(PROGRAM_FROM_VPC, &error).0, TC_ACT_SHOT);
        assert_eq!(lab.counter("icmp_errors_not_sent"), 1);
        // A flood of expiring packets gets at most the burst at once.
        let mut probe = Frame::new(CLIENT, SERVER, udp(6008, 33434, false));
        probe.ttl = 1;
        let answered = (0..200)
            .filter(|_| lab.send_from_vpc(&probe).0 == TC_ACT_REDIRECT)
            .count();
        assert!(
            (50..100).contains(&answered),
            "{answered} of 200 answered at once"
        );
        assert_eq!(
            lab.counter("icmp_errors_rate_limited"),
            200 - answered as u64
        );
    });
}

#[test]
fn malformed_and_truncated_packets_are_dropped() {
    with_program_lab(|lab| {
        let good = Frame::new(CLIENT, SERVER, tcp(5005, 80, TCP_SYN)).bytes();
        let mut cases: Vec<Vec<u8>> = Vec::new();
        // Cut inside the TCP header.
        cases.push(good[..14 + 20 + 10].to_vec());
        // IHL below 5.
        let mut bad_ihl = good.clone();
        bad_ihl[14] = 0x44;
        cases.push(bad_ihl);
        // Total length larger than what arrived.
        let mut long = good.clone();
        long[16..18].copy_from_slice(&2000u16.to_be_bytes());
        cases.push(long);
        // TCP data offset below 5.
        let mut bad_doff = good.clone();
        bad_doff[14 + 20 + 12] = 0x40;
        cases.push(bad_doff);
        // UDP length beyond the packet.
        let mut udp_long = Frame::new(CLIENT, SERVER, udp(5006, 53, false)).bytes();
        udp_long[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&500u16.to_be_bytes());
        cases.push(udp_long);
        for (i, case) in cases.iter().enumerate() {
            let (verdict, _) = lab.run(PROGRAM_FROM_VPC, case);
            assert_eq!(verdict, TC_ACT_SHOT, "case {i} was not dropped");
        }
        assert_eq!(lab.counter("dropped_malformed"), cases.len() as u64);
        assert_eq!(lab.counter("translated_out"), 0);
    });
}

/// The first fragment of a UDP datagram of `payload` bytes, of which it carries `carried`: its UDP length covers
/// the whole datagram (the checksum too, left as a real sender's would be: not checked on the way).
fn first_fragment(src: Ipv4Addr, sport: u16, payload: usize, carried: usize) -> Vec<u8> {
    let mut first = Frame::new(
        src,
        SERVER,
        L4::Udp {
            sport,
            dport: 53,
            payload: vec![3; carried],
            no_checksum: false,
        },
    );
    first.frag = 0x2000; // more fragments
    let mut bytes = first.bytes();
    bytes[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    bytes
}

#[test]
fn fragments_of_forward_sources_pass_unchanged() {
    with_program_lab(|lab| {
        // A first fragment is routed unchanged: its UDP length, longer than it, is no sign of a malformed packet.
        let fragment = first_fragment(FORWARD_CLIENT, 6010, 4000, 1472);
        let (verdict, out) = lab.send_from_vpc_bytes(&fragment);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out, one_hop_later(&fragment, NEXTHOP_MAC, VEX_MAC));
        assert_eq!(lab.counter("forwarded_out"), 1);
        assert_eq!(lab.counter("dropped_malformed"), 0);
    });
}

/// A 3,000-byte UDP datagram between `src` and `dst`, whole (fragment it with `fragments`).
fn big_datagram(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Frame {
    let payload = (0..3000).map(|i| (i % 241) as u8).collect();
    Frame::udp((src, sport), (dst, dport), payload)
}

#[test]
fn a_snat_sources_fragments_and_their_replies_are_translated_in_order() {
    with_program_lab(|lab| {
        // Out: every fragment leaves with the external address, the first with the port too; the checksum, in
        // the first, is the translated datagram's.
        let sent = big_datagram(CLIENT, SERVER, 7400, 53);
        let mut translated = sent.clone();
        translated.src = EXTERNAL;
        for (i, (fragment, expected)) in fragments(&sent.bytes(), 1480)
            .iter()
            .zip(fragments(&translated.bytes(), 1480))
            .enumerate()
        {
            let (verdict, out) = lab.send_from_vpc_bytes(fragment);
            assert_eq!(verdict, TC_ACT_REDIRECT, "fragment {i}");
            assert_eq!(
                out,
                one_hop_later(&expected, NEXTHOP_MAC, VEX_MAC),
                "fragment {i}"
            );
        }
        assert_eq!(lab.counter("fragments_translated_out"), 2);
        // Back: the reply's fragments all reach the client.
        let reply = big_datagram(SERVER, EXTERNAL, 53, 7400);
        let mut back = reply.clone();
        back.dst = CLIENT;
        for (i, (fragment, expected)) in fragments(&reply.bytes(), 1480)
            .iter()
            .zip(fragments(&back.bytes(), 1480))
            .enumerate()
        {
            let (verdict, out) = lab.run(PROGRAM_FROM_OUTSIDE, fragment);
            assert_eq!(verdict, TC_ACT_REDIRECT, "reply fragment {i}");
            assert_eq!(
                out,
                one_hop_later(&expected, CLIENT_MAC, VIN_MAC),
                "reply fragment {i}"
            );
        }
        assert_eq!(lab.counter("fragments_translated_in"), 2);
        assert!(lab.slow_path_records().is_empty());
    });
}

#[test]
fn fragments_before_their_first_go_to_the_agent_which_hears_when_the_first_comes() {
    with_program_lab(|lab| {
        // From the VPC: a later fragment first is handed over as it came (never sent on untranslated); its first
        // fragment, translated as usual, tells the agent how.
        let mut sent = big_datagram(CLIENT, SERVER, 7401, 53);
        sent.id = 0x5555;
        let pieces = fragments(&sent.bytes(), 1480);
        assert_eq!(lab.send_from_vpc_bytes(&pieces[1]).0, TC_ACT_SHOT);
        assert_eq!(lab.counter("fragments_held"), 1);
        assert_eq!(
            lab.slow_path_records(),
            [SlowPathRecord {
                kind: kind::HOLD_FROM_VPC,
                mtu: 0,
                data: pieces[1][14..].to_vec(),
            }]
        );
        assert_eq!(lab.send_from_vpc_bytes(&pieces[0]).0, TC_ACT_REDIRECT);
        // The notice names the datagram as the agent keys its held fragments.
        let key = datagram_key(&pieces[1][14..]);
        first_arrived(&lab.slow_path_records(), key, EXTERNAL, END_SOURCE);
        // The last fragment, after its first, is translated here.
        assert_eq!(lab.send_from_vpc_bytes(&pieces[2]).0, TC_ACT_REDIRECT);
        assert!(lab.slow_path_records().is_empty());

        // From outside: a later fragment of a reply first goes to the instance's stack (it may be the instance's
        // own datagram) and a copy to the agent.
        let mut reply = big_datagram(SERVER, EXTERNAL, 53, 7401);
        reply.id = 0x6666;
        let pieces = fragments(&reply.bytes(), 1480);
        assert_eq!(lab.run(PROGRAM_FROM_OUTSIDE, &pieces[2]).0, TC_ACT_OK);
        assert_eq!(lab.counter("fragments_held"), 2);
        assert_eq!(
            lab.slow_path_records(),
            [SlowPathRecord {
                kind: kind::HOLD_FROM_OUTSIDE,
                mtu: 0,
                data: pieces[2][14..].to_vec(),
            }]
        );
        assert_eq!(lab.run(PROGRAM_FROM_OUTSIDE, &pieces[0]).0, TC_ACT_REDIRECT);
        let key = datagram_key(&pieces[2][14..]);
        first_arrived(&lab.slow_path_records(), key, CLIENT, END_DESTINATION);
        // A first fragment with nothing held tells the agent nothing.
        let mut quiet = big_datagram(CLIENT, SERVER, 7402, 53);
        quiet.id = 0x7777;
        assert_eq!(
            lab.send_from_vpc_bytes(&fragments(&quiet.bytes(), 1480)[0])
                .0,
            TC_ACT_REDIRECT
        );
        assert!(lab.slow_path_records().is_empty());
    });
}

#[test]
fn a_flood_of_early_fragments_is_bounded_by_the_ring_and_never_forwarded() {
    with_program_lab(|lab| {
        // Nobody reads the ring here, as with a stuck agent: it takes what fits (2 MiB, about 1,400 fragments of
        // 1,500 bytes, fewer when the per-CPU rate refuses first) and the rest is dropped and counted.
        const FLOOD: u64 = 5000;
        for id in 0..FLOOD {
            let mut sent = big_datagram(CLIENT, SERVER, 7500, 53);
            sent.id = id as u16 + 1;
            let pieces = fragments(&sent.bytes(), 1480);
            assert_eq!(lab.send_from_vpc_bytes(&pieces[1]).0, TC_ACT_SHOT);
        }
        let held = lab.counter("fragments_held");
        let refused = lab.counter("slow_path_dropped");
        assert_eq!(held + refused, FLOOD);
        assert!(held <= 1400, "{held} held: more than the ring holds");
        assert_eq!(lab.slow_path_records().len() as u64, held);
    });
}

/// The records are exactly one notice that the datagram `key`'s first fragment was translated to `addr` at `end`.
fn first_arrived(records: &[SlowPathRecord], key: DatagramKey, addr: Ipv4Addr, end: u8) {
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].kind, kind::FIRST_ARRIVED);
    let (got_key, translation) =
        slow_path::parse_first_arrived(&records[0].data).expect("a whole notice");
    assert_eq!(got_key, key);
    assert_eq!(translation.addr, u32::from_ne_bytes(addr.octets()));
    assert_eq!(translation.end, end);
}

#[test]
fn expired_flows_are_swept_and_live_ones_kept() {
    with_program_lab(|lab| {
        lab.send_from_vpc(&Frame::new(CLIENT, SERVER, udp(6100, 53, false)));
        lab.send_from_vpc(&Frame::new(CLIENT, SERVER, udp(6101, 53, false)));
        let stale = monotonic_now_ns() - UDP_TIMEOUT_NS - 1_000_000_000;
        for (key, _) in lab.pair(CLIENT, 6100) {
            lab.set_last_seen(&key, stale);
        }
        let swept = lab.datapath.flow_table().unwrap().sweep(false).unwrap();
        assert_eq!(swept.removed, 2, "both halves of the idle flow go");
        assert_eq!(swept.live, 1, "one translation stays");
        assert_eq!(lab.flow_map().keys().count(), 2, "the live flow stays");
        let reply = |port| Frame::new(SERVER, EXTERNAL, udp(53, port, false));
        assert_eq!(
            lab.send_from_outside(&reply(6100)).0,
            TC_ACT_SHOT,
            "a reply to a swept flow is unsolicited"
        );
        assert_eq!(lab.send_from_outside(&reply(6101)).0, TC_ACT_REDIRECT);
    });
}

#[test]
fn an_expired_mapping_is_replaced_on_lookup() {
    with_program_lab(|lab| {
        let request = Frame::new(CLIENT, SERVER, udp(6200, 53, false));
        lab.send_from_vpc(&request);
        let [(forward, _), (reverse, _)] = lab.pair(CLIENT, 6200);
        let stale = monotonic_now_ns() - UDP_TIMEOUT_NS - 1_000_000_000;
        lab.set_last_seen(&forward, stale);
        lab.set_last_seen(&reverse, stale);
        // Before any sweep: a reply to the expired mapping is refused, a new packet gets a fresh mapping.
        assert_eq!(
            lab.send_from_outside(&Frame::new(SERVER, EXTERNAL, udp(53, 6200, false)))
                .0,
            TC_ACT_SHOT
        );
        let (verdict, out) = lab.send_from_vpc(&request);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out, snat_expected(&request, 6200));
        assert_eq!(lab.counter("flows_expired_on_lookup"), 1);
        assert_eq!(lab.counter("flows_created"), 2);
    });
}

#[test]
fn a_pair_missing_its_reverse_half_is_repaired() {
    with_program_lab(|lab| {
        let request = Frame::new(CLIENT, SERVER, udp(6300, 53, false));
        lab.send_from_vpc(&request);
        let [(forward, _), (reverse, _)] = lab.pair(CLIENT, 6300);
        // As if the reverse entry had gone missing a while ago.
        lab.flow_map().remove(&reverse).unwrap();
        lab.set_last_seen(&forward, monotonic_now_ns() - 2_000_000_000);
        assert_eq!(lab.send_from_vpc(&request).1, snat_expected(&request, 6300));
        assert_eq!(lab.counter("flows_repaired"), 1);
        let reply = Frame::new(SERVER, EXTERNAL, udp(53, 6300, false));
        assert_eq!(
            lab.send_from_outside(&reply).1,
            reverse_expected(&reply, CLIENT, CLIENT_MAC, 6300)
        );
    });
}

#[test]
fn a_rst_from_outside_must_fit_the_flow_numbers() {
    with_program_lab(|lab| {
        // The server's numbers below the client's: nothing of one side may be taken for the other's.
        const CLIENT_ISN: u32 = 0x9000_0000;
        const SERVER_ISN: u32 = 0x1000_0000;
        let out =
            |flags, seq, ack| Frame::new(CLIENT, SERVER, tcp_numbered(6700, 80, flags, seq, ack));
        let back =
            |flags, seq, ack| Frame::new(SERVER, EXTERNAL, tcp_numbered(80, 6700, flags, seq, ack));
        // Before the remote has sent anything, a RST must acknowledge the client's SYN.
        lab.send_from_vpc(&out(TCP_SYN, CLIENT_ISN, 0));
        assert_eq!(
            lab.send_from_outside(&back(TCP_RST | TCP_ACK, 0, 77)).0,
            TC_ACT_SHOT
        );
        assert_eq!(lab.counter("dropped_rst_implausible"), 1);
        // The SYN-ACK and the handshake's ACK: the remote's numbers are known from here.
        let syn_ack = back(TCP_SYN | TCP_ACK, SERVER_ISN, CLIENT_ISN + 1);
        assert_eq!(lab.send_from_outside(&syn_ack).0, TC_ACT_REDIRECT);
        lab.send_from_vpc(&out(TCP_ACK, CLIENT_ISN + 1, SERVER_ISN + 1));
        // A spoofed RST far from the remote's numbers is dropped, and the flow goes on both ways.
        let spoofed = back(TCP_RST, SERVER_ISN.wrapping_add(0x4000_0000), 0);
        assert_eq!(lab.send_from_outside(&spoofed).0, TC_ACT_SHOT);
        assert_eq!(lab.counter("dropped_rst_implausible"), 2);
        let data = back(TCP_ACK, SERVER_ISN + 1, CLIENT_ISN + 1);
        assert_eq!(lab.send_from_outside(&data).0, TC_ACT_REDIRECT);
        assert_eq!(
            lab.send_from_vpc(&out(TCP_ACK, CLIENT_ISN + 1, SERVER_ISN + 1))
                .0,
            TC_ACT_REDIRECT
        );
        let [forward, _] = lab.pair(CLIENT, 6700);
        assert!(
            !is_closed(forward.1.state),
            "the spoofed RST closed the flow"
        );
        // The remote's own RST, at its next sequence number, is taken and closes the flow.
        let genuine = back(TCP_RST, SERVER_ISN + 1, 0);
        assert_eq!(lab.send_from_outside(&genuine).0, TC_ACT_REDIRECT);
        let [forward, _] = lab.pair(CLIENT, 6700);
        assert!(is_closed(forward.1.state));
    });
}

#[test]
fn a_pair_missing_its_forward_half_is_repaired_by_a_reply() {
    with_program_lab(|lab| {
        let request = Frame::new(CLIENT, SERVER, udp(6800, 53, false));
        let port = l4_port(&lab.send_from_vpc(&request).1, true);
        let [(forward, _), (reverse, _)] = lab.pair(CLIENT, 6800);
        // As if the forward entry had gone missing a while ago: a one-way stream from the remote repairs it.
        lab.flow_map().remove(&forward).unwrap();
        lab.set_last_seen(&reverse, monotonic_now_ns() - 2_000_000_000);
        let reply = Frame::new(SERVER, EXTERNAL, udp(53, port, false));
        assert_eq!(
            lab.send_from_outside(&reply).1,
            reverse_expected(&reply, CLIENT, CLIENT_MAC, 6800)
        );
        assert_eq!(lab.counter("flows_repaired"), 1);
        // The client's next packet finds its mapping again: the same port, no new flow.
        assert_eq!(lab.send_from_vpc(&request).1, snat_expected(&request, port));
        assert_eq!(lab.counter("flows_created"), 1);
    });
}

#[test]
fn a_half_whose_partner_belongs_to_another_flow_is_treated_as_gone() {
    with_program_lab(|lab| {
        let request = Frame::new(CLIENT, SERVER, udp(6900, 53, false));
        let port = l4_port(&lab.send_from_vpc(&request).1, true);
        let [(forward, _), (reverse, reverse_entry)] = lab.pair(CLIENT, 6900);
        // The reverse key now belongs to another client's flow (ours was evicted, the port taken again).
        let foreign = FlowEntry {
            nat_addr: Address::from_ip(CLIENT2.into()),
            nat_port: 7777u16.to_be(),
            ..reverse_entry
        };
        lab.flow_map().insert(reverse, foreign, 0).unwrap();
        lab.set_last_seen(&forward, monotonic_now_ns() - 2_000_000_000);
        // Our client gets a new mapping; the other flow's entry is left as it was.
        let (verdict, out) = lab.send_from_vpc(&request);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_ne!(
            l4_port(&out, true),
            port,
            "the port of another flow was reused"
        );
        assert_eq!(lab.flow_map().get(&reverse, 0).unwrap(), foreign);
        assert_eq!(lab.counter("flows_created"), 2);
    });
}

/// A new flow refused for want of a port or of room in the table: its client is told at once, with ICMP
/// administratively prohibited from the instance (RFC 5508 REQ-8).
fn assert_refused(lab: &ProgramLab, frame: &Frame) {
    let client_mac = if frame.src == CLIENT2 {
        CLIENT2_MAC
    } else {
        CLIENT_MAC
    };
    let (verdict, out) = lab.send_from_vpc(frame);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let prohibited = (3, 13, [0; 4]);
    let expected = icmp_error_frame(
        &frame.bytes(),
        client_mac,
        VIN_MAC,
        INSTANCE,
        prohibited,
        QUOTE_L4,
    );
    assert_eq!(
        out, expected,
        "not refused with administratively prohibited"
    );
}

/// Keep the calling thread on the CPU it runs on now.
fn stay_on_one_cpu() {
    // SAFETY: plain system calls on a zeroed cpu_set_t that this function owns.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(libc::sched_getcpu() as usize, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity"
        );
    }
}

/// Establish `count` UDP flows from CLIENT (a request and a reply each); returns their external ports.
fn establish(lab: &ProgramLab, count: u16) -> Vec<u16> {
    (0..count)
        .map(|i| {
            let out = lab.send_from_vpc(&Frame::new(CLIENT, SERVER, udp(20000 + i, 53, false)));
            let port = l4_port(&out.1, true);
            lab.send_from_outside(&Frame::new(SERVER, EXTERNAL, udp(53, port, false)));
            port
        })
        .collect()
}

/// How many of the flows `establish` made still translate their replies back.
fn still_established(lab: &ProgramLab, ports: &[u16]) -> usize {
    ports
        .iter()
        .enumerate()
        .filter(|(i, port)| {
            let reply = Frame::new(SERVER, EXTERNAL, udp(53, **port, false));
            lab.send_from_outside(&reply).1
                == reverse_expected(&reply, CLIENT, CLIENT_MAC, 20000 + *i as u16)
        })
        .count()
}

#[test]
fn a_full_table_gives_up_unanswered_flows_never_established_ones() {
    // Room for 4,000 translations; 1,500 established.
    with_program_lab_sized(8000, |lab| {
        // Every packet on one CPU, as from one queue: each CPU gives up only the flows it created itself (its
        // ring of new flows), and a test thread the scheduler moves midway would find the other CPU's ring empty.
        stay_on_one_cpu();
        let established = establish(lab, 1500);
        // Five times the table in new flows, one packet each, never answered: each finds room by giving up the
        // oldest unanswered one.
        let mut created = 0;
        for i in 0..20_000u32 {
            let (sport, dport) = (1024 + (i % 20_000) as u16, 1000 + (i % 50) as u16);
            let frame = Frame::new(CLIENT2, SERVER, udp(sport, dport, false));
            if lab.send_from_vpc(&frame).0 == TC_ACT_REDIRECT {
                created += 1;
            }
        }
        assert_eq!(created, 20_000, "new flows must find room");
        assert!(lab.counter("flows_given_up") >= 20_000 - 2_500);
        assert_eq!(
            still_established(lab, &established),
            established.len(),
            "established flows gave way to unanswered ones"
        );
    });
}

#[test]
fn a_table_full_of_established_flows_drops_new_ones() {
    // Room for 100 translations, all established.
    with_program_lab_sized(200, |lab| {
        let established = establish(lab, 100);
        let newcomer = Frame::new(CLIENT2, SERVER, udp(30000, 53, false));
        assert_refused(lab, &newcomer);
        assert_eq!(lab.counter("dropped_table_full"), 1);
        assert_eq!(lab.counter("flows_given_up"), 0);
        assert_eq!(still_established(lab, &established), 100);
    });
}

#[test]
fn a_new_external_address_gets_new_mappings() {
    with_program_lab(|lab| {
        let request = Frame::new(CLIENT, SERVER, tcp(6400, 80, TCP_ACK));
        lab.send_from_vpc(&request);
        let new_external = Ipv4Addr::new(172, 17, 0, 12);
        lab.reconfigure(|c| c.external_addr_v4 = Address::from_ip(new_external.into()));
        let (verdict, out) = lab.send_from_vpc(&request);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let mut expected = request.clone();
        (
            expected.src,
            expected.ttl,
            expected.src_mac,
            expected.dst_mac,
        ) = (new_external, 63, VEX_MAC, NEXTHOP_MAC);
        assert_eq!(out, expected.bytes());
        let reply = Frame::new(SERVER, new_external, tcp(80, 6400, TCP_ACK));
        assert_eq!(
            lab.send_from_outside(&reply).1,
            reverse_expected(&reply, CLIENT, CLIENT_MAC, 6400)
        );
    });
}

#[test]
fn a_small_port_range_is_filled_whole_before_giving_up() {
    with_program_lab(|lab| {
        const PORTS: u16 = 64;
        lab.reconfigure(|c| (c.port_min, c.port_max) = (2000, 2000 + PORTS - 1));
        // Client ports outside the range: every flow needs an allocated port toward the same remote endpoint,
        // and only the sequential run after the random tries is sure to find the last free ones.
        let mut ports = std::collections::HashSet::new();
        for i in 0..PORTS {
            let (verdict, out) =
                lab.send_from_vpc(&Frame::new(CLIENT, SERVER, udp(40000 + i, 53, false)));
            assert_eq!(verdict, TC_ACT_REDIRECT, "flow {i} found no port");
            ports.insert(l4_port(&out, true));
        }
        assert_eq!(ports.len(), PORTS as usize);
        assert!(ports.iter().all(|p| (2000..2000 + PORTS).contains(p)));
        assert_refused(
            lab,
            &Frame::new(CLIENT, SERVER, udp(40000 + PORTS, 53, false)),
        );
        assert_eq!(lab.counter("dropped_port_exhausted"), 1);
        assert_eq!(lab.counter("port_searches_failed"), 1);
        // Mappings are per remote endpoint: another server port still has the whole range.
        assert_eq!(
            lab.send_from_vpc(&Frame::new(CLIENT, SERVER, udp(40000 + PORTS, 54, false)))
                .0,
            TC_ACT_REDIRECT
        );
    });
}

#[test]
fn an_exhausted_endpoint_costs_one_lookup_until_its_backoff_ends() {
    with_program_lab(|lab| {
        lab.reconfigure(|c| (c.port_min, c.port_max) = (2000, 2001));
        for port in [40000, 40001] {
            let flow = Frame::new(CLIENT, SERVER, udp(port, 53, false));
            assert_eq!(lab.send_from_vpc(&flow).0, TC_ACT_REDIRECT);
        }
        // The first flow too many searches and fails; the next ones toward the same endpoint do not search.
        for port in 40002..40012 {
            assert_refused(lab, &Frame::new(CLIENT, SERVER, udp(port, 53, false)));
        }
        assert_eq!(lab.counter("dropped_port_exhausted"), 10);
        assert_eq!(
            lab.counter("port_searches_failed"),
            1,
            "only the first packet may search"
        );
        // Established flows toward the endpoint keep working, and so does another endpoint.
        let reply = Frame::new(SERVER, EXTERNAL, udp(53, 2000, false));
        assert_eq!(lab.send_from_outside(&reply).0, TC_ACT_REDIRECT);
        let elsewhere = Frame::new(CLIENT, SERVER, udp(40002, 54, false));
        assert_eq!(lab.send_from_vpc(&elsewhere).0, TC_ACT_REDIRECT);
        // A port freed (here by hand) is found once the backoff is over.
        let [_, (reverse, _)] = lab.pair(CLIENT, 40001);
        lab.flow_map().remove(&reverse).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let late = Frame::new(CLIENT, SERVER, udp(40020, 53, false));
        let (verdict, out) = lab.send_from_vpc(&late);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(l4_port(&out, true), u16::from_be(reverse.dst_port));
    });
}

#[test]
fn a_new_connection_takes_over_the_port_of_a_closed_one() {
    with_program_lab(|lab| {
        // One port toward this server: only a takeover can serve a second connection.
        lab.reconfigure(|c| (c.port_min, c.port_max) = (2000, 2000));
        let first = Frame::new(CLIENT, SERVER, tcp(40001, 80, TCP_SYN));
        assert_eq!(l4_port(&lab.send_from_vpc(&first).1, true), 2000);
        lab.send_from_outside(&Frame::new(
            SERVER,
            EXTERNAL,
            tcp(80, 2000, TCP_SYN | TCP_ACK),
        ));
        // While the first connection lives, a second one finds no port.
        let second = Frame::new(CLIENT, SERVER, tcp(40002, 80, TCP_SYN));
        assert_refused(lab, &second);
        assert_eq!(lab.counter("dropped_port_exhausted"), 1);
        // The first connection is reset; now the second one takes its port over.
        lab.send_from_vpc(&Frame::new(CLIENT, SERVER, tcp(40001, 80, TCP_RST)));
        let (verdict, out) = lab.send_from_vpc(&second);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out, snat_expected(&second, 2000));
        let reply = Frame::new(SERVER, EXTERNAL, tcp(80, 2000, TCP_SYN | TCP_ACK));
        assert_eq!(
            lab.send_from_outside(&reply).1,
            reverse_expected(&reply, CLIENT, CLIENT_MAC, 40002)
        );
        // A late packet of the old connection cannot take the port back from a live connection.
        assert_refused(lab, &Frame::new(CLIENT, SERVER, tcp(40001, 80, TCP_ACK)));
        assert_eq!(
            lab.send_from_outside(&reply).1,
            reverse_expected(&reply, CLIENT, CLIENT_MAC, 40002)
        );
    });
}

/// The median of the kernel's own timings of `program` on each frame.
fn median_ns(lab: &ProgramLab, program: &str, frames: &mut dyn Iterator<Item = Vec<u8>>) -> u64 {
    let mut times: Vec<u64> = frames
        .map(|frame| {
            let mut out = vec![0u8; frame.len() + 64];
            let result = lab
                .datapath
                .program(program)
                .unwrap()
                .test_run(TestRunOptions {
                    data_in: Some(&frame),
                    data_out: Some(&mut out),
                    ..Default::default()
                })
                .unwrap();
            result.duration.as_nanos() as u64
        })
        .collect();
    times.sort_unstable();
    times[times.len() / 2]
}

// Long because it is the bench's list of paths: each is a few lines that build a packet and time the program on it.
/// Not a test: the cost of each path through the programs, for `cargo xtask bench` (which runs it and reads the
/// line starting with PROGRAM_COST). BPF_PROG_TEST_RUN's `repeat` would run the same skb again after the first
/// run translated it, timing another path, so this times many single runs on fresh packets and takes medians of
/// the kernel's own measurements.
#[test]
#[ignore = "benchmark: run by `cargo xtask bench`"]
fn program_cost_per_path() {
    const RUNS: u16 = 20_000;
    with_program_lab(|lab| {
        let same = |frame: Frame| std::iter::repeat_n(frame.bytes(), RUNS as usize);
        let port = l4_port(
            &lab.send_from_vpc(&Frame::new(CLIENT, SERVER, tcp(41000, 443, TCP_SYN)))
                .1,
            true,
        );
        let reply = Frame::new(SERVER, EXTERNAL, tcp(443, port, TCP_ACK));
        assert_eq!(
            lab.send_from_outside(&reply).0,
            TC_ACT_REDIRECT,
            "the timed reply must take the translation path"
        );
        // An ARP request, which the program hands to the kernel at its first check: the floor, what the harness's
        // own timing (a clock read each side of one run) and the program's entry cost, to read the others against.
        let mut arp = vec![0xffu8; 6];
        arp.extend([2, 0, 0, 0, 0, 1, 0x08, 0x06]);
        arp.extend([0u8; 28]);
        let costs = [
            (
                "floor_non_ip_passed",
                median_ns(
                    lab,
                    PROGRAM_FROM_VPC,
                    &mut std::iter::repeat_n(arp, RUNS as usize),
                ),
            ),
            (
                "vpc_to_outside_established",
                median_ns(
                    lab,
                    PROGRAM_FROM_VPC,
                    &mut same(Frame::new(CLIENT, SERVER, tcp(41000, 443, TCP_ACK))),
                ),
            ),
            (
                "outside_to_vpc_established",
                median_ns(lab, PROGRAM_FROM_OUTSIDE, &mut same(reply)),
            ),
            (
                "vpc_to_outside_new_flow",
                median_ns(
                    lab,
                    PROGRAM_FROM_VPC,
                    &mut (0..RUNS).map(|i| {
                        Frame::new(
                            CLIENT,
                            SERVER,
                            udp(40000 + i % 20000, 1000 + i / 20000, false),
                        )
                        .bytes()
                    }),
                ),
            ),
            (
                "vpc_to_outside_forward",
                median_ns(
                    lab,
                    PROGRAM_FROM_VPC,
                    &mut same(Frame::new(FORWARD_CLIENT, SERVER, tcp(5002, 80, TCP_ACK))),
                ),
            ),
            (
                "vpc_no_policy_drop",
                median_ns(
                    lab,
                    PROGRAM_FROM_VPC,
                    &mut same(Frame::new(OUTSIDER, SERVER, tcp(5003, 80, TCP_SYN))),
                ),
            ),
            (
                "outside_unsolicited_drop",
                median_ns(
                    lab,
                    PROGRAM_FROM_OUTSIDE,
                    &mut same(Frame::new(SERVER, EXTERNAL, udp(53, 6001, false))),
                ),
            ),
            ("vpc_to_outside_port_exhausted", {
                // Two ports, both taken toward one endpoint: each new flow toward it is refused, from the
                // memory of the last failed search (a new full search every 250 ms at most).
                lab.reconfigure(|c| (c.port_min, c.port_max) = (2000, 2001));
                for port in [42000, 42001] {
                    lab.send_from_vpc(&Frame::new(CLIENT, SERVER, udp(port, 5353, false)));
                }
                median_ns(
                    lab,
                    PROGRAM_FROM_VPC,
                    &mut (0..RUNS).map(|i| {
                        Frame::new(CLIENT, SERVER, udp(43000 + i % 20000, 5353, false)).bytes()
                    }),
                )
            }),
        ];
        let mut json: serde_json::Map<String, serde_json::Value> = costs
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        // Loading 100,000 policy sources (distinct /32s) into the trie, as a resource with many ipBlocks would.
        let policy: DesiredPolicy = (0..100_000u32)
            .map(|i| {
                (
                    ipnet::Ipv4Net::new(Ipv4Addr::from(0x0a40_0000 + i), 32)
                        .unwrap()
                        .into(),
                    Action::Snat,
                )
            })
            .collect();
        let started = std::time::Instant::now();
        lab.datapath.policy().unwrap().sync(&policy).unwrap();
        json.insert(
            "policy_100k_load_ms".into(),
            (started.elapsed().as_secs_f64() * 1000.0).into(),
        );
        println!("PROGRAM_COST {}", serde_json::Value::Object(json));
    });
}

#[test]
fn a_failed_load_leaves_no_pins_behind() {
    if skip_unless_root() {
        return;
    }
    let dir = pins::gateway_dir(&unique("vegfail"));
    // A flow table of size 0 makes the kernel refuse the map, after the maps before it were created and pinned.
    let error = Datapath::load(&dir, 0)
        .err()
        .expect("a zero-sized flow table must be refused")
        .to_string();
    assert!(error.contains("loading the eBPF object"), "{error}");
    assert!(
        !dir.exists(),
        "the failed load left {} behind",
        dir.display()
    );
}

fn flow_table_capacity(name: &str) -> u32 {
    aya::maps::MapInfo::from_pin(pins::gateway_dir(name).join(pins::FLOWS))
        .unwrap()
        .max_entries()
}

#[test]
fn a_restart_with_another_flow_table_size_carries_every_flow_over() {
    with_program_lab(|lab| {
        for port in 6500..6510 {
            lab.send_from_vpc(&Frame::new(CLIENT, SERVER, udp(port, 53, false)));
        }
        let dir = pins::gateway_dir(&lab.name);
        // The same settings again: every pin is reused as it is, counters included.
        lab.datapath = Datapath::load(&dir, 65536).unwrap();
        assert_eq!(lab.counter("flows_created"), 10);
        assert!(!dir.join("FLOWS_MIGRATING").exists());
        // A larger table: the flows move into it, and the old one goes once the programs are attached.
        lab.datapath = Datapath::load(&dir, 131072).unwrap();
        assert_eq!(flow_table_capacity(&lab.name), 131072);
        lab.datapath.attach("vin", "vex").unwrap();
        assert!(
            !dir.join("FLOWS_MIGRATING").exists(),
            "the old table must go"
        );
        for port in 6500..6510 {
            let reply = Frame::new(SERVER, EXTERNAL, udp(53, port, false));
            assert_eq!(
                lab.send_from_outside(&reply).1,
                reverse_expected(&reply, CLIENT, CLIENT_MAC, port),
                "flow {port} was lost"
            );
        }
        assert_eq!(lab.flow_map().keys().count(), 20);
        assert_eq!(lab.counter("flows_created"), 10);
    });
}

/// Pin a flow table in `dir` as another build would have left it: 40-byte keys, values of `value_size` bytes.
fn pin_older_flow_table(dir: &std::path::Path, value_size: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let made = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(dir.join(pins::FLOWS))
        .args(["type", "hash", "key", "40", "value"])
        .arg(value_size.to_string())
        .args(["entries", "1024", "name", "FLOWS"])
        .status()
        .unwrap();
    assert!(made.success(), "bpftool map create failed");
}

#[test]
fn a_flow_table_of_another_layout_is_refused_with_what_to_run() {
    if skip_unless_root() {
        return;
    }
    let name = unique("veglayout");
    let dir = pins::gateway_dir(&name);
    // As an older build with 16-byte entries would have left it.
    pin_older_flow_table(&dir, 16);
    let error = format!("{:#}", Datapath::load(&dir, 65536).err().unwrap());
    let _ = pins::remove_gateway_pins(&name);
    assert!(error.contains("value 16 bytes"), "{error}");
    assert!(
        error.contains(&format!("veg gateway --name {name} --cleanup")),
        "{error}"
    );
}

#[test]
fn maps_from_before_btf_are_migrated_or_replaced_and_gain_their_fields() {
    // As the builds before BTF and before translation records left them: today's 40-byte entries, and the
    // counters as an array of 64 numbers, both without BTF types.
    an_older_builds_flow_table_is_migrated_with_its_flows::<40>();
}

#[test]
fn a_flow_table_with_records_counts_in_its_entries_is_migrated_with_its_flows_and_counts() {
    // As the builds that kept translation records' counts in the flow table left it: 56-byte entries, the
    // packets and bytes of the entry's direction after today's fields.
    an_older_builds_flow_table_is_migrated_with_its_flows::<56>();
}

/// A flow table an older build pinned (entries of `VALUE` bytes, no BTF), one flow in it, beside that build's
/// counters: loading (with records on) keeps the flow and the counts its entry carried, if any, replaces the
/// counters, and every map the agent pins has BTF types after.
fn an_older_builds_flow_table_is_migrated_with_its_flows<const VALUE: usize>() {
    if skip_unless_root() {
        return;
    }
    let name = unique("vegolder");
    let dir = pins::gateway_dir(&name);
    pin_older_flow_table(&dir, VALUE as u32);
    let made = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(dir.join(pins::STATS))
        .args([
            "type",
            "percpu_array",
            "key",
            "4",
            "value",
            "8",
            "entries",
            "64",
            "name",
            "STATS",
        ])
        .status()
        .unwrap();
    assert!(made.success(), "bpftool map create failed");
    let key = FlowKey {
        src_addr: Address::from_ip(IpAddr::V4(CLIENT)),
        dst_addr: Address::from_ip(IpAddr::V4(SERVER)),
        src_port: 6600u16.to_be(),
        dst_port: 53u16.to_be(),
        protocol: PROTO_UDP,
        family: veg_common::address::FAMILY_IPV4,
        _pad: [0; 2],
    };
    let entry = FlowEntry {
        nat_addr: Address::from_ip(IpAddr::V4(EXTERNAL)),
        nat_port: 6600u16.to_be(),
        direction: DIRECTION_OUTBOUND,
        state: 1,
        tcp_next_seq: 7,
        last_seen_ns: 123_456,
        created_ns: 100_000,
    };
    // The older layout: today's fields first, then (56 bytes) the 3 packets and 180 bytes the flow carried out.
    let mut bytes = [0u8; VALUE];
    // SAFETY: FlowEntry is plain data without padding.
    let fields: [u8; size_of::<FlowEntry>()] = unsafe { std::mem::transmute(entry) };
    bytes[..fields.len()].copy_from_slice(&fields);
    let counted = VALUE > fields.len();
    if counted {
        bytes[40..48].copy_from_slice(&3u64.to_ne_bytes());
        bytes[48..56].copy_from_slice(&180u64.to_ne_bytes());
    }
    {
        let data = MapData::from_pin(dir.join(pins::FLOWS)).unwrap();
        let mut old: HashMap<MapData, FlowKey, [u8; VALUE]> =
            HashMap::try_from(Map::HashMap(data)).unwrap();
        old.insert(key, bytes, 0).unwrap();
    }
    let sizes = TableSizes::new(65536, true);
    let loaded = Datapath::load_logging(&dir, sizes, DatapathLog::Off).map(|datapath| {
        let data = MapData::from_pin(dir.join(pins::FLOWS)).unwrap();
        let new: HashMap<MapData, FlowKey, FlowEntry> =
            HashMap::try_from(Map::HashMap(data)).unwrap();
        let data = MapData::from_pin(dir.join(pins::FLOW_COUNTS)).unwrap();
        let counts: HashMap<MapData, FlowKey, FlowCounts> =
            HashMap::try_from(Map::HashMap(data)).unwrap();
        let counts = counts.get(&key, 0).ok();
        let counters = read_counters(&dir).map(|counters| counters.len());
        let without_btf: Vec<&str> = pins::PINNED_MAPS
            .into_iter()
            .filter(|map| {
                let out = std::process::Command::new("bpftool")
                    .args(["-j", "map", "show", "pinned"])
                    .arg(dir.join(map))
                    .output()
                    .unwrap();
                let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                shown.get("btf_id").is_none()
            })
            .collect();
        drop(datapath);
        (new.get(&key, 0), counts, counters, without_btf)
    });
    let _ = pins::remove_gateway_pins(&name);
    let (migrated, counts, counters, without_btf) = loaded.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(migrated.expect("the flow was not carried over"), entry);
    let carried = counted.then_some(FlowCounts {
        packets_out: 3,
        bytes_out: 180,
        ..FlowCounts::default()
    });
    assert_eq!(counts, carried);
    assert_eq!(counters.unwrap(), veg_common::stats::Counter::ALL.len());
    assert!(without_btf.is_empty(), "{without_btf:?} have no BTF");
}

/// `frame` one router hop later: TTL one less, IP checksum recomputed from scratch, these MACs.
fn one_hop_later(frame: &[u8], dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[0..6].copy_from_slice(&dst_mac);
    out[6..12].copy_from_slice(&src_mac);
    out[22] -= 1;
    out[24..26].copy_from_slice(&[0, 0]);
    let ihl = ((out[14] & 0x0f) as usize) * 4;
    let csum = veg_testbed::packet::checksum(&out[14..14 + ihl], 0);
    out[24..26].copy_from_slice(&csum.to_be_bytes());
    out
}

const PORT_UNREACHABLE: (u8, u8, [u8; 4]) = (3, 3, [0; 4]);

#[test]
fn icmp_errors_from_outside_are_translated_back_to_the_client() {
    with_program_lab(|lab| {
        let mut udp_options = Frame::new(CLIENT, SERVER, udp(7100, 53, false));
        udp_options.options = vec![0x01, 0x01, 0x01, 0x00];
        let echo = L4::IcmpEcho {
            kind: 8,
            id: 0x7101,
            seq: 1,
            payload: vec![9; 20],
        };
        // (what the client sends, bytes of its transport header the error quotes)
        let cases = [
            (Frame::new(CLIENT, SERVER, udp(7100, 53, false)), 26),
            (udp_options, 26),
            (Frame::new(CLIENT, SERVER, tcp(7102, 80, TCP_SYN)), 38),
            // Only 8 bytes of TCP: the checksum is not in the quote and stays as it was.
            (Frame::new(CLIENT2, SERVER, tcp(7103, 80, TCP_SYN)), 8),
            (Frame::new(CLIENT, SERVER, echo), 8),
        ];
        for (i, (sent, quoted)) in cases.iter().enumerate() {
            let (_, left) = lab.send_from_vpc(sent);
            // The remote's error about the packet as it left, and what the client must get.
            let error = icmp_error_frame(
                &left,
                VEX_MAC,
                NEXTHOP_MAC,
                SERVER,
                PORT_UNREACHABLE,
                *quoted,
            );
            let as_sent = one_hop_later(&sent.bytes(), [0; 6], [0; 6]);
            let client_mac = if sent.src == CLIENT {
                CLIENT_MAC
            } else {
                CLIENT2_MAC
            };
            let expected = one_hop_later(
                &icmp_error_frame(&as_sent, [0; 6], [0; 6], SERVER, PORT_UNREACHABLE, *quoted),
                client_mac,
                VIN_MAC,
            );
            let (verdict, out) = lab.run(PROGRAM_FROM_OUTSIDE, &error);
            assert_eq!(verdict, TC_ACT_REDIRECT, "case {i}");
            assert_eq!(out, expected, "case {i}");
        }
        assert_eq!(lab.counter("icmp_errors_translated_in"), cases.len() as u64);
    });
}

#[test]
fn icmp_errors_about_no_live_translation_are_dropped_and_the_instance_keeps_its_own() {
    with_program_lab(|lab| {
        // Quoting a translated port that no flow holds.
        let stray = Frame::new(EXTERNAL, SERVER, udp(3000, 53, false)).bytes();
        let error = icmp_error_frame(&stray, VEX_MAC, NEXTHOP_MAC, SERVER, PORT_UNREACHABLE, 26);
        assert_eq!(lab.run(PROGRAM_FROM_OUTSIDE, &error).0, TC_ACT_SHOT);
        assert_eq!(lab.counter("dropped_icmp_error_no_flow"), 1);
        // Quoting the instance's own connection (a port outside the translation range): the kernel's.
        let own = Frame::new(EXTERNAL, SERVER, tcp(40000, 443, TCP_SYN)).bytes();
        let error = icmp_error_frame(&own, VEX_MAC, NEXTHOP_MAC, SERVER, PORT_UNREACHABLE, 8);
        assert_eq!(lab.run(PROGRAM_FROM_OUTSIDE, &error).0, TC_ACT_OK);
        // A pod's error about a packet of no translation goes nowhere either.
        let unknown = Frame::new(SERVER, CLIENT, udp(53, 7200, false)).bytes();
        let error = icmp_error_frame(&unknown, VIN_MAC, CLIENT_MAC, CLIENT, PORT_UNREACHABLE, 26);
        assert_eq!(lab.run(PROGRAM_FROM_VPC, &error).0, TC_ACT_SHOT);
        assert_eq!(lab.counter("dropped_icmp_error_no_flow"), 2);
        assert_eq!(lab.counter("translated_out"), 0);
    });
}

#[test]
fn a_pods_icmp_error_about_a_reply_reaches_the_remote_with_the_external_tuple() {
    with_program_lab(|lab| {
        let request = Frame::new(CLIENT, SERVER, udp(7300, 53, false));
        let port = l4_port(&lab.send_from_vpc(&request).1, true);
        let reply = Frame::new(SERVER, EXTERNAL, udp(53, port, false));
        let (_, got) = lab.send_from_outside(&reply);
        // The client's port is closed: its stack answers about the reply as it got it.
        let error = icmp_error_frame(&got, VIN_MAC, CLIENT_MAC, CLIENT, PORT_UNREACHABLE, 26);
        let (verdict, out) = lab.send_from_vpc_bytes(&error);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        // The remote gets it from the external address, quoting the reply as the remote sent it.
        let as_sent = one_hop_later(&reply.bytes(), [0; 6], [0; 6]);
        let expected = one_hop_later(
            &icmp_error_frame(&as_sent, [0; 6], [0; 6], EXTERNAL, PORT_UNREACHABLE, 26),
            NEXTHOP_MAC,
            VEX_MAC,
        );
        assert_eq!(out, expected);
        assert_eq!(lab.counter("icmp_errors_translated_out"), 1);
    });
}

/// The flow key of a record, for comparing: (client, client port, remote, remote port, protocol), ports in host
/// order.
fn record_tuple(record: &FlowRecord) -> (IpAddr, u16, IpAddr, u16, u8) {
    let key = &record.key;
    (
        key.src_addr.to_ip(key.family),
        u16::from_be(key.src_port),
        key.dst_addr.to_ip(key.family),
        u16::from_be(key.dst_port),
        key.protocol,
    )
}

#[test]
fn translation_records_say_when_a_flow_is_created_and_why_the_datapath_ended_it() {
    with_program_lab(|lab| {
        // Off: nothing is counted or sent.
        let quiet = Frame::new(CLIENT, SERVER, udp(6500, 53, false));
        lab.send_from_vpc(&quiet);
        assert!(lab.flow_records().is_empty());
        let [(quiet_key, _), _] = lab.pair(CLIENT, 6500);
        assert_eq!(lab.counts(&quiet_key), None);

        lab.reconfigure(|c| c.flow_records = 1);
        // Created: one record for the first packet, none for the next; both directions counted with the IP length.
        let request = Frame::new(CLIENT, SERVER, udp(6600, 53, false));
        let request_len = (request.bytes().len() - 14) as u64;
        lab.send_from_vpc(&request);
        lab.send_from_vpc(&request);
        let reply = Frame::new(SERVER, EXTERNAL, udp(53, 6600, false));
        lab.send_from_outside(&reply);
        let records = lab.flow_records();
        assert_eq!(records.len(), 1, "{records:?}");
        let created = &records[0];
        assert_eq!(created.event, event::CREATED);
        assert_eq!(
            record_tuple(created),
            (CLIENT.into(), 6600, SERVER.into(), 53, PROTO_UDP)
        );
        assert_eq!(created.nat_addr, Address::from_ip(EXTERNAL.into()));
        assert_eq!(u16::from_be(created.nat_port), 6600);
        let [(outbound_key, _), _] = lab.pair(CLIENT, 6600);
        let counted = FlowCounts {
            packets_out: 2,
            bytes_out: 2 * request_len,
            packets_in: 1,
            bytes_in: request_len,
        };
        assert_eq!(lab.counts(&outbound_key), Some(counted));

        // Timed out, found by its next packet: ended with its counts, then created anew.
        let stale = monotonic_now_ns() - UDP_TIMEOUT_NS - 1_000_000_000;
        let [(forward, _), (reverse, _)] = lab.pair(CLIENT, 6600);
        lab.set_last_seen(&forward, stale);
        lab.set_last_seen(&reverse, stale);
        lab.send_from_vpc(&request);
        let records = lab.flow_records();
        assert_eq!(records.len(), 2, "{records:?}");
        let ended = &records[0];
        assert_eq!(
            (ended.event, ended.reason),
            (event::ENDED, end_reason::TIMEOUT)
        );
        assert_eq!(record_tuple(ended), record_tuple(created));
        assert_eq!(ended.created_ns, created.created_ns);
        assert_eq!(
            (
                ended.packets_out,
                ended.bytes_out,
                ended.packets_in,
                ended.bytes_in
            ),
            (2, 2 * request_len, 1, request_len)
        );
        assert_eq!(records[1].event, event::CREATED);
        // The ended translation's counts went with it: the new one's start from its first packet.
        let fresh = lab
            .counts(&outbound_key)
            .expect("the new translation's counts");
        assert_eq!((fresh.packets_out, fresh.packets_in), (1, 0));

        // Closed: a new connection takes over a reset one's only port.
        lab.reconfigure(|c| (c.port_min, c.port_max) = (2000, 2000));
        let first = Frame::new(CLIENT, SERVER, tcp(40001, 80, TCP_SYN));
        lab.send_from_vpc(&first);
        lab.send_from_outside(&Frame::new(
            SERVER,
            EXTERNAL,
            tcp(80, 2000, TCP_SYN | TCP_ACK),
        ));
        lab.send_from_vpc(&Frame::new(CLIENT, SERVER, tcp(40001, 80, TCP_RST)));
        lab.send_from_vpc(&Frame::new(CLIENT, SERVER, tcp(40002, 80, TCP_SYN)));
        let records = lab.flow_records();
        let kinds: Vec<_> = records.iter().map(|r| (r.event, r.reason)).collect();
        assert_eq!(
            kinds,
            [
                (event::CREATED, 0),
                (event::ENDED, end_reason::CLOSED),
                (event::CREATED, 0)
            ]
        );
        assert_eq!(record_tuple(&records[1]).1, 40001);
        assert_eq!((records[1].packets_out, records[1].packets_in), (2, 1));
        assert_eq!(record_tuple(&records[2]).1, 40002);

        // Readdressed: the gateway's address changed under a live flow.
        lab.reconfigure(|c| {
            (c.port_min, c.port_max) = (PORT_MIN, PORT_MAX);
            c.external_addr_v4 = Address::from_ip(Ipv4Addr::new(172, 17, 0, 12).into());
        });
        lab.send_from_vpc(&Frame::new(CLIENT, SERVER, tcp(40002, 80, TCP_ACK)));
        let records = lab.flow_records();
        assert_eq!(
            (records[0].event, records[0].reason),
            (event::ENDED, end_reason::READDRESSED)
        );
    });
}

#[test]
fn a_flow_given_up_for_room_is_recorded_as_evicted() {
    // Room for 100 translations.
    with_program_lab_sized(200, |lab| {
        lab.reconfigure(|c| c.flow_records = 1);
        for i in 0..101u16 {
            lab.send_from_vpc(&Frame::new(CLIENT, SERVER, udp(20000 + i, 53, false)));
        }
        let records = lab.flow_records();
        let ended: Vec<_> = records.iter().filter(|r| r.event == event::ENDED).collect();
        assert_eq!(ended.len(), 1, "{records:?}");
        assert_eq!(ended[0].reason, end_reason::EVICTED);
        // The oldest unanswered flow, with its one packet.
        assert_eq!(record_tuple(ended[0]).1, 20000);
        assert_eq!((ended[0].packets_out, ended[0].packets_in), (1, 0));
        assert_eq!(
            records.iter().filter(|r| r.event == event::CREATED).count(),
            101
        );
    });
}

/// `bpftool -j map dump pinned` of one of the lab's maps, as bpftool formats it from the map's BTF.
fn bpftool_dump(lab: &ProgramLab, map: &str) -> Vec<serde_json::Value> {
    let path = pins::gateway_dir(&lab.name).join(map);
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&path)
        .output()
        .expect("running bpftool (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    entries
        .into_iter()
        .map(|entry| {
            entry
                .get("formatted")
                .cloned()
                .unwrap_or_else(|| panic!("bpftool printed {map} without BTF fields: {entry}"))
        })
        .collect()
}

#[test]
fn bpftool_prints_the_pinned_maps_by_field() {
    with_program_lab(|lab| {
        let syn = Frame::new(CLIENT, SERVER, tcp(5000, 80, TCP_SYN));
        assert_eq!(lab.send_from_vpc(&syn).0, TC_ACT_REDIRECT);

        let flows = bpftool_dump(lab, pins::FLOWS);
        assert_eq!(flows.len(), 2, "{flows:?}");
        let outbound = flows
            .iter()
            .find(|f| f["value"]["direction"] == DIRECTION_OUTBOUND)
            .unwrap_or_else(|| panic!("no outbound half: {flows:?}"));
        // Ports are kept in network byte order, as the packets carry them.
        assert_eq!(outbound["key"]["src_port"], 5000u16.to_be(), "{outbound}");
        assert_eq!(outbound["key"]["dst_port"], 80u16.to_be(), "{outbound}");
        assert_eq!(outbound["key"]["protocol"], 6, "{outbound}");
        assert_eq!(outbound["value"]["nat_port"], 5000u16.to_be(), "{outbound}");
        for field in ["src_addr", "dst_addr", "family"] {
            assert!(outbound["key"].get(field).is_some(), "{field}: {outbound}");
        }
        for field in ["nat_addr", "state", "last_seen_ns", "created_ns"] {
            assert!(
                outbound["value"].get(field).is_some(),
                "{field}: {outbound}"
            );
        }

        // With records on, what each translation carried, under its outbound key.
        lab.reconfigure(|c| c.flow_records = 1);
        let counted = Frame::new(CLIENT, SERVER, tcp(5001, 80, TCP_SYN));
        assert_eq!(lab.send_from_vpc(&counted).0, TC_ACT_REDIRECT);
        let counts = bpftool_dump(lab, pins::FLOW_COUNTS);
        assert_eq!(counts.len(), 1, "{counts:?}");
        assert_eq!(counts[0]["key"]["src_port"], 5001u16.to_be(), "{counts:?}");
        assert_eq!(counts[0]["value"]["packets_out"], 1, "{counts:?}");
        assert_eq!(
            counts[0]["value"]["bytes_out"],
            counted.bytes().len() - 14,
            "{counts:?}"
        );
        assert_eq!(counts[0]["value"]["packets_in"], 0, "{counts:?}");

        let policy = bpftool_dump(lab, pins::POLICY_V4);
        let snat = policy
            .iter()
            .find(|p| {
                p["key"]["prefix_len"] == 24
                    && p["key"]["data"] == serde_json::json!([10, 16, 0, 0])
            })
            .unwrap_or_else(|| panic!("no 10.16.0.0/24: {policy:?}"));
        assert_eq!(snat["value"]["action"], 1, "{snat}");

        // One value per CPU, each with every counter by name.
        let stats = bpftool_dump(lab, pins::STATS);
        let translated: u64 = stats[0]["values"]
            .as_array()
            .unwrap_or_else(|| panic!("{stats:?}"))
            .iter()
            .map(|cpu| cpu["value"]["translated_out"].as_u64().unwrap())
            .sum();
        assert_eq!(translated, 2, "{stats:?}");

        let config = bpftool_dump(lab, pins::CONFIG);
        assert_eq!(config[0]["value"]["port_min"], PORT_MIN, "{config:?}");
    });
}

#[test]
fn the_programs_load_with_every_log_line_on() {
    if skip_unless_root() {
        return;
    }
    let name = unique("veglog");
    let dir = pins::gateway_dir(&name);
    // Every line enabled: the verifier must accept them all, on every path they sit on.
    let loaded =
        Datapath::load_logging(&dir, TableSizes::new(65536, true), DatapathLog::Trace).map(drop);
    let _ = pins::remove_gateway_pins(&name);
    loaded.unwrap_or_else(|e| panic!("{e:#}"));
}
