//! The control socket of a running `veg bfd`: `veg bfd status` connects, asks, and prints the answer.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixListener,
    sync::mpsc,
};

use super::{
    engine::{Engine, Snapshot},
    session::{Role, Timers},
};

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
            bail!(
                "a `veg bfd --name {name}` is already running ({} answers)",
                path.display()
            );
        }
        std::fs::remove_file(&path)?; // left over by a process that died
    }
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    Ok((listener, path))
}

/// A request on the control socket: one line, `status` or `timers MIN_TX_MS MIN_RX_MS MULTIPLIER`.
pub enum Request {
    Status,
    Timers(Timers),
}

impl Request {
    fn parse(line: &str) -> Result<Request, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["status"] => Ok(Request::Status),
            ["timers", tx, rx, mult] => {
                let ms = |w: &str| {
                    w.parse::<u64>()
                        .ok()
                        .filter(|v| (1..=3_600_000).contains(v))
                        .map(Duration::from_millis)
                };
                match (ms(tx), ms(rx), mult.parse::<u8>().ok().filter(|m| *m > 0)) {
                    (Some(desired_min_tx), Some(required_min_rx), Some(detect_mult)) => {
                        Ok(Request::Timers(Timers {
                            desired_min_tx,
                            required_min_rx,
                            detect_mult,
                        }))
                    }
                    _ => Err(
                        "timers take MIN_TX_MS MIN_RX_MS (1-3600000) and MULTIPLIER (1-255)".into(),
                    ),
                }
            }
            _ => Err(format!(
                "unknown request {line:?}: expected `status` or `timers TX RX MULT`"
            )),
        }
    }
}

/// Answer each connection: the status as JSON, or new timers handed to the engine (then the status).
pub async fn serve(
    listener: UnixListener,
    snapshot: Arc<Mutex<Snapshot>>,
    timers: mpsc::Sender<Timers>,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let (reader, mut writer) = stream.into_split();
        let mut line = String::new();
        let _ = BufReader::new(reader).read_line(&mut line).await;
        let reply = match Request::parse(&line) {
            Ok(Request::Status) => snapshot_json(&snapshot.lock().unwrap()),
            Ok(Request::Timers(new)) => {
                let _ = timers.send(new).await;
                json!({ "ok": true })
            }
            Err(error) => json!({ "error": error }),
        };
        let _ = writer.write_all(reply.to_string().as_bytes()).await;
    }
}

/// Run an engine with its control socket until `stop` completes, then remove the socket. Its sessions are
/// AdminDown while `withdrawn` says so (Engine::run).
pub async fn run_engine(
    engine: Engine,
    name: &str,
    snapshot: Arc<Mutex<Snapshot>>,
    withdrawn: tokio::sync::watch::Receiver<bool>,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let (listener, path) = bind(name).await?;
    let (timers_tx, timers_rx) = mpsc::channel(4);
    let server = tokio::spawn(serve(listener, snapshot, timers_tx));
    let result = engine.run(withdrawn, stop, timers_rx).await;
    server.abort();
    let _ = std::fs::remove_file(path);
    result
}

/// Send one request to a running engine and return its JSON answer.
pub fn request(name: &str, line: &str) -> anyhow::Result<Value> {
    use std::io::{Read, Write};
    let path = socket_path(name);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).with_context(|| {
        format!(
            "no `veg bfd --name {name}` answers on {}: is it running?",
            path.display()
        )
    })?;
    stream.write_all(format!("{line}\n").as_bytes())?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    let answer: Value = serde_json::from_str(&body)?;
    if let Some(error) = answer["error"].as_str() {
        bail!("veg bfd --name {name} refused the request: {error}");
    }
    Ok(answer)
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
            if s["passive"].as_bool() == Some(true) {
                " (p)"
            } else {
                ""
            },
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
