//! Sending whole IPv4 or IPv6 packets, headers included, through the kernel's routing: a raw socket of the
//! family with IPPROTO_RAW, which implies the header is the caller's (IP_HDRINCL; for IPv6 since Linux 4.5). The kernel routes each by its destination, resolves the next hop and keeps every header field
//! but the checksum and total length it fills in (and an identification of 0, which it replaces: the callers
//! refuse those). Such a socket may send any source address, which is what lets translated packets leave with
//! the external address and replies reach pods with the remote's.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, OwnedFd},
};

pub struct RawSocket {
    fd: OwnedFd,
}

impl RawSocket {
    /// An IPv4 socket.
    pub fn open() -> io::Result<RawSocket> {
        RawSocket::open_family(libc::AF_INET)
    }

    /// An IPv6 socket.
    pub fn open_v6() -> io::Result<RawSocket> {
        RawSocket::open_family(libc::AF_INET6)
    }

    fn open_family(family: libc::c_int) -> io::Result<RawSocket> {
        let fd = crate::sys::socket(
            family,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK,
            libc::IPPROTO_RAW,
        )?;
        Ok(RawSocket { fd })
    }

    /// Send one packet to `to` (its destination address), on a socket of `to`'s family.
    pub fn send(&self, packet: &[u8], to: IpAddr) -> io::Result<()> {
        match to {
            IpAddr::V4(to) => self.send_to(packet, &sockaddr_v4(to)),
            IpAddr::V6(to) => self.send_to(packet, &sockaddr_v6(to)),
        }
    }

    fn send_to<A>(&self, packet: &[u8], addr: &A) -> io::Result<()> {
        send_to(&self.fd, packet, addr)
    }
}

/// sendto(2) of `packet` to `addr`, a sockaddr of the socket's family (sockaddr_in, sockaddr_in6, sockaddr_ll).
pub fn send_to<A>(fd: &OwnedFd, packet: &[u8], addr: &A) -> io::Result<()> {
    // SAFETY: the buffer and address are valid for the call; A is a sockaddr of the socket's family.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (addr as *const A).cast(),
            std::mem::size_of::<A>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sockaddr_v4(to: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(to.octets()),
        },
        sin_zero: [0; 8],
    }
}

fn sockaddr_v6(to: Ipv6Addr) -> libc::sockaddr_in6 {
    libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: 0,
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr {
            s6_addr: to.octets(),
        },
        sin6_scope_id: 0,
    }
}
