//! `cargo xtask bench lines`: where the time goes inside veg's programs, by source line. Each of the profile's
//! scenarios runs with veg under `perf record -a -e cpu-clock` at a high rate; every sample whose address lies in
//! the JIT image of veg_from_vpc or veg_from_outside (or their subprograms) is charged to the source line the
//! program's BTF line info gives for that address. A line of core or aya code (a `==` on arrays, a map helper's
//! wrapper) is named with the veg line just before it in the image, most often the caller that inlined it.
//! A sample lands on the instruction that was running when the clock fired: a load that missed the cache, or the
//! instruction after a helper call returned, collects the time of what came before it.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    process::{Command, Stdio},
};

use anyhow::{Context as _, ensure};

use super::{
    bpf_sys::{JitLines, SourceLine, programs_named},
    modes::{Mode, enable},
    profile::{PROFILED, PerfData, start_perf_record},
    scenarios::measure,
    topology,
};
use crate::workspace::step;

/// perf's sampling frequency per CPU: high, for enough samples inside programs that take a few hundred ns.
const FREQUENCY: u32 = 9999;
/// The programs profiled, as the kernel names them (15 characters kept).
const PROGRAMS: [&str; 2] = ["veg_from_vpc", "veg_from_outside"];
/// Lines shown per program and scenario.
const TOP_LINES: usize = 20;
/// Fewer samples than this in a program say nothing about its lines (veg_from_outside under udp-many, which
/// sends nothing back).
const MIN_SAMPLES: u64 = 100;

pub fn run(seconds: f64) -> anyhow::Result<()> {
    let (topo, tools) = topology(false)?;
    let _tcp_server = super::KillOnDrop(super::scenarios::start_tcp_server(&topo, &tools)?);
    let scratch = PerfData::new("lines");
    let mut report = format!(
        "Samples inside veg's programs by source line (`perf record -a -e cpu-clock -F {FREQUENCY}`, {seconds} s \
         per scenario): ns per unit of work, and the line's share of its program's samples.\n"
    );
    for profiled in PROFILED {
        step(&format!("{} with veg under perf record", profiled.scenario));
        let _active = enable(&topo, Mode::Veg);
        // The programs' line info is read while they are loaded; samples are matched to it afterwards.
        let programs = PROGRAMS
            .iter()
            .map(|name| {
                let ids = programs_named(name)?;
                ensure!(ids.len() == 1, "expected one loaded {name}, found {ids:?}");
                Ok((*name, JitLines::of_program(ids[0])?))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut perf = start_perf_record(&[], FREQUENCY, scratch.path(), seconds)?;
        let sample = measure(profiled.scenario, &topo, &tools, seconds);
        ensure!(perf.wait()?.success(), "perf record failed");
        let metric = sample?
            .iter()
            .find(|(m, _)| *m == profiled.metric)
            .map(|(_, v)| *v)
            .with_context(|| format!("no {}", profiled.metric))?;
        let units = metric * profiled.units_per_metric_second * seconds;
        ensure!(units > 0.0, "{} did no work", profiled.scenario);
        let addresses = sample_addresses(scratch.path())?;
        for (name, lines) in &programs {
            let counted = count_by_line(lines, &addresses);
            report.push_str(&markdown(
                profiled.scenario,
                profiled.unit,
                name,
                &counted,
                units,
            ));
        }
    }
    super::publish("lines", &report, None)
}

/// Every sample's instruction address.
fn sample_addresses(data: &str) -> anyhow::Result<Vec<u64>> {
    let out = Command::new("perf")
        .args(["script", "-i", data, "-F", "ip"])
        .stderr(Stdio::null())
        .output()
        .context("running perf script")?;
    ensure!(out.status.success(), "perf script failed");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| u64::from_str_radix(line.trim(), 16).ok())
        .collect())
}

/// Samples per source line of one program.
fn count_by_line(lines: &JitLines, addresses: &[u64]) -> BTreeMap<SourceLine, u64> {
    let mut counted = BTreeMap::new();
    for line in addresses.iter().filter_map(|a| lines.line_at(*a)) {
        *counted.entry(line.clone()).or_insert(0) += 1;
    }
    counted
}

fn markdown(
    scenario: &str,
    unit: &str,
    program: &str,
    counted: &BTreeMap<SourceLine, u64>,
    units: f64,
) -> String {
    let total: u64 = counted.values().sum();
    if total < MIN_SAMPLES {
        return format!("\n{scenario}, {program}: {total} samples, too few to show\n");
    }
    let ns_per_sample = 1e9 / f64::from(FREQUENCY);
    let mut out = format!(
        "\n{scenario}, {program}: {:.0} ns per {unit} in all\n\n| ns per {unit} | share | line | source |\n|---:|---:|---|---|\n",
        total as f64 * ns_per_sample / units
    );
    let mut by_count: Vec<_> = counted.iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(a.1));
    for (line, count) in by_count.into_iter().take(TOP_LINES) {
        let _ = writeln!(
            out,
            "| {:.1} | {:.1}% | {} | `{}` |",
            *count as f64 * ns_per_sample / units,
            100.0 * *count as f64 / total as f64,
            line.place,
            line.text.replace('|', "\\|").replace('`', "'")
        );
    }
    out
}
