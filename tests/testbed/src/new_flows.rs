//! A steady stream of new flows between named network namespaces, to measure what a planned change (a rolling
//! update, a scale-down) loses: every interval a new UDP flow (a fresh socket: one datagram and its echo) and a new
//! TCP connection (connect, request, echo, close), each recorded with when it started and whether it worked.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::netns::enter;

/// How long a flow may take before it counts as lost.
const PATIENCE: Duration = Duration::from_secs(2);

/// One new flow: its protocol, when it started, how long it took, and what went wrong (None: it worked).
#[derive(Clone, Debug)]
pub struct Attempt {
    pub protocol: &'static str,
    pub started: Instant,
    pub took: Duration,
    pub error: Option<String>,
}

impl Attempt {
    /// Whether a packet of it was lost: it failed, or TCP had to retransmit (its first retransmission waits 1 s,
    /// which an unhurried round trip on these machines never does).
    pub fn lost_a_packet(&self) -> bool {
        self.error.is_some() || self.took >= Duration::from_millis(900)
    }
}

/// The stream of new flows; `stop` ends it and returns every attempt.
pub struct NewFlows {
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    threads: Vec<JoinHandle<()>>,
}

fn udp_flow(server: SocketAddr) -> Result<(), String> {
    let socket = UdpSocket::bind(any_port(server)).map_err(|e| e.to_string())?;
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    socket
        .send_to(b"new flow", server)
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 16];
    socket
        .recv_from(&mut buf)
        .map(drop)
        .map_err(|e| format!("no echo: {e}"))
}

fn tcp_connection(server: SocketAddr) -> Result<(), String> {
    let mut stream =
        TcpStream::connect_timeout(&server, PATIENCE).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
        .write_all(b"new connection")
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 14];
    stream
        .read_exact(&mut buf)
        .map_err(|e| format!("no echo: {e}"))
}

fn any_port(server: SocketAddr) -> SocketAddr {
    if server.is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from(([0, 0, 0, 0], 0))
    }
}

impl NewFlows {
    /// From `netns`, a new UDP flow and a new TCP connection to `server` every `every` (each protocol on a thread
    /// of its own). The server needs a UDP and a TCP echo on its port (`TcpEcho` for TCP).
    pub fn start(netns: &str, server: SocketAddr, every: Duration) -> NewFlows {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        type Flow = fn(SocketAddr) -> Result<(), String>;
        let flows: [(&'static str, Flow); 2] = [("udp", udp_flow), ("tcp", tcp_connection)];
        let threads = flows
            .into_iter()
            .map(|(protocol, flow)| {
                let (stop, attempts) = (stop.clone(), attempts.clone());
                let path = format!("/var/run/netns/{netns}");
                std::thread::spawn(move || {
                    enter(&path);
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let error = flow(server).err();
                        attempts.lock().unwrap().push(Attempt {
                            protocol,
                            started,
                            took: started.elapsed(),
                            error,
                        });
                        std::thread::sleep(every.saturating_sub(started.elapsed()));
                    }
                })
            })
            .collect();
        NewFlows {
            stop,
            attempts,
            threads,
        }
    }

    /// Stop, and every attempt made.
    pub fn stop(mut self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.attempts.lock().unwrap().clone()
    }
}

impl Drop for NewFlows {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A TCP echo server in a named namespace: each connection's bytes come back; stops when dropped.
pub struct TcpEcho {
    stop: Arc<AtomicBool>,
}

impl TcpEcho {
    pub fn start(netns: &str, address: SocketAddr) -> TcpEcho {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let path = format!("/var/run/netns/{netns}");
        let (ready_tx, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            enter(&path);
            let listener = TcpListener::bind(address).expect("binding the TCP echo server");
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        std::thread::spawn(move || {
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.set_read_timeout(Some(PATIENCE));
                            let mut buf = [0u8; 1024];
                            while let Ok(n) = stream.read(&mut buf) {
                                if n == 0 || stream.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        ready.recv().expect("the TCP echo server started");
        TcpEcho { stop }
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
