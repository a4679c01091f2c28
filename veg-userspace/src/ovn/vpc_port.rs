//! The VPC's BFD port (reference-behaviour.md): router port bfd@<vpc> with the Vpc's BFD address, bound to an HA
//! chassis group bfd@<vpc> whose chassis get priorities 100, 99, 98, ... in the order given (the caller picks up
//! to three Ready nodes sorted by name, or the nodes matching the Vpc's nodeSelector). Rows are tagged
//! vpc-bfd-port=<vpc>.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::model::{DesiredRow, Link, Owner};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VpcBfdPort {
    /// The VPC (its logical router has the same name).
    pub vpc: String,
    /// spec.bfdPort.ip: one address per family.
    pub addresses: Vec<IpAddr>,
    /// The chassis that may host the port, most preferred first.
    pub chassis: Vec<String>,
}

impl VpcBfdPort {
    pub fn name(&self) -> String {
        format!("bfd@{}", self.vpc)
    }

    pub fn owner(&self) -> Owner {
        Owner {
            tag: "vpc-bfd-port",
            value: self.vpc.clone(),
            router: self.vpc.clone(),
        }
    }

    /// A stable, locally administered unicast MAC, so that applying twice changes nothing.
    fn mac(&self) -> String {
        let digest = Sha256::digest(self.name().as_bytes());
        std::iter::once(0x0a)
            .chain(digest.iter().take(5).copied())
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// The rows of the port, children first (so links can name rows inserted in the same transaction).
pub fn vpc_port_rows(port: &VpcBfdPort) -> Vec<DesiredRow> {
    let name = port.name();
    let external_ids = json!(["map", [["vendor", "kube-ovn"], ["vpc-bfd-port", port.vpc]]]);
    let row = DesiredRow::new;
    let mut rows: Vec<DesiredRow> = port
        .chassis
        .iter()
        .enumerate()
        .map(|(i, chassis)| {
            let priority = 100u32.saturating_sub(i as u32);
            row("HA_Chassis", chassis.clone(), json!({ "chassis_name": chassis, "priority": priority, "external_ids": external_ids }))
        })
        .collect();
    let mut group = row(
        "HA_Chassis_Group",
        name.clone(),
        json!({ "name": name, "external_ids": external_ids }),
    );
    group.links.push(Link {
        column: "ha_chassis",
        table: "HA_Chassis",
        keys: port.chassis.clone(),
    });
    rows.push(group);
    let networks: Vec<String> = port
        .addresses
        .iter()
        .map(|a| IpNet::from(*a).to_string())
        .collect();
    let mut lrp = row(
        "Logical_Router_Port",
        name.clone(),
        json!({ "name": name, "mac": port.mac(), "networks": ["set", networks], "external_ids": external_ids }),
    );
    lrp.router_column = Some("ports");
    lrp.links.push(Link {
        column: "ha_chassis_group",
        table: "HA_Chassis_Group",
        keys: vec![name],
    });
    rows.push(lrp);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chassis_get_falling_priorities_and_the_port_its_group() {
        let port = VpcBfdPort {
            vpc: "vpc1".into(),
            addresses: vec!["10.255.255.255".parse().unwrap()],
            chassis: vec!["node-a".into(), "node-b".into(), "node-c".into()],
        };
        let rows = vpc_port_rows(&port);
        let priorities: Vec<_> = rows
            .iter()
            .filter(|r| r.table == "HA_Chassis")
            .map(|r| r.columns["priority"].clone())
            .collect();
        assert_eq!(priorities, [json!(100), json!(99), json!(98)]);
        let lrp = rows.last().unwrap();
        assert_eq!(
            (lrp.table, lrp.key.as_str()),
            ("Logical_Router_Port", "bfd@vpc1")
        );
        assert_eq!(
            lrp.columns["networks"],
            json!(["set", ["10.255.255.255/32"]])
        );
        assert_eq!(
            lrp.columns["mac"],
            vpc_port_rows(&port).last().unwrap().columns["mac"],
            "a stable MAC"
        );
        assert!(lrp.columns["mac"].as_str().unwrap().starts_with("0a:"));
    }
}
