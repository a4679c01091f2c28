//! What the gateway's instances really are, read from their pods: the node each runs on, the addresses Kube-OVN's
//! IPAM gave its two networks (the CNI writes them into the pod's annotations), and whether it is Ready.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

/// Annotation prefix of the internal (default) network.
pub const INTERNAL_PROVIDER: &str = "ovn";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub pod: String,
    pub node: Option<String>,
    /// Internal addresses, one per family, joined with ',' as Kube-OVN writes them.
    pub internal_ip: Option<String>,
    pub external_ip: Option<String>,
    /// The pod's Ready condition: its container's (the agent's /readyz: attached, every BFD session Up, not
    /// withdrawn) and the readiness gate's (OVN routes to it).
    pub ready: bool,
    /// The container's readiness alone (ContainersReady): the agent can carry traffic, whether or not OVN sends
    /// it any yet.
    pub containers_ready: bool,
}

impl Observed {
    /// Both networks have their address: the reference reported Ready without the external one (a known bug).
    pub fn attached(&self) -> bool {
        self.internal_ip.is_some() && self.external_ip.is_some()
    }

    /// Carries traffic: Ready, with both attachments.
    pub fn serving(&self) -> bool {
        self.ready && self.attached()
    }

    /// Can carry traffic (its agent is ready, with both attachments), so OVN may be told to send it some.
    pub fn can_serve(&self) -> bool {
        self.containers_ready && self.attached()
    }
}

/// The address Kube-OVN allocated on `provider`'s network, once its CNI has written it.
fn address(pod: &Pod, provider: &str) -> Option<String> {
    let annotations = pod.annotations();
    let allocated = annotations.get(&format!("{provider}.kubernetes.io/allocated"));
    let address = annotations.get(&format!("{provider}.kubernetes.io/ip_address"));
    address
        .filter(|a| !a.is_empty() && allocated.is_some_and(|v| v == "true"))
        .cloned()
}

/// Whether the pod's condition `type_` is True.
pub fn condition_true(pod: &Pod, type_: &str) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions
        .into_iter()
        .flatten()
        .any(|c| c.type_ == type_ && c.status == "True")
}

fn has_condition(pod: &Pod, type_: &str) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.into_iter().flatten().any(|c| c.type_ == type_)
}

/// The instances among `pods` (the Deployment's), sorted by pod name; pods being deleted are gone already.
pub fn observe(pods: &[Pod], external_provider: &str) -> Vec<Observed> {
    let mut instances: Vec<Observed> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|pod| Observed {
            pod: pod.name_any(),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            internal_ip: address(pod, INTERNAL_PROVIDER),
            external_ip: address(pod, external_provider),
            ready: condition_true(pod, "Ready"),
            // A pod without the condition (written before it was introduced) goes by Ready.
            containers_ready: if has_condition(pod, "ContainersReady") {
                condition_true(pod, "ContainersReady")
            } else {
                condition_true(pod, "Ready")
            },
        })
        .collect();
    instances.sort_by(|a, b| a.pod.cmp(&b.pod));
    instances
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_is_read_from_its_pod() {
        let pods: Vec<Pod> = serde_yaml::from_str(
            r#"
- metadata:
    name: gw-b
    annotations:
      ovn.kubernetes.io/allocated: "true"
      ovn.kubernetes.io/ip_address: 10.16.0.5,fd00::5
      macvlan.default.kubernetes.io/allocated: "true"
      macvlan.default.kubernetes.io/ip_address: 172.17.0.11
  spec: {nodeName: node2, containers: []}
  status: {conditions: [{type: Ready, status: "True"}]}
- metadata:
    name: gw-a
    annotations:
      ovn.kubernetes.io/allocated: "true"
      ovn.kubernetes.io/ip_address: 10.16.0.4
      macvlan.default.kubernetes.io/ip_address: 172.17.0.10
  spec: {nodeName: node1, containers: []}
  status: {conditions: [{type: Ready, status: "False"}]}
- metadata: {name: gw-c, deletionTimestamp: "2026-01-01T00:00:00Z"}
  spec: {containers: []}
"#,
        )
        .unwrap();
        assert_eq!(
            observe(&pods, "macvlan.default"),
            [
                Observed {
                    pod: "gw-a".into(),
                    node: Some("node1".into()),
                    internal_ip: Some("10.16.0.4".into()),
                    // Written, but not yet marked allocated: not there yet.
                    external_ip: None,
                    ready: false,
                    containers_ready: false,
                },
                Observed {
                    pod: "gw-b".into(),
                    node: Some("node2".into()),
                    internal_ip: Some("10.16.0.5,fd00::5".into()),
                    external_ip: Some("172.17.0.11".into()),
                    ready: true,
                    containers_ready: true,
                },
            ]
        );
    }
}
