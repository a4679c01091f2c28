//! ICMP errors about a translated flow (destination unreachable, time exceeded, parameter problem), translated for
//! the side they go to, as RFC 5508 asks. From outside, an error quotes the packet as it left the gateway
//! (external address and port) and must reach the client quoting what the client sent; from the VPC, a pod's
//! error about a reply quotes the reply as the pod got it and must reach the remote quoting what the remote sent.
//!
//! Rewritten: the outer address, the quoted address and port (or echo identifier), the quoted IP checksum, the
//! quoted transport checksum where the quote holds it (UDP and ICMP always, TCP only with 18 bytes or more of its
//! header, as netfilter does), and the ICMP checksum. Nothing is refreshed: an error must not keep a flow alive.
//! The quote is read and written in place, after pulling it into the packet's linear part, field by field: the
//! skb helpers would need a stack buffer each, and the program's stack is scarce.

use aya_ebpf::{helpers::generated::bpf_ktime_get_ns, programs::TcContext};
use veg_common::{
    address::FAMILY_IPV4,
    config::GatewayConfig,
    flow::{
        DIRECTION_INBOUND, DIRECTION_OUTBOUND, FlowKey, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
        is_expired,
    },
    stats::Counter,
};

use crate::{
    maps::{FLOWS, flow_scratch},
    packet::{
        IPV4_CSUM_OFF, IPV4_DST_OFF, IPV4_SRC_OFF, Packet, ptr_at, pull_headers, set_ipv4, write_at,
    },
    // The outer address changes with the IP checksum alone: ICMPv4's checksum has no pseudo-header.
    rewrite::replace_ipv4_address,
};

const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
/// The ICMP header before the quote.
const ICMP_HEADER: usize = 8;
/// What RFC 792 guarantees of the quoted transport header: ports, or the echo header.
const QUOTED_L4_MIN: usize = 8;

/// Whether an ICMP type is an error that quotes a packet and is translated.
#[inline(always)]
pub fn is_error(icmp_type: u8) -> bool {
    matches!(
        icmp_type,
        ICMP_DEST_UNREACHABLE | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
    )
}

/// The quoted packet: where its headers are, and its tuple (addresses and ports in network byte order; for ICMP
/// echo the identifier is in both ports).
/// Kept small (offsets as u16): it lives in the translating function's stack frame.
struct Quote {
    ip_off: u16,
    l4_off: u16,
    protocol: u8,
    src: u32,
    dst: u32,
    src_port: u16,
    dst_port: u16,
    /// Bytes of the transport header the quote holds.
    l4_len: u16,
}

/// The bytes an error's headers and quote may span: Ethernet, outer IP with options, ICMP, quoted IP with options,
/// and the quoted transport header up to TCP's checksum.
const ERROR_SPAN: usize = 14 + 60 + ICMP_HEADER + 60 + 18;

/// A 16-bit field as it lies in the packet (network byte order).
#[inline(always)]
pub fn read16(ctx: &TcContext, offset: usize) -> Option<u16> {
    let bytes = unsafe { *ptr_at::<[u8; 2]>(ctx, offset)? };
    Some(u16::from_ne_bytes(bytes))
}

/// A 32-bit field as it lies in the packet (network byte order).
#[inline(always)]
fn read32(ctx: &TcContext, offset: usize) -> Option<u32> {
    let bytes = unsafe { *ptr_at::<[u8; 4]>(ctx, offset)? };
    Some(u32::from_ne_bytes(bytes))
}

/// The ports of a quoted packet whose transport header is at `l4_off`: TCP's and UDP's, or for an echo of the
/// family's ICMP (`echo`: its protocol and echo request and reply types) the identifier in both. None for what is
/// not translated.
#[inline(always)]
pub fn quoted_ports(
    ctx: &TcContext,
    protocol: u8,
    l4_off: usize,
    (icmp, echo_request, echo_reply): (u8, u8, u8),
) -> Option<(u16, u16)> {
    match protocol {
        PROTO_TCP | PROTO_UDP => Some((read16(ctx, l4_off)?, read16(ctx, l4_off + 2)?)),
        // Only echo is translated; the error quotes an echo request or reply.
        _ if protocol == icmp => {
            let [kind, _] = read16(ctx, l4_off)?.to_ne_bytes();
            if kind != echo_request && kind != echo_reply {
                return None;
            }
            let id = read16(ctx, l4_off + 4)?;
            Some((id, id))
        }
        _ => None,
    }
}

#[inline(always)]
fn parse_quote(ctx: &TcContext, pkt: &Packet) -> Option<Quote> {
    pull_headers(ctx, ERROR_SPAN);
    let ip_off = pkt.l4() + ICMP_HEADER;
    // Bytes are read in pairs: for a one-byte read LLVM turns the bounds check into a form the verifier does not
    // take as proof.
    let [version_ihl, _] = read16(ctx, ip_off)?.to_ne_bytes();
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    let l4_off = ip_off + ihl;
    let total = ctx.len() as usize;
    if l4_off + QUOTED_L4_MIN > total {
        return None;
    }
    let [_, protocol] = read16(ctx, ip_off + 8)?.to_ne_bytes();
    let echo = (PROTO_ICMP, ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY);
    let (src_port, dst_port) = quoted_ports(ctx, protocol, l4_off, echo)?;
    Some(Quote {
        ip_off: ip_off as u16,
        l4_off: l4_off as u16,
        protocol,
        src: read32(ctx, ip_off + IPV4_SRC_OFF)?,
        dst: read32(ctx, ip_off + IPV4_DST_OFF)?,
        src_port,
        dst_port,
        l4_len: (total - l4_off) as u16,
    })
}

/// The checksum `check` (network byte order) after a 16-bit word of what it covers went from `old` to `new`
/// (RFC 1624: HC' = ~(~HC + ~m + m')).
#[inline(always)]
pub fn csum_replace2(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!u16::from_be(check))
        + u32::from(!u16::from_be(old))
        + u32::from(u16::from_be(new));
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be()
}

/// `csum_replace2` for a 32-bit word (an address), as its two halves.
#[inline(always)]
fn csum_replace4(check: u16, old: u32, new: u32) -> u16 {
    let [o0, o1, o2, o3] = old.to_ne_bytes();
    let [n0, n1, n2, n3] = new.to_ne_bytes();
    let check = csum_replace2(
        check,
        u16::from_ne_bytes([o0, o1]),
        u16::from_ne_bytes([n0, n1]),
    );
    csum_replace2(
        check,
        u16::from_ne_bytes([o2, o3]),
        u16::from_ne_bytes([n2, n3]),
    )
}

/// Which end of the quoted packet is rewritten.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum QuotedEnd {
    Source,
    Destination,
}

/// Rewrite one end of the quote (address and port) and every checksum that covers them, the ICMP one last.
#[inline(always)]
fn rewrite_quote(
    ctx: &TcContext,
    pkt: &Packet,
    quote: &Quote,
    end: QuotedEnd,
    addr: u32,
    port: u16,
) -> Result<(), ()> {
    let (old_addr, old_port, addr_off, port_off) = match end {
        QuotedEnd::Source => (quote.src, quote.src_port, IPV4_SRC_OFF, 0),
        QuotedEnd::Destination => (quote.dst, quote.dst_port, IPV4_DST_OFF, 2),
    };
    // An echo's identifier sits at offset 4 whichever end it stands for.
    let port_off = if quote.protocol == PROTO_ICMP {
        4
    } else {
        port_off
    };
    let icmp_csum_off = pkt.l4() + 2;
    let mut icmp_csum = read16(ctx, icmp_csum_off).ok_or(())?;
    // The quoted transport checksum, where the quote holds it.
    let l4_csum_off = match quote.protocol {
        PROTO_UDP => Some(6),
        PROTO_ICMP => Some(2),
        PROTO_TCP if quote.l4_len >= 18 => Some(16),
        _ => None,
    };
    if let Some(off) = l4_csum_off {
        let at = quote.l4_off as usize + off;
        let old = read16(ctx, at).ok_or(())?;
        // A UDP datagram sent without a checksum keeps none.
        if !(quote.protocol == PROTO_UDP && old == 0) {
            let mut new = csum_replace2(old, old_port, port);
            if quote.protocol != PROTO_ICMP {
                // The pseudo-header's address.
                new = csum_replace4(new, old_addr, addr);
            }
            if quote.protocol == PROTO_UDP && new == 0 {
                new = 0xffff;
            }
            write_at(ctx, at, new)?;
            icmp_csum = csum_replace2(icmp_csum, old, new);
        }
    }
    let ip_csum_at = quote.ip_off as usize + IPV4_CSUM_OFF;
    let old_ip_csum = read16(ctx, ip_csum_at).ok_or(())?;
    let new_ip_csum = csum_replace4(old_ip_csum, old_addr, addr);
    write_at(ctx, ip_csum_at, new_ip_csum)?;
    write_at(ctx, quote.ip_off as usize + addr_off, addr)?;
    write_at(ctx, quote.l4_off as usize + port_off, port)?;
    icmp_csum = csum_replace2(icmp_csum, old_ip_csum, new_ip_csum);
    icmp_csum = csum_replace4(icmp_csum, old_addr, addr);
    icmp_csum = csum_replace2(icmp_csum, old_port, port);
    write_at(ctx, icmp_csum_off, icmp_csum)
}

/// Fill `key` with the flow key of the quoted packet's reverse direction (from its destination to its source),
/// with these ports, field by field in the scratch space: a key built on the stack costs 40 bytes of it.
#[inline(always)]
fn quoted_key(key: &mut FlowKey, quote: &Quote, src_port: u16, dst_port: u16) {
    set_ipv4(&mut key.src_addr, quote.dst);
    set_ipv4(&mut key.dst_addr, quote.src);
    key.src_port = src_port;
    key.dst_port = dst_port;
    key.protocol = quote.protocol;
    key.family = FAMILY_IPV4;
    key._pad = [0; 2];
}

/// The client an error from outside was translated back for.
pub struct Client {
    /// Network byte order.
    pub addr: u32,
}

/// Rewrite an error from outside about a translated flow for its client, and say which client. Err: why it is
/// not (PassedToHost: about the instance's own traffic). A function of its own in the object (not inlined): the
/// program's stack frame and its callees' must fit the verifier's 512 bytes together.
#[inline(never)]
pub fn translate_from_outside(
    ctx: &TcContext,
    pkt: &Packet,
    cfg: &GatewayConfig,
) -> Result<Client, Counter> {
    let now = unsafe { bpf_ktime_get_ns() };
    let quote = parse_quote(ctx, pkt).ok_or(Counter::DropMalformed)?;
    // The quote is what the gateway sent: from the external address and a translated port.
    let port = u16::from_be(quote.src_port);
    if quote.src != cfg.external_addr_v4.ipv4_be() || port < cfg.port_min || port > cfg.port_max {
        return Err(Counter::PassedToHost); // about the instance's own traffic
    }
    let scratch = flow_scratch().ok_or(Counter::DropIcmpErrorNoFlow)?;
    let remote_port = if quote.protocol == PROTO_ICMP {
        0
    } else {
        quote.dst_port
    };
    quoted_key(&mut scratch.quoted_key, &quote, remote_port, quote.src_port);
    let entry = FLOWS
        .get_ptr(&scratch.quoted_key)
        .ok_or(Counter::DropIcmpErrorNoFlow)?;
    let entry = unsafe { &*entry };
    if entry.direction != DIRECTION_INBOUND || is_expired(entry, quote.protocol, now) {
        return Err(Counter::DropIcmpErrorNoFlow);
    }
    let (client, client_port) = (entry.nat_addr.ipv4_be(), entry.nat_port);
    rewrite_quote(ctx, pkt, &quote, QuotedEnd::Source, client, client_port)
        .and_then(|()| replace_ipv4_address(ctx, IPV4_DST_OFF, pkt.dst_v4(), client))
        .map_err(|()| Counter::DropMalformed)?;
    Ok(Client { addr: client })
}

/// Rewrite a pod's error about a reply it got for the remote. Err: why not (no live translation, or not
/// translatable). A function of its own in the object (not inlined), as `translate_from_outside`.
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
    let remote_port = if quote.protocol == PROTO_ICMP {
        0
    } else {
        quote.src_port
    };
    quoted_key(&mut scratch.quoted_key, &quote, quote.dst_port, remote_port);
    let entry = FLOWS
        .get_ptr(&scratch.quoted_key)
        .ok_or(Counter::DropIcmpErrorNoFlow)?;
    let entry = unsafe { &*entry };
    if entry.direction != DIRECTION_OUTBOUND
        || entry.nat_addr != cfg.external_addr_v4
        || is_expired(entry, quote.protocol, now)
    {
        return Err(Counter::DropIcmpErrorNoFlow);
    }
    let (external, external_port) = (entry.nat_addr.ipv4_be(), entry.nat_port);
    rewrite_quote(
        ctx,
        pkt,
        &quote,
        QuotedEnd::Destination,
        external,
        external_port,
    )
    .and_then(|()| replace_ipv4_address(ctx, IPV4_SRC_OFF, pkt.src_v4(), external))
    .map_err(|()| Counter::DropMalformed)
}
