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

pub fn flood(
    interface: &str,
    gateway_mac: &str,
    src: Ipv4Addr,
    dst: SocketAddr,
    flows: u16,
    payload: usize,
    duration: Duration,
) -> anyhow::Result<Value> {
    let SocketAddr::V4(dst) = dst else {
        bail!("IPv4 only")
    };
    if flows == 0 {
        bail!("--flows must be at least 1");
    }
    // `ip netns exec` mounts the namespace's own /sys.
    let own_mac = parse_mac(&std::fs::read_to_string(format!(
        "/sys/class/net/{interface}/address"
    ))?)?;
    let mut ethernet = Vec::with_capacity(14);
    ethernet.extend_from_slice(&parse_mac(gateway_mac)?);
    ethernet.extend_from_slice(&own_mac);
    ethernet.extend_from_slice(&0x0800u16.to_be_bytes());
    let frames: Vec<Vec<u8>> = (0..flows)
        .map(|i| {
            [
                ethernet.as_slice(),
                &packet(src, dst, FIRST_SOURCE_PORT + i, payload),
            ]
            .concat()
        })
        .collect();

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
            return Err(std::io::Error::last_os_error()).context("binding the AF_PACKET socket");
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
    let mut next = 0usize;
    let mut sent = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        let mut iovs: Vec<libc::iovec> = (0..BATCH)
            .map(|_| {
                let f = &frames[next % frames.len()];
                next += 1;
                libc::iovec {
                    iov_base: f.as_ptr() as *mut _,
                    iov_len: f.len(),
                }
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
        let n = unsafe { libc::sendmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent += n as u64;
        }
    }
    Ok(json!({ "sent": sent, "seconds": start.elapsed().as_secs_f64(), "flows": flows }))
}
