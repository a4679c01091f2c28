//! Packets arriving from the VPC on the internal interface.

use aya_ebpf::programs::TcContext;
use veg_common::{
    config::GatewayConfig,
    flow::{PROTO_ICMP, PROTO_TCP, PROTO_UDP},
    policy::{ACTION_FORWARD, ACTION_SNAT},
    stats::Counter,
};

use crate::{
    flows,
    maps::POLICY_V4,
    packet::{
        ICMP_ECHO_REQUEST, Ipv4Packet, accept, is_broadcast_or_multicast, is_martian_destination,
        is_martian_source,
    },
    rewrite::{self, End},
    route::{self, Route},
    stats::{count, drop_packet, pass_to_host},
};
use aya_ebpf::maps::lpm_trie::Key;

#[inline(always)]
pub fn handle(ctx: &TcContext) -> i32 {
    let (cfg, pkt) = match accept(ctx) {
        Ok(accepted) => accepted,
        Err(verdict) => return verdict,
    };
    if is_martian_source(pkt.src) || is_martian_destination(pkt.dst) {
        return drop_packet(Counter::DropMartian);
    }
    if is_broadcast_or_multicast(pkt.dst) {
        // mDNS, SSDP, 255.255.255.255: link-local by nature; a router neither forwards nor translates them.
        return drop_packet(Counter::DropBroadcastMulticast);
    }
    let route = route::lookup(ctx, cfg.internal_ifindex, pkt.protocol, pkt.src, pkt.dst);
    match route {
        // For the instance itself, inside the VPC, or unroutable: the kernel answers or delivers.
        Route::NotForwarded => return pass_to_host(Counter::PassedToHost),
        Route::Resolved { .. } | Route::Unresolved { .. }
            if route.ifindex() != Some(cfg.external_ifindex) =>
        {
            return pass_to_host(Counter::PassedToHost);
        }
        _ => {}
    }
    let Some(policy) = POLICY_V4.get(Key::new(32, pkt.src.to_ne_bytes())) else {
        return drop_packet(Counter::DropNoPolicy);
    };
    match route {
        // With DF the kernel answers "fragmentation needed" and forwards nothing; without DF it would fragment
        // and forward untranslated, so drop.
        Route::TooBig if pkt.dont_fragment => return pass_to_host(Counter::PassedToHost),
        Route::TooBig => return drop_packet(Counter::DropNoRoute),
        _ => {}
    }
    if pkt.ttl <= 1 {
        // The kernel sends ICMP time exceeded, so traceroute through the gateway works.
        return pass_to_host(Counter::TtlExpired);
    }
    match policy.action {
        ACTION_SNAT => snat(ctx, &pkt, cfg, &route),
        ACTION_FORWARD => forward(ctx, &pkt, &route, Counter::ForwardedOut),
        _ => drop_packet(Counter::DropNoPolicy),
    }
}

#[inline(always)]
fn snat(ctx: &TcContext, pkt: &Ipv4Packet, cfg: &GatewayConfig, route: &Route) -> i32 {
    let translatable = match pkt.protocol {
        PROTO_TCP | PROTO_UDP => true,
        PROTO_ICMP => pkt.icmp_type == ICMP_ECHO_REQUEST,
        _ => false,
    };
    if !translatable {
        return drop_packet(Counter::DropUnsupported);
    }
    if pkt.is_fragment {
        return drop_packet(Counter::DropFragment);
    }
    let nat = match flows::translate_outbound(pkt, cfg) {
        Ok(nat) => nat,
        Err(reason) => return drop_packet(reason),
    };
    if rewrite::rewrite_end(ctx, pkt, End::Source, nat.addr, nat.port).is_err() {
        return drop_packet(Counter::DropMalformed);
    }
    forward(ctx, pkt, route, Counter::TranslatedOut)
}

/// Decrement the TTL and send the packet out of its route's interface.
#[inline(always)]
pub fn forward(ctx: &TcContext, pkt: &Ipv4Packet, route: &Route, counter: Counter) -> i32 {
    if rewrite::decrement_ttl(ctx, pkt).is_err() {
        return drop_packet(Counter::DropMalformed);
    }
    match route::redirect(ctx, route) {
        Ok(verdict) => {
            count(counter);
            verdict
        }
        Err(()) => drop_packet(Counter::DropNoRoute),
    }
}
