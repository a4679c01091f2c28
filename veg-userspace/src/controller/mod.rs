//! `veg controller`: turns each VpcEgressGateway into running instances, OVN state and a status.

pub mod validation;
pub mod workload;
