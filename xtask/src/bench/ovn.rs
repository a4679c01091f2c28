//! `cargo xtask bench ovn`: the OVN side at scale (the ignored test ovn_apply_at_scale of tests/ovn_model.rs,
//! built with --release): 1,000 gateways, a 10,000-port selector, a scale-out, an unchanged re-apply.

use std::{fmt::Write as _, process::Command};

use anyhow::{Context as _, ensure};
use serde_json::Value;

use crate::workspace::{root, step};

pub fn run() -> anyhow::Result<()> {
    step(
        "OVN: 1,000 gateways and a 10,000-port selector against a real Northbound database (release build)",
    );
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "test",
            "--release",
            "--package",
            "veg-userspace",
            "--test",
            "ovn_model",
            "--",
        ])
        .args([
            "--ignored",
            "ovn_apply_at_scale",
            "--nocapture",
            "--test-threads=1",
        ])
        .current_dir(root())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "ovn_apply_at_scale failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("OVN_BENCH ").map(|(_, json)| json))
        .context("no OVN_BENCH line")?;
    let result: Value = serde_json::from_str(line)?;
    let table = markdown(&result);
    super::publish("ovn", &table, Some(&result))
}

fn markdown(result: &Value) -> String {
    let mut out = String::from(
        "| OVN apply (one transaction each) | count | ms each | bytes sent each | bytes received each |\n|---|---:|---:|---:|---:|\n",
    );
    for (label, key) in [
        ("new gateway (default VPC, 2 instances)", "apply_each"),
        ("gateway selecting 10,000 pods", "selector_10k_apply"),
        ("scale-out 2 -> 3 instances", "scale_out"),
        (
            "re-apply, unchanged (writes nothing)",
            "reapply_unchanged_each",
        ),
    ] {
        let r = &result[key];
        let _ = writeln!(
            out,
            "| {label} | {} | {:.2} | {} | {} |",
            r["count"],
            r["ms_each"].as_f64().unwrap_or(0.0),
            r["bytes_sent_each"],
            r["bytes_received_each"]
        );
    }
    out
}
