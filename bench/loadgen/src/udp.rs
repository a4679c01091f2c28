//! UDP packet rate: a flooder that writes prebuilt Ethernet frames (IPv4 or IPv6) straight to the client's
//! interface (AF_PACKET, qdisc bypassed, sendmmsg), spread over many source ports. It skips the client's own IP stack so that
//! the gateway, not the sender, is what limits the rate. The bench counts arrivals at the server's interface.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

const BATCH: usize = 64;
/// First source port of the flows (outside veg's default NAT range, like a client's ephemeral ports).
const FIRST_SOURCE_PORT: u16 = 33000;

fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial
        + data
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
            .sum::<u32>();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4/UDP or IPv6/UDP packet with correct checksums (the families of `src` and `dst` agree: checked when the
/// path is read).
fn packet(src: IpAddr, dst: SocketAddr, sport: u16, payload: usize) -> Vec<u8> {
    match (src, dst.ip()) {
        (IpAddr::V6(src), IpAddr::V6(dst_ip)) => packet6(src, dst_ip, sport, dst.port(), payload),
        (IpAddr::V4(src), IpAddr::V4(dst_ip)) => packet4(src, dst_ip, sport, dst.port(), payload),
        _ => unreachable!("FramePath::check refuses mixed families"),
    }
}

/// The UDP header and payload after the IP header, its checksum over `pseudo` (the pseudo-header's sum).
fn udp_segment(sport: u16, dport: u16, payload: usize, pseudo: impl Fn(usize) -> u32) -> Vec<u8> {
    let udp_len = 8 + payload;
    let mut u = vec![0u8; udp_len];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    for (i, b) in u[8..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let mut csum = checksum(&u, pseudo(udp_len));
    if csum == 0 {
        csum = 0xffff;
    }
    u[6..8].copy_from_slice(&csum.to_be_bytes());
    u
}

fn sum_words(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum()
}

fn packet6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let udp = udp_segment(sport, dport, payload, |len| {
        sum_words(&src.octets()) + sum_words(&dst.octets()) + len as u32 + 17
    });
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    p.extend_from_slice(&[17, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&udp);
    p
}

fn packet4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let udp = udp_segment(sport, dport, payload, |len| {
        sum_words(&src.octets()) + sum_words(&dst.octets()) + 17 + len as u32
    });
    let total = 20 + udp.len();
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40; // don't fragment
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let ip_csum = checksum(&p, 0);
    p[10..12].copy_from_slice(&ip_csum.to_be_bytes());
    p.extend_from_slice(&udp);
    p
}

fn parse_mac(text: &str) -> anyhow::Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("invalid MAC address {text:?}"))
}

/// Where the frames go: out of INTERFACE to the gateway's MAC address, from SRC to DST (both IPv4 or both IPv6).
#[derive(clap::Args)]
pub struct FramePath {
    #[arg(long)]
    interface: String,
    #[arg(long)]
    gateway_mac: String,
    #[arg(long)]
    src: IpAddr,
    #[arg(long)]
    dst: SocketAddr,
}

impl FramePath {
    fn check(&self) -> anyhow::Result<()> {
        if self.src.is_ipv4() != self.dst.is_ipv4() {
            bail!(
                "--src {} and --dst {} are of different families",
                self.src,
                self.dst
            );
        }
        Ok(())
    }

    /// The EtherType of the frames.
    fn ether_type(&self) -> u16 {
        if self.src.is_ipv4() { 0x0800 } else { 0x86dd }
    }
}

/// An AF_PACKET socket bound to the client's interface that sends prebuilt IP packets to the gateway's MAC.
struct FrameSender {
    socket: socket2::Socket,
    ethernet: Vec<u8>,
}

impl FrameSender {
    fn open(path: &FramePath) -> anyhow::Result<FrameSender> {
        path.check()?;
        let (interface, gateway_mac) = (path.interface.as_str(), path.gateway_mac.as_str());
        // `ip netns exec` mounts the namespace's own /sys.
        let own_mac = parse_mac(&std::fs::read_to_string(format!(
            "/sys/class/net/{interface}/address"
        ))?)?;
        let mut ethernet = Vec::with_capacity(14);
        ethernet.extend_from_slice(&parse_mac(gateway_mac)?);
        ethernet.extend_from_slice(&own_mac);
        ethernet.extend_from_slice(&path.ether_type().to_be_bytes());

        let socket = socket2::Socket::new(socket2::Domain::PACKET, socket2::Type::RAW, None)
            .context("AF_PACKET socket (needs root)")?;
        let name = std::ffi::CString::new(interface)?;
        // SAFETY: valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            bail!("no interface {interface}");
        }
        // SAFETY: sockaddr_ll is plain data; bind and setsockopt get valid pointers and sizes.
        unsafe {
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = path.ether_type().to_be();
            addr.sll_ifindex = ifindex as i32;
            if libc::bind(
                socket.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of_val(&addr) as u32,
            ) != 0
            {
                return Err(std::io::Error::last_os_error())
                    .context("binding the AF_PACKET socket");
            }
            let one: libc::c_int = 1;
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                &one as *const _ as *const _,
                4,
            );
        }
        Ok(FrameSender { socket, ethernet })
    }

    /// The Ethernet frame carrying `packet`.
    fn frame(&self, packet: &[u8]) -> Vec<u8> {
        [self.ethernet.as_slice(), packet].concat()
    }

    /// Send the frames with one sendmmsg; returns how many the kernel took.
    fn send(&self, frames: &[&[u8]]) -> u64 {
        let mut iovs: Vec<libc::iovec> = frames
            .iter()
            .map(|f| libc::iovec {
                iov_base: f.as_ptr() as *mut _,
                iov_len: f.len(),
            })
            .collect();
        // SAFETY: mmsghdr is plain data; the iovecs point at live frames.
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: every pointer refers to live buffers of the stated lengths.
        let n = unsafe {
            libc::sendmmsg(
                self.socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as u32,
                0,
            )
        };
        n.max(0) as u64
    }
}

pub fn flood(
    path: &FramePath,
    flows: u16,
    payload: usize,
    duration: Duration,
) -> anyhow::Result<Value> {
    let dst = path.dst;
    if flows == 0 {
        bail!("--flows must be at least 1");
    }
    let sender = FrameSender::open(path)?;
    let frames: Vec<Vec<u8>> = (0..flows)
        .map(|i| sender.frame(&packet(path.src, dst, FIRST_SOURCE_PORT + i, payload)))
        .collect();
    let mut next = 0usize;
    let mut sent = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        let batch: Vec<&[u8]> = (0..BATCH)
            .map(|_| {
                next += 1;
                frames[next % frames.len()].as_slice()
            })
            .collect();
        sent += sender.send(&batch);
    }
    Ok(json!({ "sent": sent, "seconds": start.elapsed().as_secs_f64(), "flows": flows }))
}

/// Open FLOWS distinct UDP flows, one packet each, as fast as the path takes them: flow i goes from source port
/// FIRST_SOURCE_PORT + i / DST_PORTS to destination port FIRST_DST_PORT + i % DST_PORTS, so that no remote
/// endpoint holds more flows than a NAT's port range can translate.
pub fn open_flows(path: &FramePath, flows: u32, dst_ports: u16) -> anyhow::Result<Value> {
    let dst = path.dst;
    let per_port = flows.div_ceil(u32::from(dst_ports.max(1)));
    if dst_ports == 0
        || u32::from(dst.port()) + u32::from(dst_ports) > 65536
        || u32::from(FIRST_SOURCE_PORT) + per_port > 65536
    {
        bail!(
            "{flows} flows over {dst_ports} destination port(s) from {}: needs more source ports than exist; \
             raise --dst-ports",
            dst.port()
        );
    }
    let sender = FrameSender::open(path)?;
    let mut sent = 0u64;
    let start = Instant::now();
    let mut i = 0u32;
    while i < flows {
        let frames: Vec<Vec<u8>> = (i..flows.min(i + BATCH as u32))
            .map(|f| {
                let sport = FIRST_SOURCE_PORT + (f / u32::from(dst_ports)) as u16;
                let dport = dst.port() + (f % u32::from(dst_ports)) as u16;
                let to = SocketAddr::new(dst.ip(), dport);
                sender.frame(&packet(path.src, to, sport, 18))
            })
            .collect();
        let batch: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let taken = sender.send(&batch);
        if taken == 0 {
            bail!("sendmmsg failed: {}", std::io::Error::last_os_error());
        }
        sent += taken;
        i += taken as u32;
    }
    Ok(json!({ "sent": sent, "seconds": start.elapsed().as_secs_f64(), "flows": flows }))
}
