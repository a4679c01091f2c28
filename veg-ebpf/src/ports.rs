//! Port allocation for a new flow. Mappings are endpoint-dependent: a port only has to be unique per (external
//! address, remote address, remote port, protocol), and the reverse entry, inserted with BPF_NOEXIST, is the lock
//! that proves it is. Try the client's own port, then random ports, then scan the whole range with bpf_loop.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::generated::{bpf_get_prandom_u32, bpf_loop},
};
use veg_common::{
    config::GatewayConfig,
    flow::{
        DIRECTION_INBOUND, FlowEntry, FlowKey, PROTO_TCP, STATE_SYN_OUT, is_closed, is_expired,
    },
    stats::Counter,
};

use crate::{
    maps::{FLOWS, NEW_FLOW},
    stats::count,
};

/// Random tries before the exhaustive scan: with a range at most half full, 32 misses in a row are very unlikely.
const RANDOM_TRIES: u32 = 32;

enum Claim {
    Won,
    /// The port is taken for this remote endpoint.
    Taken,
    /// Another CPU created the same flow first: use its mapping.
    LostRace(u16),
}

/// Claim `port` (host byte order) for the flow: reverse entry first (the lock), then the forward entry.
#[inline(always)]
fn claim(key: &FlowKey, entry: &FlowEntry, port: u16) -> Claim {
    let port_be = port.to_be();
    let reverse_key = FlowKey {
        src_addr: key.dst_addr,
        dst_addr: entry.nat_addr,
        src_port: key.dst_port,
        dst_port: port_be,
        protocol: key.protocol,
        family: key.family,
        _pad: [0; 2],
    };
    let reverse = FlowEntry {
        nat_addr: key.src_addr,
        nat_port: key.src_port,
        direction: DIRECTION_INBOUND,
        ..*entry
    };
    if FLOWS
        .insert(&reverse_key, &reverse, BPF_NOEXIST as u64)
        .is_err()
        && !(take_over(&reverse_key, entry, port_be)
            && FLOWS
                .insert(&reverse_key, &reverse, BPF_NOEXIST as u64)
                .is_ok())
    {
        return Claim::Taken;
    }
    let forward = FlowEntry {
        nat_port: port_be,
        ..*entry
    };
    if FLOWS.insert(key, &forward, BPF_NOEXIST as u64).is_err() {
        // Roll back our lock and follow the winner.
        let _ = FLOWS.remove(&reverse_key);
        return match FLOWS.get_ptr(key) {
            Some(winner) => Claim::LostRace(unsafe { (*winner).nat_port }),
            None => Claim::Taken,
        };
    }
    Claim::Won
}

/// Free a port held by a flow that is over, as netfilter does: an expired flow, or for a new TCP connection (SYN)
/// a closed one (reset, or FIN both ways). Without this, a busy client would run out of ports toward one server
/// while closed flows wait out their transitory timeout. Returns whether the port was freed; the caller claims it
/// again with BPF_NOEXIST, so of two CPUs taking over the same port only one wins.
#[inline(always)]
fn take_over(reverse_key: &FlowKey, entry: &FlowEntry, port_be: u16) -> bool {
    let Some(old) = FLOWS.get_ptr(reverse_key) else {
        return true; // evicted meanwhile: free
    };
    let old = unsafe { *old };
    let new_connection = reverse_key.protocol == PROTO_TCP
        && entry.state & STATE_SYN_OUT != 0
        && is_closed(old.state);
    if !new_connection && !is_expired(&old, reverse_key.protocol, entry.last_seen_ns) {
        return false;
    }
    let old_forward_key = reverse_key.partner(&old);
    if let Some(old_forward) = FLOWS.get_ptr(&old_forward_key) {
        // Only remove the old forward entry if it still maps to this port.
        let old_forward = unsafe { *old_forward };
        if old_forward.nat_port == port_be && old_forward.nat_addr == entry.nat_addr {
            let _ = FLOWS.remove(&old_forward_key);
        }
    }
    let _ = FLOWS.remove(reverse_key);
    true
}

/// The state of a port search. The flow itself waits in the per-CPU NEW_FLOW map: bpf_loop's context must live on
/// the stack, and the program's stack is too small for a second copy of the flow.
struct Search {
    port_min: u32,
    range: u32,
    /// The client's own port when it lies in the range (tried first), else 0.
    original: u32,
    start: u32,
    result: u16,
    found: bool,
}

/// Claim `port` for the flow in NEW_FLOW; returns 1 (stop the loop) once the flow has a port.
#[inline(always)]
fn try_port(search: &mut Search, port: u16) -> i64 {
    let Some(flow) = NEW_FLOW.get_ptr(0) else {
        return 1;
    };
    let flow = unsafe { &*flow };
    match claim(&flow.key, &flow.entry, port) {
        Claim::Won => {
            search.result = port.to_be();
            search.found = true;
            1
        }
        Claim::LostRace(port_be) => {
            search.result = port_be;
            search.found = true;
            1
        }
        Claim::Taken => 0,
    }
}

/// One random try (the first tries the client's own port).
unsafe extern "C" fn random_step(index: u32, ctx: *mut core::ffi::c_void) -> i64 {
    let search = unsafe { &mut *(ctx as *mut Search) };
    let random = unsafe { bpf_get_prandom_u32() };
    // checked_rem: a divisor the compiler cannot prove non-zero would leave a panic path the verifier rejects.
    let Some(offset) = random.checked_rem(search.range) else {
        return 1;
    };
    let port = if index == 0 && search.original != 0 {
        search.original
    } else {
        search.port_min + offset
    };
    try_port(search, port as u16)
}

/// One step of the exhaustive scan, from a random start.
unsafe extern "C" fn scan_step(index: u32, ctx: *mut core::ffi::c_void) -> i64 {
    let search = unsafe { &mut *(ctx as *mut Search) };
    let Some(offset) = (search.start + index).checked_rem(search.range) else {
        return 1;
    };
    try_port(search, (search.port_min + offset) as u16)
}

/// Allocate a port for a new outbound flow and create both entries. Returns the port in network byte order.
/// Both phases run through bpf_loop, so the verifier checks each step once instead of every unrolled copy.
#[inline(always)]
pub fn allocate(key: &FlowKey, entry: &FlowEntry, cfg: &GatewayConfig) -> Result<u16, Counter> {
    let Some(flow) = NEW_FLOW.get_ptr_mut(0) else {
        return Err(Counter::DropPortExhausted);
    };
    unsafe {
        (*flow).key = *key;
        (*flow).entry = *entry;
    }
    let min = cfg.port_min as u32;
    let range = (cfg.port_max as u32).saturating_sub(min) + 1;
    let original = u16::from_be(key.src_port) as u32;
    let mut search = Search {
        port_min: min,
        range,
        original: if original >= min && original <= cfg.port_max as u32 {
            original
        } else {
            0
        },
        start: unsafe { bpf_get_prandom_u32() },
        result: 0,
        found: false,
    };
    let ctx = &mut search as *mut Search as *mut core::ffi::c_void;
    unsafe { bpf_loop(RANDOM_TRIES, random_step as *mut _, ctx, 0) };
    if !search.found {
        count(Counter::PortScanFallbacks);
        unsafe { bpf_loop(range, scan_step as *mut _, ctx, 0) };
    }
    if search.found {
        Ok(search.result)
    } else {
        Err(Counter::DropPortExhausted)
    }
}
