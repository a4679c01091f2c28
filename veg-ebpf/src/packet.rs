//! Parsing: Ethernet, IPv4 (options tolerated) and the first bytes of TCP, UDP and ICMP. Every length is checked
//! against both the buffer and the IP header's own total length, so a truncated packet is never half-read.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use network_types::{eth::EthHdr, icmp::Icmpv4Hdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};
use veg_common::{
    config::GatewayConfig,
    flow::{PROTO_ICMP, PROTO_TCP, PROTO_UDP},
    stats::Counter,
};

use crate::{
    log::{self, Malformed},
    maps::{PACKET, config},
    stats::{drop_packet, pass_to_host},
};

const ETH_P_IP: u16 = 0x0800;
const IPV4_MIN_LEN: usize = 20;
const TCP_MIN_LEN: usize = 20;
const UDP_LEN: usize = 8;
const ICMP_ECHO_LEN: usize = 8;
/// Bytes of L4 header the datapath reads or writes.
const L4_NEEDED: usize = 20;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;

pub const TCP_FLAG_FIN: u8 = 0x01;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_RST: u8 = 0x04;
pub const TCP_FLAG_ACK: u8 = 0x10;

/// Offsets of the fields the datapath rewrites.
pub const IPV4_TTL_OFF: usize = 8;
pub const IPV4_CSUM_OFF: usize = 10;
pub const IPV4_SRC_OFF: usize = 12;
pub const IPV4_DST_OFF: usize = 16;

/// The limited broadcast address, 255.255.255.255 (the same in either byte order).
const LIMITED_BROADCAST: u32 = u32::MAX;

/// The first octet of an address in network byte order: enough for every address class a router screens.
#[inline(always)]
fn first_octet(addr_be: u32) -> u8 {
    addr_be.to_ne_bytes()[0]
}

/// A source no router accepts (RFC 1812 5.3.7): "this network" 0.0.0.0/8, loopback 127.0.0.0/8, multicast and
/// the reserved 240.0.0.0/4 (limited broadcast included).
#[inline(always)]
pub fn is_martian_source(addr_be: u32) -> bool {
    let octet = first_octet(addr_be);
    octet == 0 || octet == 127 || octet >= 224
}

/// A destination no router forwards: 0.0.0.0/8, 127.0.0.0/8 and the reserved 240.0.0.0/4 other than the limited
/// broadcast (which `is_broadcast_or_multicast` covers).
#[inline(always)]
pub fn is_martian_destination(addr_be: u32) -> bool {
    let octet = first_octet(addr_be);
    octet == 0 || octet == 127 || (octet >= 240 && addr_be != LIMITED_BROADCAST)
}

/// Multicast (224.0.0.0/4) or the limited broadcast: delivered on a link, never routed by the gateway. (A
/// directed broadcast of a connected subnet is a broadcast route in the kernel's table, which the route lookup
/// reports as not forwarded.)
#[inline(always)]
pub fn is_broadcast_or_multicast(addr_be: u32) -> bool {
    let octet = first_octet(addr_be);
    (224..240).contains(&octet) || addr_be == LIMITED_BROADCAST
}

/// An IPv4 packet, with addresses and ports as they are on the wire (network byte order).
#[repr(C)]
pub struct Ipv4Packet {
    /// Where the transport header starts (`l4()`).
    l4_off: u8,
    /// The IP header's total length.
    pub tot_len: u16,
    pub protocol: u8,
    pub ttl: u8,
    pub dont_fragment: bool,
    /// More-fragments set or a non-zero offset: the gateway does not translate fragments yet.
    pub is_fragment: bool,
    /// A fragment other than the first: it carries no transport header.
    pub later_fragment: bool,
    /// The IP identification (network byte order): with the addresses and protocol, a datagram's identity.
    pub ip_id: u16,
    pub src: u32,
    pub dst: u32,
    /// TCP/UDP ports; for ICMP echo the identifier is in both (the side that owns it is chosen by the caller).
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    /// TCP sequence and acknowledgement numbers (host byte order), and the payload's length.
    pub tcp_seq: u32,
    pub tcp_ack: u32,
    pub tcp_payload_len: u16,
    pub icmp_type: u8,
    /// A UDP datagram sent without a checksum: it must stay without one.
    pub udp_checksum_zero: bool,
    /// The packets this skb stands for: more than one for a GSO super-packet. What translation records count.
    pub segments: u16,
}

/// Where the IPv4 header starts: after the Ethernet header.
pub const L3_OFF: usize = EthHdr::LEN;

impl Ipv4Packet {
    /// The IP length of the packets this skb leaves as: its own, or for a GSO super-packet (segmented on the way
    /// out) its headers and one segment, which is what must fit the next hop's MTU.
    #[inline(always)]
    pub fn wire_len(&self, ctx: &TcContext) -> u16 {
        let segment = unsafe { (*ctx.skb.skb).gso_size };
        if segment == 0 {
            return self.tot_len;
        }
        let headers = self.tot_len.saturating_sub(self.tcp_payload_len);
        let headers = if self.protocol == PROTO_TCP {
            headers
        } else {
            (self.l4() - L3_OFF + UDP_LEN) as u16
        };
        headers.saturating_add(segment as u16)
    }

    /// Where the transport header starts. Kept as a u8 (at most 14 + 60): the packet lives in map memory, where
    /// the verifier knows nothing of a value but its type's range, and an offset into the packet must be bounded.
    #[inline(always)]
    pub fn l4(&self) -> usize {
        usize::from(self.l4_off)
    }
}

/// What both programs do first: nothing until the agent has configured the gateway, then parse. Returns the
/// settings and the packet, or the verdict for a packet that is not ours to translate. The parsed packet lives in
/// per-CPU scratch space (PACKET), not on the stack: the verifier allows 512 bytes for a program and the functions
/// it calls together.
#[inline(always)]
pub fn accept(ctx: &TcContext) -> Result<(&'static GatewayConfig, &'static Ipv4Packet), i32> {
    let Some(cfg) = config() else {
        return Err(TC_ACT_OK);
    };
    let Some(pkt) = PACKET.get_ptr_mut(0) else {
        return Err(drop_packet(Counter::DropMalformed));
    };
    let pkt = unsafe { &mut *pkt };
    match parse(ctx, pkt) {
        Parsed::Other => Err(pass_to_host(Counter::PassedToHost)),
        Parsed::Malformed(why) => {
            log::malformed(why, unsafe { (*ctx.skb.skb).ifindex });
            Err(drop_packet(Counter::DropMalformed))
        }
        Parsed::Ipv4 => Ok((cfg, pkt)),
    }
}

pub enum Parsed {
    /// Not IPv4 (ARP, IPv6, ...): not ours to judge.
    Other,
    Malformed(Malformed),
    Ipv4,
}

/// A pointer to a `T` at `offset` in the packet's linear data, if it lies wholly inside.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Write `value` at `offset` straight into the packet: far cheaper than bpf_skb_store_bytes (a helper call and its
/// writability checks for every field; `cargo xtask bench profile`). The bounds are checked afresh because the
/// checksum helpers called before a write invalidate earlier packet pointers. The verifier unclones the skb for
/// a program that writes its data, so the write never reaches a shared buffer.
#[inline(always)]
pub fn write_at<T: Copy>(ctx: &TcContext, offset: usize, value: T) -> Result<(), ()> {
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return Err(());
    }
    // SAFETY: inside the packet, as just checked; the packet has no alignment guarantee.
    unsafe { core::ptr::write_unaligned((start + offset) as *mut T, value) };
    Ok(())
}

/// Make sure the headers are in the linear part of the skb, so direct packet access can reach them.
#[inline(always)]
pub fn pull_headers(ctx: &TcContext, len: usize) {
    if ctx.data() + len > ctx.data_end() {
        let want = if (ctx.len() as usize) < len {
            ctx.len()
        } else {
            len as u32
        };
        let _ = ctx.pull_data(want);
    }
}

#[inline(always)]
pub fn parse(ctx: &TcContext, pkt: &mut Ipv4Packet) -> Parsed {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Parsed::Other;
    };
    if u16::from_be(unsafe { (*eth).ether_type }) != ETH_P_IP {
        return Parsed::Other;
    }
    // The largest header walk: Ethernet + IPv4 with options + the L4 bytes we touch.
    pull_headers(ctx, EthHdr::LEN + 60 + L4_NEEDED);
    match parse_ipv4(ctx, pkt) {
        Ok(()) => Parsed::Ipv4,
        Err(why) => Parsed::Malformed(why),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &TcContext, pkt: &mut Ipv4Packet) -> Result<(), Malformed> {
    let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, L3_OFF).ok_or(Malformed::Truncated)? };
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ip.vihl >> 4 != 4 || ihl < IPV4_MIN_LEN {
        return Err(Malformed::Ipv4Header);
    }
    let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
    // The IP total length must cover the header and fit in what arrived.
    if tot_len < ihl || L3_OFF + tot_len > ctx.len() as usize {
        return Err(Malformed::IpLength);
    }
    let frags = u16::from_be_bytes(ip.frags);
    *pkt = Ipv4Packet {
        l4_off: (L3_OFF + ihl) as u8,
        tot_len: tot_len as u16,
        protocol: ip.proto,
        ttl: ip.ttl,
        dont_fragment: frags & 0x4000 != 0,
        is_fragment: frags & 0x3fff != 0,
        later_fragment: frags & 0x1fff != 0,
        ip_id: u16::from_ne_bytes(ip.id),
        src: u32::from_ne_bytes(ip.src_addr),
        dst: u32::from_ne_bytes(ip.dst_addr),
        src_port: 0,
        dst_port: 0,
        tcp_flags: 0,
        tcp_seq: 0,
        tcp_ack: 0,
        tcp_payload_len: 0,
        icmp_type: 0,
        udp_checksum_zero: false,
        segments: unsafe { (*ctx.skb.skb).gso_segs }.clamp(1, u32::from(u16::MAX)) as u16,
    };
    if pkt.later_fragment {
        return Ok(());
    }
    let l4_len = tot_len - ihl;
    match pkt.protocol {
        PROTO_TCP => parse_tcp(ctx, pkt, l4_len)?,
        PROTO_UDP => parse_udp(ctx, pkt, l4_len)?,
        PROTO_ICMP => parse_icmp(ctx, pkt, l4_len)?,
        _ => {}
    }
    Ok(())
}

#[inline(always)]
fn parse_tcp(ctx: &TcContext, pkt: &mut Ipv4Packet, l4_len: usize) -> Result<(), Malformed> {
    let tcp = unsafe { &*ptr_at::<TcpHdr>(ctx, pkt.l4()).ok_or(Malformed::Truncated)? };
    // Bytes 12 and 13 hold the data offset (high nibble) and the flags (CWR ECE URG ACK PSH RST SYN FIN). Read
    // them directly: the bitfield accessors carry bounds checks the verifier cannot accept.
    let raw = tcp as *const TcpHdr as *const u8;
    let (data_offset, flags) = unsafe { (*raw.add(12), *raw.add(13)) };
    let header_len = ((data_offset >> 4) as usize) * 4;
    if l4_len < TCP_MIN_LEN || header_len < TCP_MIN_LEN || header_len > l4_len {
        return Err(Malformed::TcpHeader);
    }
    pkt.src_port = u16::from_ne_bytes(tcp.source);
    pkt.dst_port = u16::from_ne_bytes(tcp.dest);
    pkt.tcp_flags = flags;
    pkt.tcp_seq = u32::from_be_bytes(tcp.seq);
    pkt.tcp_ack = u32::from_be_bytes(tcp.ack_seq);
    pkt.tcp_payload_len = (l4_len - header_len) as u16;
    Ok(())
}

#[inline(always)]
fn parse_udp(ctx: &TcContext, pkt: &mut Ipv4Packet, l4_len: usize) -> Result<(), Malformed> {
    let udp = unsafe { &*ptr_at::<UdpHdr>(ctx, pkt.l4()).ok_or(Malformed::Truncated)? };
    let len = u16::from_be_bytes(udp.len) as usize;
    // A first fragment holds only part of the datagram its UDP length covers.
    if l4_len < UDP_LEN || len < UDP_LEN || (len > l4_len && !pkt.is_fragment) {
        return Err(Malformed::UdpLength);
    }
    pkt.src_port = u16::from_ne_bytes(udp.src);
    pkt.dst_port = u16::from_ne_bytes(udp.dst);
    pkt.udp_checksum_zero = udp.check == [0, 0];
    Ok(())
}

#[inline(always)]
fn parse_icmp(ctx: &TcContext, pkt: &mut Ipv4Packet, l4_len: usize) -> Result<(), Malformed> {
    let icmp = unsafe { &*ptr_at::<Icmpv4Hdr>(ctx, pkt.l4()).ok_or(Malformed::Truncated)? };
    if l4_len < ICMP_ECHO_LEN {
        return Err(Malformed::IcmpLength);
    }
    pkt.icmp_type = icmp.type_;
    if icmp.type_ == ICMP_ECHO_REQUEST || icmp.type_ == ICMP_ECHO_REPLY {
        // Bytes 4-5 of an echo message: the identifier.
        let id = u16::from_ne_bytes([icmp.data[0], icmp.data[1]]);
        pkt.src_port = id;
        pkt.dst_port = id;
    }
    Ok(())
}
