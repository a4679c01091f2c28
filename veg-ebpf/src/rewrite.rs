//! The one place that rewrites headers: an address and its port (or ICMP echo identifier), the L3 and L4
//! checksums with them, and the TTL (IPv6: the address, port, transport checksum and hop limit). Transport
//! checksums are updated incrementally by the kernel's helpers, which also keep CHECKSUM_PARTIAL (offloaded)
//! packets and CHECKSUM_COMPLETE sums right; a UDP datagram without a checksum keeps having none. The IPv4 header
//! checksum, which no offload and no skb sum involves, is updated here directly (RFC 1624), without a helper call.
//! The fields themselves are written directly, after their checksums.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use veg_common::{
    address::Address,
    flow::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP},
};

use crate::packet::{
    IPV4_CSUM_OFF, IPV4_DST_OFF, IPV4_SRC_OFF, IPV4_TTL_OFF, IPV6_DST_OFF, IPV6_HOP_LIMIT_OFF,
    IPV6_SRC_OFF, L3_OFF, Packet, read_at, write_at,
};

/// Which end of the packet is rewritten.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    Source,
    Destination,
}

/// Where the L4 checksum and the port (or identifier) of `end` are, and the checksum flags for this protocol.
#[inline(always)]
fn l4_layout(protocol: u8, end: End) -> Option<(usize, usize, u64)> {
    let port = if end == End::Source { 0 } else { 2 };
    match protocol {
        PROTO_TCP => Some((16, port, BPF_F_PSEUDO_HDR as u64)),
        PROTO_UDP => Some((6, port, (BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0) as u64)),
        // ICMP has no pseudo-header; the echo identifier sits at offset 4 in both directions.
        PROTO_ICMP => Some((2, 4, 0)),
        _ => None,
    }
}

/// Rewrite one end's address and port, fixing both checksums. The packet has been parsed, so every offset is
/// inside it; a helper failure still aborts before any field is left half-written where it can be avoided.
#[inline(always)]
pub fn rewrite_end(
    ctx: &TcContext,
    pkt: &Packet,
    end: End,
    new_addr: u32,
    new_port: u16,
) -> Result<(), ()> {
    let (csum_off, port_off, pseudo_flags) = l4_layout(pkt.protocol, end).ok_or(())?;
    let (old_addr, addr_off) = match end {
        End::Source => (pkt.src_v4(), IPV4_SRC_OFF),
        End::Destination => (pkt.dst_v4(), IPV4_DST_OFF),
    };
    let old_port = match end {
        End::Source => pkt.src_port,
        End::Destination => pkt.dst_port,
    };
    let l4_csum = pkt.l4() + csum_off;
    // A UDP datagram without a checksum has nothing to update (MARK_MANGLED_0 keeps it at 0).
    let update_l4 = !(pkt.protocol == PROTO_UDP && pkt.udp_checksum_zero);
    if update_l4 {
        if pseudo_flags & BPF_F_PSEUDO_HDR as u64 != 0 {
            ctx.l4_csum_replace(l4_csum, old_addr as u64, new_addr as u64, pseudo_flags | 4)
                .map_err(|_| ())?;
        }
        let port_flags = pseudo_flags & !(BPF_F_PSEUDO_HDR as u64);
        ctx.l4_csum_replace(l4_csum, old_port as u64, new_port as u64, port_flags | 2)
            .map_err(|_| ())?;
    }
    replace_ipv4_address(ctx, addr_off, old_addr, new_addr)?;
    write_at(ctx, pkt.l4() + port_off, new_port)
}

/// Rewrite one end's address alone, with the IP checksum: for a later fragment, which has no transport header.
#[inline(always)]
pub fn rewrite_address(ctx: &TcContext, pkt: &Packet, end: End, new_addr: u32) -> Result<(), ()> {
    let (old_addr, addr_off) = match end {
        End::Source => (pkt.src_v4(), IPV4_SRC_OFF),
        End::Destination => (pkt.dst_v4(), IPV4_DST_OFF),
    };
    replace_ipv4_address(ctx, addr_off, old_addr, new_addr)
}

/// Replace the IPv4 address at `addr_off` in the header (`old` with `new`, network byte order) and update the
/// header checksum with it.
#[inline(always)]
pub fn replace_ipv4_address(
    ctx: &TcContext,
    addr_off: usize,
    old: u32,
    new: u32,
) -> Result<(), ()> {
    update_ip_checksum(ctx, word_diff(old, new))?;
    write_at(ctx, L3_OFF + addr_off, new)
}

/// The checksum difference of replacing the 32-bit field `old` with `new`: the sum of the new 16-bit words and
/// of the old ones complemented (as the words lie in memory; a ones'-complement sum is the same in either byte
/// order as long as every word is read alike).
#[inline(always)]
fn word_diff(old: u32, new: u32) -> u32 {
    u32::from(!(old as u16)) + u32::from(!((old >> 16) as u16)) + (new & 0xffff) + (new >> 16)
}

/// Update the IPv4 header checksum by `diff` (RFC 1624: HC' = ~(~HC + ~m + m')).
#[inline(always)]
fn update_ip_checksum(ctx: &TcContext, diff: u32) -> Result<(), ()> {
    let offset = L3_OFF + IPV4_CSUM_OFF;
    let old: u16 = read_at(ctx, offset)?;
    let mut sum = u32::from(!old) + diff;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    write_at(ctx, offset, !(sum as u16))
}

/// Decrement the TTL as any router does. The caller has checked that it stays above zero.
#[inline(always)]
pub fn decrement_ttl(ctx: &TcContext, pkt: &Packet) -> Result<(), ()> {
    let off = L3_OFF + IPV4_TTL_OFF;
    // TTL and protocol form one 16-bit word of the header checksum.
    let old_word = u16::from_ne_bytes([pkt.ttl, pkt.protocol]);
    let new_word = u16::from_ne_bytes([pkt.ttl - 1, pkt.protocol]);
    update_ip_checksum(ctx, u32::from(!old_word) + u32::from(new_word))?;
    write_at(ctx, off, pkt.ttl - 1)
}

/// IPv6: where the L4 checksum and the port (or identifier) of `end` are. All three checksums cover the
/// pseudo-header, ICMPv6's included (unlike ICMP's).
#[inline(always)]
fn l4_layout_v6(protocol: u8, end: End) -> Option<(usize, usize, u64)> {
    let port = if end == End::Source { 0 } else { 2 };
    let pseudo = BPF_F_PSEUDO_HDR as u64;
    match protocol {
        PROTO_TCP => Some((16, port, pseudo)),
        // A zero UDP checksum is refused at parsing: IPv6 requires one.
        PROTO_UDP => Some((6, port, pseudo | BPF_F_MARK_MANGLED_0 as u64)),
        PROTO_ICMPV6 => Some((2, 4, pseudo)),
        _ => None,
    }
}

/// The checksum difference of replacing `old` with `new`, as the kernel's helpers take it (size 0): the
/// ones'-complement sum of the new 16-bit words and of the old ones negated, read in the machine's byte order as
/// the kernel sums packet memory.
#[inline(always)]
pub fn address_diff(old: &Address, new: &Address) -> u32 {
    let mut sum = 0u32;
    for i in 0..8 {
        let old_word = u16::from_ne_bytes([old.bytes[2 * i], old.bytes[2 * i + 1]]);
        let new_word = u16::from_ne_bytes([new.bytes[2 * i], new.bytes[2 * i + 1]]);
        sum += u32::from(!old_word) + u32::from(new_word);
    }
    sum
}

/// Rewrite one end's IPv6 address and port (or ICMPv6 echo identifier), fixing the transport checksum; IPv6 has
/// no header checksum.
#[inline(always)]
pub fn rewrite_end_v6(
    ctx: &TcContext,
    pkt: &Packet,
    end: End,
    new_addr: &Address,
    new_port: u16,
) -> Result<(), ()> {
    let (csum_off, port_off, pseudo_flags) = l4_layout_v6(pkt.protocol, end).ok_or(())?;
    let (old_addr, addr_off, old_port) = match end {
        End::Source => (&pkt.src, IPV6_SRC_OFF, pkt.src_port),
        End::Destination => (&pkt.dst, IPV6_DST_OFF, pkt.dst_port),
    };
    let l4_csum = pkt.l4() + csum_off;
    let diff = address_diff(old_addr, new_addr);
    ctx.l4_csum_replace(l4_csum, 0, u64::from(diff), pseudo_flags)
        .map_err(|_| ())?;
    let port_flags = pseudo_flags & !(BPF_F_PSEUDO_HDR as u64);
    ctx.l4_csum_replace(l4_csum, old_port as u64, new_port as u64, port_flags | 2)
        .map_err(|_| ())?;
    write_at(ctx, L3_OFF + addr_off, new_addr.bytes)?;
    write_at(ctx, pkt.l4() + port_off, new_port)
}

/// Decrement the hop limit as any router does (no checksum covers it). The caller has checked it stays above 0.
#[inline(always)]
pub fn decrement_hop_limit(ctx: &TcContext, pkt: &Packet) -> Result<(), ()> {
    write_at(ctx, L3_OFF + IPV6_HOP_LIMIT_OFF, pkt.ttl - 1)
}

/// Rewrite one end's IPv6 address alone, for a later fragment: it has no transport header, and IPv6 no header
/// checksum (the first fragment's transport checksum, which covers the whole datagram, was updated with it).
#[inline(always)]
pub fn rewrite_address_v6(ctx: &TcContext, end: End, new_addr: &Address) -> Result<(), ()> {
    let offset = match end {
        End::Source => IPV6_SRC_OFF,
        End::Destination => IPV6_DST_OFF,
    };
    write_at(ctx, L3_OFF + offset, new_addr.bytes)
}
