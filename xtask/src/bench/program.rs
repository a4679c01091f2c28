//! What does not need traffic: the programs' cost per path (BPF_PROG_TEST_RUN, from an ignored test of
//! tests/datapath_program.rs), and the time to load 100,000 policy sources, against iptables rules (one per
//! source, as the reference writes them) and an nftables set.

use std::{fmt::Write as _, process::Command, time::Instant};

use anyhow::{Context as _, ensure};
use serde_json::{Value, json};
use veg_testbed::netns::Netns;

use crate::workspace::{root, step};

const SOURCES: u32 = 100_000;

/// Runs of the measurement; each path keeps its lowest median. On a shared VM a run can land in a slow spell that
/// doubles every number (seen here: 603 then 313 ns for the same path, minutes apart).
const RUNS: usize = 3;

pub fn program_costs() -> anyhow::Result<Value> {
    step(&format!(
        "program cost per path (BPF_PROG_TEST_RUN) and policy load time, best of {RUNS} runs"
    ));
    best_of_runs("off")
}

/// The same with the programs' log lines on (`--datapath-log debug`): what a line costs where it sits, and that
/// the paths without one cost the same as with logging off (where the lines are pruned when the programs load).
pub fn program_costs_logging() -> anyhow::Result<Value> {
    step(&format!(
        "program cost per path with --datapath-log debug, best of {RUNS} runs"
    ));
    best_of_runs("debug")
}

fn best_of_runs(datapath_log: &str) -> anyhow::Result<Value> {
    let mut best = serde_json::Map::new();
    for _ in 0..RUNS {
        let Value::Object(run) = program_costs_once(datapath_log)? else {
            anyhow::bail!("PROGRAM_COST is not a JSON object");
        };
        for (path, value) in run {
            let value = value.as_f64().context("a cost that is not a number")?;
            let lower = best
                .get(&path)
                .and_then(Value::as_f64)
                .is_none_or(|b| value < b);
            if lower {
                best.insert(path, json!(value));
            }
        }
    }
    Ok(Value::Object(best))
}

fn program_costs_once(datapath_log: &str) -> anyhow::Result<Value> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        // The program lab's datapath loads with this --datapath-log level (tests/datapath_program.rs).
        .env("VEG_DATAPATH_LOG", datapath_log)
        .args([
            "test",
            "--package",
            "veg-userspace",
            "--test",
            "datapath_program",
            "--",
            "--ignored",
        ])
        .args(["program_cost_per_path", "--nocapture", "--test-threads=1"])
        .current_dir(root())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "program_cost_per_path failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("PROGRAM_COST ").map(|(_, json)| json))
        .context("no PROGRAM_COST line")?;
    Ok(serde_json::from_str(line)?)
}

fn source(i: u32) -> String {
    let a = 0x0a40_0000 + i;
    format!(
        "{}.{}.{}.{}/32",
        a >> 24,
        (a >> 16) & 0xff,
        (a >> 8) & 0xff,
        a & 0xff
    )
}

fn timed_stdin(ns: &Netns, program: &str, args: &[&str], input: &str) -> anyhow::Result<f64> {
    use std::io::Write;
    let started = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, program])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// Milliseconds to load 100,000 sources with iptables-restore and with nft -f, in a scratch namespace.
pub fn netfilter_policy_load_ms() -> anyhow::Result<Value> {
    let ns = Netns::new(&veg_testbed::unique("vegbenchpol"));
    let mut rules = String::from("*nat\n:POSTROUTING ACCEPT [0:0]\n");
    for i in 0..SOURCES {
        let _ = writeln!(
            rules,
            "-A POSTROUTING -s {} -j MASQUERADE --random-fully",
            source(i)
        );
    }
    rules.push_str("COMMIT\n");
    let iptables = timed_stdin(&ns, "iptables-restore", &[], &rules)?;
    let mut nft = String::from(
        "table ip veg_bench {\n set sources { type ipv4_addr; flags interval; elements = {\n",
    );
    for i in 0..SOURCES {
        let _ = writeln!(nft, "  {},", source(i));
    }
    nft.push_str(" } }\n chain postrouting { type nat hook postrouting priority 100; ip saddr @sources masquerade fully-random; }\n}\n");
    let nftables = timed_stdin(&ns, "nft", &["-f", "-"], &nft)?;
    Ok(json!({ "iptables": iptables, "nftables": nftables }))
}
