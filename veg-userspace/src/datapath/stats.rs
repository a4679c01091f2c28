//! Reading the per-CPU counters and summing them.

use std::path::Path;

use anyhow::Context as _;
use aya::maps::{Map, MapData, PerCpuArray, PerCpuValues};
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

/// The counters the agent itself keeps (the slow path's), in the same map as the programs', so that `veg stats`
/// and the metrics read one place. Each is counted by the agent alone, in the first CPU's slot, so its
/// read-add-write races with no program.
pub struct AgentCounters {
    array: PerCpuArray<MapData, u64>,
}

impl AgentCounters {
    pub fn open(pin: &Path) -> anyhow::Result<AgentCounters> {
        let data = MapData::from_pin(pin)
            .with_context(|| format!("opening counters {}", pin.display()))?;
        Ok(AgentCounters {
            array: PerCpuArray::try_from(Map::PerCpuArray(data))?,
        })
    }

    /// Add `n` to a counter the agent keeps.
    pub fn add(&mut self, counter: Counter, n: u64) -> anyhow::Result<()> {
        if n == 0 {
            return Ok(());
        }
        let index = counter as u32;
        let mut values: Vec<u64> = self.array.get(&index, 0)?.iter().copied().collect();
        values[0] += n;
        self.array
            .set(index, PerCpuValues::try_from(values)?, 0)
            .with_context(|| format!("adding to {}", counter.label()))
    }
}
