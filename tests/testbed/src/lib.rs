//! What veg's integration tests and `cargo xtask demo` share: network namespaces that clean themselves up, the
//! gateway lab topology, the `veg gateway` process, servers that record what they saw, and packet builders.

pub mod capture;
pub mod command;
pub mod frr;
pub mod iperf;
pub mod kube_api;
pub mod netns;
pub mod new_flows;
pub mod ovsdb;
pub mod packet;
pub mod prometheus;
pub mod servers;
pub mod topology;
pub mod udp;

/// Tests need root (namespaces, BPF). Returns true, after saying why, when the test should be skipped.
pub fn skip_unless_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: this test needs root (network namespaces and BPF)");
        return true;
    }
    false
}

/// A short name unique to this process and call, for namespaces and gateways.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
