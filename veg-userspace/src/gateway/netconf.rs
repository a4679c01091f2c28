//! IPv4 forwarding of one interface, set over rtnetlink (RTM_SETLINK with IFLA_AF_SPEC / AF_INET /
//! IFLA_INET_CONF) rather than written to /proc/sys: container runtimes mount /proc/sys read-only in a pod, while
//! CAP_NET_ADMIN still lets the pod set its own interfaces' configuration over netlink. The datapath's route
//! lookups (bpf_fib_lookup) and the kernel's forwarding both look at the receiving interface's setting.

use std::{io, mem::size_of};

use anyhow::{Context as _, bail};

const RTM_SETLINK: u16 = 19;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLA_F_NESTED: u16 = 1 << 15;
const IFLA_AF_SPEC: u16 = 26;
const IFLA_INET_CONF: u16 = 1;
/// enum ipv4_devconf in linux/ip.h starts at 1 with FORWARDING.
const IPV4_DEVCONF_FORWARDING: u16 = 1;
const NLMSG_HEADER: usize = 16;
const IFINFOMSG: usize = 16;

/// One netlink attribute: header and payload, padded to 4 bytes.
fn attribute(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = 4 + payload.len();
    let mut out = Vec::with_capacity(len.next_multiple_of(4));
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(len.next_multiple_of(4), 0);
    out
}

/// The RTM_SETLINK request that sets the interface's IPv4 forwarding.
fn request(ifindex: u32, on: bool, sequence: u32) -> Vec<u8> {
    let conf = attribute(IPV4_DEVCONF_FORWARDING, &u32::from(on).to_ne_bytes());
    let inet = attribute(IFLA_INET_CONF | NLA_F_NESTED, &conf);
    let family = attribute(libc::AF_INET as u16 | NLA_F_NESTED, &inet);
    let spec = attribute(IFLA_AF_SPEC | NLA_F_NESTED, &family);
    let len = NLMSG_HEADER + IFINFOMSG + spec.len();
    let mut message = Vec::with_capacity(len);
    message.extend_from_slice(&(len as u32).to_ne_bytes());
    message.extend_from_slice(&RTM_SETLINK.to_ne_bytes());
    message.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    message.extend_from_slice(&sequence.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    // struct ifinfomsg: family AF_UNSPEC, padding, type, index, flags, change.
    message.extend_from_slice(&[0, 0, 0, 0]);
    message.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend_from_slice(&spec);
    message
}

/// A netlink route socket that closes itself.
struct Socket(libc::c_int);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

/// Turn IPv4 forwarding of the interface with index `ifindex` on or off.
pub fn set_forwarding(ifindex: u32, on: bool) -> anyhow::Result<()> {
    // SAFETY: plain socket creation; the descriptor is owned by Socket.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("opening a netlink route socket");
    }
    let socket = Socket(fd);
    let message = request(ifindex, on, 1);
    // SAFETY: the buffer is valid for its length; a zeroed sockaddr_nl addresses the kernel.
    let sent = unsafe {
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            socket.0,
            message.as_ptr().cast(),
            message.len(),
            0,
            (&raw const kernel).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error()).context("sending RTM_SETLINK");
    }
    let mut reply = [0u8; 4096];
    // SAFETY: the buffer is valid for its length.
    let received = unsafe { libc::recv(socket.0, reply.as_mut_ptr().cast(), reply.len(), 0) };
    if received < 0 {
        return Err(io::Error::last_os_error())
            .context("reading the kernel's answer to RTM_SETLINK");
    }
    let reply = &reply[..received as usize];
    if reply.len() < NLMSG_HEADER + 4 || u16::from_ne_bytes([reply[4], reply[5]]) != NLMSG_ERROR {
        bail!("unexpected answer to RTM_SETLINK ({} bytes)", reply.len());
    }
    let error = i32::from_ne_bytes(
        reply[NLMSG_HEADER..NLMSG_HEADER + 4]
            .try_into()
            .expect("4 bytes"),
    );
    if error != 0 {
        return Err(io::Error::from_raw_os_error(-error)).with_context(|| {
            format!("setting IPv4 forwarding of interface {ifindex} (needs CAP_NET_ADMIN)")
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_nests_the_setting_as_the_kernel_parses_it() {
        let message = request(7, true, 1);
        assert_eq!(message.len(), 16 + 16 + 20);
        assert_eq!(u32::from_ne_bytes(message[0..4].try_into().unwrap()), 52);
        assert_eq!(
            i32::from_ne_bytes(message[20..24].try_into().unwrap()),
            7,
            "ifi_index"
        );
        // IFLA_AF_SPEC { AF_INET { IFLA_INET_CONF { FORWARDING = 1 } } }
        let nested = |at: usize| {
            (
                u16::from_ne_bytes([message[at], message[at + 1]]),
                u16::from_ne_bytes([message[at + 2], message[at + 3]]),
            )
        };
        assert_eq!(nested(32), (20, IFLA_AF_SPEC | NLA_F_NESTED));
        assert_eq!(nested(36), (16, 2 | NLA_F_NESTED));
        assert_eq!(nested(40), (12, IFLA_INET_CONF | NLA_F_NESTED));
        assert_eq!(nested(44), (8, IPV4_DEVCONF_FORWARDING));
        assert_eq!(u32::from_ne_bytes(message[48..52].try_into().unwrap()), 1);
    }
}
