//! The gateway's settings as the datapath reads them: one entry in an array map, written by the agent.

use crate::address::{Address, FAMILY_IPV6};

/// Index of the only entry of the CONFIG map.
pub const CONFIG_KEY: u32 = 0;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayConfig {
    /// The address every IPv4 SNAT source is translated to; also the source of ICMP errors the instance sends outside.
    pub external_addr_v4: Address,
    /// The instance's address in the VPC: the source of ICMP errors it sends to VPC clients (time exceeded,
    /// fragmentation needed), as a router answers from the interface facing the sender.
    pub internal_addr_v4: Address,
    /// Interface facing the VPC (eth0).
    pub internal_ifindex: u32,
    /// Interface facing the outside (net1).
    pub external_ifindex: u32,
    /// Translated ports (and ICMP identifiers) are taken from this inclusive range, host byte order.
    pub port_min: u16,
    pub port_max: u16,
    /// Non-zero once the agent has written the entry; until then every packet passes untouched.
    pub ready: u32,
    /// Non-zero while translation records are on: the programs count packets and bytes per flow and send a record
    /// when a translation is created or removed (record.rs). Off, they cost nothing.
    pub flow_records: u32,
    /// The address IPv6 sources are translated to; unspecified when the instance serves IPv4 alone (the agent
    /// then writes no IPv6 policy, so IPv6 from the VPC is dropped as having none).
    pub external_addr_v6: Address,
    /// The instance's IPv6 address in the VPC, the source of ICMPv6 errors toward VPC clients.
    pub internal_addr_v6: Address,
    /// Non-zero when what the instance sends toward the outside has a bandwidth limit (the gateway's
    /// spec.bandwidth.egress): the skb priority that steers a forwarded packet into the external interface's shaper
    /// (its HTB class; shaping.rs).
    pub egress_priority: u32,
    /// The same toward the VPC (spec.bandwidth.ingress), on the internal interface.
    pub ingress_priority: u32,
    /// Non-zero when the internal interface is a veth whose peer is in another network namespace (a pod's eth0)
    /// and whose transmit would leave a packet as it is (its offloads on): a packet from outside toward the VPC
    /// then goes straight into the peer's receive path (bpf_redirect_peer), skipping the veth's transmit and the
    /// backlog queue between the two. The programs skip it while a shaper on the internal interface has to see
    /// the packets (ingress_priority), since the peer redirect passes its qdisc by.
    pub internal_peer: u32,
}

// The agent writes the entry the programs read, and a pinned map keeps it across an upgrade: its layout is fixed.
// (A pinned config map of another size, from an earlier build, is replaced at start: pinned_maps.rs.)
const _: () = assert!(core::mem::size_of::<GatewayConfig>() == 96);
const _: () = assert!(core::mem::offset_of!(GatewayConfig, external_addr_v6) == 52);
const _: () = assert!(core::mem::offset_of!(GatewayConfig, internal_addr_v6) == 68);

impl GatewayConfig {
    /// The external address of a family (FAMILY_IPV4 or FAMILY_IPV6).
    #[inline(always)]
    pub fn external_addr(&self, family: u8) -> Address {
        if family == FAMILY_IPV6 {
            self.external_addr_v6
        } else {
            self.external_addr_v4
        }
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for GatewayConfig {}
