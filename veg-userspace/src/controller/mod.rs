//! `veg controller`: turns each VpcEgressGateway into running instances, OVN state and a status.

pub mod access;
pub mod from_file;
pub mod instances;
pub mod leader;
pub mod metrics;
pub mod ovn_command;
pub mod ovn_input;
pub mod readiness_gate;
pub mod reconcile;
pub mod run;
pub mod scheduling;
pub mod selection;
pub mod status;
pub mod traffic_policy;
pub mod validation;
pub mod workload;
