//! Parsing: Ethernet, IPv4 (options tolerated) or IPv6 (extension headers walked, within a bound) and the first
//! bytes of TCP, UDP, ICMP and ICMPv6. Every length is checked against both the buffer and the IP header's own
//! length, so a truncated packet is never half-read.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use network_types::{eth::EthHdr, icmp::Icmpv4Hdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};
use veg_common::{
    address::{Address, FAMILY_IPV4, FAMILY_IPV6},
    config::GatewayConfig,
    flow::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP},
    stats::Counter,
};

use crate::{
    log::{self, Malformed},
    maps::{PACKET, config},
    stats::{drop_packet, pass_to_host},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPV4_MIN_LEN: usize = 20;
const TCP_MIN_LEN: usize = 20;
const UDP_LEN: usize = 8;
const ICMP_ECHO_LEN: usize = 8;
/// Bytes of L4 header the datapath reads or writes.
const L4_NEEDED: usize = 20;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

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

/// Link-local unicast (fe80::/10) or multicast (ff00::/8): neighbour discovery, router advertisements, MLD. The
/// instance's own stack answers them on the link; the gateway never forwards or translates them.
#[inline(always)]
pub fn is_ipv6_link_scope(addr: &Address) -> bool {
    let [a, b] = [addr.bytes[0], addr.bytes[1]];
    a == 0xff || (a == 0xfe && b & 0xc0 == 0x80)
}

/// An IPv6 address no router forwards to or from (RFC 4291): unspecified ::, loopback ::1, and IPv4-mapped
/// ::ffff:0:0/96, which must never appear on the wire.
#[inline(always)]
pub fn is_ipv6_martian(addr: &Address) -> bool {
    let b = &addr.bytes;
    let head_zero = u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) == 0;
    let word2 = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
    let word3 = u32::from_be_bytes([b[12], b[13], b[14], b[15]]);
    head_zero && ((word2 == 0 && word3 <= 1) || word2 == 0xffff)
}

/// An IPv4 or IPv6 packet, with addresses and ports as they are on the wire (network byte order).
#[repr(C)]
pub struct Packet {
    /// FAMILY_IPV4 or FAMILY_IPV6.
    pub family: u8,
    /// Where the transport header starts (`l4()`).
    l4_off: u8,
    /// The IP length: IPv4's total length, or IPv6's 40-byte header plus its payload length.
    pub tot_len: u16,
    /// The transport protocol (IPv6: the last extension header's next header).
    pub protocol: u8,
    /// IPv4's TTL or IPv6's hop limit.
    pub ttl: u8,
    pub dont_fragment: bool,
    /// More-fragments set or a non-zero offset (IPv6: a fragment header).
    pub is_fragment: bool,
    /// A fragment other than the first: it carries no transport header.
    pub later_fragment: bool,
    /// The IP identification (network byte order): with the addresses and protocol, a datagram's identity.
    pub ip_id: u16,
    /// IPv6: the fragment header's identification, as on the wire (0 without one).
    pub ipv6_id: u32,
    pub src: Address,
    pub dst: Address,
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

impl Packet {
    /// The IPv4 source (network byte order), for the IPv4 paths.
    #[inline(always)]
    pub fn src_v4(&self) -> u32 {
        self.src.ipv4_be()
    }

    #[inline(always)]
    pub fn dst_v4(&self) -> u32 {
        self.dst.ipv4_be()
    }

    #[inline(always)]
    pub fn is_ipv6(&self) -> bool {
        self.family == FAMILY_IPV6
    }

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

    /// Where the transport header starts. Kept as a u8 (at most 14 + 60, or 14 + 40 + EXT_HEADERS_MAX): the packet
    /// lives in map memory, where the verifier knows nothing of a value but its type's range, and an offset into
    /// the packet must be bounded.
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
pub fn accept(ctx: &TcContext) -> Result<(&'static GatewayConfig, &'static Packet), i32> {
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
        Parsed::Ip => Ok((cfg, pkt)),
    }
}

pub enum Parsed {
    /// Not IP (ARP, LLDP, ...): not ours to judge.
    Other,
    Malformed(Malformed),
    /// IPv4 or IPv6, parsed.
    Ip,
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

/// Read a value at `offset` in the packet, directly.
#[inline(always)]
pub fn read_at<T: Copy>(ctx: &TcContext, offset: usize) -> Result<T, ()> {
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return Err(());
    }
    // SAFETY: inside the packet, as just checked; the packet has no alignment guarantee.
    Ok(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
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
pub fn parse(ctx: &TcContext, pkt: &mut Packet) -> Parsed {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Parsed::Other;
    };
    let parsed = match u16::from_be(unsafe { (*eth).ether_type }) {
        // Only the bytes this packet's headers take: pulling further would copy payload into the skb's linear
        // part, for every segment of a TCP stream (whose linear part holds its headers alone).
        ETH_P_IP => {
            pull_headers(ctx, EthHdr::LEN + IPV4_MIN_LEN);
            let header_len = match ptr_at::<u8>(ctx, L3_OFF) {
                Some(vihl) => usize::from(unsafe { *vihl } & 0x0f) * 4,
                None => IPV4_MIN_LEN,
            };
            // Ethernet + IPv4 with its options + the L4 bytes we touch.
            pull_headers(ctx, EthHdr::LEN + header_len + L4_NEEDED);
            parse_ipv4(ctx, pkt)
        }
        ETH_P_IPV6 => {
            pull_headers(ctx, EthHdr::LEN + IPV6_LEN + L4_NEEDED);
            let next_header =
                ptr_at::<u8>(ctx, L3_OFF + IPV6_NEXT_HEADER_OFF).map(|p| unsafe { *p });
            if !matches!(next_header, Some(PROTO_TCP | PROTO_UDP | PROTO_ICMPV6)) {
                // Extension headers (or none to read): the longest walk.
                pull_headers(ctx, EthHdr::LEN + IPV6_LEN + EXT_HEADERS_MAX + L4_NEEDED);
            }
            parse_ipv6(ctx, pkt)
        }
        _ => return Parsed::Other,
    };
    match parsed {
        Ok(()) => Parsed::Ip,
        Err(why) => Parsed::Malformed(why),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &TcContext, pkt: &mut Packet) -> Result<(), Malformed> {
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
    pkt.family = FAMILY_IPV4;
    pkt.l4_off = (L3_OFF + ihl) as u8;
    pkt.tot_len = tot_len as u16;
    pkt.protocol = ip.proto;
    pkt.ttl = ip.ttl;
    pkt.dont_fragment = frags & 0x4000 != 0;
    pkt.is_fragment = frags & 0x3fff != 0;
    pkt.later_fragment = frags & 0x1fff != 0;
    pkt.ip_id = u16::from_ne_bytes(ip.id);
    pkt.ipv6_id = 0;
    set_ipv4(&mut pkt.src, u32::from_ne_bytes(ip.src_addr));
    set_ipv4(&mut pkt.dst, u32::from_ne_bytes(ip.dst_addr));
    clear_transport(ctx, pkt);
    if pkt.later_fragment {
        return Ok(());
    }
    parse_l4(ctx, pkt, tot_len - ihl)
}

/// Reset what the transport header's parser fills in, before it runs (or for a packet without one). Every field
/// of the per-CPU packet is written for every packet: it holds the previous packet's values otherwise.
#[inline(always)]
fn clear_transport(ctx: &TcContext, pkt: &mut Packet) {
    store(&mut pkt.src_port, 0);
    store(&mut pkt.dst_port, 0);
    store(&mut pkt.tcp_flags, 0);
    store(&mut pkt.tcp_seq, 0);
    store(&mut pkt.tcp_ack, 0);
    store(&mut pkt.tcp_payload_len, 0);
    store(&mut pkt.icmp_type, 0);
    store(&mut pkt.udp_checksum_zero, false);
    pkt.segments = unsafe { (*ctx.skb.skb).gso_segs }.clamp(1, u32::from(u16::MAX)) as u16;
}

/// Store a field of the parsed packet on its own. Plain stores of zeros to neighbouring fields are merged by the
/// compiler into a call to a byte-by-byte memset subprogram (about 10 ns a call on every packet, `cargo xtask
/// bench profile`); volatile stores are never merged.
#[inline(always)]
fn store<T>(field: &mut T, value: T) {
    // SAFETY: a valid, aligned field.
    unsafe { core::ptr::write_volatile(field, value) };
}

/// Set an address in map memory (the parsed packet, a key in the scratch) to an IPv4 address (network byte
/// order): four 32-bit stores, where assigning an Address would call memset for its twelve zero bytes (a
/// subprogram, and one more frame in the verifier's count of the stack).
#[inline(always)]
pub fn set_ipv4(field: &mut Address, addr_be: u32) {
    let words = (field as *mut Address).cast::<u32>();
    for (i, word) in [addr_be, 0, 0, 0].into_iter().enumerate() {
        // SAFETY: an Address is 4-byte aligned (repr(align(4))), and 16 bytes long.
        unsafe { words.add(i).write_volatile(word) };
    }
}

/// The transport header, `l4_len` bytes long by the IP header's account.
#[inline(always)]
fn parse_l4(ctx: &TcContext, pkt: &mut Packet, l4_len: usize) -> Result<(), Malformed> {
    match pkt.protocol {
        PROTO_TCP => parse_tcp(ctx, pkt, l4_len),
        PROTO_UDP => parse_udp(ctx, pkt, l4_len),
        PROTO_ICMP if !pkt.is_ipv6() => {
            parse_icmp(ctx, pkt, l4_len, ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY)
        }
        PROTO_ICMPV6 if pkt.is_ipv6() => {
            parse_icmp(ctx, pkt, l4_len, ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY)
        }
        _ => Ok(()),
    }
}

/// The fixed IPv6 header.
pub const IPV6_LEN: usize = 40;
/// Offsets in the IPv6 header of the fields the datapath reads or rewrites.
const IPV6_NEXT_HEADER_OFF: usize = 6;
pub const IPV6_HOP_LIMIT_OFF: usize = 7;
pub const IPV6_SRC_OFF: usize = 8;
pub const IPV6_DST_OFF: usize = 24;
/// How many extension headers are walked, and how many bytes of them in all: a packet with more is dropped as
/// malformed (RFC 7045 lets a router do so; real traffic carries one or two). The bound keeps the walk's cost
/// fixed and the transport header's offset in a u8.
const EXT_HEADERS: usize = 4;
const EXT_HEADERS_MAX: usize = 128;
/// Extension headers (RFC 8200 4.1): hop-by-hop options, routing, fragment, destination options.
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;
/// Where the fragment header's next header, offset and identification are.
const FRAGMENT_HEADER_LEN: usize = 8;

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, pkt: &mut Packet) -> Result<(), Malformed> {
    let ip = unsafe { &*ptr_at::<[u8; 8]>(ctx, L3_OFF).ok_or(Malformed::Truncated)? };
    if ip[0] >> 4 != 6 {
        return Err(Malformed::Ipv6Header);
    }
    let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    // A jumbogram (payload length 0) never crosses an Ethernet link.
    if payload_len == 0 || L3_OFF + IPV6_LEN + payload_len > ctx.len() as usize {
        return Err(Malformed::IpLength);
    }
    let address = |off| ptr_at::<[u8; 16]>(ctx, L3_OFF + off).ok_or(Malformed::Truncated);
    let src = unsafe { *address(IPV6_SRC_OFF)? };
    let dst = unsafe { *address(IPV6_DST_OFF)? };
    pkt.family = FAMILY_IPV6;
    pkt.l4_off = (L3_OFF + IPV6_LEN) as u8;
    pkt.tot_len = (IPV6_LEN + payload_len) as u16;
    pkt.protocol = ip[6];
    pkt.ttl = ip[IPV6_HOP_LIMIT_OFF];
    // IPv6 routers never fragment: a packet too big is answered, whatever it carries.
    pkt.dont_fragment = true;
    pkt.is_fragment = false;
    pkt.later_fragment = false;
    pkt.ip_id = 0;
    pkt.ipv6_id = 0;
    pkt.src = Address { bytes: src };
    pkt.dst = Address { bytes: dst };
    clear_transport(ctx, pkt);
    walk_extension_headers(ctx, pkt)?;
    if pkt.later_fragment {
        return Ok(());
    }
    let l4_len = L3_OFF + usize::from(pkt.tot_len) - pkt.l4();
    parse_l4(ctx, pkt, l4_len)?;
    if pkt.protocol == PROTO_UDP && pkt.udp_checksum_zero {
        // Mandatory in IPv6 (RFC 8200 8.1): the kernel drops such a datagram too.
        return Err(Malformed::UdpLength);
    }
    Ok(())
}

/// Follow the extension headers to the transport header: `pkt.protocol` and the transport offset end up past
/// them. A fragment header marks the packet as a fragment (its identification goes to `ipv6_id`).
#[inline(always)]
fn walk_extension_headers(ctx: &TcContext, pkt: &mut Packet) -> Result<(), Malformed> {
    let end = L3_OFF + usize::from(pkt.tot_len);
    for _ in 0..EXT_HEADERS {
        let next = pkt.protocol;
        if next != IPPROTO_HOPOPTS
            && next != IPPROTO_ROUTING
            && next != IPPROTO_FRAGMENT
            && next != IPPROTO_DSTOPTS
        {
            return Ok(());
        }
        let off = pkt.l4();
        let header = unsafe { &*ptr_at::<[u8; 8]>(ctx, off).ok_or(Malformed::Truncated)? };
        let len = if next == IPPROTO_FRAGMENT {
            let offset_flags = u16::from_be_bytes([header[2], header[3]]);
            pkt.is_fragment = true;
            pkt.later_fragment = offset_flags & 0xfff8 != 0;
            pkt.ipv6_id = u32::from_ne_bytes([header[4], header[5], header[6], header[7]]);
            if pkt.later_fragment {
                // What follows is the middle of the datagram, not a header: the walk ends here.
                let new_off = off + FRAGMENT_HEADER_LEN;
                if new_off > end {
                    return Err(Malformed::ExtensionHeaders);
                }
                pkt.protocol = header[0];
                pkt.l4_off = new_off as u8;
                return Ok(());
            }
            FRAGMENT_HEADER_LEN
        } else {
            (usize::from(header[1]) + 1) * 8
        };
        let new_off = off + len;
        if new_off > L3_OFF + IPV6_LEN + EXT_HEADERS_MAX || new_off > end {
            return Err(Malformed::ExtensionHeaders);
        }
        pkt.protocol = header[0];
        pkt.l4_off = new_off as u8;
    }
    Err(Malformed::ExtensionHeaders)
}

#[inline(always)]
fn parse_tcp(ctx: &TcContext, pkt: &mut Packet, l4_len: usize) -> Result<(), Malformed> {
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
fn parse_udp(ctx: &TcContext, pkt: &mut Packet, l4_len: usize) -> Result<(), Malformed> {
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

/// ICMP or ICMPv6 (whose header starts alike), with that family's echo types.
#[inline(always)]
fn parse_icmp(
    ctx: &TcContext,
    pkt: &mut Packet,
    l4_len: usize,
    echo_request: u8,
    echo_reply: u8,
) -> Result<(), Malformed> {
    let icmp = unsafe { &*ptr_at::<Icmpv4Hdr>(ctx, pkt.l4()).ok_or(Malformed::Truncated)? };
    if l4_len < ICMP_ECHO_LEN {
        return Err(Malformed::IcmpLength);
    }
    pkt.icmp_type = icmp.type_;
    if icmp.type_ == echo_request || icmp.type_ == echo_reply {
        // Bytes 4-5 of an echo message: the identifier.
        let id = u16::from_ne_bytes([icmp.data[0], icmp.data[1]]);
        pkt.src_port = id;
        pkt.dst_port = id;
    }
    Ok(())
}
