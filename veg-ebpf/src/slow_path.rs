//! The slow path: packets a TC program cannot finish, handed to the agent through a ring buffer (SLOW_PATH).
//!
//! - A later fragment that came before its datagram's first fragment cannot be translated yet, and a program
//!   cannot keep a packet for later: the agent holds it until the first fragment is translated, then sends it
//!   with that translation.
//! - A packet too big for its next hop with DF clear must be fragmented, which no TC helper does: it is
//!   translated here as usual, and the agent splits it and sends the fragments.
//!
//! Both are rare on a healthy network and both could be forced by a flood, so the hand-over is rate-limited per
//! CPU and bounded by the ring's size; whatever does not fit is dropped and counted, never sent untranslated.

use aya_ebpf::helpers::generated::bpf_skb_load_bytes;
use aya_ebpf::programs::TcContext;
use veg_common::fragment::{
    DatagramKey, DatagramTranslation, SLOW_PATH_MAX_PACKET, SlowPathHeader, kind,
};
use veg_common::stats::Counter;

use crate::{
    fragments,
    maps::{HELD, SLOW_PATH, SLOW_PATH_RATE, SLOW_PATH_SCRATCH},
    packet::{L3_OFF, Packet},
    rate::{self, Rate},
};

/// A record as it is built: the header, then the packet from its IP header on.
#[repr(C)]
pub struct SlowPathRecord {
    header: SlowPathHeader,
    data: [u8; SLOW_PATH_MAX_PACKET],
}

const HEADER_LEN: usize = core::mem::size_of::<SlowPathHeader>();
const IPV4_MIN_LEN: usize = 20;

/// Packets handed to the agent per CPU: far above what fragments on a sound network need, far below what
/// would keep the agent from its other work.
const HAND_OVER_RATE: Rate = Rate {
    per_second: 10_000,
    burst: 1_000,
};

/// Copy the packet (from its IP header on) to the agent as a record of `kind`.
#[inline(always)]
fn hand_over(ctx: &TcContext, pkt: &Packet, kind: u8, mtu: u16) -> Result<(), ()> {
    // A GSO super-packet is many packets; the agent would have to segment it first. None should come here
    // (they are TCP, with DF), so they are refused rather than handled.
    if unsafe { (*ctx.skb.skb).gso_size } != 0 {
        return Err(());
    }
    let len = usize::from(pkt.tot_len);
    if !(IPV4_MIN_LEN..=SLOW_PATH_MAX_PACKET).contains(&len) {
        return Err(());
    }
    if !rate::within(&SLOW_PATH_RATE, &HAND_OVER_RATE) {
        return Err(());
    }
    let record = unsafe { &mut *SLOW_PATH_SCRATCH.get_ptr_mut(0).ok_or(())? };
    record.header = SlowPathHeader {
        kind,
        _pad: 0,
        mtu,
        len: len as u16,
        _pad2: 0,
    };
    let len = bounded_len(&record.header.len);
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            L3_OFF as u32,
            record.data.as_mut_ptr() as *mut _,
            len as u32,
        )
    };
    if rc < 0 {
        return Err(());
    }
    output(record, HEADER_LEN + len)
}

/// A length already checked to be 1..=SLOW_PATH_MAX_PACKET, in a form the verifier can see is: read back from
/// map memory (so the compiler cannot reuse the checked copy, whose bounds the verifier has lost), then
/// masked.
#[inline(always)]
fn bounded_len(len: &u16) -> usize {
    const MASK: usize = SLOW_PATH_MAX_PACKET - 1;
    let len = usize::from(unsafe { core::ptr::read_volatile(len) });
    (len.wrapping_sub(1) & MASK) + 1
}

#[inline(always)]
fn output(record: &SlowPathRecord, len: usize) -> Result<(), ()> {
    let bytes = unsafe { core::slice::from_raw_parts(record as *const _ as *const u8, len) };
    SLOW_PATH.output::<[u8]>(bytes, 0).map_err(|_| ())
}

/// Give a later fragment that came before its first fragment to the agent to hold (`kind::HOLD_*`).
#[inline(always)]
pub fn hold(ctx: &TcContext, pkt: &Packet, kind: u8) -> Result<(), ()> {
    // Marked before it is handed over, so that a first fragment translated meanwhile on another CPU either sees
    // the mark or is seen by the agent when it looks the datagram up.
    let _ = HELD.insert(&fragments::key(pkt), &0, 0);
    hand_over(ctx, pkt, kind, 0)
}

/// The counter for a hand-over to be held: held, or refused (`hold`, `hold_v6`).
#[inline(always)]
pub fn held(handed_over: Result<(), ()>) -> Counter {
    match handed_over {
        Ok(()) => Counter::FragmentsHeld,
        Err(()) => Counter::SlowPathDropped,
    }
}

/// Give an IPv6 later fragment that came before its first fragment to the agent to hold. No mark and no notice
/// for IPv6: the agent looks the datagram up in FRAGMENTS_V6 every 100 ms, which is when it is released.
#[inline(always)]
pub fn hold_v6(ctx: &TcContext, pkt: &Packet, kind: u8) -> Result<(), ()> {
    hand_over(ctx, pkt, kind, 0)
}

/// Give a translated packet too big for its next hop (`mtu`), DF clear, to the agent to fragment and send.
#[inline(always)]
pub fn fragment(ctx: &TcContext, pkt: &Packet, mtu: u16) -> Result<(), ()> {
    hand_over(ctx, pkt, kind::FRAGMENT, mtu)
}

/// A datagram's first fragment was translated: if fragments of it wait in the agent, tell it how.
#[inline(always)]
pub fn first_arrived(key: &DatagramKey, translation: &DatagramTranslation) {
    if unsafe { HELD.get(key) }.is_none() {
        return;
    }
    let _ = HELD.remove(key);
    let Some(record) = SLOW_PATH_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let record = unsafe { &mut *record };
    const KEY_LEN: usize = core::mem::size_of::<DatagramKey>();
    const LEN: usize = KEY_LEN + core::mem::size_of::<DatagramTranslation>();
    record.header = SlowPathHeader {
        kind: kind::FIRST_ARRIVED,
        _pad: 0,
        mtu: 0,
        len: LEN as u16,
        _pad2: 0,
    };
    unsafe {
        let data = record.data.as_mut_ptr();
        core::ptr::write_unaligned(data as *mut DatagramKey, *key);
        core::ptr::write_unaligned(data.add(KEY_LEN) as *mut DatagramTranslation, *translation);
    }
    // A lost notice only delays the held fragments until the agent's next look (it checks every 100 ms).
    let _ = output(record, HEADER_LEN + LEN);
}
