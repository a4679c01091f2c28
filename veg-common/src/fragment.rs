//! Fragmented datagrams, and the datapath's slow path: the few packets the programs hand to the agent because a
//! TC program cannot do what they need (hold a packet for later, or split one in several).

use crate::address::Address;

/// A datagram's identity (RFC 791): addresses in network byte order, the IP identification as on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DatagramKey {
    pub src: u32,
    pub dst: u32,
    pub id: u16,
    pub protocol: u8,
    pub _pad: u8,
}

/// The end of a datagram whose address a translation rewrites.
pub const END_SOURCE: u8 = 0;
pub const END_DESTINATION: u8 = 1;

/// How a datagram's first fragment was translated, for the fragments that follow it: the address written at
/// `end`, and when (CLOCK_MONOTONIC ns).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatagramTranslation {
    pub addr: u32,
    pub end: u8,
    pub _pad: [u8; 3],
    pub seen_ns: u64,
}

/// How long after its first fragment a datagram's fragments are translated (the kernel's ipfrag_time).
pub const FRAGMENT_TIMEOUT_NS: u64 = 30_000_000_000;

impl DatagramTranslation {
    /// Nanoseconds left, at `now_ns`, during which the datagram's later fragments are given this translation; 0
    /// once it has expired. (A translation written just after `now_ns` was read counts as new.)
    #[inline(always)]
    pub fn remaining_ns(&self, now_ns: u64) -> u64 {
        remaining_ns(self.seen_ns, now_ns)
    }

    /// Whether the datagram's later fragments are still given this translation at `now_ns`.
    #[inline(always)]
    pub fn is_fresh(&self, now_ns: u64) -> bool {
        self.remaining_ns(now_ns) > 0
    }
}

/// Nanoseconds left at `now_ns` of a translation seen at `seen_ns`.
#[inline(always)]
fn remaining_ns(seen_ns: u64, now_ns: u64) -> u64 {
    FRAGMENT_TIMEOUT_NS.saturating_sub(now_ns.saturating_sub(seen_ns))
}

/// An IPv6 datagram's identity (RFC 8200 4.5): its addresses, the fragment header's 32-bit identification (as on
/// the wire) and the transport protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DatagramKeyV6 {
    pub src: Address,
    pub dst: Address,
    pub id: u32,
    pub protocol: u8,
    pub _pad: [u8; 3],
}

/// How an IPv6 datagram's first fragment was translated: the address written at `end`, and when.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatagramTranslationV6 {
    pub addr: Address,
    pub end: u8,
    pub _pad: [u8; 7],
    pub seen_ns: u64,
}

// Pinned tables keep these across an upgrade: their layouts are fixed.
const _: () = assert!(core::mem::size_of::<DatagramKeyV6>() == 40);
const _: () = assert!(core::mem::size_of::<DatagramTranslationV6>() == 32);

impl DatagramTranslationV6 {
    /// As DatagramTranslation's.
    #[inline(always)]
    pub fn remaining_ns(&self, now_ns: u64) -> u64 {
        remaining_ns(self.seen_ns, now_ns)
    }

    /// Whether the datagram's later fragments are still given this translation at `now_ns`.
    #[inline(always)]
    pub fn is_fresh(&self, now_ns: u64) -> bool {
        self.remaining_ns(now_ns) > 0
    }
}

/// What a slow-path record asks of the agent.
pub mod kind {
    /// A later fragment from a SNAT source that came before its first fragment, as it arrived (dropped by the
    /// program): to be given its first fragment's source address, once that comes, and sent. IPv4 or IPv6 (the
    /// packet's version says which).
    pub const HOLD_FROM_VPC: u8 = 1;
    /// A later fragment to the external address that came before its first fragment, as it arrived (also left to
    /// the instance's stack, in case the datagram is the instance's own): to be given its first fragment's
    /// destination, if that is translated, and sent.
    pub const HOLD_FROM_OUTSIDE: u8 = 2;
    /// A packet too big for its next hop without DF, already translated and its TTL decremented: to be split into
    /// fragments of at most `mtu` bytes and sent.
    pub const FRAGMENT: u8 = 3;
    /// The first fragment of a datagram with held fragments came: the record's data is its DatagramKey and
    /// DatagramTranslation.
    pub const FIRST_ARRIVED: u8 = 4;
}

/// Every slow-path record starts with this; `len` bytes of data follow (an IPv4 packet from its header on, or
/// for FIRST_ARRIVED the datagram's key and translation).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SlowPathHeader {
    pub kind: u8,
    pub _pad: u8,
    /// For FRAGMENT: the next hop's MTU.
    pub mtu: u16,
    pub len: u16,
    pub _pad2: u16,
}

/// The largest packet the slow path carries: a 9000-byte jumbo frame and more. Larger ones are dropped (counted as
/// slow_path_dropped). A power of two: the programs bound lengths with it as a mask.
pub const SLOW_PATH_MAX_PACKET: usize = 16384;

#[cfg(feature = "user")]
mod user {
    unsafe impl aya::Pod for super::DatagramKey {}
    unsafe impl aya::Pod for super::DatagramTranslation {}
    unsafe impl aya::Pod for super::DatagramKeyV6 {}
    unsafe impl aya::Pod for super::DatagramTranslationV6 {}
}
