//! `cargo xtask image`: the one image (`veg controller`, `veg gateway` and its init container) built from this
//! repository with Debian's podman, no registry needed. The build writes a root filesystem of its own making,
//! target/image/rootfs: the `veg` binary, bpftool for operators inside an instance, the shared libraries both
//! load (found with ldd) and the few files a process expects; deploy/Dockerfile then copies it onto an empty
//! image (FROM scratch). .dockerignore keeps the rest of the repository out of the build context.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};

use veg_testbed::command::output_of;

use crate::workspace::{build_veg, build_veg_release, root, run, setup, step};

/// The tag tests run the lab's instances from (`cargo xtask test` builds it).
pub const TEST_TAG: &str = "localhost/veg:test";

#[derive(Args, Clone)]
pub struct ImageArgs {
    /// The image's name and tag.
    #[arg(long, default_value = "localhost/veg:dev")]
    pub tag: String,
    /// Which build of veg goes in: release (what ships) or debug (quicker when the debug build is there
    /// already, as in the tests).
    #[arg(long, value_enum, default_value = "release")]
    pub profile: Profile,
    /// Also write the image to FILE as a docker-archive (for `docker load`, `ctr images import`, `kind load
    /// image-archive`).
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Release,
    Debug,
}

/// What every podman run needs on these machines (as veg-lab/src/container.rs has it): runc, since crun refuses
/// cgroups in hybrid mode, and limits within the host's.
const RUNTIME_OPTIONS: [&str; 6] = [
    "--runtime",
    "runc",
    "--ulimit",
    "nofile=8192:8192",
    "--ulimit",
    "nproc=8192:8192",
];

/// Programs an operator uses inside an instance, copied from this machine with their libraries.
const TOOLS: [&str; 1] = ["/usr/sbin/bpftool"];

pub fn build(args: &ImageArgs) -> anyhow::Result<()> {
    setup()?;
    let veg = match args.profile {
        Profile::Release => build_veg_release()?,
        Profile::Debug => build_veg()?,
    };
    step("assembling the image's root filesystem (target/image/rootfs)");
    let rootfs = root().join("target/image/rootfs");
    assemble(&rootfs, &veg)?;
    step(&format!(
        "building the image {} (podman, FROM scratch)",
        args.tag
    ));
    run(Command::new("podman").args([
        "build",
        "--quiet",
        "--file",
        "deploy/Dockerfile",
        "--tag",
        &args.tag,
        ".",
    ]))?;
    // The image runs: veg and bpftool start and load their libraries.
    let version = output_in_root(
        Command::new("podman")
            .args(["run", "--rm", "--network", "none"])
            .args(RUNTIME_OPTIONS)
            .args([&args.tag, "--version"]),
    )?;
    output_in_root(
        Command::new("podman")
            .args(["run", "--rm", "--network", "none"])
            .args(RUNTIME_OPTIONS)
            .args(["--entrypoint", "bpftool", &args.tag, "version"]),
    )?;
    let size = output_in_root(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        "{{.Size}}",
        &args.tag,
    ]))?;
    let megabytes = size.trim().parse::<u64>().unwrap_or(0) / 1_000_000;
    println!("image {}: {} ({megabytes} MB)", args.tag, version.trim());
    if let Some(file) = &args.save {
        step(&format!("saving it to {}", file.display()));
        run(Command::new("podman")
            .args(["save", "--quiet", "--format", "docker-archive", "--output"])
            .arg(file)
            .arg(&args.tag))?;
    }
    Ok(())
}

/// The root filesystem: veg (stripped), the tools, every library they load, and a minimal /etc.
fn assemble(rootfs: &Path, veg: &Path) -> anyhow::Result<()> {
    if rootfs.exists() {
        std::fs::remove_dir_all(rootfs)
            .with_context(|| format!("clearing {}", rootfs.display()))?;
    }
    for dir in [
        "usr/local/bin",
        "usr/sbin",
        "etc",
        "tmp",
        "run/veg",
        "sys/fs/bpf",
        "proc",
    ] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    let installed = rootfs.join("usr/local/bin/veg");
    // Stripped: the debug build's symbols would make the image ten times larger.
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&installed)
        .arg(veg))?;
    let mut libraries = BTreeSet::new();
    libraries.extend(shared_libraries(veg)?);
    for tool in TOOLS {
        let tool = Path::new(tool);
        if !tool.exists() {
            bail!("{} is missing: run `cargo xtask setup`", tool.display());
        }
        copy_into(rootfs, tool)?;
        libraries.extend(shared_libraries(tool)?);
    }
    for library in &libraries {
        copy_into(rootfs, library)?;
    }
    // Who the controller runs as (65532, its Deployment's runAsUser), and root for the instances.
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n",
    )?;
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnonroot:x:65532:\n")?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    Ok(())
}

/// The shared libraries `binary` loads, the dynamic loader included, as ldd resolves them on this machine.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let listing = output_in_root(Command::new("ldd").arg(binary))?;
    Ok(listing
        .lines()
        .filter_map(|line| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)".
            let path = line
                .split("=>")
                .last()?
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/'))?;
            Some(PathBuf::from(path))
        })
        .collect())
}

/// Copy `file` to the same path under `rootfs` (following links: the image gets the file itself).
fn copy_into(rootfs: &Path, file: &Path) -> anyhow::Result<()> {
    let target = rootfs.join(file.strip_prefix("/").unwrap_or(file));
    std::fs::create_dir_all(target.parent().expect("a file has a parent"))?;
    std::fs::copy(file, &target)
        .with_context(|| format!("copying {} into the image", file.display()))?;
    Ok(())
}

/// `output_of`, run from the repository root (the build context).
fn output_in_root(command: &mut Command) -> anyhow::Result<String> {
    output_of(command.current_dir(root())).map_err(anyhow::Error::msg)
}
