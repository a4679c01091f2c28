//! `veg bfd` against FRR's bfdd (a real, independent BFD implementation) in network namespaces. Each test asserts
//! on what the peer reports, not only on what veg believes. Timing tests: run serially, not beside a build.
//!
//! Topology: namespace "veg" 10.99.0.1/24 <-> veth <-> namespace "frr" 10.99.0.2/24 (+ 10.99.0.3, a stranger).

use std::{
    net::{IpAddr, UdpSocket},
    os::fd::AsRawFd,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use veg_bfd::packet::{ControlPacket, Diagnostic, State};
use veg_testbed::{
    frr::Bfdd,
    netns::Netns,
    servers::{udp_echo, udp_round_trip},
    skip_unless_root,
    topology::{Topology, external_ip, server},
    unique,
};

const VEG: &str = env!("CARGO_BIN_EXE_veg");
const OURS: &str = "10.99.0.1";
const THEIRS: &str = "10.99.0.2";
const STRANGER: &str = "10.99.0.3";

struct Pair {
    name: String,
    ours_ip: &'static str,
    theirs_ip: &'static str,
    veg_bfd: Option<Child>,
    frr: Option<Bfdd>,
    theirs: Netns,
    ours: Netns,
}

impl Pair {
    /// Both namespaces, FRR's bfdd at `frr_ms` x 3, and `veg bfd` with `veg_args`, over IPv4.
    fn start(frr_ms: u32, veg_args: &[&str]) -> Pair {
        Pair::start_with(OURS, THEIRS, 24, frr_ms, veg_args)
    }

    fn start_with(
        ours_ip: &'static str,
        theirs_ip: &'static str,
        prefix: u8,
        frr_ms: u32,
        veg_args: &[&str],
    ) -> Pair {
        let name = unique("vegbfd");
        let ours = Netns::new(&format!("{name}-veg"));
        let theirs = Netns::new(&format!("{name}-frr"));
        ours.add_veth("eth0", "eth0", &theirs);
        // nodad: an IPv6 address is usable at once instead of after duplicate address detection.
        let nodad: &[&str] = if ours_ip.contains(':') {
            &["nodad"]
        } else {
            &[]
        };
        ours.ip(&[
            &["addr", "add", &format!("{ours_ip}/{prefix}"), "dev", "eth0"][..],
            nodad,
        ]
        .concat());
        theirs.ip(&[
            &[
                "addr",
                "add",
                &format!("{theirs_ip}/{prefix}"),
                "dev",
                "eth0",
            ][..],
            nodad,
        ]
        .concat());
        theirs.ip(&["addr", "add", &format!("{STRANGER}/24"), "dev", "eth0"]);
        ours.ip(&["link", "set", "eth0", "up"]);
        theirs.ip(&["link", "set", "eth0", "up"]);
        let frr = Bfdd::start(&theirs, ours_ip, theirs_ip, "eth0", frr_ms, frr_ms, 3);
        let mut pair = Pair {
            name,
            ours_ip,
            theirs_ip,
            veg_bfd: None,
            frr: Some(frr),
            theirs,
            ours,
        };
        pair.start_veg(veg_args);
        pair
    }

    fn start_veg(&mut self, extra: &[&str]) {
        self.start_veg_with(self.ours_ip, &[self.theirs_ip], extra);
    }

    /// `veg bfd` listening on `listen` (one address per family, comma-separated) with these peers.
    fn start_veg_with(&mut self, listen: &str, peers: &[&str], extra: &[&str]) {
        let peers = peers.iter().flat_map(|p| ["--peer", p]);
        let child = Command::new(VEG)
            .args(["bfd", "--netns", &self.ours.name, "--listen", listen])
            .args(peers)
            .args(["--name", &self.name])
            .args(extra)
            .env("NO_COLOR", "1")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.veg_bfd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.try_status().is_none() {
            assert!(Instant::now() < deadline, "veg bfd did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn frr(&self) -> &Bfdd {
        self.frr.as_ref().unwrap()
    }

    fn try_status(&self) -> Option<Value> {
        let out = Command::new(VEG)
            .args(["bfd", "status", "--name", &self.name, "--json"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// Our only session, from `veg bfd status --json`.
    fn ours(&self) -> Value {
        self.try_status().expect("veg bfd status")["sessions"][0].clone()
    }

    fn discarded(&self, label: &str) -> u64 {
        self.try_status().unwrap()["discarded"][label]
            .as_u64()
            .unwrap_or(0)
    }

    /// Wait until both sides report the session Up.
    fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !(self.ours()["state"] == "Up" && self.frr().status() == "up") {
            assert!(
                Instant::now() < deadline,
                "no session: veg {} / frr {:?}",
                self.ours(),
                self.frr().session()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal_veg(&mut self, signal: i32) {
        if let Some(mut child) = self.veg_bfd.take() {
            unsafe { libc::kill(child.id() as i32, signal) };
            let _ = child.wait();
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.signal_veg(libc::SIGTERM);
        self.frr.take();
        // A test that SIGKILLed veg bfd leaves its control socket behind.
        let _ = std::fs::remove_file(format!("/run/veg/bfd-{}.sock", self.name));
    }
}

#[test]
fn a_session_comes_up_and_frr_agrees_on_the_timers() {
    if skip_unless_root() {
        return;
    }
    let pair = Pair::start(100, &["--min-tx", "100", "--min-rx", "100"]);
    pair.wait_up();
    // Give the Poll Sequences that follow Up a moment to settle.
    std::thread::sleep(Duration::from_millis(500));
    let frr = pair.frr().session().unwrap();
    assert_eq!(frr["status"], "up");
    assert_eq!(
        frr["remote-transmit-interval"], 100,
        "FRR's view of our transmit interval: {frr}"
    );
    assert_eq!(frr["remote-receive-interval"], 100, "{frr}");
    assert_eq!(frr["remote-detect-multiplier"], 3, "{frr}");
    assert_eq!(frr["remote-id"], pair.ours()["local_discriminator"]);
    let ours = pair.ours();
    assert_eq!(ours["remote_discriminator"], frr["id"]);
    assert_eq!(ours["transmit_interval_ms"], 100);
    assert_eq!(ours["detection_time_ms"], 300);
}

#[test]
fn an_ipv6_session_comes_up_and_detects_silence() {
    if skip_unless_root() {
        return;
    }
    let pair = Pair::start_with(
        "fd00:99::1",
        "fd00:99::2",
        64,
        100,
        &["--min-tx", "100", "--min-rx", "100"],
    );
    pair.wait_up();
    let frr = pair.frr().session().unwrap();
    assert_eq!(frr["peer"], "fd00:99::1");
    assert_eq!(frr["remote-id"], pair.ours()["local_discriminator"]);
    pair.frr().kill();
    let killed = Instant::now();
    while pair.ours()["state"] == "Up" {
        assert!(
            killed.elapsed() < Duration::from_secs(3),
            "veg never noticed FRR's silence over IPv6"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    println!(
        "IPv6: veg detected FRR's silence in {} ms",
        killed.elapsed().as_millis()
    );
    assert!(killed.elapsed() < Duration::from_millis(450));
}

#[test]
fn one_engine_runs_ipv4_and_ipv6_sessions_at_once() {
    if skip_unless_root() {
        return;
    }
    // Start over IPv4, then give both ends IPv6 addresses too and restart veg with both families.
    let mut pair = Pair::start(100, &["--min-tx", "100", "--min-rx", "100"]);
    pair.signal_veg(libc::SIGTERM);
    for (ns, address) in [
        (&pair.ours, "fd00:99::1/64"),
        (&pair.theirs, "fd00:99::2/64"),
    ] {
        ns.ip(&["-6", "addr", "add", address, "dev", "eth0", "nodad"]);
    }
    pair.frr()
        .add_peer("fd00:99::1", "fd00:99::2", "eth0", 100, 100, 3);
    pair.start_veg_with(
        &format!("{OURS},fd00:99::1"),
        &[THEIRS, "fd00:99::2"],
        &["--min-tx", "100", "--min-rx", "100"],
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let sessions = pair.try_status().expect("veg bfd status")["sessions"].clone();
        let up = |peer: &str| {
            sessions
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["remote"] == peer && s["state"] == "Up")
        };
        let frr_up = |peer: &str| pair.frr().status_with(peer) == "up";
        if up(THEIRS) && up("fd00:99::2") && frr_up(OURS) && frr_up("fd00:99::1") {
            // Each session runs from the local address of its family.
            for session in sessions.as_array().unwrap() {
                let local = session["local"].as_str().unwrap();
                let peer = session["remote"].as_str().unwrap();
                assert_eq!(local.contains(':'), peer.contains(':'), "{session}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both sessions should be up: veg {sessions} / frr {:?} {:?}",
            pair.frr().session_with(OURS),
            pair.frr().session_with("fd00:99::1")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // FRR hears the stop on each family's session.
    pair.signal_veg(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(3);
    while [OURS, "fd00:99::1"]
        .iter()
        .any(|peer| pair.frr().status_with(peer) == "up")
    {
        assert!(
            Instant::now() < deadline,
            "FRR still sees a session up after veg stopped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn frr_going_silent_is_detected_within_the_detection_time() {
    if skip_unless_root() {
        return;
    }
    let pair = Pair::start(100, &["--min-tx", "100", "--min-rx", "100"]);
    pair.wait_up();
    std::thread::sleep(Duration::from_millis(500));
    pair.frr().kill();
    let killed = Instant::now();
    while pair.ours()["state"] == "Up" {
        assert!(
            killed.elapsed() < Duration::from_secs(3),
            "veg never noticed FRR's silence"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let measured = killed.elapsed();
    println!(
        "veg detected FRR's silence in {} ms (detection time 300 ms)",
        measured.as_millis()
    );
    assert_eq!(
        pair.ours()["diagnostic"],
        Diagnostic::ControlDetectionTimeExpired.describe()
    );
    // 300 ms after the last packet, which arrived before the kill; the margin covers polling and a loaded machine.
    assert!(measured < Duration::from_millis(450), "took {measured:?}");
}

#[test]
fn veg_going_silent_is_detected_by_frr_and_a_stop_is_announced() {
    if skip_unless_root() {
        return;
    }
    let mut pair = Pair::start(100, &["--min-tx", "100", "--min-rx", "100"]);
    pair.wait_up();
    std::thread::sleep(Duration::from_millis(500));
    pair.signal_veg(libc::SIGKILL);
    let measured = pair
        .frr()
        .wait_for("down", Duration::from_secs(3))
        .expect("FRR never noticed veg's silence");
    println!(
        "FRR detected veg's silence in {} ms (detection time 300 ms)",
        measured.as_millis()
    );
    assert!(measured < Duration::from_millis(450), "took {measured:?}");

    // A clean stop (SIGTERM) says AdminDown, so FRR need not wait for its detection time.
    pair.start_veg(&["--min-tx", "100", "--min-rx", "100"]);
    pair.wait_up();
    pair.signal_veg(libc::SIGTERM);
    let measured = pair
        .frr()
        .wait_for("down", Duration::from_secs(3))
        .expect("FRR never saw the stop");
    println!("FRR saw veg's stop in {} ms", measured.as_millis());
    let session = pair.frr().session().unwrap();
    assert_eq!(session["status"], "down", "{session}");
    assert_eq!(
        session["remote-diagnostic"], "administratively down",
        "{session}"
    );
    assert!(
        measured < Duration::from_millis(250),
        "FRR waited for its detection time instead: {measured:?}"
    );
}

#[test]
fn frr_changing_its_timers_is_negotiated_without_a_flap() {
    if skip_unless_root() {
        return;
    }
    let pair = Pair::start(100, &["--min-tx", "100", "--min-rx", "100"]);
    pair.wait_up();
    std::thread::sleep(Duration::from_millis(500));
    let up_since = pair.ours()["seconds_since_state_change"].as_u64().unwrap();
    pair.frr().set_timers(THEIRS, "eth0", 300, 200);
    std::thread::sleep(Duration::from_secs(2));
    let ours = pair.ours();
    assert_eq!(ours["state"], "Up");
    assert!(
        ours["seconds_since_state_change"].as_u64().unwrap() >= up_since + 2,
        "the session flapped: {ours}"
    );
    // We now send every max(100, their 200) ms and expect them every max(100, their 300) ms.
    assert_eq!(ours["transmit_interval_ms"], 200, "{ours}");
    assert_eq!(ours["detection_time_ms"], 900, "{ours}");
    let frr = pair.frr().session().unwrap();
    assert_eq!(
        (frr["status"].as_str(), frr["transmit-interval"].as_u64()),
        (Some("up"), Some(300)),
        "{frr}"
    );
}

#[test]
fn veg_changing_its_timers_is_negotiated_without_a_flap() {
    if skip_unless_root() {
        return;
    }
    let pair = Pair::start(100, &["--min-tx", "100", "--min-rx", "100"]);
    pair.wait_up();
    std::thread::sleep(Duration::from_millis(500));
    let up_since = pair.frr().session().unwrap()["uptime"]
        .as_u64()
        .unwrap_or(0);
    veg_testbed::command::run(Command::new(VEG).args([
        "bfd",
        "timers",
        "--name",
        &pair.name,
        "--min-tx",
        "250",
        "--min-rx",
        "400",
        "--multiplier",
        "4",
    ]));
    std::thread::sleep(Duration::from_secs(2));
    let frr = pair.frr().session().unwrap();
    assert_eq!(frr["status"], "up", "{frr}");
    assert_eq!(
        (
            frr["remote-transmit-interval"].as_u64(),
            frr["remote-receive-interval"].as_u64()
        ),
        (Some(250), Some(400)),
        "{frr}"
    );
    assert_eq!(frr["remote-detect-multiplier"], 4, "{frr}");
    assert!(
        frr["uptime"].as_u64().unwrap_or(0) >= up_since + 2,
        "FRR saw a flap: {frr}"
    );
    let ours = pair.ours();
    assert_eq!(
        (
            ours["transmit_interval_ms"].as_u64(),
            ours["detection_time_ms"].as_u64()
        ),
        (Some(250), Some(1200)),
        "{ours}"
    );
}

#[test]
fn strangers_and_low_ttl_packets_never_touch_a_session() {
    if skip_unless_root() {
        return;
    }
    let pair = Pair::start(100, &["--min-tx", "100", "--min-rx", "100"]);
    pair.wait_up();
    let ours = pair.ours();
    // A forged AdminDown: accepted, it would bring the session down.
    let forged = ControlPacket {
        diagnostic: Diagnostic::AdministrativelyDown,
        state: State::AdminDown,
        poll: false,
        final_: false,
        control_plane_independent: false,
        demand: false,
        detect_mult: 3,
        my_discriminator: ours["remote_discriminator"].as_u64().unwrap() as u32,
        your_discriminator: ours["local_discriminator"].as_u64().unwrap() as u32,
        desired_min_tx_us: 100_000,
        required_min_rx_us: 100_000,
        required_min_echo_rx_us: 0,
    }
    .encode();
    pair.theirs.run(move || {
        for (from, ttl) in [(STRANGER, 255), (THEIRS, 253)] {
            let socket = UdpSocket::bind((from, 0)).unwrap();
            let ttl: i32 = ttl;
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_TTL,
                    &ttl as *const i32 as *const _,
                    4,
                )
            };
            for _ in 0..5 {
                socket.send_to(&forged, (OURS, 3784)).unwrap();
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(pair.ours()["state"], "Up");
    assert_eq!(pair.frr().status(), "up");
    assert_eq!(pair.discarded("peer_not_allowed"), 5);
    assert_eq!(pair.discarded("low_ttl"), 5);
}

#[test]
fn a_session_at_100ms_stays_up_for_30_seconds() {
    if skip_unless_root() {
        return;
    }
    let pair = Pair::start(100, &["--min-tx", "100", "--min-rx", "100"]);
    pair.wait_up();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(
            pair.ours()["state"],
            "Up",
            "flapped after {:?}",
            started.elapsed()
        );
    }
    let ours = pair.ours();
    assert!(
        ours["seconds_since_state_change"].as_u64().unwrap() >= 30,
        "{ours}"
    );
    let frr = pair.frr().session().unwrap();
    assert!(
        frr["uptime"].as_u64().unwrap_or(0) >= 30,
        "FRR saw a flap: {frr}"
    );
}

/// The HTTP status of GET `path` on the gateway instance's health port, from inside `ns`.
fn http_status(ns: &Netns, path: &'static str) -> u16 {
    ns.run(move || {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect_timeout(
            &"10.16.0.12:8080".parse().unwrap(),
            Duration::from_secs(1),
        ) else {
            return 0;
        };
        let _ = stream.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes());
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0)
    })
}

/// FRR playing the VPC's BFD port on the VPC switch (10.16.0.9, at 100 ms x 3), and the index of its namespace.
fn frr_as_the_vpc_bfd_port(topo: &mut Topology) -> (usize, Bfdd) {
    let port = topo.add_client("10.16.0.9");
    let frr = Bfdd::start(
        topo.client(port),
        "10.16.0.12",
        "10.16.0.9",
        "eth0",
        100,
        100,
        3,
    );
    (port, frr)
}

/// The BFD flags of a gateway whose peer is `frr_as_the_vpc_bfd_port`, then `extra`.
fn with_bfd_to_frr<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--bfd-peer",
        "10.16.0.9",
        "--bfd-min-tx",
        "100",
        "--bfd-min-rx",
        "100",
    ];
    args.extend_from_slice(extra);
    args
}

/// Wait (15 s at most) until the gateway's /readyz answers 200, as seen from `ns`.
fn wait_ready(ns: &Netns, frr: &Bfdd) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while http_status(ns, "/readyz") != 200 {
        assert!(
            Instant::now() < deadline,
            "never ready; FRR says {:?}",
            frr.session()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_gateway_is_ready_only_while_its_bfd_sessions_are_up() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(VEG);
    let (port, frr) = frr_as_the_vpc_bfd_port(&mut topo);
    let gateway = topo.start_gateway(&with_bfd_to_frr(&[]));
    assert_eq!(http_status(topo.client(port), "/livez"), 200);
    wait_ready(topo.client(port), &frr);
    assert_eq!(frr.status(), "up");
    let status = Command::new(VEG)
        .args(["bfd", "status", "--name", &gateway.name])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("local=10.16.0.12 (p) remote=10.16.0.9 state=Up"),
        "{text}"
    );
    // The VPC's BFD port goes silent: the instance stops being ready, but stays alive.
    frr.kill();
    let killed = Instant::now();
    while http_status(topo.client(port), "/readyz") == 200 {
        assert!(
            killed.elapsed() < Duration::from_secs(3),
            "still ready without its BFD peer"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "not ready {} ms after the BFD peer went silent",
        killed.elapsed().as_millis()
    );
    assert_eq!(http_status(topo.client(port), "/livez"), 200);
}

/// A stop is planned, not a crash: on SIGTERM the instance withdraws at once (FRR, playing OVN, hears AdminDown;
/// /readyz fails) and keeps translating, flows it had and new ones, for its drain period, then exits.
#[test]
fn a_stopping_gateway_withdraws_then_drains_then_exits() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(VEG);
    let (port, frr) = frr_as_the_vpc_bfd_port(&mut topo);
    let client = topo.add_client("10.16.0.2");
    let echo = udp_echo(&topo.server, 9000);
    let mut gateway = topo.start_gateway(&with_bfd_to_frr(&["--drain-seconds", "4"]));
    wait_ready(topo.client(port), &frr);
    let round_trip = |local_port| echoed_through(&topo, client, local_port);
    assert!(round_trip(40001), "no round trip before the stop");

    gateway.begin_stop();
    let withdrawn = wait_for_frr(&frr, "down", Duration::from_secs(2));
    let session = frr.session().unwrap();
    assert_eq!(
        session["remote-diagnostic"], "administratively down",
        "{session}"
    );
    println!(
        "FRR heard the withdrawal {} ms after SIGTERM",
        withdrawn.as_millis()
    );
    assert_eq!(http_status(topo.client(port), "/readyz"), 503);
    assert_eq!(http_status(topo.client(port), "/livez"), 200);
    // Draining: the flow it had and a new one are both still translated.
    assert!(
        round_trip(40001),
        "the existing flow stopped during the drain"
    );
    assert!(round_trip(40002), "a new flow was refused during the drain");
    assert!(!gateway.exited(), "exited before its drain period was over");
    let sources: Vec<IpAddr> = echo.peers().iter().map(|p| p.ip()).collect();
    assert_eq!(sources.len(), 3);
    assert!(sources.iter().all(|ip| *ip == external_ip()), "{sources:?}");

    let deadline = Instant::now() + Duration::from_secs(10);
    while !gateway.exited() {
        assert!(
            Instant::now() < deadline,
            "still running long after its drain period"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        gateway.log().contains("drain period over"),
        "{}",
        gateway.log()
    );
    assert_eq!(frr.status(), "down", "the session came back after the stop");
}

/// Whether a datagram from the topology's `client` (from `local_port`, 0: any) reached the UDP echo on the
/// server's port 9000 and came back.
fn echoed_through(topo: &Topology, client: usize, local_port: u16) -> bool {
    udp_round_trip(topo.client(client), local_port, server(9000), b"echo")
        .is_ok_and(|echoed| echoed == b"echo")
}

/// Wait (`within` at most) until FRR reports the session `status`; how long that took.
fn wait_for_frr(frr: &Bfdd, status: &str, within: Duration) -> Duration {
    frr.wait_for(status, within)
        .unwrap_or_else(|| panic!("FRR never saw the session {status}: {:?}", frr.session()))
}

/// An instance whose uplink dies withdraws itself and returns with it: when its next hop stops answering ARP
/// (after 3 probes at 200 ms) and when its external interface loses its carrier (within 100 ms), FRR (playing
/// OVN) hears AdminDown and /readyz fails; once the uplink is back, the session comes Up again and the instance is
/// ready, and it translates as before.
#[test]
fn an_instance_whose_uplink_dies_withdraws_and_returns_with_it() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(VEG);
    let (port, frr) = frr_as_the_vpc_bfd_port(&mut topo);
    let client = topo.add_client("10.16.0.2");
    let _echo = udp_echo(&topo.server, 9000);
    let gateway = topo.start_gateway(&with_bfd_to_frr(&[
        "--uplink-interval-ms",
        "200",
        "--uplink-failures",
        "3",
    ]));
    wait_ready(topo.client(port), &frr);
    let translates = || echoed_through(&topo, client, 0);
    assert!(translates());

    // The next hop stops answering ARP (IPv6's neighbour discovery still answers).
    let nft = |rules: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", &topo.server.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .and_then(|mut nft| {
                use std::io::Write;
                nft.stdin.take().unwrap().write_all(rules.as_bytes())?;
                nft.wait()
            })
            .unwrap();
        assert!(out.success(), "nft {rules}");
    };
    nft(
        "table arp silence {\n chain input {\n type filter hook input priority 0; policy drop;\n }\n}\n",
    );
    let silent = wait_for_frr(&frr, "down", Duration::from_secs(5));
    assert_eq!(
        frr.session().unwrap()["remote-diagnostic"],
        "administratively down"
    );
    println!(
        "withdrawn {} ms after the next hop went silent",
        silent.as_millis()
    );
    assert_eq!(http_status(topo.client(port), "/readyz"), 503);
    assert!(
        gateway
            .log()
            .contains("next hop 172.17.0.1 does not answer"),
        "{}",
        gateway.log()
    );
    assert!(
        !gateway.log().contains("next hop fd00:172:17::1"),
        "the IPv6 next hop answers: {}",
        gateway.log()
    );
    nft("delete table arp silence");
    wait_for_frr(&frr, "up", Duration::from_secs(10));
    wait_ready(topo.client(port), &frr);

    // The external interface loses its carrier (the node's link under the macvlan goes down).
    topo.underlay.ip(&["link", "set", "ul0", "down"]);
    let cut = wait_for_frr(&frr, "down", Duration::from_secs(3));
    println!(
        "withdrawn {} ms after the carrier was lost",
        cut.as_millis()
    );
    assert!(cut < Duration::from_secs(1), "took {cut:?}");
    assert_eq!(http_status(topo.client(port), "/readyz"), 503);
    topo.underlay.ip(&["link", "set", "ul0", "up"]);
    wait_for_frr(&frr, "up", Duration::from_secs(10));
    wait_ready(topo.client(port), &frr);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !translates() {
        assert!(
            Instant::now() < deadline,
            "no translation after the uplink came back"
        );
    }
}
