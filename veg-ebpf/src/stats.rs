use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_SHOT};
use veg_common::stats::Counter;

use crate::maps::STATS;

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = STATS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other CPU writes it, so a plain add is exact.
        unsafe { *slot += 1 };
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
