//! ICMPv6 errors the instance sends as a router does (RFC 4443): Packet Too Big with the next hop's MTU when a
//! packet does not fit it (IPv6 routers never fragment: without it a path MTU is never learned and a large TCP
//! write hangs), time exceeded when the hop limit would reach 0, and administratively prohibited when a new flow
//! gets no port or no room in the flow table.
//!
//! Built in place as icmp.rs builds IPv4's: the packet is cut to its IPv6 header and the QUOTE_L4 bytes after it,
//! given new Ethernet, IPv6 and ICMPv6 headers, and sent back along the route to its sender. A packet with
//! extension headers is not answered (counted): its quote would have to carry them whole for the sender to match
//! it to a connection, and they are rare on paths that need an answer. Errors share IPv4's per-CPU rate budget.

use aya_ebpf::{
    helpers::generated::{bpf_csum_diff, bpf_skb_change_head, bpf_skb_change_tail},
    programs::TcContext,
};
use veg_common::{address::Address, flow::PROTO_ICMPV6, stats::Counter};

use crate::{
    icmp,
    packet::{ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, IPV6_LEN, L3_OFF, Packet, write_at},
    route,
    stats::drop_packet,
};

/// An ICMPv6 error: type, code and the 4 bytes after the checksum (network byte order).
#[derive(Clone, Copy)]
pub struct Icmp6Error {
    kind: u8,
    code: u8,
    rest: u32,
}

impl Icmp6Error {
    /// Type 3 code 0: hop limit exceeded in transit.
    pub const TIME_EXCEEDED: Icmp6Error = Icmp6Error {
        kind: 3,
        code: 0,
        rest: 0,
    };

    /// Type 1 code 1: communication with the destination administratively prohibited.
    pub const ADMINISTRATIVELY_PROHIBITED: Icmp6Error = Icmp6Error {
        kind: 1,
        code: 1,
        rest: 0,
    };

    /// Type 2: Packet Too Big, with the next hop's MTU.
    #[inline(always)]
    pub fn packet_too_big(mtu: u16) -> Icmp6Error {
        Icmp6Error {
            kind: 2,
            code: 0,
            rest: u32::from(mtu).to_be(),
        }
    }
}

/// Bytes quoted after the offending packet's IPv6 header, as for IPv4 (icmp.rs): a TCP header whole.
const QUOTE_L4: usize = 20;
const QUOTE_LEN: usize = IPV6_LEN + QUOTE_L4;
/// The IPv6 and ICMPv6 headers put in front of the quote.
const NEW_HEADERS: u32 = (IPV6_LEN + 8) as u32;
const ICMP_OFF: usize = L3_OFF + IPV6_LEN;
const QUOTE_OFF: usize = ICMP_OFF + 8;
const HOP_LIMIT: u8 = 64;

/// Whether a packet may be answered with an error (RFC 4443 2.4 (e)): never an ICMPv6 error itself (types below
/// 128), never a fragment other than the first, never one whose quote would miss its extension headers.
#[inline(always)]
fn answerable(pkt: &Packet) -> bool {
    let query = pkt.protocol != PROTO_ICMPV6
        || pkt.icmp_type == ICMPV6_ECHO_REQUEST
        || pkt.icmp_type == ICMPV6_ECHO_REPLY;
    query && !pkt.is_fragment && pkt.l4() == ICMP_OFF
}

/// Turn the packet into `error` from `from` to its sender and send it (the caller counts why). The verdict is
/// the redirect, or a drop when the packet may not be answered, the rate is exceeded, or the error cannot be
/// built or routed.
#[inline(always)]
pub fn send_error(ctx: &TcContext, pkt: &Packet, error: &Icmp6Error, from: &Address) -> i32 {
    if *from == Address::UNSPECIFIED || !answerable(pkt) {
        return drop_packet(Counter::IcmpErrorsNotSent);
    }
    if !icmp::within_error_rate() {
        return drop_packet(Counter::IcmpErrorsRateLimited);
    }
    if build(ctx, error, from, &pkt.src).is_err() {
        return drop_packet(Counter::IcmpErrorsNotSent);
    }
    let route = route::lookup_v6(ctx, PROTO_ICMPV6, from, &pkt.src, 0);
    // Back where the packet came from, through the interface's transmit (never into the VPC's veth peer:
    // route::into_peer).
    match route::redirect(ctx, &route, false) {
        Ok(verdict) => verdict,
        Err(()) => drop_packet(Counter::IcmpErrorsNotSent),
    }
}

/// The sum of an address's 16-bit words, in the machine's byte order (as bpf_csum_diff sums packet memory).
#[inline(always)]
fn address_sum(addr: &Address) -> u32 {
    let mut sum = 0;
    for i in 0..8 {
        sum += u32::from(u16::from_ne_bytes([
            addr.bytes[2 * i],
            addr.bytes[2 * i + 1],
        ]));
    }
    sum
}

/// Fold a 32-bit sum of 16-bit words to 16 bits, complemented: the checksum field's value.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Rewrite the packet into the error, in place. A function of its own in the object (not inlined), as icmp.rs's.
#[inline(never)]
fn build(ctx: &TcContext, error: &Icmp6Error, from: &Address, to: &Address) -> Result<(), ()> {
    let skb = ctx.skb.skb as *mut _;
    if unsafe { bpf_skb_change_tail(skb, (L3_OFF + QUOTE_LEN) as u32, 0) } != 0
        || unsafe { bpf_skb_change_head(skb, NEW_HEADERS, 0) } != 0
    {
        return Err(());
    }
    let Icmp6Error { kind, code, rest } = *error;
    let payload_len = (8 + QUOTE_LEN) as u16;
    write_at(ctx, 12, 0x86ddu16.to_be())?;
    write_at(ctx, L3_OFF, [0x60u8, 0, 0, 0])?;
    write_at(ctx, L3_OFF + 4, payload_len.to_be())?;
    write_at(ctx, L3_OFF + 6, [PROTO_ICMPV6, HOP_LIMIT])?;
    write_at(ctx, L3_OFF + 8, from.bytes)?;
    write_at(ctx, L3_OFF + 24, to.bytes)?;
    write_at(ctx, ICMP_OFF, [kind, code, 0, 0])?;
    write_at(ctx, ICMP_OFF + 4, rest)?;
    // The checksum covers the pseudo-header (addresses, length, next header), the ICMPv6 header and the quote, all
    // summed in the machine's byte order like bpf_csum_diff's sum of the quote, so that one fold serves.
    let start = ctx.data();
    if start + QUOTE_OFF + QUOTE_LEN > ctx.data_end() {
        return Err(());
    }
    let quoted = (start + QUOTE_OFF) as *mut u32;
    let quote_sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, quoted, QUOTE_LEN as u32, 0) };
    let [r0, r1, r2, r3] = rest.to_ne_bytes();
    let sum = (quote_sum as u32 & 0xffff)
        + ((quote_sum as u64 >> 16) as u32)
        + address_sum(from)
        + address_sum(to)
        + u32::from(payload_len.to_be())
        + u32::from(u16::from_ne_bytes([0, PROTO_ICMPV6]))
        + u32::from(u16::from_ne_bytes([kind, code]))
        + u32::from(u16::from_ne_bytes([r0, r1]))
        + u32::from(u16::from_ne_bytes([r2, r3]));
    write_at(ctx, ICMP_OFF + 2, fold(sum))
}
