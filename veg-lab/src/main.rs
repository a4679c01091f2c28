//! `veg-lab` (run as `veg lab ...`): the whole gateway on this machine with real OVN and Open vSwitch, pods and
//! instances as network namespaces. A binary of its own so that veg as shipped carries no lab code.

use std::{
    io::{self, Write as _},
    path::PathBuf,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use veg_lab::{Lab, controller, require_up, store};
use veg_userspace::gateway::agent;

/// The lab: the whole gateway on this machine with real OVN and Open vSwitch, pods and instances as network
/// namespaces (run as root).
#[derive(Parser)]
#[command(name = "veg lab", bin_name = "veg lab", version)]
struct LabArgs {
    /// Where the lab keeps its databases, sockets, pidfiles, logs and state.
    #[arg(long, global = true, value_name = "DIR", default_value = veg_lab::DEFAULT_DIR)]
    dir: PathBuf,
    /// Prefix of every network namespace of the lab.
    #[arg(long, global = true, value_name = "PREFIX", default_value = veg_lab::DEFAULT_PREFIX)]
    prefix: String,
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Subcommand)]
enum LabCommand {
    /// Start OVN and Open vSwitch and build the network (a lab already there is replaced).
    Up {
        /// Run the gateways' instances from this image (podman, with the capabilities and mounts their
        /// Deployment grants) instead of the veg binary; `cargo xtask image` builds it.
        #[arg(long, value_name = "IMAGE")]
        image: Option<String>,
    },
    /// Stop everything and remove every namespace and file of the lab.
    Down,
    /// Say what runs; exits 1 when the lab is not (fully) up.
    Status,
    /// Create or update the resources in FILE (VpcEgressGateway, Vpc, Subnet YAML or JSON, as for `kubectl
    /// apply`): any number of documents per file, `kind: List` too. Every resource is checked before any is
    /// applied.
    Apply {
        /// A file, a directory (its .yaml, .yml and .json files), or - for standard input; repeat for more.
        #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
        files: Vec<PathBuf>,
    },
    /// Delete the resources in FILE; the controller removes a deleted gateway's instances and OVN rows.
    Delete {
        /// A file, a directory (its .yaml, .yml and .json files), or - for standard input; repeat for more.
        #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
        files: Vec<PathBuf>,
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

fn main() {
    let args = LabArgs::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(io::stderr)
        .init();
    if let Err(e) = run(args) {
        eprintln!("veg lab: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: LabArgs) -> anyhow::Result<()> {
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
        LabCommand::Up { image } => lab.up(image.as_deref(), &mut out),
        LabCommand::Down => lab.down(&mut out),
        LabCommand::Status => {
            if !lab.status(&mut out)? {
                std::process::exit(1);
            }
            Ok(())
        }
        LabCommand::Apply { files } | LabCommand::Delete { files }
            if !args.dir.join("nb.sock").exists() =>
        {
            require_up(&args.dir).with_context(|| format!("cannot use {}", shown(&files)))
        }
        LabCommand::Apply { files } => {
            for (name, value) in read_manifests(&files)? {
                store.put(&name, value)?;
                writeln!(out, "{name} configured")?;
            }
            Ok(())
        }
        LabCommand::Delete { files } => {
            for (name, _) in read_manifests(&files)? {
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
            get(
                &store,
                name.as_deref(),
                &namespace,
                output.as_deref(),
                &mut out,
            )
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
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async {
                    let stop = agent::StopSignals::install()?;
                    controller::run(lab, stop.wait()).await
                })
        }
    }
}

/// The resources of every file, directory and `-` (standard input) given, each checked, in the order given
/// (a directory's files by name). Nothing is returned unless all of them are valid.
fn read_manifests(files: &[PathBuf]) -> anyhow::Result<Vec<(store::Name, serde_json::Value)>> {
    let mut resources = Vec::new();
    for file in files {
        for file in expand(file)? {
            let yaml = if file.as_os_str() == "-" {
                io::read_to_string(io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            resources.extend(
                store::parse_manifest(&yaml).with_context(|| format!("in {}", file.display()))?,
            );
        }
    }
    if resources.is_empty() {
        anyhow::bail!("{} hold(s) no resource", shown(files));
    }
    Ok(resources)
}

/// A directory's manifest files sorted by name, or the file itself.
fn expand(path: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("reading the directory {}", path.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        })
        .collect();
    files.sort();
    if files.is_empty() {
        anyhow::bail!("{} holds no .yaml, .yml or .json file", path.display());
    }
    Ok(files)
}

fn shown(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `veg lab get veg [NAME] [-n NAMESPACE] [-o wide]`, as kubectl prints it.
fn get(
    store: &store::Store,
    name: Option<&str>,
    namespace: &str,
    output: Option<&str>,
    out: &mut impl io::Write,
) -> anyhow::Result<()> {
    let wide = match output {
        None => false,
        Some("wide") => true,
        Some(other) => anyhow::bail!("-o {other}: the lab prints the table or -o wide"),
    };
    let gateways: Vec<_> = store
        .gateways()
        .into_iter()
        .filter(|g| g.metadata.namespace.as_deref() == Some(namespace))
        .filter(|g| name.is_none_or(|n| g.metadata.name.as_deref() == Some(n)))
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
