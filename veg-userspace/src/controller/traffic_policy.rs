//! Whether trafficPolicy Local is honoured, said as a condition (LocalTrafficPolicy) rather than silently
//! ignored as the reference does: Local sends a node's pods to the instance on the same node with one OVN router
//! policy per node, which exists only on the default VPC and only where OVN's policies can watch BFD sessions.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use veg_ovsdb::monitor::Monitor;

use super::{instances::Observed, ovn_input::local_port_groups, validation::Resolved};
use crate::{
    crd::{
        gateway::{TrafficPolicy, VpcEgressGateway},
        network::DEFAULT_VPC,
    },
    ovn::apply::supports_bfd_sessions,
};

pub const LOCAL_TRAFFIC_POLICY: &str = "LocalTrafficPolicy";

/// A condition's status, reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub honoured: bool,
    pub reason: &'static str,
    pub message: String,
}

/// What OVN can do for the gateway's traffic policy.
pub struct Circumstances<'a> {
    /// The gateway is on the default VPC (reroute policies), not a custom one (ECMP static routes).
    pub default_vpc: bool,
    /// The Northbound database's policies have bfd_sessions (OVN 23.09 or later).
    pub bfd_sessions: bool,
    /// Each node's port group, by node name (nodes Kube-OVN annotated with their port).
    pub node_port_groups: &'a BTreeMap<String, String>,
    pub instances: &'a [Observed],
}

/// The verdict for a gateway validation resolved, from the nodes and the Northbound database as they are.
pub fn observed_verdict(
    gateway: &VpcEgressGateway,
    resolved: &Resolved,
    ovn: &Monitor,
    nodes: &[Node],
    instances: &[Observed],
) -> Option<Verdict> {
    local_verdict(
        gateway,
        &Circumstances {
            default_vpc: resolved.vpc_name == DEFAULT_VPC,
            bfd_sessions: supports_bfd_sessions(ovn),
            node_port_groups: &local_port_groups(nodes),
            instances,
        },
    )
}

/// None for trafficPolicy Cluster, which is always honoured.
pub fn local_verdict(gateway: &VpcEgressGateway, now: &Circumstances) -> Option<Verdict> {
    if gateway.spec.traffic_policy != TrafficPolicy::Local {
        return None;
    }
    const SPREAD: &str = "each pod's traffic is spread over every instance, as with Cluster";
    let verdict = |honoured, reason, message: String| {
        Some(Verdict {
            honoured,
            reason,
            message,
        })
    };
    if !now.default_vpc {
        return verdict(
            false,
            "CustomVpc",
            format!(
                "trafficPolicy Local works on the default VPC only: a custom VPC's egress goes by ECMP static \
                 routes, which OVN cannot scope to a node; {SPREAD}"
            ),
        );
    }
    if !now.bfd_sessions {
        return verdict(
            false,
            "OvnTooOld",
            format!(
                "trafficPolicy Local needs OVN 23.09 or later (router policies with bfd_sessions), and this \
                 Northbound database is older; {SPREAD}"
            ),
        );
    }
    let mut unknown: Vec<&str> = now
        .instances
        .iter()
        .filter_map(|i| i.node.as_deref())
        .filter(|node| !now.node_port_groups.contains_key(*node))
        .collect();
    unknown.sort();
    unknown.dedup();
    if !unknown.is_empty() {
        return verdict(
            false,
            "NodePortUnknown",
            format!(
                "the nodes {} have no ovn.kubernetes.io/port_name annotation (Kube-OVN sets it when the node \
                 joins), so their pods' traffic is spread over every instance",
                unknown.join(", ")
            ),
        );
    }
    verdict(
        true,
        "Honoured",
        "pods on a node with a live instance leave through it; pods elsewhere through any instance"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::gateway::VpcEgressGatewaySpec;

    fn gateway(policy: &str) -> VpcEgressGateway {
        let spec: VpcEgressGatewaySpec =
            serde_yaml::from_str(&format!("externalSubnet: ext\ntrafficPolicy: {policy}\n"))
                .unwrap();
        VpcEgressGateway::new("gw", spec)
    }

    fn on(node: &str) -> Observed {
        Observed {
            pod: format!("gw-{node}"),
            node: Some(node.into()),
            internal_ip: None,
            external_ip: None,
            ready: true,
            containers_ready: true,
        }
    }

    #[test]
    fn local_says_whether_and_why_not() {
        let groups = BTreeMap::from([("node-a".to_owned(), "node.a".to_owned())]);
        let instances = [on("node-a"), on("node-b")];
        let on_a = &instances[..1];
        let circumstances = |default_vpc, bfd_sessions, instances| Circumstances {
            default_vpc,
            bfd_sessions,
            node_port_groups: &groups,
            instances,
        };
        let reason = |policy: &str, now: &Circumstances| {
            local_verdict(&gateway(policy), now).map(|v| (v.honoured, v.reason))
        };
        assert_eq!(reason("Cluster", &circumstances(false, false, on_a)), None);
        assert_eq!(
            reason("Local", &circumstances(false, true, on_a)),
            Some((false, "CustomVpc"))
        );
        assert_eq!(
            reason("Local", &circumstances(true, false, on_a)),
            Some((false, "OvnTooOld"))
        );
        let partly =
            local_verdict(&gateway("Local"), &circumstances(true, true, &instances)).unwrap();
        assert_eq!((partly.honoured, partly.reason), (false, "NodePortUnknown"));
        assert!(partly.message.contains("node-b"), "{}", partly.message);
        assert_eq!(
            reason("Local", &circumstances(true, true, on_a)),
            Some((true, "Honoured"))
        );
    }
}
