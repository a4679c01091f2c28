//! The conntrack/NAT table: finding a packet's translation, keeping its state, and repairing a pair whose other
//! half went missing (removed with a flow that was given up, or lost in a move to a smaller table).

use core::intrinsics::{AtomicOrdering, atomic_or};

use aya_ebpf::helpers::generated::bpf_ktime_get_ns;
use veg_common::{
    address::Address,
    config::GatewayConfig,
    flow::{
        DIRECTION_INBOUND, DIRECTION_OUTBOUND, FlowEntry, FlowKey, PROTO_TCP, REFRESH_NS,
        STATE_FIN_IN, STATE_FIN_OUT, STATE_REPLY_SEEN, STATE_RST, STATE_SEQ_IN, STATE_SEQ_OUT,
        STATE_SYN_OUT, is_closed, is_expired, is_icmp,
    },
    record::end_reason,
    stats::Counter,
};

use crate::{
    log,
    maps::{FLOWS, flow_scratch},
    packet::{Packet, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN},
    pending, ports, records,
    stats::count,
};

/// The translation to apply to one packet: the new address and port for the end being rewritten.
pub struct Translation {
    pub addr: Address,
    pub port: u16,
}

/// The key of a packet leaving the VPC. For ICMP echo the identifier is the client-side port, the remote port 0.
#[inline(always)]
pub fn outbound_key(pkt: &Packet) -> FlowKey {
    FlowKey {
        src_addr: pkt.src,
        dst_addr: pkt.dst,
        src_port: pkt.src_port,
        dst_port: if is_icmp(pkt.protocol) {
            0
        } else {
            pkt.dst_port
        },
        protocol: pkt.protocol,
        family: pkt.family,
        _pad: [0; 2],
    }
}

/// The key of a packet arriving from outside.
#[inline(always)]
pub fn inbound_key(pkt: &Packet) -> FlowKey {
    FlowKey {
        src_addr: pkt.src,
        dst_addr: pkt.dst,
        src_port: if is_icmp(pkt.protocol) {
            0
        } else {
            pkt.src_port
        },
        dst_port: pkt.dst_port,
        protocol: pkt.protocol,
        family: pkt.family,
        _pad: [0; 2],
    }
}

/// State bits a packet sets, by direction.
#[inline(always)]
fn state_bits(pkt: &Packet, direction: u8) -> u8 {
    let mut bits = if direction == DIRECTION_INBOUND {
        STATE_REPLY_SEEN
    } else {
        0
    };
    if pkt.protocol == PROTO_TCP {
        if pkt.tcp_flags & TCP_FLAG_RST != 0 {
            bits |= STATE_RST;
        }
        if pkt.tcp_flags & TCP_FLAG_FIN != 0 {
            bits |= if direction == DIRECTION_OUTBOUND {
                STATE_FIN_OUT
            } else {
                STATE_FIN_IN
            };
        }
        if pkt.tcp_flags & TCP_FLAG_SYN != 0 && direction == DIRECTION_OUTBOUND {
            bits |= STATE_SYN_OUT | STATE_SEQ_OUT;
        }
        if direction == DIRECTION_INBOUND {
            bits |= STATE_SEQ_IN;
        }
    }
    bits
}

/// The sequence number that follows a TCP segment: its own, plus its payload, plus one each for SYN and FIN.
#[inline(always)]
fn next_seq(pkt: &Packet) -> u32 {
    let flags =
        u32::from(pkt.tcp_flags & TCP_FLAG_SYN != 0) + u32::from(pkt.tcp_flags & TCP_FLAG_FIN != 0);
    pkt.tcp_seq
        .wrapping_add(u32::from(pkt.tcp_payload_len))
        .wrapping_add(flags)
}

/// How far from the remote's next sequence number a RST from outside may be and still be taken as the remote's:
/// data in flight that the gateway has not seen yet, or retransmitted. A spoofer who knows the remote and guesses
/// the external port still has one chance in 128 per guess of landing inside (netfilter's window tracking uses the
/// receiver's window, which is typically smaller).
const RST_MAX_DISTANCE: u32 = 1 << 24;

/// Whether a RST from outside is plausible for the flow: its sequence number near the remote's next one, or, while
/// the remote has sent nothing, acknowledging the client's SYN (RFC 793's test in SYN-SENT). A flow whose numbers
/// were never recorded (made by an older build) takes any RST, as before.
#[inline(always)]
fn rst_is_plausible(pkt: &Packet, key: &FlowKey, inbound: &FlowEntry) -> bool {
    if inbound.state & STATE_SEQ_IN != 0 {
        let distance = pkt.tcp_seq.wrapping_sub(inbound.tcp_next_seq);
        return distance <= RST_MAX_DISTANCE || distance.wrapping_neg() <= RST_MAX_DISTANCE;
    }
    if inbound.state & STATE_SEQ_OUT == 0 {
        return true;
    }
    let Some(outbound) = FLOWS.get_ptr(&key.partner(inbound)) else {
        return true; // missing: the check falls back to accepting, as without numbers
    };
    let client_next = unsafe { (*outbound).tcp_next_seq };
    pkt.tcp_flags & TCP_FLAG_ACK != 0 && pkt.tcp_ack == client_next
}

/// Where the state byte sits in the entry's second 64-bit word (nat_port, direction, state, tcp_next_seq).
const STATE_WORD_OFFSET: usize = 16;
const STATE_SHIFT: u64 = 24;
const _: () = assert!(core::mem::offset_of!(FlowEntry, nat_port) == STATE_WORD_OFFSET);
const _: () = assert!(core::mem::offset_of!(FlowEntry, state) == STATE_WORD_OFFSET + 3);

/// Set state bits with one atomic OR on the word that holds them, so that two CPUs updating one flow at once (a
/// FIN each way) never lose a bit. The OR leaves the word's other bytes as they are.
#[inline(always)]
fn set_state_bits(entry: *mut FlowEntry, bits: u8) {
    let word = unsafe { (entry as *mut u8).add(STATE_WORD_OFFSET) } as *mut u64;
    unsafe {
        atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(word, u64::from(bits) << STATE_SHIFT)
    };
}

/// Whether `partner` is the other half of the flow whose half `entry` is, found under `key`'s partner key: an
/// entry there may belong to another flow since (ours went missing and a new flow took the tuple).
#[inline(always)]
pub fn points_back(key: &FlowKey, entry: &FlowEntry, partner: &FlowEntry) -> bool {
    if entry.direction == DIRECTION_OUTBOUND {
        partner.direction == DIRECTION_INBOUND
            && partner.nat_addr == key.src_addr
            && partner.nat_port == key.src_port
    } else {
        partner.direction == DIRECTION_OUTBOUND
            && partner.nat_addr == key.dst_addr
            && partner.nat_port == key.dst_port
    }
}

/// Remove the translation whose half `entry` is found under `key`, with its ended record (for `reason`,
/// record::end_reason): both halves, its other half only if that still belongs to it. A function of its own in
/// the object, never called inside a bpf_loop step, that keeps its partner's key in the scratch space rather
/// than on the stack: it is the deepest call on the new-flow path (the program, ports.rs's search, then this),
/// and the verifier allows 512 bytes of stack for the whole chain.
#[inline(never)]
pub fn remove_translation(key: &FlowKey, entry: &FlowEntry, reason: u8, now: u64) {
    if let Some(scratch) = flow_scratch() {
        scratch.removed_partner = key.partner(entry);
        let partner_key = &scratch.removed_partner;
        let outbound = entry.direction == DIRECTION_OUTBOUND;
        // The counts under the translation's outbound key are its own: the outbound half's key, or an inbound
        // half's partner key unless that belongs to another flow now.
        let mut counted = true;
        if let Some(partner) = FLOWS.get_ptr(partner_key) {
            if points_back(key, entry, unsafe { &*partner }) {
                let _ = FLOWS.remove(partner_key);
            } else {
                counted = outbound;
            }
        }
        let outbound_key = if outbound { key } else { partner_key };
        // Before the removal: the map reuses a removed entry's memory at once.
        records::ended(key, entry, outbound_key, counted, reason, now);
    }
    let _ = FLOWS.remove(key);
}

/// Record a packet on its entry. Writes only when the state gains a bit or the timestamp is REFRESH_NS old, and
/// then updates the partner too, recreating it from this half if it is missing (whichever half survived).
/// Returns false when the pair cannot be made whole: the partner's key now belongs to another flow, so this entry
/// is stale.
#[inline(always)]
fn touch(key: &FlowKey, entry: &mut FlowEntry, bits: u8, now: u64) -> bool {
    // A SYN on a closed flow's tuple is a new connection on the same mapping (the client reused its port): its
    // state starts again, a plain store (the old connection is over, nothing else updates it).
    let reopen = bits & STATE_SYN_OUT != 0 && is_closed(entry.state);
    let new_bits = bits & !entry.state;
    if !reopen && new_bits == 0 && now.wrapping_sub(entry.last_seen_ns) < REFRESH_NS {
        return true;
    }
    let closing = is_closed(entry.state | bits) && !is_closed(entry.state);
    let partner_key = key.partner(entry);
    match FLOWS.get_ptr_mut(&partner_key) {
        Some(partner) if points_back(key, entry, unsafe { &*partner }) => {
            if reopen {
                unsafe { (*partner).state = bits };
            } else if new_bits != 0 {
                set_state_bits(partner, new_bits);
            }
            unsafe { (*partner).last_seen_ns = now };
        }
        Some(_) => return false,
        None => {
            if !repair(key, &partner_key, entry, entry.state | bits, now) {
                return false;
            }
        }
    }
    if reopen {
        entry.state = bits;
    } else if new_bits != 0 {
        set_state_bits(entry, new_bits);
    }
    entry.last_seen_ns = now;
    if closing {
        // Its port may now be taken over by a new connection: stop skipping the endpoint as full.
        let reverse_key = if entry.direction == DIRECTION_OUTBOUND {
            &partner_key
        } else {
            key
        };
        ports::forget_exhausted(reverse_key);
    }
    true
}

/// Recreate the missing partner of `entry` under `partner_key`, from this half, in the scratch space (not the
/// stack). False when the key was taken meanwhile.
#[inline(always)]
fn repair(key: &FlowKey, partner_key: &FlowKey, entry: &FlowEntry, state: u8, now: u64) -> bool {
    let Some(scratch) = flow_scratch() else {
        return false;
    };
    let outbound = entry.direction == DIRECTION_OUTBOUND;
    scratch.partner = FlowEntry {
        nat_addr: if outbound { key.src_addr } else { key.dst_addr },
        nat_port: if outbound { key.src_port } else { key.dst_port },
        direction: if outbound {
            DIRECTION_INBOUND
        } else {
            DIRECTION_OUTBOUND
        },
        state,
        // The missing half's sequence number is lost with it; its bit says so.
        tcp_next_seq: 0,
        last_seen_ns: now,
        created_ns: entry.created_ns,
    };
    scratch.partner.state &= !(if outbound {
        STATE_SEQ_IN
    } else {
        STATE_SEQ_OUT
    });
    if pending::insert_new(partner_key, &scratch.partner, now).is_err() {
        return false;
    }
    count(Counter::FlowsRepaired);
    log::pair_repaired(partner_key);
    true
}

/// The translation for a packet from a SNAT source: the existing one, or a new one with a freshly allocated port.
#[inline(always)]
pub fn translate_outbound(pkt: &Packet, cfg: &GatewayConfig) -> Result<Translation, Counter> {
    let now = unsafe { bpf_ktime_get_ns() };
    let key = outbound_key(pkt);
    let external = cfg.external_addr(pkt.family);
    let bits = state_bits(pkt, DIRECTION_OUTBOUND);
    if let Some(entry) = FLOWS.get_ptr_mut(&key) {
        let entry = unsafe { &mut *entry };
        // A mapping to an old external address, or one that timed out, is replaced rather than reused.
        let current = entry.nat_addr == external && !is_expired(entry, key.protocol, now);
        if current && touch(&key, entry, bits, now) {
            if bits & STATE_SEQ_OUT != 0 {
                // A SYN, first or again: the client's numbers the remote's RST must acknowledge.
                entry.tcp_next_seq = next_seq(pkt);
            }
            records::account(&key, entry, pkt, cfg);
            return Ok(Translation {
                addr: entry.nat_addr,
                port: entry.nat_port,
            });
        }
        count(Counter::FlowsExpiredOnLookup);
        let reason = if !current {
            if entry.nat_addr != external {
                end_reason::READDRESSED
            } else {
                records::reason_over(entry)
            }
        } else {
            // Its other half's key belongs to another flow now: this half was left over.
            end_reason::EVICTED
        };
        remove_translation(&key, entry, reason, now);
    }
    let client_next = if bits & STATE_SEQ_OUT != 0 {
        next_seq(pkt)
    } else {
        0
    };
    let allocated = ports::allocate(&key, bits, client_next, now, cfg)?;
    pending::record(&key);
    count(Counter::FlowsCreated);
    if cfg.flow_records != 0
        && let Some(entry) = FLOWS.get_ptr(&key)
    {
        // Only with records on: the first packet's count, and the record (unless another CPU made the flow).
        let entry = unsafe { &*entry };
        records::account(&key, entry, pkt, cfg);
        if allocated.created {
            records::created(&key, entry, cfg);
        }
    }
    Ok(Translation {
        addr: external,
        port: allocated.port,
    })
}

/// The translation back for a packet from outside: Err(DropUnsolicited) when it belongs to no live flow,
/// Err(DropRstImplausible) for a RST whose numbers do not fit the flow (left untouched).
#[inline(always)]
pub fn translate_inbound(pkt: &Packet, cfg: &GatewayConfig) -> Result<Translation, Counter> {
    let now = unsafe { bpf_ktime_get_ns() };
    let key = inbound_key(pkt);
    let Some(entry) = FLOWS.get_ptr_mut(&key) else {
        return Err(Counter::DropUnsolicited);
    };
    let entry = unsafe { &mut *entry };
    if entry.direction != DIRECTION_INBOUND || is_expired(entry, key.protocol, now) {
        return Err(Counter::DropUnsolicited);
    }
    let tcp = pkt.protocol == PROTO_TCP;
    if tcp && pkt.tcp_flags & TCP_FLAG_RST != 0 && !rst_is_plausible(pkt, &key, entry) {
        return Err(Counter::DropRstImplausible);
    }
    // Whether the remote's numbers were known before this packet (touch sets the bit for it).
    let seq_known = entry.state & STATE_SEQ_IN != 0;
    if !touch(&key, entry, state_bits(pkt, DIRECTION_INBOUND), now) {
        // The client's tuple has a newer mapping; this one is dead.
        let _ = FLOWS.remove(&key);
        return Err(Counter::DropUnsolicited);
    }
    if tcp {
        // The remote's next sequence number moves forward only (a retransmission or reordering does not undo it).
        let next = next_seq(pkt);
        if !seq_known || (next.wrapping_sub(entry.tcp_next_seq) as i32) > 0 {
            entry.tcp_next_seq = next;
        }
    }
    records::account(&key, entry, pkt, cfg);
    Ok(Translation {
        addr: entry.nat_addr,
        port: entry.nat_port,
    })
}
