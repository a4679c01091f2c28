//! The instances read their gateway and the Subnets (`veg gateway --gateway`), so each gateway's namespace gets
//! the service account they run as, bound to the read-only ClusterRole veg-gateway (deploy/gateway/rbac.yaml) as a
//! subject of its ClusterRoleBinding. Subnets are cluster-scoped, which a namespaced RoleBinding cannot grant.

use k8s_openapi::api::{
    core::v1::ServiceAccount,
    rbac::v1::{ClusterRoleBinding, Subject},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams},
};
use serde_json::json;

use super::{
    reconcile::FIELD_MANAGER,
    workload::{APP, APP_LABEL, GATEWAY_SERVICE_ACCOUNT},
};

/// The ClusterRole and ClusterRoleBinding deploy/ installs for the instances.
pub const BINDING: &str = "veg-gateway";

fn subject(namespace: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: GATEWAY_SERVICE_ACCOUNT.into(),
        namespace: Some(namespace.into()),
        api_group: None,
    }
}

/// Make sure the instances of `namespace` may read what they follow. Changes nothing when they may already.
pub async fn grant(client: &Client, namespace: &str) -> Result<(), String> {
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(GATEWAY_SERVICE_ACCOUNT.into()),
            labels: Some([(APP_LABEL.to_owned(), APP.to_owned())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .patch(
            GATEWAY_SERVICE_ACCOUNT,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&account),
        )
        .await
        .map_err(|e| {
            format!("applying service account {namespace}/{GATEWAY_SERVICE_ACCOUNT}: {e}")
        })?;

    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let binding = bindings
        .get_opt(BINDING)
        .await
        .map_err(|e| format!("reading ClusterRoleBinding {BINDING}: {e}"))?
        .ok_or_else(|| format!("ClusterRoleBinding {BINDING} does not exist: install deploy/ (kubectl apply -k deploy/)"))?;
    let wanted = subject(namespace);
    if binding.subjects.iter().flatten().any(|s| *s == wanted) {
        return Ok(());
    }
    // Add the subject only to the version read: a concurrent change makes this fail and the reconcile retry.
    let version = binding
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default();
    let add = match binding.subjects {
        Some(_) => json!({ "op": "add", "path": "/subjects/-", "value": wanted }),
        None => json!({ "op": "add", "path": "/subjects", "value": [wanted] }),
    };
    let patch =
        json!([{ "op": "test", "path": "/metadata/resourceVersion", "value": version }, add]);
    let patch = serde_json::from_value(patch).expect("a valid JSON patch");
    bindings
        .patch(BINDING, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .map_err(|e| {
            format!(
                "binding {namespace}/{GATEWAY_SERVICE_ACCOUNT} in ClusterRoleBinding {BINDING}: {e}"
            )
        })?;
    Ok(())
}
