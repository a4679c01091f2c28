//! Keeping the programs' route cache honest (veg-ebpf's route_cache.rs): a thread listens to the kernel's
//! rtnetlink announcements of route, rule, neighbour, address and link changes in the datapath's network namespace
//! and bumps ROUTE_GENERATION after each batch, so that a cached route looked up before the change is never used
//! again: a new next hop, or a neighbour's new MAC, is used from the next packet on.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{Array, MapData};

/// The rtnetlink groups whose announcements can change a route lookup's answer.
const GROUPS: [u32; 8] = [
    1,  // RTNLGRP_LINK: interfaces up, down, renamed, new MTU
    3,  // RTNLGRP_NEIGH: a next hop's MAC learned, changed or lost
    5,  // RTNLGRP_IPV4_IFADDR
    7,  // RTNLGRP_IPV4_ROUTE
    8,  // RTNLGRP_IPV4_RULE
    9,  // RTNLGRP_IPV6_IFADDR
    11, // RTNLGRP_IPV6_ROUTE
    19, // RTNLGRP_IPV6_RULE
];

/// How often the thread looks whether it should stop.
const STOP_POLL: Duration = Duration::from_millis(200);

/// The running watch; dropping it stops the thread.
pub struct RouteWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RouteWatch {
    /// Start watching the calling thread's network namespace (the socket is opened here, the thread only reads).
    pub fn start(generation: Array<MapData, u32>) -> anyhow::Result<RouteWatch> {
        let socket =
            subscribe().context("listening for route and neighbour changes (rtnetlink)")?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("veg-route-watch".into())
            .spawn(move || watch(&socket, generation, &stopping))
            .context("starting the route watch")?;
        Ok(RouteWatch {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for RouteWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An rtnetlink socket that receives the announcements of GROUPS.
fn subscribe() -> io::Result<OwnedFd> {
    let socket = crate::sys::socket(
        libc::AF_NETLINK,
        libc::SOCK_RAW | libc::SOCK_NONBLOCK,
        libc::NETLINK_ROUTE,
    )?;
    // Bound (to a port the kernel picks) before joining: an unbound socket is sent no announcements.
    // SAFETY: a zeroed sockaddr_nl with its family set addresses "any port".
    let rc = unsafe {
        let mut local: libc::sockaddr_nl = std::mem::zeroed();
        local.nl_family = libc::AF_NETLINK as u16;
        libc::bind(
            socket.as_raw_fd(),
            (&raw const local).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    for group in GROUPS {
        // SAFETY: valid descriptor and option value.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_NETLINK,
                libc::NETLINK_ADD_MEMBERSHIP,
                (&raw const group).cast(),
                size_of::<u32>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(socket)
}

fn watch(socket: &OwnedFd, mut generation: Array<MapData, u32>, stop: &AtomicBool) {
    let mut buffer = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        if !readable(socket, STOP_POLL) {
            continue;
        }
        // Drain what came (one bump covers the batch); a lost announcement (the socket's buffer overran:
        // ENOBUFS) is a change as well.
        let mut changed = false;
        loop {
            // SAFETY: the buffer is valid for its length.
            let n = unsafe {
                libc::recv(
                    socket.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                )
            };
            if n > 0 {
                changed = true;
                continue;
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::ENOBUFS) => changed = true,
                Some(libc::EINTR) => {}
                _ => break, // EAGAIN: drained
            }
        }
        if changed {
            bump(&mut generation);
        }
    }
}

fn readable(socket: &OwnedFd, timeout: Duration) -> bool {
    let mut poll = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut poll, 1, timeout.as_millis() as i32) > 0 }
}

/// Make every cached route stale. The agent is the map's only writer, so read, add and write is exact.
fn bump(generation: &mut Array<MapData, u32>) {
    let next = generation.get(&0, 0).unwrap_or(0).wrapping_add(1);
    if let Err(e) = generation.set(0, next, 0) {
        // The cache still expires its routes within a second.
        tracing::warn!("cannot mark the cached routes stale: {e}");
    }
}
