//! Port allocation for a new flow. Mappings are endpoint-dependent: a port only has to be unique per (external
//! address, remote address, remote port, protocol), and the reverse entry, inserted with BPF_NOEXIST, is the lock
//! that proves it is. Try the client's own port, then random ports, then scan the whole range with bpf_loop.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::generated::{bpf_get_prandom_u32, bpf_loop},
};
use veg_common::{
    config::GatewayConfig,
    flow::{DIRECTION_INBOUND, FlowEntry, FlowKey},
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
    if FLOWS.insert(&reverse_key, &reverse, BPF_NOEXIST as u64).is_err() {
        return Claim::Taken;
    }
    let forward = FlowEntry { nat_port: port_be, ..*entry };
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

/// What the scan callback needs besides the flow itself, which waits in the per-CPU NEW_FLOW map: bpf_loop's
/// context must live on the stack, and the program's stack is too small for a second copy of the flow.
struct ScanContext {
    port_min: u32,
    range: u32,
    start: u32,
    result: u16,
    found: bool,
}

unsafe extern "C" fn scan_step(index: u32, ctx: *mut core::ffi::c_void) -> i64 {
    let scan = unsafe { &mut *(ctx as *mut ScanContext) };
    let Some(flow) = NEW_FLOW.get_ptr(0) else {
        return 1;
    };
    let flow = unsafe { &*flow };
    // checked_rem: a divisor the compiler cannot prove non-zero would leave a panic path the verifier rejects.
    let Some(offset) = (scan.start + index).checked_rem(scan.range) else {
        return 1;
    };
    let port = (scan.port_min + offset) as u16;
    match claim(&flow.key, &flow.entry, port) {
        Claim::Won => {
            scan.result = port.to_be();
            scan.found = true;
            1
        }
        Claim::LostRace(port_be) => {
            scan.result = port_be;
            scan.found = true;
            1
        }
        Claim::Taken => 0,
    }
}

/// Allocate a port for a new outbound flow and create both entries. Returns the port in network byte order.
#[inline(always)]
pub fn allocate(key: &FlowKey, entry: &FlowEntry, cfg: &GatewayConfig) -> Result<u16, Counter> {
    let min = cfg.port_min as u32;
    let range = (cfg.port_max as u32).saturating_sub(min) + 1;
    let original = u16::from_be(key.src_port) as u32;
    for attempt in 0..RANDOM_TRIES {
        let port = if attempt == 0 && original >= min && original <= cfg.port_max as u32 {
            original
        } else {
            min + unsafe { bpf_get_prandom_u32() } % range
        };
        match claim(key, entry, port as u16) {
            Claim::Won => return Ok((port as u16).to_be()),
            Claim::LostRace(port_be) => return Ok(port_be),
            Claim::Taken => {}
        }
    }
    count(Counter::PortScanFallbacks);
    let Some(flow) = NEW_FLOW.get_ptr_mut(0) else {
        return Err(Counter::DropPortExhausted);
    };
    unsafe {
        (*flow).key = *key;
        (*flow).entry = *entry;
    }
    let mut scan = ScanContext {
        port_min: min,
        range,
        start: unsafe { bpf_get_prandom_u32() } % range,
        result: 0,
        found: false,
    };
    unsafe {
        bpf_loop(range, scan_step as *mut _, &mut scan as *mut ScanContext as *mut _, 0);
    }
    if scan.found { Ok(scan.result) } else { Err(Counter::DropPortExhausted) }
}
