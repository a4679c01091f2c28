//! `cargo xtask bench [SCENARIO...]`: veg against iptables MASQUERADE and nftables masquerade on one topology,
//! modes interleaved round by round, medians and ratios against iptables.

mod bpf_sys;
mod chart;
mod exhaustion;
mod failover;
mod lines;
mod modes;
mod ovn;
mod profile;
mod program;
mod report;
mod scale;
mod scenarios;
mod table_size;
mod xdp;

use std::process::Command;

use anyhow::{Context as _, bail, ensure};
use serde_json::json;
use veg_testbed::topology::Topology;

use crate::workspace::{build_veg, build_veg_release, root, setup, step};
use modes::{ALL, enable};
use report::Record;
use scenarios::{CLIENT_IP, CLIENT_IPV6, SCENARIOS, Tools, measure, start_tcp_server};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Scenarios to run (default: all): udp-many, udp-many-2cpu (the same flows from two senders pinned to two
    /// CPUs, so that both CPUs use the one flow table at once), udp-one, tcp-stream-1, tcp-stream-8, tcp-crr,
    /// tcp-crr-1cpu and tcp-crr-2cpu (new connections from one CPU, or from both at once), tcp-rr, the same
    /// over IPv6 (udp-many-ipv6, udp-one-ipv6, tcp-stream-1-ipv6, tcp-crr-ipv6, tcp-rr-ipv6),
    /// flow-table (1,000,000 concurrent UDP translations: insertion rate and memory; raises the host's
    /// nf_conntrack_max and nf_conntrack_buckets for the run and restores them); or
    /// `ovn` alone for the OVN programming benchmark (1,000 gateways, a 10,000-port selector); `failover` alone
    /// for 20 failovers on the lab with real OVN (p50 / p99 of the traffic gap); `profile` alone for where the CPU
    /// goes in each mode (udp-many, tcp-stream-1 and tcp-crr under perf, by what does the work, with veg's own work
    /// against MASQUERADE's round by round); `lines` alone for where the time goes inside veg's programs, by
    /// source line (the same scenarios with veg, perf samples matched to the programs' BTF line info); `xdp` alone for the XDP lever (udp-many and tcp-stream-1 with veg, with
    /// and without a pass-everything XDP program on the instance's internal veth: the least XDP would add);
    /// `table-size` alone for what the flow table's capacity costs per packet (udp-many under perf with veg at
    /// --max-flows 8,192 to 1,048,576, against MASQUERADE).
    scenarios: Vec<String>,
    /// Rounds; each runs every mode once, in turn.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// A few seconds per mode, checking only that every mode forwarded traffic; results go to target/bench-smoke.
    #[arg(long)]
    smoke: bool,
}

impl BenchArgs {
    pub fn smoke() -> BenchArgs {
        BenchArgs {
            scenarios: Vec::new(),
            rounds: 1,
            seconds: 1.0,
            smoke: true,
        }
    }
}

/// Print a result's table and write it to NAME.md in the results directory, with its numbers in NAME.json when
/// there are any.
fn publish(name: &str, table: &str, numbers: Option<&serde_json::Value>) -> anyhow::Result<()> {
    println!("\n{table}");
    let dir = root().join("bench/results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{name}.md")), table)?;
    if let Some(numbers) = numbers {
        std::fs::write(
            dir.join(format!("{name}.json")),
            serde_json::to_string_pretty(numbers)?,
        )?;
    }
    println!("results: {}", dir.display());
    Ok(())
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn build_loadgen() -> anyhow::Result<String> {
    step("building the load generator (release)");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--package", "veg-loadgen"])
        .current_dir(root())
        .status()?;
    ensure!(status.success(), "building veg-loadgen failed");
    Ok(root()
        .join("target/release/veg-loadgen")
        .to_string_lossy()
        .into_owned())
}

/// Set-up, veg and the load generator built, and the bench's topology with its one client. veg is the release
/// build, as shipped, except in the smoke run (which only checks that every mode works, and is part of the test
/// command: a second profile's build would double its compile time).
fn topology(smoke: bool) -> anyhow::Result<(Topology, Tools)> {
    setup()?;
    let veg = if smoke {
        build_veg()?
    } else {
        build_veg_release()?
    };
    let tools = Tools {
        loadgen: build_loadgen()?,
    };
    step("building the topology: client -> gateway instance -> server");
    let mut topo = Topology::new(veg.to_str().context("non-UTF-8 path")?);
    topo.add_dual_stack_client(CLIENT_IP, CLIENT_IPV6);
    Ok((topo, tools))
}

// Long because it is the bench's table of contents: each scenario in turn, in the order the report shows them.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the bench creates network namespaces and loads eBPF programs: run it as root");
    }
    if args.scenarios == ["ovn"] {
        setup()?;
        return ovn::run();
    }
    if args.scenarios == ["failover"] {
        return failover::run();
    }
    if args.scenarios == ["profile"] {
        return profile::run(args.rounds.max(1), args.seconds);
    }
    if args.scenarios == ["lines"] {
        return lines::run(args.seconds);
    }
    if args.scenarios == ["xdp"] {
        return xdp::run(args.rounds.max(1), args.seconds);
    }
    if args.scenarios == ["table-size"] {
        return table_size::run(args.rounds.max(1), args.seconds);
    }
    let (rounds, seconds) = if args.smoke {
        (1, 1.0)
    } else {
        (args.rounds.max(1), args.seconds)
    };
    let known: Vec<&'static str> = SCENARIOS
        .iter()
        .copied()
        .chain([exhaustion::SCENARIO, scale::SCENARIO])
        .collect();
    let mut scenarios: Vec<&'static str> = if args.scenarios.is_empty() {
        known.clone()
    } else {
        args.scenarios
            .iter()
            .map(|s| {
                known
                    .iter()
                    .find(|k| **k == s.as_str())
                    .copied()
                    .with_context(|| {
                        format!("unknown scenario {s:?}: choose from {}", known.join(", "))
                    })
            })
            .collect::<anyhow::Result<_>>()?
    };
    // The flow table runs apart: veg's agent sized for it, the host's conntrack limits raised for it.
    let flow_table = scenarios.contains(&scale::SCENARIO);
    let port_exhaustion = scenarios.contains(&exhaustion::SCENARIO);
    scenarios.retain(|s| *s != scale::SCENARIO && *s != exhaustion::SCENARIO);
    let (topo, tools) = topology(args.smoke)?;
    let _tcp_server = KillOnDrop(start_tcp_server(&topo, &tools)?);

    let mut records = Vec::new();
    for round in 0..rounds {
        for mode in ALL {
            step(&format!("round {}/{rounds}: {}", round + 1, mode.name()));
            let active = enable(&topo, mode);
            for scenario in &scenarios {
                let metrics = measure(scenario, &topo, &tools, seconds)
                    .with_context(|| format!("{scenario} with {}", mode.name()))?;
                report::print(scenario, &metrics);
                records.push(Record {
                    scenario,
                    mode,
                    round,
                    metrics,
                });
            }
            drop(active);
        }
    }
    let flow_table_flows = if args.smoke {
        scale::SMOKE_FLOWS
    } else {
        scale::FLOWS
    };
    if port_exhaustion {
        records.extend(exhaustion::run(&topo, &tools, rounds, seconds)?);
    }
    if flow_table {
        records.extend(scale::run(&topo, &tools, rounds, flow_table_flows)?);
    }

    let program = program::program_costs()?;
    let program_logging = program::program_costs_logging()?;
    let netfilter_policy = program::netfilter_policy_load_ms()?;
    drop(_tcp_server);

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let header = format!(
        "Medians of {rounds} round(s) of {seconds} s per mode, modes interleaved; kernel {kernel}, {} CPUs.",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let mut table = report::markdown(&records, &header);
    table.push_str(&report::program_markdown(
        &program,
        &program_logging,
        &netfilter_policy,
    ));
    println!("\n{table}");
    let dir = if args.smoke {
        root().join("target/bench-smoke")
    } else {
        root().join("bench/results")
    };
    std::fs::create_dir_all(&dir)?;
    let context = json!({
        "rounds": rounds, "seconds": seconds, "kernel": kernel, "scenarios": scenarios,
        "flow_table_flows": flow_table.then_some(flow_table_flows),
        "program_ns_per_packet": program, "program_ns_per_packet_datapath_log_debug": program_logging,
        "policy_100k_load_ms": {
            "veg": program["policy_100k_load_ms"], "iptables": netfilter_policy["iptables"], "nftables": netfilter_policy["nftables"]
        },
    });
    std::fs::write(
        dir.join("latest.json"),
        serde_json::to_string_pretty(&report::json(&records, context))?,
    )?;
    std::fs::write(dir.join("latest.md"), &table)?;
    chart::draw(&records, &dir.join("latest.png"))?;
    println!("results: {}", dir.display());
    if args.smoke {
        check_every_mode_forwarded(&records)?;
    }
    Ok(())
}

/// The smoke run's claims: every mode moved traffic in every scenario and produced its numbers, and held every
/// flow of the flow-table scenario at once.
fn check_every_mode_forwarded(records: &[Record]) -> anyhow::Result<()> {
    for r in records {
        let (metric, value) = r.metrics[0];
        ensure!(
            value > 0.0 && value.is_finite(),
            "{} with {}: {metric} = {value}",
            r.scenario,
            r.mode.name()
        );
        if let Some((_, held)) = r.metrics.iter().find(|(m, _)| *m == "held") {
            ensure!(
                *held == f64::from(scale::SMOKE_FLOWS),
                "{} with {}: held {held} of {} flows",
                r.scenario,
                r.mode.name(),
                scale::SMOKE_FLOWS
            );
        }
    }
    Ok(())
}
