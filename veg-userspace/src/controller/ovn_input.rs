//! The OVN model's input (ovn::model::GatewaySpec) from the resource, what validation resolved, the observed
//! instances and the selected ports; and the VPC's BFD port from the Vpc and the cluster's nodes.

use std::{collections::BTreeSet, net::IpAddr};

use ipnet::IpNet;

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;

use super::{instances::Observed, selection::matches, validation::Resolved};
use crate::{
    crd::{
        gateway::{VpcEgressGateway, parse_source},
        network::{DEFAULT_VPC, Vpc},
    },
    ovn::{
        model::{Bfd, GatewaySpec, Instance},
        vpc_port::VpcBfdPort,
    },
};

/// Annotation Kube-OVN puts on a node: the node's OVN chassis name.
pub const CHASSIS_ANNOTATION: &str = "ovn.kubernetes.io/chassis";
/// The reference's HA chassis group spans up to this many nodes when the Vpc selects none.
const BFD_PORT_NODES: usize = 3;

/// Addresses joined with ',' as Kube-OVN writes them (one per family).
pub(super) fn addresses(joined: &str) -> Result<Vec<IpAddr>, String> {
    joined
        .split(',')
        .map(|a| {
            a.trim()
                .parse()
                .map_err(|_| format!("invalid IP address {a:?}"))
        })
        .collect()
}

/// The families of a subnet's CIDR block ("v4", "v6" or "v4,v6"), as "is IPv4" flags.
fn served_families(cidr_block: &str) -> Vec<bool> {
    let mut families: Vec<bool> = cidr_block
        .split(',')
        .filter_map(|c| c.trim().parse::<IpNet>().ok())
        .map(|net| net.addr().is_ipv4())
        .collect();
    families.sort();
    families.dedup();
    families
}

/// The families of a list of addresses ("v4", "v6" or "v4,v6"), as "is IPv4" flags.
fn served_families_of_addresses(addresses: &str) -> Vec<bool> {
    let mut families: Vec<bool> = addresses
        .split(',')
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .map(|a| a.is_ipv4())
        .collect();
    families.sort();
    families.dedup();
    families
}

/// The gateway as OVN must see it. Which instances carry traffic: with BFD, every instance with an internal
/// address (OVN itself withdraws those whose session is down, and a session cannot come up before its BFD row
/// exists); without BFD, only instances that are Ready with both attachments.
pub fn gateway_spec(
    gateway: &VpcEgressGateway,
    resolved: &Resolved,
    instances: &[Observed],
    selected_ports: Vec<String>,
) -> Result<GatewaySpec, String> {
    let spec = &gateway.spec;
    let mut sources = Vec::new();
    for policy in &spec.policies {
        for block in &policy.ip_blocks {
            sources.push(parse_source(block)?);
        }
        for subnet in &policy.subnets {
            let cidrs = resolved
                .policy_cidrs
                .get(subnet)
                .map(String::as_str)
                .unwrap_or_default();
            for cidr in cidrs.split(',').filter(|c| !c.is_empty()) {
                sources.push(
                    parse_source(cidr.trim()).map_err(|e| format!("subnet {subnet:?}: {e}"))?,
                );
            }
        }
    }
    // A subnet named by a policy may also be one of its ipBlocks (the contract's gateway2 does this): one source.
    sources.sort();
    sources.dedup();
    // The families the instances translate: those their external subnet has addresses of. A dual-stack VPC whose
    // external network is IPv4 alone keeps its IPv6 egress out of the gateway (no IPv6 rows), rather than have it
    // sent to instances that would drop it. With BFD, also only the families the VPC's BFD port has an address
    // of: a family's routes are withdrawn by its own sessions, which need the port to speak that family.
    let mut served = served_families(&resolved.external_subnet.spec.cidr_block);
    if spec.bfd.enabled {
        let port = resolved.vpc.and_then(|v| v.spec.bfd_port.as_ref());
        let port_families = served_families_of_addresses(port.map_or("", |p| p.ip.as_str()));
        served.retain(|family| port_families.contains(family));
    }
    sources.retain(|s| served.contains(&s.addr().is_ipv4()));
    let bfd = spec.bfd.enabled.then(|| Bfd {
        port: format!("bfd@{}", resolved.vpc_name),
        min_rx: spec.bfd.min_rx as u32,
        min_tx: spec.bfd.min_tx as u32,
        multiplier: spec.bfd.multiplier as u32,
    });
    // With BFD, OVN itself leaves out an instance whose session is down; without, only instances whose agent is
    // ready are sent traffic. Not their pods' Ready: that waits for OVN to route to them (the readiness gate).
    let carrying = |i: &&Observed| {
        if bfd.is_some() {
            i.internal_ip.is_some()
        } else {
            i.can_serve()
        }
    };
    let instances = instances
        .iter()
        .filter(carrying)
        .map(|i| {
            let mut addresses = addresses(i.internal_ip.as_deref().unwrap_or_default())
                .map_err(|e| format!("instance {}: {e}", i.pod))?;
            addresses.retain(|a| served.contains(&a.is_ipv4()));
            Ok(Instance {
                addresses,
                node: i.node.clone().unwrap_or_default(),
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(GatewaySpec {
        namespace: gateway.namespace().unwrap_or_default(),
        name: gateway.name_any(),
        router: resolved.vpc_name.clone(),
        default_vpc: resolved.vpc_name == DEFAULT_VPC,
        sources,
        selected_ports,
        instances,
        bfd,
        down: BTreeSet::new(),
        bfd_sessions: false,
        local_port_groups: Default::default(),
    })
}

fn chassis(node: &Node) -> String {
    node.annotations()
        .get(CHASSIS_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| node.name_any())
}

fn node_ready(node: &Node) -> bool {
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Annotation Kube-OVN puts on a node: the node's logical switch port, whose port group holds its pods.
pub const NODE_PORT_ANNOTATION: &str = "ovn.kubernetes.io/port_name";

/// Each node's port group (its pods), by node name, for trafficPolicy Local: the node's port name with '-'
/// turned into '.', as the reference names it. Nodes without the annotation have none.
pub fn local_port_groups(nodes: &[Node]) -> std::collections::BTreeMap<String, String> {
    nodes
        .iter()
        .filter_map(|n| {
            Some((
                n.name_any(),
                n.annotations().get(NODE_PORT_ANNOTATION)?.replace('-', "."),
            ))
        })
        .collect()
}

/// The Vpc's BFD port when it enables one: on the nodes its nodeSelector picks, or else on up to three Ready nodes
/// sorted by name, as the reference chooses them. None when no node qualifies (nothing could host it).
pub fn vpc_bfd_port(vpc: &Vpc, nodes: &[Node]) -> Result<Option<VpcBfdPort>, String> {
    let Some(port) = vpc.spec.bfd_port.as_ref().filter(|p| p.enabled) else {
        return Ok(None);
    };
    let addresses = addresses(&port.ip)
        .map_err(|e| format!("Vpc {:?} spec.bfdPort.ip: {e}", vpc.name_any()))?;
    let mut candidates: Vec<&Node> = nodes.iter().filter(|n| node_ready(n)).collect();
    candidates.sort_by_key(|n| n.name_any());
    let chosen: Vec<String> = match &port.node_selector {
        Some(selector) => candidates
            .into_iter()
            .filter(|n| matches(selector, n.labels()))
            .map(chassis)
            .collect(),
        None => candidates
            .into_iter()
            .take(BFD_PORT_NODES)
            .map(chassis)
            .collect(),
    };
    Ok((!chosen.is_empty()).then(|| VpcBfdPort {
        vpc: vpc.name_any(),
        addresses,
        chassis: chosen,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        controller::validation::validate,
        crd::network::{Subnet, SubnetSpec},
    };

    fn subnet(name: &str, vpc: &str, cidr: &str, provider: &str) -> Subnet {
        Subnet::new(
            name,
            SubnetSpec {
                vpc: vpc.into(),
                cidr_block: cidr.into(),
                provider: provider.into(),
                ..Default::default()
            },
        )
    }

    fn instance(pod: &str, node: &str, internal: Option<&str>, ready: bool) -> Observed {
        Observed {
            pod: pod.into(),
            node: Some(node.into()),
            internal_ip: internal.map(str::to_owned),
            external_ip: Some("172.17.0.10".into()),
            ready,
            containers_ready: ready,
        }
    }

    fn nodes(yaml: &str) -> Vec<Node> {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn the_model_input_follows_the_resource() {
        let vpcs: Vec<Vpc> = serde_yaml::from_str(
            "- metadata: {name: vpc1}\n  spec: {bfdPort: {enabled: true, ip: '10.255.255.255,fd00::ff'}}\n",
        )
        .unwrap();
        let subnets = [
            subnet("subnet1", "vpc1", "192.168.0.0/24,fd00:1::/64", ""),
            subnet(
                "macvlan1",
                "",
                "172.17.0.0/16,fd00:172:17::/64",
                "macvlan.default",
            ),
            subnet("macvlan4", "", "172.18.0.0/16", "macvlan.default"),
        ];
        let mut gateway: VpcEgressGateway = serde_yaml::from_str(
            "metadata: {name: gateway2, namespace: ns1}\nspec:\n  vpc: vpc1\n  internalSubnet: subnet1\n  \
             externalSubnet: macvlan1\n  bfd: {enabled: true, minRX: 100, minTX: 200, multiplier: 5}\n  \
             policies: [{snat: true, ipBlocks: [10.1.0.0/16, 10.2.0.9]}, {subnets: [subnet1]}]\n",
        )
        .unwrap();
        let instances = [
            instance("gw-a", "node1", Some("192.168.0.4"), false),
            instance("gw-b", "node2", Some("192.168.0.5,fd00:1::5"), true),
            instance("gw-c", "node3", None, false),
        ];
        let resolved = validate(&gateway, &vpcs, &subnets).unwrap();
        let spec = gateway_spec(&gateway, &resolved, &instances, vec!["web.ns1".into()]).unwrap();
        let expected = GatewaySpec {
            namespace: "ns1".into(),
            name: "gateway2".into(),
            router: "vpc1".into(),
            default_vpc: false,
            sources: [
                "10.1.0.0/16",
                "10.2.0.9/32",
                "192.168.0.0/24",
                "fd00:1::/64",
            ]
            .map(|s| s.parse().unwrap())
            .to_vec(),
            selected_ports: vec!["web.ns1".into()],
            // With BFD, every addressed instance: OVN withdraws those whose session is down.
            instances: vec![
                Instance {
                    addresses: vec!["192.168.0.4".parse().unwrap()],
                    node: "node1".into(),
                },
                Instance {
                    addresses: vec!["192.168.0.5".parse().unwrap(), "fd00:1::5".parse().unwrap()],
                    node: "node2".into(),
                },
            ],
            bfd: Some(Bfd {
                port: "bfd@vpc1".into(),
                min_rx: 100,
                min_tx: 200,
                multiplier: 5,
            }),
            down: BTreeSet::new(),
            bfd_sessions: false,
            local_port_groups: Default::default(),
        };
        assert_eq!(spec, expected);

        // Without BFD only the serving instance carries traffic.
        gateway.spec.bfd.enabled = false;
        let spec = gateway_spec(&gateway, &resolved, &instances, Vec::new()).unwrap();
        assert_eq!(
            spec,
            GatewaySpec {
                bfd: None,
                selected_ports: Vec::new(),
                instances: vec![expected.instances[1].clone()],
                ..expected.clone()
            }
        );

        // An IPv4-only external network: the instances translate IPv4 alone, so IPv6 stays out of the gateway.
        gateway.spec.bfd.enabled = true;
        gateway.spec.external_subnet = "macvlan4".into();
        let resolved = validate(&gateway, &vpcs, &subnets).unwrap();
        let spec = gateway_spec(&gateway, &resolved, &instances, Vec::new()).unwrap();
        assert_eq!(spec.sources, expected.sources[..3]);
        let addresses: Vec<Vec<IpAddr>> =
            spec.instances.iter().map(|i| i.addresses.clone()).collect();
        assert_eq!(
            addresses,
            [
                vec!["192.168.0.4".parse::<IpAddr>().unwrap()],
                vec!["192.168.0.5".parse().unwrap()]
            ]
        );
    }

    const NODES: &str = r#"
- metadata: {name: node4, labels: {bfd: "yes"}}
  status: {conditions: [{type: Ready, status: "True"}]}
- metadata: {name: node1, annotations: {ovn.kubernetes.io/chassis: chassis-1}}
  status: {conditions: [{type: Ready, status: "True"}]}
- metadata: {name: node2, labels: {bfd: "yes"}}
  status: {conditions: [{type: Ready, status: "False"}]}
- metadata: {name: node3}
  status: {conditions: [{type: Ready, status: "True"}]}
- metadata: {name: node0}
  status: {conditions: [{type: Ready, status: "True"}]}
"#;

    #[test]
    fn the_bfd_port_goes_to_three_ready_nodes_or_the_selected_ones() {
        let vpc = |yaml: &str| -> Vpc { serde_yaml::from_str(yaml).unwrap() };
        let port = vpc_bfd_port(
            &vpc("metadata: {name: vpc1}\nspec: {bfdPort: {enabled: true, ip: '10.255.255.255,fd00::ff'}}\n"),
            &nodes(NODES),
        )
        .unwrap();
        assert_eq!(
            port,
            Some(VpcBfdPort {
                vpc: "vpc1".into(),
                addresses: vec![
                    "10.255.255.255".parse().unwrap(),
                    "fd00::ff".parse().unwrap()
                ],
                chassis: vec!["node0".into(), "chassis-1".into(), "node3".into()],
            })
        );
        let selected = vpc_bfd_port(
            &vpc("metadata: {name: vpc1}\nspec: {bfdPort: {enabled: true, ip: 10.255.255.255, nodeSelector: {matchLabels: {bfd: 'yes'}}}}\n"),
            &nodes(NODES),
        )
        .unwrap()
        .unwrap();
        // node2 matches but is not Ready.
        assert_eq!(selected.chassis, ["node4"]);
        let disabled =
            vpc("metadata: {name: vpc1}\nspec: {bfdPort: {enabled: false, ip: 10.255.255.255}}\n");
        assert_eq!(vpc_bfd_port(&disabled, &nodes(NODES)), Ok(None));
        let broken = vpc("metadata: {name: vpc1}\nspec: {bfdPort: {enabled: true, ip: nope}}\n");
        assert!(
            vpc_bfd_port(&broken, &nodes(NODES))
                .unwrap_err()
                .contains("invalid IP address \"nope\"")
        );
    }
}
