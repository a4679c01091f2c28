//! `veg ovn plan | apply | delete -f FILE`: the OVN side of a gateway, by hand.

use std::{io::Write, path::Path, time::Duration};

use anyhow::{Context as _, bail};
use serde_json::json;

use super::{
    apply::{DB, Plan, apply, converge, delete, keep_applied, monitored_tables},
    manifest::from_yaml,
    model::{GatewaySpec, desired_rows},
    vpc_port::{VpcBfdPort, vpc_port_rows},
};
use veg_ovsdb::{endpoint::Endpoint, monitor::Monitor};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The gateway in FILE, and its VPC's BFD port when the file describes one.
pub fn read_gateway(file: &Path) -> anyhow::Result<(GatewaySpec, Option<VpcBfdPort>)> {
    let yaml =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    from_yaml(&yaml).with_context(|| format!("in {}", file.display()))
}

/// The rows the gateway (and its VPC's BFD port) need, without a database.
pub fn plan(
    spec: &GatewaySpec,
    port: Option<&VpcBfdPort>,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut rows = port.map(vpc_port_rows).unwrap_or_default();
    rows.extend(desired_rows(spec));
    if json {
        let rows: Vec<_> = rows
            .iter()
            .map(|r| {
                let links: Vec<_> = r.links.iter().map(|l| json!({ "column": l.column, "table": l.table, "keys": l.keys })).collect();
                json!({ "table": r.table, "key": r.key, "columns": r.columns, "router_column": r.router_column,
                        "links": links, "ports": r.ports })
            })
            .collect();
        serde_json::to_writer_pretty(
            &mut *out,
            &json!({ "gateway": spec.id(), "router": spec.router, "rows": rows }),
        )?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "gateway {} on router {} ({} instance(s)):",
        spec.id(),
        spec.router,
        spec.instances.len()
    )?;
    for row in rows {
        let on_router = row
            .router_column
            .map(|c| format!(" (in {}.{c})", spec.router))
            .unwrap_or_default();
        writeln!(out, "{} {}{on_router}", row.table, row.key)?;
        for (column, value) in &row.columns {
            writeln!(out, "    {column}: {value}")?;
        }
        for link in row.links.iter().filter(|l| !l.keys.is_empty()) {
            writeln!(
                out,
                "    {}: the {} row(s) {}",
                link.column,
                link.table,
                link.keys.join(", ")
            )?;
        }
        if !row.ports.is_empty() {
            writeln!(out, "    ports: {}", row.ports.join(", "))?;
        }
    }
    Ok(())
}

async fn connect(nb: &str) -> anyhow::Result<Monitor> {
    let endpoint: Endpoint = nb.parse()?;
    let monitor = Monitor::start(endpoint.clone(), DB, &monitored_tables());
    if !monitor.wait_connected(CONNECT_TIMEOUT).await {
        bail!(
            "cannot reach the OVN Northbound database at {endpoint} within {CONNECT_TIMEOUT:?}: check --nb"
        );
    }
    Ok(monitor)
}

/// Keep the gateway applied, following BFD status, until `stop`.
pub async fn watch(
    spec: &GatewaySpec,
    port: Option<&VpcBfdPort>,
    nb: &str,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let monitor = connect(nb).await?;
    if let Some(port) = port {
        converge(&monitor, &port.owner(), &vpc_port_rows(port)).await?;
    }
    keep_applied(&monitor, spec, stop).await;
    Ok(())
}

/// Connect, bring the database to the model (or remove the gateway's rows), and say what changed. The VPC's BFD
/// port is applied with the gateway but never removed with it: it belongs to the Vpc, which other gateways share.
pub async fn apply_or_delete(
    spec: &GatewaySpec,
    port: Option<&VpcBfdPort>,
    nb: &str,
    remove: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let monitor = connect(nb).await?;
    let mut done: Plan = Plan::default();
    if let Some(port) = port.filter(|_| !remove) {
        done = converge(&monitor, &port.owner(), &vpc_port_rows(port)).await?;
    }
    let gateway = if remove {
        delete(&monitor, spec).await?
    } else {
        apply(&monitor, spec).await?
    };
    done.changes.extend(gateway.changes);
    if done.changes.is_empty() {
        writeln!(
            out,
            "{}: nothing to do, the database already matches",
            spec.id()
        )?;
    }
    for change in &done.changes {
        writeln!(out, "{change}")?;
    }
    Ok(())
}
