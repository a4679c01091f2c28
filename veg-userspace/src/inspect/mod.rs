//! `veg flows` and `veg stats`: read a gateway's pinned maps, whether or not its agent is running.

pub mod flows;
pub mod fragments;
pub mod stats;
