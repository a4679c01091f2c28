//! How full the translation port range is, from the flow table the sweep reads anyway.
//!
//! Mappings are endpoint-dependent: a port only has to be unique per (external address, remote address, remote
//! port, protocol), so a range runs out toward one remote endpoint, not for the address as a whole. What warns of
//! exhaustion is therefore the busiest remote endpoint's share of the range; the total in use says how much the
//! address carries. Both count the inbound halves of live pairs, which are the ports' locks.

use std::{collections::HashMap, net::IpAddr};

use veg_common::{
    address::Address,
    flow::{DIRECTION_INBOUND, FlowEntry, FlowKey, is_expired},
};

use super::flow_table::protocol_name;

/// Ports in use from one external address for one protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortUsage {
    pub external: IpAddr,
    pub protocol: &'static str,
    /// Ports in use toward every remote endpoint together.
    pub in_use: u64,
    /// Ports in use toward the remote endpoint that holds the most: the one that runs out first.
    pub busiest_endpoint: u64,
}

/// An external address's ports for one protocol: (address, protocol, family).
type PortSpace = (Address, u8, u8);
/// A remote endpoint: (address, port in network byte order).
type RemoteEndpoint = (Address, u16);

/// The usage per external address and protocol, in a stable order.
pub fn port_usage(entries: &[(FlowKey, FlowEntry)], now: u64) -> Vec<PortUsage> {
    let mut endpoints: HashMap<PortSpace, HashMap<RemoteEndpoint, u64>> = HashMap::new();
    for (key, entry) in entries {
        if entry.direction != DIRECTION_INBOUND || is_expired(entry, key.protocol, now) {
            continue;
        }
        // An inbound key is the reply's tuple: from the remote endpoint to the external address and port.
        *endpoints
            .entry((key.dst_addr, key.protocol, key.family))
            .or_default()
            .entry((key.src_addr, key.src_port))
            .or_default() += 1;
    }
    let mut usage: Vec<PortUsage> = endpoints
        .into_iter()
        .map(|((external, protocol, family), remotes)| PortUsage {
            external: external.to_ip(family),
            protocol: protocol_name(protocol),
            in_use: remotes.values().sum(),
            busiest_endpoint: remotes.values().copied().max().unwrap_or(0),
        })
        .collect();
    usage.sort_by_key(|usage| (usage.external, usage.protocol));
    usage
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use veg_common::{
        address::FAMILY_IPV4,
        flow::{DIRECTION_OUTBOUND, PROTO_TCP, PROTO_UDP, UDP_TIMEOUT_NS},
    };

    use super::*;

    const EXTERNAL: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 10);
    const NOW: u64 = 1_000 * UDP_TIMEOUT_NS;

    /// The reply-side key of a translation to `remote`:`remote_port` on external port `port`.
    fn inbound(protocol: u8, remote: [u8; 4], remote_port: u16, port: u16) -> (FlowKey, FlowEntry) {
        let key = FlowKey {
            src_addr: Address::from_ip(Ipv4Addr::from(remote).into()),
            dst_addr: Address::from_ip(EXTERNAL.into()),
            src_port: remote_port.to_be(),
            dst_port: port.to_be(),
            protocol,
            family: FAMILY_IPV4,
            _pad: [0; 2],
        };
        let entry = FlowEntry {
            direction: DIRECTION_INBOUND,
            last_seen_ns: NOW,
            ..FlowEntry::default()
        };
        (key, entry)
    }

    #[test]
    fn the_busiest_remote_endpoint_is_what_runs_out() {
        let mut entries = Vec::new();
        for port in 0..5 {
            entries.push(inbound(PROTO_UDP, [192, 0, 2, 1], 53, 2000 + port));
        }
        for port in 0..3 {
            entries.push(inbound(PROTO_UDP, [192, 0, 2, 1], 123, 2000 + port));
        }
        entries.push(inbound(PROTO_TCP, [192, 0, 2, 9], 443, 2000));
        // Outbound halves are not locks, and an expired pair holds no port.
        let (key, mut entry) = inbound(PROTO_UDP, [192, 0, 2, 1], 53, 3000);
        entry.direction = DIRECTION_OUTBOUND;
        entries.push((key, entry));
        let (key, mut expired) = inbound(PROTO_UDP, [192, 0, 2, 1], 53, 3001);
        expired.last_seen_ns = NOW - UDP_TIMEOUT_NS - 1;
        entries.push((key, expired));

        let usage = port_usage(&entries, NOW);
        let usage_of = |protocol| usage.iter().find(|u| u.protocol == protocol).unwrap();
        assert_eq!(usage.len(), 2);
        assert_eq!(usage_of("udp").in_use, 8);
        assert_eq!(usage_of("udp").busiest_endpoint, 5);
        assert_eq!(usage_of("udp").external, IpAddr::V4(EXTERNAL));
        assert_eq!(usage_of("tcp").in_use, 1);
        assert_eq!(usage_of("tcp").busiest_endpoint, 1);
    }
}
