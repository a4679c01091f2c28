use std::{collections::BTreeMap, io::Write};

use serde::Serialize;

use crate::datapath::{pins, stats::read_counters};

/// One counter as `veg stats --json` prints it.
#[derive(Serialize)]
struct CounterReport {
    value: u64,
    meaning: &'static str,
}

/// Every counter with its value and what it counts: a table, or with `json` an object keyed by counter name.
pub fn run(name: &str, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    // A gateway that never ran gets advice rather than an unreadable map.
    pins::existing_map(name, pins::STATS)?;
    let counters = read_counters(&pins::gateway_dir(name))?;
    if json {
        let map: BTreeMap<&str, CounterReport> = counters
            .iter()
            .map(|(c, v)| {
                let report = CounterReport {
                    value: *v,
                    meaning: c.meaning(),
                };
                (c.label(), report)
            })
            .collect();
        serde_json::to_writer_pretty(&mut *out, &map)?;
        writeln!(out)?;
    } else {
        for (counter, value) in counters {
            writeln!(
                out,
                "{:<30} {value:>12}  {}",
                counter.label(),
                counter.meaning()
            )?;
        }
    }
    Ok(())
}
