//! The controller's lab mode (`veg lab controller`, started by `veg lab up`): the reconcile logic of the cluster
//! controller, with the cluster replaced by the lab. Resources come from the lab's store; the Deployment the
//! controller builds is run by the lab's kubelet as network namespaces; OVN is programmed with the same model
//! and code; the status is computed the same way and written to the store, where `veg lab get veg` reads it.
//! A gateway removed from the store has its instances and OVN rows removed, as the finalizer does.

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::{api::core::v1::Node, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::ResourceExt;
use serde_json::json;
use tracing::{info, warn};

use crate::{CHASSIS, Lab, store::Store};
use veg_ovsdb::{monitor::Monitor, replica::column};

use veg_userspace::{
    controller::{
        instances::observe,
        readiness_gate,
        reconcile::program_ovn,
        status::{self, Outcome},
        traffic_policy,
        validation::validate,
        workload,
    },
    crd::{gateway::VpcEgressGateway, network::DEFAULT_VPC},
    ovn::{
        apply::{DB, delete as delete_ovn, monitored_tables, routed_nexthops},
        model::GatewaySpec,
    },
};

/// How often the lab's controller looks at the store and the instances (the cluster has watches instead).
const PERIOD: Duration = Duration::from_millis(300);
pub const IMAGE: &str = "veg:lab";

/// The lab's one node, Ready, as the cluster would list it.
fn nodes() -> Vec<Node> {
    vec![
        serde_json::from_value(json!({
            "metadata": { "name": CHASSIS },
            "status": { "conditions": [{ "type": "Ready", "status": "True" }] },
        }))
        .expect("a valid Node"),
    ]
}

pub async fn run(lab: Lab, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let ovn = Monitor::start(lab.nb().parse()?, DB, &monitored_tables());
    if !ovn.wait_connected(Duration::from_secs(10)).await {
        anyhow::bail!("cannot reach the lab's Northbound database at {}", lab.nb());
    }
    let store = Store::new(&lab.dir);
    let mut changes = ovn.subscribe();
    let mut wired = Wired::new();
    tokio::pin!(stop);
    info!("lab controller running");
    loop {
        reconcile_all(&lab, &store, &ovn).await;
        wire_bfd_ports(&lab, &store, &ovn, &mut wired);
        tokio::select! {
            _ = tokio::time::sleep(PERIOD) => {}
            // BFD status changes (the default VPC's nexthops follow them).
            _ = changes.changed() => {}
            _ = &mut stop => break,
        }
    }
    info!("lab controller stopped");
    Ok(())
}

/// When the lab last (re)wired each VPC's BFD port.
type Wired = std::collections::HashMap<String, std::time::Instant>;

/// Wire each VPC's BFD port to its switch once the controller has made the port. OVN 23.03's ovn-controller
/// sometimes does not start sending BFD from a port whose peer appeared right after the port itself: when every
/// session of the port is still down a while after wiring, wire it anew (remove and add the peer), which it does
/// take up.
fn wire_bfd_ports(lab: &Lab, store: &Store, ovn: &Monitor, wired: &mut Wired) {
    const SETTLE: Duration = Duration::from_secs(4);
    for vpc in store.vpcs() {
        let name = vpc.name_any();
        let port = format!("bfd@{name}");
        let enabled = vpc.spec.bfd_port.as_ref().is_some_and(|p| p.enabled);
        let switch = vpc
            .status
            .as_ref()
            .and_then(|s| s.default_logical_switch.clone());
        let (made, sessions, up) = ovn.read(|r| {
            let made = r
                .rows("Logical_Router_Port")
                .any(|(_, row)| column(row, "name") == port.as_str());
            let sessions: Vec<bool> = r
                .rows("BFD")
                .filter(|(_, row)| column(row, "logical_port") == port.as_str())
                .map(|(_, row)| {
                    r.normalized("BFD", "status", column(row, "status")) == json!(["set", ["up"]])
                })
                .collect();
            (made, sessions.len(), sessions.iter().any(|u| *u))
        });
        let (true, true, Some(switch)) = (enabled, made, switch) else {
            continue;
        };
        let stale = wired.get(&name).is_some_and(|at| at.elapsed() > SETTLE) && sessions > 0 && !up;
        if wired.contains_key(&name) && !stale {
            continue;
        }
        if stale {
            info!(vpc = %name, "no BFD session of {port} came up: wiring the port anew");
            let _ = lab.nbctl(&["--if-exists", "lsp-del", &format!("{switch}-bfd")]);
        }
        match lab.wire_bfd_port(&name, &switch) {
            Ok(()) => drop(wired.insert(name, std::time::Instant::now())),
            Err(e) => warn!(vpc = %name, "wiring the VPC's BFD port failed: {e:#}"),
        }
    }
}

async fn reconcile_all(lab: &Lab, store: &Store, ovn: &Monitor) {
    let gateways = store.gateways();
    for gateway in &gateways {
        if let Err(e) = reconcile(lab, store, ovn, gateway).await {
            warn!(gateway = %status::id(gateway), "reconcile failed: {e:#}");
        }
    }
    // Gateways gone from the store: remove what they had, as the finalizer does. The controller knows a gateway
    // it reconciled by its status and its instances.
    let present: BTreeSet<String> = gateways.iter().map(status::id).collect();
    let known = store
        .status_names()
        .into_iter()
        .chain(lab.instances().into_iter().map(|i| i.gateway));
    let orphans: BTreeSet<String> = known.filter(|g| !present.contains(g)).collect();
    for gateway in orphans {
        if let Err(e) = remove(lab, store, ovn, &gateway).await {
            warn!(%gateway, "removing a deleted gateway failed: {e:#}");
        }
    }
}

async fn reconcile(
    lab: &Lab,
    store: &Store,
    ovn: &Monitor,
    gateway: &VpcEgressGateway,
) -> anyhow::Result<()> {
    let (vpcs, subnets) = (store.vpcs(), store.subnets());
    let now = Time(Timestamp::now());
    let outcome_status = match validate(gateway, &vpcs, &subnets) {
        Err(problem) => {
            let outcome = Outcome::Invalid {
                reason: problem.reason,
                message: problem.message,
            };
            status::compute(gateway, &outcome, None, &now)
        }
        Ok(resolved) => {
            let run = workload::resolved_deployment(gateway, &resolved, IMAGE)
                .map_err(anyhow::Error::msg)
                .and_then(|deployment| lab.run_deployment(&deployment, gateway, &subnets));
            match run {
                Err(e) => {
                    let outcome = Outcome::Failed {
                        reason: status::WORKLOAD_FAILED,
                        message: format!("{e:#}"),
                        instances: &[],
                    };
                    status::compute(gateway, &outcome, None, &now)
                }
                Ok(pods) => {
                    let instances = observe(&pods, &resolved.external_subnet.spec.provider);
                    // Selectors pick cluster pods; the lab's clients are not Kubernetes pods, so none here.
                    let nodes = nodes();
                    let programmed =
                        program_ovn(gateway, &resolved, &instances, Vec::new(), &nodes, ovn).await;
                    // The readiness gate, which the lab's kubelet reads from the instance's record.
                    if let Ok(spec) = &programmed {
                        let routed = ovn.read(|r| routed_nexthops(r, spec));
                        let namespace = gateway.namespace().unwrap_or_default();
                        for (pod, is_routed) in
                            readiness_gate::routed_instances(&instances, spec, &routed)
                        {
                            lab.set_routed(&namespace, &pod, is_routed)?;
                        }
                    }
                    let outcome = Outcome::of_ovn(programmed.map(drop), &instances);
                    let local = traffic_policy::observed_verdict(
                        gateway, &resolved, ovn, &nodes, &instances,
                    );
                    status::compute(gateway, &outcome, local.as_ref(), &now)
                }
            }
        }
    };
    if gateway.status.as_ref() != Some(&outcome_status) {
        let ready = outcome_status
            .conditions
            .iter()
            .find(|c| c.type_ == status::READY);
        if let Some(ready) = ready {
            info!(gateway = %status::id(gateway), ready = %ready.status, reason = %ready.reason, "{}", ready.message);
        }
        store.write_status(
            &gateway.namespace().unwrap_or_default(),
            &gateway.name_any(),
            &outcome_status,
        )?;
    }
    Ok(())
}

async fn remove(lab: &Lab, store: &Store, ovn: &Monitor, gateway: &str) -> anyhow::Result<()> {
    let (namespace, name) = gateway.split_once('/').unwrap_or(("default", gateway));
    for instance in lab.instances().into_iter().filter(|i| i.gateway == gateway) {
        lab.remove_instance(&instance)?;
    }
    // The gateway's spec is gone, and with it which router its routes and policies hang from: try each router;
    // a transaction on the wrong one fails whole and changes nothing. Then no row may be left.
    let routers: Vec<String> = [DEFAULT_VPC.to_owned()]
        .into_iter()
        .chain(store.vpcs().iter().map(|v| v.name_any()))
        .collect();
    let mut last_error = None;
    for router in routers {
        let owner = GatewaySpec::empty(namespace, name, &router);
        match delete_ovn(ovn, &owner).await {
            Ok(_) => last_error = None,
            Err(e) => last_error = Some(e),
        }
    }
    if let Some(e) = last_error {
        return Err(e.context("removing the gateway's OVN rows"));
    }
    store.remove_status(namespace, name);
    info!(%gateway, "gateway deleted: instances and OVN rows removed");
    Ok(())
}
