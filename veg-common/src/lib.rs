//! Types shared by the eBPF datapath and the user-space agent.
//!
//! Every map key and value is `#[repr(C)]` with explicit padding, so that both sides agree on the layout byte for
//! byte. Addresses are 16 bytes wide with a family tag, so IPv6 uses the same maps and types as IPv4.
#![no_std]

pub mod address;
pub mod config;
pub mod flow;
pub mod fragment;
pub mod policy;
pub mod record;
pub mod stats;

#[cfg(feature = "user")]
extern crate std;
