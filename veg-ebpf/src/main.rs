//! veg's SNAT datapath: two TC programs on the gateway instance's interfaces.
//!
//! - `veg_from_vpc` on the internal interface's ingress: translates packets from SNAT sources to the external
//!   address, routes forward (no-SNAT) sources unchanged, drops sources that match no policy.
//! - `veg_from_outside` on the external interface's ingress: translates replies back and drops unsolicited
//!   packets addressed to the external address.
//!
//! Both hand the packets they accept straight to the other interface, so netfilter never sees them. Everything
//! for the instance itself (BFD, the agent's own connections) is left to the kernel.
#![no_std]
#![no_main]
// Atomic OR on flow state (flows.rs): the BPF target has no compare-and-swap, so core's atomic types lack
// fetch_or, but the kernel has a plain atomic OR instruction, which this intrinsic compiles to.
#![feature(core_intrinsics)]
#![allow(internal_features)]
// aya's map methods take `impl Borrow<K>`: clippy would have keys passed by value, moved into the call. Passing
// them by reference keeps the one copy where it already is (the stack is the verifier's scarcest resource).
#![allow(clippy::needless_borrows_for_generic_args)]

mod flows;
mod fragments;
mod from_outside;
mod from_outside_v6;
mod from_vpc;
mod from_vpc_v6;
mod icmp;
mod icmp6;
mod icmp6_errors;
mod icmp_errors;
mod log;
mod maps;
mod packet;
mod pending;
mod ports;
mod rate;
mod records;
mod rewrite;
mod route;
mod route_cache;
mod shaping;
mod slow_path;
mod stats;

use aya_ebpf::{macros::classifier, programs::TcContext};

// Inlined into the entry point the macro wraps it in: as a function of its own it is one more frame in the
// verifier's count (32 bytes on kernels that round frames to 32, though it uses none).
#[classifier]
#[inline(always)]
pub fn veg_from_vpc(ctx: TcContext) -> i32 {
    from_vpc::handle(&ctx)
}

#[classifier]
#[inline(always)]
pub fn veg_from_outside(ctx: TcContext) -> i32 {
    from_outside::handle(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves no panic path is reachable; this is never called.
    loop {}
}
