//! Translation records (veg-common's record.rs): a record when a translation is created and when the datapath
//! removes one, and the packet and byte counts the ended records carry (FLOW_COUNTS, one entry per translation
//! keyed by its outbound key). All of it only while the agent has turned records on (GatewayConfig::flow_records);
//! a record that finds the ring full is counted as lost, and the translation goes on regardless.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use veg_common::{
    config::GatewayConfig,
    flow::{DIRECTION_OUTBOUND, FlowCounts, FlowEntry, FlowKey, is_closed},
    record::{FlowRecord, end_reason, event},
    stats::Counter,
};

use crate::{
    maps::{FLOW_COUNTS, FLOW_RECORDS, RECORD_SCRATCH, config, flow_scratch},
    packet::Packet,
    stats::count,
};

/// Count a packet on its translation: `key` and `entry` are the half it matched. Atomic adds: two CPUs may carry
/// packets of one direction at once. The translation's first packet starts its counts.
#[inline(always)]
pub fn account(key: &FlowKey, entry: &FlowEntry, pkt: &Packet, cfg: &GatewayConfig) {
    if cfg.flow_records == 0 {
        return;
    }
    let Some(scratch) = flow_scratch() else {
        return;
    };
    let outbound = entry.direction == DIRECTION_OUTBOUND;
    let counts_key = if outbound {
        key
    } else {
        // The remote's packet: its translation's outbound key is the client's tuple, written in the scratch.
        let out = &mut scratch.counts_key;
        out.src_addr = entry.nat_addr;
        out.dst_addr = key.src_addr;
        out.src_port = entry.nat_port;
        out.dst_port = key.src_port;
        out.protocol = key.protocol;
        out.family = key.family;
        out._pad = [0; 2];
        &scratch.counts_key
    };
    let (packets, bytes) = (u64::from(pkt.segments), u64::from(pkt.tot_len));
    if let Some(counts) = FLOW_COUNTS.get_ptr_mut(counts_key) {
        add(counts, outbound, packets, bytes);
        return;
    }
    let start = &mut scratch.counts;
    (start.packets_out, start.bytes_out) = if outbound { (packets, bytes) } else { (0, 0) };
    (start.packets_in, start.bytes_in) = if outbound { (0, 0) } else { (packets, bytes) };
    if FLOW_COUNTS
        .insert(counts_key, &scratch.counts, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        return;
    }
    // Another CPU started them meanwhile, or the table is full.
    match FLOW_COUNTS.get_ptr_mut(counts_key) {
        Some(counts) => add(counts, outbound, packets, bytes),
        None => count(Counter::FlowCountsLost),
    }
}

#[inline(always)]
fn add(counts: *mut FlowCounts, outbound: bool, packets: u64, bytes: u64) {
    unsafe {
        let (packets_field, bytes_field) = if outbound {
            (&raw mut (*counts).packets_out, &raw mut (*counts).bytes_out)
        } else {
            (&raw mut (*counts).packets_in, &raw mut (*counts).bytes_in)
        };
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(packets_field, packets);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(bytes_field, bytes);
    }
}

/// The per-CPU record being written: records are built in map memory and copied into the ring
/// (bpf_ringbuf_output), rather than reserved in it: a reservation is a reference the verifier tracks through
/// every path after it.
#[inline(always)]
fn scratch() -> Option<&'static mut FlowRecord> {
    RECORD_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Unread bytes in the ring past which the agent is woken for each record. Below it records are sent without a
/// wake-up, and the agent drains the ring on its own every few milliseconds (records.rs in the agent): a wake-up
/// per record costs the datapath a deferred interrupt and the agent a task switch per record, which held it to a
/// few tens of thousands of records a second.
const WAKE_UP_ABOVE: u64 = 256 * 1024;

/// Send the record, or count it lost.
#[inline(always)]
fn send(record: &FlowRecord) {
    let flags = if FLOW_RECORDS.query(BPF_RB_AVAIL_DATA as u64) > WAKE_UP_ABOVE {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if FLOW_RECORDS
        .output::<FlowRecord>(record, u64::from(flags))
        .is_err()
    {
        count(Counter::FlowRecordsLost);
    }
}

/// A translation was created for the flow `key` (as the client sent it), to `entry`'s address and port.
#[inline(always)]
pub fn created(key: &FlowKey, entry: &FlowEntry, cfg: &GatewayConfig) {
    if cfg.flow_records == 0 {
        return;
    }
    let Some(record) = scratch() else {
        return;
    };
    record.event = event::CREATED;
    record.reason = 0;
    record.time_ns = entry.created_ns;
    record.created_ns = entry.created_ns;
    record.key = *key;
    record.nat_addr = entry.nat_addr;
    record.nat_port = entry.nat_port;
    record.packets_out = 0;
    record.bytes_out = 0;
    record.packets_in = 0;
    record.bytes_in = 0;
    send(record);
}

/// The datapath is removing the translation whose half `entry` is found under `key`, for `reason`
/// (record::end_reason). `outbound_key` is the translation's outbound key (`key` itself, or its partner's), and
/// `counted` whether the counts under it are this translation's (not when the client's tuple has a newer
/// translation since): those go into the record and out of the table. Only from flows::remove_translation,
/// before it removes the entry. Reads the settings itself: it runs where they are not at hand, and only when a
/// flow goes.
#[inline(always)]
pub fn ended(
    key: &FlowKey,
    entry: &FlowEntry,
    outbound_key: &FlowKey,
    counted: bool,
    reason: u8,
    now: u64,
) {
    if config().is_none_or(|cfg| cfg.flow_records == 0) {
        return;
    }
    let Some(record) = scratch() else {
        return;
    };
    record.event = event::ENDED;
    record.reason = reason;
    record.time_ns = now;
    record.created_ns = entry.created_ns;
    record.key = *outbound_key;
    if entry.direction == DIRECTION_OUTBOUND {
        record.nat_addr = entry.nat_addr;
        record.nat_port = entry.nat_port;
    } else {
        // The inbound key is (remote -> external address and port).
        record.nat_addr = key.dst_addr;
        record.nat_port = key.dst_port;
    }
    let found = if counted {
        FLOW_COUNTS.get_ptr(outbound_key)
    } else {
        None
    };
    // Field by field from the table into the record: a FlowCounts on the stack would cost this deepest call of
    // the new-flow path 32 of its bytes. And the zeros written one by one: stores of zeros side by side are
    // merged into a call to memset, one more frame in the verifier's count.
    match found {
        Some(counts) => {
            let counts = unsafe { &*counts };
            (record.packets_out, record.bytes_out) = (counts.packets_out, counts.bytes_out);
            (record.packets_in, record.bytes_in) = (counts.packets_in, counts.bytes_in);
            let _ = FLOW_COUNTS.remove(outbound_key);
        }
        None => {
            // SAFETY: fields of the record scratch, aligned.
            unsafe {
                (&raw mut record.packets_out).write_volatile(0);
                (&raw mut record.bytes_out).write_volatile(0);
                (&raw mut record.packets_in).write_volatile(0);
                (&raw mut record.bytes_in).write_volatile(0);
            }
        }
    }
    send(record);
}

/// Why a translation that is over ended, by its state: closed (TCP reset or FIN both ways), or timed out.
#[inline(always)]
pub fn reason_over(entry: &FlowEntry) -> u8 {
    if is_closed(entry.state) {
        end_reason::CLOSED
    } else {
        end_reason::TIMEOUT
    }
}
