//! Reading the counters: the programs' per-CPU STATS summed over the CPUs, plus the agent's own AGENT_STATS.

use std::path::Path;

use anyhow::Context as _;
use aya::maps::{Array, Map, MapData, PerCpuArray};
use veg_common::stats::{Counter, Counters};

use super::pins;

fn open(pin_dir: &Path, map: &str) -> anyhow::Result<MapData> {
    let pin = pin_dir.join(map);
    MapData::from_pin(&pin).with_context(|| format!("opening counters {}", pin.display()))
}

/// Every counter of the gateway whose maps are pinned in `pin_dir`, in the order of `Counter::ALL`.
pub fn read_counters(pin_dir: &Path) -> anyhow::Result<Vec<(Counter, u64)>> {
    let programs: PerCpuArray<MapData, Counters> =
        PerCpuArray::try_from(Map::PerCpuArray(open(pin_dir, pins::STATS)?))?;
    let per_cpu = programs.get(&0, 0).context("reading STATS")?;
    let agent: Array<MapData, Counters> =
        Array::try_from(Map::Array(open(pin_dir, pins::AGENT_STATS)?))?;
    let agent = agent.get(&0, 0).context("reading AGENT_STATS")?;
    Ok(Counter::ALL
        .iter()
        .map(|&counter| {
            let programs: u64 = per_cpu.iter().map(|cpu| cpu.get(counter)).sum();
            (counter, programs + agent.get(counter))
        })
        .collect())
}

/// The counters the agent itself keeps (the slow path's). Only the agent writes AGENT_STATS, so its
/// read-add-write races with nothing.
pub struct AgentCounters {
    array: Array<MapData, Counters>,
}

impl AgentCounters {
    pub fn open(pin_dir: &Path) -> anyhow::Result<AgentCounters> {
        Ok(AgentCounters {
            array: Array::try_from(Map::Array(open(pin_dir, pins::AGENT_STATS)?))?,
        })
    }

    /// Add `n` to a counter the agent keeps.
    pub fn add(&mut self, counter: Counter, n: u64) -> anyhow::Result<()> {
        if n == 0 {
            return Ok(());
        }
        let mut counters = self.array.get(&0, 0).context("reading AGENT_STATS")?;
        counters.add(counter, n);
        self.array
            .set(0, counters, 0)
            .with_context(|| format!("adding to {}", counter.label()))
    }
}
