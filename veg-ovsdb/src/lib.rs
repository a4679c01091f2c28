//! An OVSDB client (RFC 7047), for any OVSDB database (OVN's Northbound and Southbound, Open vSwitch's own).
//!
//! - [`client::Client`]: JSON-RPC over a unix socket or TCP ([`endpoint::Endpoint`], written `unix:PATH` or
//!   `tcp:IP:PORT` as OVS tools take them), many requests in flight, echo answered both ways, a timeout per
//!   request, and `transact` checking the reply operation by operation (a failed operation is an error naming it).
//! - [`monitor::Monitor`]: a background task that monitors tables (`monitor_cond`), keeps an in-memory
//!   [`replica::Replica`] of them, reconnects with backoff and resynchronises, and tells subscribers when it
//!   changed. Read it with `read`, write through `client`.
//! - [`transaction`]: helpers to build operations.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use veg_ovsdb::{endpoint::Endpoint, monitor::Monitor, replica::column};
//! let endpoint: Endpoint = "unix:/run/ovn/ovnnb_db.sock".parse()?;
//! let monitor = Monitor::start(endpoint, "OVN_Northbound", &["Logical_Router"]);
//! monitor.wait_connected(std::time::Duration::from_secs(5)).await;
//! let routers: Vec<String> = monitor.read(|replica| {
//!     replica
//!         .rows("Logical_Router")
//!         .map(|(_, row)| column(row, "name").to_string())
//!         .collect()
//! });
//! # Ok(()) }
//! ```
//!
//! Nothing here knows OVN's schema: sets and maps are normalised from the schema the server sends.

pub mod client;
pub mod endpoint;
pub mod monitor;
pub mod replica;
pub mod transaction;
mod wire;
