//! Reading the per-CPU counters and summing them.

use std::path::Path;

use anyhow::Context as _;
use aya::maps::{Map, MapData, PerCpuArray};
use veg_common::stats::Counter;

/// Every counter, summed over the CPUs, in the order of `Counter::ALL`.
pub fn read_counters(pin: &Path) -> anyhow::Result<Vec<(Counter, u64)>> {
    let data =
        MapData::from_pin(pin).with_context(|| format!("opening counters {}", pin.display()))?;
    let array: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(data))?;
    Counter::ALL
        .iter()
        .map(|&counter| {
            let per_cpu = array
                .get(&(counter as u32), 0)
                .with_context(|| format!("reading {}", counter.label()))?;
            Ok((counter, per_cpu.iter().sum()))
        })
        .collect()
}
