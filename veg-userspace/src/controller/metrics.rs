//! The controller's metrics, served at `/metrics` on `--metrics-listen` by every replica (a standby reports
//! `veg_controller_leader 0` and nothing reconciled): reconciles by result and failures by kind, how long a
//! reconcile takes, each gateway's readiness (with the reason its Ready condition gives) and its instances by
//! readiness, the Northbound transactions (ovn::metrics), and the build. Process-wide, as the controller is.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use tokio::net::TcpListener;

use super::instances::Observed;
use crate::{
    http::{self, Response},
    metrics_text::{Histogram, SECONDS_BUCKETS, build_info, family, label, single},
    ovn,
};

/// What the last reconcile of a gateway reported.
struct GatewayState {
    ready: bool,
    /// The Ready condition's reason.
    reason: String,
    instances_ready: u64,
    instances_not_ready: u64,
}

struct State {
    leader: bool,
    reconciles_succeeded: u64,
    /// Failed reconciles by the kind of failure (reconcile::Error::kind).
    failures: BTreeMap<&'static str, u64>,
    reconcile_seconds: Histogram,
    /// By (namespace, name).
    gateways: BTreeMap<(String, String), GatewayState>,
}

static STATE: LazyLock<Mutex<State>> = LazyLock::new(|| {
    Mutex::new(State {
        leader: false,
        reconciles_succeeded: 0,
        failures: BTreeMap::new(),
        reconcile_seconds: Histogram::new(SECONDS_BUCKETS),
        gateways: BTreeMap::new(),
    })
});

pub fn set_leader(leader: bool) {
    STATE.lock().unwrap().leader = leader;
}

/// One reconcile: how long it took, and the kind of its failure if it failed.
pub fn reconciled(elapsed: Duration, failure: Option<&'static str>) {
    let mut state = STATE.lock().unwrap();
    state.reconcile_seconds.observe(elapsed.as_secs_f64());
    match failure {
        None => state.reconciles_succeeded += 1,
        Some(kind) => *state.failures.entry(kind).or_default() += 1,
    }
}

/// What a reconcile reported for a gateway: its readiness and the reason, and its instances.
pub fn gateway_reported(
    namespace: &str,
    name: &str,
    ready: bool,
    reason: &str,
    instances: &[Observed],
) {
    let ready_count = instances.iter().filter(|i| i.ready).count() as u64;
    STATE.lock().unwrap().gateways.insert(
        (namespace.to_owned(), name.to_owned()),
        GatewayState {
            ready,
            reason: reason.to_owned(),
            instances_ready: ready_count,
            instances_not_ready: instances.len() as u64 - ready_count,
        },
    );
}

/// A gateway deleted: its series go.
pub fn gateway_removed(namespace: &str, name: &str) {
    STATE
        .lock()
        .unwrap()
        .gateways
        .remove(&(namespace.to_owned(), name.to_owned()));
}

/// The text of one scrape.
pub fn render() -> String {
    let mut out = String::new();
    build_info(&mut out, "veg_controller_build_info", "The controller");
    let state = STATE.lock().unwrap();
    single(
        &mut out,
        "veg_controller_leader",
        "gauge",
        "1 while this replica holds the leader Lease and reconciles, else 0 (a standby).",
        u64::from(state.leader),
    );
    single(
        &mut out,
        "veg_controller_reconciles_total",
        "counter",
        "Reconciles of a gateway that completed (whatever the gateway's readiness).",
        state.reconciles_succeeded,
    );
    family(
        &mut out,
        "veg_controller_reconcile_errors_total",
        "counter",
        "Reconciles that failed and were retried, by kind: kubernetes (an API request failed), ovn (removing a \
         deleted gateway's rows failed), finalizer.",
    );
    // The kinds known today read 0 before their first failure; any other is shown once it happens.
    let known = ["kubernetes", "ovn", "finalizer"];
    let others = state.failures.keys().filter(|kind| !known.contains(kind));
    let kinds: Vec<&str> = known.into_iter().chain(others.copied()).collect();
    for kind in kinds {
        let count = state.failures.get(kind).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "veg_controller_reconcile_errors_total{{kind=\"{kind}\"}} {count}"
        );
    }
    state.reconcile_seconds.render(
        &mut out,
        "veg_controller_reconcile_duration_seconds",
        "How long a reconcile of a gateway took, OVN programming included.",
    );
    family(
        &mut out,
        "veg_controller_gateway_ready",
        "gauge",
        "1 while the gateway is Ready, else 0; reason is its Ready condition's reason.",
    );
    for ((namespace, name), gateway) in &state.gateways {
        let _ = writeln!(
            out,
            "veg_controller_gateway_ready{{namespace=\"{}\",name=\"{}\",reason=\"{}\"}} {}",
            label(namespace),
            label(name),
            label(&gateway.reason),
            u8::from(gateway.ready)
        );
    }
    family(
        &mut out,
        "veg_controller_gateway_instances",
        "gauge",
        "The gateway's instances (pods) by readiness: Ready means attached and every BFD session Up.",
    );
    for ((namespace, name), gateway) in &state.gateways {
        for (ready, count) in [
            ("true", gateway.instances_ready),
            ("false", gateway.instances_not_ready),
        ] {
            let _ = writeln!(
                out,
                "veg_controller_gateway_instances{{namespace=\"{}\",name=\"{}\",ready=\"{ready}\"}} {count}",
                label(namespace),
                label(name),
            );
        }
    }
    drop(state);
    ovn::metrics::render(&mut out);
    out
}

/// Serve `/metrics` (and `/livez`) on `listener` until the process ends.
pub async fn serve(listener: TcpListener) {
    let route = |path: &str| match path {
        "/metrics" => Response::metrics(render()),
        "/livez" => Response::ok("ok\n".into()),
        _ => Response::with_status("404 Not Found", "try /metrics or /livez\n".into()),
    };
    http::serve(listener, Arc::new(route)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(ready: bool) -> Observed {
        Observed {
            pod: "gw-0".into(),
            node: None,
            internal_ip: None,
            external_ip: None,
            ready,
            containers_ready: ready,
        }
    }

    #[test]
    fn a_scrape_shows_reconciles_gateways_and_instances() {
        reconciled(Duration::from_millis(20), None);
        reconciled(Duration::from_millis(3), Some("kubernetes"));
        gateway_reported(
            "metrics-test",
            "gw",
            false,
            "InstancesNotReady",
            &[instance(true), instance(false), instance(false)],
        );
        gateway_reported("metrics-test", "gone", true, "Ready", &[]);
        gateway_removed("metrics-test", "gone");
        let text = render();
        // Other tests of this process reconcile too: look at what this one alone decides.
        assert!(text.contains(
            "veg_controller_gateway_ready{namespace=\"metrics-test\",name=\"gw\",reason=\"InstancesNotReady\"} 0\n"
        ));
        assert!(text.contains(
            "veg_controller_gateway_instances{namespace=\"metrics-test\",name=\"gw\",ready=\"false\"} 2\n"
        ));
        assert!(text.contains(
            "veg_controller_gateway_instances{namespace=\"metrics-test\",name=\"gw\",ready=\"true\"} 1\n"
        ));
        assert!(!text.contains("name=\"gone\""));
        assert!(text.contains("veg_controller_reconcile_errors_total{kind=\"ovn\"}"));
        assert!(text.contains("# TYPE veg_controller_reconcile_duration_seconds histogram\n"));
        assert!(text.contains("veg_controller_reconcile_duration_seconds_bucket{le=\"+Inf\"}"));
        assert!(
            text.contains("# TYPE veg_controller_ovn_transaction_duration_seconds histogram\n")
        );
        assert!(text.contains("veg_controller_build_info{version=\""));
    }
}
