//! `veg controller`: hold the leader Lease, then reconcile every VpcEgressGateway whenever it, its Deployment, its
//! pods, a selected pod or namespace, a Vpc or a Subnet changes, and, on the default VPC with BFD, whenever a BFD
//! session's status changes in OVN. Losing the Lease stops the process, so that a restart starts clean.

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::Deployment,
    coordination::v1::Lease,
    core::v1::{Namespace, Pod},
};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        Controller,
        events::{Recorder, Reporter},
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use tokio_stream::wrappers::WatchStream;
use tracing::{info, warn};

use super::{
    leader::Elector,
    metrics,
    reconcile::{Context, reconcile, retry},
    workload::{APP, APP_LABEL, GATEWAY_LABEL},
};
use crate::{
    crd::{
        gateway::VpcEgressGateway,
        network::{Subnet, Vpc},
    },
    ovn::apply::{DB, monitored_tables},
};
use veg_ovsdb::{
    endpoint::Endpoint,
    monitor::Monitor,
    replica::{Replica, column},
};

pub struct Settings {
    pub nb: Endpoint,
    pub default_image: String,
    pub lease_namespace: String,
    pub lease_name: String,
    pub identity: String,
    pub lease_duration: Duration,
    /// Where `/metrics` is served, by the leader and the standbys alike (none: not served).
    pub metrics: Option<std::net::TcpListener>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Every gateway the cache holds, or those with selectors: what a change of a Vpc, Subnet, namespace or
/// unowned pod may concern.
fn gateways(
    store: &Store<VpcEgressGateway>,
    with_selectors: bool,
) -> Vec<ObjectRef<VpcEgressGateway>> {
    store
        .state()
        .iter()
        .filter(|g| !with_selectors || !g.spec.selectors.is_empty())
        .map(|g| ObjectRef::from_obj(g.as_ref()))
        .collect()
}

/// The BFD sessions' status as OVN reports it, to notice when one changes.
fn bfd_status(replica: &Replica) -> Vec<String> {
    let mut status: Vec<String> = replica
        .rows("BFD")
        .map(|(_, row)| format!("{}={}", column(row, "dst_ip"), column(row, "status")))
        .collect();
    status.sort();
    status
}

pub async fn run(
    settings: Settings,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("cannot reach the Kubernetes API: run in a cluster, or set KUBECONFIG")?;
    run_with(client, settings, stop).await
}

/// Wait until this replica holds the leader Lease.
async fn lead(client: &Client, settings: &Settings) -> anyhow::Result<Elector> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &settings.lease_namespace);
    let mut elector = Elector::new(
        leases,
        &settings.lease_name,
        &settings.identity,
        settings.lease_duration,
    );
    info!(identity = %settings.identity, lease = %format!("{}/{}", settings.lease_namespace, settings.lease_name), "waiting to lead");
    while !elector.step().await.context("acquiring the leader Lease")? {
        tokio::time::sleep(elector.renew_interval()).await;
    }
    info!(identity = %settings.identity, "leading");
    Ok(elector)
}

/// The gateways' controller and what makes it reconcile a gateway: its own changes, its Deployment, its instance
/// pods, and any pod, namespace, Vpc or Subnet change that may touch a gateway's selection or validation.
fn watching(client: &Client) -> Controller<VpcEgressGateway> {
    let controller = Controller::new(
        Api::<VpcEgressGateway>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = controller.store();
    let (pod_store, namespace_store, network_store, subnet_store) =
        (store.clone(), store.clone(), store.clone(), store);
    let instances = watcher::Config::default().labels(&format!("{APP_LABEL}={APP}"));
    controller
        .owns(Api::<Deployment>::all(client.clone()), instances)
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default(),
            move |pod: Pod| {
                match pod.labels().get(GATEWAY_LABEL) {
                    // An instance: its own gateway.
                    Some(gateway)
                        if pod.labels().get(APP_LABEL).map(String::as_str) == Some(APP) =>
                    {
                        vec![ObjectRef::new(gateway).within(&pod.namespace().unwrap_or_default())]
                    }
                    // Any other pod may be selected by a gateway's selectors.
                    _ => gateways(&pod_store, true),
                }
            },
        )
        .watches(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
            move |_: Namespace| gateways(&namespace_store, true),
        )
        .watches(
            Api::<Vpc>::all(client.clone()),
            watcher::Config::default(),
            move |_: Vpc| gateways(&network_store, false),
        )
        .watches(
            Api::<Subnet>::all(client.clone()),
            watcher::Config::default(),
            move |_: Subnet| gateways(&subnet_store, false),
        )
}

/// A task stopped when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The controller on a given API client (tests give it a mocked one).
pub async fn run_with(
    client: Client,
    mut settings: Settings,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    // Served until this run ends, however it ends.
    let _metrics_server = match settings.metrics.take() {
        Some(listener) => {
            listener.set_nonblocking(true).context("serving metrics")?;
            let listener =
                tokio::net::TcpListener::from_std(listener).context("serving metrics")?;
            Some(AbortOnDrop(tokio::spawn(metrics::serve(listener))))
        }
        None => None,
    };
    let mut elector = lead(&client, &settings).await?;
    metrics::set_leader(true);
    let ovn = Monitor::start(settings.nb.clone(), DB, &monitored_tables());
    if !ovn.wait_connected(CONNECT_TIMEOUT).await {
        warn!(nb = %settings.nb, "the OVN Northbound database is not reachable yet; gateways wait until it is");
    }
    let bfd_changes = WatchStream::new(ovn.subscribe());
    let reporter = Reporter {
        controller: "veg-controller".into(),
        instance: Some(settings.identity.clone()),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        ovn,
        default_image: settings.default_image.clone(),
        recorder: Recorder::new(client.clone(), reporter),
    });
    let bfd_ovn = ctx.clone();
    let mut last_bfd = Vec::new();
    let bfd_trigger = bfd_changes.filter_map(move |_| {
        let status = bfd_ovn.ovn.read(bfd_status);
        let changed = status != last_bfd;
        last_bfd = status;
        futures::future::ready(changed.then_some(()))
    });
    let controller = watching(&client).reconcile_all_on(bfd_trigger);

    // Keep the Lease while running; losing it ends the run.
    let (lost_tx, lost) = tokio::sync::oneshot::channel::<String>();
    let keeper = tokio::spawn(async move {
        loop {
            tokio::time::sleep(elector.renew_interval()).await;
            match elector.step().await {
                Ok(true) => {}
                Ok(false) => return drop(lost_tx.send("another replica holds the Lease".into())),
                Err(e) => warn!("renewing the leader Lease failed: {e}; retrying"),
            }
        }
    });
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = controller
        .graceful_shutdown_on(async move {
            let _ = shutdown_rx.await;
        })
        .run(reconcile, retry, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!("controller: {e}");
            }
        });
    tokio::pin!(runner, stop);
    let lost = tokio::select! {
        _ = &mut runner => None,
        _ = &mut stop => Some(None),
        reason = lost => Some(Some(reason.unwrap_or_else(|_| "the Lease keeper stopped".into()))),
    };
    keeper.abort();
    metrics::set_leader(false);
    if let Some(reason) = lost {
        // Let reconciles in flight finish before returning.
        let _ = shutdown_tx.send(());
        runner.await;
        if let Some(reason) = reason {
            bail!("lost leadership: {reason}; exiting so that a restart starts clean");
        }
    }
    info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{
        apps::v1::Deployment,
        rbac::v1::{ClusterRole, PolicyRule, Role},
    };
    use serde::Deserialize;

    const RBAC: &str = include_str!("../../../deploy/controller/rbac.yaml");
    const DEPLOYMENT: &str = include_str!("../../../deploy/controller/deployment.yaml");
    const KUSTOMIZATION: &str = include_str!("../../../deploy/kustomization.yaml");
    const GATEWAY_RBAC: &str = include_str!("../../../deploy/gateway/rbac.yaml");

    fn documents(yaml: &str) -> Vec<serde_json::Value> {
        serde_yaml::Deserializer::from_str(yaml)
            .map(|d| serde_json::Value::deserialize(d).unwrap())
            .collect()
    }

    fn of_kind<T: serde::de::DeserializeOwned>(yaml: &str, kind: &str) -> T {
        let doc = documents(yaml)
            .into_iter()
            .find(|d| d["kind"] == kind)
            .unwrap();
        serde_json::from_value(doc).unwrap()
    }

    fn allows(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
        rules.iter().any(|r| {
            r.api_groups.iter().flatten().any(|g| g == group)
                && r.resources.iter().flatten().any(|x| x == resource)
                && r.verbs.iter().any(|v| v == verb)
        })
    }

    /// Every request the controller makes (reconcile, watches, finalizer, events, Lease) is allowed, and nothing
    /// beyond: no delete anywhere, no write to what it only reads.
    #[test]
    fn the_controller_may_do_exactly_what_it_does() {
        let cluster: ClusterRole = of_kind(RBAC, "ClusterRole");
        let rules = cluster.rules.unwrap();
        let needed = [
            (
                "kubeovn.io",
                "vpc-egress-gateways",
                &["get", "list", "watch", "patch"][..],
            ),
            ("kubeovn.io", "vpc-egress-gateways/status", &["patch"]),
            ("kubeovn.io", "vpcs", &["list", "watch"]),
            ("kubeovn.io", "subnets", &["list", "watch"]),
            ("apps", "deployments", &["list", "watch", "create", "patch"]),
            ("", "pods", &["list", "watch"]),
            ("", "namespaces", &["list", "watch"]),
            ("", "nodes", &["list", "watch"]),
            ("events.k8s.io", "events", &["create", "patch"]),
            ("", "serviceaccounts", &["get", "create", "patch"]),
            (
                "rbac.authorization.k8s.io",
                "clusterrolebindings",
                &["get", "patch"],
            ),
        ];
        for (group, resource, verbs) in needed {
            for verb in verbs {
                assert!(
                    allows(&rules, group, resource, verb),
                    "{verb} {group}/{resource} is not granted"
                );
            }
        }
        for rule in &rules {
            assert!(
                !rule.verbs.iter().any(|v| v == "delete" || v == "*"),
                "{rule:?} grants too much"
            );
            let read_only =
                rule.resources.iter().flatten().any(|r| {
                    ["pods", "namespaces", "nodes", "vpcs", "subnets"].contains(&r.as_str())
                });
            if read_only {
                assert!(
                    rule.verbs
                        .iter()
                        .all(|v| ["get", "list", "watch"].contains(&v.as_str())),
                    "{rule:?}"
                );
            }
        }
        // Bindings: only the instances' own, by name.
        let binding = rules
            .iter()
            .find(|r| {
                r.resources
                    .iter()
                    .flatten()
                    .any(|x| x == "clusterrolebindings")
            })
            .unwrap();
        assert_eq!(
            binding.resource_names.as_deref(),
            Some(&["veg-gateway".to_owned()][..])
        );
        let leader: Role = of_kind(RBAC, "Role");
        let rules = leader.rules.unwrap();
        for verb in ["get", "create", "update"] {
            assert!(allows(&rules, "coordination.k8s.io", "leases", verb));
        }
    }

    /// The instances read their gateway and the subnets, nothing else; the binding leaves its subjects to the
    /// controller.
    #[test]
    fn the_instances_may_only_read_what_they_follow() {
        let role: ClusterRole = of_kind(GATEWAY_RBAC, "ClusterRole");
        let rules = role.rules.unwrap();
        for resource in ["vpc-egress-gateways", "subnets"] {
            for verb in ["get", "list", "watch"] {
                assert!(
                    allows(&rules, "kubeovn.io", resource, verb),
                    "{verb} {resource}"
                );
            }
        }
        assert!(rules.iter().all(|r| {
            r.verbs
                .iter()
                .all(|v| ["get", "list", "watch"].contains(&v.as_str()))
        }));
        let binding: k8s_openapi::api::rbac::v1::ClusterRoleBinding =
            of_kind(GATEWAY_RBAC, "ClusterRoleBinding");
        assert_eq!(
            binding.metadata.name.as_deref(),
            Some(super::super::access::BINDING)
        );
        assert_eq!(binding.role_ref.name, "veg-gateway");
        assert!(
            binding.subjects.is_none(),
            "re-applying deploy/ would remove the controller's subjects"
        );
    }

    #[test]
    fn the_controller_deployment_runs_veg_controller_unprivileged() {
        let deployment: Deployment = of_kind(DEPLOYMENT, "Deployment");
        let pod = deployment.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("veg-controller"));
        let container = &pod.containers[0];
        assert_eq!(
            container.command.as_deref(),
            Some(&["veg".to_owned(), "controller".to_owned()][..])
        );
        let env: Vec<&str> = container
            .env
            .iter()
            .flatten()
            .map(|e| e.name.as_str())
            .collect();
        for needed in ["OVN_NB", "VEG_IMAGE", "POD_NAME", "POD_NAMESPACE"] {
            assert!(env.contains(&needed), "{needed} is not set");
        }
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(
            security.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        for file in [
            "crds/vpc-egress-gateway.yaml",
            "controller/rbac.yaml",
            "controller/deployment.yaml",
        ] {
            assert!(
                KUSTOMIZATION.contains(file),
                "the kustomization misses {file}"
            );
        }
    }
}
