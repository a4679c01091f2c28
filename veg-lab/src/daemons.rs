//! The OVN and Open vSwitch daemons of the lab, as plain processes with their databases, sockets, pidfiles and
//! logs in the lab's run directory: ovsdb-server for the Northbound, Southbound and Open_vSwitch databases,
//! ovn-northd, and, inside the lab's host namespace, ovs-vswitchd (userspace datapath, no kernel module) and
//! ovn-controller. ovn-controller creates br-int as a netdev bridge.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::command::{run, run_with_env};

/// Every daemon, in start order (stopped in reverse).
pub const DAEMONS: [&str; 6] = ["nb", "sb", "conf", "northd", "vswitchd", "controller"];

const SCHEMAS: [(&str, &str); 3] = [
    ("nb", "/usr/share/ovn/ovn-nb.ovsschema"),
    ("sb", "/usr/share/ovn/ovn-sb.ovsschema"),
    ("conf", "/usr/share/openvswitch/vswitch.ovsschema"),
];

/// Where the daemons keep their runtime files: the lab's run directory for all of them.
fn env(dir: &str) -> [(&'static str, &str); 6] {
    [
        ("OVS_RUNDIR", dir),
        ("OVS_LOGDIR", dir),
        ("OVS_DBDIR", dir),
        ("OVN_RUNDIR", dir),
        ("OVN_LOGDIR", dir),
        ("OVN_DBDIR", dir),
    ]
}

fn files(dir: &str, daemon: &str) -> [String; 3] {
    [
        format!("--pidfile={dir}/{daemon}.pid"),
        format!("--log-file={dir}/{daemon}.log"),
        format!("--unixctl={dir}/{daemon}.ctl"),
    ]
}

/// Run `program args` as a daemon (detached, quiet on the console) with the lab's environment.
fn start_daemon(program: &str, mut args: Vec<String>, env: &[(&str, &str)]) -> anyhow::Result<()> {
    args.extend(["--detach", "--no-chdir", "-vconsole:off"].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_with_env(program, &args, env).map(drop)
}

/// `program args` inside the network namespace `host`, as arguments of `ip`.
fn in_netns(host: &str, program: &str, args: Vec<String>) -> Vec<String> {
    ["netns", "exec", host, program]
        .iter()
        .map(|a| a.to_string())
        .chain(args)
        .collect()
}

/// Start the ovsdb-server of database `db` (nb, sb or conf) on its file and socket in `dir`.
pub fn start_database(dir: &Path, db: &str) -> anyhow::Result<()> {
    let d = dir.to_str().context("the lab directory is not UTF-8")?;
    let [pid, log, ctl] = files(d, db);
    let args = vec![
        format!("{d}/{db}.db"),
        format!("--remote=punix:{d}/{db}.sock"),
        pid,
        log,
        ctl,
    ];
    start_daemon("ovsdb-server", args, &env(d))
}

/// Start every daemon; `host` is the network namespace of the datapath, `chassis` the chassis' name.
pub fn start(dir: &Path, host: &str, chassis: &str) -> anyhow::Result<()> {
    let d = dir.to_str().context("the lab directory is not UTF-8")?;
    let env = env(d);
    for (db, schema) in SCHEMAS {
        run("ovsdb-tool", &["create", &format!("{d}/{db}.db"), schema])?;
        start_database(dir, db)?;
    }
    let vsctl = |args: &[&str]| {
        let mut full = vec![format!("--db=unix:{d}/conf.sock"), "--no-wait".to_owned()];
        full.extend(args.iter().map(|a| a.to_string()));
        run_with_env(
            "ovs-vsctl",
            &full.iter().map(String::as_str).collect::<Vec<_>>(),
            &env,
        )
    };
    vsctl(&["init"])?;
    vsctl(&[
        "set",
        "Open_vSwitch",
        ".",
        &format!("external_ids:system-id={chassis}"),
        &format!("external_ids:ovn-remote=unix:{d}/sb.sock"),
        "external_ids:ovn-encap-type=geneve",
        "external_ids:ovn-encap-ip=127.0.0.1",
        // The userspace datapath: no kernel module needed.
        "external_ids:ovn-bridge-datapath-type=netdev",
    ])?;
    let [pid, log, ctl] = files(d, "northd");
    let northd = vec![
        format!("--ovnnb-db=unix:{d}/nb.sock"),
        format!("--ovnsb-db=unix:{d}/sb.sock"),
        pid,
        log,
        ctl,
    ];
    start_daemon("ovn-northd", northd, &env)?;
    let [pid, log, ctl] = files(d, "vswitchd");
    let vswitchd = vec![format!("unix:{d}/conf.sock"), pid, log, ctl];
    start_daemon("ip", in_netns(host, "ovs-vswitchd", vswitchd), &env)?;
    // ovn-controller refuses --unixctl: its control socket goes to OVN_RUNDIR.
    let [pid, log, _] = files(d, "controller");
    let controller = vec![format!("unix:{d}/conf.sock"), pid, log];
    start_daemon("ip", in_netns(host, "ovn-controller", controller), &env)?;
    wait_for_integration_bridge(d, &env)
}

fn wait_for_integration_bridge(d: &str, env: &[(&str, &str)]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let db = format!("--db=unix:{d}/conf.sock");
        if run_with_env("ovs-vsctl", &[&db, "br-exists", "br-int"], env).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "ovn-controller did not create br-int within 10 s: see {d}/controller.log and {d}/vswitchd.log"
    )
}

pub fn pid(dir: &Path, daemon: &str) -> Option<i32> {
    std::fs::read_to_string(dir.join(format!("{daemon}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Running, and not a zombie waiting to be reaped.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// Stop a process: SIGTERM, then SIGKILL after `grace`. Returns once it is gone.
pub fn stop_pid(pid: i32, grace: Duration) {
    // SAFETY: signalling a process of the lab.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Stop every daemon that runs, in reverse start order.
pub fn stop(dir: &Path) {
    for daemon in DAEMONS.iter().rev() {
        if let Some(pid) = pid(dir, daemon) {
            stop_pid(pid, Duration::from_secs(3));
        }
    }
}

/// Each daemon and whether it runs.
pub fn status(dir: &Path) -> Vec<(&'static str, bool)> {
    DAEMONS
        .iter()
        .map(|d| (*d, pid(dir, d).is_some_and(alive)))
        .collect()
}
