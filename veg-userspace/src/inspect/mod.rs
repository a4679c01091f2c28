//! `veg flows` and `veg stats`: read a gateway's pinned maps, whether or not its agent is running; `veg flows
//! --watch` follows its translation records while it runs.

pub mod flows;
pub mod fragments;
pub mod records;
pub mod stats;
