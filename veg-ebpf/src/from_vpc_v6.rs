//! IPv6 packets arriving from the VPC: NAT66 with port translation for SNAT sources, routing for forward sources,
//! the same no-policy drop as IPv4. Link-scope traffic (neighbour discovery, router solicitations, MLD) is the
//! instance's own and goes to its stack.

use aya_ebpf::{maps::lpm_trie::Key, programs::TcContext};
use veg_common::{
    config::GatewayConfig,
    flow::{PROTO_ICMPV6, PROTO_TCP, PROTO_UDP},
    fragment::{END_SOURCE, kind},
    policy::{ACTION_FORWARD, ACTION_SNAT},
    stats::Counter,
};

use crate::{
    flows, fragments,
    from_vpc::forward,
    icmp6::{self, Icmp6Error},
    icmp6_errors,
    maps::POLICY_V6,
    packet::{ICMPV6_ECHO_REQUEST, Packet, is_ipv6_link_scope, is_ipv6_martian},
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
    let route = route::lookup_v6(ctx, pkt.protocol, &pkt.src, &pkt.dst, pkt.wire_len(ctx));
    match route {
        Route::NotForwarded => return pass_to_host(Counter::PassedToHost),
        _ if route.ifindex() != Some(cfg.external_ifindex) => {
            return drop_packet(Counter::DropNoRoute);
        }
        _ => {}
    }
    let Some(policy) = POLICY_V6.get(&Key::new(128, pkt.src.bytes)) else {
        return drop_packet(Counter::DropNoPolicy);
    };
    let from = &cfg.internal_addr_v6;
    if let Route::TooBig { mtu, .. } = route {
        // IPv6 routers never fragment: the sender learns the path's MTU from this.
        count(Counter::TooBig);
        return icmp6::send_error(ctx, pkt, &Icmp6Error::packet_too_big(mtu), from);
    }
    if pkt.ttl <= 1 {
        // traceroute6 through the gateway sees it as a hop.
        count(Counter::TtlExpired);
        return icmp6::send_error(ctx, pkt, &Icmp6Error::TIME_EXCEEDED, from);
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
        let Some(external) = fragments::translation_v6(pkt) else {
            return drop_packet(slow_path::held(slow_path::hold_v6(
                ctx,
                pkt,
                kind::HOLD_FROM_VPC,
            )));
        };
        if rewrite::rewrite_address_v6(ctx, End::Source, external).is_err() {
            return drop_packet(Counter::DropMalformed);
        }
        return forward(ctx, pkt, cfg, route, Counter::FragmentsTranslatedOut);
    }
    let translatable = match pkt.protocol {
        PROTO_TCP | PROTO_UDP => true,
        PROTO_ICMPV6 if icmp6_errors::is_error(pkt.icmp_type) => {
            return match icmp6_errors::translate_from_vpc(ctx, pkt, cfg) {
                Ok(()) => forward(ctx, pkt, cfg, route, Counter::IcmpErrorsTranslatedOut),
                Err(reason) => drop_packet(reason),
            };
        }
        PROTO_ICMPV6 => pkt.icmp_type == ICMPV6_ECHO_REQUEST,
        _ => false,
    };
    if !translatable {
        return drop_packet(Counter::DropUnsupported);
    }
    let nat = match flows::translate_outbound(pkt, cfg) {
        Ok(nat) => nat,
        Err(reason @ (Counter::DropPortExhausted | Counter::DropTableFull)) => {
            // RFC 5508 REQ-8, as for IPv4: tell the client at once.
            count(reason);
            let error = Icmp6Error::ADMINISTRATIVELY_PROHIBITED;
            return icmp6::send_error(ctx, pkt, &error, &cfg.internal_addr_v6);
        }
        Err(reason) => return drop_packet(reason),
    };
    if pkt.is_fragment {
        // A first fragment: its datagram's later fragments follow its translation.
        fragments::remember_v6(pkt, END_SOURCE, &nat.addr);
    }
    if rewrite::rewrite_end_v6(ctx, pkt, End::Source, &nat.addr, nat.port).is_err() {
        return drop_packet(Counter::DropMalformed);
    }
    forward(ctx, pkt, cfg, route, Counter::TranslatedOut)
}
