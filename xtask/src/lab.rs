//! `cargo xtask lab up | down | status | demo`: install what the lab needs, build veg, and run `veg lab ...` (the lab
//! itself lives in veg, so that `veg lab apply` and friends share it).

use std::process::Command;

use anyhow::{Context as _, bail};
use clap::Subcommand;

use crate::workspace::{build_veg, setup, step};

#[derive(Subcommand, Clone, Copy)]
pub enum LabTask {
    /// Start real OVN and Open vSwitch and build the cluster-like network (replaces a lab already up).
    Up,
    /// Stop everything and remove every namespace and file of the lab.
    Down,
    /// Say what runs.
    Status,
    /// The contract's walkthrough on a lab of its own, narrated, torn down at the end.
    Demo,
}

pub fn run(task: LabTask) -> anyhow::Result<()> {
    if matches!(task, LabTask::Demo) {
        return crate::lab_demo::run();
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab creates network namespaces and runs OVN and eBPF programs: run it as root");
    }
    if matches!(task, LabTask::Up) {
        setup()?;
    }
    let veg = build_veg()?;
    let command = match task {
        LabTask::Up => "up",
        LabTask::Down => "down",
        LabTask::Status => "status",
        LabTask::Demo => unreachable!("handled above"),
    };
    step(&format!("veg lab {command}"));
    let status = Command::new(&veg)
        .args(["lab", command])
        .status()
        .with_context(|| format!("running {}", veg.display()))?;
    if !status.success() {
        if matches!(task, LabTask::Status) {
            // Not (fully) up: veg said what; its exit code says it too.
            std::process::exit(status.code().unwrap_or(1));
        }
        bail!("veg lab {command} failed ({status})");
    }
    Ok(())
}
