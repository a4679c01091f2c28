//! Lines for rare events, through aya-log: a translation pair repaired, a port search that found nothing, a
//! malformed packet and why. Off unless the agent runs with `--datapath-log LEVEL`: the loader then sets aya-log's
//! AYA_LOG_LEVEL, a read-only global the verifier sees as a constant, so that a disabled line is pruned when the
//! program loads and costs nothing. An enabled line costs a ring buffer reservation; a flood of them finds the ring
//! full and is dropped there, never slowing the packets down more than that.

use aya_log_ebpf::{debug, warn};
use veg_common::{address::Address, flow::FlowKey};

/// Why a packet was dropped as malformed.
#[derive(Clone, Copy)]
pub enum Malformed {
    /// Its headers are not all in the packet.
    Truncated,
    /// Not IPv4 version 4, or a header length under 20.
    Ipv4Header,
    /// The IP total length does not cover the header or exceeds what arrived.
    IpLength,
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
            Malformed::IpLength => "IP total length inconsistent",
            Malformed::TcpHeader => "TCP data offset inconsistent",
            Malformed::UdpLength => "UDP length inconsistent",
            Malformed::IcmpLength => "ICMP message too short",
        }
    }
}

/// An IPv4 address as aya-log prints one.
#[inline(always)]
fn ipv4(address: &Address) -> [u8; 4] {
    [
        address.bytes[0],
        address.bytes[1],
        address.bytes[2],
        address.bytes[3],
    ]
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
        ipv4(&key.src_addr),
        u16::from_be(key.src_port),
        ipv4(&key.dst_addr),
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
        ipv4(&endpoint.src_addr),
        u16::from_be(endpoint.src_port),
        endpoint.protocol
    );
}
