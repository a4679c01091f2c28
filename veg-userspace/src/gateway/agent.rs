//! The agent's life: check the instance, load and configure the datapath, attach it, sweep expired flows, and on
//! SIGTERM or SIGINT detach while keeping the pinned state, so that a restarted agent keeps every live flow.
//!
//! The kernel never forwards between the instance's two interfaces: the agent turns their IPv4 forwarding off
//! before anything else, and only the programs move packets between them (their route lookups use the loopback
//! interface's forwarding setting, which the agent turns on). Without the programs nothing crosses untranslated:
//! while the agent starts, crash-loops or restarts, packets are dropped (TCP retransmits) rather than leaked.

use std::{
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::watch,
};
use tracing::{info, warn};
use veg_common::{address::Address, config::GatewayConfig};

use super::{
    bandwidth::{self, BitRate, Shapers},
    health, host,
    metrics::{AgentFacts, Metrics},
    records::{self, Records},
    settings::{ExternalAddresses, GatewaySettings},
    uplink,
};
use veg_bfd::{
    control,
    engine::{Engine, EngineConfig, Snapshot},
    session::Role,
};

use crate::datapath::{
    TableSizes,
    loader::Datapath,
    pins,
    policy::{Action, DesiredPolicy},
    records::{Origin, TranslationRecord},
    slow_path::SlowPath,
};

/// Where the instance lock and the records socket live.
pub const RUN_DIR: &str = "/run/veg";

/// A started instance: the attached datapath, and the BFD engine toward the VPC when configured.
pub struct Running {
    datapath: Datapath,
    /// How many ports a remote endpoint can be given per protocol.
    range_ports: u32,
    _lock: host::InstanceLock,
    /// The external addresses translated to: the settings', less IPv6 when its route lookups cannot be opened.
    external: ExternalAddresses,
    /// Whether the agent turned IPv6 route lookups on itself (rather than the pod's sysctls).
    opened_ipv6_lookups: bool,
    bfd: Option<Engine>,
    bfd_status: Arc<Mutex<Snapshot>>,
    /// The shapers of the bandwidth limits, removed when the agent stops.
    shapers: Shapers,
}

/// The internal interface's address of each family the BFD peers have (IPv4, IPv6, or both on a dual-stack VPC).
fn bfd_listen_addresses(interface: &str, peers: &[IpAddr]) -> anyhow::Result<Vec<IpAddr>> {
    let mut listen = Vec::new();
    if peers.iter().any(IpAddr::is_ipv4) {
        let v4 = host::interface_ipv4_addresses(interface)?.first().copied();
        listen.push(IpAddr::V4(v4.with_context(|| {
            format!("{interface} has no IPv4 address for BFD toward IPv4 peers: give --bfd-listen")
        })?));
    }
    if peers.iter().any(IpAddr::is_ipv6) {
        let v6 = host::interface_ipv6_addresses(interface)?.first().copied();
        listen.push(IpAddr::V6(v6.with_context(|| {
            format!("{interface} has no global IPv6 address for BFD toward IPv6 peers: give --bfd-listen")
        })?));
    }
    Ok(listen)
}

/// The BFD engine of the instance: passive, as the reference's instances wait for OVN to start the session.
fn bfd_engine(
    settings: &GatewaySettings,
    status: &Arc<Mutex<Snapshot>>,
) -> anyhow::Result<Option<Engine>> {
    let Some(bfd) = &settings.bfd else {
        return Ok(None);
    };
    let listen = if bfd.listen.is_empty() {
        bfd_listen_addresses(&settings.internal_interface, &bfd.peers)?
    } else {
        bfd.listen.clone()
    };
    let config = EngineConfig {
        listen,
        peers: bfd.peers.clone(),
        timers: bfd.timers,
        min_ttl: bfd.min_ttl,
        role: Role::Passive,
    };
    Ok(Some(Engine::new(config, status.clone())?))
}

/// Everything up to the point where packets flow. Runs in the instance's network namespace, inside the runtime.
pub fn start(settings: &GatewaySettings) -> anyhow::Result<Running> {
    let lock = host::InstanceLock::acquire(Path::new(RUN_DIR), &settings.name)?;
    host::close_kernel_forwarding(&settings.internal_interface, &settings.external_interface)?;
    let internal_ifindex = host::interface_index(&settings.internal_interface, "internal")?;
    let external_ifindex = host::interface_index(&settings.external_interface, "external")?;
    for address in settings.external_ip.all() {
        host::check_external_address(&settings.external_interface, address)?;
    }
    // The source of the ICMP errors the instance sends into the VPC; without one they are not sent (counted).
    let internal_ip = host::interface_ipv4_addresses(&settings.internal_interface)?
        .first()
        .copied();
    let internal_ipv6 = host::interface_ipv6_addresses(&settings.internal_interface)?
        .first()
        .copied();
    if internal_ip.is_none() {
        warn!(
            interface = %settings.internal_interface,
            "no IPv4 address on the internal interface: ICMP errors toward VPC clients will not be sent"
        );
    }
    let internal_peer = host::peer_redirect_allowed(&settings.internal_interface, internal_ifindex).unwrap_or_else(|e| {
        warn!(
            interface = %settings.internal_interface,
            error = %e,
            "could not tell what kind of link the internal interface is: packets toward the VPC go through its transmit"
        );
        false
    });
    let port_range = host::translation_port_range(settings.port_range)?;
    let (external, opened_ipv6_lookups) = open_families(&settings.external_ip)?;

    let pin_dir = pins::gateway_dir(&settings.name);
    let mut datapath = Datapath::load_logging(
        &pin_dir,
        TableSizes::new(settings.max_flow_entries, settings.flow_records.is_some()),
        settings.datapath_log,
    )?;
    let changes = datapath
        .policy()?
        .sync(&served(&settings.policy, &external))?;
    info!(
        sources = settings.policy.len(),
        added = changes.added_or_changed,
        removed = changes.removed,
        "policy synced"
    );
    let address = |ip: Option<IpAddr>| ip.map_or(Address::UNSPECIFIED, Address::from_ip);
    let limits = settings.bandwidth;
    let limited = [
        (
            limits.egress,
            external_ifindex,
            &settings.external_interface,
        ),
        (
            limits.ingress,
            internal_ifindex,
            &settings.internal_interface,
        ),
    ];
    let shapers = Shapers::install(
        limited
            .into_iter()
            .filter_map(|(limit, ifindex, name)| Some((ifindex, name.clone(), limit?)))
            .collect(),
    )?;
    // The skb priority that steers a direction's forwarded packets into its shaper's class.
    let steer = |limit: Option<BitRate>| limit.map_or(0, |_| bandwidth::SHAPED_CLASS);
    datapath.configure(&GatewayConfig {
        external_addr_v4: address(external.v4.map(IpAddr::V4)),
        internal_addr_v4: address(internal_ip.map(IpAddr::V4)),
        external_addr_v6: address(external.v6.map(IpAddr::V6)),
        internal_addr_v6: address(internal_ipv6.map(IpAddr::V6)),
        internal_ifindex,
        external_ifindex,
        port_min: port_range.min,
        port_max: port_range.max,
        ready: 1,
        flow_records: u32::from(settings.flow_records.is_some()),
        egress_priority: steer(limits.egress),
        ingress_priority: steer(limits.ingress),
        internal_peer: u32::from(internal_peer),
    })?;
    host::set_loopback_forwarding(true)?;
    datapath.attach(&settings.internal_interface, &settings.external_interface)?;
    let live = datapath.flow_table()?.entries()?.len() / 2;
    info!(
        name = %settings.name,
        internal = %settings.internal_interface,
        external = %settings.external_interface,
        external_ip = %external,
        %port_range,
        // Whether packets toward the VPC go straight into the internal veth's peer.
        internal_peer,
        pins = %pin_dir.display(),
        live_flows = live,
        "gateway datapath attached"
    );
    let bfd_status = Arc::default();
    let bfd = bfd_engine(settings, &bfd_status)?;
    Ok(Running {
        datapath,
        range_ports: port_range.ports(),
        _lock: lock,
        external,
        opened_ipv6_lookups,
        bfd,
        bfd_status,
        shapers,
    })
}

/// Who the translation records say wrote them: the gateway's resource (or its name) and the instance, which is
/// the pod (POD_NAME, as the Deployment sets it, else the host name a pod gets from its name).
fn record_origin(settings: &GatewaySettings) -> Origin {
    let instance = std::env::var("POD_NAME")
        .or_else(|_| std::fs::read_to_string("/proc/sys/kernel/hostname"))
        .map(|name| name.trim().to_owned())
        .unwrap_or_default();
    Origin {
        gateway: settings
            .resource
            .as_ref()
            .map_or_else(|| settings.name.clone(), |gateway| gateway.to_string()),
        instance,
    }
}

/// The next policy from the resource; never, without one (or once its follower is gone).
async fn next_policy(
    updates: &mut Option<watch::Receiver<DesiredPolicy>>,
) -> Option<DesiredPolicy> {
    let Some(receiver) = updates else {
        return std::future::pending().await;
    };
    if receiver.changed().await.is_err() {
        *updates = None;
        return std::future::pending().await;
    }
    Some(receiver.borrow_and_update().clone())
}

/// The families the instance translates: every one it has an external address for, but IPv6 only once its route
/// lookups are open (net.ipv6.conf.lo.forwarding, which a pod may not be allowed to set). Without them IPv4 is
/// still served, IPv6 sources are dropped as having no policy, and the log says why; an IPv6-only instance
/// refuses to start. Also says whether the agent opened the lookups itself (and closes them when it stops).
fn open_families(given: &ExternalAddresses) -> anyhow::Result<(ExternalAddresses, bool)> {
    let mut external = *given;
    if given.v6.is_none() {
        return Ok((external, false));
    }
    match host::open_ipv6_route_lookups() {
        Ok(opened) => Ok((external, opened)),
        Err(e) if given.v4.is_none() => {
            Err(e.context("IPv6 cannot be translated, and there is no IPv4 external address"))
        }
        Err(e) => {
            warn!("IPv6 is not translated, IPv4 only: {e:#}");
            external.v6 = None;
            Ok((external, false))
        }
    }
}

/// The sources of the families the instance has an external address for: a resource may name sources of both
/// families while the instance serves one (the flags are refused at validation instead). The others' packets are
/// dropped as having no policy.
fn served(policy: &DesiredPolicy, external: &ExternalAddresses) -> DesiredPolicy {
    let (served, left_out): (DesiredPolicy, DesiredPolicy) =
        policy.iter().partition(|(net, _)| external.serves(net));
    if !left_out.is_empty() {
        let left_out: Vec<String> = left_out.keys().map(ToString::to_string).collect();
        warn!(
            external_ip = %external,
            sources = %left_out.join(", "),
            "sources of a family without an external address are left out: their packets are dropped"
        );
    }
    served
}

/// The policy the datapath now holds, for the metrics.
fn record_policy(facts: &Mutex<AgentFacts>, policy: &DesiredPolicy) {
    let snat = policy
        .values()
        .filter(|action| **action == Action::Snat)
        .count();
    let mut facts = facts.lock().unwrap();
    facts.policy_snat = snat as u64;
    facts.policy_forward = (policy.len() - snat) as u64;
}

/// What stops the agent: SIGTERM and SIGINT (the first withdraws and drains, a second stops at once), or in a
/// test one future.
pub enum StopRequests {
    Signals(StopSignals),
    Once(Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>>),
}

impl StopRequests {
    pub fn once(stop: impl std::future::Future<Output = ()> + 'static) -> StopRequests {
        StopRequests::Once(Some(Box::pin(stop)))
    }

    /// The next request; never, once a single future has completed.
    async fn next(&mut self) {
        match self {
            StopRequests::Signals(signals) => signals.next().await,
            StopRequests::Once(stop) => match stop {
                Some(future) => {
                    future.as_mut().await;
                    *stop = None;
                }
                None => std::future::pending().await,
            },
        }
    }
}

/// Why the instance is out of service, if it is: it is stopping (for good), or a part of its uplink is down
/// (until it is back).
#[derive(Default)]
struct Withdrawal {
    stopping: bool,
    uplink_down: std::collections::BTreeMap<uplink::Part, Option<String>>,
}

impl Withdrawal {
    fn reason(&self) -> Option<String> {
        if self.stopping {
            return Some("stopping".into());
        }
        let down: Vec<&str> = self
            .uplink_down
            .values()
            .flatten()
            .map(String::as_str)
            .collect();
        (!down.is_empty()).then(|| format!("uplink down: {}", down.join("; ")))
    }

    /// Tell /readyz (and the metrics) and the BFD sessions, which go AdminDown while withdrawn.
    fn publish(&self, facts: &Mutex<AgentFacts>, bfd: &watch::Sender<bool>) {
        let reason = self.reason();
        bfd.send_replace(reason.is_some());
        facts.lock().unwrap().withdrawn = reason;
    }
}

/// SIGTERM and SIGINT, caught from before the datapath starts, so that a stop during start-up still detaches
/// cleanly.
pub struct StopSignals {
    sigterm: Signal,
    sigint: Signal,
}

impl StopSignals {
    /// Call inside the tokio runtime.
    pub fn install() -> anyhow::Result<StopSignals> {
        Ok(StopSignals {
            sigterm: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            sigint: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    /// Wait for SIGTERM or SIGINT.
    pub async fn wait(mut self) {
        self.next().await
    }

    /// Wait for the next SIGTERM or SIGINT.
    pub async fn next(&mut self) {
        tokio::select! {
            _ = self.sigterm.recv() => {}
            _ = self.sigint.recv() => {}
        }
    }
}

/// Serve health checks and BFD, sweep, apply policy updates (from `--gateway`'s resource) as they come, until
/// SIGTERM or SIGINT. Then withdraw: tell the BFD peers (AdminDown) and fail /readyz, so that OVN sends new flows
/// to the other instances; keep translating for the drain period (`--drain-seconds`; a second signal cuts it
/// short), and detach.
pub async fn run(
    settings: GatewaySettings,
    running: Running,
    mut stop: StopRequests,
    mut policy_updates: Option<watch::Receiver<DesiredPolicy>>,
) -> anyhow::Result<()> {
    let Running {
        mut datapath,
        range_ports,
        _lock,
        external,
        opened_ipv6_lookups,
        bfd,
        bfd_status,
        shapers,
    } = running;
    let facts = Arc::new(Mutex::new(AgentFacts::default()));
    record_policy(&facts, &settings.policy);
    let metrics = Metrics {
        pin_dir: datapath.pin_dir().to_owned(),
        capacity: u64::from(settings.max_flow_entries / 2),
        external_ip: external.primary(),
        range_ports,
        bfd: Arc::clone(&bfd_status),
        agent: Arc::clone(&facts),
    };
    let health = health::bind(settings.health_listen).await?;
    tokio::spawn(health::serve(health, metrics));
    let (bfd_stop, bfd_stopped) = tokio::sync::oneshot::channel::<()>();
    let (bfd_withdrawn, withdrawn) = watch::channel(false);
    let bfd_task = bfd.map(|engine| {
        let name = settings.name.clone();
        tokio::spawn(async move {
            control::run_engine(engine, &name, bfd_status, withdrawn, async {
                let _ = bfd_stopped.await;
            })
            .await
        })
    });
    let mut withdrawal = Withdrawal::default();
    // Never fires until a stop signal starts the drain.
    let drain = tokio::time::sleep(std::time::Duration::MAX / 4);
    let (uplink_changes, mut uplink) = tokio::sync::mpsc::channel(4);
    uplink::watch(
        &settings.external_interface,
        settings.uplink.clone(),
        uplink_changes,
    );
    let (slow_path_stop, slow_path_stopped) = tokio::sync::oneshot::channel::<()>();
    let slow_path = SlowPath::new(datapath.take_slow_path_ring()?, datapath.pin_dir())?;
    let slow_path_task = tokio::spawn(slow_path.run(async {
        let _ = slow_path_stopped.await;
    }));
    let (records_stop, records_stopped) = tokio::sync::oneshot::channel::<()>();
    let origin = record_origin(&settings);
    let (records_task, ended_records) = match &settings.flow_records {
        Some(destination) => {
            let (records, sender) = Records::new(
                datapath.take_flow_records_ring()?,
                destination,
                origin.clone(),
                records::watch_socket(Path::new(RUN_DIR), &settings.name),
            )?;
            let task = tokio::spawn(records.run(async {
                let _ = records_stopped.await;
            }));
            (Some(task), Some(sender))
        }
        None => (None, None),
    };
    // The programs' log lines, when --datapath-log asks for them; stopped with the agent.
    let datapath_log = datapath
        .take_logger()
        .map(|logger| tokio::spawn(crate::datapath::log::forward(logger)));
    let flows = datapath.flow_table()?;
    let mut sweep = tokio::time::interval(settings.sweep_interval);
    tokio::pin!(drain);
    loop {
        tokio::select! {
            _ = sweep.tick() => match flows.sweep(ended_records.is_some()) {
                Ok(swept) => {
                    {
                        let mut facts = facts.lock().unwrap();
                        facts.live_translations = swept.live as u64;
                        facts.flows_expired += (swept.removed / 2) as u64;
                        facts.ports = swept.ports;
                    }
                    if let Some(sender) = &ended_records {
                        for flow in &swept.ended {
                            let record = TranslationRecord::expired(
                                &flow.key,
                                &flow.outbound,
                                &flow.counts,
                                &origin,
                            );
                            let _ = sender.send(record);
                        }
                    }
                    if swept.removed > 0 {
                        info!(removed = swept.removed, live = swept.live, "expired flow entries swept");
                    }
                }
                Err(e) => {
                    facts.lock().unwrap().sweep_errors += 1;
                    warn!("sweeping expired flows failed: {e:#}");
                }
            },
            Some(policy) = next_policy(&mut policy_updates) => {
                let policy = served(&policy, &external);
                match datapath.policy().and_then(|mut table| table.sync(&policy)) {
                    Ok(changes) => {
                        record_policy(&facts, &policy);
                        info!(
                            sources = policy.len(),
                            added = changes.added_or_changed,
                            removed = changes.removed,
                            "policy synced from the resource"
                        );
                    }
                    Err(e) => {
                        facts.lock().unwrap().policy_sync_errors += 1;
                        warn!("syncing the policy failed: {e:#}; retrying on the next change");
                    }
                }
            }
            Some((part, down)) = uplink.recv() => {
                withdrawal.uplink_down.insert(part, down);
                withdrawal.publish(&facts, &bfd_withdrawn);
            }
            _ = stop.next() => {
                if withdrawal.stopping {
                    info!("a second stop signal: stopping now, before the drain period is over");
                    break;
                }
                withdrawal.stopping = true;
                withdrawal.publish(&facts, &bfd_withdrawn);
                if settings.drain.is_zero() {
                    break;
                }
                drain.as_mut().reset(tokio::time::Instant::now() + settings.drain);
                info!(
                    drain_seconds = settings.drain.as_secs(),
                    "stop signal: withdrawn from OVN (BFD AdminDown, /readyz 503); translating for the drain \
                     period before stopping (signal again to stop now)"
                );
            }
            _ = &mut drain => {
                info!("drain period over: stopping");
                break;
            }
        }
    }
    let _ = bfd_stop.send(());
    let _ = slow_path_stop.send(());
    let _ = slow_path_task.await;
    let _ = records_stop.send(());
    if let Some(task) = records_task {
        let _ = task.await;
    }
    if let Some(task) = bfd_task {
        task.await??;
    }
    if let Some(task) = datapath_log {
        task.abort();
    }
    let pin_dir = datapath.pin_dir().to_owned();
    drop(datapath);
    drop(shapers);
    host::set_loopback_forwarding(false)?;
    if opened_ipv6_lookups {
        host::close_ipv6_route_lookups()?;
    }
    info!(
        pins = %pin_dir.display(),
        "detached; flows, counters and policy stay pinned for the next start (`veg gateway --name {} --cleanup` removes them)",
        settings.name
    );
    Ok(())
}
