//! IPv6 packets arriving from outside: replies translated back to their clients, replies to forward sources
//! routed in, everything else for the external address left to the instance, and nothing routed into the VPC
//! that no policy names.

use aya_ebpf::{maps::lpm_trie::Key, programs::TcContext};
use veg_common::{
    config::GatewayConfig,
    flow::{PROTO_ICMPV6, PROTO_TCP, PROTO_UDP},
    policy::{ACTION_FORWARD, ACTION_SNAT},
    stats::Counter,
};

use crate::{
    flows,
    from_vpc_v6::forward,
    maps::POLICY_V6,
    packet::{ICMPV6_ECHO_REPLY, Packet, is_ipv6_link_scope, is_ipv6_martian},
    rewrite::{self, End},
    route::{self, Route},
    stats::{drop_packet, pass_to_host},
};

#[inline(always)]
pub fn handle(ctx: &TcContext, cfg: &GatewayConfig, pkt: &Packet) -> i32 {
    if is_ipv6_link_scope(&pkt.src) || is_ipv6_link_scope(&pkt.dst) {
        return pass_to_host(Counter::PassedToHost);
    }
    if is_ipv6_martian(&pkt.src) || is_ipv6_martian(&pkt.dst) {
        return drop_packet(Counter::DropMartian);
    }
    if pkt.dst == cfg.external_addr_v6 {
        return to_external_address(ctx, pkt, cfg);
    }
    match POLICY_V6
        .get(&Key::new(128, pkt.dst.bytes))
        .map(|p| p.action)
    {
        Some(ACTION_FORWARD) => route_to_vpc(ctx, pkt, cfg, None),
        Some(ACTION_SNAT) => drop_packet(Counter::DropUnsolicited),
        _ => match route::lookup_v6(ctx, pkt.protocol, &pkt.src, &pkt.dst, 0) {
            Route::NotForwarded => pass_to_host(Counter::PassedToHost),
            _ => drop_packet(Counter::DropInboundNoPolicy),
        },
    }
}

#[inline(always)]
fn to_external_address(ctx: &TcContext, pkt: &Packet, cfg: &GatewayConfig) -> i32 {
    if pkt.is_fragment {
        // Fragments of replies are not translated yet: the instance's stack gets them (and completes only its
        // own datagrams).
        return pass_to_host(Counter::PassedToHost);
    }
    let port = match pkt.protocol {
        PROTO_TCP | PROTO_UDP => pkt.dst_port,
        PROTO_ICMPV6 if pkt.icmp_type == ICMPV6_ECHO_REPLY => pkt.dst_port,
        // Echo requests, ICMPv6 errors and other protocols are for the instance itself.
        _ => return pass_to_host(Counter::PassedToHost),
    };
    let miss = match flows::translate_inbound(pkt, cfg) {
        Ok(nat) => return route_to_vpc(ctx, pkt, cfg, Some(nat)),
        Err(miss) => miss,
    };
    let port = u16::from_be(port);
    if port >= cfg.port_min && port <= cfg.port_max {
        drop_packet(miss)
    } else {
        // Outside the NAT range: the instance's own sockets.
        pass_to_host(Counter::PassedToHost)
    }
}

/// Send a packet from outside to a VPC client, translating its destination first when `nat` is given.
#[inline(always)]
fn route_to_vpc(
    ctx: &TcContext,
    pkt: &Packet,
    cfg: &GatewayConfig,
    nat: Option<flows::Translation>,
) -> i32 {
    let dst = nat.as_ref().map(|n| &n.addr).unwrap_or(&pkt.dst);
    let route = route::lookup_v6(ctx, pkt.protocol, &pkt.src, dst, pkt.wire_len(ctx));
    match route {
        Route::TooBig { .. } => return drop_packet(Counter::TooBig),
        _ if route.ifindex() != Some(cfg.internal_ifindex) => {
            return drop_packet(Counter::DropNoRoute);
        }
        _ => {}
    }
    if pkt.ttl <= 1 {
        return drop_packet(Counter::TtlExpired);
    }
    let counter = match nat {
        Some(nat) => {
            if rewrite::rewrite_end_v6(ctx, pkt, End::Destination, &nat.addr, nat.port).is_err() {
                return drop_packet(Counter::DropMalformed);
            }
            Counter::TranslatedIn
        }
        None => Counter::ForwardedIn,
    };
    forward(ctx, pkt, &route, counter)
}
