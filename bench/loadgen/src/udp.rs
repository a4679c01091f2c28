//! UDP packet rate: a flooder that writes prebuilt Ethernet frames straight to the client's interface
//! (AF_PACKET, qdisc bypassed, sendmmsg), spread over many source ports. It skips the client's own IP stack so that
//! the gateway, not the sender, is what limits the rate. The bench counts arrivals at the server's interface.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
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

/// An IPv4/UDP packet with correct checksums.
fn packet(src: Ipv4Addr, dst: SocketAddrV4, sport: u16, payload: usize) -> Vec<u8> {
    let udp_len = 8 + payload;
    let total = 20 + udp_len;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40; // don't fragment
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let ip_csum = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&ip_csum.to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dst.port().to_be_bytes());
    p[24..26].copy_from_slice(&(udp_len as u16).to_be_bytes());
    for (i, b) in p[28..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.ip().octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let initial = pseudo
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum();
    let mut csum = checksum(&p[20..], initial);
    if csum == 0 {
        csum = 0xffff;
    }
    p[26..28].copy_from_slice(&csum.to_be_bytes());
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

/// Where the frames go: out of INTERFACE to the gateway's MAC address, from SRC to DST.
#[derive(clap::Args)]
pub struct FramePath {
    #[arg(long)]
    interface: String,
    #[arg(long)]
    gateway_mac: String,
    #[arg(long)]
    src: Ipv4Addr,
    #[arg(long)]
    dst: SocketAddr,
}

impl FramePath {
    fn dst_v4(&self) -> anyhow::Result<SocketAddrV4> {
        match self.dst {
            SocketAddr::V4(dst) => Ok(dst),
            SocketAddr::V6(_) => bail!("IPv4 only"),
        }
    }
}

/// An AF_PACKET socket bound to the client's interface that sends prebuilt IPv4 packets to the gateway's MAC.
struct FrameSender {
    socket: socket2::Socket,
    ethernet: Vec<u8>,
}

impl FrameSender {
    fn open(interface: &str, gateway_mac: &str) -> anyhow::Result<FrameSender> {
        // `ip netns exec` mounts the namespace's own /sys.
        let own_mac = parse_mac(&std::fs::read_to_string(format!(
            "/sys/class/net/{interface}/address"
        ))?)?;
        let mut ethernet = Vec::with_capacity(14);
        ethernet.extend_from_slice(&parse_mac(gateway_mac)?);
        ethernet.extend_from_slice(&own_mac);
        ethernet.extend_from_slice(&0x0800u16.to_be_bytes());

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
            addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
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
    let dst = path.dst_v4()?;
    if flows == 0 {
        bail!("--flows must be at least 1");
    }
    let sender = FrameSender::open(&path.interface, &path.gateway_mac)?;
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
    let dst = path.dst_v4()?;
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
    let sender = FrameSender::open(&path.interface, &path.gateway_mac)?;
    let mut sent = 0u64;
    let start = Instant::now();
    let mut i = 0u32;
    while i < flows {
        let frames: Vec<Vec<u8>> = (i..flows.min(i + BATCH as u32))
            .map(|f| {
                let sport = FIRST_SOURCE_PORT + (f / u32::from(dst_ports)) as u16;
                let dport = dst.port() + (f % u32::from(dst_ports)) as u16;
                let to = SocketAddrV4::new(*dst.ip(), dport);
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
