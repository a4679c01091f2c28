//! The eBPF datapath as the agent sees it: the embedded object, its pinned maps and its attachments.

pub mod batch;
pub mod flow_table;
pub mod loader;
pub mod pinned_maps;
pub mod pins;
pub mod policy;
pub mod stats;

/// The eBPF object built from veg-ebpf by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/veg-ebpf"));

/// Free nodes the kernel's LRU may hold in each CPU's local free list, and the batch it evicts ahead when its
/// shared free list runs short (LOCAL_FREE_TARGET in kernel/bpf/bpf_lru_list.c).
const LRU_LOCAL_FREE_TARGET: u32 = 128;

/// Entries the flow map needs to hold `max_flows` translations at once with none evicted: two per translation,
/// plus the nodes the LRU keeps out of use (each CPU's local free list, and the batch it evicts ahead). Without
/// the margin a table filled to its size evicted about 1% of its live translations (tests/gateway_traffic.rs).
pub fn flow_table_entries(max_flows: u32, possible_cpus: u32) -> u32 {
    max_flows * 2 + (possible_cpus + 1) * LRU_LOCAL_FREE_TARGET
}

/// CPUs the kernel sizes per-CPU structures for (/sys/devices/system/cpu/possible).
pub fn possible_cpus() -> anyhow::Result<u32> {
    let n = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
    Ok(n as u32)
}

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
