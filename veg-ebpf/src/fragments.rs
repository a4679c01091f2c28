//! Fragments of translated datagrams. Only a datagram's first fragment carries its ports, so it alone can find the
//! flow; it is translated as any packet is, and the translation of its address is remembered under the datagram's
//! identity (source, destination, IP identification, protocol) for the fragments that follow it. Those get the
//! same address (no ports to rewrite: the transport checksum is in the first fragment, updated there).
//!
//! A fragment that arrives before its first fragment finds nothing remembered: the programs cannot hold a packet,
//! so it goes to the agent (slow_path.rs), which holds it until the first fragment's translation is known and then
//! sends it translated. Remembering a translation tells the agent when fragments of that datagram wait.

use aya_ebpf::helpers::generated::bpf_ktime_get_ns;
use veg_common::{
    address::Address,
    fragment::{DatagramKey, DatagramKeyV6, DatagramTranslation, DatagramTranslationV6},
};

use crate::{
    maps::{FRAGMENTS, FRAGMENTS_V6, flow_scratch},
    packet::Packet,
    slow_path,
};

/// The identity of the datagram a packet is a fragment of.
#[inline(always)]
pub fn key(pkt: &Packet) -> DatagramKey {
    DatagramKey {
        src: pkt.src_v4(),
        dst: pkt.dst_v4(),
        id: pkt.ip_id,
        protocol: pkt.protocol,
        _pad: 0,
    }
}

/// Remember that the datagram's first fragment `pkt` was rewritten to `addr` at `end` (fragment::END_*), and let
/// its fragments waiting in the agent go.
#[inline(always)]
pub fn remember(pkt: &Packet, end: u8, addr: u32) {
    let key = key(pkt);
    let translation = DatagramTranslation {
        addr,
        end,
        _pad: [0; 3],
        seen_ns: unsafe { bpf_ktime_get_ns() },
    };
    let _ = FRAGMENTS.insert(&key, &translation, 0);
    slow_path::first_arrived(&key, &translation);
}

/// The address a later fragment is rewritten to, if its datagram's first fragment was seen lately.
#[inline(always)]
pub fn translation(pkt: &Packet) -> Option<u32> {
    let found = unsafe { FRAGMENTS.get(&key(pkt))? };
    let now = unsafe { bpf_ktime_get_ns() };
    found.is_fresh(now).then_some(found.addr)
}

/// IPv6: the datagram's identity, built in the per-CPU scratch (40 bytes the program's stack cannot spare).
#[inline(always)]
fn key_v6(pkt: &Packet) -> Option<&'static DatagramKeyV6> {
    let key = &mut flow_scratch()?.datagram_v6;
    key.src = pkt.src;
    key.dst = pkt.dst;
    key.id = pkt.ipv6_id;
    key.protocol = pkt.protocol;
    key._pad = [0; 3];
    Some(key)
}

/// IPv6: remember that the datagram's first fragment `pkt` was rewritten to `addr` at `end`. The agent finds it
/// here for the datagram's fragments it holds.
#[inline(always)]
pub fn remember_v6(pkt: &Packet, end: u8, addr: &Address) {
    let Some(key) = key_v6(pkt) else {
        return;
    };
    let translation = DatagramTranslationV6 {
        addr: *addr,
        end,
        _pad: [0; 7],
        seen_ns: unsafe { bpf_ktime_get_ns() },
    };
    let _ = FRAGMENTS_V6.insert(key, &translation, 0);
}

/// IPv6: the address a later fragment is rewritten to, if its datagram's first fragment was seen lately.
#[inline(always)]
pub fn translation_v6(pkt: &Packet) -> Option<&'static Address> {
    let found = unsafe { FRAGMENTS_V6.get(key_v6(pkt)?)? };
    let now = unsafe { bpf_ktime_get_ns() };
    found.is_fresh(now).then_some(&found.addr)
}
