//! The eBPF datapath as the agent sees it: the embedded object, its pinned maps and its attachments.

pub mod batch;
pub mod flow_table;
pub mod loader;
pub mod log;
pub mod pinned_maps;
pub mod pins;
pub mod policy;
pub mod port_usage;
pub mod records;
pub mod route_watch;
pub mod slow_path;
#[cfg(test)]
mod stack_budget;
pub mod stats;

/// The eBPF object built from veg-ebpf by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/veg-ebpf"));

/// Entries the flow map needs to hold `max_flows` translations at once: two per translation. The map is a
/// preallocated hash, not an LRU one, so every entry serves (a CPU whose share runs out takes from the others').
pub fn flow_table_entries(max_flows: u32) -> u32 {
    max_flows * 2
}

/// How many entries the agent makes the flow table and the counts table hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSizes {
    /// The flow table (FLOWS): two per translation.
    pub flow_entries: u32,
    /// The counts table (FLOW_COUNTS): one per translation while translation records are on; while they are off
    /// the programs never touch it, and it holds one entry, the least a map may have, so that a gateway without
    /// records pays nothing for them.
    pub counts_entries: u32,
}

impl TableSizes {
    pub fn new(flow_entries: u32, records: bool) -> TableSizes {
        TableSizes {
            flow_entries,
            counts_entries: if records {
                (flow_entries / 2).max(1)
            } else {
                1
            },
        }
    }
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
