//! One reconcile of one gateway: validate, apply the Deployment, read the instances from their pods, program OVN,
//! write the status and say what changed as Events. Deleting a gateway removes its OVN rows before its finalizer
//! goes. A problem becomes a condition and a retry, never a crash.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Namespace, Node, Pod},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder},
        finalizer::{Event as Finalizing, finalizer},
    },
};
use serde_json::json;
use tracing::{info, warn};

use super::{
    access,
    instances::{Observed, observe},
    ovn_input::{gateway_spec, local_port_groups, vpc_bfd_port},
    selection::selected_ports,
    status::{self, Outcome, READY},
    validation::{Problem, Resolved, validate},
    workload,
};
use veg_ovsdb::monitor::Monitor;

use crate::{
    crd::{
        gateway::{TrafficPolicy, VpcEgressGateway, VpcEgressGatewayStatus},
        network::{DEFAULT_VPC, Subnet, Vpc},
    },
    ovn::{
        apply::{
            Plan, apply as apply_ovn, converge, delete as delete_ovn, down_nexthops,
            supports_bfd_sessions,
        },
        model::GatewaySpec,
        vpc_port::{VpcBfdPort, on_gateway_router, vpc_port_rows},
    },
};

/// The reference's finalizer: a gateway it created is cleaned up by us too.
pub const FINALIZER: &str = "kubeovn.io/kube-ovn-controller";
/// Server-side apply's field manager for the Deployments we own.
pub const FIELD_MANAGER: &str = "veg-controller";
/// Resync a healthy gateway this often; retry one that is not Ready sooner.
const RESYNC: Duration = Duration::from_secs(300);
const RETRY: Duration = Duration::from_secs(15);

pub struct Context {
    pub client: kube::Client,
    /// The OVN Northbound database, monitored.
    pub ovn: Monitor,
    /// The image of the instances when a gateway names none.
    pub default_image: String,
    pub recorder: Recorder,
}

/// A failed step; the controller retries it.
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

fn failed(context: &str) -> impl FnOnce(kube::Error) -> Error + '_ {
    move |e| Error(format!("{context}: {e}"))
}

pub async fn reconcile(gateway: Arc<VpcEgressGateway>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<VpcEgressGateway> =
        Api::namespaced(ctx.client.clone(), &gateway.namespace().unwrap_or_default());
    finalizer(&api, FINALIZER, gateway, |event| async {
        match event {
            Finalizing::Apply(gateway) => apply(&gateway, &ctx).await,
            Finalizing::Cleanup(gateway) => cleanup(&gateway, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error(format!("{e:#}")))
}

/// What the controller does when a reconcile fails: log it and try again soon.
pub fn retry(gateway: Arc<VpcEgressGateway>, error: &Error, _: Arc<Context>) -> Action {
    warn!(gateway = %status::id(&gateway), "reconcile failed: {error}; retrying in {RETRY:?}");
    Action::requeue(RETRY)
}

async fn apply(gateway: &VpcEgressGateway, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    let vpcs = Api::<Vpc>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(failed("listing Vpcs"))?;
    let subnets = Api::<Subnet>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(failed("listing Subnets"))?;
    let resolved = match validate(gateway, &vpcs.items, &subnets.items) {
        Ok(resolved) => resolved,
        Err(Problem { reason, message }) => {
            report(gateway, ctx, &Outcome::Invalid { reason, message }).await?;
            return Ok(Action::requeue(RESYNC));
        }
    };
    let namespace = gateway.namespace().unwrap_or_default();
    let applied = apply_workload(gateway, &resolved, ctx).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let selector = ListParams::default().labels(&status::label_selector(gateway));
    let owned = pods
        .list(&selector)
        .await
        .map_err(failed("listing the instances' pods"))?;
    let instances = observe(&owned.items, &resolved.external_subnet.spec.provider);
    if let Err(message) = applied {
        let outcome = Outcome::Failed {
            reason: "ReconcileWorkloadFailed",
            message,
            instances: &instances,
        };
        report(gateway, ctx, &outcome).await?;
        return Ok(Action::requeue(RETRY));
    }

    let ports = selected_pod_ports(gateway, &resolved, client).await?;
    let nodes = needed_nodes(gateway, &resolved, client).await?;
    let programmed = program_ovn(gateway, &resolved, &instances, ports, &nodes, &ctx.ovn).await;
    let outcome = Outcome::of_ovn(programmed, &instances);
    let ready = report(gateway, ctx, &outcome).await?;
    Ok(Action::requeue(if ready { RESYNC } else { RETRY }))
}

/// The switch ports of the pods the gateway's selectors pick (none without selectors).
async fn selected_pod_ports(
    gateway: &VpcEgressGateway,
    resolved: &Resolved<'_>,
    client: &kube::Client,
) -> Result<Vec<String>, Error> {
    if gateway.spec.selectors.is_empty() {
        return Ok(Vec::new());
    }
    let all = ListParams::default();
    let namespaces = Api::<Namespace>::all(client.clone())
        .list(&all)
        .await
        .map_err(failed("listing namespaces"))?;
    let pods = Api::<Pod>::all(client.clone())
        .list(&all)
        .await
        .map_err(failed("listing pods"))?;
    Ok(selected_ports(
        &gateway.spec.selectors,
        &namespaces.items,
        &pods.items,
        &resolved.vpc_name,
    ))
}

/// The nodes, to place the VPC's BFD port (BFD on a VPC) and for trafficPolicy Local (none otherwise).
async fn needed_nodes(
    gateway: &VpcEgressGateway,
    resolved: &Resolved<'_>,
    client: &kube::Client,
) -> Result<Vec<Node>, Error> {
    let local = gateway.spec.traffic_policy == TrafficPolicy::Local;
    if !local && (resolved.vpc.is_none() || !gateway.spec.bfd.enabled) {
        return Ok(Vec::new());
    }
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(failed("listing nodes"))?;
    Ok(nodes.items)
}

/// The instances' access to their policy, then their Deployment (server-side apply: changes nothing when it is
/// as built), or why not.
async fn apply_workload(
    gateway: &VpcEgressGateway,
    resolved: &Resolved<'_>,
    ctx: &Context,
) -> Result<(), String> {
    let namespace = gateway.namespace().unwrap_or_default();
    let deployment = workload::resolved_deployment(gateway, resolved, &ctx.default_image)?;
    access::grant(&ctx.client, &namespace).await?;
    let name = workload::deployment_name(gateway);
    Api::<Deployment>::namespaced(ctx.client.clone(), &namespace)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&deployment),
        )
        .await
        .map_err(|e| format!("applying Deployment {namespace}/{name}: {e}"))?;
    Ok(())
}

/// Bring OVN to the gateway (and its VPC's BFD port when BFD is on).
pub async fn program_ovn(
    gateway: &VpcEgressGateway,
    resolved: &Resolved<'_>,
    instances: &[Observed],
    ports: Vec<String>,
    nodes: &[Node],
    ovn: &Monitor,
) -> Result<(), String> {
    let mut spec = gateway_spec(gateway, resolved, instances, ports)?;
    let port = match resolved.vpc.filter(|_| spec.bfd.is_some()) {
        Some(vpc) => Some(vpc_bfd_port(vpc, nodes)?.ok_or_else(|| {
            format!(
                "no Ready node can host the BFD port of VPC {:?}",
                vpc.name_any()
            )
        })?),
        None => None,
    };
    // trafficPolicy Local needs bfd_sessions (OVN >= 23.09); apply picks the design the server supports.
    if gateway.spec.traffic_policy == TrafficPolicy::Local {
        spec.local_port_groups = local_port_groups(nodes);
    }
    let plan = program(ovn, spec.clone(), port.as_ref()).await?;
    if !plan.changes.is_empty() {
        info!(gateway = %spec.id(), changes = ?plan.changes, "OVN updated");
    }
    Ok(())
}

/// Bring OVN to a gateway's model (and its VPC's BFD port, when it has BFD): what the controller does for each
/// gateway, and `veg ovn apply` for each gateway of a file. Returns what changed.
pub async fn program(
    ovn: &Monitor,
    mut spec: GatewaySpec,
    port: Option<&VpcBfdPort>,
) -> Result<Plan, String> {
    let mut done = Plan::default();
    if let Some(port) = port.filter(|_| spec.bfd.is_some()) {
        let mut port = port.clone();
        // A gateway router (bound to a chassis itself) hosts the port without an HA chassis group.
        if ovn.read(|r| on_gateway_router(r, &port.vpc)) {
            port.chassis.clear();
        }
        done = converge(ovn, &port.owner(), &vpc_port_rows(&port))
            .await
            .map_err(|e| format!("programming the BFD port of VPC {:?}: {e:#}", port.vpc))?;
    }
    // On OVN 23.03 policies cannot watch BFD: leave out the instances whose session is down.
    if spec.default_vpc && spec.bfd.is_some() && !supports_bfd_sessions(ovn) {
        spec.down = ovn.read(|r| down_nexthops(r, &spec));
    }
    let plan = apply_ovn(ovn, &spec)
        .await
        .map_err(|e| format!("programming OVN: {e:#}"))?;
    done.changes.extend(plan.changes);
    Ok(done)
}

/// Write the status when it changed, and an Event when readiness changed. Returns whether the gateway is Ready.
async fn report(
    gateway: &VpcEgressGateway,
    ctx: &Context,
    outcome: &Outcome<'_>,
) -> Result<bool, Error> {
    let new = status::compute(gateway, outcome, &Time(Timestamp::now()));
    let old = gateway.status.clone().unwrap_or_default();
    if new == old {
        return Ok(new.ready);
    }
    let api: Api<VpcEgressGateway> =
        Api::namespaced(ctx.client.clone(), &gateway.namespace().unwrap_or_default());
    // Replace the whole status: a merge patch could not remove a list that became empty.
    let patch = json_patch_add_status(&new);
    api.patch_status(&gateway.name_any(), &PatchParams::default(), &patch)
        .await
        .map_err(failed("writing the status"))?;
    let ready_of = |s: &VpcEgressGatewayStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == READY)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    if let Some((state, reason, message)) =
        ready_of(&new).filter(|r| Some(r) != ready_of(&old).as_ref())
    {
        info!(gateway = %status::id(gateway), ready = %state, %reason, "{message}");
        let event = Event {
            type_: if state == "True" || reason == "Processing" {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason,
            note: Some(message),
            action: "Reconcile".into(),
            secondary: None,
        };
        // An event that cannot be written is not worth failing the reconcile for.
        if let Err(e) = ctx.recorder.publish(&event, &gateway.object_ref(&())).await {
            warn!(gateway = %status::id(gateway), "cannot record an event: {e}");
        }
    }
    Ok(new.ready)
}

fn json_patch_add_status(status: &VpcEgressGatewayStatus) -> Patch<serde_json::Value> {
    Patch::Json(
        serde_json::from_value(json!([{ "op": "add", "path": "/status", "value": status }]))
            .expect("a valid JSON patch"),
    )
}

/// Remove every OVN row of the gateway; the Deployment goes with its owner.
async fn cleanup(gateway: &VpcEgressGateway, ctx: &Context) -> Result<Action, Error> {
    let router = gateway
        .spec
        .vpc
        .clone()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_VPC.to_owned());
    let owner = GatewaySpec::empty(
        &gateway.namespace().unwrap_or_default(),
        &gateway.name_any(),
        &router,
    );
    let plan = delete_ovn(&ctx.ovn, &owner)
        .await
        .map_err(|e| Error(format!("removing the OVN rows of {}: {e:#}", owner.id())))?;
    info!(gateway = %owner.id(), removed = plan.changes.len(), "gateway deleted; its OVN rows are gone");
    Ok(Action::await_change())
}
