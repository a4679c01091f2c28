//! `veg gateway --gateway NAMESPACE/NAME`: the instance takes its policy from its VpcEgressGateway and the Subnets
//! it names, and follows their changes live. The agent runs in the topology's instance namespace (on a thread of this
//! process, so that it can reach the in-memory API server); what counts is what the external server saw, and that
//! a connection opened before the changes keeps working through them.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use veg_testbed::{
    kube_api::FakeApi,
    netns::Netns,
    servers::{Recorder, connect_from, tcp_echo, tcp_round_trip},
    skip_unless_root,
    topology::{GATEWAY_EXTERNAL_IP, SERVER_IP, Topology},
};
use veg_userspace::{
    crd::{gateway::VpcEgressGateway, network::Subnet},
    datapath::pins,
    gateway::{agent, node_pins, resource, settings::SettingsInput},
};

const PORT: u16 = 8080;

fn server() -> SocketAddr {
    SocketAddr::new(SERVER_IP.parse().unwrap(), PORT)
}

/// The agent on a thread inside the instance's namespace; dropping it stops the agent and removes its pins.
struct Agent {
    name: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Agent {
    fn start(instance: &Netns, name: &str, client: Client) -> Agent {
        let settings = SettingsInput {
            name: Some(name.into()),
            internal_interface: Some("eth0".into()),
            external_interface: Some("net1".into()),
            external_ip: Some(GATEWAY_EXTERNAL_IP.into()),
            gateway: Some("default/gateway1".into()),
            ..Default::default()
        }
        .validate()
        .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let thread = instance.spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let mut settings = settings;
                let (policy, updates) =
                    resource::follow(client, settings.resource.clone().unwrap()).await?;
                settings.policy = policy;
                let running = agent::start(&settings)?;
                let _ = started_tx.send(());
                agent::run(
                    settings,
                    running,
                    agent::StopRequests::once(async { drop(stopped.await) }),
                    Some(updates),
                )
                .await
            })
        });
        let mut agent = Agent {
            name: name.into(),
            stop: Some(stop),
            thread: Some(thread),
        };
        if started.recv_timeout(Duration::from_secs(20)).is_err() {
            let error = agent.thread.take().unwrap().join().unwrap();
            panic!("the agent did not start: {error:?}");
        }
        agent
    }

    fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let result = thread.join();
            if !std::thread::panicking() {
                result.unwrap().unwrap();
            }
        }
        let _ = pins::remove_gateway_pins(&self.name);
    }
}

fn echo(stream: &mut TcpStream, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(payload)?;
    let mut buf = vec![0u8; payload.len()];
    stream.read_exact(&mut buf)?;
    Ok(buf)
}

/// Sources the server saw connections from, as addresses.
fn sources(recorder: &Recorder) -> Vec<IpAddr> {
    recorder.peers().iter().map(|p| p.ip()).collect()
}

/// Retry a round trip from `client` until it works (the change reached the datapath) or 15 s pass.
fn eventually_through(client: &Netns, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match tcp_round_trip(client, 0, server(), b"hello") {
            Ok(echoed) if echoed == b"hello" => return,
            result if Instant::now() > deadline => {
                panic!("{what}: still failing after 15 s: {result:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

// Long: one scenario (a flow held open while the resource changes under it), step by step.
#[test]
fn the_policy_follows_the_resource_live_without_breaking_flows() {
    if skip_unless_root() {
        return;
    }
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let first = topo.add_client("10.16.0.2");
    let second = topo.add_client("10.16.1.2");
    let recorder = tcp_echo(&topo.server, PORT);

    let api_runtime = tokio::runtime::Runtime::new().unwrap();
    let (client, _api) = api_runtime.block_on(async { FakeApi::start() });
    let subnets: Api<Subnet> = Api::all(client.clone());
    let gateways: Api<VpcEgressGateway> = Api::namespaced(client.clone(), "default");
    api_runtime.block_on(async {
        let subnet: Subnet = serde_yaml::from_str("metadata: {name: clients}\nspec: {cidrBlock: 10.16.0.0/24}").unwrap();
        subnets.create(&PostParams::default(), &subnet).await.unwrap();
        let gateway: VpcEgressGateway = serde_yaml::from_str(
            "metadata: {name: gateway1, namespace: default}\nspec: {externalSubnet: macvlan1, policies: [{snat: true, subnets: [clients]}]}",
        )
        .unwrap();
        gateways.create(&PostParams::default(), &gateway).await.unwrap();
    });
    let agent = Agent::start(&topo.gateway, &format!("{}-gw", topo.prefix), client);
    let external: IpAddr = GATEWAY_EXTERNAL_IP.parse().unwrap();

    // The subnet's clients leave translated; a connection stays open through everything below.
    let mut held = topo
        .client(first)
        .run(|| connect_from(0, server()))
        .unwrap();
    assert_eq!(echo(&mut held, b"before").unwrap(), b"before");
    assert_eq!(sources(&recorder), [external]);
    assert!(
        tcp_round_trip(topo.client(second), 0, server(), b"x").is_err(),
        "10.16.1.2 is in no policy yet, but got through"
    );

    // The subnet grows: the second client gets through, translated, without a restart.
    api_runtime
        .block_on(subnets.patch(
            "clients",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "cidrBlock": "10.16.0.0/23" } })),
        ))
        .unwrap();
    eventually_through(topo.client(second), "after the subnet grew to 10.16.0.0/23");
    assert!(
        sources(&recorder).iter().all(|s| *s == external),
        "{:?}",
        sources(&recorder)
    );
    assert_eq!(
        echo(&mut held, b"after the subnet changed").unwrap(),
        b"after the subnet changed"
    );

    // The gateway now forwards the second client's range unchanged: the server sees its own address.
    api_runtime
        .block_on(gateways.patch(
            "gateway1",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "policies": [
            { "snat": true, "subnets": ["clients"] },
            { "snat": false, "ipBlocks": ["10.16.1.0/24"] },
        ] } })),
        ))
        .unwrap();
    let own: IpAddr = "10.16.1.2".parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !sources(&recorder).contains(&own) {
        assert!(
            Instant::now() < deadline,
            "the forward policy never took effect: {:?}",
            sources(&recorder)
        );
        let _ = tcp_round_trip(topo.client(second), 0, server(), b"forwarded");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        echo(&mut held, b"after the gateway changed").unwrap(),
        b"after the gateway changed"
    );
    assert!(agent.is_running(), "the agent restarted or died");
    drop(held);
    drop(agent);
}

/// Pin a small map at ROOT/DIR/FLOWS, as an instance named DIR leaves its state on the node.
fn pin_state(root: &std::path::Path, dir: &str) -> std::path::PathBuf {
    let path = root.join(dir);
    std::fs::create_dir_all(&path).unwrap();
    let status = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(path.join("FLOWS"))
        .args([
            "type", "hash", "key", "4", "value", "4", "entries", "1", "name", "FLOWS",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "bpftool map create");
    path
}

/// Nothing is left on a node: pinned state whose gateway is gone or has no instance on the node any more is
/// removed when an instance starts there; an instance's own state goes when its pod is deleted, and stays when
/// the pod stays (a container restart keeps its flows). Judged by what is pinned in bpffs, against the API's pods.
#[test]
fn pinned_state_goes_with_its_pod_and_stays_with_a_restarting_container() {
    if skip_unless_root() {
        return;
    }
    let tag = veg_testbed::unique("gc");
    // A bpffs directory of the test's own, in place of /sys/fs/bpf/veg, which other tests' gateways share.
    let root = std::path::Path::new(pins::BPFFS_ROOT).join(format!("veg-test-{tag}"));
    let (own, gone, elsewhere, here, by_hand) = (
        format!("{tag}_gateway1"),
        format!("{tag}_deleted"),
        format!("{tag}_moved"),
        format!("{tag}_neighbour"),
        format!("{tag}-by-hand"),
    );
    let dirs: Vec<std::path::PathBuf> = [&own, &gone, &elsewhere, &here, &by_hand]
        .iter()
        .map(|d| pin_state(&root, d))
        .collect();
    let cleanup = scopeguard(dirs.clone());

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (client, _api) = runtime.block_on(async { FakeApi::start() });
    runtime.block_on(async {
        let gateways: Api<VpcEgressGateway> = Api::namespaced(client.clone(), &tag);
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &tag);
        for name in ["gateway1", "moved", "neighbour"] {
            let gateway: VpcEgressGateway = serde_yaml::from_str(&format!(
                "metadata: {{name: {name}, namespace: {tag}}}\nspec: {{externalSubnet: ext, policies: [{{snat: true, ipBlocks: [10.0.0.1]}}]}}"
            ))
            .unwrap();
            gateways.create(&PostParams::default(), &gateway).await.unwrap();
        }
        // Instances: gateway1's and neighbour's on this node, moved's on another one.
        for (pod, gateway, node) in [
            ("gateway1-a", "gateway1", "node1"),
            ("neighbour-a", "neighbour", "node1"),
            ("moved-a", "moved", "node2"),
        ] {
            let pod: k8s_openapi::api::core::v1::Pod = serde_yaml::from_str(&format!(
                "metadata: {{name: {pod}, namespace: {tag}, labels: {{ovn.kubernetes.io/vpc-egress-gateway: {gateway}}}}}\n\
                 spec: {{nodeName: {node}, containers: []}}"
            ))
            .unwrap();
            pods.create(&PostParams::default(), &pod).await.unwrap();
        }
    });
    let pod = node_pins::OwnPod {
        namespace: tag.clone(),
        name: "gateway1-a".into(),
        node: "node1".into(),
    };

    // An instance starts on node1: the deleted gateway's and the moved one's state go, the rest stays.
    let removed = runtime.block_on(node_pins::remove_orphans(&client, &root, &own, &pod.node));
    let mut removed: Vec<String> = removed
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    removed.sort();
    assert_eq!(removed, [gone.clone(), elsewhere.clone()]);
    for (dir, kept) in dirs.iter().zip([true, false, false, true, true]) {
        assert_eq!(dir.join("FLOWS").exists(), kept, "{}", dir.display());
    }

    // The instance stops while its pod stays (its container restarts): its state stays.
    runtime
        .block_on(node_pins::remove_own_if_leaving(&client, &pod, &root, &own))
        .unwrap();
    assert!(dirs[0].join("FLOWS").exists());
    // Its pod is deleted: its state goes when it stops.
    runtime
        .block_on(async {
            let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &tag);
            pods.delete("gateway1-a", &Default::default()).await
        })
        .unwrap();
    runtime
        .block_on(node_pins::remove_own_if_leaving(&client, &pod, &root, &own))
        .unwrap();
    assert!(!dirs[0].exists(), "{} is still there", dirs[0].display());
    drop(cleanup);
    let _ = std::fs::remove_dir(&root);
}

/// Removes the directories' pins when dropped, also when the test fails.
fn scopeguard(dirs: Vec<std::path::PathBuf>) -> impl Drop {
    struct Remove(Vec<std::path::PathBuf>);
    impl Drop for Remove {
        fn drop(&mut self) {
            for dir in &self.0 {
                let _ = pins::remove_dir_of_pins(dir);
            }
        }
    }
    Remove(dirs)
}
