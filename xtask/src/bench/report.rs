//! Medians per scenario, metric and mode, ratios against iptables, as JSON and a markdown table.

use anyhow::Context as _;
use std::{collections::BTreeMap, fmt::Write as _};

use serde_json::json;

use super::modes::{ALL, Mode};

pub struct Record {
    pub scenario: &'static str,
    pub mode: Mode,
    pub round: usize,
    pub metrics: Vec<(&'static str, f64)>,
}

/// Run `measure` for every mode in turn, `rounds` times (modes interleaved, so a slow spell of the machine hits
/// them alike), saying what runs (`doing`: what every mode is doing) and recording each result under `scenario`.
pub fn interleaved(
    scenario: &'static str,
    rounds: usize,
    doing: &str,
    mut measure: impl FnMut(Mode) -> anyhow::Result<Vec<(&'static str, f64)>>,
) -> anyhow::Result<Vec<Record>> {
    let mut records = Vec::new();
    for round in 0..rounds {
        for mode in super::modes::ALL {
            crate::workspace::step(&format!(
                "round {}/{rounds}: {} {doing}",
                round + 1,
                mode.name()
            ));
            let metrics =
                measure(mode).with_context(|| format!("{scenario} with {}", mode.name()))?;
            print(scenario, &metrics);
            records.push(Record {
                scenario,
                mode,
                round,
                metrics,
            });
        }
    }
    Ok(records)
}

/// One measurement as the run goes.
pub fn print(scenario: &str, metrics: &[(&str, f64)]) {
    let shown: Vec<String> = metrics.iter().map(|(k, v)| format!("{k}={v:.2}")).collect();
    println!("  {scenario:<13} {}", shown.join("  "));
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// (scenario, metric) with the median of each mode, in the order the scenarios ran.
pub type Medians = Vec<((&'static str, &'static str), BTreeMap<&'static str, f64>)>;

pub fn medians(records: &[Record]) -> Medians {
    let mut keys: Vec<(&'static str, &'static str)> = Vec::new();
    for r in records {
        for (metric, _) in &r.metrics {
            if !keys.contains(&(r.scenario, metric)) {
                keys.push((r.scenario, metric));
            }
        }
    }
    keys.into_iter()
        .map(|(scenario, metric)| {
            let per_mode = ALL
                .iter()
                .filter_map(|mode| {
                    let values: Vec<f64> = records
                        .iter()
                        .filter(|r| r.scenario == scenario && r.mode == *mode)
                        .flat_map(|r| {
                            r.metrics
                                .iter()
                                .filter(|(m, _)| *m == metric)
                                .map(|(_, v)| *v)
                        })
                        .collect();
                    (!values.is_empty()).then(|| (mode.name(), median(values)))
                })
                .collect();
            ((scenario, metric), per_mode)
        })
        .collect()
}

pub fn markdown(records: &[Record], header: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{header}\n");
    let _ = writeln!(
        out,
        "| scenario | metric | veg | veg+records | iptables | nftables | veg / iptables | records' cost |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|");
    for ((scenario, metric), per_mode) in medians(records) {
        let cell = |mode: &str| {
            per_mode
                .get(mode)
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(|| "-".into())
        };
        let ratio = |of: &str, to: &str| match (per_mode.get(of), per_mode.get(to)) {
            (Some(a), Some(b)) if *b != 0.0 => format!("{:.2}x", a / b),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "| {scenario} | {metric} | {} | {} | {} | {} | {} | {} |",
            cell("veg"),
            cell("veg+records"),
            cell("iptables"),
            cell("nftables"),
            ratio("veg", "iptables"),
            ratio("veg+records", "veg"),
        );
    }
    out
}

/// The program's own cost per path (with its log lines off, and on at debug), and the policy load times.
pub fn program_markdown(
    program: &serde_json::Value,
    program_logging: &serde_json::Value,
    netfilter_policy: &serde_json::Value,
) -> String {
    let mut out = String::from(
        "\n| datapath path (BPF_PROG_TEST_RUN, median of 20,000 runs, best of 3) | ns per packet | with --datapath-log debug |\n|---|---:|---:|\n",
    );
    if let Some(costs) = program.as_object() {
        for (path, ns) in costs
            .iter()
            .filter(|(k, _)| k.as_str() != "policy_100k_load_ms")
        {
            let logging = program_logging[path.as_str()]
                .as_f64()
                .map(|ns| format!("{ns:.0}"))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "| {path} | {:.0} | {logging} |",
                ns.as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    let ms = |v: &serde_json::Value| {
        v.as_f64()
            .map(|v| format!("{v:.0}"))
            .unwrap_or_else(|| "-".into())
    };
    let _ = writeln!(
        out,
        "\n| loading 100,000 policy sources | veg | iptables-restore | nft -f |\n|---|---:|---:|---:|"
    );
    let _ = writeln!(
        out,
        "| milliseconds | {} | {} | {} |",
        ms(&program["policy_100k_load_ms"]),
        ms(&netfilter_policy["iptables"]),
        ms(&netfilter_policy["nftables"])
    );
    out
}

pub fn json(records: &[Record], context: serde_json::Value) -> serde_json::Value {
    let samples: Vec<_> = records
        .iter()
        .map(|r| {
            let metrics: serde_json::Map<String, serde_json::Value> =
                r.metrics.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
            json!({ "scenario": r.scenario, "mode": r.mode.name(), "round": r.round, "metrics": metrics })
        })
        .collect();
    let medians: Vec<_> = medians(records)
        .into_iter()
        .map(|((scenario, metric), per_mode)| json!({ "scenario": scenario, "metric": metric, "median": per_mode }))
        .collect();
    json!({ "context": context, "medians": medians, "samples": samples })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        let records = vec![
            Record {
                scenario: "udp-one",
                mode: Mode::Veg,
                round: 0,
                metrics: vec![("kpps", 400.0)],
            },
            Record {
                scenario: "udp-one",
                mode: Mode::VegRecords,
                round: 0,
                metrics: vec![("kpps", 300.0)],
            },
            Record {
                scenario: "udp-one",
                mode: Mode::Iptables,
                round: 0,
                metrics: vec![("kpps", 200.0)],
            },
        ];
        let table = markdown(&records, "# t");
        assert!(
            table.contains("| udp-one | kpps | 400.00 | 300.00 | 200.00 | - | 2.00x | 0.75x |"),
            "{table}"
        );
    }
}
