//! The instance's uplink: its external interface and the next hop beyond it. An instance whose uplink is dead keeps
//! its ECMP share of the VPC's traffic and loses all of it, since BFD toward OVN only watches the VPC side. The
//! agent checks the uplink every interval and withdraws the instance (BFD AdminDown, /readyz 503) while it is down,
//! and returns it as soon as it is back.
//!
//! Down means the external interface has no carrier, or the next hops (the external interface's default
//! gateways, or the targets given) left `failures` probes in a row unanswered: an ARP request for IPv4, a
//! neighbour solicitation for IPv6, which every router must answer, whatever it filters above layer 3.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::sync::mpsc;

use crate::datapath::slow_path::raw_socket::send_to;
use tracing::{info, warn};

/// What to probe beyond the external interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeTargets {
    /// The external interface's default gateway of each family, read from the routing table at each check; no
    /// default route through it at all is down too.
    Auto,
    /// Only the carrier is checked.
    Off,
    Given(Vec<IpAddr>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkSettings {
    pub targets: ProbeTargets,
    /// Between checks; also how long a probe waits for its answer.
    pub interval: Duration,
    /// Unanswered probes in a row that make the uplink down.
    pub failures: u32,
}

/// The default gateways of the routes through `interface`, from the kernel's routing tables (IPv4, then IPv6), as
/// this thread's namespace has them.
pub fn default_gateways(interface: &str) -> Vec<IpAddr> {
    let table = |name: &str| {
        std::fs::read_to_string(format!("/proc/thread-self/net/{name}")).unwrap_or_default()
    };
    // route: Iface Destination Gateway Flags RefCnt Use Metric Mask ..., addresses as little-endian hex.
    let (routes, routes6) = (table("route"), table("ipv6_route"));
    let v4 = routes
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let default =
                f.len() > 7 && f[0] == interface && f[1] == "00000000" && f[7] == "00000000";
            default
                .then(|| u32::from_str_radix(f[2], 16).ok())
                .flatten()
        })
        .map(|raw| IpAddr::V4(Ipv4Addr::from(raw.swap_bytes())));
    // ipv6_route: dest plen src plen nexthop metric refcnt use flags iface, addresses as 32 hex digits.
    let v6 = routes6
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let default =
                f.len() > 9 && f[9] == interface && f[1] == "00" && f[0].bytes().all(|c| c == b'0');
            default
                .then(|| u128::from_str_radix(f[4], 16).ok())
                .flatten()
        })
        .map(|raw| IpAddr::V6(Ipv6Addr::from(raw)));
    v4.chain(v6)
        .filter(|gateway| !gateway.is_unspecified())
        .collect()
}

/// Whether the interface is up with a carrier (IFF_UP and IFF_RUNNING).
fn carrier(interface: &str) -> bool {
    super::host::interface_request(interface, libc::SIOCGIFFLAGS, |_| {}).is_ok_and(|ifreq| {
        // SAFETY: SIOCGIFFLAGS fills the flags member.
        let flags = i32::from(unsafe { ifreq.ifr_ifru.ifru_flags });
        flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0
    })
}

fn mac_of(interface: &str) -> anyhow::Result<[u8; 6]> {
    let ifreq = super::host::interface_request(interface, libc::SIOCGIFHWADDR, |_| {})
        .with_context(|| format!("reading {interface}'s MAC address"))?;
    // SAFETY: SIOCGIFHWADDR fills the hardware address member.
    let data = unsafe { ifreq.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (byte, value) in mac.iter_mut().zip(data) {
        *byte = value as u8;
    }
    Ok(mac)
}

/// Receive into `buf` until `deadline`; Ok(None) once it passes.
fn receive_until(fd: &OwnedFd, buf: &mut [u8], deadline: Instant) -> io::Result<Option<usize>> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Ok(None);
    }
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut poll, 1, left.as_millis().max(1) as i32) };
    if ready < 0 {
        return Err(io::Error::last_os_error());
    }
    if ready == 0 {
        return Ok(None);
    }
    // SAFETY: buf is valid for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Some(n as usize))
}

/// One ARP request for `target` from `interface`; whether it was answered before `timeout`.
fn arp_probe(interface: &str, target: Ipv4Addr, timeout: Duration) -> anyhow::Result<bool> {
    let ifindex = super::host::interface_index(interface, "external")?;
    let mac = mac_of(interface)?;
    let source = super::host::interface_ipv4_addresses(interface)?
        .first()
        .copied()
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    let fd = crate::sys::socket(
        libc::AF_PACKET,
        libc::SOCK_DGRAM,
        i32::from((libc::ETH_P_ARP as u16).to_be()),
    )
    .context("opening a packet socket for ARP (needs CAP_NET_RAW)")?;
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
    address.sll_ifindex = ifindex as i32;
    address.sll_halen = 6;
    address.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let size = std::mem::size_of::<libc::sockaddr_ll>() as u32;
    // SAFETY: a valid sockaddr_ll of that size.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const address).cast(), size) } < 0 {
        return Err(io::Error::last_os_error()).context("binding the ARP socket");
    }
    let mut request = Vec::with_capacity(28);
    request.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    request.extend_from_slice(&mac);
    request.extend_from_slice(&source.octets());
    request.extend_from_slice(&[0; 6]);
    request.extend_from_slice(&target.octets());
    send_to(&fd, &request, &address).context("sending an ARP request")?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 64];
    while let Some(n) = receive_until(&fd, &mut buf, deadline)? {
        // A reply (opcode 2) whose sender is the target.
        if n >= 28 && buf[6..8] == [0, 2] && buf[14..18] == target.octets() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One neighbour solicitation for `target` from `interface`; whether an advertisement came before `timeout`.
fn nd_probe(interface: &str, target: Ipv6Addr, timeout: Duration) -> anyhow::Result<bool> {
    let ifindex = super::host::interface_index(interface, "external")?;
    let mac = mac_of(interface)?;
    let fd = crate::sys::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6)
        .context("opening an ICMPv6 socket for neighbour discovery (needs CAP_NET_RAW)")?;
    let hops: i32 = 255;
    for option in [libc::IPV6_MULTICAST_HOPS, libc::IPV6_UNICAST_HOPS] {
        // SAFETY: an int option of the right size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IPV6,
                option,
                (&raw const hops).cast(),
                4,
            )
        };
    }
    let index = ifindex as i32;
    // SAFETY: an int option of the right size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_MULTICAST_IF,
            (&raw const index).cast(),
            4,
        )
    };
    // The solicited-node multicast address of the target.
    let t = target.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    );
    let mut solicitation = vec![135, 0, 0, 0, 0, 0, 0, 0];
    solicitation.extend_from_slice(&t);
    // The source link-layer address option, so the answer needs no solicitation of its own.
    solicitation.extend_from_slice(&[1, 1]);
    solicitation.extend_from_slice(&mac);
    let mut address: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    address.sin6_family = libc::AF_INET6 as u16;
    address.sin6_addr.s6_addr = group.octets();
    address.sin6_scope_id = ifindex;
    // The kernel fills the ICMPv6 checksum.
    send_to(&fd, &solicitation, &address).context("sending a neighbour solicitation")?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 256];
    while let Some(n) = receive_until(&fd, &mut buf, deadline)? {
        // An advertisement (136) for the target.
        if n >= 24 && buf[0] == 136 && buf[8..24] == t {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Which part of the uplink a change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    Carrier,
    NextHops,
}

/// How often the carrier is looked at: a lost carrier should withdraw the instance well within BFD's detection
/// time, and the look is one ioctl.
const CARRIER_INTERVAL: Duration = Duration::from_millis(100);

/// Watch the uplink of `interface` until the receiver goes, on two threads of their own (probes block for up to
/// an interval): the carrier, and the next hops. Each sends its changes: Some(why it is down), or None (back).
/// Both start up. Threads inherit the caller's network namespace.
pub fn watch(
    interface: &str,
    settings: UplinkSettings,
    changes: mpsc::Sender<(Part, Option<String>)>,
) {
    let (carrier_interface, carrier_changes) = (interface.to_owned(), changes.clone());
    std::thread::spawn(move || {
        follow(Part::Carrier, CARRIER_INTERVAL, &carrier_changes, || {
            (!carrier(&carrier_interface)).then(|| format!("{carrier_interface} has no carrier"))
        })
    });
    let interface = interface.to_owned();
    let mut misses: BTreeMap<IpAddr, u32> = BTreeMap::new();
    std::thread::spawn(move || {
        follow(Part::NextHops, settings.interval, &changes, || {
            let targets = match &settings.targets {
                ProbeTargets::Auto => default_gateways(&interface),
                ProbeTargets::Off => return None,
                ProbeTargets::Given(targets) => targets.clone(),
            };
            // Translated traffic leaves by the default route through the external interface (the controller's
            // pods always have one): without it nothing gets out.
            if targets.is_empty() {
                return Some(format!("no default route through {interface}"));
            }
            let silent = silent_next_hops(&interface, &targets, settings.interval);
            // Down only after `failures` probes in a row went unanswered.
            misses.retain(|target, _| silent.iter().any(|(t, _)| t == target));
            let reasons: Vec<String> = silent
                .into_iter()
                .filter(|(target, _)| {
                    let count = misses.entry(*target).or_default();
                    *count += 1;
                    *count >= settings.failures
                })
                .map(|(_, why)| why)
                .collect();
            (!reasons.is_empty()).then(|| reasons.join("; "))
        })
    });
}

/// The next hops among `targets` that did not answer a probe from `interface`, with why.
fn silent_next_hops(
    interface: &str,
    targets: &[IpAddr],
    timeout: Duration,
) -> Vec<(IpAddr, String)> {
    if !carrier(interface) {
        // Without a carrier nothing answers; that is the carrier's to say.
        return Vec::new();
    }
    targets
        .iter()
        .filter_map(|target| {
            let answered = match target {
                IpAddr::V4(v4) => arp_probe(interface, *v4, timeout),
                IpAddr::V6(v6) => nd_probe(interface, *v6, timeout),
            };
            match answered {
                Ok(true) => None,
                Ok(false) => Some((*target, format!("next hop {target} does not answer"))),
                Err(e) => Some((*target, format!("probing next hop {target}: {e:#}"))),
            }
        })
        .collect()
}

/// Every `interval`, ask `down` and send what changed, until the receiver goes.
fn follow(
    part: Part,
    interval: Duration,
    changes: &mpsc::Sender<(Part, Option<String>)>,
    mut down: impl FnMut() -> Option<String>,
) {
    let mut was: Option<String> = None;
    while !changes.is_closed() {
        let started = Instant::now();
        let now = down();
        if now != was {
            match &now {
                Some(why) => warn!("uplink down: {why}: withdrawing the instance"),
                None => info!(?part, "uplink back: returning the instance to service"),
            }
            if changes.blocking_send((part, now.clone())).is_err() {
                return;
            }
            was = now;
        }
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interface_that_is_not_there_has_no_carrier() {
        assert!(!carrier("no-such-if0"));
        assert!(carrier("lo"), "the loopback interface is up");
    }

    #[test]
    fn default_gateways_of_an_interface_without_routes_are_none() {
        assert!(default_gateways("no-such-if0").is_empty());
    }
}
