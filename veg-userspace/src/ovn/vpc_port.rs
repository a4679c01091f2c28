//! The VPC's BFD port (docs/ovn-model.md): router port bfd@<vpc> with the Vpc's BFD address, bound to an HA
//! chassis group bfd@<vpc> whose chassis get priorities 100, 99, 98, ... in the order given (the caller picks up
//! to three Ready nodes sorted by name, or the nodes matching the Vpc's nodeSelector). Rows are tagged
//! vpc-bfd-port=<vpc>.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::model::{DesiredRow, Link, Owner};
use veg_ovsdb::replica::{Replica, column};

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

/// Whether the VPC's router is bound to a chassis (options:chassis, a gateway router). Its ports live on that
/// chassis already, and OVN refuses an HA chassis group there ("distributed gateway port configured on L3 gateway
/// router"): such a port gets none.
pub fn on_gateway_router(replica: &Replica, vpc: &str) -> bool {
    replica.rows("Logical_Router").any(|(_, row)| {
        column(row, "name") == vpc
            && replica
                .normalized("Logical_Router", "options", column(row, "options"))
                .get(1)
                .and_then(|pairs| pairs.as_array())
                .is_some_and(|pairs| {
                    pairs
                        .iter()
                        .any(|p| p.get(0).and_then(|k| k.as_str()) == Some("chassis"))
                })
    })
}

/// The rows of the port, children first (so links can name rows inserted in the same transaction). Without
/// chassis (a gateway router), the port alone.
pub fn vpc_port_rows(port: &VpcBfdPort) -> Vec<DesiredRow> {
    let name = port.name();
    let external_ids = json!(["map", [["vendor", "kube-ovn"], ["vpc-bfd-port", port.vpc]]]);
    let row = DesiredRow::new;
    let grouped = !port.chassis.is_empty();
    let mut rows: Vec<DesiredRow> = port
        .chassis
        .iter()
        .enumerate()
        .map(|(i, chassis)| {
            let priority = 100u32.saturating_sub(i as u32);
            row("HA_Chassis", json!({ "chassis_name": chassis, "priority": priority, "external_ids": external_ids }))
        })
        .collect();
    let mut group = row(
        "HA_Chassis_Group",
        json!({ "name": name, "external_ids": external_ids }),
    );
    group.links.push(Link {
        column: "ha_chassis",
        table: "HA_Chassis",
        keys: port.chassis.clone(),
    });
    if grouped {
        rows.push(group);
    }
    let networks: Vec<String> = port
        .addresses
        .iter()
        .map(|a| IpNet::from(*a).to_string())
        .collect();
    let mut lrp = row(
        "Logical_Router_Port",
        json!({ "name": name, "mac": port.mac(), "networks": ["set", networks], "external_ids": external_ids }),
    );
    lrp.router_column = Some("ports");
    lrp.links.push(Link {
        column: "ha_chassis_group",
        table: "HA_Chassis_Group",
        keys: if grouped { vec![name] } else { Vec::new() },
    });
    rows.push(lrp);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_a_gateway_router_the_port_has_no_chassis_group() {
        let port = VpcBfdPort {
            vpc: "vpc1".into(),
            addresses: vec!["10.255.255.255".parse().unwrap()],
            chassis: vec![],
        };
        let rows = vpc_port_rows(&port);
        assert_eq!(
            rows.iter().map(|r| r.table).collect::<Vec<_>>(),
            ["Logical_Router_Port"]
        );
        assert_eq!(
            rows[0].links[0].keys,
            Vec::<String>::new(),
            "any group it had is cleared"
        );
    }

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
