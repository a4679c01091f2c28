use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_SHOT};
use veg_common::stats::{Counter, STATS_SLOTS};

use crate::maps::STATS;

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(counters) = STATS.get_ptr_mut(0) {
        // The counter's field is at its slot (veg-common checks it). The mask shows the verifier that a counter
        // not known at compile time stays inside the value; the volatile read keeps the compiler, which knows
        // every Counter is in range, from dropping it. Per-CPU value: no other CPU writes it, so a plain add is
        // exact.
        let slot = unsafe { core::ptr::read_volatile(&(counter as u32)) } as usize
            & (STATS_SLOTS as usize - 1);
        unsafe { *counters.cast::<u64>().add(slot) += 1 };
    }
}

/// Count the reason and drop the packet.
#[inline(always)]
pub fn drop_packet(counter: Counter) -> i32 {
    count(counter);
    TC_ACT_SHOT
}

/// Count the reason and leave the packet to the kernel.
#[inline(always)]
pub fn pass_to_host(counter: Counter) -> i32 {
    count(counter);
    TC_ACT_OK
}
