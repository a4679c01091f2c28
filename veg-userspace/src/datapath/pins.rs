//! Where a gateway's pinned maps live in bpffs: /sys/fs/bpf/veg/<name>/<MAP>.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
pub const FLOWS: &str = "FLOWS";
pub const FLOW_COUNTS: &str = "FLOW_COUNTS";
pub const STATS: &str = "STATS";
pub const CONFIG: &str = "CONFIG";
pub const POLICY_V4: &str = "POLICY_V4";
pub const POLICY_V6: &str = "POLICY_V6";
pub const FRAGMENTS: &str = "FRAGMENTS";
pub const FRAGMENTS_V6: &str = "FRAGMENTS_V6";
pub const AGENT_STATS: &str = "AGENT_STATS";
/// The maps the agent pins (the programs' other maps hold nothing between packets, or belong to one load).
pub const PINNED_MAPS: [&str; 9] = [
    CONFIG,
    POLICY_V4,
    POLICY_V6,
    FLOWS,
    FLOW_COUNTS,
    STATS,
    AGENT_STATS,
    FRAGMENTS,
    FRAGMENTS_V6,
];
/// The programs' TCX links: pinned, so that the programs stay attached when the agent dies without detaching
/// them (killed, crashed), and the kernel never forwards a client's packet untranslated in the meantime.
pub const LINK_FROM_VPC: &str = "LINK_FROM_VPC";
pub const LINK_FROM_OUTSIDE: &str = "LINK_FROM_OUTSIDE";

/// A gateway name becomes a directory name: keep it to what Kubernetes allows in names.
/// bpffs refuses '.' in the names of pins and directories, so a gateway name may not have one.
pub fn validate_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if !ok {
        bail!(
            "invalid gateway name {name:?}: use letters, digits, '-' and '_' (bpffs refuses '.'; \
             for a Kubernetes gateway, NAMESPACE_NAME)"
        );
    }
    Ok(())
}

pub fn gateway_dir(name: &str) -> PathBuf {
    Path::new(BPFFS_ROOT).join("veg").join(name)
}

/// Fail with advice when bpffs is not mounted where the pins go.
pub fn check_bpffs() -> anyhow::Result<()> {
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let path = std::ffi::CString::new(BPFFS_ROOT).unwrap();
    // SAFETY: valid C string and statfs buffer.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut st) };
    const BPF_FS_MAGIC: libc::c_long = 0xcafe4a11;
    if rc != 0 || st.f_type as libc::c_long != BPF_FS_MAGIC {
        bail!(
            "bpffs is not mounted at {BPFFS_ROOT}: mount it with `mount -t bpf bpf {BPFFS_ROOT}` (in a pod, mount the host's /sys/fs/bpf)"
        );
    }
    Ok(())
}

/// The path of one pinned map, failing with advice when the gateway has never run.
pub fn existing_map(name: &str, map: &str) -> anyhow::Result<PathBuf> {
    validate_name(name)?;
    let path = gateway_dir(name).join(map);
    if !path.exists() {
        bail!(
            "no pinned state for gateway {name:?} ({} is missing): is `veg gateway --name {name}` running on this host?",
            path.display()
        );
    }
    Ok(path)
}

/// Remove a gateway's pinned state. Returns the pins removed.
pub fn remove_gateway_pins(name: &str) -> anyhow::Result<Vec<PathBuf>> {
    validate_name(name)?;
    remove_dir_of_pins(&gateway_dir(name))
}

/// Remove every pin in `dir`, the directory, and its parent when that was the last gateway.
pub fn remove_dir_of_pins(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        std::fs::remove_file(&path).with_context(|| format!("removing pin {}", path.display()))?;
        removed.push(path);
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))?;
    // The parent goes too when this was the last gateway, leaving nothing behind.
    let _ = std::fs::remove_dir(dir.parent().expect("gateway dir has a parent"));
    Ok(removed)
}
