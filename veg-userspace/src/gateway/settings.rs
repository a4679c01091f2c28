//! The gateway's settings, from the command line and/or a YAML or JSON file, validated before anything is touched.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    str::FromStr,
    time::Duration,
};

use anyhow::{Context as _, bail};
use ipnet::IpNet;
use serde::Deserialize;
use veg_common::flow::FLOW_TABLE_DEFAULT_ENTRIES;

use veg_bfd::session::Timers;

use crate::{
    datapath::{
        flow_table_entries,
        log::DatapathLog,
        pins,
        policy::{Action, DesiredPolicy},
    },
    gateway::{
        bandwidth::BitRate,
        resource::GatewayRef,
        uplink::{ProbeTargets, UplinkSettings},
    },
};

pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

/// The lowest port translations may use: below it are the well-known ports, which MASQUERADE leaves alone too.
const FIRST_TRANSLATED_PORT: u16 = 1024;

impl PortRange {
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.min <= other.max && other.min <= self.max
    }

    pub fn ports(&self) -> u32 {
        u32::from(self.max) - u32::from(self.min) + 1
    }

    /// The translation range when none is given: every port from 1024 up that the instance's own sockets do not
    /// use, i.e. the larger block of 1024-65535 on either side of the kernel's ephemeral range. With the kernel's
    /// default 32768-60999 that is 1024-32767; with the 61000-65535 the instances' Deployment sets, 1024-60999.
    pub fn outside_ephemeral(ephemeral: PortRange) -> Option<PortRange> {
        let below = (ephemeral.min > FIRST_TRANSLATED_PORT).then(|| PortRange {
            min: FIRST_TRANSLATED_PORT,
            max: ephemeral.min - 1,
        });
        let above = (ephemeral.max < u16::MAX).then(|| PortRange {
            min: ephemeral.max.saturating_add(1).max(FIRST_TRANSLATED_PORT),
            max: u16::MAX,
        });
        match (below, above) {
            (Some(b), Some(a)) => Some(if a.ports() > b.ports() { a } else { b }),
            (b, a) => b.or(a),
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

impl FromStr for PortRange {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<PortRange> {
        let advice = "expected LO-HI with 1 <= LO <= HI <= 65535, e.g. 1024-32767";
        let (lo, hi) = s
            .split_once('-')
            .with_context(|| format!("invalid port range {s:?}: {advice}"))?;
        let parse = |p: &str| {
            p.trim()
                .parse::<u16>()
                .with_context(|| format!("invalid port range {s:?}: {advice}"))
        };
        let range = PortRange {
            min: parse(lo)?,
            max: parse(hi)?,
        };
        if range.min == 0 || range.min > range.max {
            bail!("invalid port range {s:?}: {advice}");
        }
        Ok(range)
    }
}

/// A source prefix: an IPv4 or IPv6 CIDR, or a bare address meaning /32 or /128.
pub fn parse_cidr(s: &str) -> anyhow::Result<IpNet> {
    let net = match s.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match s.parse::<IpAddr>() {
            Ok(addr) => IpNet::from(addr),
            Err(_) => bail!(
                "invalid CIDR {s:?}: expected a prefix such as 10.16.0.0/16 or fd00:10:16::/64, or an address such                  as 10.16.0.5"
            ),
        },
    };
    if net.trunc() != net {
        bail!(
            "invalid CIDR {s:?}: host bits are set; did you mean {}?",
            net.trunc()
        );
    }
    Ok(net)
}

/// The instance's external addresses, one per family it translates: "v4", "v6" or "v4,v6" (as Kube-OVN writes a
/// dual-stack attachment's addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExternalAddresses {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl ExternalAddresses {
    /// Every address, IPv4 first.
    pub fn all(&self) -> Vec<IpAddr> {
        let v4 = self.v4.map(IpAddr::V4);
        let v6 = self.v6.map(IpAddr::V6);
        v4.into_iter().chain(v6).collect()
    }

    /// The IPv4 address, or the IPv6 one of an IPv6-only instance (validation makes sure there is one).
    pub fn primary(&self) -> IpAddr {
        self.all()
            .first()
            .copied()
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    /// Whether sources of the prefix's family have an address to be translated to.
    pub fn serves(&self, net: &IpNet) -> bool {
        match net {
            IpNet::V4(_) => self.v4.is_some(),
            IpNet::V6(_) => self.v6.is_some(),
        }
    }
}

impl fmt::Display for ExternalAddresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<String> = self.all().iter().map(IpAddr::to_string).collect();
        f.write_str(&all.join(","))
    }
}

impl FromStr for ExternalAddresses {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<ExternalAddresses> {
        let advice = "expected an IPv4 address, an IPv6 address, or both as \"v4,v6\"";
        let mut addresses = ExternalAddresses { v4: None, v6: None };
        for part in text.split(',') {
            let address = part
                .trim()
                .parse::<IpAddr>()
                .with_context(|| format!("invalid --external-ip {text:?}: {advice}"))?;
            let duplicate = match address {
                IpAddr::V4(v4) => addresses.v4.replace(v4).is_some(),
                IpAddr::V6(v6) => addresses.v6.replace(v6).is_some(),
            };
            if duplicate {
                bail!("invalid --external-ip {text:?}: two addresses of one family; {advice}");
            }
        }
        Ok(addresses)
    }
}

/// Everything `veg gateway` needs, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewaySettings {
    pub name: String,
    pub netns: Option<String>,
    pub internal_interface: String,
    pub external_interface: String,
    pub external_ip: ExternalAddresses,
    pub policy: DesiredPolicy,
    /// Translations use this range; None: derived from the instance's ephemeral range when the agent starts.
    pub port_range: Option<PortRange>,
    /// Flow table capacity in entries (two per flow).
    pub max_flow_entries: u32,
    pub sweep_interval: Duration,
    /// How long the agent keeps translating after SIGTERM, withdrawn from OVN (zero: it detaches at once).
    pub drain: Duration,
    /// What makes the uplink down, and how often it is checked.
    pub uplink: UplinkSettings,
    /// The bandwidth limits, each way.
    pub bandwidth: BandwidthLimits,
    /// BFD toward the VPC's BFD port, when peers are given.
    pub bfd: Option<BfdSettings>,
    /// Where /livez and /readyz are served.
    pub health_listen: SocketAddr,
    /// The VpcEgressGateway the policy comes from (and is followed), instead of --snat/--forward.
    pub resource: Option<GatewayRef>,
    /// Where translation records go; None: records are off.
    pub flow_records: Option<RecordsDestination>,
    /// How much the programs log.
    pub datapath_log: DatapathLog,
}

/// Where translation records are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordsDestination {
    Stdout,
    /// A file, renamed to `<path>.1` once it holds `max_bytes`.
    File {
        path: PathBuf,
        max_bytes: u64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct BfdSettings {
    pub peers: Vec<IpAddr>,
    /// The local addresses of the sessions, one per family; when empty, the internal interface's address of each
    /// family a peer has.
    pub listen: Vec<IpAddr>,
    pub timers: Timers,
    pub min_ttl: u8,
}

/// The instance's bandwidth limits: what it sends toward the outside (out of the external interface) and into the
/// VPC (out of the internal one). None: no limit that way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BandwidthLimits {
    pub egress: Option<BitRate>,
    pub ingress: Option<BitRate>,
}

impl BandwidthLimits {
    fn parse(egress: Option<&str>, ingress: Option<&str>) -> anyhow::Result<BandwidthLimits> {
        let rate = |text: Option<&str>, flag: &str| {
            text.map(BitRate::parse)
                .transpose()
                .map(Option::flatten)
                .with_context(|| format!("invalid {flag}"))
        };
        Ok(BandwidthLimits {
            egress: rate(egress, "--egress-rate")?,
            ingress: rate(ingress, "--ingress-rate")?,
        })
    }
}

pub const DEFAULT_HEALTH_LISTEN: &str = "0.0.0.0:8080";

/// The settings as given, by flags (`veg gateway`'s options) or by a YAML/JSON file (`--config`, camelCase keys
/// as in Kubernetes resources); `merge_file` joins the two, flags first.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SettingsInput {
    /// Gateway name; names the pinned state in /sys/fs/bpf/veg/NAME.
    #[arg(long)]
    pub name: Option<String>,
    /// Named network namespace (from /var/run/netns) to run in; the pins stay in the host's bpffs.
    #[arg(long)]
    pub netns: Option<String>,
    /// Interface facing the VPC (eth0 in a gateway pod).
    #[arg(long, value_name = "IF")]
    pub internal_interface: Option<String>,
    /// Interface facing the outside (net1 in a gateway pod); must carry --external-ip.
    #[arg(long, value_name = "IF")]
    pub external_interface: Option<String>,
    /// The address SNAT sources are translated to: IPv4, IPv6, or "v4,v6" for both families (each family's
    /// sources are translated to that family's address).
    #[serde(rename = "externalIP")]
    #[arg(long, value_name = "IP[,IP]")]
    pub external_ip: Option<String>,
    /// Take the policy from this VpcEgressGateway (NAMESPACE/NAME) and the Subnets it names, and follow their
    /// changes live, instead of --snat/--forward. Needs read access to both through the Kubernetes API.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub gateway: Option<String>,
    /// Source prefix to translate (repeatable).
    #[serde(default)]
    #[arg(long, value_name = "CIDR")]
    pub snat: Vec<String>,
    /// Source prefix to route unchanged (repeatable).
    #[serde(default)]
    #[arg(long, value_name = "CIDR")]
    pub forward: Vec<String>,
    /// Ports (and ICMP identifiers) used for translations; must not overlap net.ipv4.ip_local_port_range.
    /// [default: every port from 1024 up outside that range: 1024-32767 with the kernel's default, 1024-60999 in
    /// the instances the controller runs]
    #[arg(long, value_name = "LO-HI")]
    pub port_range: Option<String>,
    /// Translations the flow table holds at once; the table is allocated for them up front (about 320 bytes
    /// each). [default: 262144]
    #[arg(long, value_name = "N")]
    pub max_flows: Option<u32>,
    /// Seconds between sweeps of expired flows. [default: 10]
    #[arg(long = "sweep-interval", value_name = "SECONDS")]
    pub sweep_interval_seconds: Option<u64>,
    /// On SIGTERM, first withdraw the instance (BFD AdminDown toward OVN, /readyz 503) and keep translating for
    /// this long, so that OVN moves new flows to the other instances before this one stops; a second SIGTERM or
    /// SIGINT stops at once. The instances the controller runs use the gateway's spec.drainSeconds. [default: 0]
    #[arg(long = "drain-seconds", value_name = "SECONDS")]
    pub drain_seconds: Option<u64>,
    /// Limit what the instance sends toward the outside to this rate, paced by departure time (the programs stamp
    /// each packet; an fq qdisc the agent installs on the external interface holds it until then); beyond a short
    /// queue, packets are dropped. Mbit/s as an integer ("100"), or bits per second with unit M, Mi, G or Gi
    /// ("100M", "1.5G", "512Mi"); 0: no limit. The instances the controller runs take the gateway's
    /// spec.bandwidth.egress. [default: no limit]
    #[serde(default, deserialize_with = "number_or_text")]
    #[arg(long, value_name = "RATE")]
    pub egress_rate: Option<String>,
    /// The same for what the instance sends into the VPC (the replies): spec.bandwidth.ingress, paced on the
    /// internal interface. [default: no limit]
    #[serde(default, deserialize_with = "number_or_text")]
    #[arg(long, value_name = "RATE")]
    pub ingress_rate: Option<String>,
    /// Run a BFD session with this peer (the VPC's BFD port; repeatable). The instance is ready only while every
    /// session is Up. `veg bfd status --name NAME` lists them.
    #[serde(default)]
    #[arg(long = "bfd-peer", value_name = "IP")]
    pub bfd_peers: Vec<String>,
    /// Local address of the BFD sessions, or one per family as "v4,v6" for peers of both families. [default: the
    /// internal interface's address of each family a peer has]
    #[arg(long, value_name = "IP[,IP]")]
    pub bfd_listen: Option<String>,
    /// BFD required minimum receive interval. [default: 1000]
    #[arg(long, value_name = "MS")]
    pub bfd_min_rx: Option<u64>,
    /// BFD desired minimum transmit interval. [default: 1000]
    #[arg(long, value_name = "MS")]
    pub bfd_min_tx: Option<u64>,
    /// BFD detection multiplier. [default: 3]
    #[arg(long, value_name = "N")]
    pub bfd_multiplier: Option<u8>,
    /// Lowest TTL accepted on BFD packets (254: OVN's cross a router). [default: 254]
    #[arg(long, value_name = "N")]
    pub bfd_min_ttl: Option<u8>,
    /// Where /livez, /readyz and /metrics are served over HTTP. [default: 0.0.0.0:8080]
    #[arg(long, value_name = "IP:PORT")]
    pub health_listen: Option<String>,
    /// Write a record of every translation (created; ended, with why and its packets and bytes each way) as JSON
    /// lines to "stdout" or to this file. Off when not given: the datapath then counts nothing per flow.
    /// `veg flows --watch --name NAME` follows them live.
    #[arg(long, value_name = "stdout|FILE")]
    pub flow_records: Option<String>,
    /// With --flow-records FILE: once the file reaches this size it is renamed to FILE.1 (replacing the previous
    /// one) and a new one started. [default: 100]
    #[arg(long, value_name = "MIB")]
    pub flow_records_max_size: Option<u64>,
    /// Log the datapath's rare events at this level and above, through the agent's log (target veg_ebpf): a
    /// translation pair repaired and a malformed packet with why (debug), a port search that found no port (warn).
    /// Set when the programs load; lines below it cost nothing. [default: off]
    #[arg(long, value_name = "off|error|warn|info|debug|trace")]
    pub datapath_log: Option<String>,
    /// Watch the uplink and withdraw the instance (BFD AdminDown, /readyz 503) while it is down: the external
    /// interface without a carrier, or these next hops not answering ARP (IPv4) or neighbour solicitations (IPv6).
    /// "auto": the external interface's default gateways; "off": the carrier only. [default: auto]
    #[arg(long, value_name = "auto|off|IP[,IP]")]
    pub uplink_probe: Option<String>,
    /// Milliseconds between uplink checks, each probe waiting as long for its answer. [default: 1000]
    #[arg(long, value_name = "MS")]
    pub uplink_interval_ms: Option<u64>,
    /// Unanswered probes in a row that make the uplink down (a carrier lost counts at once). [default: 3]
    #[arg(long, value_name = "N")]
    pub uplink_failures: Option<u32>,
}

/// A settings file's rate as text, whether written as a number (`egressRate: 100`) or a string (`"1.5G"`).
fn number_or_text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrText {
        Number(i64),
        Text(String),
    }
    Ok(
        Option::<NumberOrText>::deserialize(deserializer)?.map(|value| match value {
            NumberOrText::Number(n) => n.to_string(),
            NumberOrText::Text(text) => text,
        }),
    )
}

impl SettingsInput {
    pub fn read(path: &PathBuf) -> anyhow::Result<SettingsInput> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        // YAML is a superset of JSON: one parser reads both.
        serde_yaml::from_str(&text)
            .with_context(|| format!("{} is not a valid gateway settings file", path.display()))
    }

    /// Flags (self) override the file; lists from both are joined.
    pub fn merge_file(mut self, file: SettingsInput) -> SettingsInput {
        self.name = self.name.or(file.name);
        self.netns = self.netns.or(file.netns);
        self.internal_interface = self.internal_interface.or(file.internal_interface);
        self.external_interface = self.external_interface.or(file.external_interface);
        self.external_ip = self.external_ip.or(file.external_ip);
        self.gateway = self.gateway.or(file.gateway);
        self.snat.extend(file.snat);
        self.forward.extend(file.forward);
        self.port_range = self.port_range.or(file.port_range);
        self.max_flows = self.max_flows.or(file.max_flows);
        self.sweep_interval_seconds = self.sweep_interval_seconds.or(file.sweep_interval_seconds);
        self.drain_seconds = self.drain_seconds.or(file.drain_seconds);
        self.egress_rate = self.egress_rate.or(file.egress_rate);
        self.ingress_rate = self.ingress_rate.or(file.ingress_rate);
        self.uplink_probe = self.uplink_probe.take().or(file.uplink_probe);
        self.uplink_interval_ms = self.uplink_interval_ms.or(file.uplink_interval_ms);
        self.uplink_failures = self.uplink_failures.or(file.uplink_failures);
        self.bfd_peers.extend(file.bfd_peers);
        self.bfd_listen = self.bfd_listen.or(file.bfd_listen);
        self.bfd_min_rx = self.bfd_min_rx.or(file.bfd_min_rx);
        self.bfd_min_tx = self.bfd_min_tx.or(file.bfd_min_tx);
        self.bfd_multiplier = self.bfd_multiplier.or(file.bfd_multiplier);
        self.bfd_min_ttl = self.bfd_min_ttl.or(file.bfd_min_ttl);
        self.health_listen = self.health_listen.or(file.health_listen);
        self.flow_records = self.flow_records.or(file.flow_records);
        self.flow_records_max_size = self.flow_records_max_size.or(file.flow_records_max_size);
        self.datapath_log = self.datapath_log.or(file.datapath_log);
        self
    }

    fn flow_records(&self) -> anyhow::Result<Option<RecordsDestination>> {
        let max_size = self.flow_records_max_size.unwrap_or(100);
        if max_size == 0 {
            bail!("invalid --flow-records-max-size 0: expected a size in MiB, at least 1");
        }
        Ok(match self.flow_records.as_deref() {
            None => None,
            Some("") => bail!("--flow-records is empty: give \"stdout\" or a file"),
            Some("stdout" | "-") => Some(RecordsDestination::Stdout),
            Some(path) => Some(RecordsDestination::File {
                path: PathBuf::from(path),
                max_bytes: max_size.saturating_mul(1024 * 1024),
            }),
        })
    }

    fn bfd(&self) -> anyhow::Result<Option<BfdSettings>> {
        if self.bfd_peers.is_empty() {
            return Ok(None);
        }
        let address = |text: &str, flag: &str| {
            text.parse::<IpAddr>()
                .with_context(|| format!("invalid {flag} {text:?}: expected an IP address"))
        };
        let interval = |ms: Option<u64>, flag: &str| -> anyhow::Result<Duration> {
            let ms = ms.unwrap_or(1000);
            if !(1..=3_600_000).contains(&ms) {
                bail!("invalid {flag} {ms}: expected 1 to 3600000 milliseconds");
            }
            Ok(Duration::from_millis(ms))
        };
        let detect_mult = self.bfd_multiplier.unwrap_or(3);
        if detect_mult == 0 {
            bail!("invalid --bfd-multiplier 0: expected 1 to 255");
        }
        Ok(Some(BfdSettings {
            peers: self
                .bfd_peers
                .iter()
                .map(|p| address(p, "--bfd-peer"))
                .collect::<anyhow::Result<_>>()?,
            listen: self.bfd_listen.as_deref().map_or(Ok(Vec::new()), |list| {
                list.split(',')
                    .map(|l| address(l.trim(), "--bfd-listen"))
                    .collect::<anyhow::Result<Vec<_>>>()
            })?,
            timers: Timers {
                desired_min_tx: interval(self.bfd_min_tx, "--bfd-min-tx")?,
                required_min_rx: interval(self.bfd_min_rx, "--bfd-min-rx")?,
                detect_mult,
            },
            min_ttl: self.bfd_min_ttl.unwrap_or(254),
        }))
    }

    pub fn validate(self) -> anyhow::Result<GatewaySettings> {
        let bfd = self.bfd()?;
        let flow_records = self.flow_records()?;
        let health_text = self
            .health_listen
            .as_deref()
            .unwrap_or(DEFAULT_HEALTH_LISTEN);
        let health_listen = health_text.parse::<SocketAddr>().with_context(|| {
            format!("invalid --health-listen {health_text:?}: expected IP:PORT, e.g. 0.0.0.0:8080")
        })?;
        let required = |value: Option<String>, flag: &str| {
            value
                .filter(|v| !v.is_empty())
                .with_context(|| format!("{flag} is required (as a flag or in --config)"))
        };
        let name = required(self.name, "--name")?;
        pins::validate_name(&name)?;
        let external_ip_text = required(self.external_ip, "--external-ip")?;
        let external_ip: ExternalAddresses = external_ip_text.parse()?;
        let mut policy = DesiredPolicy::new();
        for (sources, action) in [(&self.snat, Action::Snat), (&self.forward, Action::Forward)] {
            for source in sources {
                let net = parse_cidr(source)?;
                if !external_ip.serves(&net) {
                    bail!(
                        "{net} is an {} source but --external-ip {external_ip} has no address of its family: add \
                         one (\"v4,v6\" for both)",
                        if matches!(net, IpNet::V4(_)) {
                            "IPv4"
                        } else {
                            "IPv6"
                        }
                    );
                }
                if let Some(previous) = policy.insert(net, action)
                    && previous != action
                {
                    bail!(
                        "{net} is given both as --snat and as --forward: a source is either translated or not"
                    );
                }
            }
        }
        let resource = self
            .gateway
            .as_deref()
            .map(str::parse::<GatewayRef>)
            .transpose()?;
        match (&resource, policy.is_empty()) {
            (Some(gateway), false) => bail!(
                "--gateway {gateway} takes the policy from the resource: drop --snat and --forward"
            ),
            (None, true) => bail!(
                "no sources: give at least one --snat CIDR or --forward CIDR, or --gateway NAMESPACE/NAME"
            ),
            _ => {}
        }
        let port_range = self
            .port_range
            .as_deref()
            .map(str::parse::<PortRange>)
            .transpose()?;
        let max_flows = self.max_flows.unwrap_or(FLOW_TABLE_DEFAULT_ENTRIES / 2);
        if max_flows == 0 || max_flows > 1 << 24 {
            bail!("invalid --max-flows {max_flows}: expected 1 to {}", 1 << 24);
        }
        let datapath_log = self
            .datapath_log
            .as_deref()
            .map(str::parse)
            .transpose()?
            .unwrap_or_default();
        let uplink = uplink_settings(
            self.uplink_probe.as_deref(),
            self.uplink_interval_ms,
            self.uplink_failures,
        )?;
        let bandwidth =
            BandwidthLimits::parse(self.egress_rate.as_deref(), self.ingress_rate.as_deref())?;
        Ok(GatewaySettings {
            uplink,
            bandwidth,
            resource,
            bfd,
            flow_records,
            datapath_log,
            health_listen,
            name,
            netns: self.netns,
            internal_interface: required(self.internal_interface, "--internal-interface")?,
            external_interface: required(self.external_interface, "--external-interface")?,
            external_ip,
            policy,
            port_range,
            max_flow_entries: flow_table_entries(max_flows),
            sweep_interval: self
                .sweep_interval_seconds
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_SWEEP_INTERVAL),
            drain: Duration::from_secs(self.drain_seconds.unwrap_or(0)),
        })
    }
}

/// `--uplink-probe`, `--uplink-interval-ms` and `--uplink-failures`, checked.
fn uplink_settings(
    probe: Option<&str>,
    interval_ms: Option<u64>,
    failures: Option<u32>,
) -> anyhow::Result<UplinkSettings> {
    let targets = match probe.unwrap_or("auto") {
        "auto" => ProbeTargets::Auto,
        "off" => ProbeTargets::Off,
        list => ProbeTargets::Given(
            list.split(',')
                .map(|ip| {
                    ip.trim().parse::<IpAddr>().map_err(|_| {
                        anyhow::anyhow!(
                            "invalid --uplink-probe {list:?}: expected auto, off or next hop addresses (IP[,IP])"
                        )
                    })
                })
                .collect::<anyhow::Result<_>>()?,
        ),
    };
    let interval_ms = interval_ms.unwrap_or(1000);
    if !(50..=60_000).contains(&interval_ms) {
        bail!("invalid --uplink-interval-ms {interval_ms}: expected 50 to 60000");
    }
    let failures = failures.unwrap_or(3);
    if failures == 0 {
        bail!("invalid --uplink-failures 0: at least one probe must go unanswered");
    }
    Ok(UplinkSettings {
        targets,
        interval: Duration::from_millis(interval_ms),
        failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplink_settings_are_checked() {
        assert_eq!(
            uplink_settings(None, None, None).unwrap(),
            UplinkSettings {
                targets: ProbeTargets::Auto,
                interval: Duration::from_secs(1),
                failures: 3
            }
        );
        assert_eq!(
            uplink_settings(Some("172.17.0.1,fd00::1"), Some(200), Some(2))
                .unwrap()
                .targets,
            ProbeTargets::Given(vec![
                "172.17.0.1".parse().unwrap(),
                "fd00::1".parse().unwrap()
            ])
        );
        assert_eq!(
            uplink_settings(Some("off"), None, None).unwrap().targets,
            ProbeTargets::Off
        );
        for (probe, interval, failures, expected) in [
            (Some("router"), None, None, "expected auto, off"),
            (None, Some(10), None, "50 to 60000"),
            (None, None, Some(0), "at least one probe"),
        ] {
            let error = uplink_settings(probe, interval, failures)
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    fn input() -> SettingsInput {
        SettingsInput {
            name: Some("gw1".into()),
            internal_interface: Some("eth0".into()),
            external_interface: Some("net1".into()),
            external_ip: Some("172.17.0.11".into()),
            snat: vec!["10.16.0.0/16".into()],
            ..Default::default()
        }
    }

    #[test]
    fn valid_settings_with_defaults() {
        let s = input().validate().unwrap();
        assert_eq!(
            s.port_range, None,
            "derived from the netns when the agent starts"
        );
        assert_eq!(
            s.policy.get(&"10.16.0.0/16".parse().unwrap()),
            Some(&Action::Snat)
        );
        assert_eq!(
            s.max_flow_entries,
            flow_table_entries(FLOW_TABLE_DEFAULT_ENTRIES / 2)
        );
    }

    #[test]
    fn bandwidth_limits_are_read_each_way() {
        let s = SettingsInput {
            egress_rate: Some("100".into()),
            ingress_rate: Some("1.5G".into()),
            ..input()
        }
        .validate()
        .unwrap();
        assert_eq!(s.bandwidth.egress.unwrap().bits_per_second(), 100_000_000);
        assert_eq!(
            s.bandwidth.ingress.unwrap().bits_per_second(),
            1_500_000_000
        );
        assert_eq!(
            input().validate().unwrap().bandwidth,
            BandwidthLimits::default()
        );
        let zero = SettingsInput {
            egress_rate: Some("0".into()),
            ..input()
        };
        assert_eq!(
            zero.validate().unwrap().bandwidth.egress,
            None,
            "0: no limit"
        );
        let error = SettingsInput {
            ingress_rate: Some("10K".into()),
            ..input()
        }
        .validate()
        .unwrap_err();
        assert!(format!("{error:#}").contains("--ingress-rate"), "{error:#}");
    }

    #[test]
    fn the_default_range_is_every_port_the_instance_does_not_use() {
        let range = |min, max| PortRange { min, max };
        let kernel_default = range(32768, 60999);
        assert_eq!(
            PortRange::outside_ephemeral(kernel_default),
            Some(range(1024, 32767))
        );
        let deployment = range(61000, 65535);
        assert_eq!(
            PortRange::outside_ephemeral(deployment),
            Some(range(1024, 60999))
        );
        assert_eq!(range(1024, 60999).ports(), 59_976);
        assert_eq!(
            PortRange::outside_ephemeral(range(1024, 20000)),
            Some(range(20001, 65535))
        );
        assert_eq!(PortRange::outside_ephemeral(range(1, 65535)), None);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = |i: SettingsInput| i.validate().unwrap_err().to_string();
        assert!(
            err(SettingsInput {
                snat: vec!["10.16.0.0/33".into()],
                ..input()
            })
            .contains("invalid CIDR")
        );
        assert!(
            err(SettingsInput {
                snat: vec!["10.16.0.1/16".into()],
                ..input()
            })
            .contains("did you mean 10.16.0.0/16")
        );
        assert!(
            err(SettingsInput {
                external_ip: Some("x".into()),
                ..input()
            })
            .contains("--external-ip")
        );
        assert!(
            err(SettingsInput {
                port_range: Some("9-2".into()),
                ..input()
            })
            .contains("invalid port range")
        );
        assert!(
            err(SettingsInput {
                name: Some("a/b".into()),
                ..input()
            })
            .contains("invalid gateway name")
        );
        // bpffs refuses '.' in pin names: said before anything is created.
        assert!(
            err(SettingsInput {
                name: Some("default.gateway1".into()),
                ..input()
            })
            .contains("bpffs refuses '.'")
        );
        assert!(
            err(SettingsInput {
                snat: vec![],
                ..input()
            })
            .contains("no sources")
        );
        let both = SettingsInput {
            forward: vec!["10.16.0.0/16".into()],
            ..input()
        };
        assert!(err(both).contains("both as --snat and as --forward"));
        assert!(
            err(SettingsInput {
                internal_interface: None,
                ..input()
            })
            .contains("--internal-interface is required")
        );
    }

    #[test]
    fn the_policy_comes_from_flags_or_from_the_resource_not_both() {
        let from_resource = SettingsInput {
            snat: vec![],
            forward: vec![],
            gateway: Some("default/gateway1".into()),
            ..input()
        }
        .validate()
        .unwrap();
        assert_eq!(
            from_resource.resource,
            Some(GatewayRef {
                namespace: "default".into(),
                name: "gateway1".into()
            })
        );
        assert!(
            from_resource.policy.is_empty(),
            "filled in from the resource at start"
        );
        let both = SettingsInput {
            gateway: Some("default/gateway1".into()),
            ..input()
        }
        .validate()
        .unwrap_err();
        assert!(
            both.to_string().contains("drop --snat and --forward"),
            "{both}"
        );
        let bad = SettingsInput {
            snat: vec![],
            forward: vec![],
            gateway: Some("gateway1".into()),
            ..input()
        }
        .validate()
        .unwrap_err();
        assert!(bad.to_string().contains("NAMESPACE/NAME"), "{bad}");
    }

    #[test]
    fn external_addresses_take_one_per_family() {
        let with = |ip: &str, snat: &[&str]| {
            SettingsInput {
                external_ip: Some(ip.into()),
                snat: snat.iter().map(|s| s.to_string()).collect(),
                ..input()
            }
            .validate()
        };
        let both = with("fd00::11,172.17.0.11", &["10.16.0.0/16", "fd00:10:16::/64"]).unwrap();
        assert_eq!(both.external_ip.v4, Some(Ipv4Addr::new(172, 17, 0, 11)));
        assert_eq!(both.external_ip.v6, Some("fd00::11".parse().unwrap()));
        assert_eq!(both.external_ip.to_string(), "172.17.0.11,fd00::11");
        assert_eq!(both.policy.len(), 2);
        let v6_only = with("fd00::11", &["fd00:10:16::/64"]).unwrap();
        assert_eq!(v6_only.external_ip.v4, None);
        let err = |ip: &str, snat: &[&str]| with(ip, snat).unwrap_err().to_string();
        assert!(err("fd00::11", &["10.16.0.0/16"]).contains("has no address of its family"));
        assert!(err("172.17.0.11", &["fd00:10:16::/64"]).contains("IPv6 source"));
        assert!(err("172.17.0", &[]).contains("invalid --external-ip"));
        assert!(err("172.17.0.1,172.17.0.2", &[]).contains("two addresses of one family"));
        assert!(err("172.17.0.11", &["fd00:10:16::1/64"]).contains("did you mean fd00:10:16::/64"));
    }

    #[test]
    fn bfd_settings() {
        let s = SettingsInput {
            bfd_peers: vec!["10.255.255.255".into()],
            bfd_min_tx: Some(100),
            ..input()
        }
        .validate()
        .unwrap();
        let bfd = s.bfd.unwrap();
        assert_eq!(bfd.timers.desired_min_tx, Duration::from_millis(100));
        assert_eq!(bfd.timers.required_min_rx, Duration::from_millis(1000));
        assert_eq!(
            (bfd.timers.detect_mult, bfd.min_ttl, bfd.listen),
            (3, 254, vec![])
        );
        let dual = SettingsInput {
            bfd_peers: vec!["10.255.255.255".into(), "fd00::ff".into()],
            bfd_listen: Some("10.16.0.12, fd00:10:16::12".into()),
            ..input()
        }
        .validate()
        .unwrap();
        assert_eq!(
            dual.bfd.unwrap().listen,
            [
                "10.16.0.12".parse::<IpAddr>().unwrap(),
                "fd00:10:16::12".parse().unwrap()
            ]
        );
        assert!(input().validate().unwrap().bfd.is_none());
        let err = SettingsInput {
            bfd_peers: vec!["nope".into()],
            ..input()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("invalid --bfd-peer"), "{err}");
        let err = SettingsInput {
            health_listen: Some("8080".into()),
            ..input()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("--health-listen"), "{err}");
    }

    #[test]
    fn bare_address_is_a_host_prefix() {
        assert_eq!(
            parse_cidr("10.0.0.5").unwrap(),
            "10.0.0.5/32".parse::<IpNet>().unwrap()
        );
    }

    #[test]
    fn file_and_flags_merge() {
        let file: SettingsInput = serde_yaml::from_str(
            "name: from-file\nexternalIP: 172.17.0.12\nsnat: [10.1.0.0/24]\nforward: [10.2.0.0/24]\nportRange: 2000-3000\n",
        )
        .unwrap();
        let s = SettingsInput {
            name: None,
            external_ip: None,
            ..input()
        }
        .merge_file(file)
        .validate()
        .unwrap();
        assert_eq!(s.name, "from-file");
        assert_eq!(
            s.port_range,
            Some(PortRange {
                min: 2000,
                max: 3000
            })
        );
        assert_eq!(s.policy.len(), 3);
        let json: SettingsInput =
            serde_yaml::from_str(r#"{"name": "j", "snat": ["10.3.0.0/24"]}"#).unwrap();
        assert_eq!(json.name.as_deref(), Some("j"));
        assert!(serde_yaml::from_str::<SettingsInput>("nmae: typo\n").is_err());
    }

    #[test]
    fn port_ranges_overlap() {
        let kernel = PortRange {
            min: 32768,
            max: 60999,
        };
        assert!(
            !PortRange::outside_ephemeral(kernel)
                .unwrap()
                .overlaps(&kernel)
        );
        assert!(
            PortRange {
                min: 30000,
                max: 40000
            }
            .overlaps(&kernel)
        );
    }
}

#[cfg(test)]
mod config_keys {
    use std::collections::BTreeSet;

    use super::SettingsInput;

    /// Backticked words of `text`.
    fn backticked(text: &str) -> BTreeSet<String> {
        text.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_readme_lists_exactly_the_keys_a_settings_file_takes() {
        // serde names every field it expects when it meets an unknown one.
        let refused = serde_yaml::from_str::<SettingsInput>("notASetting: 1")
            .unwrap_err()
            .to_string();
        let expected = refused
            .split("expected one of ")
            .nth(1)
            .expect("serde lists the expected fields");
        let taken = backticked(expected);
        let readme = include_str!("../../../README.md");
        let bullet = readme
            .split("- `--config FILE`")
            .nth(1)
            .and_then(|rest| rest.split("\n- ").next())
            .expect("the README has a `--config FILE` bullet");
        let listed = backticked(
            bullet
                .split("keys:")
                .nth(1)
                .expect("the bullet says \"keys:\""),
        );
        assert_eq!(
            listed, taken,
            "the README's --config keys differ from SettingsInput's"
        );
    }
}
