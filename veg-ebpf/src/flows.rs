//! The conntrack/NAT table: finding a packet's translation, keeping its state, and repairing a pair whose other
//! half the LRU evicted.

use aya_ebpf::helpers::generated::bpf_ktime_get_ns;
use veg_common::{
    address::{Address, FAMILY_IPV4},
    config::GatewayConfig,
    flow::{
        DIRECTION_INBOUND, DIRECTION_OUTBOUND, FlowEntry, FlowKey, PROTO_ICMP, PROTO_TCP,
        REFRESH_NS, STATE_FIN_IN, STATE_FIN_OUT, STATE_REPLY_SEEN, STATE_RST, STATE_SYN_OUT,
        is_closed, is_expired,
    },
    stats::Counter,
};

use crate::{
    maps::{FLOWS, flow_scratch},
    packet::{Ipv4Packet, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN},
    ports,
    stats::count,
};

/// The translation to apply to one packet: the new address and port for the end being rewritten.
pub struct Translation {
    pub addr: u32,
    pub port: u16,
}

/// The key of a packet leaving the VPC. For ICMP echo the identifier is the client-side port, the remote port 0.
#[inline(always)]
pub fn outbound_key(pkt: &Ipv4Packet) -> FlowKey {
    FlowKey {
        src_addr: Address::from_ipv4_be(pkt.src),
        dst_addr: Address::from_ipv4_be(pkt.dst),
        src_port: pkt.src_port,
        dst_port: if pkt.protocol == PROTO_ICMP {
            0
        } else {
            pkt.dst_port
        },
        protocol: pkt.protocol,
        family: FAMILY_IPV4,
        _pad: [0; 2],
    }
}

/// The key of a packet arriving from outside.
#[inline(always)]
pub fn inbound_key(pkt: &Ipv4Packet) -> FlowKey {
    FlowKey {
        src_addr: Address::from_ipv4_be(pkt.src),
        dst_addr: Address::from_ipv4_be(pkt.dst),
        src_port: if pkt.protocol == PROTO_ICMP {
            0
        } else {
            pkt.src_port
        },
        dst_port: pkt.dst_port,
        protocol: pkt.protocol,
        family: FAMILY_IPV4,
        _pad: [0; 2],
    }
}

/// State bits a packet sets, by direction.
#[inline(always)]
fn state_bits(pkt: &Ipv4Packet, direction: u8) -> u8 {
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
            bits |= STATE_SYN_OUT;
        }
    }
    bits
}

/// Record a packet on its entry. Writes only when the state changes or the timestamp is REFRESH_NS old, and then
/// updates the partner too, recreating it if it was evicted. Returns false when the pair cannot be made whole
/// (the partner's key now belongs to another flow): the entry is stale.
#[inline(always)]
fn touch(key: &FlowKey, entry: &mut FlowEntry, bits: u8, now: u64) -> bool {
    // A SYN on a closed flow's tuple is a new connection on the same mapping (the client reused its port).
    let state = if bits & STATE_SYN_OUT != 0 && is_closed(entry.state) {
        bits
    } else {
        entry.state | bits
    };
    if state == entry.state && now.wrapping_sub(entry.last_seen_ns) < REFRESH_NS {
        return true;
    }
    let closing = is_closed(state) && !is_closed(entry.state);
    entry.state = state;
    entry.last_seen_ns = now;
    let partner_key = key.partner(entry);
    if closing {
        // Its port may now be taken over by a new connection: stop skipping the endpoint as full.
        let reverse_key = if entry.direction == DIRECTION_OUTBOUND {
            &partner_key
        } else {
            key
        };
        ports::forget_exhausted(reverse_key);
    }
    if let Some(partner) = FLOWS.get_ptr_mut(&partner_key) {
        let partner = unsafe { &mut *partner };
        partner.state = state;
        partner.last_seen_ns = now;
        return true;
    }
    // The partner was evicted: rebuild it from this half, in the scratch space (not the stack).
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
        _pad: 0,
        last_seen_ns: now,
        created_ns: entry.created_ns,
    };
    if FLOWS
        .insert(
            &partner_key,
            &scratch.partner,
            aya_ebpf::bindings::BPF_NOEXIST as u64,
        )
        .is_ok()
    {
        count(Counter::FlowsRepaired);
        true
    } else {
        false
    }
}

/// The translation for a packet from a SNAT source: the existing one, or a new one with a freshly allocated port.
#[inline(always)]
pub fn translate_outbound(pkt: &Ipv4Packet, cfg: &GatewayConfig) -> Result<Translation, Counter> {
    let now = unsafe { bpf_ktime_get_ns() };
    let key = outbound_key(pkt);
    let bits = state_bits(pkt, DIRECTION_OUTBOUND);
    if let Some(entry) = FLOWS.get_ptr_mut(&key) {
        let entry = unsafe { &mut *entry };
        // A mapping to an old external address, or one that timed out, is replaced rather than reused.
        let current =
            entry.nat_addr == cfg.external_addr_v4 && !is_expired(entry, key.protocol, now);
        if current && touch(&key, entry, bits, now) {
            return Ok(Translation {
                addr: entry.nat_addr.ipv4_be(),
                port: entry.nat_port,
            });
        }
        count(Counter::FlowsExpiredOnLookup);
        let partner = key.partner(entry);
        if let Some(p) = FLOWS.get_ptr(&partner) {
            let p = unsafe { *p };
            // Only remove the partner if it still belongs to this flow.
            if p.nat_addr == key.src_addr && p.nat_port == key.src_port {
                let _ = FLOWS.remove(&partner);
            }
        }
        let _ = FLOWS.remove(&key);
    }
    let port = ports::allocate(&key, bits, now, cfg)?;
    count(Counter::FlowsCreated);
    Ok(Translation {
        addr: cfg.external_addr_v4.ipv4_be(),
        port,
    })
}

/// The translation back for a packet from outside, if it belongs to a live flow.
#[inline(always)]
pub fn translate_inbound(pkt: &Ipv4Packet) -> Option<Translation> {
    let now = unsafe { bpf_ktime_get_ns() };
    let key = inbound_key(pkt);
    let entry = unsafe { &mut *FLOWS.get_ptr_mut(&key)? };
    if entry.direction != DIRECTION_INBOUND || is_expired(entry, key.protocol, now) {
        return None;
    }
    if !touch(&key, entry, state_bits(pkt, DIRECTION_INBOUND), now) {
        // The client's tuple has a newer mapping; this one is dead.
        let _ = FLOWS.remove(&key);
        return None;
    }
    Some(Translation {
        addr: entry.nat_addr.ipv4_be(),
        port: entry.nat_port,
    })
}
