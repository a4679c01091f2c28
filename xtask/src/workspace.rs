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

pub fn run(command: &mut Command) -> anyhow::Result<()> {
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

/// A pinned toolchain's name (`STABLE`, `NIGHTLY`) from scripts/toolchain.env, the one place they are written.
fn pinned(key: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(root().join("scripts/toolchain.env"))?;
    text.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('=').map(str::to_owned))
        .with_context(|| format!("scripts/toolchain.env has no {key}="))
}

/// Clippy on the eBPF programs, for the BPF target they are built for, with the pinned nightly they need.
fn clippy_ebpf() -> anyhow::Result<()> {
    step("lints of the eBPF programs (clippy on bpfel-unknown-none, -D warnings)");
    let nightly = pinned("NIGHTLY")?;
    let target_dir = root().join("target/bpf-clippy");
    run(Command::new("rustup")
        .args(["run", &nightly, "cargo", "clippy", "--package", "veg-ebpf"])
        .args([
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .arg(&target_dir)
        .args(["--", "-D", "warnings"])
        // The stable toolchain `cargo xtask` runs under must not leak into the nightly's build.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC"))
}

pub fn setup() -> anyhow::Result<()> {
    step("set-up: packages, toolchains, bpf-linker");
    run(Command::new("bash").arg(root().join("scripts/setup")))
}

/// Build `veg` (its build script builds the eBPF object) and `veg-lab` beside it (which `veg lab` runs), and
/// return veg's path.
pub fn build_veg() -> anyhow::Result<PathBuf> {
    step("building veg and veg-lab");
    run(cargo().args(["build", "--bin", "veg", "--bin", "veg-lab"]))?;
    Ok(root().join("target/debug/veg"))
}

/// veg optimized, as shipped: what the bench measures where the agent's own work counts (translation records,
/// scrapes). The datapath is optimized in every profile.
pub fn build_veg_release() -> anyhow::Result<PathBuf> {
    step("building veg (release)");
    run(cargo().args(["build", "--release", "--bin", "veg"]))?;
    Ok(root().join("target/release/veg"))
}

/// veg as shipped carries no lab code: veg-userspace does not depend on veg-lab (the crate graph, whatever the
/// profile), and the built veg binary has no symbol of it (while it has veg-userspace's, so the check can fail).
fn check_no_lab_in_veg() -> anyhow::Result<()> {
    step("veg as shipped carries no lab code (crate graph and symbols)");
    let out = cargo()
        .args([
            "tree",
            "--package",
            "veg-userspace",
            "--edges",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(root())
        .output()?;
    if !out.status.success() {
        bail!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let graph = String::from_utf8_lossy(&out.stdout);
    if graph.lines().any(|l| l.starts_with("veg-lab ")) {
        bail!("veg-userspace depends on veg-lab: the lab would ship in veg");
    }
    let binary =
        std::fs::read(root().join("target/debug/veg")).context("reading target/debug/veg")?;
    let has = |needle: &[u8]| binary.windows(needle.len()).any(|w| w == needle);
    if !has(b"veg_userspace") {
        bail!("target/debug/veg has no veg_userspace symbol: this check looks in the wrong place");
    }
    if has(b"veg_lab") {
        bail!("target/debug/veg has veg_lab symbols: lab code is linked into veg");
    }
    Ok(())
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
    clippy_ebpf()?;
    step("building everything, tests included");
    run(cargo().args(["test", "--no-run"]))?;
    check_no_lab_in_veg()?;
    step("unit tests, and the examples in the library crates' docs");
    run(cargo().args(["test", "--lib", "--bins"]))?;
    run(cargo().args([
        "test",
        "--doc",
        "--package",
        "veg-ovsdb",
        "--package",
        "veg-bfd",
    ]))?;
    // The lab's image test runs its instances from it; built from the debug build already there.
    crate::image::build(&crate::image::ImageArgs {
        tag: crate::image::TEST_TAG.into(),
        profile: crate::image::Profile::Debug,
        save: None,
    })?;
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
    // Every integration test target of the workspace, as the crates' manifests declare them: no second list.
    run(cargo().args(["test", "--test", "*", "--", "--test-threads=1"]))
}
