//! Loading the programs with the gateway's pinned maps, writing their settings, attaching them.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, RingBuf},
    programs::{
        SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc,
    },
    util::KernelVersion,
};
use aya_log::EbpfLogger;
use veg_common::config::{CONFIG_KEY, GatewayConfig};

use super::{
    EBPF_OBJECT, TableSizes, flow_table::FlowTable, log::DatapathLog, monotonic_now_ns,
    pinned_maps, pins, policy::PolicyTable, route_watch::RouteWatch,
};

pub const PROGRAM_FROM_VPC: &str = "veg_from_vpc";
pub const PROGRAM_FROM_OUTSIDE: &str = "veg_from_outside";
/// The programs' ring buffers toward the agent; not pinned, each loaded datapath has its own.
const SLOW_PATH: &str = "SLOW_PATH";
const FLOW_RECORDS: &str = "FLOW_RECORDS";
/// The programs' count of route changes (route_watch.rs); not pinned.
const ROUTE_GENERATION: &str = "ROUTE_GENERATION";

/// The loaded datapath of one gateway. Dropping it detaches the programs; the pinned maps stay. Only when the
/// process dies without dropping it (killed) do the programs stay attached, through their pinned links, and keep
/// translating until the next agent takes over.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    /// The programs' log lines, when `--datapath-log` asks for some; taken by the agent.
    logger: Option<EbpfLogger<&'static dyn log::Log>>,
    links: Vec<PinnedLink>,
    /// A flow table of another size or build whose flows are being carried over into the new one, and when the
    /// first copy began.
    migrating: Option<(PathBuf, u64)>,
    /// Tells the programs' route cache of route and neighbour changes while the programs are loaded.
    _route_watch: RouteWatch,
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.detach();
    }
}

impl Datapath {
    /// Load the programs, reusing the maps pinned in `pin_dir` (and so every live flow) or creating and pinning
    /// them there. `max_flow_entries` sizes the flow table: a pinned one of another size is migrated into a new
    /// one (see pinned_maps.rs). Without room for translation records' counts.
    pub fn load(pin_dir: &Path, max_flow_entries: u32) -> anyhow::Result<Datapath> {
        Datapath::load_logging(
            pin_dir,
            TableSizes::new(max_flow_entries, false),
            DatapathLog::Off,
        )
    }

    /// `load` with tables of `sizes`, the programs writing log lines of `log` and more severe (none for Off: the
    /// lines are then pruned when the programs load, and cost nothing).
    pub fn load_logging(
        pin_dir: &Path,
        sizes: TableSizes,
        log: DatapathLog,
    ) -> anyhow::Result<Datapath> {
        pins::check_bpffs()?;
        let fresh = !pin_dir.exists();
        std::fs::create_dir_all(pin_dir)
            .with_context(|| format!("creating {}", pin_dir.display()))?;
        let loaded = pinned_maps::prepare(pin_dir, sizes)
            .and_then(|migrating| Datapath::load_into(pin_dir, sizes, migrating, log));
        if loaded.is_err() && fresh {
            // A failed first load must not leave the maps it pinned (nor the directory) behind.
            let _ = pins::remove_dir_of_pins(pin_dir);
        }
        loaded
    }

    fn load_into(
        pin_dir: &Path,
        sizes: TableSizes,
        migrating: Option<PathBuf>,
        log: DatapathLog,
    ) -> anyhow::Result<Datapath> {
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(pins::FLOWS, sizes.flow_entries);
        loader.map_max_entries(pins::FLOW_COUNTS, sizes.counts_entries);
        let level = log.aya_level();
        loader.override_global(aya_log::LEVEL, &level, true);
        // BTF-declared maps carry no pinning of their own: each is pinned (or its pin reused) by name here.
        for name in pins::PINNED_MAPS {
            loader.map_pin_path(name, pin_dir.join(name));
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|e| kernel_error(anyhow!(e)).context("loading the eBPF object"))?;
        for name in [PROGRAM_FROM_VPC, PROGRAM_FROM_OUTSIDE] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            program.load().map_err(|e| {
                kernel_error(anyhow!(e)).context(format!("verifying program {name}"))
            })?;
        }
        let generation = ebpf
            .take_map(ROUTE_GENERATION)
            .context("ROUTE_GENERATION map missing")?;
        let route_watch = RouteWatch::start(Array::try_from(generation)?)?;
        let logger = match log {
            DatapathLog::Off => None,
            _ => Some(EbpfLogger::init(&mut ebpf).context("reading the datapath's log lines")?),
        };
        let migrating = match migrating {
            Some(old) => {
                let started = monotonic_now_ns();
                let copied = pinned_maps::carry_over(&old, pin_dir, 0)?;
                tracing::info!(copied, "flows carried over into the new flow table");
                Some((old, started))
            }
            None => None,
        };
        Ok(Datapath {
            ebpf,
            pin_dir: pin_dir.to_owned(),
            logger,
            links: Vec::new(),
            migrating,
            _route_watch: route_watch,
        })
    }

    /// Once the new programs run, the old flow table of a migration goes, after a last copy of the flows the old
    /// programs created meanwhile.
    fn finish_migration(&mut self) -> anyhow::Result<()> {
        let Some((old, first_copy)) = self.migrating.take() else {
            return Ok(());
        };
        let copied = pinned_maps::carry_over(&old, &self.pin_dir, first_copy)?;
        std::fs::remove_file(&old).with_context(|| format!("removing {}", old.display()))?;
        tracing::info!(copied, "flow table migrated; the old one is gone");
        Ok(())
    }

    /// A loaded program, for running it on crafted packets (BPF_PROG_TEST_RUN).
    pub fn program(&self, name: &str) -> anyhow::Result<&SchedClassifier> {
        Ok(self
            .ebpf
            .program(name)
            .with_context(|| format!("program {name} missing from the object"))?
            .try_into()?)
    }

    /// The programs' log lines (once), when they write some.
    pub fn take_logger(&mut self) -> Option<EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Write the gateway's settings; the programs act on packets from then on.
    pub fn configure(&mut self, config: &GatewayConfig) -> anyhow::Result<()> {
        let map = self
            .ebpf
            .map_mut(pins::CONFIG)
            .context("CONFIG map missing")?;
        let mut array: Array<&mut MapData, GatewayConfig> = Array::try_from(map)?;
        array
            .set(
                CONFIG_KEY,
                GatewayConfig {
                    ready: 1,
                    ..*config
                },
                0,
            )
            .context("writing the gateway's settings")
    }

    pub fn policy(&mut self) -> anyhow::Result<PolicyTable<&mut MapData>> {
        let [v4, v6] = self
            .ebpf
            .maps_disjoint_mut([pins::POLICY_V4, pins::POLICY_V6]);
        let v4 = v4.context("POLICY_V4 map missing")?;
        let v6 = v6.context("POLICY_V6 map missing")?;
        Ok(PolicyTable::new(v4.try_into()?, v6.try_into()?))
    }

    /// The ring through which the programs hand packets to the agent (slow_path); it can be taken once.
    pub fn take_slow_path_ring(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        self.take_ring(SLOW_PATH)
    }

    /// The ring of translation records (gateway/records.rs); it can be taken once.
    pub fn take_flow_records_ring(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        self.take_ring(FLOW_RECORDS)
    }

    fn take_ring(&mut self, name: &str) -> anyhow::Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(name)
            .with_context(|| format!("{name} map missing, or taken already"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// The flow table, with the counts table beside it.
    pub fn flow_table(&self) -> anyhow::Result<FlowTable> {
        FlowTable::from_pins(&self.pin_dir)
    }

    /// Attach both programs to their interfaces' ingress: TCX links on kernels that have them (6.6+), pinned, a
    /// clsact qdisc otherwise. Links a killed agent left pinned are replaced once the new programs are attached,
    /// so there is no moment without a program.
    pub fn attach(
        &mut self,
        internal_interface: &str,
        external_interface: &str,
    ) -> anyhow::Result<()> {
        let has_tcx =
            KernelVersion::current().is_ok_and(|v| v.code() >= KernelVersion::new(6, 6, 0).code());
        for (name, interface, pin) in [
            (PROGRAM_FROM_VPC, internal_interface, pins::LINK_FROM_VPC),
            (
                PROGRAM_FROM_OUTSIDE,
                external_interface,
                pins::LINK_FROM_OUTSIDE,
            ),
        ] {
            if !has_tcx {
                // EEXIST when the qdisc is there already is fine.
                let _ = tc::qdisc_add_clsact(interface);
            }
            let program: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .context("program missing")?
                .try_into()?;
            let link = program
                .attach(interface, TcAttachType::Ingress)
                .with_context(|| format!("attaching {name} to {interface} ingress"))?;
            if !has_tcx {
                continue;
            }
            let link: FdLink = program.take_link(link)?.try_into()?;
            let path = self.pin_dir.join(pin);
            if let Ok(left) = PinnedLink::from_pin(&path) {
                // The previous agent's program goes now that ours runs (dropping the last reference detaches it).
                drop(
                    left.unpin()
                        .with_context(|| format!("unpinning {}", path.display()))?,
                );
            }
            let pinned = link
                .pin(&path)
                .map_err(|e| anyhow!(e))
                .with_context(|| format!("pinning the link of {name} at {}", path.display()))?;
            self.links.push(pinned);
        }
        self.finish_migration()
    }

    /// Detach the programs: unpin their links and let them go.
    pub fn detach(&mut self) {
        for link in self.links.drain(..) {
            if let Ok(link) = link.unpin() {
                drop(link);
            }
        }
    }
}

fn kernel_error(err: anyhow::Error) -> anyhow::Error {
    err.context(
        "the kernel refused veg's datapath: veg needs Linux 6.6 or newer with BPF, BTF, TCX, bpf_loop and \
         hash maps, and CAP_BPF + CAP_NET_ADMIN (or root)",
    )
}
