//! Per-CPU token buckets: how the programs bound the work a flood can make them do beyond forwarding (ICMP errors
//! sent, packets handed to the agent).

use aya_ebpf::{helpers::generated::bpf_ktime_get_ns, maps::PerCpuArray};

/// A token bucket, in nanoseconds of credit.
#[repr(C)]
pub struct RateBucket {
    credit_ns: u64,
    last_ns: u64,
}

/// A rate: at most `per_second` events a second, in bursts of at most `burst`.
pub struct Rate {
    pub per_second: u64,
    pub burst: u64,
}

/// Whether one more event may happen now on this CPU; takes its credit if so.
#[inline(always)]
pub fn within(buckets: &PerCpuArray<RateBucket>, rate: &Rate) -> bool {
    let Some(bucket) = buckets.get_ptr_mut(0) else {
        return false;
    };
    let bucket = unsafe { &mut *bucket };
    let ns_per_event = 1_000_000_000 / rate.per_second;
    let now = unsafe { bpf_ktime_get_ns() };
    let credit = bucket.credit_ns + now.saturating_sub(bucket.last_ns);
    let credit = if credit > rate.burst * ns_per_event {
        rate.burst * ns_per_event
    } else {
        credit
    };
    bucket.last_ns = now;
    if credit < ns_per_event {
        bucket.credit_ns = credit;
        return false;
    }
    bucket.credit_ns = credit - ns_per_event;
    true
}
