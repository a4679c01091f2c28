//! Running the tools the lab is built with (ip, ovs-vsctl, ovn-nbctl, ...), with errors that say what failed.

use std::process::Command;

use anyhow::{Context as _, bail};

/// Run `program args`; its stdout, or an error with its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    run_with_env(program, args, &[])
}

/// Run `program args` with extra environment variables.
pub fn run_with_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .with_context(|| {
            format!("running {program} (is it installed? `cargo xtask setup` installs it)")
        })?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run `program args` inside the network namespace `netns`.
pub fn run_in(netns: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["netns", "exec", netns, program];
    full.extend_from_slice(args);
    run("ip", &full)
}
