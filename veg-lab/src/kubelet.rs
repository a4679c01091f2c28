//! The lab's kubelet: it runs a gateway's Deployment (as the controller builds it for a cluster) as network
//! namespaces. Each instance gets eth0 on the internal subnet's switch and net1 a macvlan on the underlay, the
//! addresses Kube-OVN's IPAM would give (the IP pools when the resource names them), the routes of the pod's
//! annotations, and runs the container's `veg gateway` command. It reports each instance as the Pod Kubernetes
//! would show, so the controller reads lab instances exactly as it reads a cluster's. As a kubelet and the
//! Deployment controller do, it stops a pod with SIGTERM and SIGKILLs it after its grace period, rolls a new
//! template out one instance at a time (maxUnavailable 1, maxSurge 0) and only while the others are Ready, and
//! counts a pod Ready when its readiness probe (/readyz) passes and its readiness gate is True.
//!
//! Three things differ from a cluster. A replacement keeps the name of the pod it replaces (gateway1-0) and so
//! waits for it to stop, where a Deployment would create it at once under a new name. And, because the lab has no
//! API server, `--gateway NS/NAME` becomes the policy flags computed the way the agent computes them from the
//! resource, and each instance's pins are named after its pod, since all instances share this host's bpffs.

use std::{
    collections::BTreeMap,
    fs,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use ipnet::Ipv4Net;
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Container, Pod, PodSpec, Probe},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{
    CHASSIS, Lab, container,
    daemons::{alive, stop_pid},
    network::{self, CLIENTS, Switch},
};
use veg_userspace::{
    controller::workload,
    crd::{gateway::VpcEgressGateway, network::Subnet},
    datapath::{pins, policy::Action},
    gateway::resource::policy_of,
};

/// What the lab remembers of an instance (one JSON file each under <lab>/instances/).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Instance {
    pub namespace: String,
    pub pod: String,
    /// The gateway that owns it (namespace/name).
    pub gateway: String,
    pub netns: String,
    pub internal_ip: Ipv4Addr,
    pub external_ip: Ipv4Addr,
    /// Its IPv6 addresses, on a dual-stack switch and external network.
    #[serde(default)]
    pub internal_ipv6: Option<Ipv6Addr>,
    #[serde(default)]
    pub external_ipv6: Option<Ipv6Addr>,
    pub switch: String,
    /// The pid of its `veg gateway`, and when it was started (seconds since the epoch).
    pub pid: i32,
    #[serde(default)]
    pub started: u64,
    /// When the kubelet found its agent dead (0 while it runs).
    #[serde(default)]
    pub died: u64,
    /// When the kubelet sent SIGTERM (0: not stopping), and the seconds it then leaves the agent before SIGKILL
    /// (the pod's terminationGracePeriodSeconds). A stopping instance keeps its name, network and pins until its
    /// agent has exited; its replacement waits for the name.
    #[serde(default)]
    pub terminating: u64,
    #[serde(default)]
    pub grace: u64,
    /// The readiness gate's condition as the controller last set it (OVN routes to the instance).
    #[serde(default)]
    pub routed: bool,
    /// The podman container its agent runs in, when the lab runs instances from the image.
    #[serde(default)]
    pub container: Option<String>,
    /// Liveness probes failed in a row, and the container restarts that made.
    #[serde(default)]
    pub liveness_failures: u32,
    /// When its liveness was last probed (seconds since the epoch).
    #[serde(default)]
    pub liveness_probed: u64,
    #[serde(default)]
    pub restarts: u32,
    /// A digest of what it was started from: a different one means the template changed.
    pub template: String,
}

impl Instance {
    /// Its internal addresses as Kube-OVN writes them: "v4" or "v4,v6".
    pub fn internal_ips(&self) -> String {
        joined(self.internal_ip, self.internal_ipv6)
    }

    /// Its external addresses, likewise.
    pub fn external_ips(&self) -> String {
        joined(self.external_ip, self.external_ipv6)
    }

    pub fn port(&self) -> String {
        format!("{}.{}", self.pod, self.namespace)
    }

    /// The agent's name, which names its pins and BFD control socket.
    pub fn agent_name(&self) -> String {
        format!("{}_{}", self.namespace, self.pod)
    }
}

impl Lab {
    fn instances_dir(&self) -> PathBuf {
        self.dir.join("instances")
    }

    pub fn instances(&self) -> Vec<Instance> {
        let Ok(entries) = fs::read_dir(self.instances_dir()) else {
            return Vec::new();
        };
        let mut all: Vec<Instance> = entries
            .filter_map(|e| Some(e.ok()?.path()))
            // Not a record being written (store::write_atomically's temporary).
            .filter(|path| path.extension().is_some_and(|x| x == "json"))
            .filter_map(|path| fs::read_to_string(path).ok())
            .filter_map(|text| serde_json::from_str(&text).ok())
            .collect();
        all.sort_by(|a, b| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)));
        all
    }

    fn record(&self, instance: &Instance) -> anyhow::Result<()> {
        fs::create_dir_all(self.instances_dir())?;
        let path = self
            .instances_dir()
            .join(format!("{}.{}.json", instance.namespace, instance.pod));
        // Readers (the lab's commands, tests) read the records while instances come and go.
        crate::store::write_atomically(&path, &serde_json::to_string_pretty(instance)?)
    }

    fn forget(&self, instance: &Instance) {
        let _ = fs::remove_file(
            self.instances_dir()
                .join(format!("{}.{}.json", instance.namespace, instance.pod)),
        );
    }

    fn log_path(&self, instance: &Instance) -> PathBuf {
        self.dir.join(format!(
            "instance-{}.{}.log",
            instance.namespace, instance.pod
        ))
    }

    /// Make the gateway's instances what its Deployment asks, and report them as Pods.
    pub fn run_deployment(
        &self,
        deployment: &Deployment,
        gateway: &VpcEgressGateway,
        subnets: &[Subnet],
    ) -> anyhow::Result<Vec<Pod>> {
        let namespace = gateway.namespace().unwrap_or_default();
        let owner = format!("{namespace}/{}", gateway.name_any());
        let name = deployment.name_any();
        let spec = deployment
            .spec
            .as_ref()
            .context("the Deployment has no spec")?;
        let replicas = spec.replicas.unwrap_or(1).max(0) as usize;
        let template = serde_json::to_string(&spec.template)?;
        let template = format!(
            "{:x}",
            Sha256::digest(format!(
                "{template}{}",
                serde_json::to_string(&policy_args(gateway, subnets)?)?
            ))
        );
        // Stopping instances whose agent exited, or whose grace period ran out, go.
        let (gone, mut current): (Vec<Instance>, Vec<Instance>) = self
            .instances()
            .into_iter()
            .filter(|i| i.gateway == owner)
            .partition(|i| {
                i.terminating > 0 && (!alive(i.pid) || now() >= i.terminating + i.grace)
            });
        for instance in &gone {
            self.remove_instance(instance)?;
        }

        // Scale down at once; replace instances started from another template one at a time, and only while
        // every other instance is Ready (maxUnavailable 1, maxSurge 0, as the Deployment asks).
        let wanted = |i: &Instance| index_of(&i.pod, &name).is_some_and(|n| n < replicas);
        for instance in current
            .iter_mut()
            .filter(|i| i.terminating == 0 && !wanted(i))
        {
            self.begin_termination(instance, deployment)?;
        }
        // Each running instance's readiness probe, once a pass: for the rollout here and for its pod below.
        let probed: BTreeMap<String, bool> = current
            .iter()
            .filter(|i| i.terminating == 0)
            .map(|i| (i.pod.clone(), self.containers_ready(i, deployment)))
            .collect();
        let pod_ready = |i: &Instance| probed[&i.pod] && (!gated(deployment) || i.routed);
        let available = current
            .iter()
            .filter(|i| i.terminating == 0 && wanted(i) && pod_ready(i))
            .count();
        let stopping = current
            .iter()
            .filter(|i| i.terminating > 0 && wanted(i))
            .count();
        let outdated = current
            .iter_mut()
            .find(|i| i.terminating == 0 && i.template != template);
        if let Some(outdated) = outdated.filter(|_| available >= replicas && stopping == 0) {
            self.begin_termination(outdated, deployment)?;
        }
        for index in 0..replicas {
            let pod = format!("{name}-{index}");
            match current.iter_mut().find(|i| i.pod == pod) {
                // Its name is still taken by the instance it replaces, which is stopping.
                Some(instance) if instance.terminating > 0 => {}
                // restartPolicy Always: a dead agent is started again, RESTART_BACKOFF after it was found dead.
                Some(instance) if !alive(instance.pid) => {
                    if instance.died == 0 {
                        instance.died = now();
                        self.record(instance)?;
                    } else if now() >= instance.died + RESTART_BACKOFF {
                        self.bring_up(instance, deployment)?;
                        (instance.pid, instance.container) =
                            self.start_agent(instance, deployment, gateway, subnets)?;
                        (instance.started, instance.died) = (now(), 0);
                        self.record(instance)?;
                    }
                }
                Some(instance) => self.check_liveness(instance, deployment)?,
                None => {
                    let instance =
                        self.create_instance(&pod, index, &template, deployment, gateway, subnets)?;
                    current.push(instance);
                }
            }
        }
        current.sort_by(|a, b| a.pod.cmp(&b.pod));
        Ok(current
            .iter()
            .filter(|i| i.terminating == 0)
            .map(|i| {
                // Instances created in this pass were not probed yet.
                let containers_ready = probed
                    .get(&i.pod)
                    .copied()
                    .unwrap_or_else(|| self.containers_ready(i, deployment));
                self.as_pod(i, containers_ready, deployment, gateway, subnets)
            })
            .collect())
    }

    /// Delete the pod as Kubernetes does: SIGTERM now, SIGKILL once the grace period is over (run_deployment).
    fn begin_termination(
        &self,
        instance: &mut Instance,
        deployment: &Deployment,
    ) -> anyhow::Result<()> {
        if alive(instance.pid) {
            // SAFETY: signalling the lab's own agent.
            unsafe { libc::kill(instance.pid, libc::SIGTERM) };
        }
        instance.terminating = now().max(1);
        instance.grace = pod_spec(deployment)
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30)
            .max(0) as u64;
        self.record(instance)
    }

    /// The container runs and its readiness probe passes.
    fn containers_ready(&self, instance: &Instance, deployment: &Deployment) -> bool {
        let probe = main_container(deployment).and_then(|c| c.readiness_probe.as_ref());
        alive(instance.pid) && probe_passes(&instance.netns, probe)
    }

    /// The liveness probe, as a kubelet runs it: after its initial delay, `failureThreshold` (default 3) failures
    /// in a row restart the container. Here the restart is a SIGKILL (a container failing its liveness probe is
    /// presumed hung), and the restart policy brings the agent back after RESTART_BACKOFF. Probed every
    /// periodSeconds (default 10).
    fn check_liveness(
        &self,
        instance: &mut Instance,
        deployment: &Deployment,
    ) -> anyhow::Result<()> {
        let Some(probe) = main_container(deployment).and_then(|c| c.liveness_probe.as_ref()) else {
            return Ok(());
        };
        let delay = probe.initial_delay_seconds.unwrap_or(0).max(0) as u64;
        let period = probe.period_seconds.unwrap_or(10).max(1) as u64;
        if now() < instance.started + delay || now() < instance.liveness_probed + period {
            return Ok(());
        }
        instance.liveness_probed = now();
        if probe_passes(&instance.netns, Some(probe)) {
            instance.liveness_failures = 0;
            return self.record(instance);
        }
        instance.liveness_failures += 1;
        let threshold = probe.failure_threshold.unwrap_or(3).max(1) as u32;
        if instance.liveness_failures >= threshold {
            tracing::warn!(pod = %instance.pod, "liveness probe failed {threshold} times: restarting the container");
            // SAFETY: killing the lab's own agent.
            unsafe { libc::kill(instance.pid, libc::SIGKILL) };
            if let Some(name) = &instance.container {
                container::kill(name);
            }
            instance.liveness_failures = 0;
            instance.restarts += 1;
        }
        self.record(instance)
    }

    /// Record the readiness gate's condition the controller set on an instance's pod.
    pub fn set_routed(&self, namespace: &str, pod: &str, routed: bool) -> anyhow::Result<()> {
        let found = self
            .instances()
            .into_iter()
            .find(|i| i.namespace == namespace && i.pod == pod && i.terminating == 0);
        match found {
            Some(mut instance) if instance.routed != routed => {
                instance.routed = routed;
                self.record(&instance)
            }
            _ => Ok(()),
        }
    }

    fn create_instance(
        &self,
        pod: &str,
        index: usize,
        template: &str,
        deployment: &Deployment,
        gateway: &VpcEgressGateway,
        subnets: &[Subnet],
    ) -> anyhow::Result<Instance> {
        let annotations = pod_annotations(deployment);
        let switch_name = annotations
            .get("ovn.kubernetes.io/logical_switch")
            .context("no logical switch annotation")?;
        let switch: &Switch = network::SWITCHES
            .into_iter()
            .find(|s| s.name == switch_name)
            .with_context(|| {
                format!("the lab has no switch {switch_name:?} (it has ovn-default and subnet1)")
            })?;
        let provider = external_provider(gateway, subnets)?;
        let internal_ip = match pool_entry(annotations.get("ovn.kubernetes.io/ip_pool"), index) {
            Some(ip) => ip,
            None => self.free_address(switch.cidr, switch.gateway, |i| i.internal_ip)?,
        };
        let external_ip = match pool_entry(
            annotations.get(&format!("{provider}.kubernetes.io/ip_pool")),
            index,
        ) {
            Some(ip) => ip,
            None => self.free_address(network::EXTERNAL_CIDR, network::EXTERNAL_GATEWAY, |i| {
                i.external_ip
            })?,
        };
        let namespace = gateway.namespace().unwrap_or_default();
        // IPv6 where the switch and the external subnet have it, by the lab's IPAM rule (network.rs).
        let internal_ipv6 = switch
            .cidr6
            .map(|cidr| network::ipv6_in(cidr, internal_ip))
            .transpose()?;
        let external_ipv6 = external_subnet(gateway, subnets)?
            .spec
            .cidr_block
            .contains(':')
            .then(|| network::ipv6_in(network::EXTERNAL_CIDR6, external_ip))
            .transpose()?;
        let mut instance = Instance {
            started: 0,
            died: 0,
            terminating: 0,
            grace: 0,
            routed: false,
            container: None,
            liveness_failures: 0,
            liveness_probed: 0,
            restarts: 0,
            namespace: namespace.clone(),
            pod: pod.into(),
            gateway: format!("{namespace}/{}", gateway.name_any()),
            netns: self.netns(&format!("{namespace}-{pod}")),
            internal_ip,
            external_ip,
            internal_ipv6,
            external_ipv6,
            switch: switch.name.into(),
            pid: 0,
            template: template.into(),
        };
        // Recorded before anything is built, so that a failure half-way is still cleaned up.
        self.record(&instance)?;
        self.add_netns(&instance.netns)?;
        // A pod's addresses outlive its container's restarts; the kernel drops IPv6 addresses with a link that goes
        // down (as `veg lab kill` takes them) unless told to keep them.
        crate::command::run_in(
            &instance.netns,
            "sysctl",
            &["-qw", "net.ipv6.conf.all.keep_addr_on_down=1"],
        )?;
        self.attach(
            &instance.netns,
            switch,
            &instance.port(),
            internal_ip,
            false,
        )?;
        self.attach_underlay(&instance.netns, external_ip, external_ipv6)?;
        self.bring_up(&instance, deployment)?;
        (instance.pid, instance.container) =
            self.start_agent(&instance, deployment, gateway, subnets)?;
        instance.started = now();
        self.record(&instance)?;
        Ok(instance)
    }

    /// The instance's interfaces up and its routes in place, as the CNI leaves a (re)started pod: the routes of
    /// the pod's annotation through the VPC, everything else out of net1.
    fn bring_up(&self, instance: &Instance, deployment: &Deployment) -> anyhow::Result<()> {
        let in_ns = |args: &[&str]| crate::command::run_in(&instance.netns, "ip", args);
        // The pod's sysctls, as the container runtime sets them in the pod's namespace.
        let sysctls = pod_spec(deployment)
            .and_then(|s| s.security_context.as_ref())
            .and_then(|c| c.sysctls.as_ref());
        for sysctl in sysctls.into_iter().flatten() {
            let setting = format!("{}={}", sysctl.name, sysctl.value);
            crate::command::run_in(&instance.netns, "sysctl", &["-qw", &setting])?;
        }
        in_ns(&["link", "set", "eth0", "up"])?;
        in_ns(&["link", "set", "net1", "up"])?;
        for (destination, via) in
            routes(pod_annotations(deployment).get("ovn.kubernetes.io/routes"))
        {
            in_ns(&["route", "replace", &destination, "via", &via, "dev", "eth0"])?;
        }
        in_ns(&[
            "route",
            "replace",
            "default",
            "via",
            network::EXTERNAL_GATEWAY,
            "dev",
            "net1",
        ])?;
        if instance.external_ipv6.is_some() {
            in_ns(&[
                "-6",
                "route",
                "replace",
                "default",
                "via",
                network::EXTERNAL_GATEWAY6,
                "dev",
                "net1",
            ])?;
        }
        Ok(())
    }

    /// The lowest address of `cidr` from .10 on that no client, gateway or instance holds.
    fn free_address(
        &self,
        cidr: &str,
        gateway: &str,
        taken_by: impl Fn(&Instance) -> Ipv4Addr,
    ) -> anyhow::Result<Ipv4Addr> {
        let net: Ipv4Net = cidr.parse()?;
        let mut taken: Vec<Ipv4Addr> = self.instances().iter().map(taken_by).collect();
        taken.push(gateway.parse()?);
        taken.extend(CLIENTS.iter().filter_map(|c| c.2.parse::<Ipv4Addr>().ok()));
        net.hosts()
            .skip(9)
            .find(|a| !taken.contains(a))
            .with_context(|| format!("no free address left in {cidr}"))
    }

    /// Start the container's command in the instance: `veg gateway` with the lab's two substitutions, run as the
    /// veg binary itself or, when the lab runs the image, in a container. Returns the pid to watch, and the
    /// container's name.
    fn start_agent(
        &self,
        instance: &Instance,
        deployment: &Deployment,
        gateway: &VpcEgressGateway,
        subnets: &[Subnet],
    ) -> anyhow::Result<(i32, Option<String>)> {
        let pod = pod_spec(deployment).context("the Deployment has no pod spec")?;
        let image = container::image(&self.dir);
        let veg_path = crate::command::veg_binary()?;
        let veg = veg_path.to_string_lossy();
        // The init containers first, each to completion, as a kubelet runs them.
        for init in pod.init_containers.iter().flatten() {
            let args = init.args.clone().unwrap_or_default();
            let ran = match &image {
                Some(image) => {
                    let name = format!("{}-{}", instance.netns, init.name);
                    let at = container::Placement {
                        image,
                        lab_prefix: &self.prefix,
                        name: &name,
                        hostname: &instance.pod,
                        netns: &instance.netns,
                    };
                    let run = container::run_args(&at, pod, init, &args);
                    crate::command::run(
                        "podman",
                        &run.iter().map(String::as_str).collect::<Vec<_>>(),
                    )
                }
                None => {
                    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
                    args.extend(["--netns", &instance.netns]);
                    crate::command::run(&veg, &args)
                }
            };
            ran.with_context(|| format!("init container {} of {}", init.name, instance.pod))?;
        }
        let main = pod
            .containers
            .first()
            .context("the Deployment has no container")?;
        let mut args: Vec<String> = Vec::new();
        let mut given = main.args.clone().unwrap_or_default().into_iter();
        while let Some(arg) = given.next() {
            match arg.as_str() {
                "--gateway" => {
                    given.next();
                    args.extend(policy_args(gateway, subnets)?);
                }
                "--name" => {
                    given.next();
                    args.extend(["--name".into(), instance.agent_name()]);
                }
                _ => args.push(arg.replace("$(EXTERNAL_IP)", &instance.external_ips())),
            }
        }
        let log = self.log_path(instance);
        match image {
            Some(image) => {
                let name = instance.netns.clone();
                // A container of that name left by a lab that went down uncleanly would refuse the name.
                container::remove(&name);
                let at = container::Placement {
                    image: &image,
                    lab_prefix: &self.prefix,
                    name: &name,
                    hostname: &instance.pod,
                    netns: &instance.netns,
                };
                let run = container::run_args(&at, pod, main, &args);
                let run: Vec<&str> = run.iter().map(String::as_str).collect();
                let pid =
                    crate::command::spawn_detached(Path::new("podman"), &run, &log, "veg gateway")?;
                Ok((pid, Some(name)))
            }
            None => {
                args.extend(["--netns".into(), instance.netns.clone()]);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let pid = crate::command::spawn_detached(&veg_path, &args, &log, "veg gateway")?;
                Ok((pid, None))
            }
        }
    }

    /// The instance dies, as a pod whose node fails: its agent is killed (its programs stay attached, pinned) and
    /// its interfaces go down, so it answers nothing, BFD included. The kubelet restarts it after a while.
    pub fn kill_instance(&self, namespace: &str, pod: &str) -> anyhow::Result<Instance> {
        let instance = self
            .instances()
            .into_iter()
            .find(|i| i.namespace == namespace && i.pod == pod)
            .with_context(|| {
                format!("no instance {namespace}/{pod} in the lab (`veg lab status` lists them)")
            })?;
        // Interfaces first: a restart that comes in between must not find them up.
        for interface in ["eth0", "net1"] {
            crate::command::run_in(&instance.netns, "ip", &["link", "set", interface, "down"])?;
        }
        // SAFETY: killing the lab's own agent (or its container's podman, which does not pass SIGKILL on).
        unsafe { libc::kill(instance.pid, libc::SIGKILL) };
        if let Some(name) = &instance.container {
            container::kill(name);
        }
        Ok(instance)
    }

    /// Stop the agent now (a second SIGTERM cuts its drain short; it detaches and keeps its pins), take the
    /// instance off the network, remove its pins.
    pub fn remove_instance(&self, instance: &Instance) -> anyhow::Result<()> {
        if instance.pid > 0 && alive(instance.pid) {
            if instance.terminating == 0 {
                // SAFETY: signalling the lab's own agent.
                unsafe { libc::kill(instance.pid, libc::SIGTERM) };
                std::thread::sleep(Duration::from_millis(100));
            }
            stop_pid(instance.pid, Duration::from_secs(5));
        }
        if let Some(name) = &instance.container {
            container::remove(name);
        }
        let _ = self.detach(&instance.netns, &instance.port());
        if self.namespaces().contains(&instance.netns) {
            crate::command::run("ip", &["netns", "del", &instance.netns])?;
        }
        let _ = pins::remove_gateway_pins(&instance.agent_name());
        self.forget(instance);
        Ok(())
    }

    /// The instance as the Pod Kubernetes would show: Kube-OVN's address annotations, its node, its readiness
    /// (Ready as a kubelet computes it: the container's readiness probe passes and the readiness gate is True).
    fn as_pod(
        &self,
        instance: &Instance,
        containers_ready: bool,
        deployment: &Deployment,
        gateway: &VpcEgressGateway,
        subnets: &[Subnet],
    ) -> Pod {
        let provider = external_provider(gateway, subnets).unwrap_or_default();
        let labels = deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let status = |yes: bool| if yes { "True" } else { "False" };
        let ready = containers_ready && (!gated(deployment) || instance.routed);
        let mut conditions = vec![
            json!({ "type": "ContainersReady", "status": status(containers_ready) }),
            json!({ "type": "Ready", "status": status(ready) }),
        ];
        if gated(deployment) {
            conditions.push(
                json!({ "type": workload::ROUTED_CONDITION, "status": status(instance.routed) }),
            );
        }
        serde_json::from_value(json!({
            "metadata": {
                "name": instance.pod, "namespace": instance.namespace, "labels": labels,
                "annotations": {
                    "ovn.kubernetes.io/allocated": "true",
                    "ovn.kubernetes.io/ip_address": instance.internal_ips(),
                    format!("{provider}.kubernetes.io/allocated"): "true",
                    format!("{provider}.kubernetes.io/ip_address"): instance.external_ips(),
                },
            },
            "spec": { "nodeName": CHASSIS, "containers": [] },
            "status": { "conditions": conditions },
        }))
        .expect("a valid Pod")
    }
}

/// "v4" or "v4,v6", as Kube-OVN joins a dual-stack pod's addresses.
fn joined(v4: Ipv4Addr, v6: Option<Ipv6Addr>) -> String {
    match v6 {
        Some(v6) => format!("{v4},{v6}"),
        None => v4.to_string(),
    }
}

/// Seconds from finding an agent dead to starting it again (Kubernetes' CrashLoopBackOff, simplified).
const RESTART_BACKOFF: u64 = 2;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The position of `pod` among the Deployment `name`'s instances (<name>-<n>).
fn index_of(pod: &str, name: &str) -> Option<usize> {
    pod.strip_prefix(name)?.strip_prefix('-')?.parse().ok()
}

/// Whether the pods have the readiness gate the controller sets (the only one it knows).
fn gated(deployment: &Deployment) -> bool {
    pod_spec(deployment)
        .and_then(|s| s.readiness_gates.as_ref())
        .is_some_and(|gates| {
            gates
                .iter()
                .any(|g| g.condition_type == workload::ROUTED_CONDITION)
        })
}

fn main_container(deployment: &Deployment) -> Option<&Container> {
    pod_spec(deployment)?.containers.first()
}

fn pod_spec(deployment: &Deployment) -> Option<&PodSpec> {
    deployment.spec.as_ref()?.template.spec.as_ref()
}

fn pod_annotations(deployment: &Deployment) -> BTreeMap<String, String> {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default()
}

fn external_subnet<'a>(
    gateway: &VpcEgressGateway,
    subnets: &'a [Subnet],
) -> anyhow::Result<&'a Subnet> {
    let external = &gateway.spec.external_subnet;
    subnets
        .iter()
        .find(|s| s.name_any() == *external)
        .with_context(|| format!("no subnet {external:?}"))
}

fn external_provider(gateway: &VpcEgressGateway, subnets: &[Subnet]) -> anyhow::Result<String> {
    Ok(external_subnet(gateway, subnets)?.spec.provider.clone())
}

/// The IPv4 address at `index` of an IP pool annotation ("a;b;c", each entry "v4" or "v4,v6").
fn pool_entry(pool: Option<&String>, index: usize) -> Option<Ipv4Addr> {
    let entry = pool?.split(';').nth(index)?;
    entry.split(',').find_map(|a| a.trim().parse().ok())
}

/// The routes of a routes annotation, both families: (destination, gateway).
fn routes(annotation: Option<&String>) -> Vec<(String, String)> {
    let parsed: Vec<serde_json::Value> = annotation
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_default();
    parsed
        .iter()
        .filter_map(|r| Some((r["dst"].as_str()?.to_owned(), r["gw"].as_str()?.to_owned())))
        .map(|(dst, gw)| {
            let host = if dst.contains(':') { "/128" } else { "/32" };
            (
                if dst.contains('/') {
                    dst
                } else {
                    format!("{dst}{host}")
                },
                gw,
            )
        })
        .collect()
}

/// What `--gateway NS/NAME` would make of the resource, as flags.
fn policy_args(gateway: &VpcEgressGateway, subnets: &[Subnet]) -> anyhow::Result<Vec<String>> {
    let policy = policy_of(gateway, subnets).map_err(|e| anyhow::anyhow!(e))?;
    if policy.is_empty() {
        bail!("the gateway gives no source");
    }
    Ok(policy
        .iter()
        .flat_map(|(net, action)| {
            let flag = match action {
                Action::Snat => "--snat",
                Action::Forward => "--forward",
            };
            [flag.to_owned(), net.to_string()]
        })
        .collect())
}

/// Whether a probe of the pod's container passes: its HTTP GET (path and port) answered 200 from inside `netns`
/// within a second, as a kubelet's probe with the default timeout. A container without the probe passes.
fn probe_passes(netns: &str, probe: Option<&Probe>) -> bool {
    let Some(get) = probe.and_then(|p| p.http_get.as_ref()) else {
        return true;
    };
    let port = match &get.port {
        IntOrString::Int(port) => *port as u16,
        IntOrString::String(_) => return false,
    };
    let path = get.path.clone().unwrap_or_else(|| "/".into());
    let netns = netns.to_owned();
    std::thread::spawn(move || -> Option<bool> {
        veg_userspace::netns::enter(&netns).ok()?;
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let mut stream =
            std::net::TcpStream::connect_timeout(&address, Duration::from_millis(300)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_millis(700)))
            .ok()?;
        use std::io::{Read, Write};
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        Some(answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"))
    })
    .join()
    .ok()
    .flatten()
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_routes_and_indexes_read_as_the_cluster_writes_them() {
        assert_eq!(
            pool_entry(Some(&"10.16.0.5;10.16.0.6,fd00::6".into()), 1),
            Some(Ipv4Addr::new(10, 16, 0, 6))
        );
        assert_eq!(pool_entry(Some(&"10.16.0.5".into()), 1), None);
        assert_eq!(
            routes(Some(&r#"[{"dst":"10.255.255.255","gw":"192.168.0.1"},{"dst":"fd00::/64","gw":"fd00::1"},{"dst":"10.16.0.0/16","gw":"10.16.0.1"}]"#.into())),
            [
                ("10.255.255.255/32".to_owned(), "192.168.0.1".to_owned()),
                ("fd00::/64".to_owned(), "fd00::1".to_owned()),
                ("10.16.0.0/16".to_owned(), "10.16.0.1".to_owned())
            ]
        );
        assert_eq!(index_of("gateway1-3", "gateway1"), Some(3));
        assert_eq!(index_of("gateway10-3", "gateway1"), None);
    }
}
