//! One reconcile of one gateway: validate, apply the Deployment, read the instances from their pods, program OVN,
//! write the status and say what changed as Events. Deleting a gateway removes its OVN rows before its finalizer
//! goes. A problem becomes a condition and a retry, never a crash.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

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
        finalizer::{self, Event as Finalizing, finalizer},
    },
};
use serde_json::json;
use tracing::{info, warn};

use super::{
    access,
    instances::{Observed, observe},
    metrics,
    ovn_input::{gateway_spec, local_port_groups, vpc_bfd_port},
    readiness_gate,
    selection::selected_ports,
    status::{self, Outcome, READY},
    traffic_policy,
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
            routed_nexthops, supports_bfd_sessions,
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

/// Retry this late what retrying soon cannot fix (the API refused a request as forbidden or invalid: an operator
/// must act).
const SLOW_RETRY: Duration = Duration::from_secs(60);
/// Retry this soon a write that lost a race with another writer: the next pass reads the new object.
const CONFLICT_RETRY: Duration = Duration::from_secs(1);

/// Why a reconcile failed. What the controller does about it (`retry_after`) and how it is named in logs and
/// metrics (`kind`) come from the variant, not from the message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{context}: {source}")]
    Kubernetes {
        context: &'static str,
        #[source]
        source: kube::Error,
    },
    /// The rows of a deleted gateway could not be removed from the Northbound database.
    #[error("removing the OVN rows of {gateway}: {message}")]
    OvnCleanup { gateway: String, message: String },
    /// kube's finalizer handling refused the object (no name, or a malformed finalizer).
    #[error("handling the finalizer: {0}")]
    Finalizer(&'static str),
}

impl Error {
    /// A short, stable name of the kind of failure, for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kubernetes { .. } => "kubernetes",
            Error::OvnCleanup { .. } => "ovn",
            Error::Finalizer(_) => "finalizer",
        }
    }

    /// When to try again.
    pub fn retry_after(&self) -> Duration {
        match self {
            Error::Kubernetes {
                source: kube::Error::Api(status),
                ..
            } => match status.code {
                409 => CONFLICT_RETRY,
                400 | 401 | 403 | 404 | 422 => SLOW_RETRY,
                _ => RETRY,
            },
            Error::Kubernetes { .. } | Error::OvnCleanup { .. } => RETRY,
            Error::Finalizer(_) => SLOW_RETRY,
        }
    }
}

fn failed(context: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kubernetes { context, source }
}

/// Why programming OVN failed; the status reason comes from the kind.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    /// The gateway's description holds what validation lets through but the model cannot use (an address that
    /// does not parse).
    #[error("{0}")]
    Invalid(String),
    /// The VPC's BFD port has no node to run on.
    #[error("no Ready node can host the BFD port of VPC {vpc:?}")]
    NoBfdPortNode { vpc: String },
    /// The Northbound database refused the rows or could not be reached.
    #[error("{what}: {message}")]
    Database { what: &'static str, message: String },
}

impl ProgramError {
    /// The reason a failed condition carries.
    pub fn reason(&self) -> &'static str {
        match self {
            ProgramError::Invalid(_) => "InvalidGateway",
            ProgramError::NoBfdPortNode { .. } => "VpcBfdPortUnplaced",
            ProgramError::Database { .. } => "ReconcileOvnFailed",
        }
    }
}

/// One reconcile, timed and counted for the metrics.
pub async fn reconcile(gateway: Arc<VpcEgressGateway>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_once(gateway, ctx).await;
    metrics::reconciled(started.elapsed(), result.as_ref().err().map(Error::kind));
    result
}

async fn reconcile_once(
    gateway: Arc<VpcEgressGateway>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let api: Api<VpcEgressGateway> =
        Api::namespaced(ctx.client.clone(), &gateway.namespace().unwrap_or_default());
    // A gateway seen for the first time says so before anything else happens: phase Pending, Init Unknown.
    if gateway.status.is_none() && gateway.metadata.deletion_timestamp.is_none() {
        let pending = status::pending(&gateway, &Time(Timestamp::now()));
        api.patch_status(
            &gateway.name_any(),
            &PatchParams::default(),
            &json_patch_add_status(&pending),
        )
        .await
        .map_err(failed("writing the status"))?;
    }
    finalizer(&api, FINALIZER, gateway, |event| async {
        match event {
            Finalizing::Apply(gateway) => apply(&gateway, &ctx).await,
            Finalizing::Cleanup(gateway) => cleanup(&gateway, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        finalizer::Error::AddFinalizer(source) => Error::Kubernetes {
            context: "adding the finalizer",
            source,
        },
        finalizer::Error::RemoveFinalizer(source) => Error::Kubernetes {
            context: "removing the finalizer",
            source,
        },
        finalizer::Error::UnnamedObject => Error::Finalizer("the object has no name"),
        finalizer::Error::InvalidFinalizer => Error::Finalizer("the finalizer is malformed"),
    })
}

/// What the controller does when a reconcile fails: log it, and try again when its kind says.
pub fn retry(gateway: Arc<VpcEgressGateway>, error: &Error, _: Arc<Context>) -> Action {
    let after = error.retry_after();
    warn!(
        gateway = %status::id(&gateway),
        kind = error.kind(),
        "reconcile failed: {error}; retrying in {after:?}"
    );
    Action::requeue(after)
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
            report(gateway, ctx, &Outcome::Invalid { reason, message }, None).await?;
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
            reason: status::WORKLOAD_FAILED,
            message,
            instances: &instances,
        };
        report(gateway, ctx, &outcome, None).await?;
        return Ok(Action::requeue(RETRY));
    }

    let ports = selected_pod_ports(gateway, &resolved, client).await?;
    let nodes = needed_nodes(gateway, &resolved, client).await?;
    let programmed = program_ovn(gateway, &resolved, &instances, ports, &nodes, &ctx.ovn).await;
    if let Ok(spec) = &programmed {
        let routed = ctx.ovn.read(|r| routed_nexthops(r, spec));
        let verdicts = readiness_gate::routed_instances(&instances, spec, &routed);
        if let Err(message) = readiness_gate::publish(client, &owned.items, &verdicts).await {
            warn!(gateway = %status::id(gateway), "{message}");
        }
    }
    let outcome = Outcome::of_ovn(programmed.map(drop), &instances);
    let local = traffic_policy::observed_verdict(gateway, &resolved, &ctx.ovn, &nodes, &instances);
    let ready = report(gateway, ctx, &outcome, local.as_ref()).await?;
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

/// Bring OVN to the gateway (and its VPC's BFD port when BFD is on). Returns the model applied.
pub async fn program_ovn(
    gateway: &VpcEgressGateway,
    resolved: &Resolved<'_>,
    instances: &[Observed],
    ports: Vec<String>,
    nodes: &[Node],
    ovn: &Monitor,
) -> Result<GatewaySpec, ProgramError> {
    let mut spec =
        gateway_spec(gateway, resolved, instances, ports).map_err(ProgramError::Invalid)?;
    let port = match resolved.vpc.filter(|_| spec.bfd.is_some()) {
        Some(vpc) => Some(
            vpc_bfd_port(vpc, nodes)
                .map_err(ProgramError::Invalid)?
                .ok_or_else(|| ProgramError::NoBfdPortNode {
                    vpc: vpc.name_any(),
                })?,
        ),
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
    Ok(spec)
}

/// Bring OVN to a gateway's model, and its VPC's BFD port when given (the callers give it only for a gateway with
/// BFD): what the controller does for each gateway, and `veg ovn apply` for each gateway of a file. Returns what
/// changed.
pub async fn program(
    ovn: &Monitor,
    mut spec: GatewaySpec,
    port: Option<&VpcBfdPort>,
) -> Result<Plan, ProgramError> {
    let mut done = Plan::default();
    if let Some(port) = port {
        let mut port = port.clone();
        // A gateway router (bound to a chassis itself) hosts the port without an HA chassis group.
        if ovn.read(|r| on_gateway_router(r, &port.vpc)) {
            port.chassis.clear();
        }
        done = converge(ovn, &port.owner(), &vpc_port_rows(&port))
            .await
            .map_err(|e| ProgramError::Database {
                what: "programming the VPC's BFD port",
                message: format!("{e:#}"),
            })?;
    }
    // On OVN 23.03 policies cannot watch BFD: leave out the instances whose session is down.
    if spec.default_vpc && spec.bfd.is_some() && !supports_bfd_sessions(ovn) {
        spec.down = ovn.read(|r| down_nexthops(r, &spec));
    }
    let plan = apply_ovn(ovn, &spec)
        .await
        .map_err(|e| ProgramError::Database {
            what: "programming OVN",
            message: format!("{e:#}"),
        })?;
    done.changes.extend(plan.changes);
    Ok(done)
}

/// Write the status when it changed, and an Event when readiness changed. Returns whether the gateway is Ready.
async fn report(
    gateway: &VpcEgressGateway,
    ctx: &Context,
    outcome: &Outcome<'_>,
    local: Option<&traffic_policy::Verdict>,
) -> Result<bool, Error> {
    let new = status::compute(gateway, outcome, local, &Time(Timestamp::now()));
    let ready_reason = new
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map_or("", |c| c.reason.as_str());
    metrics::gateway_reported(
        &gateway.namespace().unwrap_or_default(),
        &gateway.name_any(),
        new.ready,
        ready_reason,
        outcome.instances(),
    );
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
        .map_err(|e| Error::OvnCleanup {
            gateway: owner.id(),
            message: format!("{e:#}"),
        })?;
    metrics::gateway_removed(
        &gateway.namespace().unwrap_or_default(),
        &gateway.name_any(),
    );
    info!(gateway = %owner.id(), removed = plan.changes.len(), "gateway deleted; its OVN rows are gone");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> Error {
        Error::Kubernetes {
            context: "writing the status",
            source: kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..Default::default()
            })),
        }
    }

    #[test]
    fn the_retry_comes_from_the_kind_of_failure() {
        assert_eq!(
            api_error(409).retry_after(),
            CONFLICT_RETRY,
            "a lost race: at once"
        );
        assert_eq!(
            api_error(403).retry_after(),
            SLOW_RETRY,
            "forbidden: an operator must act"
        );
        assert_eq!(api_error(500).retry_after(), RETRY);
        assert_eq!(api_error(500).kind(), "kubernetes");
        assert_eq!(Error::Finalizer("x").retry_after(), SLOW_RETRY);
        let cleanup = Error::OvnCleanup {
            gateway: "default/g".into(),
            message: "connection refused".into(),
        };
        assert_eq!((cleanup.kind(), cleanup.retry_after()), ("ovn", RETRY));
        assert_eq!(
            cleanup.to_string(),
            "removing the OVN rows of default/g: connection refused"
        );
    }

    #[test]
    fn a_failed_programming_gives_its_kind_as_the_status_reason() {
        let reasons: Vec<&str> = [
            ProgramError::Invalid("bad".into()),
            ProgramError::NoBfdPortNode { vpc: "vpc1".into() },
            ProgramError::Database {
                what: "programming OVN",
                message: "timeout".into(),
            },
        ]
        .iter()
        .map(ProgramError::reason)
        .collect();
        assert_eq!(
            reasons,
            ["InvalidGateway", "VpcBfdPortUnplaced", "ReconcileOvnFailed"]
        );
    }
}
