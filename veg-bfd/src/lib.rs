//! BFD (RFC 5880, single hop per RFC 5881): the control packet codec and the session state machine.
//!
//! Both are free of I/O: the session is fed packets and the current time and says what to send and when, so every
//! rule of the RFC is tested deterministically. The network side (UDP 3784, TTL checks, peers) drives them.

pub mod control;
pub mod engine;
pub mod packet;
pub mod session;
