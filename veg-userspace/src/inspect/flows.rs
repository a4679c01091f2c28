use std::io::Write;

use crate::datapath::{
    flow_table::{Flow, FlowTable},
    pins,
};

pub fn run(name: &str, json: bool, count: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let table = FlowTable::from_pin(&pins::existing_map(name, pins::FLOWS)?)?;
    if count {
        let live = table.count()?;
        if json {
            writeln!(out, "{}", serde_json::json!({ "flows": live }))?;
        } else {
            writeln!(out, "{live}")?;
        }
        return Ok(());
    }
    let flows = table.flows()?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &flows)?;
        writeln!(out)?;
    } else {
        print_table(&flows, out)?;
    }
    Ok(())
}

/// One line per flow, in the spirit of `conntrack -L`.
fn print_table(flows: &[Flow], out: &mut impl Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:<5} {:<22} {:<22} {:<22} {:<12} {:>8}",
        "PROTO", "ORIGINAL", "TRANSLATED", "REMOTE", "STATE", "EXPIRES"
    )?;
    for f in flows {
        writeln!(
            out,
            "{:<5} {:<22} {:<22} {:<22} {:<12} {:>7}s",
            f.protocol,
            f.original_source.to_string(),
            f.translated_source.to_string(),
            f.remote.to_string(),
            f.state,
            f.expires_in_seconds
        )?;
    }
    writeln!(out, "{} flow(s)", flows.len())?;
    Ok(())
}
