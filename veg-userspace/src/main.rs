//! `veg`: the VPC egress gateway's command-line entry point.

use std::{
    io::{self, Write as _},
    path::PathBuf,
};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use veg_userspace::{
    datapath::pins,
    gateway::{agent, host, node_pins, resource, settings::SettingsInput},
    inspect, netns,
};

#[derive(Parser)]
#[command(
    name = "veg",
    version,
    about = "VPC egress gateway for OVN-networked Kubernetes clusters"
)]
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
    Gateway(Box<GatewayArgs>),
    /// List the live translations of a gateway on this host, like `conntrack -L`.
    Flows(FlowsArgs),
    /// Show the packet counters of a gateway on this host.
    Stats(InspectArgs),
    /// Print the VpcEgressGateway CustomResourceDefinition (YAML), as deploy/crds/ holds it.
    Crd,
    /// Program OVN for a gateway by hand: what `veg controller` does for each VpcEgressGateway.
    Ovn {
        #[command(subcommand)]
        command: OvnCommand,
    },
    /// Run the controller: reconcile every VpcEgressGateway of the cluster into a Deployment of instances, OVN
    /// routes, policies, BFD rows and address sets, and an honest status.
    ///
    /// Talks to the Kubernetes API (in-cluster, or KUBECONFIG) and to the OVN Northbound database. Only the replica
    /// holding the leader Lease works; the others wait. Runs until SIGINT/SIGTERM.
    Controller(ControllerArgs),
    /// The lab: the whole gateway on this machine with real OVN and Open vSwitch, pods and instances as network
    /// namespaces (run as root). Runs the veg-lab binary built beside veg (`veg lab --help` lists its commands);
    /// veg as shipped has none.
    #[command(disable_help_flag = true)]
    Lab {
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<std::ffi::OsString>,
    },
    /// Run BFD sessions (RFC 5880/5881, asynchronous, single hop) toward peers, in the foreground until
    /// SIGINT/SIGTERM; `veg bfd status` lists them while it runs.
    Bfd(BfdArgs),
}

#[derive(Args)]
struct ControllerArgs {
    /// The OVN Northbound database: unix:PATH or tcp:IP:PORT.
    #[arg(long, value_name = "ENDPOINT", env = "OVN_NB")]
    nb: String,
    /// The instances' image, for gateways that name none (the controller's own image, in a cluster).
    #[arg(long, value_name = "IMAGE", env = "VEG_IMAGE")]
    image: String,
    /// Namespace of the leader Lease (the controller's own namespace, in a cluster).
    #[arg(
        long,
        value_name = "NAMESPACE",
        env = "POD_NAMESPACE",
        default_value = "kube-system"
    )]
    lease_namespace: String,
    #[arg(long, value_name = "NAME", default_value = "veg-controller")]
    lease_name: String,
    /// This replica's name in the Lease (the pod's name, in a cluster).
    #[arg(long, value_name = "NAME", env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a leader may go without renewing before another replica takes over.
    #[arg(long, value_name = "SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=600))]
    lease_duration: u64,
    /// Serve Prometheus metrics at /metrics (and /livez) on this address, on every replica ("off": not at all).
    #[arg(long, value_name = "ADDRESS:PORT|off", default_value = "0.0.0.0:8080")]
    metrics_listen: String,
}

#[derive(Subcommand)]
enum OvnCommand {
    /// Print the Northbound rows the gateways in FILE need, without touching a database.
    ///
    /// FILE holds Kubernetes YAML as for `kubectl apply -f`: any number of VpcEgressGateways (with their status,
    /// which names the instances), the Vpcs and the Subnets they need. Each is validated as the controller does.
    Plan {
        /// Kubernetes YAML: VpcEgressGateways (with status), their Vpcs and Subnets.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Write the rows of every gateway in FILE: only what differs, one transaction per gateway.
    Apply {
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        /// The Northbound database: unix:PATH or tcp:IP:PORT.
        #[arg(long, value_name = "ADDRESS")]
        nb: String,
        /// Stay, keeping the rows applied until SIGINT/SIGTERM: on the default VPC with BFD, follow each
        /// session's status and rewrite the policy's nexthops (OVN 23.03's policies cannot do it themselves).
        #[arg(long)]
        watch: bool,
    },
    /// Remove every row tagged with the gateways in FILE, and nothing else.
    Delete {
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        #[arg(long, value_name = "ADDRESS")]
        nb: String,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BfdArgs {
    #[command(subcommand)]
    command: Option<BfdCommand>,
    /// Named network namespace (from /var/run/netns) to run in.
    #[arg(long)]
    netns: Option<String>,
    /// Local address to listen on (UDP 3784) and send from; one per family, "v4,v6", for peers of both
    /// families (each peer's session runs from the address of its family).
    #[arg(long, value_name = "IP[,IP]", value_delimiter = ',')]
    listen: Vec<std::net::IpAddr>,
    /// A peer to run a session with (repeatable); packets from anyone else are dropped and counted.
    #[arg(long = "peer", value_name = "IP")]
    peers: Vec<std::net::IpAddr>,
    /// Required minimum receive interval, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    min_rx: u64,
    /// Desired minimum transmit interval, in milliseconds (at least 1000 until the session is Up).
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    min_tx: u64,
    /// Detection multiplier.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..))]
    multiplier: u8,
    /// Lowest TTL accepted: 254 for packets that crossed OVN's router, 255 for strict RFC 5881.
    #[arg(long, value_name = "N", default_value_t = 254)]
    min_ttl: u8,
    /// Name of this engine, for `veg bfd status --name`.
    #[arg(long, default_value = "bfd")]
    name: String,
    /// Wait for the peer to start (as gateway instances wait for OVN) instead of sending first.
    #[arg(long)]
    passive: bool,
}

#[derive(Subcommand)]
enum BfdCommand {
    /// Change the timers of a running `veg bfd` (negotiated with its peers by Poll/Final, without a flap).
    Timers {
        #[arg(long, default_value = "bfd")]
        name: String,
        #[arg(long, value_name = "MS")]
        min_tx: u64,
        #[arg(long, value_name = "MS")]
        min_rx: u64,
        #[arg(long, value_name = "N")]
        multiplier: u8,
    },
    /// List the sessions of a running `veg bfd`, like `bfdd-control status`.
    Status {
        #[arg(long, default_value = "bfd")]
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct GatewayArgs {
    #[command(flatten)]
    settings: SettingsInput,
    /// Read the settings from a YAML or JSON file (camelCase keys: name, netns, internalInterface,
    /// externalInterface, externalIP, snat, forward, portRange, maxFlows, sweepIntervalSeconds, drainSeconds,
    /// bfdPeers, bfdListen, bfdMinRx, bfdMinTx, bfdMultiplier, bfdMinTtl, healthListen, flowRecords,
    /// flowRecordsMaxSize, datapathLog, uplinkProbe, uplinkIntervalMs, uplinkFailures); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Remove the gateway's pinned state (flows, counters, policy) and exit.
    #[arg(long)]
    cleanup: bool,
    /// Prepare the instance and exit, as the instances' init container does: turn the kernel's IPv4 forwarding
    /// off on both interfaces (a pod's namespace inherits it on from the node), so that nothing crosses between
    /// them before the agent's programs do. Needs only --internal-interface, --external-interface (and --netns).
    #[arg(long, conflicts_with = "cleanup")]
    init: bool,
}

#[derive(Args)]
struct FlowsArgs {
    #[command(flatten)]
    inspect: InspectArgs,
    /// Print only how many translations are live (a million-flow table lists in seconds; this counts in less).
    #[arg(long, conflicts_with_all = ["fragments", "watch"])]
    count: bool,
    /// List the fragmented datagrams being followed instead: for each, the address its first fragment was
    /// translated to, which its later fragments are given (for 30 s).
    #[arg(long, conflicts_with = "watch")]
    fragments: bool,
    /// Follow the translation records instead: a line when a translation is created and when it ends (why, and
    /// its packets and bytes each way), live until the agent stops or Ctrl-C. Needs an agent running with
    /// --flow-records; --json prints them as the agent writes them.
    #[arg(long)]
    watch: bool,
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
            // The datapath's lines (target veg_ebpf) are filtered by --datapath-log, where they are written.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,veg_ebpf=trace".into()),
        )
        .with_writer(io::stderr)
        .init();
    let result = match cli.command {
        Command::Gateway(args) => gateway(*args),
        Command::Flows(args) if args.watch => inspect::records::watch(
            &args.inspect.name,
            args.inspect.json,
            &mut io::stdout().lock(),
        ),
        Command::Flows(args) if args.fragments => inspect::fragments::run(
            &args.inspect.name,
            args.inspect.json,
            &mut io::stdout().lock(),
        ),
        Command::Flows(args) => inspect::flows::run(
            &args.inspect.name,
            args.inspect.json,
            args.count,
            &mut io::stdout().lock(),
        ),
        Command::Stats(args) => {
            inspect::stats::run(&args.name, args.json, &mut io::stdout().lock())
        }
        Command::Bfd(args) => bfd(args),
        Command::Ovn { command } => ovn(command),
        Command::Controller(args) => controller(args),
        Command::Lab { args } => lab(args),
        Command::Crd => {
            print!("{}", veg_userspace::crd::gateway::crd_yaml());
            Ok(())
        }
    };
    if let Err(err) = result {
        eprintln!("veg: error: {err:#}");
        std::process::exit(1);
    }
}

fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let mut input = args.settings;
    if let Some(path) = &args.config {
        input = input.merge_file(SettingsInput::read(path)?);
    }
    if args.cleanup {
        let name = input
            .name
            .context("--cleanup needs --name (or a --config with a name)")?;
        let removed = pins::remove_gateway_pins(&name)?;
        eprintln!("veg: removed {} pin(s) of gateway {name:?}", removed.len());
        return Ok(());
    }
    if args.init {
        let interface = |value: Option<String>, flag: &str| {
            value.with_context(|| format!("--init needs {flag} (as a flag or in --config)"))
        };
        let internal = interface(input.internal_interface, "--internal-interface")?;
        let external = interface(input.external_interface, "--external-interface")?;
        return runtime_in(input.netns.as_deref())?.block_on(async {
            host::close_kernel_forwarding(&internal, &external)?;
            eprintln!("veg: IPv4 forwarding is off on {internal} and {external}");
            Ok(())
        });
    }
    let mut settings = input.validate()?;
    runtime_in(settings.netns.as_deref())?.block_on(async {
        // Before anything that may take a while (the Kubernetes API): the kernel must not forward meanwhile.
        host::close_kernel_forwarding(&settings.internal_interface, &settings.external_interface)?;
        let stop = agent::StopSignals::install()?;
        let (policy_updates, client) = match settings.resource.clone() {
            Some(gateway) => {
                let client = kube::Client::try_default().await.context(
                    "--gateway needs the Kubernetes API: run in a pod, or set KUBECONFIG",
                )?;
                let (policy, updates) = resource::follow(client.clone(), gateway).await?;
                settings.policy = policy;
                (Some(updates), Some(client))
            }
            None => (None, None),
        };
        // In a pod: what other instances left on this node goes first, and the instance's own state goes with
        // its pod (node_pins.rs).
        let own_pod = client.clone().zip(node_pins::OwnPod::from_env());
        if let Some((client, pod)) = &own_pod {
            node_pins::remove_orphans(client, &node_pins::pins_root(), &settings.name, &pod.node)
                .await;
        }
        let name = settings.name.clone();
        let running = agent::start(&settings)?;
        agent::run(
            settings,
            running,
            agent::StopRequests::Signals(stop),
            policy_updates,
        )
        .await?;
        if let Some((client, pod)) = &own_pod {
            node_pins::remove_own_if_leaving(client, pod, &node_pins::pins_root(), &name).await?;
        }
        Ok(())
    })
}

fn bfd(args: BfdArgs) -> anyhow::Result<()> {
    use veg_bfd::{control, engine, session};
    if let Some(BfdCommand::Timers {
        name,
        min_tx,
        min_rx,
        multiplier,
    }) = args.command
    {
        control::request(&name, &format!("timers {min_tx} {min_rx} {multiplier}"))?;
        eprintln!(
            "veg: timers of {name:?} set to tx {min_tx} ms, rx {min_rx} ms, multiplier {multiplier}"
        );
        return Ok(());
    }
    if let Some(BfdCommand::Status { name, json }) = args.command {
        let status = control::request(&name, "status")?;
        let mut out = io::stdout().lock();
        if json {
            serde_json::to_writer_pretty(&mut out, &status)?;
            return Ok(writeln!(out)?);
        }
        return Ok(control::print_status(&status, &mut out)?);
    }
    if args.listen.is_empty() {
        anyhow::bail!("--listen is required: the local address of the sessions (one per family)");
    }
    let config = engine::EngineConfig {
        listen: args.listen,
        peers: args.peers,
        timers: session::Timers {
            desired_min_tx: std::time::Duration::from_millis(args.min_tx),
            required_min_rx: std::time::Duration::from_millis(args.min_rx),
            detect_mult: args.multiplier,
        },
        min_ttl: args.min_ttl,
        role: if args.passive {
            session::Role::Passive
        } else {
            session::Role::Active
        },
    };
    runtime_in(args.netns.as_deref())?.block_on(async {
        let stop = agent::StopSignals::install()?;
        let snapshot = Default::default();
        let engine = engine::Engine::new(config, std::sync::Arc::clone(&snapshot))?;
        control::run_engine(
            engine,
            &args.name,
            snapshot,
            // A standalone engine is never withdrawn but by its stop.
            tokio::sync::watch::channel(false).1,
            stop.wait(),
        )
        .await
    })
}

fn ovn(command: OvnCommand) -> anyhow::Result<()> {
    use veg_userspace::controller::ovn_command as command;
    let mut out = io::stdout().lock();
    let (file, nb, remove, watch) = match command {
        OvnCommand::Plan { file, json } => {
            return command::plan(&command::read_gateways(&file)?, json, &mut out);
        }
        OvnCommand::Apply { file, nb, watch } => (file, nb, false, watch),
        OvnCommand::Delete { file, nb } => (file, nb, true, false),
    };
    let gateways = command::read_gateways(&file)?;
    runtime_in(None)?.block_on(async {
        if watch {
            let stop = agent::StopSignals::install()?;
            return command::watch(&gateways, &nb, stop.wait()).await;
        }
        command::apply_or_delete(&gateways, &nb, remove, &mut out).await
    })
}

fn controller(args: ControllerArgs) -> anyhow::Result<()> {
    use veg_userspace::controller::run;
    let identity = match args.identity {
        Some(identity) => identity,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("no --identity given and the hostname is unreadable")?
            .trim()
            .to_owned(),
    };
    let settings = run::Settings {
        nb: args.nb.parse().context("--nb")?,
        default_image: args.image,
        lease_namespace: args.lease_namespace,
        lease_name: args.lease_name,
        identity,
        lease_duration: std::time::Duration::from_secs(args.lease_duration),
        metrics: metrics_listener(&args.metrics_listen)?,
    };
    runtime_in(None)?.block_on(async {
        let stop = agent::StopSignals::install()?;
        run::run(settings, stop.wait()).await
    })
}

/// The controller's metrics listener, bound before anything else so that a taken port is reported at once.
fn metrics_listener(address: &str) -> anyhow::Result<Option<std::net::TcpListener>> {
    if address == "off" {
        return Ok(None);
    }
    let address: std::net::SocketAddr = address.parse().with_context(|| {
        format!("--metrics-listen {address:?} is not ADDRESS:PORT (e.g. 0.0.0.0:8080) or off")
    })?;
    let listener = std::net::TcpListener::bind(address)
        .with_context(|| format!("listening for metrics on {address} (--metrics-listen)"))?;
    Ok(Some(listener))
}

/// `veg lab ARGS`: the lab is not part of veg as shipped (no lab code is in this binary); it is the veg-lab binary
/// beside this one, which `cargo xtask lab` and the tests build. Run it in this process's place.
fn lab(args: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let this = std::env::current_exe().context("finding the veg binary")?;
    let lab = this.with_file_name("veg-lab");
    if !lab.exists() {
        anyhow::bail!(
            "the lab is not part of this build (veg as shipped has no lab code): build it beside veg with \
             `cargo build --bin veg --bin veg-lab`, or use `cargo xtask lab up|down|status|demo`"
        );
    }
    let err = std::process::Command::new(&lab).args(args).exec();
    Err(anyhow::Error::new(err).context(format!("running {}", lab.display())))
}

/// A single-threaded runtime, after entering the named network namespace when one is given. The order matters:
/// setns moves only the calling thread, and a current-thread runtime starts no thread of its own, so everything
/// it runs stays in the namespace.
fn runtime_in(netns: Option<&str>) -> anyhow::Result<tokio::runtime::Runtime> {
    if let Some(ns) = netns {
        netns::enter(ns)?;
    }
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
