//! The gateway's Deployment, as the reference builds it (docs/contract.md), running `veg gateway` instead of
//! iptables: name <prefix><name>; labels app=vpc-egress-gateway and ovn.kubernetes.io/vpc-egress-gateway=<name>;
//! owned by the gateway; RollingUpdate with maxUnavailable 1 and maxSurge 0; instances on distinct nodes;
//! nodeSelector terms OR-ed into node affinity; the annotations Kube-OVN's CNI reads (logical switch, fixed IP
//! pools, the external network attachment, routes).

use std::collections::BTreeMap;

use ipnet::IpNet;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
            HostPathVolumeSource, ObjectFieldSelector, PodReadinessGate, PodSecurityContext,
            PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext,
            Sysctl, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{scheduling, validation::Resolved};
use crate::crd::{
    gateway::{Bandwidth, VpcEgressGateway, parse_source},
    network::{Subnet, Vpc},
};

pub const APP_LABEL: &str = "app";
pub const APP: &str = "vpc-egress-gateway";
pub const GATEWAY_LABEL: &str = "ovn.kubernetes.io/vpc-egress-gateway";
pub const HEALTH_PORT: i32 = 8080;
/// The instance's own sockets take their ephemeral ports from this small block (net.ipv4.ip_local_port_range, a
/// namespaced sysctl Kubernetes counts as safe), so the agent translates into every port below it: 1024-60999,
/// 59,976 ports toward each remote endpoint.
pub const INSTANCE_EPHEMERAL_PORTS: &str = "61000 65535";
/// What an instance requests when the gateway does not say (spec.resources): a fifth of a CPU, and memory for
/// the default flow table (262,144 translations, about 80 MiB, charged to the pod that creates it) with the
/// agent beside it. Requests without limits make the pods Burstable: evicted after BestEffort pods, never
/// throttled or OOM-killed for a burst of traffic.
pub const DEFAULT_REQUESTS: [(&str, &str); 2] = [("cpu", "200m"), ("memory", "256Mi")];
/// Seconds the kubelet leaves a stopping instance after its drain: the agent detaches in well under one.
pub const DETACH_SECONDS: i64 = 10;
/// The pods' readiness gate: the controller sets it True once OVN routes to the instance (readiness_gate.rs).
pub const ROUTED_CONDITION: &str = "veg.kubeovn.io/routed";
/// The instances' service account in each gateway's namespace.
pub const GATEWAY_SERVICE_ACCOUNT: &str = "veg-gateway";

/// What the workload is built from.
pub struct Inputs<'a> {
    pub gateway: &'a VpcEgressGateway,
    pub internal_subnet: &'a Subnet,
    pub external_subnet: &'a Subnet,
    /// The gateway's Vpc (for its BFD port), when it has one.
    pub vpc: Option<&'a Vpc>,
    /// The image when the gateway does not name one.
    pub default_image: &'a str,
}

/// The Deployment of a gateway that validation resolved.
pub fn resolved_deployment(
    gateway: &VpcEgressGateway,
    resolved: &Resolved,
    default_image: &str,
) -> Result<Deployment, String> {
    let inputs = Inputs {
        gateway,
        internal_subnet: resolved.internal_subnet,
        external_subnet: resolved.external_subnet,
        vpc: resolved.vpc,
        default_image,
    };
    deployment(&inputs, &resolved.vpc_cidrs)
}

/// An unprivileged container with these capabilities and no others.
fn only_capabilities(capabilities: &[&str]) -> SecurityContext {
    SecurityContext {
        privileged: Some(false),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            add: Some(capabilities.iter().map(|c| c.to_string()).collect()),
            drop: Some(vec!["ALL".into()]),
        }),
        ..Default::default()
    }
}

pub fn deployment_name(gateway: &VpcEgressGateway) -> String {
    format!(
        "{}{}",
        gateway.spec.prefix.as_deref().unwrap_or(""),
        gateway.name_any()
    )
}

pub fn labels(gateway: &VpcEgressGateway) -> BTreeMap<String, String> {
    BTreeMap::from([
        (APP_LABEL.into(), APP.into()),
        (GATEWAY_LABEL.into(), gateway.name_any()),
    ])
}

/// What the instance routes back through the VPC: every subnet of the VPC, and the policies' ipBlocks that no
/// subnet covers. Policies that change within the VPC's subnets leave the Deployment as it is: the agent follows
/// them live (`--gateway`), so a policy edit never restarts the instances.
fn vpc_routes(gateway: &VpcEgressGateway, vpc_cidrs: &[String]) -> Vec<String> {
    let subnets: Vec<IpNet> = vpc_cidrs.iter().filter_map(|c| c.parse().ok()).collect();
    let mut routes: Vec<String> = vpc_cidrs.to_vec();
    for block in gateway.spec.policies.iter().flat_map(|p| &p.ip_blocks) {
        let net = parse_source(block);
        let covered = net.is_ok_and(|net| subnets.iter().any(|s| s.contains(&net)));
        if !covered && !routes.contains(block) {
            routes.push(block.clone());
        }
    }
    routes
}

/// The Deployment, or why it cannot be built (reported as a condition, never a crash).
pub fn deployment(inputs: &Inputs, vpc_cidrs: &[String]) -> Result<Deployment, String> {
    let gateway = inputs.gateway;
    let bfd_ip = bfd_peer_ips(inputs);
    let annotations = pod_annotations(inputs, vpc_cidrs, bfd_ip.as_deref())?;
    let container = gateway_container(inputs, agent_args(gateway, bfd_ip.as_deref()));
    let init = forwarding_off_container(container.image.clone());
    let labels = labels(gateway);
    Ok(Deployment {
        metadata: ObjectMeta {
            name: Some(deployment_name(gateway)),
            namespace: gateway.namespace(),
            labels: Some(labels.clone()),
            owner_references: gateway.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(gateway.spec.replicas),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            // One instance at a time, never one more than asked for (fixed addresses may not stretch to it).
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(1)),
                    max_surge: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(pod_spec(
                    gateway,
                    labels,
                    init,
                    container,
                    serves_ipv6(inputs),
                )),
            },
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The VPC's BFD port addresses ("v4", "v6" or "v4,v6") the instances run BFD toward, when BFD is on.
fn bfd_peer_ips(inputs: &Inputs) -> Option<String> {
    inputs
        .vpc
        .and_then(|v| v.spec.bfd_port.as_ref())
        .filter(|p| p.enabled && inputs.gateway.spec.bfd.enabled)
        .map(|p| p.ip.clone())
}

/// What Kube-OVN's CNI and Multus read from the pod: its subnets, fixed addresses, the external attachment, and
/// the routes: the VPC (and its BFD port) back through the VPC, everything else out of net1.
fn pod_annotations(
    inputs: &Inputs,
    vpc_cidrs: &[String],
    bfd_ip: Option<&str>,
) -> Result<BTreeMap<String, String>, String> {
    let spec = &inputs.gateway.spec;
    let provider = &inputs.external_subnet.spec.provider;
    let network = inputs.external_subnet.network_attachment().ok_or_else(|| {
        format!("the external subnet's provider {provider:?} is not <attachment>.<namespace>")
    })?;
    let internal_gateway = &inputs.internal_subnet.spec.gateway;
    let via_internal =
        |dst: &str| gateway_for(dst, internal_gateway).map(|gw| json!({ "dst": dst, "gw": gw }));
    let mut internal_routes: Vec<serde_json::Value> = bfd_ip
        .iter()
        .flat_map(|ips| ips.split(','))
        .filter_map(|ip| via_internal(ip.trim()))
        .collect();
    // The internal subnet itself is on-link on eth0: a route through its own gateway would replace that.
    let on_link: Vec<&str> = inputs
        .internal_subnet
        .spec
        .cidr_block
        .split(',')
        .map(str::trim)
        .collect();
    internal_routes.extend(
        vpc_routes(inputs.gateway, vpc_cidrs)
            .iter()
            .filter(|cidr| !on_link.contains(&cidr.as_str()))
            .filter_map(|cidr| via_internal(cidr)),
    );
    // A default route per family the external subnet has a gateway for.
    let external_routes: Vec<serde_json::Value> = ["0.0.0.0/0", "::/0"]
        .into_iter()
        .filter_map(|dst| {
            gateway_for(dst, &inputs.external_subnet.spec.gateway)
                .map(|gw| json!({ "dst": dst, "gw": gw }))
        })
        .collect();
    let mut annotations = BTreeMap::from([
        (
            "ovn.kubernetes.io/logical_switch".to_owned(),
            inputs.internal_subnet.name_any(),
        ),
        ("k8s.v1.cni.cncf.io/networks".to_owned(), network),
        (
            "ovn.kubernetes.io/routes".to_owned(),
            serde_json::Value::from(internal_routes).to_string(),
        ),
        (
            format!("{provider}.kubernetes.io/routes"),
            serde_json::Value::from(external_routes).to_string(),
        ),
        (
            format!("{provider}.kubernetes.io/logical_switch"),
            inputs.external_subnet.name_any(),
        ),
    ]);
    // Prometheus' conventional discovery annotations; deploy/monitoring has a PodMonitor for the Operator.
    annotations.extend([
        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
        ("prometheus.io/port".to_owned(), HEALTH_PORT.to_string()),
        ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
    ]);
    if !spec.internal_ips.is_empty() {
        annotations.insert(
            "ovn.kubernetes.io/ip_pool".into(),
            spec.internal_ips.join(";"),
        );
    }
    if !spec.external_ips.is_empty() {
        annotations.insert(
            format!("{provider}.kubernetes.io/ip_pool"),
            spec.external_ips.join(";"),
        );
    }
    Ok(annotations)
}

/// The gateway of `dst`'s family among a subnet's gateways ("v4", "v6" or "v4,v6", as Kube-OVN writes them): a
/// route's destination and gateway must be of one family, as the reference splits them. None when the subnet has
/// no gateway of that family (the route is then left out).
fn gateway_for(dst: &str, gateways: &str) -> Option<String> {
    let ipv6 = parse_source(dst).ok()?.addr().is_ipv6();
    gateways
        .split(',')
        .map(str::trim)
        .find(|gw| {
            gw.parse::<std::net::IpAddr>()
                .is_ok_and(|gw| gw.is_ipv6() == ipv6)
        })
        .map(str::to_owned)
}

/// `veg gateway`'s arguments in an instance.
fn agent_args(gateway: &VpcEgressGateway, bfd_ip: Option<&str>) -> Vec<String> {
    let namespace = gateway.namespace().unwrap_or_default();
    let name = gateway.name_any();
    let mut args: Vec<String> = [
        "gateway",
        // Names the pins in /sys/fs/bpf/veg/: bpffs refuses '.', Kubernetes names never have '_'.
        "--name",
        &format!("{namespace}_{name}"),
        "--internal-interface",
        "eth0",
        "--external-interface",
        "net1",
        "--external-ip",
        "$(EXTERNAL_IP)",
        "--health-listen",
        &format!("0.0.0.0:{HEALTH_PORT}"),
        // The policy comes from the resource and follows it live.
        "--gateway",
        &format!("{namespace}/{name}"),
        "--drain-seconds",
        &gateway.spec.drain_seconds.max(0).to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(bandwidth) = &gateway.spec.bandwidth {
        for (flag, rate) in [
            ("--egress-rate", &bandwidth.egress),
            ("--ingress-rate", &bandwidth.ingress),
        ] {
            if let Some(rate) = rate {
                args.extend([flag.to_owned(), Bandwidth::argument(rate)]);
            }
        }
    }
    if let Some(ips) = bfd_ip {
        let bfd = &gateway.spec.bfd;
        for ip in ips.split(',') {
            args.extend(["--bfd-peer".to_owned(), ip.to_owned()]);
        }
        args.extend([
            "--bfd-min-rx".to_owned(),
            bfd.min_rx.to_string(),
            "--bfd-min-tx".to_owned(),
            bfd.min_tx.to_string(),
            "--bfd-multiplier".to_owned(),
            bfd.multiplier.to_string(),
        ]);
    }
    args
}

fn probe(path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(HEALTH_PORT),
            ..Default::default()
        }),
        period_seconds: Some(2),
        ..Default::default()
    }
}

/// The instance's container: the agent, its external address from the pod's annotation, bpffs, health probes.
fn gateway_container(inputs: &Inputs, args: Vec<String>) -> Container {
    let provider = &inputs.external_subnet.spec.provider;
    Container {
        name: "gateway".into(),
        image: Some(
            inputs
                .gateway
                .spec
                .image
                .clone()
                .unwrap_or_else(|| inputs.default_image.to_owned()),
        ),
        command: Some(vec!["veg".into()]),
        args: Some(args),
        // Health probes and /metrics; named for deploy/monitoring's PodMonitor.
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: HEALTH_PORT,
            ..Default::default()
        }]),
        // The external address Kube-OVN's IPAM gave net1, read from the pod's own annotation; and the pod's
        // name, namespace and node, by which the agent tells when its pinned state may go (node_pins.rs) and
        // names itself in translation records.
        env: Some(vec![
            downward_api(
                "EXTERNAL_IP",
                &format!("metadata.annotations['{provider}.kubernetes.io/ip_address']"),
            ),
            downward_api("POD_NAME", "metadata.name"),
            downward_api("POD_NAMESPACE", "metadata.namespace"),
            downward_api("NODE_NAME", "spec.nodeName"),
        ]),
        // Loading and attaching BPF programs, owning forwarding, and sending the slow path's packets through a
        // raw socket: these capabilities and no more. Without a seccomp profile: the runtimes' default ones allow
        // bpf(2) only with CAP_SYS_ADMIN (podman's and older containerd's), which would be a far larger grant.
        security_context: Some(SecurityContext {
            seccomp_profile: Some(SeccompProfile {
                type_: "Unconfined".into(),
                ..Default::default()
            }),
            ..only_capabilities(&["BPF", "NET_ADMIN", "NET_RAW", "PERFMON", "SYS_RESOURCE"])
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "bpffs".into(),
            mount_path: "/sys/fs/bpf".into(),
            ..Default::default()
        }]),
        resources: Some(resources(inputs.gateway)),
        readiness_probe: Some(probe("/readyz")),
        liveness_probe: Some(Probe {
            initial_delay_seconds: Some(5),
            ..probe("/livez")
        }),
        ..Default::default()
    }
}

/// An environment variable set from a field of the pod (the downward API).
fn downward_api(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The gateway's resources as given, or DEFAULT_REQUESTS.
fn resources(gateway: &VpcEgressGateway) -> ResourceRequirements {
    gateway
        .spec
        .resources
        .clone()
        .unwrap_or_else(|| ResourceRequirements {
            requests: Some(
                DEFAULT_REQUESTS
                    .iter()
                    .map(|(name, amount)| (name.to_string(), Quantity(amount.to_string())))
                    .collect(),
            ),
            ..Default::default()
        })
}

/// Before the agent: the pod's namespace inherits IPv4 forwarding on from the node, and nothing may cross between
/// the interfaces untranslated until the agent's programs are attached.
fn forwarding_off_container(image: Option<String>) -> Container {
    Container {
        name: "forwarding-off".into(),
        image,
        command: Some(vec!["veg".into()]),
        args: Some(
            [
                "gateway",
                "--init",
                "--internal-interface",
                "eth0",
                "--external-interface",
                "net1",
            ]
            .map(String::from)
            .to_vec(),
        ),
        security_context: Some(only_capabilities(&["NET_ADMIN"])),
        ..Default::default()
    }
}

/// Whether the instances translate IPv6: both their subnets have IPv6 addresses.
fn serves_ipv6(inputs: &Inputs) -> bool {
    [inputs.internal_subnet, inputs.external_subnet]
        .iter()
        .all(|subnet| subnet.spec.cidr_block.contains(':'))
}

/// The sysctl the agent's IPv6 route lookups need (the loopback interface's IPv6 forwarding; the kernel's own
/// IPv6 forwarding stays off). A pod cannot write /proc/sys, and Kubernetes does not count this one as safe: the
/// kubelets of the gateway's nodes must allow it (`--allowed-unsafe-sysctls=net.ipv6.conf.lo.forwarding`), or the
/// pod is refused with SysctlForbidden, which says so.
pub const IPV6_LOOKUP_SYSCTL: &str = "net.ipv6.conf.lo.forwarding";

/// The pod: its service account, the instances' ephemeral port range (and IPv6 route lookups when it translates
/// IPv6), one instance per node, the gateway's node selector, bpffs from the host.
fn pod_spec(
    gateway: &VpcEgressGateway,
    labels: BTreeMap<String, String>,
    init: Container,
    container: Container,
    ipv6: bool,
) -> PodSpec {
    let mut sysctls = vec![Sysctl {
        name: "net.ipv4.ip_local_port_range".into(),
        value: INSTANCE_EPHEMERAL_PORTS.into(),
    }];
    if ipv6 {
        sysctls.push(Sysctl {
            name: IPV6_LOOKUP_SYSCTL.into(),
            value: "1".into(),
        });
    }
    PodSpec {
        // The drain, and time for the agent to detach after it before the kubelet kills it.
        termination_grace_period_seconds: Some(
            i64::from(gateway.spec.drain_seconds.max(0)) + DETACH_SECONDS,
        ),
        // May read its gateway and the subnets (deploy/gateway/rbac.yaml; the controller binds it).
        service_account_name: Some(GATEWAY_SERVICE_ACCOUNT.into()),
        security_context: Some(PodSecurityContext {
            sysctls: Some(sysctls),
            ..Default::default()
        }),
        init_containers: Some(vec![init]),
        containers: vec![container],
        readiness_gates: Some(vec![PodReadinessGate {
            condition_type: ROUTED_CONDITION.into(),
        }]),
        affinity: Some(scheduling::affinity(gateway, labels)),
        tolerations: (!gateway.spec.tolerations.is_empty())
            .then(|| gateway.spec.tolerations.clone()),
        volumes: Some(vec![Volume {
            name: "bpffs".into(),
            host_path: Some(HostPathVolumeSource {
                path: "/sys/fs/bpf".into(),
                type_: Some("Directory".into()),
            }),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{gateway::VpcEgressGatewaySpec, network::SubnetSpec};

    fn subnet(name: &str, spec: &str) -> Subnet {
        Subnet::new(name, serde_yaml::from_str::<SubnetSpec>(spec).unwrap())
    }

    fn gateway2() -> VpcEgressGateway {
        let spec: VpcEgressGatewaySpec = serde_yaml::from_str(
            "vpc: vpc1\nreplicas: 2\nprefix: veg-\ninternalSubnet: subnet1\nexternalSubnet: macvlan1\nbfd: {enabled: true, minRX: 300}\n\
             internalIPs: [192.168.0.2, 192.168.0.3]\npolicies: [{snat: true, subnets: [subnet1]}, {ipBlocks: [192.168.9.0/24]}]\n\
             nodeSelector: [{matchLabels: {zone: a}}, {matchExpressions: [{key: pool, operator: In, values: [egress]}]}]\n\
             bandwidth: {egress: 100, ingress: 1Gi}\n",
        )
        .unwrap();
        let mut gateway = VpcEgressGateway::new("gateway2", spec);
        gateway.metadata.namespace = Some("default".into());
        gateway.metadata.uid = Some("u-1".into());
        gateway
    }

    fn build() -> Deployment {
        build_for(&gateway2())
    }

    /// The Deployment of `gateway` on vpc1 (BFD port on, subnets 192.168.0.0/24 and 192.168.1.0/24).
    fn build_for(gateway: &VpcEgressGateway) -> Deployment {
        build_on(
            gateway,
            &Network {
                internal: ("192.168.0.0/24", "192.168.0.1"),
                external: ("172.17.0.0/16", "172.17.0.1"),
                bfd_ip: "10.255.255.255",
                vpc_cidrs: &["192.168.0.0/24", "192.168.1.0/24"],
            },
        )
    }

    /// The subnets (CIDR blocks and gateways, as Kube-OVN writes them: "v4", "v6" or "v4,v6"), the VPC's BFD
    /// port address and the VPC's subnets.
    struct Network<'a> {
        internal: (&'a str, &'a str),
        external: (&'a str, &'a str),
        bfd_ip: &'a str,
        vpc_cidrs: &'a [&'a str],
    }

    fn build_on(gateway: &VpcEgressGateway, network: &Network) -> Deployment {
        let (cidr, gw) = network.internal;
        let internal = subnet(
            "subnet1",
            &format!("cidrBlock: \"{cidr}\"\ngateway: \"{gw}\"\nvpc: vpc1\n"),
        );
        let (cidr, gw) = network.external;
        let external = subnet(
            "macvlan1",
            &format!("cidrBlock: \"{cidr}\"\ngateway: \"{gw}\"\nprovider: eth1.default\n"),
        );
        let vpc: Vpc = serde_yaml::from_str(&format!(
            "apiVersion: kubeovn.io/v1\nkind: Vpc\nmetadata: {{name: vpc1}}\nspec: {{bfdPort: {{enabled: true, ip: \"{}\"}}}}\n",
            network.bfd_ip
        ))
        .unwrap();
        let vpc_cidrs: Vec<String> = network.vpc_cidrs.iter().map(|c| c.to_string()).collect();
        let inputs = Inputs {
            gateway,
            internal_subnet: &internal,
            external_subnet: &external,
            vpc: Some(&vpc),
            default_image: "veg:dev",
        };
        deployment(&inputs, &vpc_cidrs).unwrap()
    }

    /// The whole Deployment, field by field, against the checked-in YAML a reviewer reads. After an intended
    /// change, regenerate it: VEG_BLESS=1 cargo test -p veg-userspace --lib workload.
    #[test]
    fn the_whole_deployment_is_as_reviewed() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/controller/testdata/deployment-gateway2.yaml"
        );
        let produced = serde_yaml::to_string(&build()).unwrap();
        if std::env::var_os("VEG_BLESS").is_some() {
            std::fs::write(path, &produced).unwrap();
        }
        let reviewed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            produced == reviewed,
            "the Deployment differs from {path}; if intended, regenerate it with \
             VEG_BLESS=1 cargo test -p veg-userspace --lib workload\n--- produced:\n{produced}"
        );
    }

    #[test]
    fn the_deployment_follows_the_reference() {
        let d = build();
        assert_eq!(d.metadata.name.as_deref(), Some("veg-gateway2"));
        let labels = d.metadata.labels.clone().unwrap();
        assert_eq!(labels["app"], "vpc-egress-gateway");
        assert_eq!(labels["ovn.kubernetes.io/vpc-egress-gateway"], "gateway2");
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("VpcEgressGateway", "gateway2", Some(true))
        );
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(2));
        let rolling = spec.strategy.unwrap().rolling_update.unwrap();
        assert_eq!(
            (rolling.max_unavailable, rolling.max_surge),
            (Some(IntOrString::Int(1)), Some(IntOrString::Int(0)))
        );
        let pod = spec.template.spec.unwrap();
        let affinity = pod.affinity.unwrap();
        let anti = &affinity
            .pod_anti_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()[0];
        assert_eq!(anti.topology_key, "kubernetes.io/hostname");
        let terms = affinity
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 2, "nodeSelector entries are OR-ed terms");
        assert_eq!(terms[0].match_expressions.as_ref().unwrap()[0].key, "zone");
    }

    /// The pod template's annotations.
    fn annotations_of(d: Deployment) -> BTreeMap<String, String> {
        d.spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()
    }

    #[test]
    fn the_cni_annotations_place_both_interfaces() {
        let d = build();
        let annotations = annotations_of(d);
        assert_eq!(annotations["ovn.kubernetes.io/logical_switch"], "subnet1");
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(annotations["prometheus.io/port"], "8080");
        assert_eq!(annotations["prometheus.io/path"], "/metrics");
        assert_eq!(annotations["k8s.v1.cni.cncf.io/networks"], "default/eth1");
        assert_eq!(
            annotations["ovn.kubernetes.io/ip_pool"],
            "192.168.0.2;192.168.0.3"
        );
        assert_eq!(
            annotations["eth1.default.kubernetes.io/logical_switch"],
            "macvlan1"
        );
        let routes: serde_json::Value =
            serde_json::from_str(&annotations["ovn.kubernetes.io/routes"]).unwrap();
        // The BFD port, every other subnet of the VPC, and the ipBlock no subnet covers: back through the VPC.
        // The internal subnet 192.168.0.0/24 is on-link.
        assert_eq!(
            routes,
            json!([
                { "dst": "10.255.255.255", "gw": "192.168.0.1" },
                { "dst": "192.168.1.0/24", "gw": "192.168.0.1" },
                { "dst": "192.168.9.0/24", "gw": "192.168.0.1" },
            ])
        );
        assert_eq!(
            annotations["eth1.default.kubernetes.io/routes"],
            r#"[{"dst":"0.0.0.0/0","gw":"172.17.0.1"}]"#
        );
    }

    /// A dual-stack VPC: every route goes through the gateway of its own family, and net1 gets a default route
    /// per family.
    #[test]
    fn routes_go_through_the_gateway_of_their_family() {
        let d = build_on(
            &gateway2(),
            &Network {
                internal: ("192.168.0.0/24,fd00:10::/64", "192.168.0.1,fd00:10::1"),
                external: ("172.17.0.0/16,fd00:17::/64", "172.17.0.1,fd00:17::1"),
                bfd_ip: "10.255.255.255,fd00:ff::ff",
                vpc_cidrs: &[
                    "192.168.0.0/24",
                    "fd00:10::/64",
                    "192.168.1.0/24",
                    "fd00:11::/64",
                ],
            },
        );
        // The instances translate IPv6: the pod asks for the sysctl their IPv6 route lookups need.
        let sysctls = |d: &Deployment| -> Vec<String> {
            let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
            let context = pod.security_context.as_ref().unwrap();
            context
                .sysctls
                .iter()
                .flatten()
                .map(|s| s.name.clone())
                .collect()
        };
        assert!(sysctls(&d).contains(&IPV6_LOOKUP_SYSCTL.to_owned()));
        assert!(!sysctls(&build()).contains(&IPV6_LOOKUP_SYSCTL.to_owned()));
        let annotations = annotations_of(d);
        let routes: serde_json::Value =
            serde_json::from_str(&annotations["ovn.kubernetes.io/routes"]).unwrap();
        assert_eq!(
            routes,
            json!([
                { "dst": "10.255.255.255", "gw": "192.168.0.1" },
                { "dst": "fd00:ff::ff", "gw": "fd00:10::1" },
                { "dst": "192.168.1.0/24", "gw": "192.168.0.1" },
                { "dst": "fd00:11::/64", "gw": "fd00:10::1" },
                { "dst": "192.168.9.0/24", "gw": "192.168.0.1" },
            ])
        );
        let external: serde_json::Value =
            serde_json::from_str(&annotations["eth1.default.kubernetes.io/routes"]).unwrap();
        assert_eq!(
            external,
            json!([
                { "dst": "0.0.0.0/0", "gw": "172.17.0.1" },
                { "dst": "::/0", "gw": "fd00:17::1" },
            ])
        );
    }

    #[test]
    fn a_route_without_a_gateway_of_its_family_is_left_out() {
        assert_eq!(gateway_for("fd00::/64", "10.0.0.1"), None);
        assert_eq!(
            gateway_for("10.0.0.0/8", "fd00::1, 10.0.0.1").as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(gateway_for("not an address", "10.0.0.1"), None);
    }

    #[test]
    fn a_policy_edit_within_the_vpc_leaves_the_deployment_alone() {
        let before = build();
        let mut gateway = gateway2();
        gateway.spec.policies[0].snat = false;
        gateway.spec.policies[1].ip_blocks = vec!["192.168.1.128/25".into(), "192.168.0.7".into()];
        let after = build_for(&gateway);
        let template = |d: Deployment| d.spec.unwrap().template;
        let (before, after) = (template(before), template(after));
        let routes = |t: &PodTemplateSpec| {
            t.metadata.as_ref().unwrap().annotations.as_ref().unwrap()["ovn.kubernetes.io/routes"]
                .clone()
        };
        assert_ne!(
            routes(&before),
            routes(&after),
            "the uncovered 192.168.9.0/24 is gone"
        );
        let mut after_with_old_routes = after.clone();
        after_with_old_routes
            .metadata
            .as_mut()
            .unwrap()
            .annotations
            .as_mut()
            .unwrap()
            .insert("ovn.kubernetes.io/routes".into(), routes(&before));
        assert_eq!(
            before, after_with_old_routes,
            "only the routes of sources outside the VPC's subnets changed"
        );
    }

    #[test]
    fn the_container_runs_veg_gateway_unprivileged() {
        let d = build();
        let pod = d.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("veg-gateway"));
        let c = &pod.containers[0];
        let args = c.args.as_ref().unwrap().join(" ");
        assert!(
            !args.contains("--snat") && !args.contains("--forward"),
            "{args}"
        );
        for expected in [
            "gateway --name default_gateway2 --internal-interface eth0 --external-interface net1 --external-ip $(EXTERNAL_IP)",
            "--gateway default/gateway2",
            "--bfd-peer 10.255.255.255 --bfd-min-rx 300 --bfd-min-tx 1000 --bfd-multiplier 3",
        ] {
            assert!(args.contains(expected), "{expected:?} not in {args:?}");
        }
        let security = c.security_context.as_ref().unwrap();
        assert_eq!(security.privileged, Some(false));
        assert_eq!(
            security.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );
        assert_eq!(
            pod.volumes.unwrap()[0].host_path.as_ref().unwrap().path,
            "/sys/fs/bpf"
        );
        let env = &c.env.as_ref().unwrap()[0];
        assert_eq!(
            env.value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.annotations['eth1.default.kubernetes.io/ip_address']"
        );
    }

    /// The gateway container and its pod's spec.
    fn container_and_pod(d: Deployment) -> (Container, PodSpec) {
        let pod = d.spec.unwrap().template.spec.unwrap();
        (pod.containers[0].clone(), pod)
    }

    #[test]
    fn resources_and_tolerations_come_from_the_gateway_or_the_defaults() {
        let (container, pod) = container_and_pod(build());
        let resources = container.resources.unwrap();
        let requests = resources.requests.unwrap();
        assert_eq!(
            (requests["cpu"].0.as_str(), requests["memory"].0.as_str()),
            ("200m", "256Mi"),
            "requests without limits: Burstable"
        );
        assert!(resources.limits.is_none());
        assert!(pod.tolerations.is_none());

        let mut gateway = gateway2();
        gateway.spec.resources = Some(
            serde_yaml::from_str(
                "requests: {cpu: '1', memory: 1Gi}\nlimits: {cpu: '1', memory: 1Gi}\n",
            )
            .unwrap(),
        );
        gateway.spec.tolerations = vec![
            serde_yaml::from_str(
                "{key: dedicated, operator: Equal, value: egress, effect: NoSchedule}",
            )
            .unwrap(),
        ];
        let (container, pod) = container_and_pod(build_for(&gateway));
        assert_eq!(
            container.resources, gateway.spec.resources,
            "given resources are used as given (Guaranteed here)"
        );
        let tolerations = pod.tolerations.unwrap();
        assert_eq!(
            (
                tolerations[0].key.as_deref(),
                tolerations[0].effect.as_deref()
            ),
            (Some("dedicated"), Some("NoSchedule"))
        );
    }

    #[test]
    fn a_malformed_provider_is_reported_not_a_crash() {
        let gateway = gateway2();
        let internal = subnet("subnet1", "gateway: 192.168.0.1\n");
        let external = subnet("macvlan1", "provider: eth1\n");
        let inputs = Inputs {
            gateway: &gateway,
            internal_subnet: &internal,
            external_subnet: &external,
            vpc: None,
            default_image: "veg",
        };
        assert!(
            deployment(&inputs, &[])
                .unwrap_err()
                .contains("<attachment>.<namespace>")
        );
    }
}
