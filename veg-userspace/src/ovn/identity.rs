//! Which row is which: a row's identity among a gateway's rows of its table, read from its own columns. The model
//! (model.rs, vpc_port.rs) keys the rows it wants with it, and the diff (apply.rs) keys the rows it finds in the
//! database with it, so the two cannot drift apart: if they did, every apply would delete and re-insert rows.

use std::net::IpAddr;

use serde_json::Value;
use veg_ovsdb::replica::{Row, column, map_pairs};

/// The value of one key of a row's external_ids.
pub fn external_id(row: &Row, key: &str) -> Option<String> {
    map_pairs(column(row, "external_ids"))
        .into_values()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.as_str().map(str::to_owned))
}

/// A row's identity in `table`:
/// - BFD: its logical port and destination (one session per instance address);
/// - Logical_Router_Static_Route: prefix and next hop;
/// - Logical_Router_Policy: priority and family, and for a trafficPolicy Local policy the node it is for;
/// - HA_Chassis: the chassis;
/// - every other table (Address_Set, Port_Group, Logical_Router_Port, HA_Chassis_Group): its name.
pub fn row_key(table: &str, row: &Row) -> String {
    let text = |c: &str| column(row, c).as_str().unwrap_or("").to_owned();
    match table {
        "BFD" => bfd_key(&text("logical_port"), &text("dst_ip")),
        "Logical_Router_Static_Route" => format!("{}|{}", text("ip_prefix"), text("nexthop")),
        "Logical_Router_Policy" => {
            let key = format!(
                "{}|{}",
                column(row, "priority"),
                external_id(row, "af").unwrap_or_default()
            );
            match external_id(row, "node") {
                Some(node) => format!("{key}|{node}"),
                None => key,
            }
        }
        "HA_Chassis" => text("chassis_name"),
        _ => text("name"),
    }
}

/// The identity of the BFD row of `port` toward `address` (what a route's bfd column names).
pub fn bfd_key(port: &str, address: &str) -> String {
    format!("{port}|{address}")
}

/// `bfd_key` for an instance address.
pub fn bfd_key_of(port: &str, address: &IpAddr) -> String {
    bfd_key(port, &address.to_string())
}

/// Columns given as a JSON object, as a row.
pub fn as_row(columns: &Value) -> Row {
    columns.as_object().cloned().unwrap_or_default()
}
