//! The `veg` binary's library: the gateway agent, its datapath loader and the inspection commands.

pub mod controller;
pub mod crd;
pub mod datapath;
pub mod gateway;
pub mod http;
pub mod inspect;
pub mod metrics_text;
pub mod netns;
pub mod ovn;
pub mod sys;
