//! Translation records (veg-common's record.rs): a record when a translation is created and when the datapath
//! removes one, and the packet and byte counts the ended records carry. All of it only while the agent has turned
//! records on (GatewayConfig::flow_records); a record that finds the ring full is counted as lost, and the
//! translation goes on regardless.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use veg_common::{
    config::GatewayConfig,
    flow::{DIRECTION_OUTBOUND, FlowEntry, FlowKey, is_closed},
    record::{FlowRecord, end_reason, event},
    stats::Counter,
};

use crate::{
    maps::{FLOW_RECORDS, RECORD_SCRATCH, config},
    packet::Packet,
    stats::count,
};

/// Count a packet on the entry of its direction. Atomic: two CPUs may carry packets of one direction at once.
#[inline(always)]
pub fn account(entry: *mut FlowEntry, pkt: &Packet, cfg: &GatewayConfig) {
    if cfg.flow_records == 0 {
        return;
    }
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
            &raw mut (*entry).packets,
            u64::from(pkt.segments),
        );
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
            &raw mut (*entry).bytes,
            u64::from(pkt.tot_len),
        );
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

/// The datapath is removing the translation whose half `entry` is found under `key` (its other half carried
/// `partner_counts`, packets and bytes), for `reason` (record::end_reason). Only from flows::remove_translation,
/// before it removes the entry. Reads the settings itself: it runs where they are not at hand, and only when a
/// flow goes.
#[inline(always)]
pub fn ended(key: &FlowKey, entry: &FlowEntry, partner_counts: &(u64, u64), reason: u8, now: u64) {
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
    if entry.direction == DIRECTION_OUTBOUND {
        record.key = *key;
        record.nat_addr = entry.nat_addr;
        record.nat_port = entry.nat_port;
        (record.packets_out, record.bytes_out) = (entry.packets, entry.bytes);
        (record.packets_in, record.bytes_in) = *partner_counts;
    } else {
        // The inbound key is (remote -> external address and port); its partner is the client's key, written
        // field by field rather than built on the stack.
        record.key.src_addr = entry.nat_addr;
        record.key.dst_addr = key.src_addr;
        record.key.src_port = entry.nat_port;
        record.key.dst_port = key.src_port;
        record.key.protocol = key.protocol;
        record.key.family = key.family;
        record.key._pad = [0; 2];
        record.nat_addr = key.dst_addr;
        record.nat_port = key.dst_port;
        (record.packets_out, record.bytes_out) = *partner_counts;
        (record.packets_in, record.bytes_in) = (entry.packets, entry.bytes);
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
