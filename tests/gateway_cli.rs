//! `veg gateway` and the inspection commands as an operator meets them: refusals that say what is wrong and what to
//! do, leaving nothing behind, and settings from a file.

use std::{net::SocketAddr, process::Command, time::Duration};

use veg_testbed::{
    servers::{udp_echo, udp_round_trip},
    skip_unless_root,
    topology::{GATEWAY_EXTERNAL_IP, SERVER_IP, Topology, gateway_command},
    unique,
};

const VEG: &str = env!("CARGO_BIN_EXE_veg");

/// Run `veg gateway` in the topology's instance with the topology's defaults overridden by `args`; it must fail.
fn refused(topo: &Topology, name: &str, args: &[&str]) -> String {
    let mut full = vec!["gateway", "--name", name];
    let defaults = [
        ("--netns", topo.gateway.name.as_str()),
        ("--internal-interface", "eth0"),
        ("--external-interface", "net1"),
        ("--external-ip", GATEWAY_EXTERNAL_IP),
        ("--snat", "10.16.0.0/24"),
    ];
    for (flag, value) in defaults {
        if !args.contains(&flag) {
            full.extend([flag, value]);
        }
    }
    full.extend_from_slice(args);
    let out = Command::new(VEG).args(&full).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "veg gateway {full:?} should have failed:\n{stderr}"
    );
    assert!(
        !std::path::Path::new("/sys/fs/bpf/veg").join(name).exists(),
        "a refused gateway left pins behind"
    );
    stderr
}

#[test]
fn bad_settings_are_refused_with_advice() {
    if skip_unless_root() {
        return;
    }
    let topo = Topology::new(VEG);
    let name = unique("vegcli");
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--internal-interface", "eth9"],
            &["internal interface \"eth9\" does not exist", "eth0", "net1"],
        ),
        (
            &["--external-ip", "172.17.0.99"],
            &["172.17.0.99 is not configured on net1", "ip addr add"],
        ),
        (
            &["--snat", "10.16.0.0/33"],
            &["invalid CIDR \"10.16.0.0/33\""],
        ),
        (
            &["--port-range", "30000-40000"],
            &[
                "overlaps the kernel's ephemeral range 32768-60999",
                "--port-range",
            ],
        ),
        (&["--port-range", "40000-30000"], &["invalid port range"]),
        (
            &["--netns", "no-such-namespace"],
            &["\"no-such-namespace\" not found", "ip netns add"],
        ),
    ];
    for (args, expected) in cases {
        let stderr = refused(&topo, &name, args);
        for needle in *expected {
            assert!(
                stderr.contains(needle),
                "for {args:?} expected {needle:?} in:\n{stderr}"
            );
        }
    }
}

#[test]
fn a_second_agent_with_the_same_name_is_refused() {
    if skip_unless_root() {
        return;
    }
    let topo = Topology::new(VEG);
    let gateway = topo.start_gateway(&[]);
    let out = gateway_command(VEG, &gateway.name, &topo.gateway.name)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another `veg gateway --name"));
    // The first one is untouched.
    assert_eq!(gateway.counter("dropped_malformed"), 0);
}

#[test]
fn inspecting_an_unknown_gateway_says_so() {
    let out = Command::new(VEG)
        .args(["flows", "--name", "never-ran"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no pinned state for gateway \"never-ran\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("is `veg gateway --name never-ran` running"),
        "{stderr}"
    );
}

#[test]
fn settings_come_from_a_config_file() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(VEG);
    let client = topo.add_client("10.16.0.2");
    let name = unique("vegcfg");
    let file = std::env::temp_dir().join(format!("{name}.yaml"));
    std::fs::write(
        &file,
        format!(
            "name: {name}\nnetns: {}\ninternalInterface: eth0\nexternalInterface: net1\nexternalIP: {GATEWAY_EXTERNAL_IP}\n\
             snat: [10.16.0.0/24]\nportRange: 3000-3999\n",
            topo.gateway.name
        ),
    )
    .unwrap();
    let agent = Command::new(VEG)
        .args(["gateway", "--config", file.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let udp = udp_echo(&topo.server, 9000);
    let server = SocketAddr::new(SERVER_IP.parse().unwrap(), 9000);
    // The agent starts in well under a second; retry while it attaches.
    let answered = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        udp_round_trip(topo.client(client), 0, server, b"configured").is_ok()
    });
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let output = agent.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    let cleanup = Command::new(VEG)
        .args(["gateway", "--config", file.to_str().unwrap(), "--cleanup"])
        .output()
        .unwrap();
    std::fs::remove_file(&file).unwrap();
    assert!(
        answered,
        "no traffic passed the gateway configured from {}:\n{log}",
        file.display()
    );
    assert!(
        output.status.success(),
        "SIGTERM should end the agent cleanly:\n{log}"
    );
    assert!(cleanup.status.success());
    let peer = udp.peers()[0];
    assert_eq!(peer.ip().to_string(), GATEWAY_EXTERNAL_IP);
    assert!(
        (3000..=3999).contains(&peer.port()),
        "the file's port range was not used: {peer}"
    );
    assert!(
        !std::path::Path::new("/sys/fs/bpf/veg").join(&name).exists(),
        "--cleanup left pins"
    );
    assert!(
        !std::path::Path::new("/run/veg")
            .join(format!("{name}.lock"))
            .exists(),
        "the agent left its lock file"
    );
}
