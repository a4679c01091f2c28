//! What gives way when the flow table is full: flows that never saw a reply, oldest first. Each CPU records the
//! flows it creates in a ring (PENDING); when an insert finds the table full, the oldest recorded flows are looked
//! at, and the first that still has no reply (or has expired) is removed, both halves, to make room. A flow that
//! saw a reply is left in the ring and skipped when its turn comes. Established flows are never removed for a new
//! one: when the ring holds nothing to give, the new flow is dropped.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::generated::bpf_loop};
use veg_common::{
    flow::{FlowEntry, FlowKey, STATE_REPLY_SEEN, is_expired},
    record::end_reason,
    stats::Counter,
};

use crate::{
    flows::remove_translation,
    maps::{FLOWS, PENDING},
    records,
    stats::count,
};

/// Flows recorded per CPU (a power of two). 256 keys are 10 KiB per CPU.
const RING: u32 = 256;
/// Recorded flows looked at, at most, to find one to give up.
const CANDIDATES: u32 = 8;

#[repr(C)]
pub struct PendingRing {
    /// Where the next flow is recorded, and the oldest recorded one not looked at yet (both count up forever).
    next: u32,
    oldest: u32,
    keys: [FlowKey; RING as usize],
}

/// Record a flow just created (its outbound key).
#[inline(always)]
pub fn record(key: &FlowKey) {
    let Some(ring) = PENDING.get_ptr_mut(0) else {
        return;
    };
    let ring = unsafe { &mut *ring };
    ring.keys[(ring.next & (RING - 1)) as usize] = *key;
    ring.next = ring.next.wrapping_add(1);
    if ring.next.wrapping_sub(ring.oldest) > RING {
        // The oldest was overwritten: start from the oldest still recorded.
        ring.oldest = ring.next.wrapping_sub(RING);
    }
}

/// The state of a search for a flow to give up (bpf_loop's context).
struct GiveUp {
    now: u64,
    /// Where in the ring the flow to give up is recorded, once one is found.
    slot: u32,
    found: bool,
}

/// Remove the oldest recorded flow that never saw a reply, or expired, to make room. Returns whether one went.
/// The loop only finds it (through bpf_loop, so the verifier checks one step once rather than every unrolled
/// copy on every path); removing it and its record happen after, once.
#[inline(always)]
pub fn give_one_up(now: u64) -> bool {
    let mut search = GiveUp {
        now,
        slot: 0,
        found: false,
    };
    let ctx = &mut search as *mut GiveUp as *mut core::ffi::c_void;
    unsafe { bpf_loop(CANDIDATES, look_at_oldest as *mut _, ctx, 0) };
    if !search.found {
        return false;
    }
    let Some(ring) = PENDING.get_ptr(0) else {
        return false;
    };
    let key = unsafe { &(*ring).keys[(search.slot & (RING - 1)) as usize] };
    let Some(entry) = FLOWS.get_ptr(key) else {
        return false;
    };
    let entry = unsafe { &*entry };
    let reason = if entry.state & STATE_REPLY_SEEN == 0 && !is_expired(entry, key.protocol, now) {
        end_reason::EVICTED
    } else {
        records::reason_over(entry)
    };
    remove_translation(key, entry, reason, now);
    count(Counter::FlowsGivenUp);
    true
}

/// One candidate: the oldest recorded flow not looked at yet. Returns 1 (stop) once one that may be given up is
/// found, or none is left.
unsafe extern "C" fn look_at_oldest(_index: u32, ctx: *mut core::ffi::c_void) -> i64 {
    let search = unsafe { &mut *(ctx as *mut GiveUp) };
    let Some(ring) = PENDING.get_ptr_mut(0) else {
        return 1;
    };
    let ring = unsafe { &mut *ring };
    if ring.oldest == ring.next {
        return 1;
    }
    let slot = ring.oldest;
    ring.oldest = ring.oldest.wrapping_add(1);
    let key = &ring.keys[(slot & (RING - 1)) as usize];
    let Some(entry) = FLOWS.get_ptr(key) else {
        return 0; // gone already
    };
    let entry = unsafe { &*entry };
    if entry.state & STATE_REPLY_SEEN != 0 && !is_expired(entry, key.protocol, search.now) {
        return 0; // established: never given up
    }
    search.slot = slot;
    search.found = true;
    1
}

/// Why a new entry was not inserted.
pub enum Refused {
    /// The key is there already.
    Exists,
    /// The table is full and nothing could be given up.
    Full,
}

/// -E2BIG: what an insert into a full hash map returns.
const TABLE_FULL: i32 = -7;

/// Insert a new entry (BPF_NOEXIST), giving nothing up when the table is full.
#[inline(always)]
pub fn insert(key: &FlowKey, entry: &FlowEntry) -> Result<(), Refused> {
    FLOWS.insert(key, entry, BPF_NOEXIST as u64).map_err(|e| {
        if e == TABLE_FULL {
            Refused::Full
        } else {
            Refused::Exists
        }
    })
}

/// Insert a new entry (BPF_NOEXIST); when the table is full, give up the oldest unanswered flow and try again.
#[inline(always)]
pub fn insert_new(key: &FlowKey, entry: &FlowEntry, now: u64) -> Result<(), Refused> {
    match insert(key, entry) {
        Err(Refused::Full) if give_one_up(now) => insert(key, entry),
        result => result,
    }
}
