//! `cargo xtask bench table-size`: what the flow table's size costs per packet. The kernel's hash map has as
//! many buckets as its capacity (rounded up to a power of two), all allocated up front, so the same 1,024 flows
//! of udp-many are spread over more memory (more cache lines and pages to miss) the larger `--max-flows` is.
//! udp-many runs under `perf record` with veg at several capacities and with iptables MASQUERADE, rounds
//! interleaved, and the profile's categories give veg's own work per packet and the flow lookup's share of it.

use anyhow::Context as _;
use serde_json::json;

use super::{
    modes::{Mode, enable, enable_with},
    profile::{ModeProfile, PROFILED, PerfData, Profiled, Round, record_mode, spread},
    report::median,
    topology,
};
use crate::workspace::step;

/// The capacities measured (`--max-flows`); 262,144 is the default.
const MAX_FLOWS: [u32; 4] = [8_192, 65_536, 262_144, 1_048_576];

/// veg at one capacity, or the baseline.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Veg { max_flows: u32 },
    Iptables,
}

impl Variant {
    fn name(self) -> String {
        match self {
            Variant::Veg { max_flows } => format!("veg --max-flows {max_flows}"),
            Variant::Iptables => "iptables".into(),
        }
    }

    /// The kernel function a flow lookup's bucket walk runs in, where its cache and TLB misses show: the BPF
    /// hash map's, or conntrack's.
    fn lookup_frame(self) -> &'static str {
        match self {
            Variant::Veg { .. } => "lookup_nulls_elem_raw",
            Variant::Iptables => "__nf_conntrack_find_get",
        }
    }
}

/// One round of one variant, in ns per delivered packet.
struct Measured {
    variant: Variant,
    own_work: f64,
    same_path: f64,
    lookup: f64,
}

pub fn run(rounds: usize, seconds: f64) -> anyhow::Result<()> {
    let (topo, tools) = topology(false)?;
    let udp_many = udp_many();
    let variants: Vec<Variant> = MAX_FLOWS
        .iter()
        .map(|&max_flows| Variant::Veg { max_flows })
        .chain([Variant::Iptables])
        .collect();
    let scratch = PerfData::new("table-size");
    let mut measured = Vec::new();
    for round in 0..rounds {
        for &variant in &variants {
            step(&format!(
                "round {}/{rounds}: udp-many with {} under perf record",
                round + 1,
                variant.name()
            ));
            let _active = match variant {
                Variant::Veg { max_flows } => {
                    enable_with(&topo, Mode::Veg, &["--max-flows", &max_flows.to_string()])
                }
                Variant::Iptables => enable(&topo, Mode::Iptables),
            };
            let Round { samples, units } = record_mode(udp_many, &topo, &tools, seconds, &scratch)
                .with_context(|| format!("profiling udp-many with {}", variant.name()))?;
            let profile = ModeProfile::new("", &samples, units);
            let row = Measured {
                variant,
                own_work: profile.work(true),
                same_path: profile.work(false),
                lookup: profile.frame(variant.lookup_frame()),
            };
            println!(
                "  own work {:.0} ns per packet, {} {:.0}",
                row.own_work,
                variant.lookup_frame(),
                row.lookup
            );
            measured.push(row);
        }
    }

    let table = markdown(&measured, &variants, rounds, seconds);
    let rows: Vec<_> = measured
        .iter()
        .map(|m| {
            json!({ "variant": m.variant.name(), "own_work_ns_per_packet": m.own_work,
                    "same_path_ns_per_packet": m.same_path, "lookup_ns_per_packet": m.lookup })
        })
        .collect();
    super::publish(
        "table-size",
        &table,
        Some(
            &json!({ "scenario": "udp-many", "rounds": rounds, "seconds": seconds, "runs": rows }),
        ),
    )
}

fn udp_many() -> &'static Profiled {
    PROFILED
        .iter()
        .find(|p| p.scenario == "udp-many")
        .expect("the profile measures udp-many")
}

fn markdown(measured: &[Measured], variants: &[Variant], rounds: usize, seconds: f64) -> String {
    let of = |variant: Variant| measured.iter().filter(move |m| m.variant == variant);
    let baseline: Vec<&Measured> = of(Variant::Iptables).collect();
    let mut out = format!(
        "udp-many (1,024 flows) under `perf record`, {rounds} round(s) of {seconds} s per variant, interleaved: \
         CPU ns per delivered packet, medians over the rounds; the ratio is veg's own work over MASQUERADE's \
         in the same round (median, min-max).\n\n\
         | variant | flow lookup | its frame | gateway's own work | same path | own work / MASQUERADE's |\n\
         |---|---:|---|---:|---:|---:|\n"
    );
    for &variant in variants {
        let rows: Vec<&Measured> = of(variant).collect();
        let ratios: Vec<f64> = rows
            .iter()
            .zip(&baseline)
            .map(|(m, b)| m.own_work / b.own_work)
            .collect();
        let ratio = if variant == Variant::Iptables {
            "-".into()
        } else {
            spread(&ratios)
        };
        out.push_str(&format!(
            "| {} | {:.0} | {} | {:.0} | {:.0} | {ratio} |\n",
            variant.name(),
            median(rows.iter().map(|m| m.lookup).collect()),
            variant.lookup_frame(),
            median(rows.iter().map(|m| m.own_work).collect()),
            median(rows.iter().map(|m| m.same_path).collect()),
        ));
    }
    out
}
