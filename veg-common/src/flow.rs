//! The flow table: one hash map holding, for every translated flow, a forward entry (keyed by the tuple as the
//! client sent it) and a reverse entry (keyed by the tuple replies arrive with). Conntrack state and translation
//! live together in both entries, so one lookup per packet is enough and no orphaned half outlives its partner
//! for long: the datapath repairs a pair whose other half went missing.

use crate::address::Address;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// ICMP or ICMPv6: an echo flow's identifier stands in for the client's port and the remote's port is 0.
#[inline(always)]
pub fn is_icmp(protocol: u8) -> bool {
    protocol == PROTO_ICMP || protocol == PROTO_ICMPV6
}

/// A 5-tuple as seen on one side of the gateway. Ports are in network byte order. For ICMP echo the identifier
/// stands in for the client-side port and the remote port is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_addr: Address,
    pub dst_addr: Address,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// The entry's role in its pair.
pub const DIRECTION_OUTBOUND: u8 = 1;
pub const DIRECTION_INBOUND: u8 = 2;

/// Connection state bits, kept identical in both entries of a pair.
pub const STATE_SYN_OUT: u8 = 1 << 0;
pub const STATE_REPLY_SEEN: u8 = 1 << 1;
pub const STATE_FIN_OUT: u8 = 1 << 2;
pub const STATE_FIN_IN: u8 = 1 << 3;
pub const STATE_RST: u8 = 1 << 4;
/// TCP: the inbound entry's `tcp_next_seq` holds the remote's next sequence number.
pub const STATE_SEQ_IN: u8 = 1 << 5;
/// TCP: the outbound entry's `tcp_next_seq` holds the client's next sequence number (from its SYN).
pub const STATE_SEQ_OUT: u8 = 1 << 6;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    /// Outbound entry: the new source (external address and port). Inbound entry: the new destination (the
    /// client's original address and port).
    pub nat_addr: Address,
    pub nat_port: u16,
    pub direction: u8,
    /// STATE_* bits, set with atomic ORs (the datapath) so that two CPUs never lose one another's.
    pub state: u8,
    /// TCP: the next sequence number expected from the side whose packets this entry matches (the client for
    /// the outbound entry, the remote for the inbound one), when STATE_SEQ_OUT / STATE_SEQ_IN says it is known.
    /// What a RST from outside is checked against.
    pub tcp_next_seq: u32,
    /// CLOCK_MONOTONIC ns of the last packet in either direction, refreshed at most every REFRESH_NS.
    pub last_seen_ns: u64,
    pub created_ns: u64,
}

/// What a translation carried, for its ended record: packets and bytes (IP length) each way, out being from the
/// client. Counted only while translation records are on (GatewayConfig::flow_records), in a table of their own
/// keyed by the translation's outbound key, so that a gateway without records pays nothing for them in its flow
/// table (two entries per translation, a million translations or more). Atomic adds: two CPUs may carry one
/// direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounts {
    pub packets_out: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
}

// Pinned tables outlive an agent's upgrade and the agent reads them: these layouts must not move.
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<FlowEntry>() == 40);
const _: () = assert!(core::mem::size_of::<FlowCounts>() == 32);

/// How stale last_seen may get before a packet refreshes it (and repairs the pair). Refreshing rarely keeps the
/// hot path free of writes to shared cache lines.
pub const REFRESH_NS: u64 = 1_000_000_000;

const SECOND_NS: u64 = 1_000_000_000;
/// RFC 5382 REQ-5: established idle timeout at least 2 h 4 min.
pub const TCP_ESTABLISHED_TIMEOUT_NS: u64 = 7440 * SECOND_NS;
/// RFC 5382: transitory (opening, closing, reset) at least 4 min.
pub const TCP_TRANSITORY_TIMEOUT_NS: u64 = 240 * SECOND_NS;
/// RFC 4787 REQ-5: at least 2 min, 5 min recommended.
pub const UDP_TIMEOUT_NS: u64 = 300 * SECOND_NS;
/// RFC 5508 REQ-1: ICMP query sessions at least 60 s.
pub const ICMP_TIMEOUT_NS: u64 = 60 * SECOND_NS;

/// A TCP flow that has ended: reset, or FIN seen both ways. A new SYN on its tuple starts a new connection.
#[inline(always)]
pub fn is_closed(state: u8) -> bool {
    state & STATE_RST != 0 || state & (STATE_FIN_OUT | STATE_FIN_IN) == STATE_FIN_OUT | STATE_FIN_IN
}

/// How long a flow in this state may stay idle.
#[inline(always)]
pub fn idle_timeout_ns(protocol: u8, state: u8) -> u64 {
    match protocol {
        PROTO_TCP => {
            let closing = state & (STATE_FIN_OUT | STATE_FIN_IN | STATE_RST) != 0;
            if closing || state & STATE_REPLY_SEEN == 0 {
                TCP_TRANSITORY_TIMEOUT_NS
            } else {
                TCP_ESTABLISHED_TIMEOUT_NS
            }
        }
        PROTO_UDP => UDP_TIMEOUT_NS,
        _ => ICMP_TIMEOUT_NS,
    }
}

/// Whether an entry last seen at `last_seen_ns` has expired at `now_ns`.
#[inline(always)]
pub fn is_expired(entry: &FlowEntry, protocol: u8, now_ns: u64) -> bool {
    now_ns.saturating_sub(entry.last_seen_ns) > idle_timeout_ns(protocol, entry.state)
}

impl FlowKey {
    /// The key of the other half of the pair this key's entry belongs to.
    #[inline(always)]
    pub fn partner(&self, entry: &FlowEntry) -> FlowKey {
        if entry.direction == DIRECTION_OUTBOUND {
            // Replies come from the remote to the external address and port.
            FlowKey {
                src_addr: self.dst_addr,
                dst_addr: entry.nat_addr,
                src_port: self.dst_port,
                dst_port: entry.nat_port,
                protocol: self.protocol,
                family: self.family,
                _pad: [0; 2],
            }
        } else {
            FlowKey {
                src_addr: entry.nat_addr,
                dst_addr: self.src_addr,
                src_port: entry.nat_port,
                dst_port: self.src_port,
                protocol: self.protocol,
                family: self.family,
                _pad: [0; 2],
            }
        }
    }
}

/// Default capacity of the flow table, in entries (two per flow).
pub const FLOW_TABLE_DEFAULT_ENTRIES: u32 = 524_288;

#[cfg(feature = "user")]
mod user {
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowEntry {}
    unsafe impl aya::Pod for super::FlowCounts {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(direction: u8, nat: [u8; 4], nat_port: u16) -> FlowEntry {
        FlowEntry {
            nat_addr: Address::from_ipv4_be(u32::from_ne_bytes(nat)),
            nat_port,
            direction,
            ..FlowEntry::default()
        }
    }

    #[test]
    fn partners_point_at_each_other() {
        let client = Address::from_ipv4_be(u32::from_ne_bytes([10, 0, 0, 2]));
        let remote = Address::from_ipv4_be(u32::from_ne_bytes([198, 51, 100, 1]));
        let forward = FlowKey {
            src_addr: client,
            dst_addr: remote,
            src_port: 40000u16.to_be(),
            dst_port: 80u16.to_be(),
            protocol: PROTO_TCP,
            family: crate::address::FAMILY_IPV4,
            _pad: [0; 2],
        };
        let out = entry(DIRECTION_OUTBOUND, [203, 0, 113, 7], 2000u16.to_be());
        let reverse = forward.partner(&out);
        assert_eq!(reverse.src_addr, remote);
        assert_eq!(reverse.dst_addr, out.nat_addr);
        assert_eq!(reverse.dst_port, out.nat_port);
        assert_eq!(reverse.src_port, 80u16.to_be());

        let inb = FlowEntry {
            nat_addr: client,
            nat_port: 40000u16.to_be(),
            direction: DIRECTION_INBOUND,
            ..out
        };
        assert_eq!(reverse.partner(&inb), forward);
    }

    #[test]
    fn timeouts_follow_the_rfcs() {
        assert_eq!(
            idle_timeout_ns(PROTO_TCP, STATE_SYN_OUT),
            TCP_TRANSITORY_TIMEOUT_NS
        );
        assert_eq!(
            idle_timeout_ns(PROTO_TCP, STATE_SYN_OUT | STATE_REPLY_SEEN),
            TCP_ESTABLISHED_TIMEOUT_NS
        );
        assert_eq!(
            idle_timeout_ns(PROTO_TCP, STATE_REPLY_SEEN | STATE_FIN_OUT),
            TCP_TRANSITORY_TIMEOUT_NS
        );
        assert_eq!(
            idle_timeout_ns(PROTO_TCP, STATE_REPLY_SEEN | STATE_RST),
            TCP_TRANSITORY_TIMEOUT_NS
        );
        assert_eq!(idle_timeout_ns(PROTO_UDP, 0), UDP_TIMEOUT_NS);
        assert!(is_closed(STATE_REPLY_SEEN | STATE_RST));
        assert!(is_closed(STATE_FIN_OUT | STATE_FIN_IN));
        assert!(!is_closed(STATE_REPLY_SEEN | STATE_FIN_OUT));
        assert_eq!(idle_timeout_ns(PROTO_ICMP, 0), ICMP_TIMEOUT_NS);
        let e = FlowEntry {
            last_seen_ns: 1_000,
            ..FlowEntry::default()
        };
        assert!(!is_expired(&e, PROTO_ICMP, 1_000 + ICMP_TIMEOUT_NS));
        assert!(is_expired(&e, PROTO_ICMP, 1_001 + ICMP_TIMEOUT_NS));
    }
}
