//! Set-up, builds and the test run.

use std::{
    io::BufRead,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_owned()
}

pub fn step(what: &str) {
    eprintln!("\x1b[1m==> {what}\x1b[0m");
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .current_dir(root())
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

pub fn setup() -> anyhow::Result<()> {
    step("set-up: packages, toolchains, bpf-linker");
    run(Command::new("bash").arg(root().join("scripts/setup")))
}

/// Build `veg` (its build script builds the eBPF object) and return the binary's path.
pub fn build_veg() -> anyhow::Result<PathBuf> {
    step("building veg");
    run(cargo().args(["build", "--package", "veg-userspace", "--bin", "veg"]))?;
    Ok(root().join("target/debug/veg"))
}

pub fn build_ebpf() -> anyhow::Result<PathBuf> {
    setup()?;
    step("building the eBPF object");
    let mut child = cargo()
        .args([
            "build",
            "--package",
            "veg-userspace",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(root())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out_dir = None;
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let message: serde_json::Value = serde_json::from_str(&line?)?;
        if message["reason"] == "build-script-executed"
            && message["package_id"]
                .as_str()
                .is_some_and(|id| id.contains("veg-userspace"))
        {
            out_dir = message["out_dir"].as_str().map(PathBuf::from);
        }
    }
    if !child.wait()?.success() {
        bail!("building veg-userspace failed");
    }
    let object = out_dir
        .context("cargo did not report veg-userspace's build output")?
        .join("veg-ebpf");
    let target = root().join("target/bpf/veg-ebpf.o");
    std::fs::create_dir_all(target.parent().unwrap())?;
    std::fs::copy(&object, &target).with_context(|| format!("copying {}", object.display()))?;
    Ok(target)
}

pub fn test() -> anyhow::Result<()> {
    setup()?;
    step("formatting (cargo fmt --check)");
    run(cargo().args(["fmt", "--all", "--check"]))?;
    step("lints (cargo clippy --all-targets -- -D warnings)");
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    step("building everything, tests included");
    run(cargo().args(["test", "--no-run"]))?;
    step("unit tests");
    run(cargo().args(["test", "--lib", "--bins"]))?;
    step(
        "the demos, as smoke tests: the lab with real OVN (the README's main command), then the datapath alone",
    );
    crate::lab_demo::run()?;
    crate::demo::run()?;
    step("the benchmark, as a smoke test: every mode forwards traffic and yields numbers");
    crate::bench::run(crate::bench::BenchArgs::smoke())?;
    // Traffic through namespaces is timing-sensitive: one test at a time, nothing building beside it.
    step(
        "datapath program tests, traffic through network namespaces, BFD against FRR, OVSDB, OVN model and controller against a real Northbound database, end to end on the lab with real OVN (serial)",
    );
    run(cargo().args([
        "test",
        "--package",
        "veg-userspace",
        "--test",
        "datapath_program",
        "--test",
        "gateway_traffic",
        "--test",
        "hostile_traffic",
        "--test",
        "icmp_traffic",
        "--test",
        "masquerade_comparison",
        "--test",
        "gateway_cli",
        "--test",
        "gateway_resource",
        "--test",
        "bfd_interop",
        "--test",
        "ovsdb_client",
        "--test",
        "ovn_model",
        "--test",
        "controller",
        "--test",
        "lab",
        "--",
        "--test-threads=1",
    ]))
}
