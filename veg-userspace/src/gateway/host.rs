//! Checks and settings on the instance (the current network namespace) before the datapath goes live.

use std::{
    ffi::{CStr, CString},
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    path::Path,
};

use anyhow::{Context as _, bail};

use super::{netconf, settings::PortRange};

/// The interfaces of the current network namespace.
pub fn interface_names() -> Vec<String> {
    let mut names = Vec::new();
    // SAFETY: if_nameindex returns an array terminated by a zero entry, freed below.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return names;
        }
        let mut entry = list;
        while (*entry).if_index != 0 {
            names.push(
                CStr::from_ptr((*entry).if_name)
                    .to_string_lossy()
                    .into_owned(),
            );
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    names
}

/// The interface's index, or an error listing the interfaces there are.
pub fn interface_index(name: &str, role: &str) -> anyhow::Result<u32> {
    let c_name = CString::new(name).context("interface name contains a NUL byte")?;
    // SAFETY: valid C string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        bail!(
            "{role} interface {name:?} does not exist in this network namespace (it has: {}); check --{role}-interface and --netns",
            interface_names().join(", ")
        );
    }
    Ok(index)
}

/// Whether the programs may hand packets for the interface straight to its peer's receive path
/// (GatewayConfig::internal_peer): it is a veth whose peer is in another network namespace (a pod's eth0), and
/// its transmit would leave a packet as it is. A veth transmits checksums unfinished and segments unsplit by
/// default; with any of those offloads off (OVS's userspace datapath needs tx checksumming off) the kernel finishes
/// them on transmit, which a packet handed to the peer would miss.
pub fn peer_redirect_allowed(name: &str, ifindex: u32) -> std::io::Result<bool> {
    let link = super::rtnetlink::link(ifindex)?;
    if link.kind != "veth" || !link.link_in_other_namespace {
        return Ok(false);
    }
    for offload in [ETHTOOL_GTXCSUM, ETHTOOL_GSG, ETHTOOL_GTSO, ETHTOOL_GGSO] {
        if !ethtool_flag(name, offload)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The legacy ethtool queries of a transmit offload (tx checksumming, scatter-gather, TSO, GSO).
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_GSG: u32 = 0x18;
const ETHTOOL_GTSO: u32 = 0x1e;
const ETHTOOL_GGSO: u32 = 0x23;
const SIOCETHTOOL: libc::c_ulong = 0x8946;

/// One ethtool flag of an interface (SIOCETHTOOL with a struct ethtool_value).
fn ethtool_flag(name: &str, command: u32) -> std::io::Result<bool> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let mut value = EthtoolValue {
        cmd: command,
        data: 0,
    };
    interface_request(name, SIOCETHTOOL, |ifreq| {
        ifreq.ifr_ifru.ifru_data = (&raw mut value).cast();
    })?;
    Ok(value.data != 0)
}

/// An interface request (struct ifreq) for `interface`, filled in by `fill` and answered by `request` on a
/// socket of this namespace. (Not /sys/class/net: with `--netns` the agent keeps the host's mounts, whose sysfs
/// shows the host's interfaces.)
pub fn interface_request(
    interface: &str,
    request: libc::c_ulong,
    fill: impl FnOnce(&mut libc::ifreq),
) -> std::io::Result<libc::ifreq> {
    let fd = crate::sys::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    // SAFETY: ifreq is plain data; zeroes are a valid start.
    let mut ifreq: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in ifreq
        .ifr_name
        .iter_mut()
        .zip(interface.bytes().take(libc::IFNAMSIZ - 1))
    {
        *slot = byte as libc::c_char;
    }
    fill(&mut ifreq);
    // SAFETY: a valid ifreq for these requests; whatever `fill` points it at outlives the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), request, &mut ifreq) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ifreq)
}

/// The addresses configured on an interface, both families.
pub fn interface_addresses(name: &str) -> anyhow::Result<Vec<IpAddr>> {
    let mut addresses = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a linked list that is freed below; every pointer is checked before use.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return Err(std::io::Error::last_os_error()).context("listing interface addresses");
        }
        let mut entry = list;
        while !entry.is_null() {
            let ifa = &*entry;
            if !ifa.ifa_addr.is_null() && CStr::from_ptr(ifa.ifa_name).to_bytes() == name.as_bytes()
            {
                match (*ifa.ifa_addr).sa_family as i32 {
                    libc::AF_INET => {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        addresses.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        addresses.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            entry = ifa.ifa_next;
        }
        libc::freeifaddrs(list);
    }
    Ok(addresses)
}

/// The IPv4 addresses configured on an interface.
pub fn interface_ipv4_addresses(name: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    Ok(interface_addresses(name)?
        .into_iter()
        .filter_map(|a| match a {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .collect())
}

/// The global IPv6 addresses configured on an interface (link-local ones left out: they are never a source the
/// gateway answers from).
pub fn interface_ipv6_addresses(name: &str) -> anyhow::Result<Vec<Ipv6Addr>> {
    Ok(interface_addresses(name)?
        .into_iter()
        .filter_map(|a| match a {
            IpAddr::V6(v6) if !v6.is_unicast_link_local() => Some(v6),
            _ => None,
        })
        .collect())
}

pub fn check_external_address(interface: &str, address: IpAddr) -> anyhow::Result<()> {
    let present = interface_addresses(interface)?;
    if !present.contains(&address) {
        let list: Vec<String> = present.iter().map(IpAddr::to_string).collect();
        bail!(
            "external address {address} is not configured on {interface} (it has: {}): add it with \
             `ip addr add {address}/PREFIX dev {interface}` or fix --external-ip",
            if list.is_empty() {
                "no address".to_owned()
            } else {
                list.join(", ")
            }
        );
    }
    Ok(())
}

/// The kernel's ephemeral port range in this network namespace.
pub fn ephemeral_port_range() -> anyhow::Result<PortRange> {
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    match (parts.next(), parts.next()) {
        (Some(Ok(min)), Some(Ok(max))) => Ok(PortRange { min, max }),
        _ => bail!("unexpected content in {path}: {text:?}"),
    }
}

/// The translation range: the one given, checked against the kernel's ephemeral range (translations must never
/// take a port the instance's own connections may use), or every port from 1024 up outside that range.
pub fn translation_port_range(given: Option<PortRange>) -> anyhow::Result<PortRange> {
    let kernel = ephemeral_port_range()?;
    let Some(range) = given else {
        return PortRange::outside_ephemeral(kernel).with_context(|| {
            format!(
                "the kernel's ephemeral range {kernel} (net.ipv4.ip_local_port_range) leaves no port from 1024 up                  for translations: narrow it (the controller's instances use 61000 65535) or give --port-range"
            )
        });
    };
    if range.overlaps(&kernel) {
        bail!(
            "port range {range} overlaps the kernel's ephemeral range {kernel} (net.ipv4.ip_local_port_range): \
             the instance's own connections would collide with translations. Choose a --port-range outside it \
             (for example 1024-{}), or narrow the kernel's range",
            kernel.min.saturating_sub(1).max(1024)
        );
    }
    Ok(range)
}

/// The loopback interface's index, the same in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// Turn the kernel's IPv4 forwarding off on the instance's two interfaces, whatever the namespace started with (a
/// pod's namespace inherits ip_forward=1 from a Kubernetes node). From then on the kernel never forwards a packet
/// between them: only the datapath's programs do, translating as they go, and without the programs (not yet
/// attached, crash-looping, or gone with their pins) nothing crosses. Set over netlink: /proc/sys is read-only in
/// a pod.
pub fn close_kernel_forwarding(internal: &str, external: &str) -> anyhow::Result<()> {
    for (name, role) in [(internal, "internal"), (external, "external")] {
        let index = interface_index(name, role)?;
        netconf::set_forwarding(index, false)
            .with_context(|| format!("turning IPv4 forwarding off on {name}"))?;
    }
    Ok(())
}

/// IPv4 forwarding of the loopback interface: the datapath's route lookups are made as if packets arrived there,
/// and the kernel answers them only while it is on. Nothing arrives on loopback from outside, so it lets the
/// programs route without letting the kernel forward anything.
pub fn set_loopback_forwarding(on: bool) -> anyhow::Result<()> {
    netconf::set_forwarding(LOOPBACK_IFINDEX, on).with_context(|| {
        format!(
            "turning IPv4 forwarding {} on the loopback interface",
            if on { "on" } else { "off" }
        )
    })
}

/// IPv6's forwarding switches. Unlike IPv4's, the kernel forwards IPv6 by the "all" switch alone, whatever an
/// interface's own says, and netlink cannot set them: they are written under /proc/sys.
const IPV6_FORWARDING_ALL: &str = "/proc/sys/net/ipv6/conf/all/forwarding";
const IPV6_FORWARDING_LOOPBACK: &str = "/proc/sys/net/ipv6/conf/lo/forwarding";

/// Own IPv6 forwarding as IPv4's: the kernel's own forwarding off ("all", so that nothing crosses untranslated
/// without the programs), the loopback interface's on while the agent runs (the programs' IPv6 route lookups
/// are answered only then). Writing "all" resets every interface's switch, so it goes first. Nothing is written
/// that is already so: in a pod /proc/sys is read-only and the pod's sysctls (which the controller sets) have done
/// it. Returns whether the agent turned the loopback's on itself, and so must turn it off when it stops.
pub fn open_ipv6_route_lookups() -> anyhow::Result<bool> {
    if read_sysctl(IPV6_FORWARDING_ALL)? {
        write_sysctl(IPV6_FORWARDING_ALL, false).context(
            "IPv6 forwarding is on for every interface (net.ipv6.conf.all.forwarding=1), so the kernel would \
             forward IPv6 untranslated between the instance's interfaces; it must be 0 in the instance",
        )?;
    }
    if read_sysctl(IPV6_FORWARDING_LOOPBACK)? {
        return Ok(false);
    }
    write_sysctl(IPV6_FORWARDING_LOOPBACK, true).context(
        "the datapath's IPv6 route lookups need net.ipv6.conf.lo.forwarding=1 in the instance (allow that sysctl \
         for the pod, or run without an IPv6 --external-ip)",
    )?;
    Ok(true)
}

/// Turn the loopback interface's IPv6 forwarding off again (the agent is stopping, and turned it on).
pub fn close_ipv6_route_lookups() -> anyhow::Result<()> {
    write_sysctl(IPV6_FORWARDING_LOOPBACK, false)
}

fn read_sysctl(path: &str) -> anyhow::Result<bool> {
    let value = std::fs::read_to_string(path)
        .with_context(|| format!("reading {path} (is IPv6 disabled here?)"))?;
    Ok(value.trim() != "0")
}

fn write_sysctl(path: &str, on: bool) -> anyhow::Result<()> {
    std::fs::write(path, if on { "1" } else { "0" }).with_context(|| format!("writing {path}"))
}

/// An exclusive lock per gateway name, so that two agents never drive the same maps. The file goes away with
/// the agent.
pub struct InstanceLock {
    _file: File,
    path: std::path::PathBuf,
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl InstanceLock {
    pub fn acquire(dir: &Path, name: &str) -> anyhow::Result<InstanceLock> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{name}.lock"));
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        // SAFETY: valid fd; the lock is released when the file closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!(
                "another `veg gateway --name {name}` is running on this host (it holds {})",
                path.display()
            );
        }
        Ok(InstanceLock { _file: file, path })
    }
}
