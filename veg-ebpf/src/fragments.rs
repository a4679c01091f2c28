//! Fragments of translated datagrams. Only a datagram's first fragment carries its ports, so it alone can find the
//! flow; it is translated as any packet is, and the translation of its address is remembered under the datagram's
//! identity (source, destination, IP identification, protocol) for the fragments that follow it. Those get the
//! same address (no ports to rewrite: the transport checksum is in the first fragment, updated there).
//!
//! A fragment that arrives before its first fragment finds nothing remembered and is dropped (counted): the
//! programs cannot hold a packet until its first fragment comes.

use aya_ebpf::helpers::generated::bpf_ktime_get_ns;

use crate::maps::FRAGMENTS;

/// How long a datagram's fragments are followed after its first (the kernel's ipfrag_time).
const FRAGMENT_TIMEOUT_NS: u64 = 30_000_000_000;

/// A datagram's identity, addresses in network byte order.
#[repr(C)]
pub struct DatagramKey {
    src: u32,
    dst: u32,
    id: u16,
    protocol: u8,
    _pad: u8,
}

/// The address a datagram's later fragments are rewritten to, and when its first fragment was seen.
#[repr(C)]
pub struct DatagramTranslation {
    addr: u32,
    _pad: u32,
    seen_ns: u64,
}

#[inline(always)]
fn key(src: u32, dst: u32, id: u16, protocol: u8) -> DatagramKey {
    DatagramKey {
        src,
        dst,
        id,
        protocol,
        _pad: 0,
    }
}

/// Remember that the datagram's first fragment was rewritten to `addr` (the end the caller rewrites).
#[inline(always)]
pub fn remember(src: u32, dst: u32, id: u16, protocol: u8, addr: u32) {
    let translation = DatagramTranslation {
        addr,
        _pad: 0,
        seen_ns: unsafe { bpf_ktime_get_ns() },
    };
    let _ = FRAGMENTS.insert(&key(src, dst, id, protocol), &translation, 0);
}

/// The address a later fragment of the datagram is rewritten to, if its first fragment was seen lately.
#[inline(always)]
pub fn translation(src: u32, dst: u32, id: u16, protocol: u8) -> Option<u32> {
    let found = unsafe { FRAGMENTS.get(&key(src, dst, id, protocol))? };
    let now = unsafe { bpf_ktime_get_ns() };
    (now.wrapping_sub(found.seen_ns) < FRAGMENT_TIMEOUT_NS).then_some(found.addr)
}
