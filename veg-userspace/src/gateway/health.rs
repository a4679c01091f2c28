//! Liveness, readiness and metrics over HTTP: `/livez` is 200 while the agent runs; `/readyz` is 200 only while
//! the datapath is attached and every configured BFD session is Up (the reference reports Ready without its
//! external attachment; we do not); `/metrics` is Prometheus' text format (metrics.rs).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use veg_bfd::{engine::Snapshot, packet::State};

use super::metrics::Metrics;

/// Why the instance is not ready, or None when it is.
pub fn not_ready_reason(bfd: &Snapshot) -> Option<String> {
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

pub async fn serve(listener: TcpListener, bfd: Arc<Mutex<Snapshot>>, metrics: Metrics) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let bfd = bfd.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let n = stream.read(&mut request).await.unwrap_or(0);
            let path = std::str::from_utf8(&request[..n])
                .ok()
                .and_then(|r| r.split_whitespace().nth(1))
                .unwrap_or("")
                .to_owned();
            let mut content_type = "text/plain";
            let (status, body) = match path.as_str() {
                "/livez" => ("200 OK", "ok\n".to_owned()),
                "/metrics" => {
                    content_type = "text/plain; version=0.0.4";
                    ("200 OK", metrics.render())
                }
                "/readyz" => match not_ready_reason(&bfd.lock().unwrap()) {
                    None => ("200 OK", "ok\n".to_owned()),
                    Some(reason) => ("503 Service Unavailable", format!("{reason}\n")),
                },
                _ => (
                    "404 Not Found",
                    "try /livez, /readyz or /metrics\n".to_owned(),
                ),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}
