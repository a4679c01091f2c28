//! What CEL cannot check, because it needs other resources: the Vpc, the subnets and their VPC, the BFD port (and
//! the bandwidth rates, which CEL checks too).
//! A problem becomes the condition Validated=False with its reason and message (the reference's reasons where it
//! has them); it never stops the controller.

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::{
    crd::{
        gateway::{Bandwidth, VpcEgressGateway},
        network::{DEFAULT_VPC, Subnet, Vpc},
    },
    gateway::bandwidth::BitRate,
};

/// The default VPC's default subnet.
pub const DEFAULT_SUBNET: &str = "ovn-default";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

fn problem(reason: &'static str, message: String) -> Problem {
    Problem { reason, message }
}

/// The resources a valid gateway resolves to.
#[derive(Debug, Clone)]
pub struct Resolved<'a> {
    pub vpc_name: String,
    pub vpc: Option<&'a Vpc>,
    pub internal_subnet: &'a Subnet,
    pub external_subnet: &'a Subnet,
    /// CIDRs of the subnets the policies name, by subnet.
    pub policy_cidrs: BTreeMap<String, String>,
    /// Every CIDR block of every subnet in the VPC (the instances route them back through the VPC).
    pub vpc_cidrs: Vec<String>,
}

fn in_vpc(subnet: &Subnet, vpc: &str) -> bool {
    let owner = subnet.spec.vpc.as_str();
    owner == vpc || (vpc == DEFAULT_VPC && owner.is_empty())
}

/// An OVN subnet (not an attachment network such as the external macvlan subnet).
fn is_ovn(subnet: &Subnet) -> bool {
    matches!(subnet.spec.provider.as_str(), "" | "ovn")
}

/// Check what the CRD cannot: the VPC, the subnets and the BFD port the gateway names, and resolve them. The first
/// problem found is returned, with the reason the reference gives it. (One function of checks in a row, each a few
/// lines: the order is the order in which the reference reports them, and reads best in one place.)
pub fn validate<'a>(
    gateway: &VpcEgressGateway,
    vpcs: &'a [Vpc],
    subnets: &'a [Subnet],
) -> Result<Resolved<'a>, Problem> {
    let spec = &gateway.spec;
    let vpc_name = spec
        .vpc
        .clone()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_VPC.to_owned());
    let vpc = vpcs.iter().find(|v| v.name_any() == vpc_name);
    if vpc.is_none() && vpc_name != DEFAULT_VPC {
        return Err(problem(
            "VpcNotFound",
            format!("VPC {vpc_name:?} does not exist"),
        ));
    }
    let subnet = |name: &str| subnets.iter().find(|s| s.name_any() == name);

    let internal_name = match &spec.internal_subnet {
        Some(name) => name.clone(),
        None if vpc_name == DEFAULT_VPC => DEFAULT_SUBNET.to_owned(),
        None => vpc
            .and_then(|v| v.status.as_ref()?.default_logical_switch.clone())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                problem(
                    "InternalSubnetNotSet",
                    format!("VPC {vpc_name:?} has no default subnet: set spec.internalSubnet"),
                )
            })?,
    };
    let internal_subnet = subnet(&internal_name).ok_or_else(|| {
        problem(
            "InternalSubnetNotFound",
            format!("internal subnet {internal_name:?} does not exist"),
        )
    })?;
    if !in_vpc(internal_subnet, &vpc_name) {
        return Err(problem(
            "InternalSubnetNotInVpc",
            format!("internal subnet {internal_name:?} is not in VPC {vpc_name:?}"),
        ));
    }
    let external_subnet = subnet(&spec.external_subnet).ok_or_else(|| {
        problem(
            "ExternalSubnetNotFound",
            format!("external subnet {:?} does not exist", spec.external_subnet),
        )
    })?;
    if external_subnet.network_attachment().is_none() {
        return Err(problem(
            "ExternalSubnetNotAttachable",
            format!(
                "external subnet {:?} has provider {:?}: expected <attachment>.<namespace> of a NetworkAttachmentDefinition",
                spec.external_subnet, external_subnet.spec.provider
            ),
        ));
    }
    let mut policy_cidrs = BTreeMap::new();
    for name in spec.policies.iter().flat_map(|p| &p.subnets) {
        let found = subnet(name).ok_or_else(|| {
            problem(
                "PolicySubnetNotFound",
                format!("policy subnet {name:?} does not exist"),
            )
        })?;
        if !in_vpc(found, &vpc_name) {
            return Err(problem(
                "PolicySubnetNotInVpc",
                format!("policy subnet {name:?} is not in VPC {vpc_name:?}"),
            ));
        }
        policy_cidrs.insert(name.clone(), found.spec.cidr_block.clone());
    }
    for (field, ips) in [
        ("internalIPs", &spec.internal_ips),
        ("externalIPs", &spec.external_ips),
    ] {
        if !ips.is_empty() && (ips.len() as i32) < spec.replicas {
            return Err(problem(
                "NotEnoughIPs",
                format!(
                    "{field} holds {} address(es) for {} replicas",
                    ips.len(),
                    spec.replicas
                ),
            ));
        }
    }
    // The CRD's rules check the rates too; checked here as well because an instance given a rate it cannot read
    // would not start (a CRD of an older veg, without the rules, lets any string through).
    if let Some(bandwidth) = &spec.bandwidth {
        for (way, rate) in [
            ("egress", &bandwidth.egress),
            ("ingress", &bandwidth.ingress),
        ] {
            if let Some(Err(e)) = rate
                .as_ref()
                .map(|r| BitRate::parse(&Bandwidth::argument(r)))
            {
                return Err(problem(
                    "InvalidBandwidth",
                    format!("bandwidth.{way}: {e:#}"),
                ));
            }
        }
    }
    let bfd_port_enabled = vpc
        .and_then(|v| v.spec.bfd_port.as_ref())
        .is_some_and(|p| p.enabled);
    if spec.bfd.enabled && !bfd_port_enabled {
        return Err(problem(
            "VpcBfdPortNotEnabled",
            format!("bfd.enabled needs the BFD port of VPC {vpc_name:?} (spec.bfdPort.enabled)"),
        ));
    }
    let mut vpc_cidrs: Vec<String> = subnets
        .iter()
        .filter(|s| in_vpc(s, &vpc_name) && is_ovn(s))
        .flat_map(|s| s.spec.cidr_block.split(','))
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .collect();
    vpc_cidrs.sort();
    vpc_cidrs.dedup();
    Ok(Resolved {
        vpc_cidrs,
        vpc_name,
        vpc,
        internal_subnet,
        external_subnet,
        policy_cidrs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{gateway::VpcEgressGatewaySpec, network::SubnetSpec};

    fn subnet(name: &str, vpc: &str, provider: &str) -> Subnet {
        Subnet::new(
            name,
            SubnetSpec {
                vpc: vpc.into(),
                provider: provider.into(),
                cidr_block: "192.168.0.0/24".into(),
                ..Default::default()
            },
        )
    }

    fn vpc(yaml: &str) -> Vpc {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn gateway(yaml: &str) -> VpcEgressGateway {
        VpcEgressGateway::new(
            "g",
            serde_yaml::from_str::<VpcEgressGatewaySpec>(yaml).unwrap(),
        )
    }

    fn world() -> (Vec<Vpc>, Vec<Subnet>) {
        (
            vec![
                vpc(
                    "apiVersion: kubeovn.io/v1\nkind: Vpc\nmetadata: {name: vpc1}\nspec: {bfdPort: {enabled: true, ip: 10.255.255.255}}\n",
                ),
                vpc("apiVersion: kubeovn.io/v1\nkind: Vpc\nmetadata: {name: vpc2}\nspec: {}\n"),
            ],
            vec![
                subnet("subnet1", "vpc1", ""),
                subnet("subnet2", "vpc2", ""),
                subnet("ovn-default", "", ""),
                subnet("macvlan1", "", "eth1.default"),
                subnet("broken", "", "eth1"),
            ],
        )
    }

    #[test]
    fn a_valid_gateway_resolves_its_subnets() {
        let (vpcs, subnets) = world();
        let g = gateway(
            "vpc: vpc1\ninternalSubnet: subnet1\nexternalSubnet: macvlan1\nbfd: {enabled: true}\npolicies: [{subnets: [subnet1]}]\n",
        );
        let resolved = validate(&g, &vpcs, &subnets).unwrap();
        assert_eq!(resolved.internal_subnet.name_any(), "subnet1");
        assert_eq!(resolved.policy_cidrs["subnet1"], "192.168.0.0/24");
        assert_eq!(
            resolved.vpc_cidrs,
            ["192.168.0.0/24"],
            "subnet1 only: subnet2 is in vpc2"
        );
        let default_vpc =
            gateway("externalSubnet: macvlan1\npolicies: [{subnets: [ovn-default]}]\n");
        assert_eq!(
            validate(&default_vpc, &vpcs, &subnets)
                .unwrap()
                .internal_subnet
                .name_any(),
            "ovn-default"
        );
    }

    #[test]
    fn the_vpc_routes_cover_its_ovn_subnets_not_attachment_networks() {
        let (vpcs, _) = world();
        let with_cidr = |name: &str, vpc: &str, provider: &str, cidr: &str| {
            let mut s = subnet(name, vpc, provider);
            s.spec.cidr_block = cidr.into();
            s
        };
        let subnets = [
            with_cidr("ovn-default", "", "", "10.16.0.0/16,fd00:10:16::/64"),
            with_cidr("join", "ovn-cluster", "ovn", "100.64.0.0/16"),
            with_cidr("macvlan1", "", "eth1.default", "172.17.0.0/16"),
            with_cidr("subnet1", "vpc1", "", "192.168.0.0/24"),
        ];
        let g = gateway("externalSubnet: macvlan1\npolicies: [{ipBlocks: [10.16.0.0/16]}]\n");
        assert_eq!(
            validate(&g, &vpcs, &subnets).unwrap().vpc_cidrs,
            ["10.16.0.0/16", "100.64.0.0/16", "fd00:10:16::/64"]
        );
    }

    #[test]
    fn each_problem_has_its_reason() {
        let (vpcs, subnets) = world();
        let cases = [
            (
                "vpc: nope\nexternalSubnet: macvlan1\npolicies: [{ipBlocks: [10.0.0.0/8]}]\n",
                "VpcNotFound",
            ),
            (
                "vpc: vpc1\ninternalSubnet: missing\nexternalSubnet: macvlan1\npolicies: [{ipBlocks: [10.0.0.0/8]}]\n",
                "InternalSubnetNotFound",
            ),
            (
                "vpc: vpc1\ninternalSubnet: subnet2\nexternalSubnet: macvlan1\npolicies: [{ipBlocks: [10.0.0.0/8]}]\n",
                "InternalSubnetNotInVpc",
            ),
            (
                "vpc: vpc1\ninternalSubnet: subnet1\nexternalSubnet: gone\npolicies: [{ipBlocks: [10.0.0.0/8]}]\n",
                "ExternalSubnetNotFound",
            ),
            (
                "vpc: vpc1\ninternalSubnet: subnet1\nexternalSubnet: broken\npolicies: [{ipBlocks: [10.0.0.0/8]}]\n",
                "ExternalSubnetNotAttachable",
            ),
            (
                "vpc: vpc1\ninternalSubnet: subnet1\nexternalSubnet: macvlan1\npolicies: [{subnets: [subnet2]}]\n",
                "PolicySubnetNotInVpc",
            ),
            (
                "vpc: vpc1\ninternalSubnet: subnet1\nexternalSubnet: macvlan1\nreplicas: 2\ninternalIPs: [192.168.0.5]\npolicies: [{ipBlocks: [10.0.0.0/8]}]\n",
                "NotEnoughIPs",
            ),
            (
                "vpc: vpc1\ninternalSubnet: subnet1\nexternalSubnet: macvlan1\nbandwidth: {egress: 10K}\npolicies: [{ipBlocks: [10.0.0.0/8]}]\n",
                "InvalidBandwidth",
            ),
            (
                "vpc: vpc2\ninternalSubnet: subnet2\nexternalSubnet: macvlan1\nbfd: {enabled: true}\npolicies: [{ipBlocks: [10.0.0.0/8]}]\n",
                "VpcBfdPortNotEnabled",
            ),
            (
                "vpc: vpc2\nexternalSubnet: macvlan1\npolicies: [{ipBlocks: [10.0.0.0/8]}]\n",
                "InternalSubnetNotSet",
            ),
        ];
        for (yaml, reason) in cases {
            let problem = validate(&gateway(yaml), &vpcs, &subnets).unwrap_err();
            assert_eq!(problem.reason, reason, "{yaml}: {}", problem.message);
            assert!(!problem.message.is_empty());
        }
    }
}
