//! The Northbound rows one gateway needs, as a pure function of its description (docs/ovn-model.md):
//! - address sets VEG.<h>.ipv4 / VEG.<h>.ipv6 with the policy sources, port group VEG.<h> with the selected pods'
//!   logical switch ports;
//! - with BFD, one BFD row per instance address toward the VPC's BFD port;
//! - custom VPC: a static route per (source prefix, instance) with policy src-ip, ECMP with symmetric replies, and
//!   the instance's BFD row when BFD is on;
//! - default VPC: one reroute policy per family at priority 29100 over every instance minus those whose BFD
//!   session is down, or a drop policy at 29090 when BFD is on and every session is down (as the reference).
//!   OVN 23.03's policies cannot reference BFD, and northd leaves an unreferenced BFD row admin_down: so each
//!   instance gets an anchor route <ip>/32 via itself that references its BFD row. It routes as the connected
//!   route already does, and makes northd run the session and report its status, which the watcher
//!   (apply::keep_applied) turns into nexthops.
//!
//! Every row carries external_ids vendor=kube-ovn, vpc-egress-gateway=<namespace>/<name> (and af=4|6).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::identity::{as_row, bfd_key_of, row_key};

pub const POLICY_PRIORITY: u32 = 29100;
/// When BFD is on and every instance is down: drop rather than leave through the nodes unseen.
pub const DROP_PRIORITY: u32 = 29090;
/// trafficPolicy Local: a node's pods go to the instance on their node (needs bfd_sessions, OVN >= 23.09).
pub const LOCAL_PRIORITY: u32 = 29150;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// The instance's internal addresses (one per family).
    pub addresses: Vec<IpAddr>,
    pub node: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bfd {
    /// The VPC's BFD router port, e.g. bfd@vpc1.
    pub port: String,
    pub min_rx: u32,
    pub min_tx: u32,
    pub multiplier: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewaySpec {
    pub namespace: String,
    pub name: String,
    /// The VPC's logical router.
    pub router: String,
    /// The default VPC uses reroute policies; custom VPCs use static routes.
    pub default_vpc: bool,
    /// Policy sources: ipBlocks and the CIDRs of the named subnets.
    pub sources: Vec<IpNet>,
    /// Logical switch ports (<pod>.<namespace>) of selector-matched pods.
    pub selected_ports: Vec<String>,
    pub instances: Vec<Instance>,
    pub bfd: Option<Bfd>,
    /// Instances whose BFD session is down, left out of policy nexthops (OVN 23.03: policies cannot watch BFD).
    pub down: BTreeSet<IpAddr>,
    /// The server's policies have bfd_sessions (OVN >= 23.09): OVN itself skips nexthops whose session is down,
    /// so policies list every instance and reference their BFD rows, and no anchor routes are needed.
    pub bfd_sessions: bool,
    /// trafficPolicy Local: each node's port group (its pods) by node name, for the 29150 policies that keep a
    /// node's traffic on the instance of that node. Empty for Cluster.
    pub local_port_groups: BTreeMap<String, String>,
}

/// One row the gateway needs.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredRow {
    pub table: &'static str,
    /// Identifies the row among the gateway's rows of its table.
    pub key: String,
    /// Columns in OVSDB notation, external_ids included.
    pub columns: Map<String, Value>,
    /// The Logical_Router column that must reference it (routes, policies and ports are not root rows).
    pub router_column: Option<&'static str>,
    /// Columns that refer to other rows of the model (a route's BFD row, a port's HA chassis group, a group's
    /// chassis), resolved when applied.
    pub links: Vec<Link>,
    /// A port group's ports, by logical switch port name (resolved to rows when applied).
    pub ports: Vec<String>,
}

/// A column holding references to rows of the model, by table and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub column: &'static str,
    pub table: &'static str,
    pub keys: Vec<String>,
}

/// Who owns a set of rows: the external id that tags them, and the router they hang from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub tag: &'static str,
    pub value: String,
    pub router: String,
}

impl GatewaySpec {
    /// The gateway with nothing in it, on `router`: what to converge to when it is deleted.
    pub fn empty(namespace: &str, name: &str, router: &str) -> GatewaySpec {
        GatewaySpec {
            namespace: namespace.into(),
            name: name.into(),
            router: router.into(),
            default_vpc: router == crate::crd::network::DEFAULT_VPC,
            sources: Vec::new(),
            selected_ports: Vec::new(),
            instances: Vec::new(),
            bfd: None,
            down: BTreeSet::new(),
            bfd_sessions: false,
            local_port_groups: BTreeMap::new(),
        }
    }

    pub fn owner(&self) -> Owner {
        Owner {
            tag: "vpc-egress-gateway",
            value: self.id(),
            router: self.router.clone(),
        }
    }

    /// "<namespace>/<name>", the value of the vpc-egress-gateway external id.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The first 12 hex digits of sha256("<namespace>/<name>").
    pub fn hash(&self) -> String {
        let digest = Sha256::digest(self.id().as_bytes());
        digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
    }

    fn external_ids(&self, af: Option<u8>) -> Value {
        let mut pairs = vec![
            json!(["vendor", "kube-ovn"]),
            json!(["vpc-egress-gateway", self.id()]),
        ];
        if let Some(af) = af {
            pairs.insert(0, json!(["af", af.to_string()]));
        }
        json!(["map", pairs])
    }
}

fn family(address: &IpAddr) -> u8 {
    if address.is_ipv4() { 4 } else { 6 }
}

fn set(values: impl IntoIterator<Item = String>) -> Value {
    let mut values: Vec<String> = values.into_iter().collect();
    values.sort();
    values.dedup();
    json!(["set", values])
}

impl DesiredRow {
    /// A row of `table` with `columns` (a JSON object) and no references yet, keyed as identity.rs says.
    pub fn new(table: &'static str, columns: Value) -> DesiredRow {
        let columns = as_row(&columns);
        DesiredRow {
            table,
            key: row_key(table, &columns),
            columns,
            router_column: None,
            links: Vec::new(),
            ports: Vec::new(),
        }
    }
}

/// Every row the gateway needs, in a stable order. (Long because it lists the tables in the order the rows must
/// be inserted, children before the rows that link to them; the per-design parts are functions of their own.)
pub fn desired_rows(spec: &GatewaySpec) -> Vec<DesiredRow> {
    let h = spec.hash();
    let mut rows = Vec::new();
    for (af, suffix) in [(4u8, "ipv4"), (6, "ipv6")] {
        let name = format!("VEG.{h}.{suffix}");
        let addresses = spec
            .sources
            .iter()
            .filter(|s| family(&s.addr()) == af)
            .map(|s| s.to_string());
        rows.push(DesiredRow::new(
"Address_Set",
            json!({ "name": name, "addresses": set(addresses), "external_ids": spec.external_ids(Some(af)) }),
        ));
    }
    let group = format!("VEG.{h}");
    let mut port_group = DesiredRow::new(
        "Port_Group",
        json!({ "name": group, "external_ids": spec.external_ids(None) }),
    );
    port_group.ports = spec.selected_ports.clone();
    rows.push(port_group);

    let addresses: Vec<IpAddr> = spec
        .instances
        .iter()
        .flat_map(|i| i.addresses.iter().copied())
        .collect();
    if let Some(bfd) = &spec.bfd {
        for address in &addresses {
            rows.push(DesiredRow::new(
"BFD",
                json!({
                    "logical_port": bfd.port, "dst_ip": address.to_string(), "min_rx": bfd.min_rx,
                    "min_tx": bfd.min_tx, "detect_mult": bfd.multiplier, "external_ids": spec.external_ids(Some(family(address))),
                }),
            ));
        }
    }
    for af in [4u8, 6] {
        let sources: Vec<&IpNet> = spec
            .sources
            .iter()
            .filter(|s| family(&s.addr()) == af)
            .collect();
        let nexthops: Vec<&IpAddr> = addresses.iter().filter(|a| family(a) == af).collect();
        if spec.default_vpc && spec.bfd_sessions {
            rows.extend(policies_with_bfd_sessions(
                spec, af, &sources, &nexthops, &group,
            ));
        } else if spec.default_vpc {
            rows.extend(policy(spec, af, &sources, &nexthops, &group));
            if let Some(bfd) = &spec.bfd {
                rows.extend(
                    nexthops
                        .iter()
                        .map(|nexthop| anchor_route(spec, af, nexthop, bfd)),
                );
            }
        } else {
            for source in &sources {
                for nexthop in &nexthops {
                    let mut route = DesiredRow::new(
                        "Logical_Router_Static_Route",
                        json!({
                            "ip_prefix": source.to_string(), "nexthop": nexthop.to_string(), "policy": "src-ip",
                            "options": ["map", [["ecmp_symmetric_reply", "true"]]],
                            "external_ids": spec.external_ids(Some(af)),
                        }),
                    );
                    route.router_column = Some("static_routes");
                    route.links.push(bfd_link(
                        spec.bfd.as_ref().map(|b| bfd_key_of(&b.port, nexthop)),
                    ));
                    rows.push(route);
                }
            }
        }
    }
    rows
}

/// A host route to the instance via itself, referencing its BFD row, so that northd runs the session.
fn anchor_route(spec: &GatewaySpec, af: u8, nexthop: &IpAddr, bfd: &Bfd) -> DesiredRow {
    let prefix = IpNet::from(*nexthop).to_string();
    let mut route = DesiredRow::new(
        "Logical_Router_Static_Route",
        json!({ "ip_prefix": prefix, "nexthop": nexthop.to_string(), "external_ids": spec.external_ids(Some(af)) }),
    );
    route.router_column = Some("static_routes");
    route
        .links
        .push(bfd_link(Some(bfd_key_of(&bfd.port, nexthop))));
    route
}

/// A route's BFD reference (always present, so that turning BFD off clears it).
fn bfd_link(key: Option<String>) -> Link {
    Link {
        column: "bfd",
        table: "BFD",
        keys: key.into_iter().collect(),
    }
}

/// The match of a family's policies: the sources, and the selected pods (OVN keeps an address set of every port
/// group's addresses: <group>_ip4 / <group>_ip6). None when there is nothing to match.
fn source_match(spec: &GatewaySpec, af: u8, sources: &[&IpNet], group: &str) -> Option<String> {
    let ip = if af == 4 { "ip4" } else { "ip6" };
    let mut terms = Vec::new();
    match sources {
        [] => {}
        [one] => terms.push(format!("{ip}.src == {one}")),
        many => terms.push(format!(
            "{ip}.src == {{{}}}",
            many.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
    if !spec.selected_ports.is_empty() {
        terms.push(format!("{ip}.src == ${group}_{ip}"));
    }
    (!terms.is_empty()).then(|| terms.join(" || "))
}

/// A policy row of the gateway at `priority` for family `af`, and for the node `scope` unless it is empty.
fn policy_row(
    spec: &GatewaySpec,
    af: u8,
    priority: u32,
    scope: &str,
    columns: Value,
) -> DesiredRow {
    let mut columns = columns;
    columns["priority"] = json!(priority);
    let mut external_ids = spec.external_ids(Some(af));
    if !scope.is_empty() {
        // The node a Local policy is for, so that the row can be told from its siblings.
        if let Some(pairs) = external_ids[1].as_array_mut() {
            pairs.push(json!(["node", scope]));
        }
    }
    columns["external_ids"] = external_ids;
    let mut row = DesiredRow::new("Logical_Router_Policy", columns);
    row.router_column = Some("policies");
    row
}

/// OVN >= 23.09, as the reference programs it: the 29100 reroute over every instance with their BFD sessions
/// (OVN skips those down), with BFD the 29090 drop under it for when every session is down, and for trafficPolicy
/// Local a 29150 reroute per node sending that node's pods to the instance on it.
fn policies_with_bfd_sessions(
    spec: &GatewaySpec,
    af: u8,
    sources: &[&IpNet],
    nexthops: &[&IpAddr],
    group: &str,
) -> Vec<DesiredRow> {
    let Some(matched) = source_match(spec, af, sources, group) else {
        return Vec::new();
    };
    if nexthops.is_empty() {
        return Vec::new();
    }
    let sessions = |addresses: &[&IpAddr]| Link {
        column: "bfd_sessions",
        table: "BFD",
        keys: match &spec.bfd {
            Some(bfd) => addresses.iter().map(|a| bfd_key_of(&bfd.port, a)).collect(),
            None => Vec::new(),
        },
    };
    let mut rows = Vec::new();
    let mut reroute = policy_row(
        spec,
        af,
        POLICY_PRIORITY,
        "",
        json!({ "match": matched, "action": "reroute", "nexthops": set(nexthops.iter().map(|a| a.to_string())) }),
    );
    reroute.links.push(sessions(nexthops));
    rows.push(reroute);
    if spec.bfd.is_some() {
        rows.push(policy_row(
            spec,
            af,
            DROP_PRIORITY,
            "",
            json!({ "match": matched, "action": "drop", "nexthops": set([]) }),
        ));
    }
    let ip = if af == 4 { "ip4" } else { "ip6" };
    for instance in &spec.instances {
        let Some(local) = spec.local_port_groups.get(&instance.node) else {
            continue;
        };
        for address in instance.addresses.iter().filter(|a| family(a) == af) {
            let local_match = format!("{ip}.src == ${local}_{ip} && ({matched})");
            let mut row = policy_row(
                spec,
                af,
                LOCAL_PRIORITY,
                &instance.node,
                json!({ "match": local_match, "action": "reroute", "nexthops": set([address.to_string()]) }),
            );
            row.links.push(sessions(&[address]));
            rows.push(row);
        }
    }
    rows
}

/// The default VPC's reroute policy for one family, if it has sources and a live instance.
fn policy(
    spec: &GatewaySpec,
    af: u8,
    sources: &[&IpNet],
    nexthops: &[&IpAddr],
    group: &str,
) -> Option<DesiredRow> {
    let live: Vec<String> = nexthops
        .iter()
        .filter(|a| !spec.down.contains(a))
        .map(|a| a.to_string())
        .collect();
    let matched = source_match(spec, af, sources, group)?;
    if nexthops.is_empty() {
        return None;
    }
    let all_down = live.is_empty();
    if all_down && spec.bfd.is_none() {
        return None;
    }
    let (priority, action) = if all_down {
        (DROP_PRIORITY, "drop")
    } else {
        (POLICY_PRIORITY, "reroute")
    };
    Some(policy_row(
        spec,
        af,
        priority,
        "",
        json!({ "match": matched, "action": action, "nexthops": set(live) }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway1(instances: &[&str]) -> GatewaySpec {
        GatewaySpec {
            namespace: "default".into(),
            name: "gateway1".into(),
            router: "ovn-cluster".into(),
            default_vpc: true,
            sources: vec!["10.16.0.0/16".parse().unwrap()],
            selected_ports: vec![],
            instances: instances
                .iter()
                .map(|a| Instance {
                    addresses: vec![a.parse().unwrap()],
                    node: "n".into(),
                })
                .collect(),
            bfd: None,
            down: BTreeSet::new(),
            bfd_sessions: false,
            local_port_groups: BTreeMap::new(),
        }
    }

    #[test]
    fn the_hash_and_names_follow_the_reference() {
        let spec = gateway1(&["10.16.0.12"]);
        let expected: String = Sha256::digest(b"default/gateway1")
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(spec.hash(), expected);
        assert_eq!(spec.hash().len(), 12);
        let rows = desired_rows(&spec);
        assert!(
            rows.iter()
                .any(|r| r.table == "Address_Set" && r.key == format!("VEG.{expected}.ipv4"))
        );
        assert!(
            rows.iter()
                .any(|r| r.table == "Port_Group" && r.key == format!("VEG.{expected}"))
        );
    }

    #[test]
    fn default_vpc_reroutes_over_every_live_instance() {
        let mut spec = gateway1(&["10.16.0.12", "10.16.0.13"]);
        let policy = desired_rows(&spec)
            .into_iter()
            .find(|r| r.table == "Logical_Router_Policy")
            .unwrap();
        assert_eq!(policy.columns["match"], "ip4.src == 10.16.0.0/16");
        assert_eq!(
            policy.columns["nexthops"],
            json!(["set", ["10.16.0.12", "10.16.0.13"]])
        );
        spec.down.insert("10.16.0.12".parse().unwrap());
        let policy = desired_rows(&spec)
            .into_iter()
            .find(|r| r.table == "Logical_Router_Policy")
            .unwrap();
        assert_eq!(policy.columns["nexthops"], json!(["set", ["10.16.0.13"]]));
        spec.down.insert("10.16.0.13".parse().unwrap());
        assert!(
            desired_rows(&spec)
                .iter()
                .all(|r| r.table != "Logical_Router_Policy"),
            "no live nexthop, no policy"
        );
        // With BFD, every instance down means drop (29090), and each instance has its BFD anchor route.
        spec.bfd = Some(Bfd {
            port: "bfd@ovn-cluster".into(),
            min_rx: 1000,
            min_tx: 1000,
            multiplier: 3,
        });
        let rows = desired_rows(&spec);
        let policy = rows
            .iter()
            .find(|r| r.table == "Logical_Router_Policy")
            .unwrap();
        assert_eq!(
            (&policy.columns["priority"], &policy.columns["action"]),
            (&json!(DROP_PRIORITY), &json!("drop"))
        );
        let anchors: Vec<_> = rows
            .iter()
            .filter(|r| r.table == "Logical_Router_Static_Route")
            .collect();
        assert_eq!(anchors.len(), 2);
        assert_eq!(anchors[0].columns["ip_prefix"], "10.16.0.12/32");
        assert_eq!(anchors[0].links[0].keys, ["bfd@ovn-cluster|10.16.0.12"]);
    }

    #[test]
    fn with_bfd_sessions_ovn_follows_bfd_itself_as_the_reference_programs_it() {
        let mut spec = gateway1(&["10.16.0.12", "10.16.0.13"]);
        spec.instances[1].node = "node-b".into();
        spec.bfd_sessions = true;
        spec.bfd = Some(Bfd {
            port: "bfd@ovn-cluster".into(),
            min_rx: 100,
            min_tx: 100,
            multiplier: 3,
        });
        // A down instance stays listed: OVN skips it through its BFD session.
        spec.down.insert("10.16.0.12".parse().unwrap());
        spec.local_port_groups = BTreeMap::from([("node-b".to_owned(), "node.b".to_owned())]);
        let rows = desired_rows(&spec);
        let policies: Vec<_> = rows
            .iter()
            .filter(|r| r.table == "Logical_Router_Policy")
            .collect();
        let summary: Vec<(String, Value, Value, Value, Vec<String>)> = policies
            .iter()
            .map(|r| {
                let sessions = r
                    .links
                    .iter()
                    .find(|l| l.column == "bfd_sessions")
                    .map(|l| l.keys.clone())
                    .unwrap_or_default();
                (
                    r.key.clone(),
                    r.columns["match"].clone(),
                    r.columns["action"].clone(),
                    r.columns["nexthops"].clone(),
                    sessions,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "29100|4".to_owned(),
                    json!("ip4.src == 10.16.0.0/16"),
                    json!("reroute"),
                    json!(["set", ["10.16.0.12", "10.16.0.13"]]),
                    vec![
                        "bfd@ovn-cluster|10.16.0.12".to_owned(),
                        "bfd@ovn-cluster|10.16.0.13".to_owned()
                    ],
                ),
                (
                    "29090|4".to_owned(),
                    json!("ip4.src == 10.16.0.0/16"),
                    json!("drop"),
                    json!(["set", []]),
                    vec![]
                ),
                (
                    "29150|4|node-b".to_owned(),
                    json!("ip4.src == $node.b_ip4 && (ip4.src == 10.16.0.0/16)"),
                    json!("reroute"),
                    json!(["set", ["10.16.0.13"]]),
                    vec!["bfd@ovn-cluster|10.16.0.13".to_owned()],
                ),
            ]
        );
        assert!(
            rows.iter()
                .all(|r| r.table != "Logical_Router_Static_Route"),
            "no anchor routes are needed"
        );
        assert_eq!(rows.iter().filter(|r| r.table == "BFD").count(), 2);
    }

    #[test]
    fn custom_vpc_routes_per_source_and_instance_with_bfd() {
        let mut spec = gateway1(&["192.168.0.2", "192.168.0.3"]);
        spec.default_vpc = false;
        spec.router = "vpc1".into();
        spec.sources = vec!["192.168.0.0/24".parse().unwrap()];
        spec.bfd = Some(Bfd {
            port: "bfd@vpc1".into(),
            min_rx: 1000,
            min_tx: 1000,
            multiplier: 3,
        });
        let rows = desired_rows(&spec);
        let routes: Vec<_> = rows
            .iter()
            .filter(|r| r.table == "Logical_Router_Static_Route")
            .collect();
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].columns["policy"], "src-ip");
        assert_eq!(routes[0].links[0].keys, ["bfd@vpc1|192.168.0.2"]);
        assert_eq!(rows.iter().filter(|r| r.table == "BFD").count(), 2);
    }
}
