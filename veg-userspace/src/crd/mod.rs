//! The Kubernetes resources: VpcEgressGateway (ours, with its CRD), and the parts of Kube-OVN's Vpc and Subnet
//! that the gateway reads.

pub mod gateway;
pub mod network;
pub mod table;
