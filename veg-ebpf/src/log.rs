//! Lines for rare events, through aya-log: a translation pair repaired, a port search that found nothing, a
//! malformed packet and why. Off unless the agent runs with `--datapath-log LEVEL`: the loader then sets aya-log's
//! AYA_LOG_LEVEL, a read-only global the verifier sees as a constant, so that a disabled line is pruned when the
//! program loads and costs nothing. An enabled line costs a ring buffer reservation; a flood of them finds the ring
//! full and is dropped there, never slowing the packets down more than that.

use aya_log_ebpf::{debug, warn};
use veg_common::flow::FlowKey;

/// Why a packet was dropped as malformed.
#[derive(Clone, Copy)]
pub enum Malformed {
    /// Its headers are not all in the packet.
    Truncated,
    /// Not IPv4 version 4, or a header length under 20.
    Ipv4Header,
    /// Not IPv6 version 6.
    Ipv6Header,
    /// The IP total length does not cover the header or exceeds what arrived.
    IpLength,
    /// IPv6 extension headers past the packet, or more of them than the datapath walks.
    ExtensionHeaders,
    /// The TCP data offset is under 20 or beyond the segment.
    TcpHeader,
    /// The UDP length is under 8 or beyond the datagram.
    UdpLength,
    /// An ICMP message shorter than 8 bytes.
    IcmpLength,
}

impl Malformed {
    fn reason(self) -> &'static str {
        match self {
            Malformed::Truncated => "headers truncated",
            Malformed::Ipv4Header => "not an IPv4 header",
            Malformed::Ipv6Header => "not an IPv6 header",
            Malformed::IpLength => "IP total length inconsistent",
            Malformed::ExtensionHeaders => "IPv6 extension headers too long or too many",
            Malformed::TcpHeader => "TCP data offset inconsistent",
            Malformed::UdpLength => "UDP length inconsistent",
            Malformed::IcmpLength => "ICMP message too short",
        }
    }
}

/// `ifindex`: the interface it arrived on.
#[inline(always)]
pub fn malformed(why: Malformed, ifindex: u32) {
    debug!(
        &(),
        "dropped a malformed packet arriving on interface {}: {}",
        ifindex,
        why.reason()
    );
}

#[inline(always)]
pub fn pair_repaired(key: &FlowKey) {
    debug!(
        &(),
        "repaired the missing half of the translation {:i}:{} -> {:i}:{} (protocol {})",
        key.src_addr.ipv4_be().to_ne_bytes(),
        u16::from_be(key.src_port),
        key.dst_addr.ipv4_be().to_ne_bytes(),
        u16::from_be(key.dst_port),
        key.protocol
    );
}

/// `endpoint` is the remote endpoint's key as EXHAUSTED keeps it.
#[inline(always)]
pub fn port_search_failed(endpoint: &FlowKey) {
    warn!(
        &(),
        "no free port toward {:i}:{} (protocol {}): new flows to it are dropped for 250 ms",
        endpoint.src_addr.ipv4_be().to_ne_bytes(),
        u16::from_be(endpoint.src_port),
        endpoint.protocol
    );
}
