use std::{collections::BTreeMap, io::Write};

use crate::datapath::{pins, stats::read_counters};

pub fn run(name: &str, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let counters = read_counters(&pins::existing_map(name, pins::STATS)?)?;
    if json {
        let map: BTreeMap<&str, u64> = counters.iter().map(|(c, v)| (c.label(), *v)).collect();
        serde_json::to_writer_pretty(&mut *out, &map)?;
        writeln!(out)?;
    } else {
        for (counter, value) in counters {
            writeln!(out, "{:<30} {value}", counter.label())?;
        }
    }
    Ok(())
}
