//! Nothing left on the node: the pinned state of an instance whose pod is gone for good is removed, while a
//! container restart inside the same pod keeps its flows.
//!
//! The pins (/sys/fs/bpf/veg/NAMESPACE_GATEWAY, on the node's bpffs) outlive the agent on purpose: a restarted
//! container takes over every live flow. They must not outlive the pod. Two moments decide, both with the
//! Kubernetes API the instance already reads its gateway from:
//! - when the agent stops, it removes its own pins if its pod is being deleted (scale-down, rolling update,
//!   rescheduling, the gateway deleted), and keeps them if the pod stays (the container alone restarts);
//! - when an agent starts, it removes the pins of any gateway with no instance on this node any more (the
//!   gateway deleted, or its pod deleted while the node was down or the agent was killed before it could).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, api::ListParams};
use tracing::{info, warn};

use crate::{controller::workload::GATEWAY_LABEL, crd::gateway::VpcEgressGateway, datapath::pins};

/// The instance's own pod, from the environment the Deployment sets (the downward API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnPod {
    pub namespace: String,
    pub name: String,
    pub node: String,
}

impl OwnPod {
    /// POD_NAMESPACE, POD_NAME and NODE_NAME; None outside a pod (or an older Deployment without them).
    pub fn from_env() -> Option<OwnPod> {
        let var = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
        Some(OwnPod {
            namespace: var("POD_NAMESPACE")?,
            name: var("POD_NAME")?,
            node: var("NODE_NAME")?,
        })
    }
}

/// Whether the pod is going away for good: deleted, or being deleted. An API that cannot be asked counts as
/// no (keeping pins a while longer is better than losing a restarting container's flows).
pub async fn pod_is_leaving(client: &Client, pod: &OwnPod) -> bool {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
    match pods.get_opt(&pod.name).await {
        Ok(None) => true,
        Ok(Some(found)) => found.metadata.deletion_timestamp.is_some(),
        Err(e) => {
            warn!(pod = %pod.name, "cannot tell whether the pod is being deleted: {e}; keeping the pins");
            false
        }
    }
}

/// The gateway a pin directory belongs to: NAMESPACE_NAME, as the controller names instances' pins (Kubernetes
/// names have no '_'). None for pins of another naming (a `veg gateway --name` run by hand), which are left alone.
fn gateway_of(dir: &str) -> Option<(&str, &str)> {
    let (namespace, name) = dir.split_once('_')?;
    let dns_label = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    (dns_label(namespace) && dns_label(name)).then_some((namespace, name))
}

/// Why the pins of gateway `namespace/name` have no owner on `node` any more, or None while they have one.
async fn orphaned(
    client: &Client,
    namespace: &str,
    name: &str,
    node: &str,
) -> anyhow::Result<Option<String>> {
    let gateways: Api<VpcEgressGateway> = Api::namespaced(client.clone(), namespace);
    if gateways.get_opt(name).await?.is_none() {
        return Ok(Some(format!("VpcEgressGateway {namespace}/{name} is gone")));
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let instances = pods
        .list(&ListParams::default().labels(&format!("{GATEWAY_LABEL}={name}")))
        .await?;
    let here = instances
        .items
        .iter()
        .any(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node));
    Ok((!here).then(|| format!("no instance of {namespace}/{name} runs on node {node}")))
}

/// Where the instances' pins are: /sys/fs/bpf/veg, each instance's in a directory of its name.
pub fn pins_root() -> PathBuf {
    pins::gateway_dir("")
}

/// Remove the pins under `root` (pins_root) of every gateway but `own` that has no instance on this node any
/// more. Returns the directories removed; a gateway whose state cannot be read keeps its pins (and is logged).
pub async fn remove_orphans(client: &Client, root: &Path, own: &str, node: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.file_name().to_string_lossy().into_owned();
        let Some((namespace, name)) = gateway_of(&dir).filter(|_| dir != own) else {
            continue;
        };
        match orphaned(client, namespace, name, node).await {
            Ok(Some(why)) => match pins::remove_dir_of_pins(&entry.path()) {
                Ok(_) => {
                    info!(pins = %entry.path().display(), "removed pinned state left on the node: {why}");
                    removed.push(entry.path());
                }
                Err(e) => {
                    warn!(pins = %entry.path().display(), "cannot remove pinned state ({why}): {e:#}")
                }
            },
            Ok(None) => {}
            Err(e) => {
                warn!(pins = %entry.path().display(), "cannot tell whether these pins have an owner: {e:#}")
            }
        }
    }
    removed
}

/// After the agent stopped: remove its own pins (`own` under `root`) when its pod is leaving for good.
pub async fn remove_own_if_leaving(
    client: &Client,
    pod: &OwnPod,
    root: &Path,
    own: &str,
) -> anyhow::Result<()> {
    if pod_is_leaving(client, pod).await {
        let dir = root.join(own);
        pins::remove_dir_of_pins(&dir)
            .with_context(|| format!("removing {} of a deleted pod", dir.display()))?;
        info!(pins = %dir.display(), pod = %pod.name, "the pod is being deleted: its pinned state is removed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pins_named_as_the_controller_names_them_are_gateways() {
        assert_eq!(
            gateway_of("default_gateway1"),
            Some(("default", "gateway1"))
        );
        assert_eq!(
            gateway_of("kube-system_egress.a"),
            Some(("kube-system", "egress.a"))
        );
        for not_ours in ["gw1", "veg123x0-gw", "Default_gw", "_gw", "ns_"] {
            assert_eq!(gateway_of(not_ours), None, "{not_ours}");
        }
    }
}
