//! UDP packet rate: a raw-socket flooder that spreads packets over many source ports without a socket per flow,
//! and a sink that counts what arrives.

use std::{
    mem::MaybeUninit,
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
    let mut sum = initial + data.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).sum::<u32>();
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
    let initial = pseudo.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]]) as u32).sum();
    let mut csum = checksum(&p[20..], initial);
    if csum == 0 {
        csum = 0xffff;
    }
    p[26..28].copy_from_slice(&csum.to_be_bytes());
    p
}

pub fn flood(src: Ipv4Addr, dst: SocketAddr, flows: u16, payload: usize, duration: Duration) -> anyhow::Result<Value> {
    let SocketAddr::V4(dst) = dst else { bail!("IPv4 only") };
    if flows == 0 {
        bail!("--flows must be at least 1");
    }
    let packets: Vec<Vec<u8>> = (0..flows).map(|i| packet(src, dst, FIRST_SOURCE_PORT + i, payload)).collect();
    // IPPROTO_RAW implies IP_HDRINCL: the kernel routes the packet but sends our headers as they are.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::RAW, Some(socket2::Protocol::from(libc::IPPROTO_RAW)))
        .context("raw socket (needs root)")?;
    let to: socket2::SockAddr = SocketAddr::V4(dst).into();
    let mut next = 0usize;
    let mut sent = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        let mut iovs: Vec<libc::iovec> = Vec::with_capacity(BATCH);
        for _ in 0..BATCH {
            let p = &packets[next % packets.len()];
            next += 1;
            iovs.push(libc::iovec { iov_base: p.as_ptr() as *mut _, iov_len: p.len() });
        }
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| libc::mmsghdr {
                msg_hdr: libc::msghdr {
                    msg_name: to.as_ptr() as *mut _,
                    msg_namelen: to.len(),
                    msg_iov: iov,
                    msg_iovlen: 1,
                    msg_control: std::ptr::null_mut(),
                    msg_controllen: 0,
                    msg_flags: 0,
                },
                msg_len: 0,
            })
            .collect();
        // SAFETY: every pointer refers to live buffers of the stated lengths.
        let n = unsafe { libc::sendmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent += n as u64;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(json!({ "sent": sent, "seconds": elapsed, "flows": flows }))
}

pub fn sink(port: u16, duration: Duration) -> anyhow::Result<Value> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    socket.set_recv_buffer_size(8 << 20)?;
    socket.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut buffers = vec![[MaybeUninit::<u8>::uninit(); 256]; BATCH];
    let mut received = 0u64;
    let mut started: Option<Instant> = None;
    let wait_until = Instant::now() + duration + Duration::from_secs(5);
    loop {
        if let Some(t) = started {
            if t.elapsed() >= duration {
                break;
            }
        } else if Instant::now() > wait_until {
            break; // nothing ever arrived
        }
        let mut iovs: Vec<libc::iovec> =
            buffers.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr() as *mut _, iov_len: b.len() }).collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| libc::mmsghdr {
                msg_hdr: libc::msghdr {
                    msg_name: std::ptr::null_mut(),
                    msg_namelen: 0,
                    msg_iov: iov,
                    msg_iovlen: 1,
                    msg_control: std::ptr::null_mut(),
                    msg_controllen: 0,
                    msg_flags: 0,
                },
                msg_len: 0,
            })
            .collect();
        // SAFETY: buffers outlive the call.
        let n = unsafe { libc::recvmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0, std::ptr::null_mut()) };
        if n > 0 {
            started.get_or_insert_with(Instant::now);
            received += n as u64;
        }
    }
    let seconds = started.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
    Ok(json!({ "received": received, "seconds": seconds }))
}
