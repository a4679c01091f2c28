//! Which pods a gateway's selectors pick: a pod is selected when its namespace matches a selector's
//! namespaceSelector and the pod its podSelector (a missing selector matches everything). The namespace's labels
//! are read on every reconcile, so relabelling a namespace re-selects its pods (the reference misses this).
//! Only pods Kube-OVN has placed on the gateway's VPC count (annotations ovn.kubernetes.io/allocated=true and
//! ovn.kubernetes.io/logical_router=<the VPC's router>): OVN can only send those to the gateway.
//! Selected pods are named as OVN names their logical switch ports: <pod>.<namespace>.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::core::v1::{Namespace, Pod},
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use kube::ResourceExt;

use crate::crd::gateway::Selector;

/// Whether `labels` satisfy `selector` (every matchLabels pair and every matchExpression), as Kubernetes decides.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let pairs = selector.match_labels.iter().flatten();
    let expressions = selector.match_expressions.iter().flatten();
    pairs.into_iter().all(|(k, v)| labels.get(k) == Some(v))
        && expressions.into_iter().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                // An operator Kubernetes does not know selects nothing, rather than everything.
                _ => false,
            }
        })
}

fn matches_optional(selector: &Option<LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    selector.as_ref().is_none_or(|s| matches(s, labels))
}

/// The logical switch ports (<pod>.<namespace>) of the pods on `router`'s VPC the selectors pick, sorted. Pods on
/// the host's network have no port, and pods being deleted are left out.
pub fn selected_ports(
    selectors: &[Selector],
    namespaces: &[Namespace],
    pods: &[Pod],
    router: &str,
) -> Vec<String> {
    let namespace_labels: BTreeMap<String, &BTreeMap<String, String>> = namespaces
        .iter()
        .map(|n| (n.name_any(), n.labels()))
        .collect();
    let empty = BTreeMap::new();
    let mut ports = BTreeSet::new();
    for pod in pods {
        let on_host = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let annotations = pod.annotations();
        let placed = annotations
            .get("ovn.kubernetes.io/allocated")
            .is_some_and(|v| v == "true")
            && annotations
                .get("ovn.kubernetes.io/logical_router")
                .is_some_and(|r| r == router);
        if on_host || !placed || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let namespace = pod.namespace().unwrap_or_default();
        let ns_labels = namespace_labels.get(&namespace).copied().unwrap_or(&empty);
        let picked = selectors.iter().any(|s| {
            matches_optional(&s.namespace_selector, ns_labels)
                && matches_optional(&s.pod_selector, pod.labels())
        });
        if picked {
            ports.insert(format!("{}.{namespace}", pod.name_any()));
        }
    }
    ports.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(yaml: &str) -> LabelSelector {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn namespace(name: &str, pairs: &[(&str, &str)]) -> Namespace {
        let mut n = Namespace::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some(labels(pairs));
        n
    }

    fn pod(namespace: &str, name: &str, pairs: &[(&str, &str)]) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some(namespace.into());
        p.metadata.labels = Some(labels(pairs));
        p.metadata.annotations = Some(labels(&[
            ("ovn.kubernetes.io/allocated", "true"),
            ("ovn.kubernetes.io/logical_router", "ovn-cluster"),
        ]));
        p
    }

    #[test]
    fn every_operator_decides_as_kubernetes_does() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let cases = [
            ("matchLabels: {app: web}", true),
            ("matchLabels: {app: db}", false),
            ("matchLabels: {app: web, tier: back}", false),
            (
                "matchExpressions: [{key: app, operator: In, values: [web, db]}]",
                true,
            ),
            (
                "matchExpressions: [{key: app, operator: In, values: [db]}]",
                false,
            ),
            (
                "matchExpressions: [{key: app, operator: NotIn, values: [db]}]",
                true,
            ),
            (
                "matchExpressions: [{key: zone, operator: NotIn, values: [a]}]",
                true,
            ),
            (
                "matchExpressions: [{key: app, operator: NotIn, values: [web]}]",
                false,
            ),
            ("matchExpressions: [{key: tier, operator: Exists}]", true),
            ("matchExpressions: [{key: zone, operator: Exists}]", false),
            (
                "matchExpressions: [{key: zone, operator: DoesNotExist}]",
                true,
            ),
            (
                "matchExpressions: [{key: app, operator: DoesNotExist}]",
                false,
            ),
            ("matchExpressions: [{key: app, operator: Bogus}]", false),
            ("{}", true),
        ];
        for (yaml, expected) in cases {
            assert_eq!(matches(&selector(yaml), &l), expected, "{yaml}");
        }
    }

    #[test]
    fn pods_are_picked_by_namespace_and_pod_labels() {
        let selectors: Vec<Selector> = serde_yaml::from_str(
            "- namespaceSelector: {matchLabels: {egress: veg}}\n  podSelector: {matchLabels: {app: web}}\n\
             - podSelector: {matchLabels: {app: batch}}\n",
        )
        .unwrap();
        let namespaces = [namespace("a", &[("egress", "veg")]), namespace("b", &[])];
        let mut on_host = pod("a", "host", &[("app", "web")]);
        on_host.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            host_network: Some(true),
            ..Default::default()
        });
        let mut other_vpc = pod("a", "web4", &[("app", "web")]);
        other_vpc
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("ovn.kubernetes.io/logical_router".into(), "vpc1".into());
        let mut unallocated = pod("a", "web5", &[("app", "web")]);
        unallocated.metadata.annotations = None;
        let pods = [
            other_vpc,
            unallocated,
            pod("a", "web1", &[("app", "web")]),
            pod("b", "web2", &[("app", "web")]),
            pod("b", "batch1", &[("app", "batch")]),
            pod("a", "db1", &[("app", "db")]),
            on_host,
        ];
        assert_eq!(
            selected_ports(&selectors, &namespaces, &pods, "ovn-cluster"),
            ["batch1.b", "web1.a"]
        );

        // Relabelling namespace b selects its web pod too.
        let relabelled = [
            namespace("a", &[("egress", "veg")]),
            namespace("b", &[("egress", "veg")]),
        ];
        assert_eq!(
            selected_ports(&selectors, &relabelled, &pods, "ovn-cluster"),
            ["batch1.b", "web1.a", "web2.b"]
        );
    }
}
