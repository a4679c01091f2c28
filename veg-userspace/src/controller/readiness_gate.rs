//! The instances' readiness gate: a pod of the gateway is Ready only once OVN routes to it, so that "Ready" means
//! "OVN sends it traffic" and a rolling update never takes the next old instance down before its replacement
//! carries traffic. The agent's own readiness (its BFD sessions Up on the wire) runs ahead of OVN, which writes
//! a session's status about a second later; the gate's condition is set here from what the Northbound database
//! says: the instance is a nexthop of the gateway's routes or policies and, with BFD, its session is up.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

use super::{instances::Observed, ovn_input::addresses, workload::ROUTED_CONDITION};
use crate::ovn::model::GatewaySpec;

/// Whether OVN routes to each instance (by pod name): every address it serves traffic of is routed.
pub fn routed_instances(
    instances: &[Observed],
    spec: &GatewaySpec,
    routed: &BTreeSet<IpAddr>,
) -> BTreeMap<String, bool> {
    let served: BTreeSet<&IpAddr> = spec.instances.iter().flat_map(|i| &i.addresses).collect();
    instances
        .iter()
        .map(|i| {
            let mine: Vec<IpAddr> = addresses(i.internal_ip.as_deref().unwrap_or_default())
                .unwrap_or_default()
                .into_iter()
                .filter(|a| served.contains(a))
                .collect();
            let is_routed = !mine.is_empty() && mine.iter().all(|a| routed.contains(a));
            (i.pod.clone(), is_routed)
        })
        .collect()
}

/// The JSON patch that sets the gate's condition on `pod` to `routed`, or None when it says so already.
pub fn condition_patch(pod: &Pod, routed: bool, now: Timestamp) -> Option<Value> {
    let status = if routed { "True" } else { "False" };
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    let existing = conditions.and_then(|c| c.iter().position(|c| c.type_ == ROUTED_CONDITION));
    if existing.is_some_and(|index| conditions.unwrap()[index].status == status) {
        return None;
    }
    let condition = json!({
        "type": ROUTED_CONDITION,
        "status": status,
        "reason": if routed { "Routed" } else { "NotRouted" },
        "message": if routed {
            "OVN sends the gateway's traffic to this instance"
        } else {
            "OVN does not send the gateway's traffic to this instance (yet): no route or policy names it, or its BFD session is not up in OVN"
        },
        "lastTransitionTime": now.to_string(),
    });
    Some(match (conditions, existing) {
        (None, _) => json!([{ "op": "add", "path": "/status/conditions", "value": [condition] }]),
        // The test guards against the list having changed since it was read.
        (Some(_), Some(index)) => json!([
            { "op": "test", "path": format!("/status/conditions/{index}/type"), "value": ROUTED_CONDITION },
            { "op": "replace", "path": format!("/status/conditions/{index}"), "value": condition },
        ]),
        (Some(_), None) => {
            json!([{ "op": "add", "path": "/status/conditions/-", "value": condition }])
        }
    })
}

/// Set the gate's condition on every pod whose condition differs. Pods being deleted are left alone.
pub async fn publish(
    client: &kube::Client,
    pods: &[Pod],
    routed: &BTreeMap<String, bool>,
) -> Result<(), String> {
    for pod in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let is_routed = routed.get(&pod.name_any()).copied().unwrap_or(false);
        let Some(patch) = condition_patch(pod, is_routed, Timestamp::now()) else {
            continue;
        };
        let namespace = pod.namespace().unwrap_or_default();
        let patch = Patch::Json::<()>(serde_json::from_value(patch).expect("a valid JSON patch"));
        Api::<Pod>::namespaced(client.clone(), &namespace)
            .patch_status(&pod.name_any(), &PatchParams::default(), &patch)
            .await
            .map_err(|e| {
                format!(
                    "setting the readiness gate {ROUTED_CONDITION} of pod {namespace}/{}: {e}",
                    pod.name_any()
                )
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovn::model::Instance;

    fn observed(pod: &str, internal: &str) -> Observed {
        Observed {
            pod: pod.into(),
            node: None,
            internal_ip: Some(internal.into()),
            external_ip: Some("172.17.0.10".into()),
            ready: false,
            containers_ready: true,
        }
    }

    #[test]
    fn an_instance_is_routed_when_every_address_it_serves_is() {
        let mut spec = GatewaySpec::empty("default", "gw", "vpc1");
        spec.instances = vec![
            Instance {
                addresses: vec!["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
                node: "n1".into(),
            },
            Instance {
                addresses: vec!["10.0.0.3".parse().unwrap()],
                node: "n2".into(),
            },
        ];
        let instances = [
            observed("gw-0", "10.0.0.2,fd00::2"),
            observed("gw-1", "10.0.0.3,fd00::3"),
            observed("gw-2", "10.0.0.4"),
        ];
        let routed: BTreeSet<IpAddr> = ["10.0.0.2", "10.0.0.3", "fd00::3"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let verdicts = routed_instances(&instances, &spec, &routed);
        assert!(!verdicts["gw-0"], "its IPv6 address is not routed yet");
        assert!(verdicts["gw-1"], "fd00::3 is of no family it serves");
        assert!(!verdicts["gw-2"], "not in the model at all");
    }

    #[test]
    fn the_condition_is_patched_only_when_it_changes() {
        let pod = |conditions: &str| -> Pod {
            serde_yaml::from_str(&format!(
                "metadata: {{name: p}}\nstatus: {{conditions: {conditions}}}\n"
            ))
            .unwrap()
        };
        let now = Timestamp::from_second(1_000).unwrap();
        let fresh = condition_patch(&pod("[{type: Ready, status: 'False'}]"), true, now).unwrap();
        assert_eq!(fresh[0]["op"], "add");
        assert_eq!(fresh[0]["path"], "/status/conditions/-");
        assert_eq!(fresh[0]["value"]["status"], "True");
        let same = pod(&format!(
            "[{{type: Ready, status: 'True'}}, {{type: {ROUTED_CONDITION}, status: 'True'}}]"
        ));
        assert_eq!(condition_patch(&same, true, now), None);
        let flipped = condition_patch(&same, false, now).unwrap();
        assert_eq!(flipped[1]["path"], "/status/conditions/1");
        assert_eq!(flipped[1]["value"]["reason"], "NotRouted");
        let bare: Pod = serde_yaml::from_str("metadata: {name: p}\n").unwrap();
        assert_eq!(
            condition_patch(&bare, false, now).unwrap()[0]["path"],
            "/status/conditions"
        );
    }
}
