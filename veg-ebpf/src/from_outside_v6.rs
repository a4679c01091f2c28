//! IPv6 packets arriving from outside: replies translated back to their clients, replies to forward sources
//! routed in, everything else for the external address left to the instance, and nothing routed into the VPC
//! that no policy names.

use aya_ebpf::{maps::lpm_trie::Key, programs::TcContext};
use veg_common::{
    address::Address,
    config::GatewayConfig,
    flow::{PROTO_ICMPV6, PROTO_TCP, PROTO_UDP},
    fragment::{END_DESTINATION, kind},
    policy::{ACTION_FORWARD, ACTION_SNAT},
    stats::Counter,
};

use crate::{
    flows, fragments,
    from_outside::unmatched,
    from_vpc::forward,
    icmp6::{self, Icmp6Error},
    icmp6_errors,
    maps::{POLICY_V6, flow_scratch},
    packet::{ICMPV6_ECHO_REPLY, Packet, is_ipv6_link_scope, is_ipv6_martian},
    rewrite::{self, End},
    route::{self, Route},
    slow_path,
    stats::{count, drop_packet, pass_to_host},
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
    if pkt.later_fragment {
        // No ports: the client its first fragment was translated back to. If that has not come yet, the datagram
        // may be a client's or the instance's own: the agent holds a copy for the first case, the instance's
        // stack gets it for the second (as for IPv4).
        if let Some(client) = fragments::translation_v6(pkt) {
            return fragment_to_vpc(ctx, pkt, cfg, client);
        }
        count(slow_path::held(slow_path::hold_v6(
            ctx,
            pkt,
            kind::HOLD_FROM_OUTSIDE,
        )));
        return pass_to_host(Counter::PassedToHost);
    }
    let port = match pkt.protocol {
        PROTO_TCP | PROTO_UDP => pkt.dst_port,
        PROTO_ICMPV6 if pkt.icmp_type == ICMPV6_ECHO_REPLY => pkt.dst_port,
        PROTO_ICMPV6 if icmp6_errors::is_error(pkt.icmp_type) => {
            return error_to_vpc(ctx, pkt, cfg);
        }
        // Echo requests, neighbour discovery and other protocols are for the instance itself.
        _ => return pass_to_host(Counter::PassedToHost),
    };
    let miss = match flows::translate_inbound(pkt, cfg) {
        Ok(nat) => {
            if pkt.is_fragment {
                // A first fragment: its datagram's later fragments follow its translation.
                fragments::remember_v6(pkt, END_DESTINATION, &nat.addr);
            }
            return route_to_vpc(ctx, pkt, cfg, Some(nat));
        }
        Err(miss) => miss,
    };
    unmatched(port, cfg, miss)
}

/// An ICMPv6 error from outside: translated back to the client whose flow it is about (a Packet Too Big is how
/// the client learns its path MTU), left to the instance when it is about the instance's own traffic.
#[inline(always)]
fn error_to_vpc(ctx: &TcContext, pkt: &Packet, cfg: &GatewayConfig) -> i32 {
    match icmp6_errors::translate_from_outside(ctx, pkt, cfg) {
        Ok(()) => {}
        Err(Counter::PassedToHost) => return pass_to_host(Counter::PassedToHost),
        Err(reason) => return drop_packet(reason),
    }
    let Some(scratch) = flow_scratch() else {
        return drop_packet(Counter::DropNoRoute);
    };
    let client = &scratch.error_client;
    let route = route::lookup_v6(ctx, pkt.protocol, &pkt.src, client, pkt.wire_len(ctx));
    if route.ifindex() != Some(cfg.internal_ifindex) {
        return drop_packet(Counter::DropNoRoute);
    }
    if pkt.ttl <= 1 {
        // An error is never answered with an error.
        return drop_packet(Counter::TtlExpired);
    }
    forward(ctx, pkt, cfg, &route, Counter::IcmpErrorsTranslatedIn)
}

/// A later fragment of a reply, to the client its first fragment was translated back to.
#[inline(always)]
fn fragment_to_vpc(ctx: &TcContext, pkt: &Packet, cfg: &GatewayConfig, client: &Address) -> i32 {
    let route = route::lookup_v6(ctx, pkt.protocol, &pkt.src, client, pkt.wire_len(ctx));
    if route.ifindex() != Some(cfg.internal_ifindex) {
        return drop_packet(Counter::DropNoRoute);
    }
    if pkt.ttl <= 1 {
        // Time exceeded answers a first fragment only, which got it.
        return drop_packet(Counter::TtlExpired);
    }
    if rewrite::rewrite_address_v6(ctx, End::Destination, client).is_err() {
        return drop_packet(Counter::DropMalformed);
    }
    forward(ctx, pkt, cfg, &route, Counter::FragmentsTranslatedIn)
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
    // Errors go back from the external address, quoting the packet as it arrived (what the remote sent).
    let from = &cfg.external_addr_v6;
    match route {
        Route::TooBig { mtu, .. } => {
            count(Counter::TooBig);
            return icmp6::send_error(ctx, pkt, &Icmp6Error::packet_too_big(mtu), from);
        }
        _ if route.ifindex() != Some(cfg.internal_ifindex) => {
            return drop_packet(Counter::DropNoRoute);
        }
        _ => {}
    }
    if pkt.ttl <= 1 {
        count(Counter::TtlExpired);
        return icmp6::send_error(ctx, pkt, &Icmp6Error::TIME_EXCEEDED, from);
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
    forward(ctx, pkt, cfg, &route, counter)
}
