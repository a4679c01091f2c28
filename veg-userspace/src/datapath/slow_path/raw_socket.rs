//! Sending whole IPv4 packets, headers included, through the kernel's routing: a raw socket with IP_HDRINCL
//! (IPPROTO_RAW). The kernel routes each by its destination, resolves the next hop and keeps every header field
//! but the checksum and total length it fills in (and an identification of 0, which it replaces: the callers
//! refuse those). Such a socket may send any source address, which is what lets translated packets leave with
//! the external address and replies reach pods with the remote's.

use std::{
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

pub struct RawSocket {
    fd: OwnedFd,
}

impl RawSocket {
    pub fn open() -> io::Result<RawSocket> {
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::IPPROTO_RAW,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor nothing else owns.
        Ok(RawSocket {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Send one packet to `to` (its destination address).
    pub fn send(&self, packet: &[u8], to: Ipv4Addr) -> io::Result<()> {
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(to.octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: the buffer and address are valid for the call.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
