//! The agent's translation records: read from the datapath's FLOW_RECORDS ring and from the sweep, written as JSON
//! lines to stdout or a size-rotated file, and offered live to `veg flows --watch` on a Unix socket
//! (/run/veg/NAME.records). A watcher too slow to keep up is told how many lines it missed; the file and stdout
//! never miss one the agent received.

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Stdout, Write},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{AsyncWriteExt, Interest, unix::AsyncFd},
    net::{UnixListener, UnixStream},
    sync::{broadcast, mpsc},
};
use tracing::{info, warn};
use veg_common::record::FlowRecord;

use super::settings::RecordsDestination;
use crate::datapath::records::{Origin, TranslationRecord};

/// How often the ring is drained without being woken: how late a record may be written at low rates.
const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// Records written per drain at most (a few milliseconds of work).
const DRAIN_BATCH: usize = 4096;

/// Lines a watcher may fall behind before it is told it missed some.
const WATCH_BACKLOG: usize = 4096;

/// The socket `veg flows --watch --name NAME` connects to.
pub fn watch_socket(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(format!("{name}.records"))
}

/// Where lines go. Buffered, and flushed after each batch (`flush`): a write per line would cap the agent at a
/// few tens of thousands of records a second, well below the rate a flood of new flows makes them.
enum Sink {
    Stdout(BufWriter<Stdout>),
    File {
        path: PathBuf,
        file: BufWriter<File>,
        written: u64,
        max_bytes: u64,
    },
}

/// The buffer of the sink: a batch of records is written in one system call or a few.
const SINK_BUFFER: usize = 256 * 1024;

impl Sink {
    fn open(destination: &RecordsDestination) -> anyhow::Result<Sink> {
        Ok(match destination {
            RecordsDestination::Stdout => {
                Sink::Stdout(BufWriter::with_capacity(SINK_BUFFER, std::io::stdout()))
            }
            RecordsDestination::File { path, max_bytes } => {
                let file = open_append(path)?;
                let written = file.metadata().map(|m| m.len()).unwrap_or(0);
                Sink::File {
                    path: path.clone(),
                    file: BufWriter::with_capacity(SINK_BUFFER, file),
                    written,
                    max_bytes: *max_bytes,
                }
            }
        })
    }

    fn write_line(&mut self, line: &str) -> anyhow::Result<()> {
        match self {
            Sink::Stdout(out) => writeln!(out, "{line}").context("writing a record to stdout"),
            Sink::File {
                path,
                file,
                written,
                max_bytes,
            } => {
                if *written > 0 && *written + line.len() as u64 + 1 > *max_bytes {
                    file.flush()
                        .with_context(|| format!("writing records to {}", path.display()))?;
                    let rotated = PathBuf::from(format!("{}.1", path.display()));
                    std::fs::rename(&*path, &rotated).with_context(|| {
                        format!("rotating {} to {}", path.display(), rotated.display())
                    })?;
                    *file = BufWriter::with_capacity(SINK_BUFFER, open_append(path)?);
                    *written = 0;
                }
                writeln!(file, "{line}")
                    .with_context(|| format!("writing a record to {}", path.display()))?;
                *written += line.len() as u64 + 1;
                Ok(())
            }
        }
    }

    /// Hand what is buffered to the kernel.
    fn flush(&mut self) -> anyhow::Result<()> {
        match self {
            Sink::Stdout(out) => out.flush().context("writing records to stdout"),
            Sink::File { path, file, .. } => file
                .flush()
                .with_context(|| format!("writing records to {}", path.display())),
        }
    }
}

fn open_append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the flow records file {}", path.display()))
}

/// The agent's record writer.
pub struct Records {
    ring: AsyncFd<RingBuf<MapData>>,
    sink: Sink,
    origin: Origin,
    /// Ended records of the flows the sweep removed.
    swept: mpsc::UnboundedReceiver<TranslationRecord>,
    watchers: broadcast::Sender<String>,
    listener: UnixListener,
    socket_path: PathBuf,
}

impl Records {
    /// Start writing to `destination`; returns the writer and where the sweep sends the ended records it makes.
    pub fn new(
        ring: RingBuf<MapData>,
        destination: &RecordsDestination,
        origin: Origin,
        socket_path: PathBuf,
    ) -> anyhow::Result<(Records, mpsc::UnboundedSender<TranslationRecord>)> {
        // A socket left by an agent that was killed is in the way; the instance lock says none runs now.
        let _ = std::fs::remove_file(&socket_path);
        let listener = UnixListener::bind(&socket_path).with_context(|| {
            format!("listening for record watchers on {}", socket_path.display())
        })?;
        let (sweep_sender, swept) = mpsc::unbounded_channel();
        let records = Records {
            // SAFETY: the ring owns its map's descriptor, which stays open and the same while the AsyncFd owns
            // the ring.
            ring: unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)
                .context("watching the flow records ring")?,
            sink: Sink::open(destination)?,
            origin,
            swept,
            watchers: broadcast::channel(WATCH_BACKLOG).0,
            listener,
            socket_path,
        };
        Ok((records, sweep_sender))
    }

    /// Write records until `stop`; then those already received.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        info!(socket = %self.socket_path.display(), "translation records on");
        // The datapath wakes the agent only when the ring fills up (its records.rs); otherwise it is drained here.
        let mut drain = tokio::time::interval(DRAIN_INTERVAL);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ready = self.ring.readable_mut() => match ready {
                    Ok(mut guard) => {
                        guard.clear_ready();
                        drop(guard);
                        self.drain_ring();
                    }
                    Err(e) => {
                        warn!("the flow records ring failed: {e}; no more records from the datapath");
                        return;
                    }
                },
                _ = drain.tick() => self.drain_ring(),
                Some(record) = self.swept.recv() => {
                    self.write(&record);
                    self.drain_swept();
                }
                accepted = self.listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        tokio::spawn(serve_watcher(stream, self.watchers.subscribe()));
                    }
                }
                _ = &mut stop => break,
            }
        }
        self.drain_swept();
        let _ = std::fs::remove_file(&self.socket_path);
    }

    /// Write the ended records the sweep has sent so far.
    fn drain_swept(&mut self) {
        while let Ok(record) = self.swept.try_recv() {
            self.write(&record);
        }
        self.flush();
    }

    /// Write what the ring holds, up to DRAIN_BATCH records, so that a flood of them never keeps the agent's
    /// other work (health checks, metrics, BFD) waiting; the next tick or wake-up takes the rest.
    fn drain_ring(&mut self) {
        let mut raw = Vec::new();
        while raw.len() < DRAIN_BATCH
            && let Some(item) = self.ring.get_mut().next()
        {
            raw.push(parse(&item));
        }
        if raw.is_empty() {
            return;
        }
        for record in raw.into_iter().flatten() {
            if let Some(record) = TranslationRecord::from_datapath(&record, &self.origin) {
                self.write(&record);
            }
        }
        self.flush();
    }

    fn flush(&mut self) {
        if let Err(e) = self.sink.flush() {
            warn!("{e:#}");
        }
    }

    fn write(&mut self, record: &TranslationRecord) {
        let line = serde_json::to_string(record).expect("a record serializes");
        if let Err(e) = self.sink.write_line(&line) {
            warn!("{e:#}");
        }
        // No watcher is not an error.
        let _ = self.watchers.send(line);
    }
}

/// A raw record from the ring; None for one of another size (another build's).
fn parse(bytes: &[u8]) -> Option<FlowRecord> {
    if bytes.len() != std::mem::size_of::<FlowRecord>() {
        return None;
    }
    // SAFETY: the size matches and FlowRecord is plain data, valid for any bytes; read_unaligned copes with the
    // ring's 8-byte alignment either way.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const FlowRecord) })
}

/// Send a watcher every line from now on; one that falls behind is told how many it missed.
async fn serve_watcher(mut stream: UnixStream, mut lines: broadcast::Receiver<String>) {
    loop {
        let line = match lines.recv().await {
            Ok(line) => line,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                serde_json::json!({ "event": "missed", "records": missed }).to_string()
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if stream
            .write_all(format!("{line}\n").as_bytes())
            .await
            .is_err()
        {
            return; // the watcher went
        }
    }
}
