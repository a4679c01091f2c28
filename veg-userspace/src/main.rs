//! `veg`: the VPC egress gateway's command-line entry point.

use std::{io, path::PathBuf};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use veg_userspace::{
    datapath::pins,
    gateway::{agent, settings::{SettingsFile, SettingsInput}},
    inspect, netns,
};

#[derive(Parser)]
#[command(name = "veg", version, about = "VPC egress gateway for OVN-networked Kubernetes clusters")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway agent of one instance: SNAT with eBPF from the internal to the external interface.
    ///
    /// Runs in the foreground until SIGINT/SIGTERM, then detaches its programs but keeps its pinned state
    /// (flows, counters, policy) in /sys/fs/bpf/veg/NAME, so a restarted agent keeps every live flow.
    Gateway(GatewayArgs),
    /// List the live translations of a gateway on this host, like `conntrack -L`.
    Flows(InspectArgs),
    /// Show the packet counters of a gateway on this host.
    Stats(InspectArgs),
}

#[derive(Args)]
struct GatewayArgs {
    /// Gateway name; names the pinned state in /sys/fs/bpf/veg/NAME.
    #[arg(long)]
    name: Option<String>,
    /// Named network namespace (from /var/run/netns) to run in; the pins stay in the host's bpffs.
    #[arg(long)]
    netns: Option<String>,
    /// Interface facing the VPC (eth0 in a gateway pod).
    #[arg(long, value_name = "IF")]
    internal_interface: Option<String>,
    /// Interface facing the outside (net1 in a gateway pod); must carry --external-ip.
    #[arg(long, value_name = "IF")]
    external_interface: Option<String>,
    /// The address SNAT sources are translated to.
    #[arg(long, value_name = "IP")]
    external_ip: Option<String>,
    /// Source prefix to translate (repeatable).
    #[arg(long, value_name = "CIDR")]
    snat: Vec<String>,
    /// Source prefix to route unchanged (repeatable).
    #[arg(long, value_name = "CIDR")]
    forward: Vec<String>,
    /// Ports (and ICMP identifiers) used for translations; must not overlap net.ipv4.ip_local_port_range.
    /// [default: 1024-32767]
    #[arg(long, value_name = "LO-HI")]
    port_range: Option<String>,
    /// Capacity of the flow table, in flows. [default: 262144]
    #[arg(long, value_name = "N")]
    max_flows: Option<u32>,
    /// Seconds between sweeps of expired flows. [default: 10]
    #[arg(long, value_name = "SECONDS")]
    sweep_interval: Option<u64>,
    /// Read the settings from a YAML or JSON file (camelCase keys: name, netns, internalInterface,
    /// externalInterface, externalIP, snat, forward, portRange, maxFlows, sweepIntervalSeconds); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Remove the gateway's pinned state (flows, counters, policy) and exit.
    #[arg(long)]
    cleanup: bool,
}

#[derive(Args)]
struct InspectArgs {
    /// Gateway name, as given to `veg gateway --name`.
    #[arg(long)]
    name: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(io::stderr)
        .init();
    let result = match cli.command {
        Command::Gateway(args) => gateway(args),
        Command::Flows(args) => inspect::flows::run(&args.name, args.json, &mut io::stdout().lock()),
        Command::Stats(args) => inspect::stats::run(&args.name, args.json, &mut io::stdout().lock()),
    };
    if let Err(err) = result {
        eprintln!("veg: error: {err:#}");
        std::process::exit(1);
    }
}

fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let mut input = SettingsInput {
        name: args.name,
        netns: args.netns,
        internal_interface: args.internal_interface,
        external_interface: args.external_interface,
        external_ip: args.external_ip,
        snat: args.snat,
        forward: args.forward,
        port_range: args.port_range,
        max_flows: args.max_flows,
        sweep_interval_seconds: args.sweep_interval,
    };
    if let Some(path) = &args.config {
        input = input.merge_file(SettingsFile::read(path)?);
    }
    if args.cleanup {
        let name = input.name.context("--cleanup needs --name (or a --config with a name)")?;
        let removed = pins::remove_gateway_pins(&name)?;
        eprintln!("veg: removed {} pin(s) of gateway {name:?}", removed.len());
        return Ok(());
    }
    let settings = input.validate()?;
    // Enter the namespace before any other thread exists: tokio's threads inherit it.
    if let Some(ns) = &settings.netns {
        netns::enter(ns)?;
    }
    // A current-thread runtime starts no thread of its own, so this is still the only thread.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let stop = agent::StopSignals::install()?;
        let (datapath, _lock) = agent::start(&settings)?;
        agent::run(settings, datapath, stop).await
    })
}
