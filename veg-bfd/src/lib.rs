//! BFD (RFC 5880, asynchronous mode, single hop per RFC 5881), in three layers:
//!
//! - [`packet`]: the control packet codec, with the RFC's reception checks (a packet to discard says why);
//! - [`session`]: one session's state machine, free of I/O: it is fed packets and the current time and says what
//!   to send and when, so every rule of the RFC (timers, Poll/Final, detection, Down/Init/Up) is unit-tested
//!   deterministically;
//! - [`engine`]: sessions toward a set of peers over UDP 3784 with tokio: one socket, a source port per session,
//!   a TTL floor (RFC 5082, 255 by RFC 5881; 254 across an OVN router), passive or active, an allow list, and a
//!   snapshot of every session's state; [`control`] serves that snapshot and timer changes over a unix socket.
//!
//! Nothing here knows veg: `veg bfd` and the gateway agent both run the engine.

pub mod control;
pub mod engine;
pub mod packet;
pub mod session;
