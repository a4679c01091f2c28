//! The gateway's bandwidth limits (spec.bandwidth): the agent shapes each limited direction with an HTB class on
//! the interface it leaves by, and the programs steer the packets they forward into it by skb->priority (which the
//! redirect keeps). The instance's own packets (BFD, ARP, neighbour discovery) are never steered, so they pass the
//! shaper by and a full queue cannot delay or drop them.

use aya_ebpf::programs::TcContext;

use veg_common::config::GatewayConfig;

/// Steer a packet about to leave through `ifindex` into that interface's shaper, when its direction has a limit.
#[inline(always)]
pub fn steer(ctx: &TcContext, cfg: &GatewayConfig, ifindex: u32) {
    let priority = if ifindex == cfg.external_ifindex {
        cfg.egress_priority
    } else {
        cfg.ingress_priority
    };
    if priority != 0 {
        unsafe { (*ctx.skb.skb).priority = priority };
    }
}
