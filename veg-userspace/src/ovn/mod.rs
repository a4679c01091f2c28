//! What OVN must hold for a gateway (a pure model) and how to get it there (a diff against the replica, written
//! in one transaction).

pub mod apply;
pub mod identity;
pub mod metrics;
pub mod model;
pub mod vpc_port;
