//! Liveness, readiness and metrics over HTTP: `/livez` is 200 while the agent runs; `/readyz` is 200 only while
//! the datapath is attached, every configured BFD session is Up and the agent has not withdrawn the instance
//! (draining before a stop); the reference reports Ready without its external attachment, we do not. `/metrics`
//! is Prometheus' text format (metrics.rs).

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use tokio::net::TcpListener;

use veg_bfd::{engine::Snapshot, packet::State};

use super::metrics::Metrics;
use crate::http::{self, Response};

/// Which BFD sessions keep the instance from being ready, or None when none does.
pub fn bfd_not_ready(bfd: &Snapshot) -> Option<String> {
    let down: Vec<String> = bfd
        .sessions
        .iter()
        .filter(|(_, _, status)| status.state != State::Up)
        .map(|(_, peer, status)| format!("BFD session with {peer} is {}", status.state))
        .collect();
    (!down.is_empty()).then(|| down.join("; "))
}

pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("listening for health checks on {address} (--health-listen)"))
}

/// Answer health checks and scrapes; readiness comes from the BFD sessions the metrics read too.
pub async fn serve(listener: TcpListener, metrics: Metrics) {
    let route = move |path: &str| match path {
        "/livez" => Response::ok("ok\n".into()),
        "/metrics" => Response::metrics(metrics.render()),
        "/readyz" => match metrics.not_ready_reason() {
            None => Response::ok("ok\n".into()),
            Some(reason) => Response::with_status("503 Service Unavailable", format!("{reason}\n")),
        },
        _ => Response::with_status("404 Not Found", "try /livez, /readyz or /metrics\n".into()),
    };
    http::serve(listener, Arc::new(route)).await
}
