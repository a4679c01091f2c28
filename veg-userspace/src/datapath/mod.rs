//! The eBPF datapath as the agent sees it: the embedded object, its pinned maps and its attachments.

pub mod batch;
pub mod flow_table;
pub mod loader;
pub mod pins;
pub mod policy;
pub mod stats;

/// The eBPF object built from veg-ebpf by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/veg-ebpf"));

/// CLOCK_MONOTONIC in ns: the clock bpf_ktime_get_ns() reads, so flow timestamps compare directly.
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
