//! Entering a named network namespace (as created by `ip netns add`).
//!
//! Only the network namespace is switched: the process stays in the host's mount namespace, so its bpffs pins
//! live in the host's /sys/fs/bpf (`ip netns exec` would remount /sys and hide them).

use std::{fs::File, os::fd::AsRawFd, path::PathBuf};

use anyhow::{Context as _, bail};

pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/var/run/netns").join(name)
}

/// Move the calling thread into the named network namespace. Call it before starting any other thread: threads
/// created afterwards inherit it, threads created before do not.
pub fn enter(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.contains('/') {
        bail!("invalid network namespace name {name:?}: give the name listed by `ip netns list`");
    }
    let path = netns_path(name);
    let file = File::open(&path).with_context(|| {
        format!(
            "network namespace {name:?} not found ({}): create it with `ip netns add {name}`",
            path.display()
        )
    })?;
    // SAFETY: setns on a valid fd; affects only this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering network namespace {name:?} (needs CAP_SYS_ADMIN)"));
    }
    Ok(())
}
