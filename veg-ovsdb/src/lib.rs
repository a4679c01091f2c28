//! An OVSDB client (RFC 7047) for the OVN Northbound database: JSON-RPC over unix sockets or TCP, many requests in
//! flight, echo answered both ways, per-request timeouts, and transactions checked operation by operation.

pub mod client;
pub mod endpoint;
pub mod monitor;
pub mod replica;
pub mod transaction;
mod wire;
