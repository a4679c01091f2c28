//! `veg gateway`: the agent in every gateway instance.

pub mod agent;
pub mod bandwidth;
pub mod health;
pub mod host;
pub mod metrics;
pub mod netconf;
pub mod node_pins;
pub mod records;
pub mod resource;
pub mod rtnetlink;
pub mod settings;
pub mod uplink;
