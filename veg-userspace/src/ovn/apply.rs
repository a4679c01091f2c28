//! Applying a gateway's model: diff the desired rows against the replica's rows tagged with the gateway, and write
//! only the difference in one transaction. Applying twice writes nothing; rows of other gateways and of anyone
//! else are never touched.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::{
    identity::{external_id, row_key},
    metrics,
    model::{DesiredRow, GatewaySpec, Owner, desired_rows},
};
use veg_ovsdb::{
    monitor::Monitor,
    replica::{Replica, Row, column},
};

pub const DB: &str = "OVN_Northbound";
/// The tables a gateway's rows live in.
pub const OWNED_TABLES: [&str; 8] = [
    "Address_Set",
    "Port_Group",
    "BFD",
    "Logical_Router_Static_Route",
    "Logical_Router_Policy",
    "Logical_Router_Port",
    "HA_Chassis_Group",
    "HA_Chassis",
];
/// What the monitor must replicate for planning: the owned tables, the routers they hang from, and the switch
/// ports that port groups name.
pub fn monitored_tables() -> Vec<&'static str> {
    OWNED_TABLES
        .iter()
        .copied()
        .chain(["Logical_Router", "Logical_Switch_Port"])
        .collect()
}

/// The Logical_Router column that references rows of a non-root table the router owns.
fn router_column_of(table: &str) -> Option<&'static str> {
    match table {
        "Logical_Router_Static_Route" => Some("static_routes"),
        "Logical_Router_Policy" => Some("policies"),
        "Logical_Router_Port" => Some("ports"),
        _ => None,
    }
}

/// The transaction that brings the database to the model, and what it does in words.
#[derive(Debug, Default)]
pub struct Plan {
    pub operations: Vec<Value>,
    pub changes: Vec<String>,
}

fn by_uuid(uuid: &str) -> Value {
    json!([["_uuid", "==", ["uuid", uuid]]])
}

fn find_by_name<'a>(replica: &'a Replica, table: &str, name: &str) -> Option<&'a String> {
    replica
        .rows(table)
        .find(|(_, row)| column(row, "name") == name)
        .map(|(uuid, _)| uuid)
}

/// The owner's rows in the replica, by table and identity: (uuid, row).
fn owned_rows<'a>(
    owner: &Owner,
    replica: &'a Replica,
) -> HashMap<(&'static str, String), (String, &'a Row)> {
    let mut existing = HashMap::new();
    for table in OWNED_TABLES {
        for (uuid, row) in replica.rows(table) {
            if external_id(row, owner.tag).as_deref() == Some(owner.value.as_str()) {
                existing.insert((table, row_key(table, row)), (uuid.clone(), row));
            }
        }
    }
    existing
}

/// The switch ports by name, when some desired port group names ports. Port groups name thousands of ports: index
/// them once, not once per port.
fn switch_ports_by_name<'a>(
    desired: &[DesiredRow],
    replica: &'a Replica,
) -> HashMap<&'a str, &'a String> {
    if !desired.iter().any(|r| !r.ports.is_empty()) {
        return HashMap::new();
    }
    replica
        .rows("Logical_Switch_Port")
        .filter_map(|(uuid, row)| Some((column(row, "name").as_str()?, uuid)))
        .collect()
}

/// A desired row's columns with its references filled in: a port group's ports, and each link's rows (by UUID,
/// or by the name of a row inserted earlier in this transaction).
fn resolved_columns(
    row: &DesiredRow,
    switch_ports: &HashMap<&str, &String>,
    refs: &HashMap<(&str, &str), Value>,
) -> serde_json::Map<String, Value> {
    let mut columns = row.columns.clone();
    if row.table == "Port_Group" {
        let ports: Vec<Value> = row
            .ports
            .iter()
            .filter_map(|name| switch_ports.get(name.as_str()))
            .map(|uuid| json!(["uuid", uuid]))
            .collect();
        columns.insert("ports".into(), json!(["set", ports]));
    }
    for link in &row.links {
        let targets: Vec<Value> = link
            .keys
            .iter()
            .filter_map(|key| refs.get(&(link.table, key.as_str())).cloned())
            .collect();
        columns.insert(link.column.into(), json!(["set", targets]));
    }
    columns
}

pub fn plan(owner: &Owner, desired: &[DesiredRow], replica: &Replica) -> anyhow::Result<Plan> {
    let mut existing = owned_rows(owner, replica);
    let router = find_by_name(replica, "Logical_Router", &owner.router);
    let router_mutation =
        |column: &str, mutator: &str, reference: Value| -> anyhow::Result<Value> {
            let router = router.with_context(|| {
                format!(
                    "logical router {:?} does not exist in the Northbound database",
                    owner.router
                )
            })?;
            Ok(
                json!({ "op": "mutate", "table": "Logical_Router", "where": by_uuid(router),
                   "mutations": [[column, mutator, ["set", [reference]]]] }),
            )
        };
    let switch_ports = switch_ports_by_name(desired, replica);
    let mut plan = Plan::default();
    // Rows come in an order where every row follows those it links to, so a link can name a row inserted earlier
    // in this very transaction.
    let mut refs: HashMap<(&str, &str), Value> = HashMap::new();
    for (i, row) in desired.iter().enumerate() {
        let columns = resolved_columns(row, &switch_ports, &refs);
        match existing.remove(&(row.table, row.key.clone())) {
            None => {
                let name = format!("row{i}");
                plan.operations.push(json!({ "op": "insert", "table": row.table, "row": columns, "uuid-name": name }));
                if let Some(router_column) = row.router_column {
                    plan.operations.push(router_mutation(
                        router_column,
                        "insert",
                        json!(["named-uuid", name]),
                    )?);
                }
                refs.insert((row.table, &row.key), json!(["named-uuid", name]));
                plan.changes
                    .push(format!("insert {} {}", row.table, row.key));
            }
            Some((uuid, current)) => {
                refs.insert((row.table, &row.key), json!(["uuid", uuid]));
                let changed: serde_json::Map<String, Value> = columns
                    .into_iter()
                    .filter(|(c, v)| {
                        replica.normalized(row.table, c, v)
                            != replica.normalized(row.table, c, column(current, c))
                    })
                    .collect();
                if !changed.is_empty() {
                    let names: Vec<&str> = changed.keys().map(String::as_str).collect();
                    plan.changes.push(format!(
                        "update {} {}: {}",
                        row.table,
                        row.key,
                        names.join(", ")
                    ));
                    plan.operations.push(json!({ "op": "update", "table": row.table, "where": by_uuid(&uuid), "row": changed }));
                }
            }
        }
    }
    let mut stale: Vec<_> = existing.into_iter().collect();
    stale.sort_by(|a, b| a.0.cmp(&b.0));
    for ((table, key), (uuid, _)) in stale {
        plan.changes.push(format!("delete {table} {key}"));
        // A row the router references loses that reference too. Deleting it outright as well (rather than leaving
        // it to garbage collection) matters: the commit's referential check still counts references it holds.
        if let Some(router_column) = router_column_of(table) {
            plan.operations.push(router_mutation(
                router_column,
                "delete",
                json!(["uuid", uuid]),
            )?);
        }
        plan.operations
            .push(json!({ "op": "delete", "table": table, "where": by_uuid(&uuid) }));
    }
    Ok(plan)
}

/// How long to wait for our own transaction to come back through the monitor.
const SETTLE: Duration = Duration::from_secs(5);

pub async fn converge(
    monitor: &Monitor,
    owner: &Owner,
    desired: &[DesiredRow],
) -> anyhow::Result<Plan> {
    let plan = monitor.read(|r| plan(owner, desired, r))?;
    if plan.operations.is_empty() {
        return Ok(plan);
    }
    let client = monitor
        .client()
        .context("not connected to the Northbound database")?;
    let sent = Instant::now();
    let answer = client.transact(DB, &plan.operations).await;
    metrics::record(sent.elapsed(), plan.operations.len(), answer.is_ok());
    answer?;
    // Wait until the replica shows our change, so that the next plan starts from it.
    if !monitor
        .wait_until(SETTLE, |r| plan_is_empty(owner, desired, r))
        .await
    {
        bail!("the Northbound database did not reflect the transaction within {SETTLE:?}");
    }
    Ok(plan)
}

fn plan_is_empty(owner: &Owner, desired: &[DesiredRow], replica: &Replica) -> bool {
    plan(owner, desired, replica).is_ok_and(|p| p.operations.is_empty())
}

/// Instances of the gateway whose BFD session is not Up, from the BFD rows' status (northd copies it there from
/// the Southbound database). An instance is used only once its session is Up, so one without a BFD row yet
/// counts as down too.
pub fn down_nexthops(replica: &Replica, spec: &GatewaySpec) -> BTreeSet<IpAddr> {
    let id = spec.id();
    let up: BTreeSet<IpAddr> = replica
        .rows("BFD")
        .filter(|(_, row)| external_id(row, "vpc-egress-gateway").as_deref() == Some(id.as_str()))
        .filter(|(_, row)| {
            replica.normalized("BFD", "status", column(row, "status")) == json!(["set", ["up"]])
        })
        .filter_map(|(_, row)| column(row, "dst_ip").as_str()?.parse().ok())
        .collect();
    spec.instances
        .iter()
        .flat_map(|i| i.addresses.iter())
        .filter(|a| !up.contains(a))
        .copied()
        .collect()
}

/// The instance addresses OVN sends the gateway's traffic to: a nexthop of one of its routes or reroute
/// policies and, with BFD, one whose session OVN reports up (northd skips the others). What "routed" means for
/// the instances' readiness gate.
pub fn routed_nexthops(replica: &Replica, spec: &GatewaySpec) -> BTreeSet<IpAddr> {
    let id = spec.id();
    let mine = |row: &&veg_ovsdb::replica::Row| {
        external_id(row, "vpc-egress-gateway").as_deref() == Some(id.as_str())
    };
    let routes = replica
        .rows("Logical_Router_Static_Route")
        .map(|(_, row)| row)
        .filter(mine)
        .filter_map(|row| column(row, "nexthop").as_str().map(str::to_owned));
    let policies = replica
        .rows("Logical_Router_Policy")
        .map(|(_, row)| row)
        .filter(mine)
        .filter(|row| column(row, "action").as_str() == Some("reroute"))
        .flat_map(|row| {
            let nexthops =
                replica.normalized("Logical_Router_Policy", "nexthops", column(row, "nexthops"));
            nexthops[1]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        });
    let mut routed: BTreeSet<IpAddr> = routes
        .chain(policies)
        .filter_map(|nexthop| nexthop.parse().ok())
        .collect();
    if spec.bfd.is_some() {
        let down = down_nexthops(replica, spec);
        routed.retain(|address| !down.contains(address));
    }
    routed
}

/// Keep the gateway applied until `stop`: on the default VPC with BFD, whose policies cannot watch BFD on OVN
/// 23.03, follow every BFD status change and rewrite the policy's nexthops.
pub async fn keep_applied(
    monitor: &Monitor,
    spec: &GatewaySpec,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut changes = monitor.subscribe();
    let follow_bfd = spec.default_vpc && spec.bfd.is_some() && !supports_bfd_sessions(monitor);
    loop {
        let mut current = spec.clone();
        if follow_bfd {
            current.down = monitor.read(|r| down_nexthops(r, spec));
        }
        match apply(monitor, &current).await {
            Ok(plan) if !plan.changes.is_empty() => {
                info!(gateway = %spec.id(), changes = ?plan.changes, "OVN updated")
            }
            Ok(_) => {}
            Err(e) => {
                warn!(gateway = %spec.id(), "applying the OVN model failed: {e:#}; retrying on the next change")
            }
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = &mut stop => return,
        }
    }
}

/// Whether the server's policies have bfd_sessions (OVN >= 23.09), so that OVN itself skips nexthops whose BFD
/// session is down.
pub fn supports_bfd_sessions(monitor: &Monitor) -> bool {
    monitor.read(|r| {
        r.schema()
            .has_column("Logical_Router_Policy", "bfd_sessions")
    })
}

/// Bring the database to the gateway's model, in the design the server supports. Returns what was done (nothing
/// when it was there already).
pub async fn apply(monitor: &Monitor, spec: &GatewaySpec) -> anyhow::Result<Plan> {
    let mut spec = spec.clone();
    spec.bfd_sessions = supports_bfd_sessions(monitor);
    converge(monitor, &spec.owner(), &desired_rows(&spec)).await
}

/// Remove every row tagged with the gateway, and nothing else.
pub async fn delete(monitor: &Monitor, spec: &GatewaySpec) -> anyhow::Result<Plan> {
    converge(monitor, &spec.owner(), &[]).await
}
