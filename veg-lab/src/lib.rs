//! The lab: the whole gateway on one machine with real OVN. `veg lab up` starts OVN and Open vSwitch as plain
//! processes and builds a cluster-like network of network namespaces (see network.rs); `veg lab down` removes all
//! of it; `veg lab status` says what runs. Everything the lab creates is named after its prefix (namespaces) or
//! lives in its directory (databases, sockets, pidfiles, logs), so that `down` finds it all.

pub mod command;
pub mod container;
pub mod controller;
pub mod daemons;
pub mod kubelet;
pub mod network;
pub mod store;

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Context as _;
use sha2::{Digest, Sha256};

use command::{run, run_with_env};

/// The lab's only chassis, and the node every instance reports.
pub const CHASSIS: &str = "kube-ovn-worker";
pub const DEFAULT_DIR: &str = "/run/veg-lab";
pub const DEFAULT_PREFIX: &str = "veglab";
/// The pidfile name of the lab's controller.
const CONTROLLER: &str = "lab-controller";

pub struct Lab {
    /// Databases, sockets, pidfiles, logs and the lab's state.
    pub dir: PathBuf,
    /// Every network namespace of the lab is named <prefix>-<name>.
    pub prefix: String,
}

impl Lab {
    pub fn new(dir: impl Into<PathBuf>, prefix: &str) -> Lab {
        Lab {
            dir: dir.into(),
            prefix: prefix.into(),
        }
    }

    fn dir_str(&self) -> &str {
        self.dir.to_str().expect("the lab directory is UTF-8")
    }

    pub fn netns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Where ovs-vswitchd, ovn-controller and the host ends of every veth live.
    pub fn host_netns(&self) -> String {
        self.netns("host")
    }

    pub fn underlay_netns(&self) -> String {
        self.netns("underlay")
    }

    /// The external server, also the external subnet's gateway.
    pub fn external_netns(&self) -> String {
        self.netns("external")
    }

    /// A short interface name (at most 15 characters) unique to `netns`.
    fn host_end(&self, netns: &str) -> String {
        let digest = Sha256::digest(netns.as_bytes());
        let hex: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
        format!("h{hex}")
    }

    pub fn nb(&self) -> String {
        format!("unix:{}/nb.sock", self.dir_str())
    }

    pub fn nbctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let db = format!("--db={}", self.nb());
        run("ovn-nbctl", &[&[db.as_str()][..], args].concat())
    }

    pub fn sbctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let db = format!("--db=unix:{}/sb.sock", self.dir_str());
        run("ovn-sbctl", &[&[db.as_str()][..], args].concat())
    }

    pub fn vsctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let db = format!("--db=unix:{}/conf.sock", self.dir_str());
        run_with_env(
            "ovs-vsctl",
            &[&[db.as_str()][..], args].concat(),
            &[("OVS_RUNDIR", self.dir_str())],
        )
    }

    fn add_netns(&self, name: &str) -> anyhow::Result<()> {
        run("ip", &["netns", "add", name])?;
        command::run_in(name, "ip", &["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// The lab's namespaces that exist now.
    pub fn namespaces(&self) -> Vec<String> {
        let listed = run("ip", &["netns", "list"]).unwrap_or_default();
        let mine = format!("{}-", self.prefix);
        listed
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&mine))
            .map(str::to_owned)
            .collect()
    }

    /// Start everything. A lab that is already (partly) there is taken down first, so `up` always ends in a
    /// fresh lab.
    /// Build the lab; its instances run from `image` when given (see container.rs).
    pub fn up(&self, image: Option<&str>, out: &mut impl Write) -> anyhow::Result<()> {
        let started = Instant::now();
        if let Some(image) = image {
            run("podman", &["image", "exists", image]).with_context(|| {
                format!("no image {image}: build it with `cargo xtask image --tag {image}`")
            })?;
        }
        if self.dir.exists() || !self.namespaces().is_empty() {
            writeln!(out, "lab: removing the previous lab first")?;
            self.down(&mut std::io::sink())?;
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        container::set_image(&self.dir, image)?;
        let result = self.build(out);
        if result.is_err() {
            // Leave nothing half-built behind.
            let _ = self.down(&mut std::io::sink());
        }
        result?;
        writeln!(
            out,
            "lab: up in {:.1} s (`veg lab status`, `veg lab down`)",
            started.elapsed().as_secs_f64()
        )?;
        Ok(())
    }

    fn build(&self, out: &mut impl Write) -> anyhow::Result<()> {
        writeln!(
            out,
            "lab: starting OVN (Northbound, Southbound, northd) and Open vSwitch (userspace datapath)"
        )?;
        self.add_netns(&self.host_netns())?;
        daemons::start(&self.dir, &self.host_netns(), CHASSIS)?;
        writeln!(
            out,
            "lab: routers ovn-cluster and vpc1 (bound to chassis {CHASSIS}), switches ovn-default and subnet1"
        )?;
        self.build_switches()?;
        writeln!(
            out,
            "lab: client pods {}",
            network::CLIENTS.map(|c| c.0).join(", ")
        )?;
        self.build_clients()?;
        writeln!(
            out,
            "lab: underlay with the external server {}",
            network::EXTERNAL_GATEWAY
        )?;
        self.build_underlay()?;
        // Everything bound and flows installed before anyone sends traffic.
        self.nbctl(&["--wait=hv", "--timeout=30", "sync"])
            .context("waiting for ovn-controller to install the flows")?;
        writeln!(
            out,
            "lab: the cluster's resources: Subnets ovn-default, subnet1 and macvlan1 (both dual-stack); Vpc vpc1"
        )?;
        self.put_builtin_resources()?;
        writeln!(
            out,
            "lab: the controller in lab mode (log: {})",
            self.path("controller-lab.log").display()
        )?;
        self.start_controller()?;
        Ok(())
    }

    /// Stop every daemon and remove every namespace and file of the lab. Safe to run on a lab that is not there.
    pub fn down(&self, out: &mut impl Write) -> anyhow::Result<()> {
        // The controller first, so that it does not restart the instances stopped next.
        if let Some(pid) = daemons::pid(&self.dir, CONTROLLER) {
            daemons::stop_pid(pid, std::time::Duration::from_secs(5));
        }
        for instance in self.instances() {
            self.remove_instance(&instance)
                .with_context(|| format!("removing instance {}", instance.pod))?;
        }
        if container::image(&self.dir).is_some() {
            container::remove_all(&self.prefix);
        }
        daemons::stop(&self.dir);
        let namespaces = self.namespaces();
        for netns in &namespaces {
            run("ip", &["netns", "del", netns])
                .with_context(|| format!("removing namespace {netns}"))?;
        }
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir)
                .with_context(|| format!("removing {}", self.dir.display()))?;
        }
        writeln!(out, "lab: down ({} namespace(s) removed)", namespaces.len())?;
        Ok(())
    }

    /// What a Kube-OVN cluster has before anyone adds a gateway: the subnets and the custom VPC.
    fn put_builtin_resources(&self) -> anyhow::Result<()> {
        let store = store::Store::new(&self.dir);
        let builtin = format!(
            "apiVersion: kubeovn.io/v1\nkind: Subnet\nmetadata: {{name: ovn-default}}\n\
             spec: {{cidrBlock: {}, gateway: {}, protocol: IPv4, provider: ovn, vpc: ovn-cluster}}\n---\n\
             apiVersion: kubeovn.io/v1\nkind: Subnet\nmetadata: {{name: subnet1}}\n\
             spec: {{cidrBlock: '{},{}', gateway: '{},{}', protocol: Dual, provider: ovn, vpc: vpc1}}\n---\n\
             apiVersion: kubeovn.io/v1\nkind: Subnet\nmetadata: {{name: macvlan1}}\n\
             spec: {{cidrBlock: '{},{}', gateway: '{},{}', protocol: Dual, provider: macvlan1.default}}\n---\n\
             apiVersion: kubeovn.io/v1\nkind: Vpc\nmetadata: {{name: vpc1}}\nspec: {{}}\nstatus: {{defaultLogicalSwitch: subnet1}}\n",
            network::DEFAULT_SWITCH.cidr,
            network::DEFAULT_SWITCH.gateway,
            network::VPC1_SWITCH.cidr,
            network::VPC1_SWITCH.cidr6.unwrap_or_default(),
            network::VPC1_SWITCH.gateway,
            network::VPC1_SWITCH.gateway6.unwrap_or_default(),
            network::EXTERNAL_CIDR,
            network::EXTERNAL_CIDR6,
            network::EXTERNAL_GATEWAY,
            network::EXTERNAL_GATEWAY6,
        );
        for (name, value) in store::parse_manifest(&builtin)? {
            store.put(&name, value)?;
        }
        Ok(())
    }

    /// Restart a component the way a failure would: `controller` (the lab's controller; it must change nothing
    /// in OVN when it comes back), or `nb` (the Northbound ovsdb-server, killed and started again on its database
    /// file; every client must reconnect and converge).
    pub fn restart(&self, component: &str, out: &mut impl Write) -> anyhow::Result<()> {
        require_up(&self.dir)?;
        match component {
            "controller" => {
                if let Some(pid) = daemons::pid(&self.dir, CONTROLLER) {
                    daemons::stop_pid(pid, std::time::Duration::from_secs(5));
                }
                self.start_controller()?;
            }
            "nb" => {
                if let Some(pid) = daemons::pid(&self.dir, "nb") {
                    // SAFETY: killing the lab's own database server, as a crash would.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    daemons::stop_pid(pid, std::time::Duration::from_secs(5));
                }
                daemons::start_database(&self.dir, "nb")?;
            }
            other => anyhow::bail!("cannot restart {other:?}: restart controller or nb"),
        }
        writeln!(out, "lab: {component} restarted")?;
        Ok(())
    }

    /// `veg lab controller` in the background, detached, with its pidfile and log in the lab's directory.
    fn start_controller(&self) -> anyhow::Result<()> {
        let this = std::env::current_exe().context("finding the veg-lab binary")?;
        let args = [
            "--dir",
            self.dir_str(),
            "--prefix",
            &self.prefix,
            "controller",
        ];
        let log = self.path("controller-lab.log");
        let pid = command::spawn_detached(&this, &args, &log, "the lab's controller")?;
        std::fs::write(self.path(&format!("{CONTROLLER}.pid")), pid.to_string())?;
        Ok(())
    }

    /// Say what runs; true when the whole lab does.
    pub fn status(&self, out: &mut impl Write) -> anyhow::Result<bool> {
        if !self.dir.exists() {
            writeln!(out, "lab: not up (`veg lab up` starts it)")?;
            return Ok(false);
        }
        let mut healthy = true;
        let controller = daemons::pid(&self.dir, CONTROLLER).is_some_and(daemons::alive);
        for (daemon, running) in daemons::status(&self.dir)
            .into_iter()
            .chain([(CONTROLLER, controller)])
        {
            let state = if running { "running" } else { "NOT RUNNING" };
            writeln!(out, "daemon {daemon:<14} {state}")?;
            healthy &= running;
        }
        for instance in self.instances() {
            let state = match (daemons::alive(instance.pid), instance.terminating > 0) {
                (true, true) => "stopping: draining",
                (true, false) => "running",
                (false, _) => "NOT RUNNING",
            };
            writeln!(
                out,
                "instance {}/{} of {}: eth0 {} net1 {} ({state})",
                instance.namespace,
                instance.pod,
                instance.gateway,
                instance.internal_ip,
                instance.external_ip
            )?;
        }
        let chassis = self
            .sbctl(&["--bare", "--columns=name", "list", "Chassis"])
            .unwrap_or_default();
        let registered = chassis.split_whitespace().any(|c| c == CHASSIS);
        writeln!(
            out,
            "chassis {CHASSIS:<10} {}",
            if registered {
                "registered"
            } else {
                "NOT REGISTERED"
            }
        )?;
        healthy &= registered;
        let namespaces = self.namespaces();
        writeln!(out, "namespaces: {}", namespaces.join(" "))?;
        writeln!(
            out,
            "Northbound: {} (ovn-nbctl --db={} show)",
            self.nb(),
            self.nb()
        )?;
        Ok(healthy)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

/// Is `dir` a lab directory (for commands that need a running lab)?
pub fn require_up(dir: &Path) -> anyhow::Result<()> {
    if !dir.join("nb.sock").exists() {
        anyhow::bail!(
            "the lab is not up ({} has no nb.sock): run `cargo xtask lab up` first",
            dir.display()
        );
    }
    Ok(())
}
