//! Builds the eBPF programs (veg-ebpf) with the pinned nightly and embeds the object in the `veg` binary, so that
//! a plain `cargo build` produces everything a user needs. scripts/setup installs the toolchain and bpf-linker.

use std::{env, path::PathBuf};

use anyhow::{Context as _, bail};

/// `KEY=value` lines of scripts/toolchain.env, the single place the toolchains are pinned.
fn pinned(key: &str) -> anyhow::Result<String> {
    let toolchain_env = include_str!("../scripts/toolchain.env");
    toolchain_env
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('=').map(str::to_owned))
        .with_context(|| format!("scripts/toolchain.env has no {key}="))
}

/// Put the bpf-linker that scripts/setup built on PATH, unless one is there already.
fn add_bpf_linker_to_path() -> anyhow::Result<()> {
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|dir| dir.join("bpf-linker").is_file()) {
        return Ok(());
    }
    let cache = env::var_os("VEG_CACHE")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/veg")))
        .context("neither VEG_CACHE nor HOME is set")?;
    let dir = cache.join(format!(
        "bpf-linker-{}-{}/bin",
        pinned("BPF_LINKER_VERSION")?,
        pinned("NIGHTLY")?
    ));
    if !dir.join("bpf-linker").is_file() {
        bail!(
            "bpf-linker not found on PATH nor in {}: run scripts/setup first",
            dir.display()
        );
    }
    let mut dirs = vec![dir];
    dirs.extend(env::split_paths(&path));
    // SAFETY: build scripts are single-threaded.
    unsafe { env::set_var("PATH", env::join_paths(dirs)?) };
    Ok(())
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../scripts/toolchain.env");
    println!("cargo:rerun-if-changed=../veg-common/src");
    add_bpf_linker_to_path()?;
    let nightly = pinned("NIGHTLY")?;
    let ebpf = aya_build::Package {
        name: "veg-ebpf",
        root_dir: "../veg-ebpf",
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Custom(&nightly))
}
