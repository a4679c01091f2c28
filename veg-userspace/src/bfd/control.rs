//! The control socket of a running `veg bfd`: `veg bfd status` connects, asks, and prints the answer.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::{io::AsyncWriteExt, net::UnixListener};

use super::{engine::Snapshot, session::Role};

pub fn socket_path(name: &str) -> PathBuf {
    Path::new("/run/veg").join(format!("bfd-{name}.sock"))
}

pub fn snapshot_json(snapshot: &Snapshot) -> Value {
    let now = Instant::now();
    let sessions: Vec<Value> = snapshot
        .sessions
        .iter()
        .map(|(local, remote, s)| {
            json!({
                "local": local.to_string(),
                "remote": remote.to_string(),
                "passive": s.role == Role::Passive,
                "state": s.state.to_string(),
                "remote_state": s.remote_state.to_string(),
                "local_discriminator": s.local_discriminator,
                "remote_discriminator": s.remote_discriminator,
                "diagnostic": s.diagnostic.describe(),
                "transmit_interval_ms": s.transmit_interval.as_millis() as u64,
                "detection_time_ms": s.detection_time.as_millis() as u64,
                "remote_detect_mult": s.remote_detect_mult,
                "seconds_since_state_change": now.duration_since(s.last_state_change).as_secs(),
            })
        })
        .collect();
    json!({ "sessions": sessions, "discarded": snapshot.discarded })
}

/// Bind the control socket, refusing when another engine of the same name answers on it.
pub async fn bind(name: &str) -> anyhow::Result<(UnixListener, PathBuf)> {
    let path = socket_path(name);
    std::fs::create_dir_all(path.parent().unwrap())?;
    if path.exists() {
        if tokio::net::UnixStream::connect(&path).await.is_ok() {
            bail!("a `veg bfd --name {name}` is already running ({} answers)", path.display());
        }
        std::fs::remove_file(&path)?; // left over by a process that died
    }
    let listener = UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    Ok((listener, path))
}

/// Answer every connection with the current snapshot as JSON.
pub async fn serve(listener: UnixListener, snapshot: Arc<Mutex<Snapshot>>) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let body = snapshot_json(&snapshot.lock().unwrap()).to_string();
        let _ = stream.write_all(body.as_bytes()).await;
    }
}

/// Ask a running engine for its status.
pub fn query(name: &str) -> anyhow::Result<Value> {
    use std::io::Read;
    let path = socket_path(name);
    let mut stream = std::os::unix::net::UnixStream::connect(&path)
        .with_context(|| format!("no `veg bfd --name {name}` answers on {}: is it running?", path.display()))?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(serde_json::from_str(&body)?)
}

/// `bfdd-control status`, with the negotiated timers and counters added.
pub fn print_status(status: &Value, out: &mut impl std::io::Write) -> std::io::Result<()> {
    let sessions = status["sessions"].as_array().cloned().unwrap_or_default();
    writeln!(out, "There are {} sessions:", sessions.len())?;
    for (i, s) in sessions.iter().enumerate() {
        writeln!(out, "Session {}", i + 1)?;
        writeln!(
            out,
            " id={} local={}{} remote={} state={}",
            s["local_discriminator"],
            s["local"].as_str().unwrap_or(""),
            if s["passive"].as_bool() == Some(true) { " (p)" } else { "" },
            s["remote"].as_str().unwrap_or(""),
            s["state"].as_str().unwrap_or("")
        )?;
        writeln!(
            out,
            " remote id={} remote state={} tx every {} ms, detection {} ms, diagnostic: {}, last change {} s ago",
            s["remote_discriminator"],
            s["remote_state"].as_str().unwrap_or(""),
            s["transmit_interval_ms"],
            s["detection_time_ms"],
            s["diagnostic"].as_str().unwrap_or(""),
            s["seconds_since_state_change"]
        )?;
    }
    if let Some(discarded) = status["discarded"].as_object().filter(|d| !d.is_empty()) {
        let counts: Vec<String> = discarded.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(out, "Discarded packets: {}", counts.join(" "))?;
    }
    Ok(())
}
