//! Translation records: the datapath tells the agent through a ring buffer (FLOW_RECORDS) when a translation is
//! created, and when it removes one itself (given up for a new flow, or replaced because it expired or closed).
//! Translations that simply expire are removed by the agent's sweep, which writes their ended records itself.
//! Never one event per packet: two per translation at most.

use crate::{address::Address, flow::FlowKey};

/// What a record says happened.
pub mod event {
    pub const CREATED: u8 = 1;
    pub const ENDED: u8 = 2;
}

/// Why a translation ended.
pub mod end_reason {
    /// Idle for longer than its protocol's timeout.
    pub const TIMEOUT: u8 = 1;
    /// A TCP connection that was reset or closed both ways.
    pub const CLOSED: u8 = 2;
    /// Given up to make room for a new flow in a full table (it never saw a reply).
    pub const EVICTED: u8 = 3;
    /// Mapped to an external address the gateway no longer has (its address changed), replaced at the next packet.
    pub const READDRESSED: u8 = 4;
}

/// One record from the datapath, as it sits in the ring.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowRecord {
    pub event: u8,
    /// end_reason::*, for an ENDED record.
    pub reason: u8,
    pub _pad: [u8; 6],
    /// CLOCK_MONOTONIC ns of the event.
    pub time_ns: u64,
    /// When the translation was created (CLOCK_MONOTONIC ns).
    pub created_ns: u64,
    /// The flow as the client sent it: original source, remote.
    pub key: FlowKey,
    /// The translated source.
    pub nat_addr: Address,
    /// Network byte order.
    pub nat_port: u16,
    pub _pad2: [u8; 6],
    /// Counted while records are on (GatewayConfig::flow_records); ENDED records only.
    pub packets_out: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
}

// The agent decodes records as the programs wrote them: the layout is fixed.
const _: () = assert!(core::mem::size_of::<FlowRecord>() == 120);
const _: () = assert!(core::mem::offset_of!(FlowRecord, nat_addr) == 64);

#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowRecord {}
