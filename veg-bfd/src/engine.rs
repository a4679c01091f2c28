//! The BFD engine: UDP sockets (RFC 5881 single hop, IPv4, IPv6 or both at once: a listening socket per family),
//! one session per configured peer, timers, and a status snapshot for the control socket.
//!
//! Received packets must come from a configured peer with a TTL of at least `min_ttl` (254 by default: OVN's
//! packets cross a logical router; 255 is strict RFC 5881); anything else is dropped and counted, and never
//! touches a session.

use std::{
    collections::BTreeMap,
    io,
    mem::MaybeUninit,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use super::{
    packet::{ControlPacket, Discard, State},
    session::{Output, Role, Session, StateChange, Status, Timers},
};

pub const CONTROL_PORT: u16 = 3784;
/// RFC 5881 section 4: source ports of control packets.
const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The local addresses of the sessions, at most one per family: each peer's sessions run from the one of its
    /// family (a dual-stack VPC BFD port has both).
    pub listen: Vec<IpAddr>,
    pub peers: Vec<IpAddr>,
    pub timers: Timers,
    pub min_ttl: u8,
    pub role: Role,
}

/// What `veg bfd status` shows.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub sessions: Vec<(IpAddr, IpAddr, Status)>,
    pub discarded: BTreeMap<&'static str, u64>,
}

struct Peer {
    address: IpAddr,
    /// The local address of the session: the listening address of the peer's family.
    local: IpAddr,
    session: Session,
    socket: UdpSocket,
}

pub struct Engine {
    config: EngineConfig,
    peers: Vec<Peer>,
    /// One receiving socket per listening address, IPv4's and IPv6's.
    receiver_v4: Option<AsyncFd<UdpSocket>>,
    receiver_v6: Option<AsyncFd<UdpSocket>>,
    discarded: BTreeMap<&'static str, u64>,
    snapshot: Arc<Mutex<Snapshot>>,
}

fn set_int_option(socket: &UdpSocket, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: valid fd and a pointer to an int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            &value as *const i32 as *const _,
            4,
        )
    };
    if rc != 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Set the TTL (hop limit) of outgoing packets, per family.
fn set_ttl(socket: &UdpSocket, listen: IpAddr, ttl: i32) -> io::Result<()> {
    match listen {
        IpAddr::V4(_) => set_int_option(socket, libc::IPPROTO_IP, libc::IP_TTL, ttl),
        IpAddr::V6(_) => set_int_option(socket, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, ttl),
    }
}

/// A sending socket for one session: a free source port from the RFC 5881 range, TTL (hop limit) 255.
fn sending_socket(listen: IpAddr, seed: u32) -> anyhow::Result<UdpSocket> {
    let span = (SOURCE_PORTS.end() - SOURCE_PORTS.start()) as u32 + 1;
    for attempt in 0..span {
        let port = SOURCE_PORTS.start() + ((seed.wrapping_add(attempt)) % span) as u16;
        match UdpSocket::bind((listen, port)) {
            Ok(socket) => {
                set_ttl(&socket, listen, 255)?;
                socket.set_nonblocking(true)?;
                return Ok(socket);
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("binding a BFD source port on {listen}"));
            }
        }
    }
    bail!("no free BFD source port in 49152-65535 on {listen}")
}

fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    // SAFETY: valid buffer.
    unsafe { libc::getrandom(bytes.as_mut_ptr() as *mut _, 4, 0) };
    u32::from_ne_bytes(bytes)
}

/// The socket control packets arrive on, at `listen`, reporting each packet's TTL (hop limit).
fn receiving_socket(listen: IpAddr) -> anyhow::Result<AsyncFd<UdpSocket>> {
    let receiver = UdpSocket::bind((listen, CONTROL_PORT)).with_context(|| {
        format!(
            "listening on {}: is the address on an interface here, and no other BFD daemon running?",
            SocketAddr::new(listen, CONTROL_PORT)
        )
    })?;
    match listen {
        IpAddr::V4(_) => set_int_option(&receiver, libc::IPPROTO_IP, libc::IP_RECVTTL, 1)?,
        IpAddr::V6(_) => set_int_option(&receiver, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, 1)?,
    }
    receiver.set_nonblocking(true)?;
    // SAFETY: the engine owns the socket for as long as the registration lives.
    Ok(unsafe { AsyncFd::register(receiver)? })
}

/// Wait until the socket has something to read; never, without a socket.
async fn readable(
    receiver: &Option<AsyncFd<UdpSocket>>,
) -> io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, UdpSocket>> {
    match receiver {
        Some(receiver) => receiver.readable().await,
        None => std::future::pending().await,
    }
}

/// Everything waiting on a ready socket.
fn drain(
    mut guard: tokio::io::unix::AsyncFdReadyGuard<'_, UdpSocket>,
) -> io::Result<Vec<(Vec<u8>, IpAddr, u8)>> {
    let mut datagrams = Vec::new();
    while let Some(datagram) = receive(guard.get_inner())? {
        datagrams.push(datagram);
    }
    guard.clear_ready();
    Ok(datagrams)
}

impl Engine {
    pub fn new(config: EngineConfig, snapshot: Arc<Mutex<Snapshot>>) -> anyhow::Result<Engine> {
        let listen_v4 = config.listen.iter().copied().find(IpAddr::is_ipv4);
        let listen_v6 = config.listen.iter().copied().find(IpAddr::is_ipv6);
        if config.listen.is_empty()
            || config.listen.len()
                != usize::from(listen_v4.is_some()) + usize::from(listen_v6.is_some())
        {
            bail!(
                "BFD listens on one address per family, IPv4, IPv6 or both (\"v4,v6\"); got {:?}",
                config.listen
            );
        }
        if config.peers.is_empty() {
            bail!("no BFD peer: give at least one --peer");
        }
        let local_of = |peer: &IpAddr| if peer.is_ipv4() { listen_v4 } else { listen_v6 };
        if let Some(peer) = config.peers.iter().find(|p| local_of(p).is_none()) {
            bail!(
                "BFD peer {peer} has no listening address of its family (listening on {:?}): add one to the \
                 listen addresses",
                config.listen
            );
        }
        let receiver_v4 = listen_v4.map(receiving_socket).transpose()?;
        let receiver_v6 = listen_v6.map(receiving_socket).transpose()?;
        let now = Instant::now();
        let mut peers = Vec::new();
        for (i, &address) in config.peers.iter().enumerate() {
            let local = local_of(&address).expect("checked above");
            // Random discriminators, so a restarted engine is not mistaken for its previous life.
            let discriminator = random_u32().max(1).wrapping_add(i as u32).max(1);
            peers.push(Peer {
                address,
                local,
                session: Session::new(discriminator, config.role, config.timers, now),
                socket: sending_socket(local, random_u32())?,
            });
        }
        let engine = Engine {
            config,
            peers,
            receiver_v4,
            receiver_v6,
            discarded: BTreeMap::new(),
            snapshot,
        };
        engine.publish();
        Ok(engine)
    }

    /// Run until `stop` completes. While `withdrawn` says so, and when stopping, the sessions are AdminDown: the
    /// peers hear it (diagnostic 7) instead of waiting out their detection time, and stop sending traffic here;
    /// withdrawn sessions keep telling them at their transmit interval, so that one lost packet does not leave a
    /// peer waiting. When `withdrawn` turns false again, the sessions come back (Down, then Up with the peers).
    pub async fn run(
        mut self,
        mut withdrawn: tokio::sync::watch::Receiver<bool>,
        stop: impl std::future::Future<Output = ()>,
        mut timers: tokio::sync::mpsc::Receiver<Timers>,
    ) -> anyhow::Result<()> {
        tokio::pin!(stop);
        let mut follow_withdrawn = true;
        if *withdrawn.borrow_and_update() {
            self.admin_down(true);
        }
        loop {
            let deadline = self
                .peers
                .iter()
                .filter_map(|p| p.session.next_deadline())
                .min();
            let sleep = tokio::time::sleep_until(
                deadline
                    .map(tokio::time::Instant::from_std)
                    .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600)),
            );
            tokio::select! {
                _ = &mut stop => break,
                changed = withdrawn.changed(), if follow_withdrawn => match changed {
                    Ok(()) => {
                        let down = *withdrawn.borrow_and_update();
                        info!(withdrawn = down, "BFD sessions {}", if down { "withdrawn (AdminDown)" } else { "back in service" });
                        self.admin_down(down);
                    }
                    // Nobody can change it any more: it stays as it is.
                    Err(_) => follow_withdrawn = false,
                },
                _ = sleep => self.on_timers(),
                Some(new) = timers.recv() => self.set_timers(new),
                ready = readable(&self.receiver_v4) => {
                    for (payload, from, ttl) in drain(ready?)? {
                        self.on_packet(&payload, from, ttl);
                    }
                }
                ready = readable(&self.receiver_v6) => {
                    for (payload, from, ttl) in drain(ready?)? {
                        self.on_packet(&payload, from, ttl);
                    }
                }
            }
        }
        self.admin_down(true);
        Ok(())
    }

    /// Every session AdminDown (or back from it), each telling its peer at once; a session already so stays.
    fn admin_down(&mut self, down: bool) {
        let now = Instant::now();
        for peer in &mut self.peers {
            let out = peer.session.set_admin_down(down, now);
            carry_out(peer, out);
        }
        self.publish();
    }

    /// New timers for every session, negotiated with the peers by Poll Sequences.
    fn set_timers(&mut self, timers: Timers) {
        info!(?timers, "BFD timers changed");
        let now = Instant::now();
        self.config.timers = timers;
        for peer in &mut self.peers {
            peer.session.set_timers(timers, now);
        }
        self.publish();
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        for peer in &mut self.peers {
            let out = peer.session.on_timer(now);
            carry_out(peer, out);
        }
        self.publish();
    }

    fn on_packet(&mut self, payload: &[u8], from: IpAddr, ttl: u8) {
        match self.accept(payload, from, ttl) {
            Ok(()) => {}
            Err(reason) => *self.discarded.entry(reason.label()).or_default() += 1,
        }
        self.publish();
    }

    fn accept(&mut self, payload: &[u8], from: IpAddr, ttl: u8) -> Result<(), Discard> {
        // Who and how far come first: nothing from elsewhere may influence a session.
        let Some(index) = self.peers.iter().position(|p| p.address == from) else {
            return Err(Discard::PeerNotAllowed);
        };
        if ttl < self.config.min_ttl {
            return Err(Discard::LowTtl);
        }
        let packet = ControlPacket::decode(payload)?;
        let peer = &mut self.peers[index];
        let out = peer.session.receive(&packet, Instant::now())?;
        carry_out(peer, out);
        Ok(())
    }

    fn publish(&self) {
        let mut snapshot = self.snapshot.lock().unwrap();
        snapshot.sessions = self
            .peers
            .iter()
            .map(|p| (p.local, p.address, p.session.status()))
            .collect();
        snapshot.discarded = self.discarded.clone();
    }
}

/// Do what a session asked for after an event: say that its state changed, send its packet.
fn carry_out(peer: &Peer, out: Output) {
    if let Some(StateChange {
        from,
        to,
        diagnostic,
    }) = out.change
    {
        let peer = peer.address;
        if to == State::Up {
            info!(%peer, %from, %to, "BFD session up");
        } else {
            warn!(%peer, %from, %to, diagnostic = diagnostic.describe(), "BFD session state changed");
        }
    }
    if let Some(packet) = out.transmit {
        send(peer, &packet);
    }
}

fn send(peer: &Peer, packet: &ControlPacket) {
    if let Err(e) = peer.socket.send_to(
        &packet.encode(),
        SocketAddr::new(peer.address, CONTROL_PORT),
    ) {
        warn!(peer = %peer.address, "sending a BFD packet failed: {e}");
    }
}

/// One datagram with its sender and TTL (IPv6: hop limit), or None when nothing is waiting.
fn receive(socket: &UdpSocket) -> io::Result<Option<(Vec<u8>, IpAddr, u8)>> {
    let mut buf = [0u8; 128];
    // Large enough for either family's address.
    let mut from: MaybeUninit<libc::sockaddr_in6> = MaybeUninit::zeroed();
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut _,
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; every pointer refers to a live buffer of the stated size.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = from.as_mut_ptr() as *mut _;
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut _;
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: as above.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(err)
        };
    }
    // SAFETY: the kernel filled the address (of the family it names) and the control messages.
    let from = unsafe { from.assume_init() };
    let sender = if from.sin6_family as i32 == libc::AF_INET {
        let v4 = unsafe { &*(&from as *const libc::sockaddr_in6 as *const libc::sockaddr_in) };
        IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)))
    } else {
        IpAddr::V6(Ipv6Addr::from(from.sin6_addr.s6_addr))
    };
    let mut ttl = 0u8;
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let level = (*cmsg).cmsg_level;
            let kind = (*cmsg).cmsg_type;
            if (level == libc::IPPROTO_IP && kind == libc::IP_TTL)
                || (level == libc::IPPROTO_IPV6 && kind == libc::IPV6_HOPLIMIT)
            {
                ttl = *(libc::CMSG_DATA(cmsg) as *const i32) as u8;
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Some((buf[..n as usize].to_vec(), sender, ttl)))
}
