// kube's derive takes repeated printcolumn, shortname and validation attributes by design.
#![allow(clippy::duplicated_attributes)]

//! VpcEgressGateway (kubeovn.io/v1): every field of the contract (docs/contract.md), the reference's validation,
//! and the immutability the reference documents but does not enforce.

use k8s_openapi::{
    api::core::v1::{Affinity, ResourceRequirements, Toleration},
    apimachinery::pkg::{
        apis::meta::v1::{Condition, LabelSelector, LabelSelectorRequirement},
        util::intstr::IntOrString,
    },
};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "kubeovn.io",
    version = "v1",
    kind = "VpcEgressGateway",
    plural = "vpc-egress-gateways",
    singular = "vpc-egress-gateway",
    shortname = "vpc-egress-gw",
    shortname = "veg",
    namespaced,
    status = "VpcEgressGatewayStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.labelSelector"
    ),
    printcolumn(name = "VPC", type_ = "string", json_path = ".spec.vpc"),
    printcolumn(name = "REPLICAS", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(
        name = "BFD ENABLED",
        type_ = "boolean",
        json_path = ".spec.bfd.enabled"
    ),
    printcolumn(
        name = "EXTERNAL SUBNET",
        type_ = "string",
        json_path = ".spec.externalSubnet"
    ),
    printcolumn(name = "PHASE", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "READY", type_ = "boolean", json_path = ".status.ready"),
    printcolumn(
        name = "INTERNAL IPS",
        type_ = "string",
        json_path = ".status.internalIPs",
        priority = "1"
    ),
    printcolumn(
        name = "EXTERNAL IPS",
        type_ = "string",
        json_path = ".status.externalIPs",
        priority = "1"
    ),
    printcolumn(
        name = "WORKING NODES",
        type_ = "string",
        json_path = ".status.workload.nodes",
        priority = "1"
    ),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    cel
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.policies) && size(self.policies) > 0) || (has(self.selectors) && size(self.selectors) > 0)").message("give at least one policy or one selector"))]
#[x_kube(validation = Rule::new("!has(self.internalIPs) || size(self.internalIPs) == 0 || size(self.internalIPs) >= self.replicas").message("internalIPs must hold at least replicas addresses"))]
#[x_kube(validation = Rule::new("!has(self.externalIPs) || size(self.externalIPs) == 0 || size(self.externalIPs) >= self.replicas").message("externalIPs must hold at least replicas addresses"))]
#[x_kube(validation = Rule::new("has(self.prefix) == has(oldSelf.prefix) && (!has(self.prefix) || self.prefix == oldSelf.prefix)").message("prefix is immutable"))]
#[x_kube(validation = Rule::new("has(self.vpc) == has(oldSelf.vpc) && (!has(self.vpc) || self.vpc == oldSelf.vpc)").message("vpc is immutable"))]
#[x_kube(validation = Rule::new("has(self.internalSubnet) == has(oldSelf.internalSubnet) && (!has(self.internalSubnet) || self.internalSubnet == oldSelf.internalSubnet)").message("internalSubnet is immutable"))]
#[x_kube(validation = Rule::new("self.externalSubnet == oldSelf.externalSubnet").message("externalSubnet is immutable"))]
pub struct VpcEgressGatewaySpec {
    /// VPC name; the default VPC (ovn-cluster) when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc: Option<String>,
    /// Instances.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 10))]
    pub replicas: i32,
    /// Prefix of the workload's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == '' || self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?[-.]?$')").message("prefix must be DNS-label-like, optionally ending in '-' or '.'"))]
    pub prefix: Option<String>,
    /// Image of the workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Subnet for the VPC side; the VPC's default subnet when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_subnet: Option<String>,
    /// Subnet for the external side.
    #[schemars(length(min = 1))]
    pub external_subnet: String,
    /// Fixed addresses on the VPC side, one per instance.
    #[serde(default, rename = "internalIPs", skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new(IP_OR_PAIR_LIST).message("each entry must be an IPv4, an IPv6 or a 'v4,v6' pair"))]
    pub internal_ips: Vec<String>,
    /// Fixed addresses on the external side, one per instance.
    #[serde(default, rename = "externalIPs", skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new(IP_OR_PAIR_LIST).message("each entry must be an IPv4, an IPv6 or a 'v4,v6' pair"))]
    pub external_ips: Vec<String>,
    #[serde(default)]
    pub bfd: Bfd,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<Policy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selectors: Vec<Selector>,
    /// Node selector terms (OR-ed) for the workload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selector: Vec<NodeSelectorTerm>,
    #[serde(default)]
    pub traffic_policy: TrafficPolicy,
    /// Taints the instances tolerate (core/v1 Toleration), e.g. of nodes set aside for egress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(t, !has(t.operator) || t.operator in ['Exists', 'Equal'])").message("a toleration's operator is Exists or Equal"))]
    #[x_kube(validation = Rule::new("self.all(t, !has(t.operator) || t.operator != 'Exists' || !has(t.value) || t.value == '')").message("a toleration with operator Exists takes no value"))]
    #[x_kube(validation = Rule::new("self.all(t, !has(t.effect) || t.effect in ['', 'NoSchedule', 'PreferNoSchedule', 'NoExecute'])").message("a toleration's effect is NoSchedule, PreferNoSchedule or NoExecute"))]
    pub tolerations: Vec<Toleration>,
    /// The gateway container's requests and limits (core/v1 ResourceRequirements), used as given; without it
    /// the instances request what a default instance needs (controller/workload.rs: DEFAULT_REQUESTS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Scheduling constraints (core/v1 Affinity), added to the gateway's own: its instances stay one per node and
    /// on the nodes nodeSelector picks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Seconds a stopping instance keeps translating after it withdrew from OVN (BFD AdminDown, not Ready), so
    /// that a rolling update or a scale-down loses no flow OVN still sends it. Not in upstream's resource.
    #[serde(default = "default_drain_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub drain_seconds: i32,
    /// Bandwidth limits of each instance, each way (as upstream has them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bandwidth>,
}

/// A rate: an integer in Mbit/s, or a quantity of bits per second with unit M, Mi, G or Gi ("100M", "1.5G",
/// "512Mi"); 0 or absent: no limit. Under 1 Mbit/s counts as 1 Mbit/s. string() turns an integer into its
/// digits, so that one pattern checks both forms, and a negative integer ("-1") fails it.
const RATE_RULE: &str =
    "string(self).matches('^([0-9]+|([0-9]+([.][0-9]+)?|[.][0-9]+)(M|Mi|G|Gi))$')";
const RATE_MESSAGE: &str = "a rate is Mbit/s as a non-negative integer, or bits per second with unit M, Mi, G or Gi (e.g. 100M, 1.5G, 512Mi)";

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
pub struct Bandwidth {
    /// What each instance sends toward the outside. Packets over it queue (about 20 ms' worth) and are then
    /// dropped; the instance's own packets (BFD) are not limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(RATE_RULE).message(RATE_MESSAGE))]
    pub egress: Option<IntOrString>,
    /// What each instance sends into the VPC (the replies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(RATE_RULE).message(RATE_MESSAGE))]
    pub ingress: Option<IntOrString>,
}

impl Bandwidth {
    /// A limit as `veg gateway --egress-rate/--ingress-rate` takes it.
    pub fn argument(rate: &IntOrString) -> String {
        match rate {
            IntOrString::Int(mbit) => mbit.to_string(),
            IntOrString::String(text) => text.clone(),
        }
    }
}

fn default_drain_seconds() -> i32 {
    30
}

/// Each entry an IPv4 address, an IPv6 address, or a dual-stack pair "v4,v6" / "v6,v4".
const IP_OR_PAIR_LIST: &str = "self.all(e, e.split(',').size() <= 2 && e.split(',').all(a, isIP(a)) \
    && (e.split(',').size() == 1 || ip(e.split(',')[0]).family() != ip(e.split(',')[1]).family()))";

fn default_replicas() -> i32 {
    1
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Bfd {
    #[serde(default)]
    pub enabled: bool,
    /// Milliseconds.
    #[serde(default = "default_interval", rename = "minRX")]
    #[schemars(range(min = 1, max = 3600000))]
    pub min_rx: i32,
    /// Milliseconds.
    #[serde(default = "default_interval", rename = "minTX")]
    #[schemars(range(min = 1, max = 3600000))]
    pub min_tx: i32,
    #[serde(default = "default_multiplier")]
    #[schemars(range(min = 1, max = 3600000))]
    pub multiplier: i32,
}

impl Default for Bfd {
    fn default() -> Bfd {
        Bfd {
            enabled: false,
            min_rx: default_interval(),
            min_tx: default_interval(),
            multiplier: default_multiplier(),
        }
    }
}

fn default_interval() -> i32 {
    1000
}

fn default_multiplier() -> i32 {
    3
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.ipBlocks) && size(self.ipBlocks) > 0) || (has(self.subnets) && size(self.subnets) > 0)").message("a policy needs ipBlocks or subnets"))]
pub struct Policy {
    /// Translate the sources (MASQUERADE); route them unchanged when false.
    #[serde(default)]
    pub snat: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(b, isIP(b) || isCIDR(b))").message("each ipBlock must be an IP address or a CIDR"))]
    pub ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.namespaceSelector) || has(self.namespaceSelector.matchLabels) || has(self.namespaceSelector.matchExpressions)").message("namespaceSelector needs matchLabels or matchExpressions"))]
#[x_kube(validation = Rule::new("!has(self.podSelector) || has(self.podSelector.matchLabels) || has(self.podSelector.matchExpressions)").message("podSelector needs matchLabels or matchExpressions"))]
pub struct Selector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelectorTerm {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_fields: Vec<LabelSelectorRequirement>,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum TrafficPolicy {
    Local,
    #[default]
    Cluster,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct VpcEgressGatewayStatus {
    #[serde(default)]
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, rename = "internalIPs", skip_serializing_if = "Vec::is_empty")]
    pub internal_ips: Vec<String>,
    #[serde(default, rename = "externalIPs", skip_serializing_if = "Vec::is_empty")]
    pub external_ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum Phase {
    Pending,
    Processing,
    Completed,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

/// The CRD as YAML, for `veg crd` and deploy/crds/.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let header =
        "# Generated by `veg crd` from veg-userspace/src/crd/gateway.rs: do not edit by hand.\n";
    format!(
        "{header}{}",
        serde_yaml::to_string(&VpcEgressGateway::crd()).expect("the CRD serializes")
    )
}

/// A source as `ipBlocks` allow it: a CIDR, or one address meaning one host.
pub fn parse_source(text: &str) -> Result<ipnet::IpNet, String> {
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("invalid source {text:?}: expected an IP address or CIDR"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> VpcEgressGatewaySpec {
        serde_yaml::from_str(
            "vpc: vpc1\nreplicas: 2\ninternalSubnet: subnet1\nexternalSubnet: macvlan\nbfd: {enabled: true}\n\
             policies: [{snat: true, ipBlocks: [192.168.0.0/24, 10.0.0.5]}]\n",
        )
        .unwrap()
    }

    fn gateway(spec: VpcEgressGatewaySpec) -> VpcEgressGateway {
        VpcEgressGateway::new("gateway2", spec)
    }

    fn errors(result: Result<(), impl std::fmt::Display>) -> String {
        result.err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn defaults_follow_the_contract() {
        let spec: VpcEgressGatewaySpec = serde_yaml::from_str(
            "externalSubnet: ext\nselectors: [{podSelector: {matchLabels: {a: b}}}]\n",
        )
        .unwrap();
        assert_eq!(spec.replicas, 1);
        assert_eq!(
            (
                spec.bfd.enabled,
                spec.bfd.min_rx,
                spec.bfd.min_tx,
                spec.bfd.multiplier
            ),
            (false, 1000, 1000, 3)
        );
        assert_eq!(spec.traffic_policy, TrafficPolicy::Cluster);
        assert_eq!(spec.drain_seconds, 30);
        assert!(gateway(spec).validate_cel().is_ok());
    }

    fn toleration(yaml: &str) -> Toleration {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn scheduling_and_resources_are_accepted_as_kubernetes_writes_them() {
        let spec: VpcEgressGatewaySpec = serde_yaml::from_str(
            "externalSubnet: ext\nselectors: [{podSelector: {matchLabels: {a: b}}}]\n\
             tolerations: [{key: dedicated, operator: Equal, value: egress, effect: NoSchedule}, {operator: Exists}]\n\
             resources: {requests: {cpu: 500m, memory: 512Mi}, limits: {memory: 1Gi}}\n\
             affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: egress, operator: Exists}]}]}}}\n",
        )
        .unwrap();
        assert_eq!(spec.tolerations.len(), 2);
        assert_eq!(
            spec.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0,
            "1Gi"
        );
        assert!(spec.affinity.is_some());
        let message = errors(gateway(spec).validate_cel());
        assert!(message.is_empty(), "{message}");
    }

    #[test]
    fn bandwidth_takes_upstreams_rates() {
        let spec = |bandwidth: &str| -> VpcEgressGatewaySpec {
            serde_yaml::from_str(&format!(
                "externalSubnet: ext\nselectors: [{{podSelector: {{matchLabels: {{a: b}}}}}}]\nbandwidth: {bandwidth}\n"
            ))
            .unwrap()
        };
        for good in [
            "{egress: 100, ingress: 1.5G}",
            "{egress: 512Mi}",
            "{ingress: .5G}",
            "{egress: 0}",
            "{}",
        ] {
            let message = errors(gateway(spec(good)).validate_cel());
            assert!(message.is_empty(), "{good}: {message}");
        }
        for bad in [
            "{egress: -1}",
            "{ingress: 100K}",
            "{egress: 1.2.3M}",
            "{egress: fast}",
        ] {
            let message = errors(gateway(spec(bad)).validate_cel());
            assert!(
                message.contains("unit M, Mi, G or Gi"),
                "{bad}: {message:?}"
            );
        }
        let limits = spec("{egress: 100, ingress: 1.5G}").bandwidth.unwrap();
        assert_eq!(Bandwidth::argument(limits.egress.as_ref().unwrap()), "100");
        assert_eq!(
            Bandwidth::argument(limits.ingress.as_ref().unwrap()),
            "1.5G"
        );
    }

    #[test]
    fn cel_rules_accept_the_documents_example() {
        assert!(
            gateway(valid()).validate_cel().is_ok(),
            "{}",
            errors(gateway(valid()).validate_cel())
        );
        let dual = VpcEgressGatewaySpec {
            internal_ips: vec!["10.0.0.2,fd00::2".into(), "10.0.0.3".into()],
            ..valid()
        };
        assert!(gateway(dual).validate_cel().is_ok());
    }

    #[test]
    fn cel_rules_refuse_what_the_reference_refuses() {
        let cases: Vec<(VpcEgressGatewaySpec, &str)> = vec![
            (
                VpcEgressGatewaySpec {
                    policies: vec![],
                    selectors: vec![],
                    ..valid()
                },
                "at least one policy or one selector",
            ),
            (
                VpcEgressGatewaySpec {
                    policies: vec![Policy {
                        snat: true,
                        ..Policy::default()
                    }],
                    ..valid()
                },
                "needs ipBlocks or subnets",
            ),
            (
                VpcEgressGatewaySpec {
                    policies: vec![Policy {
                        ip_blocks: vec!["10.0.0.0/33".into()],
                        ..Policy::default()
                    }],
                    ..valid()
                },
                "IP address or a CIDR",
            ),
            (
                VpcEgressGatewaySpec {
                    internal_ips: vec!["10.0.0.2".into()],
                    ..valid()
                },
                "at least replicas",
            ),
            (
                VpcEgressGatewaySpec {
                    external_ips: vec!["10.0.0.2,10.0.0.3".into(), "x".into()],
                    ..valid()
                },
                "'v4,v6' pair",
            ),
            (
                VpcEgressGatewaySpec {
                    prefix: Some("Bad_Prefix".into()),
                    ..valid()
                },
                "DNS-label-like",
            ),
            (
                VpcEgressGatewaySpec {
                    selectors: vec![Selector {
                        pod_selector: Some(LabelSelector::default()),
                        ..Selector::default()
                    }],
                    ..valid()
                },
                "podSelector needs matchLabels or matchExpressions",
            ),
            (
                VpcEgressGatewaySpec {
                    tolerations: vec![toleration("{key: a, operator: Exists, value: b}")],
                    ..valid()
                },
                "operator Exists takes no value",
            ),
            (
                VpcEgressGatewaySpec {
                    tolerations: vec![toleration("{key: a, operator: Same}")],
                    ..valid()
                },
                "operator is Exists or Equal",
            ),
            (
                VpcEgressGatewaySpec {
                    tolerations: vec![toleration("{key: a, effect: NoRun}")],
                    ..valid()
                },
                "NoSchedule, PreferNoSchedule or NoExecute",
            ),
        ];
        for (spec, expected) in cases {
            let message = errors(gateway(spec.clone()).validate_cel());
            assert!(
                message.contains(expected),
                "{spec:?}: expected {expected:?}, got {message:?}"
            );
        }
    }

    #[test]
    fn immutable_fields_stay_as_created() {
        let old = gateway(valid());
        let changes = [
            (
                VpcEgressGatewaySpec {
                    vpc: Some("vpc2".into()),
                    ..valid()
                },
                "vpc is immutable",
            ),
            (
                VpcEgressGatewaySpec {
                    internal_subnet: None,
                    ..valid()
                },
                "internalSubnet is immutable",
            ),
            (
                VpcEgressGatewaySpec {
                    external_subnet: "other".into(),
                    ..valid()
                },
                "externalSubnet is immutable",
            ),
            // The reference lets a prefix be added when the old object had none; we do not.
            (
                VpcEgressGatewaySpec {
                    prefix: Some("veg-".into()),
                    ..valid()
                },
                "prefix is immutable",
            ),
        ];
        for (spec, expected) in changes {
            let message = errors(gateway(spec).validate_cel_update(&old));
            assert!(
                message.contains(expected),
                "expected {expected:?}, got {message:?}"
            );
        }
        let scaled = VpcEgressGatewaySpec {
            replicas: 3,
            internal_ips: vec![],
            ..valid()
        };
        assert!(
            gateway(scaled).validate_cel_update(&old).is_ok(),
            "replicas may change"
        );
    }

    #[test]
    fn the_crd_has_names_columns_and_subresources() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(VpcEgressGateway::crd()).unwrap();
        assert_eq!(
            crd["spec"]["names"]["shortNames"],
            serde_json::json!(["vpc-egress-gw", "veg"])
        );
        assert_eq!(crd["spec"]["names"]["plural"], "vpc-egress-gateways");
        let version = &crd["spec"]["versions"][0];
        assert_eq!(
            version["subresources"]["scale"]["labelSelectorPath"],
            ".status.labelSelector"
        );
        assert!(version["subresources"]["status"].is_object());
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            columns,
            [
                "VPC",
                "REPLICAS",
                "BFD ENABLED",
                "EXTERNAL SUBNET",
                "PHASE",
                "READY",
                "INTERNAL IPS",
                "EXTERNAL IPS",
                "WORKING NODES",
                "AGE"
            ]
        );
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["properties"]["replicas"]["maximum"], 10.0);
        assert_eq!(
            spec["properties"]["trafficPolicy"]["enum"],
            serde_json::json!(["Local", "Cluster"])
        );
    }

    #[test]
    fn the_checked_in_crd_is_what_the_types_generate() {
        let checked_in = include_str!("../../../deploy/crds/vpc-egress-gateway.yaml");
        assert!(
            checked_in == crd_yaml(),
            "deploy/crds/vpc-egress-gateway.yaml is stale: regenerate it with `veg crd > deploy/crds/vpc-egress-gateway.yaml`"
        );
    }
}
