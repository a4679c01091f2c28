//! Running the tools the lab is built with (ip, ovs-vsctl, ovn-nbctl, ...), with errors that say what failed.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

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

/// The `veg` binary the lab runs its instances with: the one next to this program, as cargo builds both into the
/// same directory (`cargo xtask lab` and the tests build both).
pub fn veg_binary() -> anyhow::Result<PathBuf> {
    let this = std::env::current_exe().context("finding the veg-lab binary")?;
    let veg = this.with_file_name("veg");
    if !veg.exists() {
        bail!(
            "{} is missing: the lab runs the veg binary built beside it (cargo build --bin veg --bin veg-lab)",
            veg.display()
        );
    }
    Ok(veg)
}

/// Start `program` with `args` in a session of its own, its output to `log`, so that it outlives the process that
/// started it (as a pod outlives its controller). Returns its pid.
pub fn spawn_detached(
    program: &Path,
    args: &[&str],
    log: &Path,
    what: &str,
) -> anyhow::Result<i32> {
    let log = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    // SAFETY: setsid is async-signal-safe and touches nothing of the parent's.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = command
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    Ok(child.id() as i32)
}
