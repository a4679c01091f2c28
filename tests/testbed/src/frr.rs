//! FRR's bfdd as a BFD peer in a test namespace: zebra and bfdd run as user frr with their own vty directory,
//! and are killed (with their directory removed) on drop.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::netns::Netns;

pub struct Bfdd {
    dir: PathBuf,
    peer: String,
}

impl Bfdd {
    /// Start zebra and bfdd in `ns` with one peer, `tx_ms` / `rx_ms` / `mult` timers.
    pub fn start(
        ns: &Netns,
        peer: &str,
        local: &str,
        interface: &str,
        tx_ms: u32,
        rx_ms: u32,
        mult: u8,
    ) -> Bfdd {
        let dir = std::env::temp_dir().join(format!("veg-frr-{}", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("frr.conf"),
            format!(
                "bfd\n peer {peer} local-address {local} interface {interface}\n  transmit-interval {tx_ms}\n  \
                 receive-interval {rx_ms}\n  detect-multiplier {mult}\n !\n!\n"
            ),
        )
        .unwrap();
        // The daemons drop to user frr and need to write here.
        let d = dir.to_str().unwrap();
        assert!(
            Command::new("chown")
                .args(["-R", "frr:frr", d])
                .status()
                .unwrap()
                .success()
        );
        assert!(
            Command::new("chmod")
                .args(["777", d])
                .status()
                .unwrap()
                .success()
        );
        let zserv = format!("{d}/zserv.api");
        let common = [
            "-d",
            "-u",
            "frr",
            "-g",
            "frr",
            "--vty_socket",
            d,
            "-z",
            &zserv,
            "-A",
            "127.0.0.1",
        ];
        ns.exec_ok(
            "/usr/lib/frr/zebra",
            &[
                &common[..],
                &["-i", &format!("{d}/zebra.pid"), "-f", "/dev/null"],
            ]
            .concat(),
        );
        ns.exec_ok(
            "/usr/lib/frr/bfdd",
            &[
                &common[..],
                &[
                    "-i",
                    &format!("{d}/bfdd.pid"),
                    "-f",
                    &format!("{d}/frr.conf"),
                    "--bfdctl",
                    &format!("{d}/bfdd.sock"),
                ],
            ]
            .concat(),
        );
        Bfdd {
            dir,
            peer: peer.to_owned(),
        }
    }

    fn vtysh(&self, commands: &[&str]) -> String {
        let mut cmd = Command::new("vtysh");
        cmd.args(["--vty_socket", self.dir.to_str().unwrap()]);
        for c in commands {
            cmd.args(["-c", c]);
        }
        String::from_utf8_lossy(&cmd.output().expect("vtysh").stdout).into_owned()
    }

    /// Configure one more peer at run time, with the same kind of timers as `start`.
    pub fn add_peer(
        &self,
        peer: &str,
        local: &str,
        interface: &str,
        tx_ms: u32,
        rx_ms: u32,
        mult: u8,
    ) {
        self.vtysh(&[
            "configure terminal",
            "bfd",
            &format!("peer {peer} local-address {local} interface {interface}"),
            &format!("transmit-interval {tx_ms}"),
            &format!("receive-interval {rx_ms}"),
            &format!("detect-multiplier {mult}"),
        ]);
    }

    /// bfdd's view of our session (`show bfd peers json`), if it has one.
    pub fn session(&self) -> Option<Value> {
        self.session_with(&self.peer)
    }

    /// bfdd's view of its session with `peer`.
    pub fn session_with(&self, peer: &str) -> Option<Value> {
        let peers: Value = serde_json::from_str(&self.vtysh(&["show bfd peers json"])).ok()?;
        peers
            .as_array()?
            .iter()
            .find(|p| p["peer"] == peer)
            .cloned()
    }

    pub fn status(&self) -> String {
        self.status_with(&self.peer)
    }

    /// The status (up, down, init) of bfdd's session with `peer`.
    pub fn status_with(&self, peer: &str) -> String {
        self.session_with(peer)
            .and_then(|s| s["status"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Wait until bfdd reports `status` (up, down, init); returns how long it took.
    pub fn wait_for(&self, status: &str, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.status() == status {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    /// Change the session's timers at run time (bfdd negotiates them with a Poll Sequence).
    pub fn set_timers(&self, local: &str, interface: &str, tx_ms: u32, rx_ms: u32) {
        self.vtysh(&[
            "configure terminal",
            "bfd",
            &format!(
                "peer {} local-address {local} interface {interface}",
                self.peer
            ),
            &format!("transmit-interval {tx_ms}"),
            &format!("receive-interval {rx_ms}"),
        ]);
    }

    fn pid(&self, daemon: &str) -> Option<i32> {
        std::fs::read_to_string(self.dir.join(format!("{daemon}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// SIGKILL bfdd: it goes silent without telling its peer.
    pub fn kill(&self) {
        if let Some(pid) = self.pid("bfdd") {
            // SAFETY: signalling a process we started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

impl Drop for Bfdd {
    fn drop(&mut self) {
        for daemon in ["bfdd", "zebra"] {
            if let Some(pid) = self.pid(daemon) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
