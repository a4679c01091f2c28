//! Routing a packet the datapath has accepted: a FIB lookup in the instance's own routing table (or its answer
//! cached moments ago: route_cache.rs), then a redirect straight to the egress interface with the next hop's MAC
//! address (or through the kernel's neighbour code when it has none yet). Nothing goes through netfilter.
//!
//! The lookups are made as if the packet had arrived on the loopback interface. The kernel only routes a packet
//! (and bpf_fib_lookup only answers) for an input interface whose IPv4 forwarding is on; the agent keeps it off on
//! the instance's two interfaces and on for loopback alone, where nothing arrives from outside. So the kernel
//! itself never forwards between the interfaces: only these programs do, translating as they go, and without
//! them (not yet attached, or gone) nothing crosses untranslated. IPv6 alike, except that the kernel forwards IPv6
//! by its "all" switch alone, which the agent keeps off (docs/datapath.md).

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        TC_ACT_REDIRECT, bpf_fib_lookup, bpf_redir_neigh,
    },
    helpers::generated::{
        bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer,
    },
    programs::TcContext,
};

use veg_common::{address::Address, config::GatewayConfig, stats::Counter};

use crate::{
    maps::FIB_PARAMS,
    packet::write_at,
    route_cache::{self, Consulted},
    shaping,
    stats::count,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// The loopback interface's index, the same in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

pub enum Route {
    /// Out of `ifindex`, next hop's MAC known.
    Resolved {
        ifindex: u32,
        smac: [u8; 6],
        dmac: [u8; 6],
    },
    /// Out of `ifindex` to `nexthop` (IPv4, network byte order), MAC not resolved yet. For IPv6 `nexthop` is 0:
    /// the kernel finds the next hop again from the packet's destination (carrying the IPv6 one would take
    /// another 12 bytes of the verifier's scarce stack in every Route).
    Unresolved { ifindex: u32, nexthop: u32 },
    /// Out of `ifindex`, but bigger than the route's MTU, which is `mtu`.
    TooBig { mtu: u16, ifindex: u32 },
    /// Local delivery, unreachable, blackhole, forwarding disabled: the kernel's business.
    NotForwarded,
}

impl Route {
    #[inline(always)]
    pub fn ifindex(&self) -> Option<u32> {
        match self {
            Route::Resolved { ifindex, .. }
            | Route::Unresolved { ifindex, .. }
            | Route::TooBig { ifindex, .. } => Some(*ifindex),
            _ => None,
        }
    }
}

/// Look up the route for src -> dst (network byte order) of a packet `ip_len` long on the wire (`wire_len`), which
/// is checked against the path's MTU as the kernel knows it (a locked route MTU, or one learned from a router's
/// fragmentation needed, else the device's); 0 checks the skb against its route's device instead.
#[inline(always)]
pub fn lookup(ctx: &TcContext, protocol: u8, src: u32, dst: u32, ip_len: u16) -> Route {
    lookup_family(ctx, AF_INET, protocol, ip_len, |params| {
        params.__bindgen_anon_3.ipv4_src = src;
        params.__bindgen_anon_4.ipv4_dst = dst;
    })
}

/// The same for IPv6 (`ip_len` counts the 40-byte header). The lookup needs IPv6 forwarding on the loopback
/// interface, which the agent turns on while it runs, as it does IPv4's.
#[inline(always)]
pub fn lookup_v6(
    ctx: &TcContext,
    protocol: u8,
    src: &Address,
    dst: &Address,
    ip_len: u16,
) -> Route {
    lookup_family(ctx, AF_INET6, protocol, ip_len, |params| {
        params.__bindgen_anon_3.ipv6_src = words(src);
        params.__bindgen_anon_4.ipv6_dst = words(dst);
    })
}

/// An IPv6 address as the lookup's four 32-bit words (each in network byte order, as the address lies).
#[inline(always)]
fn words(addr: &Address) -> [u32; 4] {
    let b = &addr.bytes;
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

/// The lookup for one family; `set_addresses` writes the source and destination into the parameters (again
/// before the second lookup of a packet too big, as the first overwrites them).
#[inline(always)]
fn lookup_family(
    ctx: &TcContext,
    family: u8,
    protocol: u8,
    ip_len: u16,
    set_addresses: impl Fn(&mut bpf_fib_lookup),
) -> Route {
    // The parameters live in per-CPU scratch memory: the program's 512-byte stack is needed elsewhere.
    let Some(params) = FIB_PARAMS.get_ptr_mut(0) else {
        return Route::NotForwarded;
    };
    let params = unsafe { &mut *params };
    // Every input the lookup reads (flag-gated ones aside), set one by one: zeroing the whole struct compiled to
    // a call to a byte-by-byte memset subprogram, about 60 ns per packet (`cargo xtask bench profile`).
    params.family = family;
    params.l4_protocol = protocol;
    params.sport = 0;
    params.dport = 0;
    params.__bindgen_anon_1.tot_len = ip_len;
    params.__bindgen_anon_2.flowinfo = 0;
    params.ifindex = LOOPBACK_IFINDEX;
    set_addresses(params);
    // The cache serves lookups that give the packet's length (0 leaves the MTU check to the kernel, on the skb).
    let cached = if ip_len == 0 {
        None
    } else {
        match route_cache::consult(params, family == AF_INET6, ip_len) {
            Consulted::Hit(slot) => {
                return Route::Resolved {
                    ifindex: slot.ifindex,
                    smac: slot.smac,
                    dmac: slot.dmac,
                };
            }
            Consulted::Miss(slot) => slot,
        }
    };
    count(Counter::RouteLookups);
    let rc = fib(ctx, params);
    if rc < 0 {
        return Route::NotForwarded;
    }
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            if let Some(slot) = cached {
                route_cache::fill(slot, params);
            }
            Route::Resolved {
                ifindex: params.ifindex,
                smac: params.smac,
                dmac: params.dmac,
            }
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => Route::Unresolved {
            ifindex: params.ifindex,
            // IPv6's next hop is left to the kernel to find again (see `redirect`).
            nexthop: if family == AF_INET {
                unsafe { params.__bindgen_anon_4.ipv4_dst }
            } else {
                0
            },
        },
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            let mtu = unsafe { params.__bindgen_anon_1.mtu_result };
            // The kernel stops before naming the interface when the packet is too big: ask again for the
            // smallest packet, which fits any route, to learn it.
            params.__bindgen_anon_1.tot_len = 1;
            params.ifindex = LOOPBACK_IFINDEX;
            set_addresses(params);
            match fib(ctx, params) as u32 {
                BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH => Route::TooBig {
                    mtu,
                    ifindex: params.ifindex,
                },
                _ => Route::NotForwarded,
            }
        }
        _ => Route::NotForwarded,
    }
}

#[inline(always)]
fn fib(ctx: &TcContext, params: &mut bpf_fib_lookup) -> i64 {
    unsafe {
        fib_lookup(
            ctx.skb.skb as *mut _,
            params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    }
}

/// Whether a packet forwarded out of `ifindex` may go straight into the receive path of the internal veth's peer,
/// in the VPC's namespace, rather than through the veth's transmit (GatewayConfig::internal_peer): only what
/// arrived from outside (veg_from_outside runs at TC ingress, where the kernel allows it), and not while a shaper
/// on the internal interface must see the packets. ICMP errors the instance sends never take it (they pass false
/// to `redirect`): one made of a VPC packet and handed back to the peer it arrived from never reached the client.
#[inline(always)]
fn into_peer(ctx: &TcContext, cfg: &GatewayConfig, ifindex: u32) -> bool {
    cfg.internal_peer != 0
        && ifindex == cfg.internal_ifindex
        && cfg.ingress_priority == 0
        && unsafe { (*ctx.skb.skb).ifindex } == cfg.external_ifindex
}

/// Send a forwarded packet out of its route's interface: steered into the interface's shaper when its direction
/// has a limit, and into the internal veth's peer where it may be. Returns the TC verdict.
#[inline(always)]
pub fn send_forwarded(ctx: &TcContext, cfg: &GatewayConfig, route: &Route) -> Result<i32, ()> {
    let into_peer = match route.ifindex() {
        Some(ifindex) => {
            shaping::steer(ctx, cfg, ifindex);
            into_peer(ctx, cfg, ifindex)
        }
        None => false,
    };
    redirect(ctx, route, into_peer)
}

/// Send the packet out of its route's interface, or straight into the internal veth's peer when `into_peer` (the
/// function of that name decides it for forwarded packets). Returns the TC verdict.
#[inline(always)]
pub fn redirect(ctx: &TcContext, route: &Route, into_peer: bool) -> Result<i32, ()> {
    match route {
        Route::Resolved {
            ifindex,
            smac,
            dmac,
        } => {
            write_at(ctx, 0, *dmac)?;
            write_at(ctx, 6, *smac)?;
            let verdict = if into_peer {
                unsafe { bpf_redirect_peer(*ifindex, 0) }
            } else {
                unsafe { bpf_redirect(*ifindex, 0) }
            };
            Ok(verdict as i32)
        }
        Route::Unresolved { ifindex, nexthop } => {
            let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
            nh.nh_family = AF_INET as u32;
            nh.__bindgen_anon_1.ipv4_nh = *nexthop;
            let (params, len) = if *nexthop == 0 {
                (core::ptr::null_mut(), 0)
            } else {
                (&raw mut nh, core::mem::size_of::<bpf_redir_neigh>() as i32)
            };
            let rc = unsafe { bpf_redirect_neigh(*ifindex, params, len, 0) };
            if rc == TC_ACT_REDIRECT as i64 {
                Ok(rc as i32)
            } else {
                Err(())
            }
        }
        _ => Err(()),
    }
}
