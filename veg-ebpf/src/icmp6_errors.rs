//! ICMPv6 errors about a translated flow (destination unreachable, Packet Too Big, time exceeded, parameter
//! problem), translated for the side they go to as icmp_errors.rs does IPv4's (RFC 5508's rules, which NAT66
//! follows). From outside, an error quotes the packet as it left the gateway (external address and port) and must
//! reach the client quoting what the client sent: this is how a client learns its path MTU. From the VPC, a pod's
//! error about a reply must reach the remote quoting what the remote sent.
//!
//! Rewritten in place: the outer address, the quoted address and port (or echo identifier), the quoted transport
//! checksum where the quote holds it, and the ICMPv6 checksum, which covers the pseudo-header (so the outer
//! address's change counts in it too) and the quote. The quote is expected right after its IPv6 header; one with
//! extension headers is not translated. Nothing is refreshed: an error must not keep a flow alive.

use aya_ebpf::{helpers::generated::bpf_ktime_get_ns, programs::TcContext};
use veg_common::{
    address::{Address, FAMILY_IPV6},
    config::GatewayConfig,
    flow::{DIRECTION_INBOUND, DIRECTION_OUTBOUND, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, is_expired},
    stats::Counter,
};

use crate::{
    icmp_errors::{QuotedEnd, csum_replace2, quoted_ports, read16},
    maps::{FLOWS, FlowScratch, flow_scratch},
    packet::{
        ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, IPV6_DST_OFF, IPV6_LEN, IPV6_SRC_OFF, L3_OFF,
        Packet, ptr_at, pull_headers, write_at,
    },
};

/// The ICMPv6 header before the quote.
const ICMP_HEADER: usize = 8;
/// What the quote must hold of the transport header: ports, or the echo header.
const QUOTED_L4_MIN: usize = 8;
/// The bytes an error's headers and quote may span: Ethernet, outer IPv6 with extension headers (the parser's
/// bound), ICMPv6, quoted IPv6, and the quoted transport header up to TCP's checksum.
const ERROR_SPAN: usize = 14 + IPV6_LEN + 128 + ICMP_HEADER + IPV6_LEN + 18;

/// Whether an ICMPv6 type is an error that quotes a packet (types 1 to 4; 128 and up are informational).
#[inline(always)]
pub fn is_error(icmp_type: u8) -> bool {
    (1..=4).contains(&icmp_type)
}

/// The quoted packet: where its headers are, its protocol and ports (network byte order; an echo's identifier in
/// both). Its addresses are read into the scratch key.
struct Quote {
    ip_off: u16,
    l4_off: u16,
    protocol: u8,
    src_port: u16,
    dst_port: u16,
    /// Bytes of the transport header the quote holds.
    l4_len: u16,
}

/// Copy the address at `offset` in the packet into `to`.
#[inline(always)]
fn read_address(ctx: &TcContext, offset: usize, to: &mut Address) -> Option<()> {
    to.bytes = unsafe { *ptr_at::<[u8; 16]>(ctx, offset)? };
    Some(())
}

#[inline(always)]
fn parse_quote(ctx: &TcContext, pkt: &Packet) -> Option<Quote> {
    pull_headers(ctx, ERROR_SPAN);
    let ip_off = pkt.l4() + ICMP_HEADER;
    let [version, _] = read16(ctx, ip_off)?.to_ne_bytes();
    if version >> 4 != 6 {
        return None;
    }
    let [protocol, _] = read16(ctx, ip_off + 6)?.to_ne_bytes();
    let l4_off = ip_off + IPV6_LEN;
    let total = ctx.len() as usize;
    if l4_off + QUOTED_L4_MIN > total {
        return None;
    }
    let echo = (PROTO_ICMPV6, ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY);
    let (src_port, dst_port) = quoted_ports(ctx, protocol, l4_off, echo)?;
    Some(Quote {
        ip_off: ip_off as u16,
        l4_off: l4_off as u16,
        protocol,
        src_port,
        dst_port,
        l4_len: (total - l4_off) as u16,
    })
}

/// Fill the scratch key with the flow of the quoted packet's reverse direction (its destination to its source),
/// with these ports.
#[inline(always)]
fn quoted_key(
    ctx: &TcContext,
    scratch: &mut FlowScratch,
    quote: &Quote,
    src_port: u16,
    dst_port: u16,
) -> Option<()> {
    let key = &mut scratch.quoted_key;
    read_address(ctx, quote.ip_off as usize + IPV6_DST_OFF, &mut key.src_addr)?;
    read_address(ctx, quote.ip_off as usize + IPV6_SRC_OFF, &mut key.dst_addr)?;
    key.src_port = src_port;
    key.dst_port = dst_port;
    key.protocol = quote.protocol;
    key.family = FAMILY_IPV6;
    key._pad = [0; 2];
    Some(())
}

/// rewrite::address_diff, as a function of its own in the object: its sixteen loads, inlined, made the translating
/// functions spill registers past the verifier's stack budget.
#[inline(never)]
fn address_diff(old: &Address, new: &Address) -> u32 {
    crate::rewrite::address_diff(old, new)
}

/// The checksum `check`, as it lies in the packet, after adding `diff` (an `address_diff`, in the machine's byte
/// order, as the field is read) to what it covers (RFC 1624).
#[inline(always)]
fn csum_add(check: u16, diff: u32) -> u16 {
    let mut sum = u32::from(!check) + diff;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The changes one translation makes: in the quote, `end`'s address (changing by `quoted_diff`) and its port
/// become `new` and `new_port`; outside it, the outer address at `outer_off` becomes `new` too (changing by
/// `outer_diff`).
struct Rewrite {
    end: QuotedEnd,
    quoted_diff: u32,
    outer_off: usize,
    outer_diff: u32,
    new_port: u16,
}

#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    pkt: &Packet,
    quote: &Quote,
    change: &Rewrite,
    new: &Address,
) -> Result<(), ()> {
    let (addr_off, old_port, port_off) = match change.end {
        QuotedEnd::Source => (IPV6_SRC_OFF, quote.src_port, 0),
        QuotedEnd::Destination => (IPV6_DST_OFF, quote.dst_port, 2),
    };
    // An echo's identifier sits at offset 4 whichever end it stands for.
    let port_off = if quote.protocol == PROTO_ICMPV6 {
        4
    } else {
        port_off
    };
    let icmp_csum_off = pkt.l4() + 2;
    let mut icmp_csum = read16(ctx, icmp_csum_off).ok_or(())?;
    let l4_csum_off = match quote.protocol {
        PROTO_UDP => Some(6),
        PROTO_ICMPV6 => Some(2),
        PROTO_TCP if quote.l4_len >= 18 => Some(16),
        _ => None,
    };
    if let Some(off) = l4_csum_off {
        let at = quote.l4_off as usize + off;
        let old = read16(ctx, at).ok_or(())?;
        // Every IPv6 transport checksum covers the pseudo-header's addresses.
        let mut updated = csum_add(
            csum_replace2(old, old_port, change.new_port),
            change.quoted_diff,
        );
        if quote.protocol == PROTO_UDP && updated == 0 {
            updated = 0xffff;
        }
        write_at(ctx, at, updated)?;
        icmp_csum = csum_replace2(icmp_csum, old, updated);
    }
    icmp_csum = csum_add(icmp_csum, change.quoted_diff);
    icmp_csum = csum_replace2(icmp_csum, old_port, change.new_port);
    icmp_csum = csum_add(icmp_csum, change.outer_diff);
    write_at(ctx, quote.ip_off as usize + addr_off, new.bytes)?;
    write_at(ctx, quote.l4_off as usize + port_off, change.new_port)?;
    write_at(ctx, L3_OFF + change.outer_off, new.bytes)?;
    write_at(ctx, icmp_csum_off, icmp_csum)
}

/// Rewrite an error from outside about a translated flow for its client, whose address is then in the scratch's
/// `error_client`. Err: why it is not (PassedToHost: about the instance's own traffic). A function of its own in
/// the object (not inlined): the program's stack and its callees' must fit the verifier's 512 bytes together.
#[inline(never)]
pub fn translate_from_outside(
    ctx: &TcContext,
    pkt: &Packet,
    cfg: &GatewayConfig,
) -> Result<(), Counter> {
    let now = unsafe { bpf_ktime_get_ns() };
    let quote = parse_quote(ctx, pkt).ok_or(Counter::DropMalformed)?;
    let scratch = flow_scratch().ok_or(Counter::DropIcmpErrorNoFlow)?;
    let remote_port = if quote.protocol == PROTO_ICMPV6 {
        0
    } else {
        quote.dst_port
    };
    quoted_key(ctx, scratch, &quote, remote_port, quote.src_port).ok_or(Counter::DropMalformed)?;
    // The quote is what the gateway sent: from the external address and a translated port.
    let port = u16::from_be(quote.src_port);
    if scratch.quoted_key.dst_addr != cfg.external_addr_v6
        || port < cfg.port_min
        || port > cfg.port_max
    {
        return Err(Counter::PassedToHost); // about the instance's own traffic
    }
    let entry = FLOWS
        .get_ptr(&scratch.quoted_key)
        .ok_or(Counter::DropIcmpErrorNoFlow)?;
    let entry = unsafe { &*entry };
    if entry.direction != DIRECTION_INBOUND || is_expired(entry, quote.protocol, now) {
        return Err(Counter::DropIcmpErrorNoFlow);
    }
    scratch.error_client = entry.nat_addr;
    let change = Rewrite {
        end: QuotedEnd::Source,
        quoted_diff: address_diff(&cfg.external_addr_v6, &entry.nat_addr),
        outer_off: IPV6_DST_OFF,
        outer_diff: address_diff(&pkt.dst, &entry.nat_addr),
        new_port: entry.nat_port,
    };
    rewrite(ctx, pkt, &quote, &change, &scratch.error_client).map_err(|()| Counter::DropMalformed)
}

/// Rewrite a pod's error about a reply it got for the remote. Err: why not (no live translation, or not
/// translatable). A function of its own in the object, as `translate_from_outside`.
#[inline(never)]
pub fn translate_from_vpc(
    ctx: &TcContext,
    pkt: &Packet,
    cfg: &GatewayConfig,
) -> Result<(), Counter> {
    let now = unsafe { bpf_ktime_get_ns() };
    let quote = parse_quote(ctx, pkt).ok_or(Counter::DropMalformed)?;
    // The quote is the reply as the pod got it: from the remote to the pod's own address and port.
    let scratch = flow_scratch().ok_or(Counter::DropIcmpErrorNoFlow)?;
    let remote_port = if quote.protocol == PROTO_ICMPV6 {
        0
    } else {
        quote.src_port
    };
    quoted_key(ctx, scratch, &quote, quote.dst_port, remote_port).ok_or(Counter::DropMalformed)?;
    let entry = FLOWS
        .get_ptr(&scratch.quoted_key)
        .ok_or(Counter::DropIcmpErrorNoFlow)?;
    let entry = unsafe { &*entry };
    if entry.direction != DIRECTION_OUTBOUND
        || entry.nat_addr != cfg.external_addr_v6
        || is_expired(entry, quote.protocol, now)
    {
        return Err(Counter::DropIcmpErrorNoFlow);
    }
    let external = &cfg.external_addr_v6;
    let change = Rewrite {
        end: QuotedEnd::Destination,
        // The quoted destination is the flow's client: the key's source.
        quoted_diff: address_diff(&scratch.quoted_key.src_addr, external),
        outer_off: IPV6_SRC_OFF,
        outer_diff: address_diff(&pkt.src, external),
        new_port: entry.nat_port,
    };
    rewrite(ctx, pkt, &quote, &change, external).map_err(|()| Counter::DropMalformed)
}
