//! UDP traffic between named network namespaces (the lab's, by name): an echo server that records the source of
//! every datagram, single round trips, and a steady stream whose echoes are timed (to measure a failover's gap).

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::netns::enter;

fn path(netns: &str) -> String {
    format!("/var/run/netns/{netns}")
}

/// Run `f` on a thread inside the named network namespace and wait for it.
pub fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = path(netns);
    std::thread::spawn(move || {
        enter(&path);
        f()
    })
    .join()
    .expect("thread in namespace panicked")
}

/// A UDP echo server in a namespace that records who it heard from; stops when dropped.
pub struct Echo {
    seen: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
}

impl Echo {
    pub fn start(netns: &str, port: u16) -> Echo {
        Echo::start_at(netns, SocketAddr::from(([0, 0, 0, 0], port)))
    }

    /// An echo server bound to `address` (an IPv6 one to hear IPv6).
    pub fn start_at(netns: &str, address: SocketAddr) -> Echo {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (record, stopped) = (seen.clone(), stop.clone());
        let path = path(netns);
        let (ready_tx, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            enter(&path);
            let socket = UdpSocket::bind(address).expect("binding the echo server");
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 64];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    record.lock().unwrap().push(from);
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        });
        ready.recv().expect("the echo server started");
        Echo { seen, stop }
    }

    /// How many datagrams arrived.
    pub fn heard(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Every source (address and port) heard after the first `heard` datagrams.
    pub fn peers_since(&self, heard: usize) -> Vec<SocketAddr> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .skip(heard)
            .copied()
            .collect()
    }

    /// The source addresses heard, in order, consecutive repeats folded.
    pub fn sources(&self) -> Vec<IpAddr> {
        self.sources_since(0)
    }

    /// The source addresses heard after the first `heard` datagrams, consecutive repeats folded.
    pub fn sources_since(&self, heard: usize) -> Vec<IpAddr> {
        let seen = self.seen.lock().unwrap();
        let mut ips: Vec<IpAddr> = seen.iter().skip(heard).map(|a| a.ip()).collect();
        ips.dedup();
        ips
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Any address and port of `server`'s family: what a client socket binds.
fn any_port_of_family(server: SocketAddr) -> SocketAddr {
    if server.is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from(([0, 0, 0, 0], 0))
    }
}

/// From inside `netns`: send one datagram to `server` and wait up to a second for its echo.
pub fn round_trip(netns: &str, server: SocketAddr) -> bool {
    in_netns(netns, move || {
        let socket = UdpSocket::bind(any_port_of_family(server)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        socket.send_to(b"ping", server).unwrap();
        let mut buf = [0u8; 16];
        socket.recv_from(&mut buf).is_ok()
    })
}

/// A datagram every 5 ms from `netns` to `server`, one flow; when each echo came back. Stops when dropped.
pub struct Stream {
    stop: Arc<AtomicBool>,
    echoes: Arc<Mutex<Vec<Instant>>>,
}

impl Stream {
    pub fn start(netns: &str, server: SocketAddr) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let echoes = Arc::new(Mutex::new(Vec::new()));
        let (stopped, record) = (stop.clone(), echoes.clone());
        let path = path(netns);
        std::thread::spawn(move || {
            enter(&path);
            let socket = UdpSocket::bind(any_port_of_family(server)).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(5)))
                .unwrap();
            let mut buf = [0u8; 16];
            while !stopped.load(Ordering::Relaxed) {
                let _ = socket.send_to(b"stream", server);
                while socket.recv_from(&mut buf).is_ok() {
                    record.lock().unwrap().push(Instant::now());
                }
            }
        });
        Stream { stop, echoes }
    }

    /// The longest time without an echo between `since` and now, the silence at the end included: a stream
    /// that never came back shows its whole silence.
    pub fn longest_gap_after(&self, since: Instant) -> Duration {
        let now = Instant::now();
        let echoes = self.echoes.lock().unwrap();
        let mut previous = since;
        let mut longest = Duration::ZERO;
        for at in echoes.iter().filter(|t| **t >= since) {
            longest = longest.max(at.duration_since(previous));
            previous = *at;
        }
        longest.max(now.duration_since(previous))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
