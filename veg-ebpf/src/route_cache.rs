//! The routes the programs looked up lately, so that most packets skip the kernel's route lookup (bpf_fib_lookup,
//! about a quarter of an established packet's cost in the program).
//!
//! A direct-mapped cache per CPU: a lookup's inputs (family, protocol, source, destination) pick one of
//! ROUTE_CACHE_SLOTS slots by hash, and the slot answers if it holds a route for exactly those inputs that is still
//! current. Keyed by the lookup, not kept in the flow entries: every flow toward a destination shares one slot,
//! the flow table stays as small as it was (a next hop in each entry would cost 24 bytes per entry, 48 per
//! translation), and new flows and forward-only sources gain as much as established flows.
//!
//! Current means both:
//! - looked up under the present ROUTE_GENERATION, which the agent's datapath bumps on every route, rule,
//!   neighbour, address or link change it hears from rtnetlink (route_watch.rs in the agent), so a changed next
//!   hop or neighbour MAC is used as soon as the kernel has it;
//! - looked up less than ROUTE_CACHE_MAX_AGE_NS ago, which bounds what no notification announces (a path MTU the
//!   kernel learned for the instance's own traffic) and keeps routes right while no agent runs (pinned programs
//!   live on through an agent's restart).
//!
//! Only complete answers are kept (interface and both MACs): a route whose next hop has no MAC yet, one too small
//! for the packet, local delivery and the rest are asked of the kernel every time, as before. A packet longer
//! than the cached route's MTU is asked of the kernel too, which answers with the MTU to report.

use aya_ebpf::{bindings::bpf_fib_lookup, helpers::generated::bpf_ktime_get_coarse_ns};

use crate::maps::{ROUTE_CACHE, ROUTE_GENERATION};

/// Slots per CPU: destinations looked up at once without evicting each other (a gateway's traffic mostly leaves by
/// one default route, but the slots are keyed by destination).
pub const ROUTE_CACHE_SLOTS: u32 = 1024;

/// How long a cached route is used without asking the kernel again.
const ROUTE_CACHE_MAX_AGE_NS: u64 = 1_000_000_000;

/// One cached route: the lookup's inputs and its answer.
#[repr(C)]
pub struct CachedRoute {
    /// Until when (coarse CLOCK_MONOTONIC ns) it may be used; 0 while empty or being refilled.
    expires_ns: u64,
    /// ROUTE_GENERATION when it was looked up.
    generation: u32,
    pub ifindex: u32,
    /// The inputs: family, protocol and the two addresses as the lookup's words (IPv4: the first alone).
    family: u8,
    protocol: u8,
    /// The route's MTU: longer packets are asked of the kernel.
    mtu: u16,
    src: [u32; 4],
    dst: [u32; 4],
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

/// The route changes the agent has seen so far (0 while no agent watches).
#[inline(always)]
fn generation() -> u32 {
    ROUTE_GENERATION.get(0).copied().unwrap_or(0)
}

#[inline(always)]
fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// What the cache says of a lookup.
pub enum Consulted {
    /// A current route for it.
    Hit(&'static CachedRoute),
    /// None: the slot to fill with the kernel's answer (emptied, its inputs noted), if there is one.
    Miss(Option<&'static mut CachedRoute>),
}

/// Ask the cache for the route of the lookup whose inputs `params` holds (before the lookup overwrites them), for a
/// packet of `ip_len` bytes. A function of its own in the object, so that its work takes no stack in the programs'
/// main frame, which their deepest paths need whole.
#[inline(never)]
pub fn consult(params: &bpf_fib_lookup, ipv6: bool, ip_len: u16) -> Consulted {
    let Some(slot) = slot(params, ipv6) else {
        return Consulted::Miss(None);
    };
    if answers(slot, params, ipv6, ip_len) {
        return Consulted::Hit(slot);
    }
    begin_fill(slot, params, ipv6);
    Consulted::Miss(Some(slot))
}

/// The slot for the lookup whose inputs `params` holds.
#[inline(always)]
fn slot(params: &bpf_fib_lookup, ipv6: bool) -> Option<&'static mut CachedRoute> {
    // The fields are read where they lie, never copied: the verifier's 512 bytes of stack are spoken for.
    let mixed = unsafe {
        if ipv6 {
            let (src, dst) = (
                &params.__bindgen_anon_3.ipv6_src,
                &params.__bindgen_anon_4.ipv6_dst,
            );
            src[0] ^ src[1] ^ src[2] ^ src[3] ^ (dst[0] ^ dst[1] ^ dst[2] ^ dst[3]).rotate_left(16)
        } else {
            params.__bindgen_anon_3.ipv4_src ^ params.__bindgen_anon_4.ipv4_dst.rotate_left(16)
        }
    };
    // Fibonacci hashing: the top bits of the product depend on all of the input's.
    let index = mixed.wrapping_mul(0x9e37_79b1) >> (32 - ROUTE_CACHE_SLOTS.trailing_zeros());
    ROUTE_CACHE.get_ptr_mut(index).map(|p| unsafe { &mut *p })
}

/// Whether `slot` was filled for the addresses in `params`.
#[inline(always)]
fn same_addresses(slot: &CachedRoute, params: &bpf_fib_lookup, ipv6: bool) -> bool {
    unsafe {
        if ipv6 {
            slot.src == params.__bindgen_anon_3.ipv6_src
                && slot.dst == params.__bindgen_anon_4.ipv6_dst
        } else {
            slot.src[0] == params.__bindgen_anon_3.ipv4_src
                && slot.dst[0] == params.__bindgen_anon_4.ipv4_dst
        }
    }
}

/// Whether `slot` holds a current route for the inputs in `params` that carries a packet of `ip_len` bytes.
#[inline(always)]
fn answers(slot: &CachedRoute, params: &bpf_fib_lookup, ipv6: bool, ip_len: u16) -> bool {
    slot.expires_ns != 0
        && ip_len <= slot.mtu
        && slot.family == params.family
        && slot.protocol == params.l4_protocol
        && same_addresses(slot, params, ipv6)
        && slot.generation == generation()
        && now_ns() < slot.expires_ns
}

/// Before asking the kernel: empty the slot and note the inputs, which the lookup overwrites. Also the generation
/// and time, so that a change the agent announces while the kernel answers makes the answer stale at once.
#[inline(always)]
fn begin_fill(slot: &mut CachedRoute, params: &bpf_fib_lookup, ipv6: bool) {
    slot.expires_ns = 0;
    slot.generation = generation();
    slot.family = params.family;
    slot.protocol = params.l4_protocol;
    unsafe {
        if ipv6 {
            slot.src = params.__bindgen_anon_3.ipv6_src;
            slot.dst = params.__bindgen_anon_4.ipv6_dst;
        } else {
            // IPv4 compares the first words alone (the family tells them apart).
            slot.src[0] = params.__bindgen_anon_3.ipv4_src;
            slot.dst[0] = params.__bindgen_anon_4.ipv4_dst;
        }
    }
}

/// The kernel's complete answer, in `params`, for the inputs `begin_fill` noted.
#[inline(always)]
pub fn fill(slot: &mut CachedRoute, params: &bpf_fib_lookup) {
    let mtu = unsafe { params.__bindgen_anon_1.mtu_result };
    if mtu == 0 {
        return; // no MTU to check packets against: ask each time
    }
    slot.mtu = mtu;
    slot.ifindex = params.ifindex;
    slot.smac = params.smac;
    slot.dmac = params.dmac;
    slot.expires_ns = now_ns() + ROUTE_CACHE_MAX_AGE_NS;
}
