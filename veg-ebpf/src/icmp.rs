//! ICMP errors the instance sends as a router does: time exceeded when a packet's TTL would expire on forwarding,
//! fragmentation needed when a packet with DF set is too big for the next hop, and administratively prohibited
//! when a new flow can get no port or no room in the flow table (RFC 5508 REQ-8). The kernel cannot answer for the
//! datapath: it does not forward on the instance's interfaces (route.rs), so it never sees these packets as a
//! router would.
//!
//! The packet itself becomes the error, in place: cut to its IP header and the QUOTE_L4 bytes after it, given a new
//! Ethernet, IP and ICMP header in front, and sent back to its sender along the route to it. The quote is the
//! packet as it arrived, untranslated, which is what its sender knows. Errors are rate-limited per CPU, as the
//! kernel's are, so that a flood of expiring packets cannot turn the instance into a flood of errors.

use aya_ebpf::{
    helpers::generated::{bpf_csum_diff, bpf_skb_change_head, bpf_skb_change_tail},
    programs::TcContext,
};
use veg_common::{flow::PROTO_ICMP, stats::Counter};

use crate::{
    maps::ICMP_RATE,
    packet::{ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, L3_OFF, Packet, write_at},
    rate::{self, Rate},
    route,
    stats::drop_packet,
};

/// An error the instance sends: its type and code, and the 4 bytes after the checksum. A struct, not an enum:
/// every field is always set, so the compiler cannot pass an unset variant field to the (non-inlined) sender,
/// which the verifier refuses.
#[derive(Clone, Copy)]
pub struct IcmpError {
    kind: u8,
    code: u8,
    /// Network byte order.
    rest: u32,
}

impl IcmpError {
    /// Type 11 code 0: TTL exceeded in transit.
    pub const TIME_EXCEEDED: IcmpError = IcmpError {
        kind: 11,
        code: 0,
        rest: 0,
    };

    /// Type 3 code 13: communication administratively prohibited (no port, or no room, for a new flow).
    pub const ADMINISTRATIVELY_PROHIBITED: IcmpError = IcmpError {
        kind: 3,
        code: 13,
        rest: 0,
    };

    /// Type 3 code 4, with the next hop's MTU.
    #[inline(always)]
    pub fn fragmentation_needed(mtu: u16) -> IcmpError {
        let [hi, lo] = mtu.to_be_bytes();
        IcmpError {
            kind: 3,
            code: 4,
            rest: u32::from_ne_bytes([0, 0, hi, lo]),
        }
    }
}

/// Bytes of the offending packet quoted after its IP header: RFC 792 asks for 8; 20 keep a TCP header whole, so
/// that an offloaded checksum's field (CHECKSUM_PARTIAL, which points into the old transport header) stays inside
/// the packet. A shorter packet is padded with zeros.
const QUOTE_L4: usize = 20;
/// The IPv4 and ICMP headers put in front of the quote.
const NEW_HEADERS: u32 = 28;
const ETH_LEN: usize = 14;
const IP_LEN: usize = 20;
const ICMP_OFF: usize = ETH_LEN + IP_LEN;
const QUOTE_OFF: usize = ICMP_OFF + 8;
/// IPTOS_PREC_INTERNETCONTROL, as the kernel marks its ICMP errors.
const TOS_INTERNET_CONTROL: u8 = 0xc0;
const TTL: u8 = 64;

/// At most this many errors a second per CPU, in bursts of at most 50 (the kernel's icmp_msgs_per_sec and
/// icmp_msgs_burst).
const ERROR_RATE: Rate = Rate {
    per_second: 1000,
    burst: 50,
};

/// Whether this CPU may send one more error now (ICMP and ICMPv6 share the budget, as the kernel's do not need
/// to: one instance, one flood to contain).
#[inline(always)]
pub fn within_error_rate() -> bool {
    rate::within(&ICMP_RATE, &ERROR_RATE)
}

/// Whether a packet may be answered with an error at all (RFC 1812 4.3.2.7): never an ICMP error itself, never
/// a fragment other than the first.
#[inline(always)]
fn answerable(pkt: &Packet) -> bool {
    let query = pkt.protocol != PROTO_ICMP
        || pkt.icmp_type == ICMP_ECHO_REQUEST
        || pkt.icmp_type == ICMP_ECHO_REPLY;
    query && !pkt.later_fragment
}

/// Add the two 16-bit halves of a 32-bit word, as it lies in the packet (network byte order), to a
/// ones'-complement sum.
#[inline(always)]
fn add_word(sum: u32, word_be: u32) -> u32 {
    let [a, b, c, d] = word_be.to_ne_bytes();
    sum + (u32::from(a) << 8 | u32::from(b)) + (u32::from(c) << 8 | u32::from(d))
}

/// A 32-bit partial sum from bpf_csum_diff (of 16-bit words in the machine's byte order) as a 16-bit sum of
/// big-endian words, not complemented: ones'-complement sums commute with swapping bytes.
#[inline(always)]
fn fold_native(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    u16::from_be(sum as u16)
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The sum of an address's two 16-bit halves (the address in network byte order).
#[inline(always)]
fn halves(addr_be: u32) -> u32 {
    let addr = u32::from_be(addr_be);
    (addr >> 16) + (addr & 0xffff)
}

/// A 32-bit word from four bytes in wire order.
#[inline(always)]
fn word(bytes: [u8; 4]) -> u32 {
    u32::from_ne_bytes(bytes)
}

/// Turn the packet into `error` from `from` (network byte order) to its sender, and send it (the caller counts
/// why). The verdict is the redirect, or a drop when the packet may not be answered, the rate is exceeded, or the
/// error cannot be built or routed.
#[inline(always)]
pub fn send_error(ctx: &TcContext, pkt: &Packet, error: &IcmpError, from: u32) -> i32 {
    if from == 0 || !answerable(pkt) {
        return drop_packet(Counter::IcmpErrorsNotSent);
    }
    if !within_error_rate() {
        return drop_packet(Counter::IcmpErrorsRateLimited);
    }
    let to = pkt.src_v4();
    let quoted_ip_len = (pkt.l4() - L3_OFF) as u32;
    if build(ctx, quoted_ip_len, error, from, to).is_err() {
        return drop_packet(Counter::IcmpErrorsNotSent);
    }
    // Small enough for any link: checked against the device only.
    let route = route::lookup(ctx, PROTO_ICMP, from, to, 0);
    // Back where the packet came from, through the interface's transmit (never into the VPC's veth peer:
    // route::into_peer).
    match route::redirect(ctx, &route, false) {
        Ok(verdict) => verdict,
        Err(()) => drop_packet(Counter::IcmpErrorsNotSent),
    }
}

/// Rewrite the packet into the error, in place. A function of its own in the object (not inlined), written
/// without buffers: its frame and the program's must fit the verifier's 512 bytes of stack together.
#[inline(never)]
fn build(
    ctx: &TcContext,
    quoted_ip_len: u32,
    error: &IcmpError,
    from: u32,
    to: u32,
) -> Result<(), ()> {
    // Bounded for the verifier (the packet's fields live in map memory, unknown to it): an IPv4 header.
    if !(20..=60).contains(&quoted_ip_len) {
        return Err(());
    }
    let quoted_ip_len = quoted_ip_len as usize;
    let skb = ctx.skb.skb as *mut _;
    let quote_end = (ETH_LEN + quoted_ip_len + QUOTE_L4) as u32;
    if unsafe { bpf_skb_change_tail(skb, quote_end, 0) } != 0
        || unsafe { bpf_skb_change_head(skb, NEW_HEADERS, 0) } != 0
    {
        return Err(());
    }
    let IcmpError { kind, code, rest } = *error;
    let total_len = (IP_LEN + 8 + quoted_ip_len + QUOTE_L4) as u16;
    let [len_hi, len_lo] = total_len.to_be_bytes();
    // DF with ID 0: an atomic datagram (RFC 6864), small enough never to need fragmenting.
    let version_tos_len = word([0x45, TOS_INTERNET_CONTROL, len_hi, len_lo]);
    let id_frag = word([0, 0, 0x40, 0]);
    let ip_sum = (0x4500 | u32::from(TOS_INTERNET_CONTROL))
        + u32::from(total_len)
        + 0x4000
        + (u32::from(TTL) << 8 | u32::from(PROTO_ICMP))
        + halves(from)
        + halves(to);
    let [ip_hi, ip_lo] = fold(ip_sum).to_be_bytes();
    // The headers first, at fixed offsets the verifier can check.
    write_at(ctx, 12, 0x0800u16.to_be())?;
    write_at(ctx, ETH_LEN, version_tos_len)?;
    write_at(ctx, ETH_LEN + 4, id_frag)?;
    write_at(ctx, ETH_LEN + 8, word([TTL, PROTO_ICMP, ip_hi, ip_lo]))?;
    write_at(ctx, ETH_LEN + 12, from)?;
    write_at(ctx, ETH_LEN + 16, to)?;
    write_at(ctx, ICMP_OFF + 4, rest)?;
    // The ICMP checksum covers its header and the quote. The quote's IP header sums to zero already (its own
    // checksum makes it so), so only the QUOTE_L4 bytes after that header count; bpf_csum_diff sums them where
    // they lie (in the machine's byte order: swapped back below).
    let quote_l4 = QUOTE_OFF + quoted_ip_len;
    let start = ctx.data();
    if start + quote_l4 + QUOTE_L4 > ctx.data_end() {
        return Err(());
    }
    let quoted = (start + quote_l4) as *mut u32;
    let native = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, quoted, QUOTE_L4 as u32, 0) };
    let quote_sum = u32::from(fold_native(native as u32));
    let icmp_csum = fold(add_word(
        add_word(quote_sum, word([kind, code, 0, 0])),
        rest,
    ));
    let [csum_hi, csum_lo] = icmp_csum.to_be_bytes();
    write_at(ctx, ICMP_OFF, [kind, code, csum_hi, csum_lo])
}
