//! The controller's input read from a file instead of the cluster, for `veg ovn plan|apply|delete -f`. A file
//! holds resources as `kubectl apply -f` takes them: any number of VpcEgressGateways, with the Vpcs and Subnets
//! they need. Each gateway goes through the controller's own validation and model input (validation.rs,
//! ovn_input.rs), so a file and the cluster give the same rows for the same resources. What a file cannot show
//! comes from the resources' status: a gateway's instances (status.internalIPs with status.workload.nodes, taken as
//! serving) and the nodes a Vpc's BFD port is bound to (status.bfdPort.nodes). Pod selectors select nothing: a
//! file has no pods.

use anyhow::{Context as _, anyhow};
use kube::ResourceExt;
use serde::Deserialize;
use serde_json::Value;

use super::{
    instances::Observed,
    ovn_input::{addresses, gateway_spec},
    validation::validate,
};
use crate::{
    crd::{
        gateway::VpcEgressGateway,
        network::{Subnet, Vpc},
    },
    ovn::{model::GatewaySpec, vpc_port::VpcBfdPort},
};

/// The resources of a file, documents of other kinds left out.
#[derive(Default)]
pub struct Resources {
    pub gateways: Vec<VpcEgressGateway>,
    pub vpcs: Vec<Vpc>,
    pub subnets: Vec<Subnet>,
}

impl Resources {
    /// Read every document of `yaml`; one that is not what its kind says is an error naming it.
    pub fn parse(yaml: &str) -> anyhow::Result<Resources> {
        let mut resources = Resources::default();
        for (index, document) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
            let value = Value::deserialize(document).context("the file is not valid YAML")?;
            let kind = value["kind"].as_str().unwrap_or_default().to_owned();
            let what = || {
                let name = value["metadata"]["name"].as_str().unwrap_or("(no name)");
                format!("document {} ({kind} {name})", index + 1)
            };
            match kind.as_str() {
                "VpcEgressGateway" => resources
                    .gateways
                    .push(serde_json::from_value(value.clone()).with_context(what)?),
                "Vpc" => resources
                    .vpcs
                    .push(serde_json::from_value(value.clone()).with_context(what)?),
                "Subnet" => resources
                    .subnets
                    .push(serde_json::from_value(value.clone()).with_context(what)?),
                _ => {}
            }
        }
        if resources.gateways.is_empty() {
            anyhow::bail!("the file holds no VpcEgressGateway");
        }
        Ok(resources)
    }
}

/// One gateway of a file, as OVN must see it, and, when it has BFD, its VPC's BFD port (if the file's Vpc has one
/// bound to nodes).
#[derive(Debug)]
pub struct FileGateway {
    pub spec: GatewaySpec,
    pub bfd_port: Option<VpcBfdPort>,
}

/// Every gateway of the file, validated as the controller validates it.
pub fn gateways(resources: &Resources) -> anyhow::Result<Vec<FileGateway>> {
    resources
        .gateways
        .iter()
        .map(|gateway| {
            let id = format!(
                "VpcEgressGateway {}/{}",
                gateway.namespace().unwrap_or_else(|| "default".into()),
                gateway.name_any()
            );
            let resolved = validate(gateway, &resources.vpcs, &resources.subnets).map_err(|p| {
                let hint = if p.reason.ends_with("NotFound") {
                    ": the file must hold every Vpc and Subnet its gateways name"
                } else {
                    ""
                };
                anyhow!("{id}: {} ({}){hint}", p.message, p.reason)
            })?;
            let spec = gateway_spec(
                gateway,
                &resolved,
                &instances_in_status(gateway),
                Vec::new(),
            )
            .map_err(|e| anyhow!("{id}: {e}"))?;
            let bfd_port = match resolved.vpc.filter(|_| spec.bfd.is_some()) {
                Some(vpc) => bfd_port_in_status(vpc).map_err(|e| anyhow!("{id}: {e}"))?,
                None => None,
            };
            Ok(FileGateway { spec, bfd_port })
        })
        .collect()
}

/// The instances a gateway's status reports, each taken as serving: a file has no pods to observe.
fn instances_in_status(gateway: &VpcEgressGateway) -> Vec<Observed> {
    let Some(status) = &gateway.status else {
        return Vec::new();
    };
    let nodes = status
        .workload
        .as_ref()
        .map(|w| w.nodes.as_slice())
        .unwrap_or_default();
    status
        .internal_ips
        .iter()
        .enumerate()
        .map(|(i, internal_ip)| Observed {
            pod: format!("{}-{i}", gateway.name_any()),
            node: nodes.get(i).cloned(),
            internal_ip: Some(internal_ip.clone()),
            external_ip: Some(status.external_ips.get(i).cloned().unwrap_or_default()),
            ready: true,
            containers_ready: true,
        })
        .collect()
}

/// The Vpc's BFD port, when it is enabled and its status names the nodes it is bound to.
fn bfd_port_in_status(vpc: &Vpc) -> Result<Option<VpcBfdPort>, String> {
    let Some(port) = vpc.spec.bfd_port.as_ref().filter(|p| p.enabled) else {
        return Ok(None);
    };
    let nodes = vpc
        .status
        .as_ref()
        .and_then(|s| s.bfd_port.as_ref())
        .map(|p| p.nodes.clone())
        .unwrap_or_default();
    if nodes.is_empty() {
        return Ok(None);
    }
    let addresses = addresses(&port.ip)
        .map_err(|e| format!("Vpc {:?} spec.bfdPort.ip: {e}", vpc.name_any()))?;
    Ok(Some(VpcBfdPort {
        vpc: vpc.name_any(),
        addresses,
        chassis: nodes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
kind: Vpc
metadata: {name: vpc1}
spec: {bfdPort: {enabled: true, ip: 10.255.255.255}}
status: {bfdPort: {nodes: [node-a, node-b]}}
---
kind: Subnet
metadata: {name: ovn-default}
spec: {vpc: ovn-cluster, cidrBlock: 10.16.0.0/16, gateway: 10.16.0.1}
---
kind: Subnet
metadata: {name: subnet1}
spec: {vpc: vpc1, cidrBlock: 192.168.0.0/24, gateway: 192.168.0.1}
---
kind: Subnet
metadata: {name: macvlan}
spec: {cidrBlock: 172.17.0.0/16, gateway: 172.17.0.1, provider: macvlan.default}
---
kind: ConfigMap
metadata: {name: ignored}
---
kind: VpcEgressGateway
metadata: {name: gateway1, namespace: default}
spec: {externalSubnet: macvlan, policies: [{snat: true, subnets: [ovn-default], ipBlocks: [10.16.0.5]}]}
status: {internalIPs: [10.16.0.12], workload: {nodes: [node-a]}}
---
kind: VpcEgressGateway
metadata: {name: gateway2, namespace: default}
spec:
  vpc: vpc1
  internalSubnet: subnet1
  externalSubnet: macvlan
  bfd: {enabled: true}
  policies: [{snat: true, ipBlocks: [192.168.0.0/24], subnets: [subnet1]}]
status: {internalIPs: [192.168.0.2, 192.168.0.3], workload: {nodes: [node-a, node-b]}}
";

    fn read(yaml: &str) -> anyhow::Result<Vec<FileGateway>> {
        Resources::parse(yaml).and_then(|r| gateways(&r))
    }

    #[test]
    fn every_gateway_of_a_file_is_read_as_the_controller_reads_it() {
        let found = read(FILE).unwrap();
        assert_eq!(found.len(), 2);
        let (one, two) = (&found[0], &found[1]);
        assert_eq!(
            (one.spec.id(), one.spec.router.as_str()),
            ("default/gateway1".into(), "ovn-cluster")
        );
        assert!(one.spec.default_vpc && one.spec.bfd.is_none() && one.bfd_port.is_none());
        let sources: Vec<String> = one.spec.sources.iter().map(ToString::to_string).collect();
        assert_eq!(sources, ["10.16.0.0/16", "10.16.0.5/32"]);
        assert_eq!(two.spec.instances.len(), 2);
        assert_eq!(two.spec.instances[1].node, "node-b");
        // The subnet is also an ipBlock: one source, not two (two would be two identical routes).
        assert_eq!(two.spec.sources.len(), 1);
        let bfd = two.spec.bfd.as_ref().unwrap();
        assert_eq!(
            (bfd.port.as_str(), bfd.min_rx, bfd.multiplier),
            ("bfd@vpc1", 1000, 3)
        );
        let port = two.bfd_port.as_ref().unwrap();
        assert_eq!(port.chassis, ["node-a", "node-b"]);
    }

    #[test]
    fn a_file_the_controller_would_refuse_is_refused_saying_why() {
        let missing = FILE.replace("metadata: {name: macvlan}", "metadata: {name: other}");
        let said = format!("{:#}", read(&missing).unwrap_err());
        assert!(
            said.contains("gateway1") && said.contains("ExternalSubnetNotFound"),
            "{said}"
        );
        let no_port = FILE.replace("bfdPort: {enabled: true", "bfdPort: {enabled: false");
        let said = format!("{:#}", read(&no_port).unwrap_err());
        assert!(
            said.contains("gateway2") && said.contains("VpcBfdPortNotEnabled"),
            "{said}"
        );
        let said = format!(
            "{:#}",
            read("kind: Subnet\nmetadata: {name: s}\nspec: {}\n").unwrap_err()
        );
        assert!(said.contains("no VpcEgressGateway"), "{said}");
        let said = format!(
            "{:#}",
            read("kind: VpcEgressGateway\nmetadata: {name: g}\nspec: {replicas: many}\n")
                .unwrap_err()
        );
        assert!(said.contains("document 1 (VpcEgressGateway g)"), "{said}");
    }
}
