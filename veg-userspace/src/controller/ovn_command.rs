//! `veg ovn plan | apply | delete -f FILE`: what the controller does to OVN, by hand, for the gateways of a file
//! (from_file.rs reads them as the controller would).

use std::{io::Write, path::Path, time::Duration};

use anyhow::{Context as _, bail};
use serde_json::json;

use futures::FutureExt as _;
use veg_ovsdb::{endpoint::Endpoint, monitor::Monitor};

use super::{
    from_file::{FileGateway, Resources, gateways},
    reconcile::program,
};
use crate::ovn::{
    apply::{DB, Plan, converge, delete, keep_applied, monitored_tables},
    model::{GatewaySpec, desired_rows},
    vpc_port::{VpcBfdPort, vpc_port_rows},
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The gateways in FILE, each with its VPC's BFD port when the file describes one.
pub fn read_gateways(file: &Path) -> anyhow::Result<Vec<FileGateway>> {
    let yaml =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    Resources::parse(&yaml)
        .and_then(|resources| gateways(&resources))
        .with_context(|| format!("in {}", file.display()))
}

/// The rows every gateway of the file (and its VPC's BFD port) needs, without a database.
pub fn plan(gateways: &[FileGateway], json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    if json {
        let plans: Vec<_> = gateways
            .iter()
            .map(|g| plan_json(&g.spec, g.bfd_port.as_ref()))
            .collect();
        serde_json::to_writer_pretty(&mut *out, &plans)?;
        writeln!(out)?;
        return Ok(());
    }
    for gateway in gateways {
        plan_text(&gateway.spec, gateway.bfd_port.as_ref(), out)?;
    }
    Ok(())
}

fn rows_of(spec: &GatewaySpec, port: Option<&VpcBfdPort>) -> Vec<crate::ovn::model::DesiredRow> {
    let mut rows = port.map(vpc_port_rows).unwrap_or_default();
    rows.extend(desired_rows(spec));
    rows
}

fn plan_json(spec: &GatewaySpec, port: Option<&VpcBfdPort>) -> serde_json::Value {
    let rows: Vec<_> = rows_of(spec, port)
        .iter()
        .map(|r| {
            let links: Vec<_> = r
                .links
                .iter()
                .map(|l| json!({ "column": l.column, "table": l.table, "keys": l.keys }))
                .collect();
            json!({ "table": r.table, "key": r.key, "columns": r.columns, "router_column": r.router_column,
                    "links": links, "ports": r.ports })
        })
        .collect();
    json!({ "gateway": spec.id(), "router": spec.router, "rows": rows })
}

fn plan_text(
    spec: &GatewaySpec,
    port: Option<&VpcBfdPort>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let rows = rows_of(spec, port);
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

/// Keep every gateway of the file applied, following BFD status, until `stop`.
pub async fn watch(
    gateways: &[FileGateway],
    nb: &str,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let monitor = connect(nb).await?;
    for port in gateways.iter().filter_map(|g| g.bfd_port.as_ref()) {
        converge(&monitor, &port.owner(), &vpc_port_rows(port)).await?;
    }
    let stop = stop.shared();
    futures::future::join_all(
        gateways
            .iter()
            .map(|g| keep_applied(&monitor, &g.spec, stop.clone())),
    )
    .await;
    Ok(())
}

/// Connect, bring the database to the model of every gateway of the file (or remove their rows), and say what
/// changed. Applying is the controller's own step (reconcile::program); the VPC's BFD port is applied with its
/// gateways but never removed with them: it belongs to the Vpc, which other gateways share.
pub async fn apply_or_delete(
    gateways: &[FileGateway],
    nb: &str,
    remove: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let monitor = connect(nb).await?;
    for gateway in gateways {
        let spec = &gateway.spec;
        let done = if remove {
            delete(&monitor, spec).await?
        } else {
            program(&monitor, spec.clone(), gateway.bfd_port.as_ref())
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", spec.id()))?
        };
        report(spec, &done, out)?;
    }
    Ok(())
}

fn report(spec: &GatewaySpec, done: &Plan, out: &mut impl Write) -> anyhow::Result<()> {
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
