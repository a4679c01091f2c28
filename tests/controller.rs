//! The controller against kube-rs's mocked API server (an in-memory one, veg_testbed::kube_api) and a real OVN
//! Northbound ovsdb-server: the test plays the cluster (it creates the pods a Deployment would get, with the
//! addresses Kube-OVN's CNI writes), calls reconcile as the controller's loop does, and reads back what the far
//! sides hold: the API server's objects and, with ovn-nbctl, the database's rows.

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Namespace, Node, Pod},
    rbac::v1::ClusterRoleBinding,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::events::{Recorder, Reporter},
};
use serde_json::{Value, json};
use veg_ovsdb::{monitor::Monitor, replica::column};
use veg_testbed::{
    kube_api::FakeApi,
    netns::Netns,
    ovsdb::{GATEWAY_TABLES, NbServer},
    prometheus::{self, Prometheus},
    skip_unless_root, unique,
};
use veg_userspace::{
    controller::{
        reconcile::{Context, FINALIZER, reconcile},
        run::{Settings, run_with},
    },
    crd::{
        gateway::VpcEgressGateway,
        network::{Subnet, Vpc},
    },
    ovn::apply::{DB, monitored_tables},
};

const NS: &str = "default";

struct World {
    nb: NbServer,
    api: FakeApi,
    client: Client,
    ctx: Arc<Context>,
}

trait Object:
    kube::Resource<DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + serde::Serialize
    + std::fmt::Debug
{
}
impl<
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
> Object for K
{
}

/// Create a cluster-scoped object from YAML.
async fn create<K: Object>(client: &Client, yaml: &str) -> K {
    let object: K = serde_yaml::from_str(yaml).unwrap();
    Api::<K>::all(client.clone())
        .create(&PostParams::default(), &object)
        .await
        .unwrap()
}

/// Create an object in `namespace` from YAML.
async fn create_in<K: Object + kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>>(
    client: &Client,
    namespace: &str,
    yaml: &str,
) -> K {
    let object: K = serde_yaml::from_str(yaml).unwrap();
    Api::<K>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &object)
        .await
        .unwrap()
}

async fn connect(nb: &NbServer, client: &Client) -> Arc<Context> {
    let ovn = Monitor::start(nb.unix.parse().unwrap(), DB, &monitored_tables());
    let ready = ovn
        .wait_until(Duration::from_secs(5), |r| {
            r.rows("Logical_Router")
                .any(|(_, row)| column(row, "name") == "vpc1")
        })
        .await;
    assert!(ready, "the monitor never saw the routers");
    let reporter = Reporter {
        controller: "veg-controller".into(),
        instance: None,
    };
    Arc::new(Context {
        client: client.clone(),
        ovn,
        default_image: "veg:test".into(),
        recorder: Recorder::new(client.clone(), reporter),
    })
}

/// Two routers (the default VPC's and vpc1's), switch ports for selected pods; in the API: the subnets, the
/// VPCs (vpc1 with a BFD port, vpc2 without), two Ready nodes and two namespaces.
async fn world() -> World {
    world_on(NbServer::start()).await
}

async fn world_on(nb: NbServer) -> World {
    for router in ["ovn-cluster", "vpc1", "vpc2"] {
        nb.nbctl(&["lr-add", router]);
    }
    nb.nbctl(&["ls-add", "ovn-default"]);
    for port in ["web1.default", "web2.team2", "web3.default"] {
        nb.nbctl(&["lsp-add", "ovn-default", port]);
    }
    let (client, api) = FakeApi::start();
    for yaml in [
        "metadata: {name: ovn-default}\nspec: {cidrBlock: 10.16.0.0/16, gateway: 10.16.0.1, protocol: IPv4, vpc: ovn-cluster}",
        "metadata: {name: subnet1}\nspec: {cidrBlock: 192.168.0.0/24, gateway: 192.168.0.1, protocol: IPv4, vpc: vpc1}",
        "metadata: {name: subnet2}\nspec: {cidrBlock: 192.168.1.0/24, gateway: 192.168.1.1, protocol: IPv4, vpc: vpc2}",
        "metadata: {name: macvlan1}\nspec: {cidrBlock: 172.17.0.0/16, gateway: 172.17.0.1, protocol: IPv4, provider: macvlan1.default}",
    ] {
        create::<Subnet>(&client, yaml).await;
    }
    create::<Vpc>(&client, "metadata: {name: vpc1}\nspec: {bfdPort: {enabled: true, ip: 10.255.255.255}}\nstatus: {defaultLogicalSwitch: subnet1}").await;
    create::<Vpc>(
        &client,
        "metadata: {name: vpc2}\nspec: {}\nstatus: {defaultLogicalSwitch: subnet2}",
    )
    .await;
    for node in ["node1", "node2"] {
        create::<Node>(&client, &format!("metadata: {{name: {node}}}\nstatus: {{conditions: [{{type: Ready, status: 'True'}}]}}")).await;
    }
    create::<Namespace>(&client, "metadata: {name: default, labels: {egress: veg}}").await;
    create::<Namespace>(&client, "metadata: {name: team2}").await;
    // What deploy/gateway/rbac.yaml installs: the instances' binding, without subjects.
    create::<ClusterRoleBinding>(
        &client,
        "metadata: {name: veg-gateway}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: veg-gateway}",
    )
    .await;
    let ctx = connect(&nb, &client).await;
    World {
        nb,
        api,
        client,
        ctx,
    }
}

impl World {
    fn gateways(&self) -> Api<VpcEgressGateway> {
        Api::namespaced(self.client.clone(), NS)
    }

    async fn gateway(&self, yaml: &str) -> VpcEgressGateway {
        create_in::<VpcEgressGateway>(&self.client, NS, yaml).await
    }

    /// One pass of the controller's loop for the gateway, as its watch would trigger it.
    async fn reconcile(&self, name: &str) {
        let gateway = self.gateways().get(name).await.unwrap();
        reconcile(Arc::new(gateway), self.ctx.clone())
            .await
            .unwrap();
    }

    fn status(&self, name: &str) -> Value {
        self.api
            .get("kubeovn.io", "vpc-egress-gateways", NS, name)
            .unwrap()["status"]
            .clone()
    }

    fn condition(&self, name: &str, type_: &str) -> (String, String) {
        let status = self.status(name);
        let found = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .unwrap()
            .clone();
        (
            found["status"].as_str().unwrap().into(),
            found["reason"].as_str().unwrap().into(),
        )
    }

    /// The status of a pod's condition (the readiness gate's, veg.kubeovn.io/routed), or "" without it.
    fn pod_condition(&self, pod: &str, type_: &str) -> String {
        let pod = self.api.get("", "pods", NS, pod).unwrap();
        pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == type_)
            .map(|c| c["status"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    /// What the Deployment would bring: a pod of the gateway on `node`, with both addresses, Ready.
    async fn instance(&self, gateway: &str, pod: &str, node: &str, internal: &str, external: &str) {
        create_in::<Pod>(
            &self.client,
            NS,
            &format!(
                "metadata:\n  name: {pod}\n  labels: {{app: vpc-egress-gateway, ovn.kubernetes.io/vpc-egress-gateway: {gateway}}}\n  \
                 annotations:\n    ovn.kubernetes.io/allocated: 'true'\n    ovn.kubernetes.io/ip_address: {internal}\n    \
                 macvlan1.default.kubernetes.io/allocated: 'true'\n    macvlan1.default.kubernetes.io/ip_address: {external}\n\
                 spec: {{nodeName: {node}, containers: []}}\nstatus: {{conditions: [{{type: Ready, status: 'True'}}]}}\n"
            ),
        )
        .await;
    }

    /// ovn-nbctl's view of the rows tagged with the gateway in `table`: the given columns, one line a row, sorted.
    fn rows(&self, table: &str, gateway: &str, columns: &str) -> Vec<String> {
        let out = self.nb.nbctl(&[
            "--format=csv",
            "--no-headings",
            "--data=bare",
            &format!("--columns={columns}"),
            "find",
            table,
            &format!("external_ids:vpc-egress-gateway={NS}/{gateway}"),
        ]);
        let mut lines: Vec<String> = out.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    }

    fn every_tagged_row(&self, gateway: &str) -> Vec<String> {
        GATEWAY_TABLES
            .iter()
            .flat_map(|t| {
                self.rows(t, gateway, "_uuid")
                    .into_iter()
                    .map(move |r| format!("{t} {r}"))
            })
            .collect()
    }
}

const GATEWAY1: &str = "metadata: {name: gateway1}\nspec:\n  replicas: 1\n  externalSubnet: macvlan1\n  \
                        policies: [{snat: true, subnets: [ovn-default]}]\n";

// Long: one gateway's life, pass by pass, asserting what each pass wrote.
#[tokio::test]
async fn a_gateway_gets_its_deployment_its_ovn_rows_and_an_honest_status() {
    let w = world().await;
    w.gateway(GATEWAY1).await;

    // The first pass says the gateway was seen (Pending, Init Unknown, as the reference does) and adds the
    // finalizer.
    w.reconcile("gateway1").await;
    let stored = w.gateways().get("gateway1").await.unwrap();
    assert_eq!(stored.finalizers(), [FINALIZER]);
    assert_eq!(w.status("gateway1")["phase"], "Pending");
    assert_eq!(
        w.condition("gateway1", "Init"),
        ("Unknown".into(), "Processing".into())
    );

    // The next creates the Deployment; no instance yet, so Processing.
    w.reconcile("gateway1").await;
    let deployment = Api::<Deployment>::namespaced(w.client.clone(), NS)
        .get("gateway1")
        .await
        .unwrap();
    assert_eq!(deployment.spec.as_ref().unwrap().replicas, Some(1));
    assert_eq!(deployment.owner_references()[0].name, "gateway1");
    // The instances run as veg-gateway, which may now read the gateway and the subnets.
    let pod = deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("veg-gateway"));
    assert!(
        w.api
            .get("", "serviceaccounts", NS, "veg-gateway")
            .is_some()
    );
    let binding = w
        .api
        .get(
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            "",
            "veg-gateway",
        )
        .unwrap();
    assert_eq!(
        binding["subjects"],
        json!([{ "kind": "ServiceAccount", "name": "veg-gateway", "namespace": NS }])
    );
    assert_eq!(w.status("gateway1")["phase"], "Processing");
    assert_eq!(
        w.condition("gateway1", "Ready"),
        ("False".into(), "Processing".into())
    );
    assert_eq!(
        w.condition("gateway1", "Init"),
        ("True".into(), "ReconcileSuccess".into())
    );
    assert_eq!(
        w.rows("Logical_Router_Policy", "gateway1", "priority"),
        Vec::<String>::new()
    );

    // The instance comes up: the reroute policy sends the subnet to it, and the status says so.
    w.instance(
        "gateway1",
        "gateway1-0",
        "node1",
        "10.16.0.5",
        "172.17.0.10",
    )
    .await;
    w.reconcile("gateway1").await;
    assert_eq!(
        w.rows(
            "Logical_Router_Policy",
            "gateway1",
            "priority,match,action,nexthops"
        ),
        ["29100,ip4.src == 10.16.0.0/16,reroute,10.16.0.5"]
    );
    assert_eq!(
        w.rows("Address_Set", "gateway1", "addresses"),
        ["", "10.16.0.0/16"]
    );
    // OVN now routes to it: its readiness gate is set.
    assert_eq!(
        w.pod_condition("gateway1-0", "veg.kubeovn.io/routed"),
        "True"
    );
    let status = w.status("gateway1");
    assert_eq!(status["phase"], "Completed");
    assert_eq!(status["ready"], true);
    assert_eq!(status["internalIPs"], json!(["10.16.0.5"]));
    assert_eq!(status["externalIPs"], json!(["172.17.0.10"]));
    assert_eq!(status["workload"]["nodes"], json!(["node1"]));
    assert_eq!(status["workload"]["name"], "gateway1");
    assert_eq!(status["replicas"], 1);
    assert_eq!(
        w.condition("gateway1", "Ready"),
        ("True".into(), "ReconcileSuccess".into())
    );
    assert!(
        w.writes()
            .iter()
            .any(|write| write.starts_with("POST events/default/gateway1.")),
        "no Event recorded: {:?}",
        w.writes()
    );

    // Nothing changed: another pass writes nothing, and neither does a restarted controller.
    let before = (w.writes().len(), w.every_tagged_row("gateway1"));
    w.reconcile("gateway1").await;
    let restarted = connect(&w.nb, &w.client).await;
    let gateway = w.gateways().get("gateway1").await.unwrap();
    reconcile(Arc::new(gateway), restarted).await.unwrap();
    assert_eq!(
        (w.writes().len(), w.every_tagged_row("gateway1")),
        before,
        "writes: {:?}",
        w.writes()
    );
}

impl World {
    fn writes(&self) -> Vec<String> {
        self.api.writes()
    }
}

// Long: one gateway scaled pass by pass, asserting what each pass wrote.
#[tokio::test]
async fn scaling_a_bfd_gateway_adds_one_nexthop_and_one_bfd_row() {
    let w = world().await;
    w.gateway(
        "metadata: {name: gateway2}\nspec:\n  vpc: vpc1\n  replicas: 1\n  internalSubnet: subnet1\n  externalSubnet: macvlan1\n  \
         bfd: {enabled: true, minRX: 100, minTX: 100, multiplier: 3}\n  policies: [{snat: true, ipBlocks: [192.168.0.0/24]}]\n",
    )
    .await;
    w.reconcile("gateway2").await;
    w.instance(
        "gateway2",
        "gateway2-0",
        "node1",
        "192.168.0.4",
        "172.17.0.10",
    )
    .await;
    w.reconcile("gateway2").await;
    // The VPC's BFD port, on the Ready nodes; the route with ECMP symmetric reply and its BFD row.
    let port = w.nb.nbctl(&[
        "--bare",
        "--columns=networks",
        "find",
        "Logical_Router_Port",
        "name=bfd@vpc1",
    ]);
    assert_eq!(port.trim(), "10.255.255.255/32");
    let chassis =
        w.nb.nbctl(&["--bare", "--columns=chassis_name", "list", "HA_Chassis"]);
    let mut chassis: Vec<&str> = chassis.split_whitespace().collect();
    chassis.sort();
    assert_eq!(chassis, ["node1", "node2"]);
    assert_eq!(
        w.rows(
            "Logical_Router_Static_Route",
            "gateway2",
            "ip_prefix,nexthop,policy,options"
        ),
        ["192.168.0.0/24,192.168.0.4,src-ip,ecmp_symmetric_reply=true"]
    );
    assert_eq!(
        w.rows(
            "BFD",
            "gateway2",
            "logical_port,dst_ip,min_rx,min_tx,detect_mult"
        ),
        ["bfd@vpc1,192.168.0.4,100,100,3"]
    );
    // The route is there, but OVN has not seen the session up: the readiness gate stays False until it does.
    assert_eq!(
        w.pod_condition("gateway2-0", "veg.kubeovn.io/routed"),
        "False"
    );
    w.nb.nbctl(&["set", "BFD", ".", "status=up"]);
    w.reconcile("gateway2").await;
    assert_eq!(
        w.pod_condition("gateway2-0", "veg.kubeovn.io/routed"),
        "True"
    );

    w.gateways()
        .patch(
            "gateway2",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 2 } })),
        )
        .await
        .unwrap();
    w.reconcile("gateway2").await;
    let deployment = Api::<Deployment>::namespaced(w.client.clone(), NS)
        .get("gateway2")
        .await
        .unwrap();
    assert_eq!(deployment.spec.unwrap().replicas, Some(2));
    assert_eq!(
        w.status("gateway2")["ready"],
        false,
        "one of two instances is not ready"
    );
    w.instance(
        "gateway2",
        "gateway2-1",
        "node2",
        "192.168.0.5",
        "172.17.0.11",
    )
    .await;
    w.reconcile("gateway2").await;
    assert_eq!(
        w.rows("Logical_Router_Static_Route", "gateway2", "nexthop"),
        ["192.168.0.4", "192.168.0.5"]
    );
    assert_eq!(
        w.rows("BFD", "gateway2", "dst_ip"),
        ["192.168.0.4", "192.168.0.5"]
    );
    let status = w.status("gateway2");
    assert_eq!(
        (status["ready"].clone(), status["replicas"].clone()),
        (json!(true), json!(2))
    );
    assert_eq!(status["internalIPs"], json!(["192.168.0.4", "192.168.0.5"]));
    assert_eq!(status["workload"]["nodes"], json!(["node1", "node2"]));
}

#[tokio::test]
async fn bfd_on_a_vpc_without_a_bfd_port_is_a_condition_not_a_crash() {
    let w = world().await;
    w.gateway(
        "metadata: {name: gateway3}\nspec:\n  vpc: vpc2\n  externalSubnet: macvlan1\n  bfd: {enabled: true}\n  \
         policies: [{snat: true, ipBlocks: [192.168.1.0/24]}]\n",
    )
    .await;
    w.reconcile("gateway3").await;
    w.reconcile("gateway3").await;
    assert_eq!(
        w.condition("gateway3", "Validated"),
        ("False".into(), "VpcBfdPortNotEnabled".into())
    );
    assert_eq!(w.status("gateway3")["phase"], "Processing");
    let message = w.status("gateway3")["conditions"][1]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("spec.bfdPort.enabled"), "{message}");
    assert!(
        w.api.get("apps", "deployments", NS, "gateway3").is_none(),
        "no workload for an invalid gateway"
    );
    assert_eq!(w.every_tagged_row("gateway3"), Vec::<String>::new());
    assert!(
        w.api
            .writes()
            .iter()
            .any(|write| write.starts_with("POST events/default/gateway3.")),
        "the problem was not recorded as an Event"
    );
}

#[tokio::test]
async fn the_port_group_follows_selected_pods_and_namespace_labels() {
    let w = world().await;
    w.gateway(
        "metadata: {name: gateway4}\nspec:\n  externalSubnet: macvlan1\n  \
         selectors: [{namespaceSelector: {matchLabels: {egress: veg}}, podSelector: {matchLabels: {app: web}}}]\n",
    )
    .await;
    let pod = |namespace: &str, name: &str| {
        format!(
            "metadata: {{name: {name}, namespace: {namespace}, labels: {{app: web}}, annotations: \
             {{ovn.kubernetes.io/allocated: 'true', ovn.kubernetes.io/logical_router: ovn-cluster}}}}\nspec: {{containers: []}}"
        )
    };
    create_in::<Pod>(&w.client, "default", &pod("default", "web1")).await;
    create_in::<Pod>(&w.client, "team2", &pod("team2", "web2")).await;
    let ports = |w: &World| -> Vec<String> {
        let uuids = w.rows("Port_Group", "gateway4", "ports");
        let mut names: Vec<String> = uuids
            .iter()
            .flat_map(|line| line.split_whitespace())
            .map(|uuid| {
                w.nb.nbctl(&[
                    "--bare",
                    "--columns=name",
                    "list",
                    "Logical_Switch_Port",
                    uuid,
                ])
                .trim()
                .to_owned()
            })
            .collect();
        names.sort();
        names
    };
    w.reconcile("gateway4").await;
    w.reconcile("gateway4").await;
    assert_eq!(ports(&w), ["web1.default"]);

    // Labelling team2 selects its pod; a new pod in default is picked up too.
    Api::<Namespace>::all(w.client.clone())
        .patch(
            "team2",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "egress": "veg" } } })),
        )
        .await
        .unwrap();
    create_in::<Pod>(&w.client, "default", &pod("default", "web3")).await;
    w.reconcile("gateway4").await;
    assert_eq!(ports(&w), ["web1.default", "web2.team2", "web3.default"]);
}

#[tokio::test]
async fn deleting_a_gateway_removes_its_ovn_rows_then_the_finalizer() {
    let w = world().await;
    w.gateway(GATEWAY1).await;
    w.gateway(&GATEWAY1.replace("gateway1", "other")).await;
    for name in ["gateway1", "other"] {
        w.reconcile(name).await;
        w.instance(
            name,
            &format!("{name}-0"),
            "node1",
            "10.16.0.5",
            "172.17.0.10",
        )
        .await;
        w.reconcile(name).await;
    }
    assert!(!w.every_tagged_row("gateway1").is_empty());
    let others = w.every_tagged_row("other");

    w.gateways()
        .delete("gateway1", &DeleteParams::default())
        .await
        .unwrap();
    // Deletion waits for the finalizer: the object is still there, marked.
    assert!(
        w.api
            .get("kubeovn.io", "vpc-egress-gateways", NS, "gateway1")
            .is_some()
    );
    w.reconcile("gateway1").await;
    assert_eq!(w.every_tagged_row("gateway1"), Vec::<String>::new());
    assert_eq!(
        w.every_tagged_row("other"),
        others,
        "another gateway's rows were touched"
    );
    assert!(
        w.api
            .get("kubeovn.io", "vpc-egress-gateways", NS, "gateway1")
            .is_none(),
        "the finalizer stayed"
    );
    assert!(
        w.api.get("apps", "deployments", NS, "gateway1").is_none(),
        "the Deployment outlived its gateway"
    );
}

#[tokio::test]
async fn one_replica_leads_and_another_takes_over_only_after_the_lease_runs_out() {
    use k8s_openapi::api::coordination::v1::Lease;
    use veg_userspace::controller::leader::Elector;
    let (client, api) = FakeApi::start();
    let leases = || Api::<Lease>::namespaced(client.clone(), "kube-system");
    let lease = Duration::from_secs(1);
    let mut a = Elector::new(leases(), "veg-controller", "a", lease);
    let mut b = Elector::new(leases(), "veg-controller", "b", lease);
    let holder = || {
        api.get(
            "coordination.k8s.io",
            "leases",
            "kube-system",
            "veg-controller",
        )
        .unwrap()["spec"]
            .clone()
    };

    assert!(a.step().await.unwrap(), "a creates the Lease");
    assert!(!b.step().await.unwrap());
    // While a renews, b never takes over, however long it waits.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(a.step().await.unwrap());
        assert!(
            !b.step().await.unwrap(),
            "b took a Lease that a keeps renewing"
        );
    }
    assert_eq!(holder()["holderIdentity"], "a");

    // a stops renewing: b takes over once it has seen the Lease unchanged for a whole duration.
    tokio::time::sleep(lease + Duration::from_millis(300)).await;
    assert!(
        b.step().await.unwrap(),
        "b did not take over an expired Lease"
    );
    assert!(!a.step().await.unwrap(), "a still believes it leads");
    assert_eq!(holder()["holderIdentity"], "b");
    assert_eq!(holder()["leaseTransitions"], 1);

    // Two replicas racing for an expired Lease: exactly one wins (the other's write conflicts).
    let mut c = Elector::new(leases(), "veg-controller", "c", lease);
    assert!(!a.step().await.unwrap() && !c.step().await.unwrap());
    tokio::time::sleep(lease + Duration::from_millis(300)).await;
    let (won_a, won_c) = tokio::join!(a.step(), c.step());
    assert!(
        won_a.unwrap() ^ won_c.unwrap(),
        "both or neither won the race"
    );
}

/// Wait up to 10 s for `check` to hold.
async fn eventually(w: &World, what: &str, check: impl Fn(&World) -> bool) {
    for _ in 0..100 {
        if check(w) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{what} did not happen within 10 s; writes: {:?}",
        w.writes()
    );
}

/// `veg controller`'s settings for the world's database, leading as "test", without metrics.
fn controller_settings(w: &World) -> Settings {
    Settings {
        nb: w.nb.unix.parse().unwrap(),
        default_image: "veg:test".into(),
        lease_namespace: "kube-system".into(),
        lease_name: "veg-controller".into(),
        identity: "test".into(),
        lease_duration: Duration::from_secs(15),
        metrics: None,
    }
}

/// `veg controller` running on the world, with gateway1 and its one instance Ready.
struct RunningController {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningController {
    /// Start the controller, create gateway1, wait for its Deployment, play its pod, and wait for Ready: the
    /// controller's watches notice each step without anyone calling reconcile.
    async fn start_with_gateway(w: &World, settings: Settings) -> RunningController {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run_with(w.client.clone(), settings, async {
            let _ = stopped.await;
        }));
        w.gateway(GATEWAY1).await;
        eventually(w, "the Deployment", |w| {
            w.api.get("apps", "deployments", NS, "gateway1").is_some()
        })
        .await;
        w.instance(
            "gateway1",
            "gateway1-0",
            "node1",
            "10.16.0.5",
            "172.17.0.10",
        )
        .await;
        eventually(w, "Ready", |w| w.status("gateway1")["ready"] == true).await;
        RunningController { stop, task }
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the controller did not stop")
            .unwrap()
            .unwrap();
    }
}

/// The whole controller, as `veg controller` runs it.
#[tokio::test]
async fn the_running_controller_reacts_to_what_it_watches() {
    let w = world().await;
    let controller = RunningController::start_with_gateway(&w, controller_settings(&w)).await;
    assert_eq!(
        w.rows("Logical_Router_Policy", "gateway1", "priority,nexthops"),
        ["29100,10.16.0.5"]
    );
    let lease = w
        .api
        .get(
            "coordination.k8s.io",
            "leases",
            "kube-system",
            "veg-controller",
        )
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "test");
    controller.stop().await;
}

/// The running controller's `/metrics` as a real Prometheus (Debian's) scrapes it, in a namespace of the test's
/// own: leadership, the reconciles, the gateway's readiness and instances, and the Northbound transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_running_controllers_metrics() {
    if skip_unless_root() {
        return;
    }
    let w = world().await;
    let ns = Netns::new(&unique("vegctl"));
    let mut settings = controller_settings(&w);
    settings.metrics = Some(ns.run(|| std::net::TcpListener::bind(METRICS).unwrap()));
    let controller = RunningController::start_with_gateway(&w, settings).await;
    let _prometheus = Prometheus::start(&ns, METRICS, None);
    // Prometheus' API is asked from blocking threads; the controller runs on the other worker.
    let seen = |promql: &str| {
        tokio::task::block_in_place(|| prometheus::assert_eventually(&ns, promql, 1.0))
    };
    seen("up{job=\"veg\"}");
    seen("veg_controller_leader");
    seen(
        "veg_controller_gateway_ready{namespace=\"default\",name=\"gateway1\",reason=\"ReconcileSuccess\"}",
    );
    seen("veg_controller_gateway_instances{name=\"gateway1\",ready=\"true\"}");
    seen("count(veg_controller_reconciles_total > 0)");
    seen("count(veg_controller_reconcile_duration_seconds_count > 0)");
    seen("count(veg_controller_ovn_transactions_total{result=\"success\"} > 0)");
    seen("count(veg_controller_ovn_transaction_operations_sum > 0)");
    controller.stop().await;
}

/// Where the controller serves its metrics in the test's namespace.
const METRICS: &str = "127.0.0.1:8080";

#[tokio::test]
async fn a_cluster_without_the_instances_binding_gets_a_condition_that_says_what_to_install() {
    let w = world().await;
    Api::<ClusterRoleBinding>::all(w.client.clone())
        .delete("veg-gateway", &DeleteParams::default())
        .await
        .unwrap();
    w.gateway(GATEWAY1).await;
    w.reconcile("gateway1").await;
    w.reconcile("gateway1").await;
    assert_eq!(
        w.condition("gateway1", "Ready"),
        ("False".into(), "ReconcileWorkloadFailed".into())
    );
    let message = w.status("gateway1")["conditions"][2]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("kubectl apply -k deploy/"), "{message}");
    assert!(
        w.api.get("apps", "deployments", NS, "gateway1").is_none(),
        "instances that could not read their policy"
    );
}

/// On a server with bfd_sessions (OVN >= 23.09), trafficPolicy Local keeps each node's pods on the instance of
/// their node (29150, matched by the node's port group from its port_name annotation), as the reference does;
/// the LocalTrafficPolicy condition says so, and says why not while the instance's node has no port annotation.
#[tokio::test]
async fn traffic_policy_local_on_a_newer_ovn_adds_a_policy_per_node() {
    let w = world_on(NbServer::start_with_bfd_sessions()).await;
    w.gateway(&GATEWAY1.replace("  replicas: 1\n", "  replicas: 1\n  trafficPolicy: Local\n"))
        .await;
    w.reconcile("gateway1").await;
    w.instance(
        "gateway1",
        "gateway1-0",
        "node1",
        "10.16.0.5",
        "172.17.0.10",
    )
    .await;
    w.reconcile("gateway1").await;
    assert_eq!(
        w.condition("gateway1", "LocalTrafficPolicy"),
        ("False".into(), "NodePortUnknown".into())
    );
    Api::<Node>::all(w.client.clone())
        .patch(
            "node1",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "annotations": { "ovn.kubernetes.io/port_name": "node-node1" } } })),
        )
        .await
        .unwrap();
    w.reconcile("gateway1").await;
    assert_eq!(
        w.rows(
            "Logical_Router_Policy",
            "gateway1",
            "priority,match,nexthops"
        ),
        [
            "29100,ip4.src == 10.16.0.0/16,10.16.0.5",
            "29150,ip4.src == $node.node1_ip4 && (ip4.src == 10.16.0.0/16),10.16.0.5",
        ]
    );
    assert_eq!(w.status("gateway1")["ready"], true);
    assert_eq!(
        w.condition("gateway1", "LocalTrafficPolicy"),
        ("True".into(), "Honoured".into())
    );
}

/// Where Local cannot be honoured (OVN before 23.09 here), the gateway still works, spread over every instance,
/// and a condition says why; a Cluster gateway has no such condition.
#[tokio::test]
async fn traffic_policy_local_on_an_older_ovn_is_a_condition_that_says_why() {
    let w = world().await;
    w.gateway(&GATEWAY1.replace("  replicas: 1\n", "  replicas: 1\n  trafficPolicy: Local\n"))
        .await;
    // The first reconcile adds the finalizer, the second does the work.
    w.reconcile("gateway1").await;
    w.reconcile("gateway1").await;
    assert_eq!(
        w.condition("gateway1", "LocalTrafficPolicy"),
        ("False".into(), "OvnTooOld".into())
    );
    let conditions = w.status("gateway1")["conditions"].clone();
    let local = conditions
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "LocalTrafficPolicy")
        .unwrap();
    assert!(
        local["message"].as_str().unwrap().contains("OVN 23.09"),
        "{local}"
    );
    w.gateway(&GATEWAY1.replace("gateway1", "cluster1")).await;
    w.reconcile("cluster1").await;
    w.reconcile("cluster1").await;
    let types: Vec<Value> = w.status("cluster1")["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].clone())
        .collect();
    assert_eq!(types, [json!("Init"), json!("Validated"), json!("Ready")]);
}

/// Every row of `table` in `nb` tagged `tag`=`value`, as JSON without its identity: `_uuid`, `_version`, and each
/// reference to another row reduced to "uuid" (row UUIDs differ between databases; what matters is that a
/// reference is there).
fn tagged_rows(nb: &NbServer, table: &str, tag: &str, value: &str) -> Vec<String> {
    fn strip(value: &Value) -> Value {
        match value {
            Value::Array(items) if items.len() == 2 && items[0] == "uuid" => json!("uuid"),
            Value::Array(items) => Value::Array(items.iter().map(strip).collect()),
            other => other.clone(),
        }
    }
    let found: Value = serde_json::from_str(&nb.nbctl(&[
        "--format=json",
        "find",
        table,
        &format!("external_ids:{tag}={value}"),
    ]))
    .unwrap();
    let headings: Vec<String> = serde_json::from_value(found["headings"].clone()).unwrap();
    let mut rows: Vec<String> = found["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let columns: serde_json::Map<String, Value> = headings
                .iter()
                .zip(row.as_array().unwrap())
                .filter(|(name, _)| !name.starts_with('_'))
                .map(|(name, value)| (name.clone(), strip(value)))
                .collect();
            Value::Object(columns).to_string()
        })
        .collect();
    rows.sort();
    rows
}

// Long: one scenario (the controller programs, a file of the same resources is applied by hand, every row
// compared).
#[tokio::test]
async fn the_controller_and_veg_ovn_write_the_same_rows_for_the_same_resources() {
    // The contract's two examples: gateway1 on the default VPC, gateway2 on vpc1 with BFD; the controller
    // programs them into one database.
    let w = world().await;
    w.gateway(GATEWAY1).await;
    w.gateway(
        "metadata: {name: gateway2}\nspec:\n  vpc: vpc1\n  replicas: 2\n  internalSubnet: subnet1\n  externalSubnet: macvlan1\n  \
         bfd: {enabled: true, minRX: 100, minTX: 100, multiplier: 3}\n  policies: [{snat: true, ipBlocks: [192.168.0.0/24], subnets: [subnet1]}]\n",
    )
    .await;
    for _ in 0..2 {
        w.reconcile("gateway1").await;
        w.reconcile("gateway2").await;
    }
    w.instance(
        "gateway1",
        "gateway1-0",
        "node1",
        "10.16.0.5",
        "172.17.0.10",
    )
    .await;
    w.instance(
        "gateway2",
        "gateway2-0",
        "node1",
        "192.168.0.4",
        "172.17.0.11",
    )
    .await;
    w.instance(
        "gateway2",
        "gateway2-1",
        "node2",
        "192.168.0.5",
        "172.17.0.12",
    )
    .await;
    w.reconcile("gateway1").await;
    w.reconcile("gateway2").await;
    for gateway in ["gateway1", "gateway2"] {
        assert_eq!(
            w.status(gateway)["ready"],
            true,
            "{gateway}: {}",
            w.status(gateway)
        );
    }

    // The same resources as one file, as a user would hand them to kubectl: the gateways as the controller left
    // them (their status names the instances), vpc1 (its status names the nodes its BFD port is bound to, as
    // Kube-OVN writes it) and the subnets.
    let mut documents = Vec::new();
    for name in ["gateway1", "gateway2"] {
        let mut gateway = w
            .api
            .get("kubeovn.io", "vpc-egress-gateways", NS, name)
            .unwrap();
        gateway["kind"] = json!("VpcEgressGateway");
        documents.push(gateway);
    }
    documents.push(json!({ "kind": "Vpc", "metadata": { "name": "vpc1" },
        "spec": { "bfdPort": { "enabled": true, "ip": "10.255.255.255" } },
        "status": { "bfdPort": { "nodes": ["node1", "node2"] } } }));
    for name in ["ovn-default", "subnet1", "macvlan1"] {
        let mut subnet = w.api.get("kubeovn.io", "subnets", "", name).unwrap();
        subnet["kind"] = json!("Subnet");
        documents.push(subnet);
    }
    let yaml: Vec<String> = documents
        .iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect();
    let file = std::env::temp_dir()
        .join(veg_testbed::unique("veg-both-gateways-"))
        .with_extension("yaml");
    std::fs::write(&file, yaml.join("---\n")).unwrap();

    // veg ovn apply -f into a second database with the same routers.
    let by_hand = NbServer::start();
    for router in ["ovn-cluster", "vpc1", "vpc2"] {
        by_hand.nbctl(&["lr-add", router]);
    }
    veg_testbed::command::run(std::process::Command::new(env!("CARGO_BIN_EXE_veg")).args([
        "ovn",
        "apply",
        "-f",
        file.to_str().unwrap(),
        "--nb",
        &by_hand.unix,
    ]));
    std::fs::remove_file(&file).unwrap();

    let mut compared = 0;
    for gateway in ["gateway1", "gateway2"] {
        for table in GATEWAY_TABLES {
            let id = format!("{NS}/{gateway}");
            let controller = tagged_rows(&w.nb, table, "vpc-egress-gateway", &id);
            let file = tagged_rows(&by_hand, table, "vpc-egress-gateway", &id);
            assert_eq!(controller, file, "{table} rows of {gateway}");
            compared += controller.len();
        }
    }
    for table in ["Logical_Router_Port", "HA_Chassis_Group", "HA_Chassis"] {
        let controller = tagged_rows(&w.nb, table, "vpc-bfd-port", "vpc1");
        assert!(!controller.is_empty(), "no {table} row for vpc1's BFD port");
        assert_eq!(
            controller,
            tagged_rows(&by_hand, table, "vpc-bfd-port", "vpc1"),
            "{table}"
        );
        compared += controller.len();
    }
    assert!(compared >= 12, "only {compared} rows compared");
}
