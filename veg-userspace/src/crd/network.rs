//! The parts of Kube-OVN's Vpc and Subnet (kubeovn.io/v1, cluster-scoped, their CRDs installed by Kube-OVN) that
//! the gateway reads. Unknown fields are ignored, so the full resources deserialize.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The VPC a gateway (or subnet) naming none is in: Kube-OVN's default VPC and its router.
pub const DEFAULT_VPC: &str = "ovn-cluster";

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "kubeovn.io",
    version = "v1",
    kind = "Vpc",
    status = "VpcStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct VpcSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd_port: Option<BfdPort>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BfdPort {
    #[serde(default)]
    pub enabled: bool,
    /// A bare IP: v4, v6, or "v4,v6".
    #[serde(default)]
    pub ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct VpcStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd_port: Option<BfdPortStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_logical_switch: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BfdPortStatus {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub ip: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(group = "kubeovn.io", version = "v1", kind = "Subnet")]
#[serde(rename_all = "camelCase")]
pub struct SubnetSpec {
    #[serde(default)]
    pub cidr_block: String,
    #[serde(default)]
    pub gateway: String,
    #[serde(default)]
    pub protocol: String,
    #[serde(default)]
    pub provider: String,
    #[serde(default)]
    pub vpc: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_ips: Vec<String>,
}

impl Subnet {
    /// Multus' name for the subnet's network attachment: a provider "<nad>.<namespace>" is "<namespace>/<nad>".
    pub fn network_attachment(&self) -> Option<String> {
        match self.spec.provider.split_once('.') {
            Some((nad, namespace)) if !nad.is_empty() && !namespace.is_empty() => {
                Some(format!("{namespace}/{nad}"))
            }
            _ => None,
        }
    }
}
