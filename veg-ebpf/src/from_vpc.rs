//! Packets arriving from the VPC on the internal interface.

use aya_ebpf::programs::TcContext;
use veg_common::{
    config::GatewayConfig,
    flow::{PROTO_ICMP, PROTO_TCP, PROTO_UDP},
    fragment::{END_SOURCE, kind},
    policy::{ACTION_FORWARD, ACTION_SNAT},
    stats::Counter,
};

use crate::{
    flows, fragments, from_vpc_v6,
    icmp::{self, IcmpError},
    icmp_errors,
    maps::POLICY_V4,
    packet::{
        ICMP_ECHO_REQUEST, Packet, accept, is_broadcast_or_multicast, is_martian_destination,
        is_martian_source,
    },
    rewrite::{self, End},
    route::{self, Route},
    slow_path,
    stats::{count, drop_packet, pass_to_host},
};
use aya_ebpf::maps::lpm_trie::Key;

#[inline(always)]
pub fn handle(ctx: &TcContext) -> i32 {
    let (cfg, pkt) = match accept(ctx) {
        Ok(accepted) => accepted,
        Err(verdict) => return verdict,
    };
    if pkt.is_ipv6() {
        return from_vpc_v6::handle(ctx, cfg, pkt);
    }
    if is_martian_source(pkt.src_v4()) || is_martian_destination(pkt.dst_v4()) {
        return drop_packet(Counter::DropMartian);
    }
    if is_broadcast_or_multicast(pkt.dst_v4()) {
        // mDNS, SSDP, 255.255.255.255: link-local by nature; a router neither forwards nor translates them.
        return drop_packet(Counter::DropBroadcastMulticast);
    }
    let route = route::lookup(
        ctx,
        pkt.protocol,
        pkt.src_v4(),
        pkt.dst_v4(),
        pkt.wire_len(ctx),
    );
    match route {
        // For the instance itself (BFD, health checks), or unroutable: the kernel answers or delivers.
        Route::NotForwarded => return pass_to_host(Counter::PassedToHost),
        // Back into the VPC, or out of any other interface: not the gateway's job, and the kernel does not
        // forward on the instance's interfaces either.
        _ if route.ifindex() != Some(cfg.external_ifindex) => {
            return drop_packet(Counter::DropNoRoute);
        }
        _ => {}
    }
    let Some(policy) = POLICY_V4.get(&Key::new(32, pkt.src_v4().to_ne_bytes())) else {
        return drop_packet(Counter::DropNoPolicy);
    };
    let from = cfg.internal_addr_v4.ipv4_be();
    if let Route::TooBig { mtu, .. } = route
        && pkt.dont_fragment
    {
        let error = IcmpError::fragmentation_needed(mtu);
        count(Counter::TooBig);
        return icmp::send_error(ctx, pkt, &error, from);
    }
    if pkt.ttl <= 1 {
        // Traceroute through the gateway sees it as a hop.
        count(Counter::TtlExpired);
        return icmp::send_error(ctx, pkt, &IcmpError::TIME_EXCEEDED, from);
    }
    match policy.action {
        ACTION_SNAT => snat(ctx, pkt, cfg, &route),
        ACTION_FORWARD => forward(ctx, pkt, cfg, &route, Counter::ForwardedOut),
        _ => drop_packet(Counter::DropNoPolicy),
    }
}

#[inline(always)]
fn snat(ctx: &TcContext, pkt: &Packet, cfg: &GatewayConfig, route: &Route) -> i32 {
    if pkt.later_fragment {
        // No ports: the address its first fragment was given; if that has not come yet, the agent holds it.
        let Some(external) = fragments::translation(pkt) else {
            return drop_packet(slow_path::held(slow_path::hold(
                ctx,
                pkt,
                kind::HOLD_FROM_VPC,
            )));
        };
        if rewrite::rewrite_address(ctx, pkt, End::Source, external).is_err() {
            return drop_packet(Counter::DropMalformed);
        }
        return forward(ctx, pkt, cfg, route, Counter::FragmentsTranslatedOut);
    }
    let translatable = match pkt.protocol {
        PROTO_TCP | PROTO_UDP => true,
        PROTO_ICMP if icmp_errors::is_error(pkt.icmp_type) => {
            return error_out(ctx, pkt, cfg, route);
        }
        PROTO_ICMP => pkt.icmp_type == ICMP_ECHO_REQUEST,
        _ => false,
    };
    if !translatable {
        return drop_packet(Counter::DropUnsupported);
    }
    let nat = match flows::translate_outbound(pkt, cfg) {
        Ok(nat) => nat,
        Err(reason @ (Counter::DropPortExhausted | Counter::DropTableFull)) => {
            // RFC 5508 REQ-8: tell the client at once rather than let it time out.
            count(reason);
            let error = IcmpError::ADMINISTRATIVELY_PROHIBITED;
            return icmp::send_error(ctx, pkt, &error, cfg.internal_addr_v4.ipv4_be());
        }
        Err(reason) => return drop_packet(reason),
    };
    if pkt.is_fragment {
        // A first fragment: its datagram's later fragments follow its translation.
        fragments::remember(pkt, END_SOURCE, nat.addr.ipv4_be());
    }
    if rewrite::rewrite_end(ctx, pkt, End::Source, nat.addr.ipv4_be(), nat.port).is_err() {
        return drop_packet(Counter::DropMalformed);
    }
    forward(ctx, pkt, cfg, route, Counter::TranslatedOut)
}

/// A pod's ICMP error about a reply it got: translated for the remote.
#[inline(always)]
fn error_out(ctx: &TcContext, pkt: &Packet, cfg: &GatewayConfig, route: &Route) -> i32 {
    match icmp_errors::translate_from_vpc(ctx, pkt, cfg) {
        Ok(()) => forward(ctx, pkt, cfg, route, Counter::IcmpErrorsTranslatedOut),
        Err(reason) => drop_packet(reason),
    }
}

/// Decrement the TTL (IPv6: the hop limit) and send the packet out of its route's interface, counted under
/// `counter`. One too big for it (the callers answered DF and IPv6 with fragmentation needed or packet too big):
/// IPv4 with DF clear goes to the agent to be fragmented; IPv6 (a translated ICMPv6 error, never more than 1280
/// bytes, so not in practice) is dropped as unroutable.
#[inline(always)]
pub fn forward(
    ctx: &TcContext,
    pkt: &Packet,
    cfg: &GatewayConfig,
    route: &Route,
    counter: Counter,
) -> i32 {
    let aged = if pkt.is_ipv6() {
        rewrite::decrement_hop_limit(ctx, pkt)
    } else {
        rewrite::decrement_ttl(ctx, pkt)
    };
    if aged.is_err() {
        return drop_packet(Counter::DropMalformed);
    }
    if let Route::TooBig { mtu, .. } = route
        && !pkt.is_ipv6()
    {
        if pkt.dont_fragment || slow_path::fragment(ctx, pkt, *mtu).is_err() {
            return drop_packet(Counter::SlowPathDropped);
        }
        count(counter);
        return drop_packet(Counter::TooBigFragmented);
    }
    match route::send_forwarded(ctx, cfg, route) {
        Ok(verdict) => {
            count(counter);
            verdict
        }
        Err(()) => drop_packet(Counter::DropNoRoute),
    }
}
