//! `veg`: the VPC egress gateway's command-line entry point.

use std::{
    io::{self, Write as _},
    path::PathBuf,
};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use veg_userspace::{
    datapath::pins,
    gateway::{agent, host, resource, settings::SettingsInput},
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
    /// namespaces (run as root).
    Lab(LabArgs),
    /// Run BFD sessions (RFC 5880/5881, asynchronous, single hop) toward peers, in the foreground until
    /// SIGINT/SIGTERM; `veg bfd status` lists them while it runs.
    Bfd(BfdArgs),
}

#[derive(Args)]
struct LabArgs {
    /// Where the lab keeps its databases, sockets, pidfiles, logs and state.
    #[arg(long, global = true, value_name = "DIR", default_value = veg_userspace::lab::DEFAULT_DIR)]
    dir: PathBuf,
    /// Prefix of every network namespace of the lab.
    #[arg(long, global = true, value_name = "PREFIX", default_value = veg_userspace::lab::DEFAULT_PREFIX)]
    prefix: String,
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Subcommand)]
enum LabCommand {
    /// Start OVN and Open vSwitch and build the network (a lab already there is replaced).
    Up,
    /// Stop everything and remove every namespace and file of the lab.
    Down,
    /// Say what runs; exits 1 when the lab is not (fully) up.
    Status,
    /// Create or update the resources in FILE (VpcEgressGateway, Vpc, Subnet YAML, as for `kubectl apply`).
    Apply {
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: PathBuf,
    },
    /// Delete the resources in FILE; the controller removes a deleted gateway's instances and OVN rows.
    Delete {
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: PathBuf,
    },
    /// List gateways with the columns of `kubectl get veg`.
    Get {
        /// veg (or vpc-egress-gateway, vpc-egress-gateways, vpc-egress-gw).
        #[arg(value_name = "RESOURCE")]
        resource: String,
        name: Option<String>,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// `-o wide` adds the internal and external IPs and the nodes.
        #[arg(short = 'o', long = "output", value_name = "FORMAT")]
        output: Option<String>,
    },
    /// Set a gateway's replicas, as `kubectl scale veg NAME --replicas N`.
    Scale {
        #[arg(value_name = "RESOURCE")]
        resource: String,
        name: String,
        #[arg(long)]
        replicas: i32,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Kill a gateway instance as a failing node would: its agent dies and its interfaces go down. The lab's
    /// kubelet restarts it after a couple of seconds.
    Kill {
        /// The instance's pod name, e.g. gateway2-0 (`veg lab status` lists them).
        pod: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Restart a component as a failure would: `controller` (the lab's controller) or `nb` (the Northbound
    /// database server, killed and started again on its file).
    Restart {
        #[arg(value_parser = ["controller", "nb"])]
        component: String,
    },
    /// Run the controller in lab mode in the foreground (`veg lab up` starts it in the background).
    #[command(hide = true)]
    Controller,
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
}

#[derive(Subcommand)]
enum OvnCommand {
    /// Print the Northbound rows the gateway in FILE needs, without touching a database.
    Plan {
        /// Kubernetes YAML: the VpcEgressGateway (with status), its Vpc and the Subnets it names.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Write the gateway's rows: only what differs, in one transaction.
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
    /// Remove every row tagged with the gateway, and nothing else.
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
    /// Local address to listen on (UDP 3784) and send from.
    #[arg(long, value_name = "IP")]
    listen: Option<std::net::IpAddr>,
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
    /// externalInterface, externalIP, snat, forward, portRange, maxFlows, sweepIntervalSeconds, bfdPeers, bfdListen,
    /// bfdMinRx, bfdMinTx, bfdMultiplier, bfdMinTtl, healthListen); flags override it.
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
    #[arg(long, conflicts_with = "fragments")]
    count: bool,
    /// List the fragmented datagrams being followed instead: for each, the address its first fragment was
    /// translated to, which its later fragments are given (for 30 s).
    #[arg(long)]
    fragments: bool,
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
        Command::Gateway(args) => gateway(*args),
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
        Command::Lab(args) => lab(args),
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
        let policy_updates = match settings.resource.clone() {
            Some(gateway) => {
                let client = kube::Client::try_default().await.context(
                    "--gateway needs the Kubernetes API: run in a pod, or set KUBECONFIG",
                )?;
                let (policy, updates) = resource::follow(client, gateway).await?;
                settings.policy = policy;
                Some(updates)
            }
            None => None,
        };
        let running = agent::start(&settings)?;
        agent::run(settings, running, stop.wait(), policy_updates).await
    })
}

fn bfd(args: BfdArgs) -> anyhow::Result<()> {
    use veg_userspace::bfd::{control, engine, session};
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
    let listen = args
        .listen
        .context("--listen is required: the local address of the sessions")?;
    let config = engine::EngineConfig {
        listen,
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
        control::run_engine(engine, &args.name, snapshot, stop.wait()).await
    })
}

fn ovn(command: OvnCommand) -> anyhow::Result<()> {
    use veg_userspace::ovn::command;
    let mut out = io::stdout().lock();
    let (file, nb, remove, watch) = match command {
        OvnCommand::Plan { file, json } => {
            let (spec, port) = command::read_gateway(&file)?;
            return command::plan(&spec, port.as_ref(), json, &mut out);
        }
        OvnCommand::Apply { file, nb, watch } => (file, nb, false, watch),
        OvnCommand::Delete { file, nb } => (file, nb, true, false),
    };
    let (spec, port) = command::read_gateway(&file)?;
    runtime_in(None)?.block_on(async {
        if watch {
            let stop = agent::StopSignals::install()?;
            return command::watch(&spec, port.as_ref(), &nb, stop.wait()).await;
        }
        command::apply_or_delete(&spec, port.as_ref(), &nb, remove, &mut out).await
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
    };
    runtime_in(None)?.block_on(async {
        let stop = agent::StopSignals::install()?;
        run::run(settings, stop.wait()).await
    })
}

fn lab(args: LabArgs) -> anyhow::Result<()> {
    use veg_userspace::lab::{Lab, controller, require_up, store};
    let lab = Lab::new(&args.dir, &args.prefix);
    let mut out = io::stdout().lock();
    let store = store::Store::new(&args.dir);
    let gateway_resource = |resource: &str| -> anyhow::Result<()> {
        match resource {
            "veg"
            | "vpc-egress-gateway"
            | "vpc-egress-gateways"
            | "vpc-egress-gw"
            | "vpcegressgateway" => Ok(()),
            other => anyhow::bail!(
                "the lab lists VpcEgressGateways only: `veg lab get veg`, not {other:?}"
            ),
        }
    };
    match args.command {
        LabCommand::Up => lab.up(&mut out),
        LabCommand::Down => lab.down(&mut out),
        LabCommand::Status => {
            if !lab.status(&mut out)? {
                std::process::exit(1);
            }
            Ok(())
        }
        LabCommand::Apply { file } | LabCommand::Delete { file }
            if !args.dir.join("nb.sock").exists() =>
        {
            require_up(&args.dir).with_context(|| format!("cannot use {}", file.display()))
        }
        LabCommand::Apply { file } => {
            let yaml = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            for (name, value) in
                store::parse_manifest(&yaml).with_context(|| format!("in {}", file.display()))?
            {
                store.put(&name, value)?;
                writeln!(out, "{name} configured")?;
            }
            Ok(())
        }
        LabCommand::Delete { file } => {
            let yaml = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            for (name, _) in
                store::parse_manifest(&yaml).with_context(|| format!("in {}", file.display()))?
            {
                let said = if store.remove(&name)? {
                    "deleted"
                } else {
                    "not found"
                };
                writeln!(out, "{name} {said}")?;
            }
            Ok(())
        }
        LabCommand::Get {
            resource,
            name,
            namespace,
            output,
        } => {
            gateway_resource(&resource)?;
            let wide = match output.as_deref() {
                None => false,
                Some("wide") => true,
                Some(other) => anyhow::bail!("-o {other}: the lab prints the table or -o wide"),
            };
            let gateways: Vec<_> = store
                .gateways()
                .into_iter()
                .filter(|g| g.metadata.namespace.as_deref() == Some(namespace.as_str()))
                .filter(|g| {
                    name.as_ref()
                        .is_none_or(|n| g.metadata.name.as_ref() == Some(n))
                })
                .collect();
            if gateways.is_empty() {
                match name {
                    Some(name) => anyhow::bail!("VpcEgressGateway {namespace}/{name} not found"),
                    None => writeln!(out, "No resources found in {namespace} namespace.")?,
                }
                return Ok(());
            }
            let now = k8s_openapi::jiff::Timestamp::now();
            write!(
                out,
                "{}",
                veg_userspace::crd::table::render(&gateways, wide, now)
            )?;
            Ok(())
        }
        LabCommand::Scale {
            resource,
            name,
            replicas,
            namespace,
        } => {
            gateway_resource(&resource)?;
            store.scale(&namespace, &name, replicas)?;
            writeln!(out, "vpcegressgateway.kubeovn.io/{name} scaled")?;
            Ok(())
        }
        LabCommand::Kill { pod, namespace } => {
            require_up(&args.dir)?;
            let instance = lab.kill_instance(&namespace, &pod)?;
            writeln!(
                out,
                "instance {namespace}/{pod} killed (agent pid {} gone, interfaces down)",
                instance.pid
            )?;
            Ok(())
        }
        LabCommand::Restart { component } => lab.restart(&component, &mut out),
        LabCommand::Controller => {
            require_up(&args.dir)?;
            runtime_in(None)?.block_on(async {
                let stop = agent::StopSignals::install()?;
                controller::run(lab, stop.wait()).await
            })
        }
    }
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
