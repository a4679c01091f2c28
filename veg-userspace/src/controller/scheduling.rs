//! Where the instances may run: the gateway's own constraints (one instance per node, on the nodes its
//! nodeSelector picks) combined with the user's spec.affinity, so that neither loosens the other.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
        PodAffinityTerm, PodAntiAffinity,
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement},
};

use crate::crd::gateway::{self, VpcEgressGateway};

/// The pod's affinity: the user's, with the one-instance-per-node anti-affinity added to its required terms and
/// the node affinity narrowed to the nodes nodeSelector picks as well.
pub fn affinity(gateway: &VpcEgressGateway, labels: BTreeMap<String, String>) -> Affinity {
    let user = gateway.spec.affinity.clone().unwrap_or_default();
    let one_per_node = PodAffinityTerm {
        label_selector: Some(LabelSelector {
            match_labels: Some(labels),
            ..Default::default()
        }),
        topology_key: "kubernetes.io/hostname".into(),
        ..Default::default()
    };
    let user_anti = user.pod_anti_affinity.unwrap_or_default();
    let mut required = vec![one_per_node];
    required.extend(
        user_anti
            .required_during_scheduling_ignored_during_execution
            .into_iter()
            .flatten(),
    );
    let user_node = user.node_affinity.unwrap_or_default();
    let node_required = both(
        node_selector(&gateway.spec.node_selector),
        user_node.required_during_scheduling_ignored_during_execution,
    );
    let node_affinity = NodeAffinity {
        required_during_scheduling_ignored_during_execution: node_required,
        ..user_node
    };
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(required),
            ..user_anti
        }),
        node_affinity: (node_affinity != NodeAffinity::default()).then_some(node_affinity),
        pod_affinity: user.pod_affinity,
    }
}

/// Nodes both selectors pick. A NodeSelector's terms are OR-ed and a term's requirements AND-ed, so the
/// intersection is every pair of terms joined into one.
fn both(a: Option<NodeSelector>, b: Option<NodeSelector>) -> Option<NodeSelector> {
    let (a, b) = match (a, b) {
        (Some(a), Some(b)) => (a, b),
        (one, None) | (None, one) => return one,
    };
    let joined = |x: &Option<Vec<NodeSelectorRequirement>>,
                  y: &Option<Vec<NodeSelectorRequirement>>| {
        let all: Vec<NodeSelectorRequirement> = x.iter().chain(y).flatten().cloned().collect();
        (!all.is_empty()).then_some(all)
    };
    let node_selector_terms = a
        .node_selector_terms
        .iter()
        .flat_map(|x| {
            b.node_selector_terms.iter().map(move |y| NodeSelectorTerm {
                match_expressions: joined(&x.match_expressions, &y.match_expressions),
                match_fields: joined(&x.match_fields, &y.match_fields),
            })
        })
        .collect();
    Some(NodeSelector {
        node_selector_terms,
    })
}

/// The gateway's nodeSelector terms as a node selector (terms OR-ed, as the reference does); none without.
fn node_selector(terms: &[gateway::NodeSelectorTerm]) -> Option<NodeSelector> {
    if terms.is_empty() {
        return None;
    }
    let requirement = |e: &LabelSelectorRequirement| NodeSelectorRequirement {
        key: e.key.clone(),
        operator: e.operator.clone(),
        values: e.values.clone(),
    };
    let node_selector_terms = terms
        .iter()
        .map(|term| {
            let mut expressions: Vec<NodeSelectorRequirement> = term
                .match_labels
                .iter()
                .flatten()
                .map(|(k, v)| NodeSelectorRequirement {
                    key: k.clone(),
                    operator: "In".into(),
                    values: Some(vec![v.clone()]),
                })
                .collect();
            expressions.extend(term.match_expressions.iter().map(requirement));
            let fields: Vec<NodeSelectorRequirement> =
                term.match_fields.iter().map(requirement).collect();
            NodeSelectorTerm {
                match_expressions: (!expressions.is_empty()).then_some(expressions),
                match_fields: (!fields.is_empty()).then_some(fields),
            }
        })
        .collect();
    Some(NodeSelector {
        node_selector_terms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::gateway::VpcEgressGatewaySpec;

    fn gateway(yaml: &str) -> VpcEgressGateway {
        let spec: VpcEgressGatewaySpec = serde_yaml::from_str(yaml).unwrap();
        VpcEgressGateway::new("gw", spec)
    }

    fn labels() -> BTreeMap<String, String> {
        BTreeMap::from([("app".to_owned(), "vpc-egress-gateway".to_owned())])
    }

    /// Each required term as "key op values" strings, for comparing.
    fn terms(affinity: &Affinity) -> Vec<Vec<String>> {
        let node = affinity.node_affinity.as_ref().unwrap();
        let selector = node
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap();
        selector
            .node_selector_terms
            .iter()
            .map(|t| {
                t.match_expressions
                    .iter()
                    .flatten()
                    .map(|e| {
                        format!(
                            "{} {} {}",
                            e.key,
                            e.operator,
                            e.values.clone().unwrap_or_default().join("|")
                        )
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn without_user_affinity_the_instances_stay_one_per_node_on_selected_nodes() {
        let g = gateway(
            "externalSubnet: ext\nnodeSelector: [{matchLabels: {zone: a}}, {matchExpressions: [{key: pool, operator: In, values: [egress]}]}]\n",
        );
        let a = affinity(&g, labels());
        assert_eq!(terms(&a), [vec!["zone In a"], vec!["pool In egress"]]);
        let anti = a.pod_anti_affinity.unwrap();
        let required = anti
            .required_during_scheduling_ignored_during_execution
            .unwrap();
        assert_eq!(required.len(), 1);
        assert_eq!(required[0].topology_key, "kubernetes.io/hostname");
        assert!(a.pod_affinity.is_none());

        let unconstrained = affinity(&gateway("externalSubnet: ext\n"), labels());
        assert!(
            unconstrained.node_affinity.is_none(),
            "no node affinity without a nodeSelector or the user's"
        );
    }

    #[test]
    fn the_users_affinity_narrows_and_never_loosens_the_gateways() {
        let g = gateway(
            "externalSubnet: ext\n\
             nodeSelector: [{matchLabels: {zone: a}}, {matchLabels: {zone: b}}]\n\
             affinity:\n\
             \x20 nodeAffinity:\n\
             \x20   requiredDuringSchedulingIgnoredDuringExecution:\n\
             \x20     nodeSelectorTerms: [{matchExpressions: [{key: egress, operator: Exists}]}]\n\
             \x20   preferredDuringSchedulingIgnoredDuringExecution:\n\
             \x20   - {weight: 10, preference: {matchExpressions: [{key: fast, operator: Exists}]}}\n\
             \x20 podAntiAffinity:\n\
             \x20   requiredDuringSchedulingIgnoredDuringExecution:\n\
             \x20   - {topologyKey: topology.kubernetes.io/zone, labelSelector: {matchLabels: {app: db}}}\n\
             \x20 podAffinity:\n\
             \x20   preferredDuringSchedulingIgnoredDuringExecution:\n\
             \x20   - {weight: 1, podAffinityTerm: {topologyKey: kubernetes.io/hostname, labelSelector: {matchLabels: {app: x}}}}\n",
        );
        let a = affinity(&g, labels());
        // (zone a OR zone b) AND egress exists.
        assert_eq!(
            terms(&a),
            [
                vec!["zone In a", "egress Exists "],
                vec!["zone In b", "egress Exists "]
            ]
        );
        let node = a.node_affinity.as_ref().unwrap();
        assert_eq!(
            node.preferred_during_scheduling_ignored_during_execution
                .as_ref()
                .unwrap()[0]
                .weight,
            10
        );
        let required = a
            .pod_anti_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap();
        let keys: Vec<&str> = required.iter().map(|t| t.topology_key.as_str()).collect();
        assert_eq!(
            keys,
            ["kubernetes.io/hostname", "topology.kubernetes.io/zone"],
            "one instance per node stays, the user's term is added"
        );
        assert!(a.pod_affinity.is_some(), "the user's pod affinity is kept");

        let only_user = gateway(
            "externalSubnet: ext\naffinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: egress, operator: Exists}]}]}}}\n",
        );
        assert_eq!(
            terms(&affinity(&only_user, labels())),
            [vec!["egress Exists "]]
        );
    }
}
