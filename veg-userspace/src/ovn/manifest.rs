//! A gateway's description from Kubernetes YAML, as a user would `kubectl apply` it: the VpcEgressGateway (its
//! status.internalIPs and status.workload.nodes give the instances), the Vpc (for its BFD port; absent means the
//! default VPC ovn-cluster) and the Subnets its policies name. Documents of other kinds are ignored.

use std::collections::{BTreeSet, HashMap};

use anyhow::{Context as _, bail};
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use super::{
    model::{Bfd, GatewaySpec, Instance},
    vpc_port::VpcBfdPort,
};

pub const DEFAULT_VPC: &str = "ovn-cluster";

fn text<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(Value::as_str)
}

/// A source as written in ipBlocks: a CIDR, or an address meaning a single host.
fn source(text: &str) -> anyhow::Result<IpNet> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .with_context(|| format!("invalid ipBlocks entry {text:?}: expected an IP address or CIDR"))
}

/// The gateway and, when the file's Vpc enables one and its status names the chosen nodes, the VPC's BFD port.
pub fn from_yaml(yaml: &str) -> anyhow::Result<(GatewaySpec, Option<VpcBfdPort>)> {
    let gateway = gateway_from_yaml(yaml)?;
    let mut port = None;
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let doc = Value::deserialize(document)?;
        let is_our_vpc = text(&doc, &["kind"]) == Some("Vpc")
            && text(&doc, &["metadata", "name"]) == Some(&gateway.router);
        if !is_our_vpc || doc["spec"]["bfdPort"]["enabled"].as_bool() != Some(true) {
            continue;
        }
        let ip =
            text(&doc, &["spec", "bfdPort", "ip"]).context("the Vpc's spec.bfdPort has no ip")?;
        let addresses = ip
            .split(',')
            .map(|a| {
                a.trim()
                    .parse()
                    .with_context(|| format!("invalid spec.bfdPort.ip {ip:?}"))
            })
            .collect::<anyhow::Result<_>>()?;
        let chassis = spec_list(&doc["status"]["bfdPort"]["nodes"]);
        if !chassis.is_empty() {
            port = Some(VpcBfdPort {
                vpc: gateway.router.clone(),
                addresses,
                chassis,
            });
        }
    }
    Ok((gateway, port))
}

/// Read the documents of `yaml` into a gateway description.
pub fn gateway_from_yaml(yaml: &str) -> anyhow::Result<GatewaySpec> {
    let mut gateways = Vec::new();
    let mut vpcs: HashMap<String, Value> = HashMap::new();
    let mut subnets: HashMap<String, Value> = HashMap::new();
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let doc = Value::deserialize(document).context("the file is not valid YAML")?;
        let name = text(&doc, &["metadata", "name"])
            .unwrap_or_default()
            .to_owned();
        match text(&doc, &["kind"]) {
            Some("VpcEgressGateway") => gateways.push(doc),
            Some("Vpc") => drop(vpcs.insert(name, doc)),
            Some("Subnet") => drop(subnets.insert(name, doc)),
            _ => {}
        }
    }
    let gateway = match gateways.as_slice() {
        [one] => one,
        [] => bail!("the file holds no VpcEgressGateway"),
        _ => bail!(
            "the file holds {} VpcEgressGateways: give one per file",
            gateways.len()
        ),
    };
    let spec = &gateway["spec"];
    let name = text(gateway, &["metadata", "name"])
        .context("the VpcEgressGateway has no metadata.name")?;
    let namespace = text(gateway, &["metadata", "namespace"]).unwrap_or("default");
    let router = text(spec, &["vpc"]).unwrap_or(DEFAULT_VPC).to_owned();

    let mut sources = Vec::new();
    for policy in spec["policies"].as_array().into_iter().flatten() {
        for block in policy["ipBlocks"].as_array().into_iter().flatten() {
            sources.push(source(block.as_str().unwrap_or_default())?);
        }
        for subnet in policy["subnets"].as_array().into_iter().flatten() {
            let subnet = subnet.as_str().unwrap_or_default();
            let found = subnets.get(subnet).with_context(|| {
                format!("subnet {subnet:?} named by the gateway's policies is not in the file")
            })?;
            let cidrs = text(found, &["spec", "cidrBlock"])
                .with_context(|| format!("subnet {subnet:?} has no spec.cidrBlock"))?;
            for cidr in cidrs.split(',') {
                sources.push(
                    cidr.trim().parse().with_context(|| {
                        format!("subnet {subnet:?}: invalid cidrBlock {cidr:?}")
                    })?,
                );
            }
        }
    }

    let addresses = spec_list(&gateway["status"]["internalIPs"]);
    let nodes = spec_list(&gateway["status"]["workload"]["nodes"]);
    let instances = addresses
        .iter()
        .enumerate()
        .map(|(i, joined)| {
            let addresses = joined
                .split(',')
                .map(|a| {
                    a.trim()
                        .parse()
                        .with_context(|| format!("invalid status.internalIPs entry {joined:?}"))
                })
                .collect::<anyhow::Result<_>>()?;
            Ok(Instance {
                addresses,
                node: nodes.get(i).cloned().unwrap_or_default(),
            })
        })
        .collect::<anyhow::Result<_>>()?;

    let bfd = if spec["bfd"]["enabled"].as_bool() == Some(true) {
        let port_enabled = vpcs
            .get(&router)
            .is_some_and(|vpc| vpc["spec"]["bfdPort"]["enabled"].as_bool() == Some(true));
        if !port_enabled {
            bail!(
                "bfd.enabled needs the Vpc {router:?} with spec.bfdPort.enabled in the file (VpcBfdPortNotEnabled)"
            );
        }
        let interval =
            |key: &str, default: u64| spec["bfd"][key].as_u64().unwrap_or(default) as u32;
        Some(Bfd {
            port: format!("bfd@{router}"),
            min_rx: interval("minRX", 1000),
            min_tx: interval("minTX", 1000),
            multiplier: interval("multiplier", 3),
        })
    } else {
        None
    };
    Ok(GatewaySpec {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        default_vpc: router == DEFAULT_VPC,
        router,
        sources,
        // Selectors need the cluster's pods: the controller resolves them; a file cannot.
        selected_ports: Vec::new(),
        instances,
        bfd,
        down: BTreeSet::new(),
        bfd_sessions: false,
        local_port_groups: Default::default(),
    })
}

fn spec_list(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATEWAY2: &str = r#"
apiVersion: kubeovn.io/v1
kind: Vpc
metadata:
  name: vpc1
spec:
  bfdPort:
    enabled: true
    ip: 10.255.255.255
---
apiVersion: kubeovn.io/v1
kind: Subnet
metadata:
  name: subnet1
spec:
  vpc: vpc1
  protocol: IPv4
  cidrBlock: 192.168.0.0/24
---
apiVersion: kubeovn.io/v1
kind: VpcEgressGateway
metadata:
  name: gateway2
  namespace: default
spec:
  vpc: vpc1
  replicas: 2
  internalSubnet: subnet1
  externalSubnet: macvlan
  bfd:
    enabled: true
  policies:
    - snat: true
      ipBlocks:
        - 192.168.0.0/24
      subnets:
        - subnet1
status:
  internalIPs: ["192.168.0.2", "192.168.0.3"]
  workload:
    nodes: ["kube-ovn-worker", "kube-ovn-worker2"]
"#;

    #[test]
    fn reads_the_documents_example() {
        let spec = gateway_from_yaml(GATEWAY2).unwrap();
        assert_eq!(
            (
                spec.namespace.as_str(),
                spec.name.as_str(),
                spec.router.as_str()
            ),
            ("default", "gateway2", "vpc1")
        );
        assert!(!spec.default_vpc);
        assert_eq!(spec.instances.len(), 2);
        assert_eq!(spec.instances[1].node, "kube-ovn-worker2");
        assert_eq!(spec.bfd.as_ref().unwrap().port, "bfd@vpc1");
        assert_eq!(spec.bfd.as_ref().unwrap().min_rx, 1000);
        assert_eq!(spec.sources.len(), 2, "ipBlocks and the subnet's CIDR");
        assert_eq!(
            from_yaml(GATEWAY2).unwrap().1,
            None,
            "no status.bfdPort.nodes: nothing to bind the port to"
        );
        let with_nodes = GATEWAY2.replace(
            "    ip: 10.255.255.255\n",
            "    ip: 10.255.255.255\nstatus:\n  bfdPort:\n    nodes: [node-a, node-b]\n",
        );
        let port = from_yaml(&with_nodes).unwrap().1.unwrap();
        assert_eq!((port.vpc.as_str(), port.chassis.len()), ("vpc1", 2));
    }

    #[test]
    fn says_what_is_missing() {
        let without_vpc = GATEWAY2
            .split("---")
            .skip(1)
            .collect::<Vec<_>>()
            .join("---");
        assert!(
            gateway_from_yaml(&without_vpc)
                .unwrap_err()
                .to_string()
                .contains("VpcBfdPortNotEnabled")
        );
        let without_subnet = GATEWAY2.replace("name: subnet1\n", "name: other\n");
        assert!(
            gateway_from_yaml(&without_subnet)
                .unwrap_err()
                .to_string()
                .contains("subnet \"subnet1\"")
        );
        assert!(
            gateway_from_yaml("kind: Subnet\n")
                .unwrap_err()
                .to_string()
                .contains("no VpcEgressGateway")
        );
        let default_vpc = "kind: VpcEgressGateway\nmetadata: {name: g}\nspec: {policies: [{ipBlocks: [10.16.0.5]}]}\n";
        let spec = gateway_from_yaml(default_vpc).unwrap();
        assert!(spec.default_vpc);
        assert_eq!(spec.sources[0].to_string(), "10.16.0.5/32");
    }
}
