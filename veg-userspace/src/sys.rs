//! System calls that more than one layer of the agent makes (the datapath's and the gateway's), wrapped so that
//! every descriptor is owned from the moment it exists: closed when dropped, and on exec.

use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd},
};

/// A socket of the calling thread's network namespace. `kind` may carry SOCK_NONBLOCK; SOCK_CLOEXEC is always
/// added.
pub fn socket(domain: i32, kind: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned by socket(2), which nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
