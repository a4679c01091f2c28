//! Packets arriving from outside on the external interface.

use aya_ebpf::{maps::lpm_trie::Key, programs::TcContext};
use veg_common::{
    config::GatewayConfig,
    flow::{PROTO_ICMP, PROTO_TCP, PROTO_UDP},
    fragment::{END_DESTINATION, kind},
    policy::{ACTION_FORWARD, ACTION_SNAT},
    stats::Counter,
};

use crate::{
    flows, fragments, from_outside_v6,
    from_vpc::forward,
    icmp::{self, IcmpError},
    icmp_errors,
    maps::POLICY_V4,
    packet::{
        ICMP_ECHO_REPLY, Packet, accept, is_broadcast_or_multicast, is_martian_destination,
        is_martian_source,
    },
    rewrite::{self, End},
    route::{self, Route},
    slow_path,
    stats::{count, drop_packet, pass_to_host},
};

#[inline(always)]
pub fn handle(ctx: &TcContext) -> i32 {
    let (cfg, pkt) = match accept(ctx) {
        Ok(accepted) => accepted,
        Err(verdict) => return verdict,
    };
    if pkt.is_ipv6() {
        return from_outside_v6::handle(ctx, cfg, pkt);
    }
    if is_martian_source(pkt.src_v4()) || is_martian_destination(pkt.dst_v4()) {
        return drop_packet(Counter::DropMartian);
    }
    if pkt.dst_v4() == cfg.external_addr_v4.ipv4_be() {
        return to_external_address(ctx, pkt, cfg);
    }
    if is_broadcast_or_multicast(pkt.dst_v4()) {
        // The kernel delivers these on the link and never forwards them.
        return pass_to_host(Counter::PassedToHost);
    }
    match POLICY_V4
        .get(&Key::new(32, pkt.dst_v4().to_ne_bytes()))
        .map(|p| p.action)
    {
        // Replies to forward (no-SNAT) sources come back untranslated.
        Some(ACTION_FORWARD) => route_to_vpc(ctx, pkt, cfg, None),
        // A SNAT source is only reachable through its translation.
        Some(ACTION_SNAT) => drop_packet(Counter::DropUnsolicited),
        _ => not_ours(ctx, pkt),
    }
}

/// A packet from outside that no policy lets in: the instance's own addresses are the kernel's business, but
/// anything the kernel would route onward (into the VPC, or back out) is dropped here, so that a host that routes
/// a VPC subnet via the external address reaches nothing the policy does not name.
#[inline(always)]
fn not_ours(ctx: &TcContext, pkt: &Packet) -> i32 {
    match route::lookup(ctx, pkt.protocol, pkt.src_v4(), pkt.dst_v4(), 0) {
        Route::NotForwarded => pass_to_host(Counter::PassedToHost),
        _ => drop_packet(Counter::DropInboundNoPolicy),
    }
}

#[inline(always)]
fn to_external_address(ctx: &TcContext, pkt: &Packet, cfg: &GatewayConfig) -> i32 {
    if pkt.later_fragment {
        // No ports: the client its first fragment was translated back to. If that has not come yet, the datagram
        // may be a client's or the instance's own: the agent holds a copy for the first case, the instance's
        // stack gets it for the second (and never completes it if it is a client's: the first fragment is not
        // for the stack).
        if let Some(client) = fragments::translation(pkt) {
            return fragment_to_vpc(ctx, pkt, cfg, client);
        }
        count(slow_path::held(slow_path::hold(
            ctx,
            pkt,
            kind::HOLD_FROM_OUTSIDE,
        )));
        return pass_to_host(Counter::PassedToHost);
    }
    let port = match pkt.protocol {
        PROTO_TCP | PROTO_UDP => pkt.dst_port,
        PROTO_ICMP if pkt.icmp_type == ICMP_ECHO_REPLY => pkt.dst_port,
        PROTO_ICMP if icmp_errors::is_error(pkt.icmp_type) => return error_to_vpc(ctx, pkt, cfg),
        // Echo requests and other protocols are for the instance itself.
        _ => return pass_to_host(Counter::PassedToHost),
    };
    let miss = match flows::translate_inbound(pkt, cfg) {
        Ok(nat) => {
            if pkt.is_fragment {
                // A first fragment: its datagram's later fragments follow its translation.
                fragments::remember(pkt, END_DESTINATION, nat.addr.ipv4_be());
            }
            return route_to_vpc(ctx, pkt, cfg, Some(nat));
        }
        Err(miss) => miss,
    };
    unmatched(port, cfg, miss)
}

/// A packet to the external address, of either family, that matched no translation (`miss`: why) at its
/// destination `port` (network byte order).
#[inline(always)]
pub fn unmatched(port: u16, cfg: &GatewayConfig, miss: Counter) -> i32 {
    let port = u16::from_be(port);
    if port >= cfg.port_min && port <= cfg.port_max {
        // In the NAT range but matching no flow (or a RST that does not fit its flow): never let it through to a
        // client or the host.
        drop_packet(miss)
    } else {
        // Outside the NAT range: the instance's own sockets (the kernel's ephemeral range).
        pass_to_host(Counter::PassedToHost)
    }
}

/// An ICMP error from outside: translated back to the client whose flow it is about, left to the instance when it
/// is about the instance's own traffic.
#[inline(always)]
fn error_to_vpc(ctx: &TcContext, pkt: &Packet, cfg: &GatewayConfig) -> i32 {
    let client = match icmp_errors::translate_from_outside(ctx, pkt, cfg) {
        Ok(client) => client,
        Err(Counter::PassedToHost) => return pass_to_host(Counter::PassedToHost),
        Err(reason) => return drop_packet(reason),
    };
    let route = route::lookup(
        ctx,
        pkt.protocol,
        pkt.src_v4(),
        client.addr,
        pkt.wire_len(ctx),
    );
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
fn fragment_to_vpc(ctx: &TcContext, pkt: &Packet, cfg: &GatewayConfig, client: u32) -> i32 {
    let route = route::lookup(ctx, pkt.protocol, pkt.src_v4(), client, pkt.wire_len(ctx));
    if route.ifindex() != Some(cfg.internal_ifindex) {
        return drop_packet(Counter::DropNoRoute);
    }
    if pkt.ttl <= 1 {
        // Time exceeded answers a first fragment only (RFC 1812), which got it.
        return drop_packet(Counter::TtlExpired);
    }
    if rewrite::rewrite_address(ctx, pkt, End::Destination, client).is_err() {
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
    let dst = nat
        .as_ref()
        .map(|n| n.addr.ipv4_be())
        .unwrap_or(pkt.dst_v4());
    let route = route::lookup(ctx, pkt.protocol, pkt.src_v4(), dst, pkt.wire_len(ctx));
    // Errors go back from the external address, quoting the packet as it arrived (what the remote sent).
    let from = cfg.external_addr_v4.ipv4_be();
    match route {
        Route::TooBig { mtu, .. } if pkt.dont_fragment => {
            let error = IcmpError::fragmentation_needed(mtu);
            count(Counter::TooBig);
            return icmp::send_error(ctx, pkt, &error, from);
        }
        _ if route.ifindex() != Some(cfg.internal_ifindex) => {
            return drop_packet(Counter::DropNoRoute);
        }
        _ => {}
    }
    if pkt.ttl <= 1 {
        count(Counter::TtlExpired);
        return icmp::send_error(ctx, pkt, &IcmpError::TIME_EXCEEDED, from);
    }
    let counter = match nat {
        Some(nat) => {
            if rewrite::rewrite_end(ctx, pkt, End::Destination, nat.addr.ipv4_be(), nat.port)
                .is_err()
            {
                return drop_packet(Counter::DropMalformed);
            }
            Counter::TranslatedIn
        }
        None => Counter::ForwardedIn,
    };
    forward(ctx, pkt, cfg, &route, counter)
}
