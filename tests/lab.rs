//! End to end on the lab: real OVN (Northbound, Southbound, northd, ovn-controller, OVS userspace datapath), the
//! controller's reconcile in lab mode, instances running `veg gateway` with the eBPF datapath and BFD. Everything
//! is driven as a user would (`veg lab apply | get | scale | delete`) and judged by what the far side saw: the
//! source address at the external server, the rows ovn-nbctl lists, the BFD state OVN reports.
//!
//! Run serially (`--test-threads=1`): each test builds its own lab with its own prefix and directory.

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    time::{Duration, Instant},
};

use veg_testbed::{
    command,
    new_flows::{Attempt, NewFlows, TcpEcho},
    ovsdb::{GATEWAY_TABLES, select},
    skip_unless_root,
    udp::{Echo, Stream, in_netns, round_trip},
    unique,
};

const VEG: &str = env!("CARGO_BIN_EXE_veg");
const PORT: u16 = 9000;

fn server() -> SocketAddr {
    SocketAddr::from(([172, 17, 0, 1], PORT))
}

/// The external server's IPv6 address (the lab's underlay is dual-stack).
fn server6() -> SocketAddr {
    SocketAddr::new("fd00:172:17::1".parse().unwrap(), PORT)
}

/// A lab of this test's own; `veg lab down` when dropped, also on failure.
struct TestLab {
    dir: String,
    prefix: String,
}

impl TestLab {
    fn up() -> TestLab {
        TestLab::up_with(&[])
    }

    /// A lab brought up with more `veg lab up` flags.
    fn up_with(flags: &[&str]) -> TestLab {
        let prefix = unique("vlt");
        let lab = TestLab {
            dir: format!("/run/{prefix}"),
            prefix,
        };
        lab.veg(&[&["up"][..], flags].concat());
        lab
    }

    fn veg(&self, args: &[&str]) -> String {
        command::run(
            Command::new(VEG)
                .args(["lab", "--dir", &self.dir, "--prefix", &self.prefix])
                .args(args),
        )
    }

    fn apply(&self, yaml: &str) {
        let file = format!("{}/manifest-{}.yaml", self.dir, unique("m"));
        std::fs::write(&file, yaml).unwrap();
        self.veg(&["apply", "-f", &file]);
    }

    /// Apply the manifest as `kubectl apply -f DIR` would take it from a directory: as a JSON `kind: List`
    /// beside an empty YAML file.
    fn apply_directory_with_a_list(&self, yaml: &str) {
        let directory = format!("{}/manifests-{}", self.dir, unique("d"));
        std::fs::create_dir(&directory).unwrap();
        let items: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(yaml)
            .map(|document| serde::Deserialize::deserialize(document).unwrap())
            .collect();
        let list = serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": items });
        std::fs::write(format!("{directory}/a-list.json"), list.to_string()).unwrap();
        std::fs::write(format!("{directory}/b-empty.yaml"), "---\n").unwrap();
        let said = self.veg(&["apply", "-f", &directory]);
        assert!(said.contains("VpcEgressGateway default/"), "{said}");
    }

    fn delete(&self, yaml: &str) {
        let file = format!("{}/manifest-{}.yaml", self.dir, unique("m"));
        std::fs::write(&file, yaml).unwrap();
        self.veg(&["delete", "-f", &file]);
    }

    fn netns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn nbctl(&self, args: &[&str]) -> String {
        command::run(
            Command::new("ovn-nbctl")
                .arg(format!("--db=unix:{}/nb.sock", self.dir))
                .args(args),
        )
    }

    /// Every row tagged with the gateway, in the tables the model writes.
    fn gateway_rows(&self, gateway: &str) -> Vec<String> {
        GATEWAY_TABLES
            .iter()
            .flat_map(|table| {
                let found = self.nbctl(&[
                    "--bare",
                    "--columns=_uuid",
                    "find",
                    table,
                    &format!("external_ids:vpc-egress-gateway=default/{gateway}"),
                ]);
                found
                    .split_whitespace()
                    .map(|uuid| format!("{table} {uuid}"))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Each row of the gateway with its version: any write to a row changes its _version (read with ovsdb-client,
    /// since ovn-nbctl does not show _version).
    fn row_versions(&self, gateway: &str) -> Vec<String> {
        let tag = serde_json::json!(["vpc-egress-gateway", format!("default/{gateway}")]);
        let mut versions = Vec::new();
        for table in GATEWAY_TABLES {
            let db = format!("unix:{}/nb.sock", self.dir);
            for row in select(&db, table, &["_uuid", "_version", "external_ids"]) {
                let tagged = row["external_ids"][1]
                    .as_array()
                    .is_some_and(|pairs| pairs.contains(&tag));
                if tagged {
                    versions.push(format!(
                        "{table} {} {}",
                        row["_uuid"][1], row["_version"][1]
                    ));
                }
            }
        }
        versions.sort();
        versions
    }

    /// The status OVN reports for each BFD session of vpc1's BFD port.
    fn vpc1_bfd_status(&self) -> Vec<String> {
        let found = self.nbctl(&[
            "--bare",
            "--columns=status",
            "find",
            "BFD",
            "logical_port=bfd@vpc1",
        ]);
        found.split_whitespace().map(str::to_owned).collect()
    }

    /// The `veg lab get veg -o wide` line of the gateway, split into its columns.
    fn row(&self, gateway: &str) -> Vec<String> {
        let table = self.veg(&["get", "veg", gateway, "-o", "wide"]);
        let line = table.lines().nth(1).unwrap_or_default().to_owned();
        line.split("   ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Wait until `veg lab get veg` shows the gateway Completed and ready.
    fn wait_ready(&self, gateway: &str, within: Duration) -> Vec<String> {
        self.wait_ready_with(gateway, within, |_| true)
    }

    /// Wait until the gateway is Completed and ready and its row also satisfies `also`.
    fn wait_ready_with(
        &self,
        gateway: &str,
        within: Duration,
        also: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        wait_for(within, || {
            let row = self.row(gateway);
            let ready = row.get(5).map(String::as_str) == Some("Completed")
                && row.get(6).map(String::as_str) == Some("true");
            if ready && also(&row) {
                Ok(row)
            } else {
                Err(format!("{gateway} not ready: {row:?}\n{}", self.log()))
            }
        })
    }

    /// Wait until `veg lab get veg` shows the gateway not ready.
    fn wait_not_ready(&self, gateway: &str, within: Duration) {
        wait_for(within, || {
            match self.row(gateway).get(6).map(String::as_str) {
                Some("true") => Err(format!("{gateway} still ready")),
                _ => Ok(()),
            }
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(format!("{}/controller-lab.log", self.dir)).unwrap_or_default()
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let _ = Command::new(VEG)
            .args(["lab", "--dir", &self.dir, "--prefix", &self.prefix, "down"])
            .output();
    }
}

/// A forward-policy client is routed unchanged: the server, routing `address` back through `via` (an instance's
/// external address), sees the client's own address.
fn forward_client_is_seen_as_itself(
    lab: &TestLab,
    echo: &Echo,
    client: &str,
    address: &str,
    via: &str,
) {
    let ipv6 = address.contains(':');
    let route = format!("{address}/{}", if ipv6 { 128 } else { 32 });
    let via = via.to_owned();
    in_netns(&lab.netns("external"), move || {
        veg_testbed::netns::ip(&["route", "add", &route, "via", &via]);
    });
    eventually_round_trip_to(lab, client, if ipv6 { server6() } else { server() });
    assert!(
        echo.sources().contains(&address.parse().unwrap()),
        "{:?}",
        echo.sources()
    );
}

/// A client outside the gateway's sources is not routed to it: no answer, and the server heard nothing.
fn outside_client_is_not_routed(lab: &TestLab, echo: &Echo, client: &str, address: &str) {
    let before = echo.heard();
    assert!(
        !round_trip(&lab.netns(client), server()),
        "{address} is in no policy, yet got an answer"
    );
    assert_eq!(echo.heard(), before, "the server heard from {address}");
}

fn eventually_round_trip(lab: &TestLab, client: &str) {
    eventually_round_trip_to(lab, client, server());
}

fn eventually_round_trip_to(lab: &TestLab, client: &str, server: SocketAddr) {
    wait_for(Duration::from_secs(15), || {
        round_trip(&lab.netns(client), server)
            .then_some(())
            .ok_or_else(|| format!("{client} never got through\n{}", lab.log()))
    });
}

const GATEWAY1: &str = "apiVersion: kubeovn.io/v1
kind: VpcEgressGateway
metadata: {name: gateway1, namespace: default}
spec:
  vpc: ovn-cluster
  replicas: 1
  externalSubnet: macvlan1
  policies:
    - {snat: true, ipBlocks: [10.16.0.2]}
    - {snat: false, ipBlocks: [10.16.0.3]}
";

// Long: one scenario on the lab, step by step, asserting what each step changed.
#[test]
fn default_vpc_gateway_translates_its_sources_scales_and_goes_away() {
    if skip_unless_root() {
        return;
    }
    let lab = TestLab::up();
    let echo = Echo::start(&lab.netns("external"), PORT);
    lab.apply(GATEWAY1);
    let row = lab.wait_ready("gateway1", Duration::from_secs(30));
    // NAME VPC REPLICAS BFD EXTERNAL-SUBNET PHASE READY INTERNAL-IPS EXTERNAL-IPS NODES AGE
    assert_eq!(
        &row[..7],
        [
            "gateway1",
            "ovn-cluster",
            "1",
            "false",
            "macvlan1",
            "Completed",
            "true"
        ]
    );
    assert_eq!(row[7], r#"["10.16.0.10"]"#);
    // The external network is dual-stack: both addresses, as Kube-OVN writes them.
    assert_eq!(row[8], r#"["172.17.0.10,fd00:172:17::a"]"#);
    assert_eq!(row[9], r#"["kube-ovn-worker"]"#);
    assert_eq!(
        lab.nbctl(&["lr-policy-list", "ovn-cluster"])
            .lines()
            .filter(|l| l.contains("29100"))
            .count(),
        1,
        "one reroute policy"
    );

    // The SNAT client leaves as the instance's external address.
    eventually_round_trip(&lab, "client1");
    assert_eq!(echo.sources(), ["172.17.0.10".parse::<IpAddr>().unwrap()]);
    // The forward client is routed unchanged; a client outside the gateway's sources is not routed to it.
    forward_client_is_seen_as_itself(&lab, &echo, "client2", "10.16.0.3", "172.17.0.10");
    outside_client_is_not_routed(&lab, &echo, "client3", "10.16.0.4");

    // Scale to two: both instances are nexthops; then back to one: the survivor keeps carrying traffic.
    lab.veg(&["scale", "veg", "gateway1", "--replicas", "2"]);
    let two = r#"["10.16.0.10","10.16.0.11"]"#;
    lab.wait_ready_with("gateway1", Duration::from_secs(30), |row| row[7] == two);
    let policy = lab.nbctl(&["lr-policy-list", "ovn-cluster"]);
    assert!(policy.contains("10.16.0.10, 10.16.0.11"), "{policy}");
    // Flows through the instance that stays must not notice the other one going: six flows, and those the
    // server saw from the survivor (172.17.0.10) keep arriving with the same translated address and port.
    // OVN's flows for two nexthops go in place first: a flow may move while the ECMP group changes.
    lab.nbctl(&["--wait=hv", "sync"]);
    let streams: Vec<Stream> = (0..6)
        .map(|_| Stream::start(&lab.netns("client1"), server()))
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    let mark = echo.heard();
    std::thread::sleep(Duration::from_millis(300));
    let on_survivor: std::collections::BTreeSet<SocketAddr> = echo
        .peers_since(mark)
        .into_iter()
        .filter(|p| p.ip().to_string() == "172.17.0.10")
        .collect();
    lab.veg(&["scale", "veg", "gateway1", "--replicas", "1"]);
    lab.wait_ready_with("gateway1", Duration::from_secs(30), |row| {
        row[7] == r#"["10.16.0.10"]"#
    });
    lab.nbctl(&["--wait=hv", "sync"]);
    let heard = echo.heard();
    std::thread::sleep(Duration::from_millis(500));
    let after: std::collections::BTreeSet<SocketAddr> =
        echo.peers_since(heard).into_iter().collect();
    let broken: Vec<&SocketAddr> = on_survivor.iter().filter(|p| !after.contains(p)).collect();
    assert!(
        broken.is_empty(),
        "flows of the surviving instance broke: {broken:?}"
    );
    drop(streams);
    eventually_round_trip(&lab, "client1");

    // Delete: every row of the gateway goes, its instances go, and traffic is no longer translated.
    assert!(!lab.gateway_rows("gateway1").is_empty());
    lab.delete(GATEWAY1);
    wait_for(Duration::from_secs(15), || {
        match lab.gateway_rows("gateway1") {
            rows if rows.is_empty() => Ok(()),
            rows => Err(format!("rows left: {rows:?}")),
        }
    });
    let namespaces = String::from_utf8(
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        !namespaces.contains(&lab.netns("default-gateway1")),
        "an instance outlived its gateway"
    );
    assert!(
        !round_trip(&lab.netns("client1"), server()),
        "traffic still translated after the gateway was deleted"
    );
}

#[test]
fn the_controller_and_the_northbound_database_restart_without_harm() {
    if skip_unless_root() {
        return;
    }
    let lab = TestLab::up();
    let _echo = Echo::start(&lab.netns("external"), PORT);
    lab.apply_directory_with_a_list(GATEWAY1);
    lab.wait_ready("gateway1", Duration::from_secs(30));
    eventually_round_trip(&lab, "client1");

    // A restarted controller finds everything as it should be and writes nothing: no row changes version.
    let before = lab.row_versions("gateway1");
    assert!(!before.is_empty());
    lab.veg(&["restart", "controller"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        lab.row_versions("gateway1"),
        before,
        "the restarted controller rewrote rows"
    );

    // The Northbound database goes away and comes back: the controller reconnects, and a change made after
    // that (scaling to two) reaches OVN.
    lab.veg(&["restart", "nb"]);
    lab.veg(&["scale", "veg", "gateway1", "--replicas", "2"]);
    wait_for(Duration::from_secs(30), || {
        lab.nbctl(&["lr-policy-list", "ovn-cluster"])
            .contains("10.16.0.10, 10.16.0.11")
            .then_some(())
            .ok_or_else(|| {
                format!(
                    "OVN never converged after the database restart\n{}",
                    lab.log()
                )
            })
    });
    lab.wait_ready("gateway1", Duration::from_secs(30));
    eventually_round_trip(&lab, "client1");

    // A hung agent (stopped with SIGSTOP) fails its liveness probe, and the kubelet restarts its container; the
    // pinned programs kept translating meanwhile, and traffic flows on.
    let hung = &instance_records(&lab)[0];
    let pid = hung["pid"].as_i64().unwrap() as i32;
    // SAFETY: stopping the lab's own agent.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    wait_for(Duration::from_secs(30), || {
        // The pinned programs translate while the agent hangs.
        eventually_round_trip(&lab, "client1");
        match instance_records(&lab) {
            records if records[0]["restarts"] == 1 => Ok(()),
            records => Err(format!("the hung agent was not restarted: {records:?}")),
        }
    });
    lab.wait_ready("gateway1", Duration::from_secs(30));
    assert_ne!(instance_records(&lab)[0]["pid"], hung["pid"]);
    eventually_round_trip(&lab, "client1");
}

const GATEWAY2: &str = "apiVersion: kubeovn.io/v1
kind: Vpc
metadata: {name: vpc1}
spec:
  bfdPort: {enabled: true, ip: 10.255.255.255}
status: {defaultLogicalSwitch: subnet1}
---
apiVersion: kubeovn.io/v1
kind: VpcEgressGateway
metadata: {name: gateway2, namespace: default}
spec:
  vpc: vpc1
  replicas: 2
  internalSubnet: subnet1
  externalSubnet: macvlan1
  bfd: {enabled: true, minRX: 100, minTX: 100, multiplier: 3}
  policies:
    - {snat: true, ipBlocks: [192.168.0.2]}
    - {snat: false, ipBlocks: [192.168.0.4]}
";

// Long: one scenario on the lab, step by step, asserting what each step changed.
#[test]
fn bfd_gateway_on_vpc1_fails_over_in_under_a_second_and_the_instance_returns() {
    if skip_unless_root() {
        return;
    }
    let lab = TestLab::up();
    let echo = Echo::start(&lab.netns("external"), PORT);
    lab.apply(GATEWAY2);
    let row = lab.wait_ready("gateway2", Duration::from_secs(40));
    assert_eq!(&row[..4], ["gateway2", "vpc1", "2", "true"]);
    // ECMP src-ip routes with symmetric replies and BFD, one per source and instance; both sessions up in OVN.
    let routes = lab.nbctl(&["lr-route-list", "vpc1"]);
    assert_eq!(
        routes
            .matches("src-ip ecmp ecmp-symmetric-reply bfd")
            .count(),
        4,
        "{routes}"
    );
    assert_eq!(lab.vpc1_bfd_status(), ["up", "up"]);

    // With real OVN 23.03 at 100 ms x 3, sessions stay Up: none changed state for 10 s.
    std::thread::sleep(Duration::from_secs(10));
    for instance in ["default_gateway2-0", "default_gateway2-1"] {
        let out = Command::new(VEG)
            .args(["bfd", "status", "--name", instance, "--json"])
            .output()
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let session = &status["sessions"][0];
        assert_eq!(session["state"], "Up", "{instance}: {session}");
        assert_eq!(
            session["transmit_interval_ms"], 100,
            "{instance}: {session}"
        );
        assert!(
            session["seconds_since_state_change"].as_u64().unwrap() >= 10,
            "{instance} flapped: {session}"
        );
    }
    // subnet1 and the external network are dual-stack: both addresses, as Kube-OVN writes them.
    assert_eq!(
        row[7],
        r#"["192.168.0.10,fd00:192:168::a","192.168.0.11,fd00:192:168::b"]"#
    );
    assert_eq!(
        row[8],
        r#"["172.17.0.10,fd00:172:17::a","172.17.0.11,fd00:172:17::b"]"#
    );
    assert_eq!(row[9], r#"["kube-ovn-worker","kube-ovn-worker"]"#);

    // The SNAT client leaves as one of the external addresses; the forward client as itself; a client in no
    // policy is not routed to the gateway at all.
    eventually_round_trip(&lab, "vpc1-client1");
    let first = echo.sources()[0];
    assert!(
        ["172.17.0.10", "172.17.0.11"].contains(&first.to_string().as_str()),
        "{first}"
    );
    forward_client_is_seen_as_itself(&lab, &echo, "vpc1-client3", "192.168.0.4", "172.17.0.10");
    outside_client_is_not_routed(&lab, &echo, "vpc1-client2", "192.168.0.3");

    // Kill the instance carrying the stream: the stream resumes through the other one.
    kill_the_carrier(
        &lab,
        &echo,
        ("vpc1-client1", "192.168.0.2"),
        server(),
        "external_ip",
    );

    // The lab's kubelet restarts the agent; its session comes back up and the gateway is ready again.
    wait_for_vpc1_sessions_up(&lab, 2);
    lab.wait_ready("gateway2", Duration::from_secs(20));

    // Cut the uplink of the instance carrying the stream (its external interface down; BFD toward the VPC is
    // fine): it withdraws itself, and the stream moves to the other instance within a second. Once its sessions
    // have settled: in its first seconds Up, OVN 23.03 takes over a second to act on an AdminDown.
    std::thread::sleep(Duration::from_secs(10));
    let cut = fail_the_carrier(
        &lab,
        &echo,
        ("vpc1-client1", "192.168.0.2"),
        server(),
        "external_ip",
        |victim| {
            let netns = victim["netns"].as_str().unwrap();
            in_instance(netns, &["link", "set", "net1", "down"]);
        },
    );
    let netns = cut["netns"].as_str().unwrap();
    lab.wait_not_ready("gateway2", Duration::from_secs(10));
    // Repaired (the interface up, and the default route it took with it back): the instance returns.
    in_instance(netns, &["link", "set", "net1", "up"]);
    in_instance(
        netns,
        &[
            "route",
            "replace",
            "default",
            "via",
            "172.17.0.1",
            "dev",
            "net1",
        ],
    );
    wait_for_vpc1_sessions_up(&lab, 2);
    lab.wait_ready("gateway2", Duration::from_secs(20));
}

/// `ip ARGS` in an instance's namespace.
fn in_instance(netns: &str, args: &[&str]) {
    command::run(
        Command::new("ip")
            .args(["netns", "exec", netns, "ip"])
            .args(args),
    );
}

const DUAL_STACK_GATEWAY: &str = "apiVersion: kubeovn.io/v1
kind: Vpc
metadata: {name: vpc1}
spec:
  bfdPort: {enabled: true, ip: '10.255.255.255,fd00:255::ff'}
status: {defaultLogicalSwitch: subnet1}
---
apiVersion: kubeovn.io/v1
kind: VpcEgressGateway
metadata: {name: dual, namespace: default}
spec:
  vpc: vpc1
  replicas: 2
  internalSubnet: subnet1
  externalSubnet: macvlan1
  bfd: {enabled: true, minRX: 100, minTX: 100, multiplier: 3}
  policies:
    - {snat: true, ipBlocks: [192.168.0.2, 'fd00:192:168::2']}
    - {snat: false, ipBlocks: ['fd00:192:168::4']}
";

/// Kill the instance of vpc1's gateway that carries a steady stream from `client` (whose own address is given) to
/// `server`, telling instances apart by the `field` of their records that holds the stream's family's external
/// address: within a second the stream flows again through the other instance, and nothing left with the client's
/// own address meanwhile.
fn kill_the_carrier(
    lab: &TestLab,
    echo: &Echo,
    client: (&str, &str),
    server: SocketAddr,
    field: &str,
) {
    fail_the_carrier(lab, echo, client, server, field, |victim| {
        lab.veg(&["kill", victim["pod"].as_str().unwrap()]);
    });
}

/// As `kill_the_carrier`, with `fail` doing to the carrier's record what fails it; returns that record.
fn fail_the_carrier(
    lab: &TestLab,
    echo: &Echo,
    (client, own): (&str, &str),
    server: SocketAddr,
    field: &str,
    fail: impl FnOnce(&serde_json::Value),
) -> serde_json::Value {
    let stream = Stream::start(&lab.netns(client), server);
    std::thread::sleep(Duration::from_millis(500));
    let carrier = *echo.sources().last().unwrap();
    let records = instance_records(lab);
    let victim = records
        .iter()
        .find(|r| r[field] == carrier.to_string())
        .expect("the carrier's record");
    let survivor: IpAddr = records
        .iter()
        .find(|r| r[field] != carrier.to_string())
        .and_then(|r| r[field].as_str()?.parse().ok())
        .expect("the other instance's record");
    let heard = echo.heard();
    let killed = Instant::now();
    fail(victim);
    std::thread::sleep(Duration::from_millis(1500));
    let gap = stream.longest_gap_after(killed);
    drop(stream);
    println!(
        "failover ({}): traffic flowed again through the survivor after {} ms",
        if server.is_ipv6() { "IPv6" } else { "IPv4" },
        gap.as_millis()
    );
    let victim_log = || {
        let pod = victim["pod"].as_str().unwrap_or_default();
        std::fs::read_to_string(format!("{}/instance-default.{pod}.log", lab.dir))
            .unwrap_or_default()
    };
    assert!(
        gap < Duration::from_secs(1),
        "the stream stopped for {gap:?}; the instance's log:\n{}",
        victim_log()
    );
    let since_kill = echo.sources_since(heard);
    assert!(
        since_kill.contains(&survivor),
        "the stream did not move to the other instance: {since_kill:?}"
    );
    assert!(
        !since_kill.contains(&own.parse().unwrap()),
        "a packet left with the client's own address: {since_kill:?}"
    );
    victim.clone()
}

/// Wait (40 s at most) until OVN reports all `sessions` of vpc1's BFD port up.
fn wait_for_vpc1_sessions_up(lab: &TestLab, sessions: usize) {
    wait_for(Duration::from_secs(40), || match lab.vpc1_bfd_status() {
        bfd if bfd.len() == sessions && bfd.iter().all(|s| s == "up") => Ok(()),
        bfd => Err(format!(
            "the restarted instance's sessions never came back: {bfd:?}\n{}",
            lab.log()
        )),
    });
}

/// Ask `check` every 200 ms until it answers Ok; fail with its last Err (what it is waiting for, and what it
/// sees) once `within` has passed.
fn wait_for<T>(within: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(done) => return done,
            Err(why) => assert!(Instant::now() < deadline, "after {within:?}: {why}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The instances' records (<lab>/instances/*.json).
fn instance_records(lab: &TestLab) -> Vec<serde_json::Value> {
    std::fs::read_dir(format!("{}/instances", lab.dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        // Not a record being written (written whole to a temporary, then renamed).
        .filter(|path| path.extension().is_some_and(|x| x == "json"))
        .map(|path| serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap())
        .collect()
}

// Long: one scenario on the lab, step by step, asserting what each step changed.
#[test]
fn dual_stack_gateway_on_vpc1_translates_both_families_and_fails_over_in_ipv6() {
    if skip_unless_root() {
        return;
    }
    let lab = TestLab::up();
    let echo = Echo::start(&lab.netns("external"), PORT);
    let echo6 = Echo::start_at(&lab.netns("external"), server6());
    lab.apply(DUAL_STACK_GATEWAY);
    lab.wait_ready("dual", Duration::from_secs(40));
    // A route per source and instance in each family (the IPv4 source, the IPv6 SNAT and forward sources), each
    // with its own family's BFD session; all four sessions up in OVN.
    let routes = lab.nbctl(&["lr-route-list", "vpc1"]);
    assert_eq!(
        routes
            .matches("src-ip ecmp ecmp-symmetric-reply bfd")
            .count(),
        6,
        "{routes}"
    );
    let from_client6 = routes
        .lines()
        .filter(|l| l.split_whitespace().next() == Some("fd00:192:168::2"))
        .count();
    assert_eq!(from_client6, 2, "{routes}");
    assert_eq!(lab.vpc1_bfd_status(), ["up", "up", "up", "up"]);
    let records = instance_records(&lab);
    let external = |family: &str| -> Vec<IpAddr> {
        records
            .iter()
            .filter_map(|r| r[family].as_str()?.parse().ok())
            .collect()
    };
    let (external4, external6) = (external("external_ip"), external("external_ipv6"));
    assert_eq!(external6.len(), 2, "{records:?}");

    // The SNAT client leaves in each family as one of that family's external addresses.
    eventually_round_trip_to(&lab, "vpc1-client1", server());
    eventually_round_trip_to(&lab, "vpc1-client1", server6());
    assert!(
        external4.contains(&echo.sources()[0]),
        "{:?}",
        echo.sources()
    );
    assert!(
        external6.contains(&echo6.sources()[0]),
        "{:?}",
        echo6.sources()
    );
    // The IPv6 forward client as itself.
    let via = external6[0].to_string();
    forward_client_is_seen_as_itself(&lab, &echo6, "vpc1-client3", "fd00:192:168::4", &via);

    // Kill the instance carrying an IPv6 stream: it resumes through the other one within BFD's detection time.
    kill_the_carrier(
        &lab,
        &echo6,
        ("vpc1-client1", "fd00:192:168::2"),
        server6(),
        "external_ipv6",
    );
    // Restarted, the instance brings both of its sessions back up.
    wait_for_vpc1_sessions_up(&lab, 4);
}

/// Wait (`within` at most) until the gateway's instances are `count`, none stopping, each satisfying `also`.
fn wait_for_instances(
    lab: &TestLab,
    count: usize,
    within: Duration,
    also: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    wait_for(within, || {
        let records = instance_records(lab);
        let settled = records.len() == count
            && records
                .iter()
                .all(|r| r["terminating"].as_u64().unwrap_or(0) == 0 && also(r));
        if settled {
            Ok(records)
        } else {
            Err(format!(
                "the instances did not settle: {records:?}\n{}",
                lab.log()
            ))
        }
    })
}

// Long: one scenario on the lab, step by step.
/// Planned changes lose nothing: with a steady stream of new UDP flows and TCP connections, a rolling update
/// (the instances' resources change, so their template does) replaces the instances one at a time, each
/// withdrawing (BFD AdminDown), draining and stopping, the next replaced only once OVN routes to the new one (its
/// readiness gate); then a scale-down drains the instance it removes. No flow or connection that started after
/// the update began is lost.
#[test]
fn a_rolling_update_and_a_scale_down_lose_no_new_flow() {
    if skip_unless_root() {
        return;
    }
    let lab = TestLab::up();
    let _udp = Echo::start(&lab.netns("external"), PORT);
    let _tcp = TcpEcho::start(
        &lab.netns("external"),
        SocketAddr::from(([0, 0, 0, 0], PORT)),
    );
    let gateway = GATEWAY2.replace("  replicas: 2\n", "  replicas: 2\n  drainSeconds: 3\n");
    lab.apply(&gateway);
    lab.wait_ready("gateway2", Duration::from_secs(40));
    wait_for_vpc1_sessions_up(&lab, 2);
    let old_template = instance_records(&lab)[0]["template"].clone();
    let flows = NewFlows::start(
        &lab.netns("vpc1-client1"),
        server(),
        Duration::from_millis(5),
    );
    std::thread::sleep(Duration::from_secs(1));

    let update = Instant::now();
    lab.apply(&gateway.replace(
        "  drainSeconds: 3\n",
        "  drainSeconds: 3\n  resources: {requests: {cpu: 100m, memory: 128Mi}}\n",
    ));
    wait_for_instances(&lab, 2, Duration::from_secs(120), |r| {
        r["template"] != old_template && r["routed"] == true
    });
    lab.wait_ready("gateway2", Duration::from_secs(30));
    let rolled = update.elapsed();
    std::thread::sleep(Duration::from_secs(1));

    let scale = Instant::now();
    lab.veg(&["scale", "veg", "gateway2", "--replicas", "1"]);
    wait_for_instances(&lab, 1, Duration::from_secs(30), |_| true);
    let scaled = scale.elapsed();
    std::thread::sleep(Duration::from_secs(1));

    let attempts = flows.stop();
    let after: Vec<_> = attempts.iter().filter(|a| a.started >= update).collect();
    // Each change of the ECMP group moves a share of the flows (OVN's ECMP keeps no affinity for connections
    // from the VPC): a TCP connection in its first round trip at that instant can be reset by the far end. The
    // group changes five times here (two instances withdrawn and two joining in the update, one withdrawn in the
    // scale-down), about one reset a run at 200 connections a second. Anything else lost is a packet dropped
    // by a stopping instance, which the drain exists to prevent.
    let (reset, lost): (Vec<&&Attempt>, Vec<&&Attempt>) =
        after.iter().filter(|a| a.lost_a_packet()).partition(|a| {
            a.protocol == "tcp"
                && a.error
                    .as_deref()
                    .is_some_and(|e| e.contains("reset by peer"))
        });
    let describe = |attempts: &[&&Attempt]| {
        attempts
            .iter()
            .map(|a| {
                format!(
                    "{} at +{} ms, took {} ms: {}",
                    a.protocol,
                    a.started.duration_since(update).as_millis(),
                    a.took.as_millis(),
                    a.error.as_deref().unwrap_or("retransmitted")
                )
            })
            .collect::<Vec<_>>()
    };
    println!(
        "rolling update in {} ms, scale-down in {} ms: {} new UDP flows and {} new TCP connections, {} lost, {} \
         reset as the ECMP group changed: {:?}",
        rolled.as_millis(),
        scaled.as_millis(),
        after.iter().filter(|a| a.protocol == "udp").count(),
        after.iter().filter(|a| a.protocol == "tcp").count(),
        lost.len(),
        reset.len(),
        describe(&reset)
    );
    assert!(
        after.len() > 2000,
        "too few flows to judge: {}",
        after.len()
    );
    assert!(lost.is_empty(), "lost: {:?}", describe(&lost));
    assert!(
        reset.len() <= 5,
        "more resets than changes of the ECMP group: {:?}",
        describe(&reset)
    );
}

/// The image `cargo xtask test` builds (from the debug build, see xtask/src/image.rs) before these tests run.
const TEST_IMAGE: &str = "localhost/veg:test";

fn podman(args: &[&str]) -> String {
    command::run(Command::new("podman").args(args))
}

/// The image as built runs the instances: `veg gateway` and its init container in containers with the capabilities,
/// no-new-privileges and bpffs mount of the Deployment and nothing more (not privileged); traffic is translated
/// to the instance's address, and bpftool and veg inside the instance read its pinned maps.
#[test]
fn the_image_runs_the_instances_with_only_the_deployments_capabilities() {
    if skip_unless_root() {
        return;
    }
    let lab = TestLab::up_with(&["--image", TEST_IMAGE]);
    let echo = Echo::start(&lab.netns("external"), PORT);
    lab.apply(GATEWAY1);
    lab.wait_ready("gateway1", Duration::from_secs(60));
    eventually_round_trip(&lab, "client1");
    let record = &instance_records(&lab)[0];
    let external: IpAddr = record["external_ip"].as_str().unwrap().parse().unwrap();
    assert!(
        echo.sources().contains(&external),
        "the server saw {:?}, not the instance's {external}",
        echo.sources()
    );

    let container = record["container"]
        .as_str()
        .expect("the instance runs in a container");
    let inspected = podman(&[
        "inspect",
        "--format",
        "{{.HostConfig.Privileged}} {{.HostConfig.SecurityOpt}} {{.EffectiveCaps}}",
        container,
    ]);
    let (privileged_and_options, caps) = inspected.trim().split_once("] [").unwrap();
    assert_eq!(
        privileged_and_options, "false [no-new-privileges seccomp=unconfined",
        "{inspected}"
    );
    // The Deployment's capabilities, less any this machine's own bounding set lacks (SYS_RESOURCE in some).
    let caps: Vec<&str> = caps.trim_end_matches(']').split_whitespace().collect();
    let granted = [
        "CAP_BPF",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_PERFMON",
        "CAP_SYS_RESOURCE",
    ];
    assert!(caps.iter().all(|c| granted.contains(c)), "{inspected}");
    assert!(caps.len() >= 4, "{inspected}");
    let pins = format!(
        "/sys/fs/bpf/veg/{}",
        record["pod"]
            .as_str()
            .map(|p| format!("default_{p}"))
            .unwrap()
    );
    let maps = podman(&[
        "exec",
        container,
        "bpftool",
        "map",
        "show",
        "pinned",
        &format!("{pins}/FLOWS"),
    ]);
    assert!(maps.contains("name FLOWS"), "{maps}");
    let flows = podman(&[
        "exec",
        container,
        "veg",
        "flows",
        "--name",
        &format!("default_{}", record["pod"].as_str().unwrap()),
    ]);
    assert!(flows.contains(&external.to_string()), "{flows}");

    // Deleting the gateway removes its container too.
    lab.delete(GATEWAY1);
    let filter = format!("name={container}");
    wait_for(Duration::from_secs(30), || {
        podman(&["ps", "--all", "--quiet", "--filter", &filter])
            .trim()
            .is_empty()
            .then_some(())
            .ok_or_else(|| "the container outlived its gateway".to_owned())
    });
}
