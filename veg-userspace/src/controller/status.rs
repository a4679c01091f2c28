//! The status a gateway reports, from what reconciling it found. Ready means every instance is Ready with both
//! attachments and OVN is programmed; there is no failed phase: a problem shows as a False condition with a reason
//! and a message while the phase stays Processing (docs/contract.md).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use super::{
    instances::Observed,
    reconcile::ProgramError,
    traffic_policy::{LOCAL_TRAFFIC_POLICY, Verdict},
    workload,
};
use crate::crd::gateway::{Phase, VpcEgressGateway, VpcEgressGatewayStatus, Workload};

pub const INIT: &str = "Init";
pub const VALIDATED: &str = "Validated";
pub const READY: &str = "Ready";
pub const SUCCESS: &str = "ReconcileSuccess";
/// The reason of a failure to create or update the instances' Deployment.
pub const WORKLOAD_FAILED: &str = "ReconcileWorkloadFailed";

/// How far reconciling got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// The resource, or what it names, is wrong: (reason, message).
    Invalid {
        reason: &'static str,
        message: String,
    },
    /// Valid, but a step failed: (reason, message); the instances found so far.
    Failed {
        reason: &'static str,
        message: String,
        instances: &'a [Observed],
    },
    /// The workload and OVN are as the resource asks; the instances are as observed.
    Applied { instances: &'a [Observed] },
}

impl<'a> Outcome<'a> {
    /// The instances found (none when the resource is invalid).
    pub fn instances(&self) -> &'a [Observed] {
        match self {
            Outcome::Invalid { .. } => &[],
            Outcome::Failed { instances, .. } | Outcome::Applied { instances } => instances,
        }
    }

    /// After programming OVN: applied, or failed with the reason the failure's kind gives.
    pub fn of_ovn(programmed: Result<(), ProgramError>, instances: &'a [Observed]) -> Outcome<'a> {
        match programmed {
            Ok(()) => Outcome::Applied { instances },
            Err(error) => Outcome::Failed {
                reason: error.reason(),
                message: error.to_string(),
                instances,
            },
        }
    }
}

fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    // The transition time changes only when the status does.
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

pub fn label_selector(gateway: &VpcEgressGateway) -> String {
    let labels = workload::labels(gateway);
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The status an outcome gives the gateway: phase, readiness, conditions (keeping their transition times when
/// they did not change), addresses and workload. (Long because the status has many fields and each is one small
/// decision; they are set in the order the status shows them.)
pub fn compute(
    gateway: &VpcEgressGateway,
    outcome: &Outcome,
    local: Option<&Verdict>,
    now: &Time,
) -> VpcEgressGatewayStatus {
    let previous = gateway
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = gateway.metadata.generation;
    let wanted = gateway.spec.replicas.max(0) as usize;
    let instances: &[Observed] = match outcome {
        Outcome::Invalid { .. } => &[],
        Outcome::Failed { instances, .. } | Outcome::Applied { instances } => instances,
    };
    let serving = instances.iter().filter(|i| i.serving()).count();
    let progress = format!("{serving} of {wanted} instance(s) ready");
    let (validated, ready) = match outcome {
        Outcome::Invalid { reason, message } => (
            (false, *reason, message.clone()),
            (false, *reason, message.clone()),
        ),
        Outcome::Failed {
            reason, message, ..
        } => (
            (
                true,
                SUCCESS,
                "the gateway and the resources it names are valid".to_owned(),
            ),
            (false, *reason, message.clone()),
        ),
        Outcome::Applied { .. } => {
            let valid = (
                true,
                SUCCESS,
                "the gateway and the resources it names are valid".to_owned(),
            );
            let unattached: Vec<&str> = instances
                .iter()
                .filter(|i| !i.attached())
                .map(|i| i.pod.as_str())
                .collect();
            if wanted > 0 && serving == wanted && instances.len() == wanted {
                (valid, (true, SUCCESS, progress))
            } else if !unattached.is_empty() {
                let message = format!(
                    "{progress}; waiting for the networks of {}",
                    unattached.join(", ")
                );
                (valid, (false, "WorkloadNetworkNotReady", message))
            } else {
                (valid, (false, "Processing", progress))
            }
        }
    };
    let is_ready = ready.0;
    // Initialized once the instances' Deployment exists, and so for good, whatever fails later.
    let was_initialized = previous
        .iter()
        .any(|c| c.type_ == INIT && c.status == "True");
    let initialized = was_initialized
        || match outcome {
            Outcome::Invalid { .. } => false,
            Outcome::Failed { reason, .. } => *reason != WORKLOAD_FAILED,
            Outcome::Applied { .. } => true,
        };
    let init = if initialized {
        (
            true,
            SUCCESS,
            "the instances' Deployment has been created".to_owned(),
        )
    } else {
        (false, ready.1, ready.2.clone())
    };
    let attached: Vec<&Observed> = instances.iter().filter(|i| i.attached()).collect();
    let ips = |pick: fn(&Observed) -> &Option<String>| -> Vec<String> {
        attached.iter().filter_map(|i| pick(i).clone()).collect()
    };
    VpcEgressGatewayStatus {
        ready: is_ready,
        phase: Some(if is_ready {
            Phase::Completed
        } else {
            Phase::Processing
        }),
        internal_ips: ips(|i| &i.internal_ip),
        external_ips: ips(|i| &i.external_ip),
        workload: Some(Workload {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: workload::deployment_name(gateway),
            nodes: attached.iter().filter_map(|i| i.node.clone()).collect(),
        }),
        conditions: [
            condition(previous, INIT, init.0, init.1, init.2, generation, now),
            condition(
                previous,
                VALIDATED,
                validated.0,
                validated.1,
                validated.2,
                generation,
                now,
            ),
            condition(previous, READY, ready.0, ready.1, ready.2, generation, now),
        ]
        .into_iter()
        .chain(local.map(|v| {
            condition(
                previous,
                LOCAL_TRAFFIC_POLICY,
                v.honoured,
                v.reason,
                v.message.clone(),
                generation,
                now,
            )
        }))
        .collect(),
        replicas: instances.len() as i32,
        label_selector: Some(label_selector(gateway)),
    }
}

/// The status of a gateway the controller has just seen, as the reference writes it before processing it: phase
/// Pending, condition Init Unknown.
pub fn pending(gateway: &VpcEgressGateway, now: &Time) -> VpcEgressGatewayStatus {
    VpcEgressGatewayStatus {
        phase: Some(Phase::Pending),
        conditions: vec![Condition {
            type_: INIT.into(),
            status: "Unknown".into(),
            reason: "Processing".into(),
            message: "the controller has seen the gateway and is processing it".into(),
            observed_generation: gateway.metadata.generation,
            last_transition_time: now.clone(),
        }],
        label_selector: Some(label_selector(gateway)),
        ..Default::default()
    }
}

/// The gateway's name for logs and events: namespace/name.
pub fn id(gateway: &VpcEgressGateway) -> String {
    format!(
        "{}/{}",
        gateway.namespace().unwrap_or_default(),
        gateway.name_any()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn gateway(replicas: i32) -> VpcEgressGateway {
        let mut g: VpcEgressGateway = serde_yaml::from_str(
            "metadata: {name: gw, namespace: ns1, generation: 3}\nspec: {externalSubnet: macvlan1, prefix: veg-}\n",
        )
        .unwrap();
        g.spec.replicas = replicas;
        g
    }

    fn instance(pod: &str, external: Option<&str>, ready: bool) -> Observed {
        Observed {
            pod: pod.into(),
            node: Some(format!("node-{pod}")),
            internal_ip: Some(format!("10.16.0.{}", pod.len())),
            external_ip: external.map(str::to_owned),
            ready,
            containers_ready: ready,
        }
    }

    fn cond(type_: &str, ok: bool, reason: &str, message: &str, since: i64) -> Condition {
        Condition {
            type_: type_.into(),
            status: if ok { "True" } else { "False" }.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: Some(3),
            last_transition_time: at(since),
        }
    }

    const VALID: &str = "the gateway and the resources it names are valid";
    const CREATED: &str = "the instances' Deployment has been created";

    #[test]
    fn ready_when_every_instance_serves() {
        let instances = [
            instance("a", Some("172.17.0.10"), true),
            instance("bb", Some("172.17.0.11"), true),
        ];
        let status = compute(
            &gateway(2),
            &Outcome::Applied {
                instances: &instances,
            },
            None,
            &at(100),
        );
        assert_eq!(
            status,
            VpcEgressGatewayStatus {
                ready: true,
                phase: Some(Phase::Completed),
                internal_ips: vec!["10.16.0.1".into(), "10.16.0.2".into()],
                external_ips: vec!["172.17.0.10".into(), "172.17.0.11".into()],
                workload: Some(Workload {
                    api_version: "apps/v1".into(),
                    kind: "Deployment".into(),
                    name: "veg-gw".into(),
                    nodes: vec!["node-a".into(), "node-bb".into()],
                }),
                conditions: vec![
                    cond(INIT, true, SUCCESS, CREATED, 100),
                    cond(VALIDATED, true, SUCCESS, VALID, 100),
                    cond(READY, true, SUCCESS, "2 of 2 instance(s) ready", 100),
                ],
                replicas: 2,
                label_selector: Some(
                    "app=vpc-egress-gateway,ovn.kubernetes.io/vpc-egress-gateway=gw".into()
                ),
            }
        );
    }

    #[test]
    fn an_instance_without_its_external_network_is_not_ready() {
        // The reference reported Ready here (a known bug).
        let instances = [
            instance("a", Some("172.17.0.10"), true),
            instance("bb", None, true),
        ];
        let status = compute(
            &gateway(2),
            &Outcome::Applied {
                instances: &instances,
            },
            None,
            &at(100),
        );
        assert!(!status.ready);
        assert_eq!(status.phase, Some(Phase::Processing));
        assert_eq!(status.internal_ips, ["10.16.0.1"]);
        assert_eq!(status.external_ips, ["172.17.0.10"]);
        assert_eq!(status.replicas, 2);
        assert_eq!(
            status.conditions[2],
            cond(
                READY,
                false,
                "WorkloadNetworkNotReady",
                "1 of 2 instance(s) ready; waiting for the networks of bb",
                100
            )
        );
        let scaling = compute(
            &gateway(3),
            &Outcome::Applied {
                instances: &instances[..1],
            },
            None,
            &at(100),
        );
        assert_eq!(
            scaling.conditions[2],
            cond(READY, false, "Processing", "1 of 3 instance(s) ready", 100)
        );
    }

    #[test]
    fn a_gateway_just_seen_is_pending() {
        let status = pending(&gateway(1), &at(50));
        assert_eq!(status.phase, Some(Phase::Pending));
        assert_eq!(
            (
                status.conditions[0].type_.as_str(),
                status.conditions[0].status.as_str()
            ),
            (INIT, "Unknown")
        );
        assert!(!status.ready);
    }

    #[test]
    fn problems_become_conditions_and_transition_times_hold() {
        let mut g = gateway(1);
        let invalid = Outcome::Invalid {
            reason: "VpcBfdPortNotEnabled",
            message: "no BFD port".into(),
        };
        let status = compute(&g, &invalid, None, &at(100));
        assert_eq!(
            status.conditions,
            [
                cond(INIT, false, "VpcBfdPortNotEnabled", "no BFD port", 100),
                cond(VALIDATED, false, "VpcBfdPortNotEnabled", "no BFD port", 100),
                cond(READY, false, "VpcBfdPortNotEnabled", "no BFD port", 100),
            ]
        );
        assert_eq!(
            (status.ready, status.phase, status.replicas),
            (false, Some(Phase::Processing), 0),
            "no failed phase: a problem shows as conditions while the phase stays Processing"
        );

        // Fixed, then a step fails: Validated turns True now, Ready stays False since 100.
        g.status = Some(status);
        let instances = [instance("a", None, false)];
        let failed = Outcome::Failed {
            reason: WORKLOAD_FAILED,
            message: "denied".into(),
            instances: &instances,
        };
        let status = compute(&g, &failed, None, &at(200));
        assert_eq!(
            status.conditions,
            [
                cond(INIT, false, WORKLOAD_FAILED, "denied", 100),
                cond(VALIDATED, true, SUCCESS, VALID, 200),
                cond(READY, false, WORKLOAD_FAILED, "denied", 100),
            ]
        );

        // Once the Deployment exists, Init stays True whatever fails later.
        g.status = Some(compute(
            &g,
            &Outcome::Applied {
                instances: &instances,
            },
            None,
            &at(300),
        ));
        let status = compute(&g, &invalid, None, &at(400));
        assert_eq!(
            status.conditions[0],
            cond(INIT, true, SUCCESS, CREATED, 300)
        );
    }
}
