//! The little of rtnetlink the agent speaks itself (interface settings, queueing disciplines): build a request
//! of attributes, send it, and read the kernel's acknowledgement.

use std::{io, mem::size_of};

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

/// A netlink route socket that closes itself.
struct Socket(libc::c_int);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

/// Send one request and wait for its acknowledgement; the kernel's refusal comes back as its errno.
pub fn request(message: &[u8]) -> io::Result<()> {
    // SAFETY: plain socket creation; the descriptor is owned by Socket.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let socket = Socket(fd);
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
        return Err(io::Error::last_os_error());
    }
    let mut reply = [0u8; 4096];
    // SAFETY: the buffer is valid for its length.
    let received = unsafe { libc::recv(socket.0, reply.as_mut_ptr().cast(), reply.len(), 0) };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    acknowledgement(&reply[..received as usize])
}

/// The kernel's answer to a request with NLM_F_ACK: an NLMSG_ERROR whose error is 0 on success.
fn acknowledgement(reply: &[u8]) -> io::Result<()> {
    if reply.len() < NLMSG_HEADER + 4 || u16::from_ne_bytes([reply[4], reply[5]]) != NLMSG_ERROR {
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
