//! Port allocation for a new flow. Mappings are endpoint-dependent: a port only has to be unique per (external
//! address, remote address, remote port, protocol), and the reverse entry, inserted with BPF_NOEXIST, is the lock
//! that proves it is.
//!
//! A new flow first tries one port, outside any loop: the client's own if the range has it, else a random one,
//! inserted at once. Only when that port is taken (or the table is full) does the search run. It is bounded, so a
//! packet that finds no port costs a few microseconds at most: the client's own port, then random ports, then a
//! short sequential run from a random start (which covers a small range whole).
//! When that fails the remote endpoint is remembered as full for a moment (EXHAUSTED), and until then a new flow
//! toward it costs one lookup: a client offering more flows than the range holds cannot stall the instance.

use aya_ebpf::helpers::generated::{bpf_get_prandom_u32, bpf_loop};
use veg_common::{
    config::GatewayConfig,
    flow::{
        DIRECTION_INBOUND, DIRECTION_OUTBOUND, FlowEntry, FlowKey, PROTO_TCP, STATE_SYN_OUT,
        is_closed, is_expired,
    },
    record::end_reason,
    stats::Counter,
};

use crate::{
    flows::remove_translation,
    log,
    maps::{EXHAUSTED, FLOWS, FlowScratch, flow_scratch},
    pending::{Refused, give_one_up, insert},
    records,
    stats::count,
};

/// Random tries (the first is the client's own port). At a range 95% full, 64 misses in a row happen once in
/// 27 searches; netfilter bounds its search at 128 tries, Cilium at 32.
const RANDOM_TRIES: u32 = 64;
/// Consecutive ports tried after the random ones: finds the last free ports of a small range.
const SCAN_TRIES: u32 = 64;
/// How long an endpoint found full is skipped. Short enough that a freed port is found again within one TCP
/// SYN retransmission; long enough that the search's cost is spread over many packets.
const EXHAUSTED_BACKOFF_NS: u64 = 250_000_000;

enum Claim {
    Won,
    /// The port is taken for this remote endpoint.
    Taken,
    /// The port is held by a flow that is over: it may be taken over (which the search's caller does, outside
    /// its loop, so that the loop's body stays small for the verifier).
    Over,
    /// Another CPU created the same flow first: use its mapping.
    LostRace(u16),
    /// The flow table is full: a flow must be given up first (again by the search's caller).
    Full,
}

/// Write into `out` the reverse key `port` (network byte order) would have: the tuple replies arrive with.
/// Field by field, in place: a key built whole goes through a copy on the stack first, and every byte of the
/// frame counts toward the 512 the verifier allows along the deepest chain of calls.
#[inline(always)]
fn set_reverse_key(out: &mut FlowKey, key: &FlowKey, entry: &FlowEntry, port_be: u16) {
    out.src_addr = key.dst_addr;
    out.dst_addr = entry.nat_addr;
    out.src_port = key.dst_port;
    out.dst_port = port_be;
    out.protocol = key.protocol;
    out.family = key.family;
    out._pad = [0; 2];
}

/// Claim `port` (host byte order) for the flow: reverse entry first (the lock), then the forward entry. A port in
/// use is found by a lookup first, which is cheaper than a failed insert. The entries are built in the per-CPU
/// scratch, not on the stack; the reverse key stays there for `take_over`.
#[inline(always)]
fn claim(flow: &mut FlowScratch, port: u16) -> Claim {
    let port_be = port.to_be();
    set_reverse_key(&mut flow.reverse_key, &flow.key, &flow.entry, port_be);
    if let Some(old) = FLOWS.get_ptr(&flow.reverse_key) {
        return if is_over(&flow.reverse_key, unsafe { &*old }, &flow.entry) {
            Claim::Over
        } else {
            Claim::Taken
        };
    }
    lock_and_insert(flow, port)
}

/// The two inserts of a claim: the reverse entry under the reverse key in the scratch (the lock: refused if the
/// port is taken), then the forward entry.
#[inline(always)]
fn lock_and_insert(flow: &mut FlowScratch, port: u16) -> Claim {
    let port_be = port.to_be();
    // Both entries are the flow's with their own fields set, in place (see set_reverse_key).
    flow.reverse = flow.entry;
    flow.reverse.nat_addr = flow.key.src_addr;
    flow.reverse.nat_port = flow.key.src_port;
    flow.reverse.direction = DIRECTION_INBOUND;
    // The remote's numbers, once it sends.
    flow.reverse.tcp_next_seq = 0;
    match insert(&flow.reverse_key, &flow.reverse) {
        Ok(()) => {}
        Err(Refused::Full) => return Claim::Full,
        Err(Refused::Exists) => return Claim::Taken, // another CPU took the port meanwhile
    }
    flow.forward = flow.entry;
    flow.forward.nat_port = port_be;
    if let Err(refused) = insert(&flow.key, &flow.forward) {
        // Roll back our lock; follow the winner, if another CPU created the flow first.
        let _ = FLOWS.remove(&flow.reverse_key);
        return match (refused, FLOWS.get_ptr(&flow.key)) {
            (Refused::Exists, Some(winner)) => Claim::LostRace(unsafe { (*winner).nat_port }),
            (Refused::Exists, None) => Claim::Taken,
            (Refused::Full, _) => Claim::Full,
        };
    }
    Claim::Won
}

/// Whether the flow holding a port (its reverse entry `old`, under `reverse_key`) is over, so that the new flow
/// `entry` may take the port over, as netfilter does: it expired, or for a new TCP connection (SYN) it closed
/// (reset, or FIN both ways). Without this, a busy client would run out of ports toward one server while closed
/// flows wait out their transitory timeout.
#[inline(always)]
fn is_over(reverse_key: &FlowKey, old: &FlowEntry, entry: &FlowEntry) -> bool {
    closed_for_new_connection(reverse_key, old, entry)
        || is_expired(old, reverse_key.protocol, entry.last_seen_ns)
}

#[inline(always)]
fn closed_for_new_connection(reverse_key: &FlowKey, old: &FlowEntry, entry: &FlowEntry) -> bool {
    reverse_key.protocol == PROTO_TCP && entry.state & STATE_SYN_OUT != 0 && is_closed(old.state)
}

/// Free the port whose reverse key `claim` left in the scratch, held by a flow that is over: both its entries go
/// (with its ended record). Returns whether the port is free; the caller claims it again with BPF_NOEXIST, so of
/// two CPUs taking over the same port only one wins.
#[inline(always)]
fn take_over(flow: &FlowScratch) -> bool {
    let reverse_key = &flow.reverse_key;
    let Some(old) = FLOWS.get_ptr(reverse_key) else {
        return true; // removed meanwhile: free
    };
    // Read in place, not copied: the stack is shared with everything the program calls.
    let old = unsafe { &*old };
    if !is_over(reverse_key, old, &flow.entry) {
        return false; // renewed meanwhile
    }
    let reason = if closed_for_new_connection(reverse_key, old, &flow.entry) {
        end_reason::CLOSED
    } else {
        records::reason_over(old)
    };
    remove_translation(reverse_key, old, reason, flow.entry.last_seen_ns);
    true
}

/// The state of a port search. It lives in the per-CPU scratch beside the flow, not on the stack: every byte of
/// the program's frame counts toward the 512 the verifier allows along the deepest chain of calls.
pub struct PortSearch {
    port_min: u32,
    range: u32,
    /// The client's own port when it lies in the range (tried first), else 0.
    original: u32,
    start: u32,
    result: u16,
    found: bool,
    /// The flow is ours: not found already created by another CPU.
    created: bool,
    /// The search stopped at `stopped_at` (host byte order) because the port is held by a flow that is over
    /// (Claim::Over) or the table is full (Claim::Full): what to do is the caller's.
    stopped: u8,
    stopped_at: u16,
}

const STOPPED_OVER: u8 = 1;
const STOPPED_FULL: u8 = 2;

/// Claim `port` for the flow in the scratch space; returns 1 (stop the loop) once the search is over.
#[inline(always)]
fn try_port(flow: &mut FlowScratch, port: u16) -> i64 {
    let claim = claim(flow, port);
    let search = &mut flow.search;
    match claim {
        Claim::Won => {
            search.result = port.to_be();
            search.found = true;
            search.created = true;
            1
        }
        Claim::LostRace(port_be) => {
            search.result = port_be;
            search.found = true;
            1
        }
        Claim::Taken => 0,
        Claim::Over => {
            search.stopped = STOPPED_OVER;
            search.stopped_at = port;
            1
        }
        Claim::Full => {
            search.stopped = STOPPED_FULL;
            search.stopped_at = port;
            1
        }
    }
}

/// One random try (the first tries the client's own port).
unsafe extern "C" fn random_step(index: u32, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(flow) = flow_scratch() else {
        return 1;
    };
    let search = &flow.search;
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
    try_port(flow, port as u16)
}

/// One step of the sequential run, from a random start.
unsafe extern "C" fn scan_step(index: u32, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(flow) = flow_scratch() else {
        return 1;
    };
    let search = &flow.search;
    let Some(offset) = (search.start + index).checked_rem(search.range) else {
        return 1;
    };
    let port = (search.port_min + offset) as u16;
    try_port(flow, port)
}

/// A flow toward the endpoint of `reverse_key` has closed, so a new connection may take its port over: search
/// again at the next new flow instead of waiting out the backoff.
#[inline(always)]
pub fn forget_exhausted(reverse_key: &FlowKey) {
    let Some(scratch) = flow_scratch() else {
        return;
    };
    scratch.endpoint = FlowKey {
        dst_port: 0,
        ..*reverse_key
    };
    let _ = EXHAUSTED.remove(&scratch.endpoint);
}

/// Where the search stopped: take the port over from a flow that is over, or give a flow up for room in a full
/// table, then claim the port once more. A claim that loses a race here is not retried (the client retransmits).
#[inline(always)]
fn make_room(flow: &mut FlowScratch, now: u64) -> Result<Allocated, Counter> {
    let full = flow.search.stopped == STOPPED_FULL;
    let port = flow.search.stopped_at;
    let freed = if full {
        give_one_up(now)
    } else {
        take_over(flow)
    };
    if freed {
        match claim(flow, port) {
            Claim::Won => {
                return Ok(Allocated {
                    port: port.to_be(),
                    created: true,
                });
            }
            Claim::LostRace(port) => {
                return Ok(Allocated {
                    port,
                    created: false,
                });
            }
            Claim::Full => return Err(Counter::DropTableFull),
            Claim::Taken | Claim::Over => {}
        }
    }
    Err(if full {
        Counter::DropTableFull
    } else {
        Counter::DropPortExhausted
    })
}

/// A new flow's port, in network byte order.
pub struct Allocated {
    pub port: u16,
    /// False when another CPU created the same flow first (this one follows its mapping).
    pub created: bool,
}

/// Allocate a port for a new outbound flow with these first state bits (and, for a TCP SYN, the client's next
/// sequence number), and create both entries. Both phases run through
/// bpf_loop, so the verifier checks each step once instead of every unrolled copy.
#[inline(always)]
pub fn allocate(
    key: &FlowKey,
    bits: u8,
    client_next_seq: u32,
    now: u64,
    cfg: &GatewayConfig,
) -> Result<Allocated, Counter> {
    let Some(flow) = flow_scratch() else {
        return Err(Counter::DropPortExhausted);
    };
    flow.key = *key;
    flow.entry = FlowEntry {
        nat_addr: cfg.external_addr(key.family),
        nat_port: 0,
        direction: DIRECTION_OUTBOUND,
        state: bits,
        tcp_next_seq: client_next_seq,
        last_seen_ns: now,
        created_ns: now,
    };
    let min = cfg.port_min as u32;
    let range = (cfg.port_max as u32).saturating_sub(min) + 1;
    let original = u16::from_be(key.src_port) as u32;
    let random = unsafe { bpf_get_prandom_u32() };
    // The first try, before any search: the client's own port if the range has it, else a random one. In a range
    // and table with room it is free, and a new flow costs its two inserts and nothing more (no lookup of the
    // port first, no remembered-full check, no loop).
    let original = if original >= min && original <= cfg.port_max as u32 {
        original
    } else {
        0
    };
    let first = if original != 0 {
        original
    } else {
        min + random.checked_rem(range).unwrap_or(0)
    };
    set_reverse_key(
        &mut flow.reverse_key,
        &flow.key,
        &flow.entry,
        (first as u16).to_be(),
    );
    match lock_and_insert(flow, first as u16) {
        Claim::Won => {
            return Ok(Allocated {
                port: (first as u16).to_be(),
                created: true,
            });
        }
        Claim::LostRace(port) => {
            return Ok(Allocated {
                port,
                created: false,
            });
        }
        // Taken, or the table is full: the search finds out which, and what to do.
        _ => {}
    }
    flow.search = PortSearch {
        port_min: min,
        range,
        // Tried first again, with a lookup: a flow that is over may hold it, and the port is taken over.
        original,
        start: random,
        result: 0,
        found: false,
        created: false,
        stopped: 0,
        stopped_at: 0,
    };
    search()?;
    // The search leaves the port it found or made room for in the scratch.
    let flow = flow_scratch().ok_or(Counter::DropPortExhausted)?;
    Ok(Allocated {
        port: flow.search.result,
        created: flow.search.created,
    })
}

/// The search after a first try that failed, for the flow in the scratch space (its `search` set up). Out of
/// line, one copy for both families: most new flows never come here, and established packets never do, so
/// their path stays close together in the instruction cache. Its frame must stay small: it adds to the
/// program's main frame on the deepest call chain (this, then the loop's step or a flow's removal), and the
/// verifier allows 512 bytes for the whole chain. Its port is left in the scratch (`search.result` and
/// `search.created`): a result of a single register, since the verifier refuses the parts of a larger one that
/// the compiler leaves unset on the error paths.
#[inline(never)]
fn search() -> Result<(), Counter> {
    let Some(flow) = flow_scratch() else {
        return Err(Counter::DropPortExhausted);
    };
    // The flow's first packet's time, where allocate put it: not passed down, which would keep one more value on
    // the frame.
    let now = flow.entry.last_seen_ns;
    // The endpoint, remembered as full without the translated port.
    set_reverse_key(&mut flow.endpoint, &flow.key, &flow.entry, 0);
    if let Some(until) = unsafe { EXHAUSTED.get(&flow.endpoint) }
        && now < *until
    {
        return Err(Counter::DropPortExhausted);
    }
    let range = flow.search.range;
    let no_ctx = core::ptr::null_mut();
    unsafe { bpf_loop(RANDOM_TRIES, random_step as *mut _, no_ctx, 0) };
    // The loop's steps wrote the search's outcome into the scratch.
    let Some(flow) = flow_scratch() else {
        return Err(Counter::DropPortExhausted);
    };
    if !flow.search.found {
        let steps = if range < SCAN_TRIES {
            range
        } else {
            SCAN_TRIES
        };
        unsafe { bpf_loop(steps, scan_step as *mut _, no_ctx, 0) };
    }
    if flow.search.found {
        return Ok(());
    }
    if flow.search.stopped != 0 {
        let made = make_room(flow, now)?;
        flow.search.result = made.port;
        flow.search.created = made.created;
        return Ok(());
    }
    count(Counter::PortSearchesFailed);
    log::port_search_failed(&flow.endpoint);
    // The scratch space is this CPU's and the loop is over: the endpoint is still there.
    let _ = EXHAUSTED.insert(&flow.endpoint, &(now + EXHAUSTED_BACKOFF_NS), 0);
    Err(Counter::DropPortExhausted)
}
