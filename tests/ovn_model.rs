//! The OVN model of a gateway applied to a real OVN Northbound database, read back with ovn-nbctl and compared
//! with what Kube-OVN's VPC Egress Gateway guide shows (docs/contract.md; gateway1 on the default VPC, gateway2 on
//! vpc1 with BFD).

use std::{collections::BTreeSet, time::Duration};

use veg_ovsdb::{monitor::Monitor, replica::column};
use veg_testbed::ovsdb::NbServer;
use veg_userspace::ovn::{
    apply::{DB, apply, delete, monitored_tables},
    model::{Bfd, GatewaySpec, Instance},
};

fn instances(addresses: &[&str]) -> Vec<Instance> {
    addresses
        .iter()
        .map(|a| Instance {
            addresses: vec![a.parse().unwrap()],
            node: "kube-ovn-worker".into(),
        })
        .collect()
}

fn gateway1(addresses: &[&str]) -> GatewaySpec {
    GatewaySpec {
        namespace: "default".into(),
        name: "gateway1".into(),
        router: "ovn-cluster".into(),
        default_vpc: true,
        sources: vec!["10.16.0.0/16".parse().unwrap()],
        selected_ports: vec![],
        instances: instances(addresses),
        bfd: None,
        down: BTreeSet::new(),
        bfd_sessions: false,
        local_port_groups: Default::default(),
    }
}

fn gateway2(addresses: &[&str]) -> GatewaySpec {
    GatewaySpec {
        name: "gateway2".into(),
        router: "vpc1".into(),
        default_vpc: false,
        sources: vec!["192.168.0.0/24".parse().unwrap()],
        bfd: Some(Bfd {
            port: "bfd@vpc1".into(),
            min_rx: 1000,
            min_tx: 1000,
            multiplier: 3,
        }),
        ..gateway1(addresses)
    }
}

/// Lines of ovn-nbctl output with runs of spaces folded, for comparing with the document.
fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

async fn monitored(server: &NbServer, router: &str) -> Monitor {
    server.nbctl(&["lr-add", router]);
    let monitor = Monitor::start(server.unix.parse().unwrap(), DB, &monitored_tables());
    let present = monitor
        .wait_until(Duration::from_secs(5), |r| {
            r.rows("Logical_Router")
                .any(|(_, row)| column(row, "name") == router)
        })
        .await;
    assert!(present, "the monitor never saw router {router}");
    monitor
}

// Long: one gateway's life against ovsdb-server, step by step.
#[tokio::test]
async fn gateway1_on_the_default_vpc_scales_and_goes_away_cleanly() {
    let server = NbServer::start();
    let monitor = monitored(&server, "ovn-cluster").await;
    // Someone else's rows, which must survive everything below.
    server.nbctl(&[
        "lr-policy-add",
        "ovn-cluster",
        "31000",
        "ip4.dst == 10.16.0.0/16",
        "allow",
    ]);
    server.nbctl(&[
        "create",
        "Address_Set",
        "name=unrelated",
        "addresses=10.9.9.9",
    ]);

    assert!(
        !apply(&monitor, &gateway1(&["10.16.0.12"]))
            .await
            .unwrap()
            .operations
            .is_empty()
    );
    let policies = lines(&server.nbctl(&["lr-policy-list", "ovn-cluster"]));
    assert!(
        policies.contains(&"29100 ip4.src == 10.16.0.0/16 reroute 10.16.0.12".to_owned()),
        "{policies:?}"
    );
    assert!(
        policies.contains(&"31000 ip4.dst == 10.16.0.0/16 allow".to_owned()),
        "{policies:?}"
    );

    let again = apply(&monitor, &gateway1(&["10.16.0.12"])).await.unwrap();
    assert!(
        again.operations.is_empty(),
        "a second apply wrote {:?}",
        again.changes
    );

    let scaled = apply(&monitor, &gateway1(&["10.16.0.12", "10.16.0.13"]))
        .await
        .unwrap();
    assert_eq!(
        scaled.changes,
        ["update Logical_Router_Policy 29100|4: nexthops"]
    );
    let policies = lines(&server.nbctl(&["lr-policy-list", "ovn-cluster"]));
    assert!(
        policies
            .contains(&"29100 ip4.src == 10.16.0.0/16 reroute 10.16.0.12, 10.16.0.13".to_owned()),
        "{policies:?}"
    );

    let back = apply(&monitor, &gateway1(&["10.16.0.12"])).await.unwrap();
    assert_eq!(
        back.changes,
        ["update Logical_Router_Policy 29100|4: nexthops"]
    );

    let spec = gateway1(&["10.16.0.12"]);
    let sets = server.nbctl(&[
        "--columns=name,addresses,external_ids",
        "list",
        "Address_Set",
    ]);
    assert!(
        sets.contains(&format!("VEG.{}.ipv4", spec.hash())),
        "{sets}"
    );
    assert!(
        sets.contains("vpc-egress-gateway=\"default/gateway1\""),
        "{sets}"
    );
    delete(&monitor, &spec).await.unwrap();
    assert_eq!(
        lines(&server.nbctl(&["lr-policy-list", "ovn-cluster"])),
        ["Routing Policies", "31000 ip4.dst == 10.16.0.0/16 allow"]
    );
    let sets = server.nbctl(&["--columns=name", "list", "Address_Set"]);
    assert!(!sets.contains("VEG."), "{sets}");
    assert!(sets.contains("unrelated"));
    assert_eq!(
        server
            .nbctl(&["--columns=name", "list", "Port_Group"])
            .trim(),
        ""
    );
}

#[tokio::test]
async fn gateway2_on_a_custom_vpc_routes_with_ecmp_and_bfd() {
    let server = NbServer::start();
    let monitor = monitored(&server, "vpc1").await;
    apply(&monitor, &gateway2(&["192.168.0.2"])).await.unwrap();
    let scaled = apply(&monitor, &gateway2(&["192.168.0.2", "192.168.0.3"]))
        .await
        .unwrap();
    assert_eq!(
        scaled.changes,
        [
            "insert BFD bfd@vpc1|192.168.0.3",
            "insert Logical_Router_Static_Route 192.168.0.0/24|192.168.0.3"
        ],
        "scaling out adds one BFD row and its route, nothing else"
    );
    let routes = lines(&server.nbctl(&["lr-route-list", "vpc1"]));
    for instance in ["192.168.0.2", "192.168.0.3"] {
        let expected = format!("192.168.0.0/24 {instance} src-ip ecmp ecmp-symmetric-reply bfd");
        assert!(routes.contains(&expected), "{expected:?} not in {routes:?}");
    }
    let bfd = server.nbctl(&[
        "--columns=detect_mult,dst_ip,external_ids,logical_port,min_rx,min_tx",
        "list",
        "BFD",
    ]);
    let rows = lines(&bfd);
    for expected in [
        "detect_mult : 3",
        "dst_ip : \"192.168.0.2\"",
        "dst_ip : \"192.168.0.3\"",
        "external_ids : {af=\"4\", vendor=kube-ovn, vpc-egress-gateway=\"default/gateway2\"}",
        "logical_port : \"bfd@vpc1\"",
        "min_rx : 1000",
        "min_tx : 1000",
    ] {
        assert!(
            rows.iter().any(|l| l == expected),
            "{expected:?} not in:\n{bfd}"
        );
    }
    assert!(
        apply(&monitor, &gateway2(&["192.168.0.2", "192.168.0.3"]))
            .await
            .unwrap()
            .operations
            .is_empty()
    );
    delete(&monitor, &gateway2(&[])).await.unwrap();
    assert_eq!(
        lines(&server.nbctl(&["lr-route-list", "vpc1"])),
        Vec::<String>::new()
    );
    assert_eq!(server.nbctl(&["--columns=_uuid", "list", "BFD"]).trim(), "");
}

/// Instances with one address of each family given ("v4,v6" as Kube-OVN writes them).
fn dual_stack_instances(addresses: &[&str]) -> Vec<Instance> {
    addresses
        .iter()
        .map(|a| Instance {
            addresses: a.split(',').map(|a| a.parse().unwrap()).collect(),
            node: "kube-ovn-worker".into(),
        })
        .collect()
}

/// The rows of `table`, each as its `columns` values joined with " | " (ovn-nbctl --bare: one value per line, a
/// blank line between rows).
fn bare_rows(server: &NbServer, table: &str, columns: &str) -> Vec<String> {
    let text = server.nbctl(&["--bare", &format!("--columns={columns}"), "list", table]);
    text.split("\n\n")
        .map(|row| row.lines().map(str::trim).collect::<Vec<_>>().join(" | "))
        .filter(|row| !row.is_empty())
        .collect()
}

/// The Address_Set rows, as "name | addresses" lines.
fn address_sets(server: &NbServer) -> Vec<String> {
    bare_rows(server, "Address_Set", "name,addresses")
}

#[tokio::test]
async fn a_dual_stack_gateway_gets_the_rows_of_both_families() {
    let server = NbServer::start();
    let monitor = monitored(&server, "ovn-cluster").await;
    server.nbctl(&["lr-add", "vpc1"]);
    let gateway1 = GatewaySpec {
        sources: ["10.16.0.0/16", "fd00:10:16::/64"]
            .map(|s| s.parse().unwrap())
            .to_vec(),
        instances: dual_stack_instances(&["10.16.0.12,fd00:10:16::12"]),
        ..gateway1(&[])
    };
    apply(&monitor, &gateway1).await.unwrap();
    let policies = lines(&server.nbctl(&["lr-policy-list", "ovn-cluster"]));
    for expected in [
        "29100 ip4.src == 10.16.0.0/16 reroute 10.16.0.12",
        "29100 ip6.src == fd00:10:16::/64 reroute fd00:10:16::12",
    ] {
        assert!(
            policies.iter().any(|p| p == expected),
            "{expected:?} not in {policies:?}"
        );
    }
    let sets = address_sets(&server);
    assert!(
        sets.iter().any(|s| s.ends_with(".ipv6 | fd00:10:16::/64")),
        "{sets:?}"
    );

    // On a custom VPC with BFD: a route and a BFD session per family and instance.
    let gateway2 = GatewaySpec {
        sources: ["192.168.0.0/24", "fd00:1::/64"]
            .map(|s| s.parse().unwrap())
            .to_vec(),
        instances: dual_stack_instances(&["192.168.0.2,fd00:1::2", "192.168.0.3,fd00:1::3"]),
        ..gateway2(&[])
    };
    apply(&monitor, &gateway2).await.unwrap();
    let routes = lines(&server.nbctl(&["lr-route-list", "vpc1"]));
    for expected in [
        "192.168.0.0/24 192.168.0.2 src-ip ecmp ecmp-symmetric-reply bfd",
        "192.168.0.0/24 192.168.0.3 src-ip ecmp ecmp-symmetric-reply bfd",
        "fd00:1::/64 fd00:1::2 src-ip ecmp ecmp-symmetric-reply bfd",
        "fd00:1::/64 fd00:1::3 src-ip ecmp ecmp-symmetric-reply bfd",
    ] {
        assert!(
            routes.iter().any(|r| r == expected),
            "{expected:?} not in {routes:?}"
        );
    }
    let bfd = bare_rows(&server, "BFD", "dst_ip,external_ids");
    for (ip, af) in [
        ("192.168.0.2", 4),
        ("192.168.0.3", 4),
        ("fd00:1::2", 6),
        ("fd00:1::3", 6),
    ] {
        assert!(
            bfd.iter()
                .any(|row| row.starts_with(&format!("{ip} | af={af} "))),
            "no BFD row for {ip} (af {af}): {bfd:?}"
        );
    }
    assert!(
        apply(&monitor, &gateway2)
            .await
            .unwrap()
            .operations
            .is_empty()
    );
    delete(&monitor, &gateway2).await.unwrap();
    delete(&monitor, &gateway1).await.unwrap();
    assert_eq!(
        lines(&server.nbctl(&["lr-route-list", "vpc1"])),
        Vec::<String>::new()
    );
    assert_eq!(server.nbctl(&["--columns=_uuid", "list", "BFD"]).trim(), "");
}

#[tokio::test]
async fn an_ipv6_only_gateway_writes_no_ipv4_rows() {
    let server = NbServer::start();
    let monitor = monitored(&server, "vpc1").await;
    let gateway2 = GatewaySpec {
        sources: vec!["fd00:1::/64".parse().unwrap()],
        instances: instances(&["fd00:1::2"]),
        ..gateway2(&[])
    };
    apply(&monitor, &gateway2).await.unwrap();
    assert_eq!(
        lines(&server.nbctl(&["lr-route-list", "vpc1"])),
        [
            "IPv6 Routes",
            "Route Table <main>:",
            "fd00:1::/64 fd00:1::2 src-ip ecmp-symmetric-reply bfd",
        ]
    );
    assert_eq!(bare_rows(&server, "BFD", "dst_ip"), ["fd00:1::2"]);
    let sets = address_sets(&server);
    assert!(
        sets.iter().any(|s| s.ends_with(".ipv4")),
        "an IPv4 address set with addresses: {sets:?}"
    );
    assert!(
        sets.iter().any(|s| s.ends_with(".ipv6 | fd00:1::/64")),
        "{sets:?}"
    );
}

#[tokio::test]
async fn a_rejected_transaction_leaves_nothing_behind() {
    let server = NbServer::start();
    let monitor = monitored(&server, "vpc1").await;
    // Someone else already has a BFD session to the same instance: the unique index refuses ours.
    server.nbctl(&[
        "create",
        "BFD",
        "logical_port=bfd@vpc1",
        "dst_ip=192.168.0.2",
    ]);
    let error = apply(&monitor, &gateway2(&["192.168.0.2"]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("constraint violation") && error.contains("nothing was applied"),
        "{error}"
    );
    assert_eq!(
        lines(&server.nbctl(&["lr-route-list", "vpc1"])),
        Vec::<String>::new(),
        "a route was left behind"
    );
    let sets = server.nbctl(&["--columns=name", "list", "Address_Set"]);
    assert!(
        !sets.contains("VEG."),
        "an address set was left behind: {sets}"
    );
}

/// The contract's two example gateways in one file, as for `kubectl apply -f`, with the Vpc and Subnets they need
/// (and the status the controller and Kube-OVN would have written: the instances, the BFD port's nodes).
const BOTH_GATEWAYS: &str = "\
apiVersion: kubeovn.io/v1
kind: Vpc
metadata: {name: vpc1}
spec: {bfdPort: {enabled: true, ip: 10.255.255.255}}
status: {bfdPort: {nodes: [kube-ovn-worker]}}
---
apiVersion: kubeovn.io/v1
kind: Subnet
metadata: {name: ovn-default}
spec: {vpc: ovn-cluster, protocol: IPv4, cidrBlock: 10.16.0.0/16, gateway: 10.16.0.1}
---
apiVersion: kubeovn.io/v1
kind: Subnet
metadata: {name: subnet1}
spec: {vpc: vpc1, protocol: IPv4, cidrBlock: 192.168.0.0/24, gateway: 192.168.0.1}
---
apiVersion: kubeovn.io/v1
kind: Subnet
metadata: {name: macvlan}
spec: {protocol: IPv4, cidrBlock: 172.17.0.0/16, gateway: 172.17.0.1, provider: macvlan.default}
---
apiVersion: kubeovn.io/v1
kind: VpcEgressGateway
metadata: {name: gateway1, namespace: default}
spec:
  replicas: 1
  externalSubnet: macvlan
  policies: [{snat: true, subnets: [ovn-default]}]
status:
  internalIPs: [10.16.0.12]
  workload: {nodes: [kube-ovn-worker]}
---
apiVersion: kubeovn.io/v1
kind: VpcEgressGateway
metadata: {name: gateway2, namespace: default}
spec:
  vpc: vpc1
  replicas: 2
  internalSubnet: subnet1
  externalSubnet: macvlan
  bfd: {enabled: true}
  policies: [{snat: true, ipBlocks: [192.168.0.0/24], subnets: [subnet1]}]
status:
  internalIPs: [192.168.0.2, 192.168.0.3]
  workload: {nodes: [kube-ovn-worker, kube-ovn-worker2]}
";

#[test]
fn the_command_line_applies_every_gateway_of_a_file_written_for_kubectl() {
    let server = NbServer::start();
    server.nbctl(&["lr-add", "ovn-cluster"]);
    server.nbctl(&["lr-add", "vpc1"]);
    let file = std::env::temp_dir()
        .join(veg_testbed::unique("veg-gateways-"))
        .with_extension("yaml");
    std::fs::write(&file, BOTH_GATEWAYS).unwrap();
    let veg = |args: &[&str]| {
        veg_testbed::command::run(std::process::Command::new(env!("CARGO_BIN_EXE_veg")).args(args))
    };
    let f = file.to_str().unwrap();
    let plan = veg(&["ovn", "plan", "-f", f]);
    assert!(
        plan.contains("gateway default/gateway1 on router ovn-cluster"),
        "{plan}"
    );
    assert!(plan.contains("BFD bfd@vpc1|192.168.0.3"), "{plan}");
    veg(&["ovn", "apply", "-f", f, "--nb", &server.unix]);
    // Both gateways: gateway1's reroute policy on the default VPC, gateway2's routes with BFD on vpc1.
    let policies = lines(&server.nbctl(&["lr-policy-list", "ovn-cluster"]));
    assert!(
        policies.iter().any(|p| p.contains("29100")
            && p.contains("ip4.src == 10.16.0.0/16")
            && p.contains("10.16.0.12")),
        "{policies:?}"
    );
    assert!(
        server.nbctl(&["show", "vpc1"]).contains("port bfd@vpc1"),
        "the VPC's BFD port was not created"
    );
    let routes = lines(&server.nbctl(&["lr-route-list", "vpc1"]));
    assert!(
        routes.contains(
            &"192.168.0.0/24 192.168.0.3 src-ip ecmp ecmp-symmetric-reply bfd".to_owned()
        ),
        "{routes:?}"
    );
    let again = veg(&["ovn", "apply", "-f", f, "--nb", &server.tcp]);
    assert_eq!(again.matches("nothing to do").count(), 2, "{again}");
    veg(&["ovn", "delete", "-f", f, "--nb", &server.unix]);
    assert!(lines(&server.nbctl(&["lr-route-list", "vpc1"])).is_empty());
    assert!(
        !server
            .nbctl(&["lr-policy-list", "ovn-cluster"])
            .contains("29100")
    );
    assert!(
        server.nbctl(&["show", "vpc1"]).contains("port bfd@vpc1"),
        "the Vpc's port went with the gateway"
    );
    // A file the controller would refuse is refused, saying why.
    let broken = BOTH_GATEWAYS.replace("metadata: {name: macvlan}", "metadata: {name: other}");
    std::fs::write(&file, broken).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_veg"))
        .args(["ovn", "plan", "-f", f])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("macvlan"), "{said}");
    std::fs::remove_file(file).unwrap();
}

/// Poll `condition` until it holds or `timeout` passes.
fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

// Long: one scenario against real OVN, session state by session state.
#[test]
fn bfd_status_from_the_southbound_rewrites_the_default_vpc_policy() {
    use veg_testbed::ovsdb::OvnCentral;
    let central = OvnCentral::start();
    let nb = &central.nb;
    nb.nbctl(&["lr-add", "ovn-cluster"]);
    nb.nbctl(&[
        "lrp-add",
        "ovn-cluster",
        "ovn-cluster-ovn-default",
        "02:00:00:00:00:01",
        "10.16.0.1/16",
    ]);
    nb.nbctl(&[
        "lrp-add",
        "ovn-cluster",
        "bfd@ovn-cluster",
        "02:00:00:00:00:09",
        "10.255.255.255/32",
    ]);
    let file = std::env::temp_dir()
        .join(veg_testbed::unique("veg-gateway1-bfd-"))
        .with_extension("yaml");
    std::fs::write(
        &file,
        "kind: Vpc\nmetadata: {name: ovn-cluster}\nspec: {bfdPort: {enabled: true, ip: 10.255.255.255}}\n---\n\
         kind: Subnet\nmetadata: {name: ovn-default}\nspec: {vpc: ovn-cluster, cidrBlock: 10.16.0.0/16, gateway: 10.16.0.1}\n---\n\
         kind: Subnet\nmetadata: {name: macvlan1}\nspec: {cidrBlock: 172.17.0.0/16, gateway: 172.17.0.1, provider: macvlan1.default}\n---\n\
         kind: VpcEgressGateway\nmetadata: {name: gateway1, namespace: default}\n\
         spec: {vpc: ovn-cluster, externalSubnet: macvlan1, bfd: {enabled: true}, policies: [{snat: true, ipBlocks: [10.16.0.0/16]}]}\n\
         status: {internalIPs: [10.16.0.12, 10.16.0.13], workload: {nodes: [worker1, worker2]}}\n",
    )
    .unwrap();
    let mut watcher = std::process::Command::new(env!("CARGO_BIN_EXE_veg"))
        .args([
            "ovn",
            "apply",
            "--watch",
            "-f",
            file.to_str().unwrap(),
            "--nb",
            &nb.unix,
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let policies = || lines(&nb.nbctl(&["lr-policy-list", "ovn-cluster"]));
    let has = |line: &str| policies().contains(&line.to_owned());
    let set_status = |ip: &str, status: &str| {
        let uuid = central.sbctl(&[
            "--bare",
            "--columns=_uuid",
            "find",
            "BFD",
            &format!("dst_ip={ip}"),
        ]);
        central.sbctl(&["set", "BFD", uuid.trim(), &format!("status={status}")]);
    };
    let wait = Duration::from_secs(10);
    // No session is Up yet: drop, as the reference does, rather than leave through the nodes.
    let dropping = eventually(wait, || has("29090 ip4.src == 10.16.0.0/16 drop"));
    // northd ran the sessions (the anchor routes reference them): set them as ovn-controller would.
    let synced = dropping
        && eventually(wait, || {
            central
                .sbctl(&["--bare", "--columns=dst_ip", "list", "BFD"])
                .lines()
                .count()
                >= 2
        });
    if synced {
        set_status("10.16.0.12", "up");
        set_status("10.16.0.13", "up");
    }
    let both = synced
        && eventually(wait, || {
            has("29100 ip4.src == 10.16.0.0/16 reroute 10.16.0.12, 10.16.0.13")
        });
    if both {
        set_status("10.16.0.12", "down");
    }
    let one = both
        && eventually(wait, || {
            has("29100 ip4.src == 10.16.0.0/16 reroute 10.16.0.13")
        });
    unsafe { libc::kill(watcher.id() as i32, libc::SIGTERM) };
    let _ = watcher.wait();
    let _ = std::fs::remove_file(&file);
    assert!(
        dropping,
        "no drop policy while every session is down: {:?}",
        policies()
    );
    assert!(synced, "northd made no Southbound BFD rows");
    assert!(both, "both sessions up, yet: {:?}", policies());
    assert!(one, "10.16.0.12 is down, yet: {:?}", policies());
    let routes = lines(&nb.nbctl(&["lr-route-list", "ovn-cluster"]));
    assert!(
        routes.contains(&"10.16.0.12 10.16.0.12 dst-ip bfd".to_owned()),
        "anchor route missing: {routes:?}"
    );
}

#[tokio::test]
async fn the_vpc_bfd_port_follows_its_chassis() {
    use veg_userspace::ovn::{
        apply::converge,
        vpc_port::{VpcBfdPort, vpc_port_rows},
    };
    let server = NbServer::start();
    let monitor = monitored(&server, "vpc1").await;
    let port = |chassis: &[&str]| VpcBfdPort {
        vpc: "vpc1".into(),
        addresses: vec!["10.255.255.255".parse().unwrap()],
        chassis: chassis.iter().map(|c| c.to_string()).collect(),
    };
    let first = port(&["node-a", "node-b"]);
    converge(&monitor, &first.owner(), &vpc_port_rows(&first))
        .await
        .unwrap();
    let show = lines(&server.nbctl(&["show", "vpc1"]));
    assert!(show.contains(&"port bfd@vpc1".to_owned()), "{show:?}");
    assert!(
        show.contains(&"networks: [\"10.255.255.255/32\"]".to_owned()),
        "{show:?}"
    );
    // ha-chassis-group-list: "<uuid> (group)", then "<uuid> (chassis)" and "priority N" per chassis.
    let groups = || lines(&server.nbctl(&["ha-chassis-group-list"])).join(" ");
    let listed = groups();
    assert!(listed.contains("(bfd@vpc1)"), "{listed}");
    assert!(
        listed.contains("(node-a) priority 100") && listed.contains("(node-b) priority 99"),
        "{listed}"
    );
    assert!(
        converge(&monitor, &first.owner(), &vpc_port_rows(&first))
            .await
            .unwrap()
            .operations
            .is_empty()
    );

    // A node leaves, another joins: only the chassis change.
    let second = port(&["node-a", "node-c"]);
    let changed = converge(&monitor, &second.owner(), &vpc_port_rows(&second))
        .await
        .unwrap();
    assert_eq!(
        changed.changes,
        [
            "insert HA_Chassis node-c",
            "update HA_Chassis_Group bfd@vpc1: ha_chassis",
            "delete HA_Chassis node-b"
        ]
    );
    let listed = groups();
    assert!(
        listed.contains("(node-c) priority 99") && !listed.contains("node-b"),
        "{listed}"
    );

    converge(&monitor, &second.owner(), &[]).await.unwrap();
    assert!(!server.nbctl(&["show", "vpc1"]).contains("bfd@vpc1"));
    assert_eq!(server.nbctl(&["ha-chassis-group-list"]).trim(), "");
}

// Long because it is a benchmark: build the scale, time each phase, print the numbers.
/// Not a test: the OVN benchmark for `cargo xtask bench ovn` (which reads the line starting with OVN_BENCH).
/// 1,000 gateways applied one by one, a gateway selecting 10,000 pods, an incremental scale-out, and a full
/// re-apply that must write nothing: transactions, bytes and time for each.
#[tokio::test]
#[ignore = "benchmark: run by `cargo xtask bench ovn`"]
async fn ovn_apply_at_scale() {
    use serde_json::json;
    use std::time::Instant;
    const GATEWAYS: u32 = 1000;
    const PORTS: usize = 10_000;
    let server = NbServer::start();
    let monitor = monitored(&server, "ovn-cluster").await;
    let client = monitor.client().unwrap();
    // 10,000 logical switch ports on one switch, as a cluster's pods would be.
    let mut operations: Vec<_> = (0..PORTS)
        .map(|i| json!({ "op": "insert", "table": "Logical_Switch_Port", "row": { "name": format!("pod{i}.default") }, "uuid-name": format!("p{i}") }))
        .collect();
    let ports: Vec<_> = (0..PORTS)
        .map(|i| json!(["named-uuid", format!("p{i}")]))
        .collect();
    operations.push(json!({ "op": "insert", "table": "Logical_Switch", "row": { "name": "ovn-default", "ports": ["set", ports] } }));
    client.transact(DB, &operations).await.unwrap();
    assert!(
        monitor
            .wait_until(Duration::from_secs(30), |r| r
                .rows("Logical_Switch_Port")
                .count()
                == PORTS)
            .await
    );

    let gateway = |i: u32, instances_count: u32| GatewaySpec {
        name: format!("gw{i}"),
        sources: vec![
            format!("10.{}.{}.0/24", 100 + i / 256, i % 256)
                .parse()
                .unwrap(),
        ],
        instances: (0..instances_count)
            .map(|n| Instance {
                addresses: vec![
                    format!("10.16.{}.{}", i / 250, n + 1 + 4 * (i % 50))
                        .parse()
                        .unwrap(),
                ],
                node: "n".into(),
            })
            .collect(),
        ..gateway1(&[])
    };
    let measure = |start: Instant, before: (u64, u64), count: u32| {
        let (sent, received) = client.bytes();
        let seconds = start.elapsed().as_secs_f64();
        json!({ "count": count, "seconds": seconds, "ms_each": 1000.0 * seconds / count as f64,
                "bytes_sent_each": (sent - before.0) / count as u64, "bytes_received_each": (received - before.1) / count as u64 })
    };
    let (start, before) = (Instant::now(), client.bytes());
    for i in 0..GATEWAYS {
        apply(&monitor, &gateway(i, 2)).await.unwrap();
    }
    let applies = measure(start, before, GATEWAYS);

    let mut selector = gateway(GATEWAYS, 2);
    selector.selected_ports = (0..PORTS).map(|i| format!("pod{i}.default")).collect();
    let (start, before) = (Instant::now(), client.bytes());
    apply(&monitor, &selector).await.unwrap();
    let selector_apply = measure(start, before, 1);

    let (start, before) = (Instant::now(), client.bytes());
    let scaled = apply(&monitor, &gateway(7, 3)).await.unwrap();
    let scale_out = measure(start, before, 1);
    assert_eq!(scaled.operations.len(), 1, "a scale-out is one update");

    let (start, before) = (Instant::now(), client.bytes());
    let mut writes = 0;
    for i in 0..GATEWAYS {
        writes += apply(&monitor, &gateway(i, if i == 7 { 3 } else { 2 }))
            .await
            .unwrap()
            .operations
            .len();
    }
    let reapply = measure(start, before, GATEWAYS);
    assert_eq!(writes, 0, "re-applying unchanged gateways wrote something");
    println!(
        "OVN_BENCH {}",
        json!({ "gateways": GATEWAYS, "ports": PORTS, "apply_each": applies, "selector_10k_apply": selector_apply,
                "scale_out": scale_out, "reapply_unchanged_each": reapply })
    );
}

// Long: one scenario against ovsdb-server, row by row.
/// On a server whose policies have bfd_sessions (OVN >= 23.09; here Debian's schema with that column added), the
/// default VPC's policies reference the instances' BFD rows and keep every instance, a 29090 drop sits under them,
/// trafficPolicy Local adds a 29150 policy per node, and no anchor routes are written. Applying twice writes
/// nothing.
#[tokio::test]
async fn with_bfd_sessions_policies_reference_the_bfd_rows() {
    let server = NbServer::start_with_bfd_sessions();
    let monitor = monitored(&server, "ovn-cluster").await;
    assert!(monitor.read(|r| {
        r.schema()
            .has_column("Logical_Router_Policy", "bfd_sessions")
    }));
    let mut spec = gateway1(&["10.16.0.12", "10.16.0.13"]);
    spec.instances[1].node = "node-b".into();
    spec.bfd = Some(Bfd {
        port: "bfd@ovn-cluster".into(),
        min_rx: 100,
        min_tx: 100,
        multiplier: 3,
    });
    spec.bfd_sessions = true;
    spec.local_port_groups = [("node-b".to_owned(), "node.b".to_owned())].into();
    apply(&monitor, &spec).await.unwrap();

    let bfd_ip: std::collections::HashMap<String, String> = server
        .select("BFD", &["_uuid", "dst_ip"])
        .iter()
        .map(|r| {
            (
                r["_uuid"][1].as_str().unwrap().to_owned(),
                r["dst_ip"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut policies: Vec<(i64, String, String, String)> = server
        .select(
            "Logical_Router_Policy",
            &["priority", "action", "nexthops", "bfd_sessions"],
        )
        .iter()
        .map(|r| {
            let set = |v: &serde_json::Value| -> Vec<serde_json::Value> {
                match v[0].as_str() {
                    Some("set") => v[1].as_array().cloned().unwrap_or_default(),
                    _ if v.is_null() => Vec::new(),
                    _ => vec![v.clone()],
                }
            };
            let mut nexthops: Vec<String> = set(&r["nexthops"])
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect();
            nexthops.sort();
            let mut sessions: Vec<String> = set(&r["bfd_sessions"])
                .iter()
                .filter_map(|u| bfd_ip.get(u[1].as_str()?).cloned())
                .collect();
            sessions.sort();
            (
                r["priority"].as_i64().unwrap(),
                r["action"].as_str().unwrap().to_owned(),
                nexthops.join(","),
                sessions.join(","),
            )
        })
        .collect();
    policies.sort();
    assert_eq!(
        policies,
        [
            (29090, "drop".to_owned(), String::new(), String::new()),
            (
                29100,
                "reroute".to_owned(),
                "10.16.0.12,10.16.0.13".to_owned(),
                "10.16.0.12,10.16.0.13".to_owned()
            ),
            (
                29150,
                "reroute".to_owned(),
                "10.16.0.13".to_owned(),
                "10.16.0.13".to_owned()
            ),
        ]
    );
    let routes = server.nbctl(&["lr-route-list", "ovn-cluster"]);
    assert!(
        !routes.contains("10.16.0.12"),
        "anchor routes are for OVN 23.03 only: {routes}"
    );
    let again = apply(&monitor, &spec).await.unwrap();
    assert!(
        again.operations.is_empty(),
        "a second apply wrote {:?}",
        again.changes
    );
}
