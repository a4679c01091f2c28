//! The little of rtnetlink the agent speaks itself (interface settings, queueing disciplines, what kind of link
//! an interface is): build a request of attributes, send it, and read the kernel's acknowledgement or answer.

use std::{io, mem::size_of, os::fd::AsRawFd};

pub const NLM_F_REQUEST: u16 = 1;
pub const NLM_F_ACK: u16 = 4;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLA_F_NESTED: u16 = 1 << 15;
const NLMSG_ERROR: u16 = 2;
const NLMSG_HEADER: usize = 16;

/// One netlink attribute: header and payload, padded to 4 bytes.
pub fn attribute(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = 4 + payload.len();
    let mut out = Vec::with_capacity(len.next_multiple_of(4));
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(len.next_multiple_of(4), 0);
    out
}

/// A whole request: the netlink header, the family's fixed header (`fixed`) and the attributes.
pub fn message(kind: u16, flags: u16, fixed: &[u8], attributes: &[u8]) -> Vec<u8> {
    let len = NLMSG_HEADER + fixed.len() + attributes.len();
    let mut message = Vec::with_capacity(len);
    message.extend_from_slice(&(len as u32).to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes()); // sequence: one request per socket
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    message.extend_from_slice(fixed);
    message.extend_from_slice(attributes);
    message
}

/// Send one request and wait for its acknowledgement; the kernel's refusal comes back as its errno.
pub fn request(message: &[u8]) -> io::Result<()> {
    let mut reply = [0u8; 4096];
    let received = exchange(message, &mut reply)?;
    acknowledgement(&reply[..received])
}

/// Send one request and read the kernel's first answer into `reply`; returns its length.
fn exchange(message: &[u8], reply: &mut [u8]) -> io::Result<usize> {
    let socket = crate::sys::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE)?;
    // SAFETY: the buffer is valid for its length; a zeroed sockaddr_nl addresses the kernel.
    let sent = unsafe {
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            socket.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            0,
            (&raw const kernel).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the buffer is valid for its length.
    let received = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            reply.len(),
            0,
        )
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(received as usize)
}

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
/// struct ifinfomsg: family, pad, type, index, flags, change.
const IFINFOMSG: usize = 16;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_LINK_NETNSID: u16 = 37;
/// An attribute type without its nested and byte-order flags.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// What the kernel says of one interface.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// Its kind (IFLA_INFO_KIND: "veth", "macvlan"; empty for a physical interface).
    pub kind: String,
    /// Whether the other end of its link is in another network namespace (IFLA_LINK_NETNSID is given).
    pub link_in_other_namespace: bool,
}

/// Ask the kernel about the interface with index `ifindex` (RTM_GETLINK).
pub fn link(ifindex: u32) -> io::Result<Link> {
    let mut fixed = [0u8; IFINFOMSG];
    fixed[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    let mut reply = vec![0u8; 32 * 1024];
    let received = exchange(&message(RTM_GETLINK, 0, &fixed, &[]), &mut reply)?;
    let reply = &reply[..received];
    if message_type(reply) == Some(NLMSG_ERROR) {
        acknowledgement(reply)?;
    }
    if reply.len() < NLMSG_HEADER + IFINFOMSG || message_type(reply) != Some(RTM_NEWLINK) {
        return Err(io::Error::other(format!(
            "unexpected netlink answer to a link query ({} bytes)",
            reply.len()
        )));
    }
    let len =
        (u32::from_ne_bytes(reply[..4].try_into().expect("4 bytes")) as usize).min(reply.len());
    let mut link = Link::default();
    for (kind, payload) in attributes(&reply[NLMSG_HEADER + IFINFOMSG..len]) {
        match kind {
            IFLA_LINK_NETNSID => link.link_in_other_namespace = true,
            IFLA_LINKINFO => {
                if let Some((_, name)) = attributes(payload).find(|(k, _)| *k == IFLA_INFO_KIND) {
                    link.kind = String::from_utf8_lossy(name)
                        .trim_end_matches('\0')
                        .to_owned();
                }
            }
            _ => {}
        }
    }
    Ok(link)
}

/// The attributes in `bytes`, as (type, payload); stops at the first one that does not fit.
fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if bytes.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > bytes.len() {
            return None;
        }
        let payload = &bytes[4..len];
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
        Some((kind, payload))
    })
}

/// The type of the netlink message at the start of `reply`, if a whole header is there.
fn message_type(reply: &[u8]) -> Option<u16> {
    (reply.len() >= NLMSG_HEADER).then(|| u16::from_ne_bytes([reply[4], reply[5]]))
}

/// The kernel's answer to a request with NLM_F_ACK: an NLMSG_ERROR whose error is 0 on success.
fn acknowledgement(reply: &[u8]) -> io::Result<()> {
    if reply.len() < NLMSG_HEADER + 4 || message_type(reply) != Some(NLMSG_ERROR) {
        return Err(io::Error::other(format!(
            "unexpected netlink answer ({} bytes)",
            reply.len()
        )));
    }
    let error = i32::from_ne_bytes(
        reply[NLMSG_HEADER..NLMSG_HEADER + 4]
            .try_into()
            .expect("4 bytes"),
    );
    match error {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(-e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_walked_to_the_first_that_does_not_fit() {
        let mut bytes = attribute(IFLA_LINK_NETNSID, &7u32.to_ne_bytes());
        bytes.extend(attribute(
            IFLA_LINKINFO | NLA_F_NESTED,
            &attribute(IFLA_INFO_KIND, b"veth\0"),
        ));
        bytes.extend([12, 0, 3, 0, 1]); // claims 12 bytes, holds 5
        let found: Vec<_> = attributes(&bytes).collect();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0], (IFLA_LINK_NETNSID, &7u32.to_ne_bytes()[..]));
        assert_eq!(found[1].0, IFLA_LINKINFO);
        assert_eq!(
            attributes(found[1].1).next(),
            Some((IFLA_INFO_KIND, &b"veth\0"[..]))
        );
    }

    #[test]
    fn loopback_is_no_link_to_another_namespace() {
        let link = link(1).expect("the kernel answers about loopback");
        assert_eq!(link, Link::default());
    }
}
