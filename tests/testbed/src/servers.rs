//! Servers on the far side that record the source address of everything they receive, and echo it back.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::netns::Netns;

/// The peers a server saw, in arrival order. Stops its threads on drop.
pub struct Recorder {
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Recorder {
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

type Peers = Arc<Mutex<Vec<SocketAddr>>>;

/// Run `serve` on a thread in `ns`. It gets the list to record peers in, the stop flag to poll, and a sender to
/// signal once it listens; this returns after that signal.
fn record(
    ns: &Netns,
    serve: impl FnOnce(Peers, Arc<AtomicBool>, mpsc::Sender<()>) + Send + 'static,
) -> Recorder {
    let peers = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let (p, s) = (peers.clone(), stop.clone());
    let thread = ns.spawn(move || serve(p, s, ready_tx));
    ready_rx.recv().expect("server failed to start");
    Recorder {
        peers,
        stop,
        thread: Some(thread),
    }
}

/// A UDP server on `port` in `ns` that records each datagram's source and echoes it.
pub fn udp_echo(ns: &Netns, port: u16) -> Recorder {
    udp_echo_at(ns, SocketAddr::from(([0, 0, 0, 0], port)))
}

/// A UDP echo server bound to `address` (an IPv6 one to serve IPv6).
pub fn udp_echo_at(ns: &Netns, address: SocketAddr) -> Recorder {
    record(ns, move |p, s, ready_tx| {
        let socket = UdpSocket::bind(address).expect("binding UDP server");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = vec![0u8; 65536];
        while !s.load(Ordering::Relaxed) {
            if let Ok((len, peer)) = socket.recv_from(&mut buf) {
                p.lock().unwrap().push(peer);
                let _ = socket.send_to(&buf[..len], peer);
            }
        }
    })
}

/// A TCP server on `port` in `ns` that records each connection's source and echoes until the peer closes.
pub fn tcp_echo(ns: &Netns, port: u16) -> Recorder {
    tcp_echo_at(ns, SocketAddr::from(([0, 0, 0, 0], port)))
}

/// A TCP echo server bound to `address` (an IPv6 one to serve IPv6).
pub fn tcp_echo_at(ns: &Netns, address: SocketAddr) -> Recorder {
    record(ns, move |p, s, ready_tx| {
        let listener = TcpListener::bind(address).expect("binding TCP server");
        listener.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        let mut connections = Vec::new();
        while !s.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, peer)) => {
                    p.lock().unwrap().push(peer);
                    let stop = s.clone();
                    connections.push(std::thread::spawn(move || echo_stream(stream, &stop)));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        for c in connections {
            let _ = c.join();
        }
    })
}

fn echo_stream(mut stream: TcpStream, stop: &AtomicBool) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// From inside `ns`: send one UDP datagram from `local_port` (0: any) and wait for the echo.
pub fn udp_round_trip(
    ns: &Netns,
    local_port: u16,
    server: SocketAddr,
    payload: &[u8],
) -> std::io::Result<Vec<u8>> {
    let payload = payload.to_vec();
    ns.run(move || {
        let socket = UdpSocket::bind(any_address(server, local_port))?;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        socket.send_to(&payload, server)?;
        let mut buf = vec![0u8; 65536];
        let (len, _) = socket.recv_from(&mut buf)?;
        Ok(buf[..len].to_vec())
    })
}

/// From inside `ns`: connect (from `local_port`, 0: any), send, read the echo, close.
pub fn tcp_round_trip(
    ns: &Netns,
    local_port: u16,
    server: SocketAddr,
    payload: &[u8],
) -> std::io::Result<Vec<u8>> {
    let payload = payload.to_vec();
    ns.run(move || {
        let mut stream = connect_from(local_port, server)?;
        stream.write_all(&payload)?;
        let mut buf = vec![0u8; payload.len()];
        stream.read_exact(&mut buf)?;
        Ok(buf)
    })
}

/// The unspecified address of `server`'s family, at `port`: what a client binds to reach it.
fn any_address(server: SocketAddr, port: u16) -> SocketAddr {
    if server.is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port))
    } else {
        SocketAddr::from(([0, 0, 0, 0], port))
    }
}

/// A TCP connection from a chosen local port (0: any), with a 2 s timeout on every step.
pub fn connect_from(local_port: u16, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(server),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&any_address(server, local_port).into())?;
    socket.connect_timeout(&server.into(), Duration::from_secs(2))?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(stream)
}

/// A raw ICMP socket of the calling thread's namespace: it gets a copy of every ICMP packet the namespace
/// receives. `read` returns them from their IP header on, or None after its 50 ms timeout.
pub struct IcmpListener {
    socket: socket2::Socket,
}

impl IcmpListener {
    pub fn open() -> IcmpListener {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::ICMPV4),
        )
        .expect("raw ICMP socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        IcmpListener { socket }
    }

    pub fn read(&self) -> Option<Vec<u8>> {
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
        let len = self.socket.recv(&mut buf).ok()?;
        // SAFETY: the kernel wrote `len` bytes: the IP header and the ICMP message.
        Some(
            buf[..len]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect(),
        )
    }

    /// The next ICMP error (type 3 or 11) within 3 s, from its IP header on.
    pub fn next_error(&self) -> Vec<u8> {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            let Some(packet) = self.read() else {
                continue;
            };
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            if matches!(packet.get(ihl), Some(3 | 11)) {
                return packet;
            }
        }
        panic!("no ICMP error arrived within 3 s");
    }
}

/// Records the source address of every ICMP echo request arriving in `ns` (the kernel answers them itself).
pub fn icmp_echo_sources(ns: &Netns) -> Recorder {
    record(ns, move |p, s, ready_tx| {
        let listener = IcmpListener::open();
        ready_tx.send(()).unwrap();
        while !s.load(Ordering::Relaxed) {
            if let Some(packet) = listener.read() {
                let ihl = ((packet[0] & 0x0f) as usize) * 4;
                if packet.len() > ihl && packet[ihl] == 8 {
                    let src =
                        std::net::Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
                    let id = u16::from_be_bytes([packet[ihl + 4], packet[ihl + 5]]);
                    p.lock().unwrap().push(SocketAddr::from((src, id)));
                }
            }
        }
    })
}

/// One datagram `socket` receives within 3 s, and from where.
pub fn receive_datagram(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let (len, peer) = socket
        .recv_from(&mut buf)
        .expect("no datagram arrived whole within 3 s");
    (buf[..len].to_vec(), peer)
}

/// Ask the kernel to report ICMP errors about a UDP socket's datagrams to it (IP_RECVERR): a connected socket's
/// next receive then fails with the error (EHOSTUNREACH for time exceeded, ECONNREFUSED for port unreachable).
pub fn report_icmp_errors(socket: &UdpSocket) {
    use std::os::fd::AsRawFd;
    const IP_RECVERR: libc::c_int = 11;
    let on: libc::c_int = 1;
    // SAFETY: valid socket and option buffer.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            IP_RECVERR,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    assert_eq!(rc, 0, "IP_RECVERR: {}", std::io::Error::last_os_error());
}

/// The remote end of a UDP flow in `ns`: it waits on `port` for the first datagram, connects to its sender (the
/// flow's external tuple, when it came through the gateway), lets `prepare` set up the socket (a TTL, a pause),
/// sends `reply` and reads. Joins to the sender and the error its kernel reported instead of an answer, if any.
/// Returns once the socket is bound, so that a datagram sent right after cannot arrive before it.
pub fn answer_first_datagram(
    ns: &Netns,
    port: u16,
    prepare: impl FnOnce(&UdpSocket) + Send + 'static,
    reply: &'static [u8],
) -> JoinHandle<(SocketAddr, Option<i32>)> {
    let (bound_tx, bound) = mpsc::channel();
    let remote = ns.spawn(move || {
        let socket = UdpSocket::bind(("0.0.0.0", port)).expect("binding the remote's socket");
        let _ = bound_tx.send(());
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 64];
        let (_, peer) = socket.recv_from(&mut buf).expect("no first datagram");
        socket.connect(peer).unwrap();
        report_icmp_errors(&socket);
        prepare(&socket);
        socket.send(reply).unwrap();
        (
            peer,
            socket.recv(&mut buf).err().and_then(|e| e.raw_os_error()),
        )
    });
    // A bind that failed panics the thread instead: its join says so.
    let _ = bound.recv();
    remote
}

/// Records the source address and identifier of every ICMPv6 echo request arriving in `ns` (the kernel answers
/// them itself). A raw ICMPv6 socket gets the message without its IP header, its source from recvfrom.
pub fn icmpv6_echo_sources(ns: &Netns) -> Recorder {
    record(ns, move |p, s, ready_tx| {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::RAW,
            Some(socket2::Protocol::ICMPV6),
        )
        .expect("opening a raw ICMPv6 socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
        while !s.load(Ordering::Relaxed) {
            let Ok((len, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            // SAFETY: recv_from initialised the first `len` bytes.
            let message: Vec<u8> = buf[..len]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            if let (Some(source), [128, _, _, _, id_hi, id_lo, ..]) =
                (from.as_socket(), &message[..])
            {
                p.lock().unwrap().push(SocketAddr::new(
                    source.ip(),
                    u16::from_be_bytes([*id_hi, *id_lo]),
                ));
            }
        }
    })
}

/// Write `size` bytes through a TCP echo from `ns` and read them all back, within 30 s.
pub fn echo_bulk(ns: &Netns, to: SocketAddr, size: usize) -> std::io::Result<()> {
    use std::io::{Read, Write};
    ns.run(move || {
        let mut stream = connect_from(0, to)?;
        // Generous: path MTU discovery costs a retransmission or two, and a loaded 2-core machine stretches them.
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let mut writer = stream.try_clone()?;
        let sent = data.clone();
        let writing = std::thread::spawn(move || writer.write_all(&sent));
        let mut back = vec![0u8; size];
        stream.read_exact(&mut back)?;
        writing.join().expect("writer panicked")?;
        assert!(back == data, "the echo came back changed");
        Ok(())
    })
}

/// The path MTU `ip route get DST` reports in `ns` (a learned one shows as "mtu N").
pub fn learned_mtu(ns: &Netns, dst: &str) -> Option<u32> {
    let out = ns.exec("ip", &["route", "get", dst]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    while let Some(word) = words.next() {
        if word == "mtu" {
            return words.next()?.parse().ok();
        }
    }
    None
}
