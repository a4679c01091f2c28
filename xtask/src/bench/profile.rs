//! `cargo xtask bench profile`: where the CPU goes in each mode. Established UDP (udp-many), an established TCP
//! stream (tcp-stream-1) and new TCP connections (tcp-crr) run under `perf record -a -g -e cpu-clock` (this VM
//! has no hardware counters; the software clock samples every CPU 999 times a second, with call chains), and the
//! samples are grouped by what does the work, in ns per delivered packet, per MiB carried or per connection. It
//! shows how much of the path is the gateway's own work (veg's program and the BPF helpers it calls, or netfilter
//! and the kernel's forwarding) and how much is the same in every mode (veth, bridge, macvlan, the endpoints), and
//! veg's own work against MASQUERADE's round by round, with its spread.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, ensure};
use serde_json::json;
use veg_testbed::{command::output_of, topology::Topology};

use super::{
    modes::{ALL, enable},
    scenarios::{Tools, measure},
    topology,
};
use crate::workspace::step;

/// perf's sampling frequency per CPU.
const FREQUENCY: u32 = 999;

/// What does a share of the work: which kernel symbols belong to it, and whether it is the gateway's own work
/// (in one mode or the other) or the path every mode shares.
struct Category {
    name: &'static str,
    gateway_work: bool,
    /// Symbol prefixes; the first category with a matching prefix wins.
    prefixes: &'static [&'static str],
}

const CATEGORIES: &[Category] = &[
    Category {
        name: "veg program",
        gateway_work: true,
        prefixes: &["bpf_prog_"],
    },
    Category {
        name: "BPF maps and helpers",
        gateway_work: true,
        prefixes: &[
            "htab_",
            "__htab_",
            "lookup_nulls_elem_raw",
            "bpf_",
            "__bpf_",
            "trie_",
            "tcx_",
            "skb_do_redirect",
            "sk_skb_",
        ],
    },
    Category {
        name: "netfilter: conntrack, NAT, rules",
        gateway_work: true,
        prefixes: &[
            "nf_",
            "__nf_",
            "____nf_",
            "nft_",
            "ipt",
            "hash_conntrack",
            "masq",
        ],
    },
    Category {
        name: IP_FORWARDING,
        gateway_work: true,
        prefixes: &[
            "ip_", "__ip_", "ip4_", "fib_", "fib4_", "neigh_", "__neigh", "dst_", "rt_", "ipv4_",
        ],
    },
    Category {
        name: BRIDGE,
        gateway_work: false,
        prefixes: &["veth_", "br_", "__br_", "macvlan_"],
    },
];
const REST: &str = "rest of the kernel (skb, netdev core, AF_PACKET send, TCP)";
const IP_FORWARDING: &str = "IP routing and forwarding";
const BRIDGE: &str = "veth, bridge, macvlan";
/// The endpoints' IP stacks (TCP scenarios): the same in every mode.
const ENDPOINT_IP: &str = "the endpoints' IP stacks";
const USER: &str = "user space (the load generator)";

fn is_gateway_work(name: &str) -> bool {
    CATEGORIES.iter().any(|c| c.name == name && c.gateway_work)
}

/// The server's ingress drop rule (nftables netdev hook): the same in every mode, whatever symbols it shares with
/// the gateway's own netfilter work.
const SERVER_DROP: &str = "the server's drop rule";

/// One sample's category and the frame that decided it: the server's drop rule if it is on the stack, else the
/// innermost frame that belongs to a category (a memcpy called by a BPF helper is the helper's work), else the
/// rest of the kernel, or user space when the sample is there.
fn category(stack: &[(String, bool)], endpoints_use_ip: bool) -> (&'static str, Option<&str>) {
    if stack
        .iter()
        .any(|(symbol, _)| symbol == "nft_do_chain_netdev")
    {
        return (SERVER_DROP, None);
    }
    // The bridge between the client and the gateway runs its own netfilter hooks (br_netfilter) and IP helpers
    // (ip_sabotage_in) in every mode: its work, not the gateway's, whatever the frame. The gateway's own receive
    // path never runs under br_handle_frame (the bridge hands frames to the gateway's veth through a backlog).
    if stack
        .iter()
        .any(|(symbol, _)| symbol.starts_with("br_handle_frame"))
    {
        return (BRIDGE, None);
    }
    // With TCP the endpoints' own IP stacks run the same functions as the gateway's forwarding, and a sample
    // does not say in which namespace it ran: their IP work is the gateway's only under ip_forward. (This leaves
    // the kernel's input route lookup, before ip_forward, out of MASQUERADE's work: against veg, if anything.)
    let forwarding = stack.iter().any(|(symbol, _)| symbol == "ip_forward");
    for (symbol, _) in stack {
        if let Some(c) = CATEGORIES
            .iter()
            .find(|c| c.prefixes.iter().any(|p| symbol.starts_with(p)))
        {
            if c.name == IP_FORWARDING && endpoints_use_ip && !forwarding {
                return (ENDPOINT_IP, None);
            }
            return (c.name, Some(symbol));
        }
    }
    match stack.first() {
        Some((_, true)) => (REST, None),
        _ => (USER, None),
    }
}

/// Busy samples of one mode: per category, and per deciding frame of the gateway's own work.
#[derive(Default)]
pub(super) struct Samples {
    by_category: BTreeMap<&'static str, u64>,
    gateway_frames: BTreeMap<String, u64>,
}

fn is_idle(stack: &[(String, bool)]) -> bool {
    stack.iter().any(|(symbol, _)| {
        ["do_idle", "cpu_startup_entry", "default_idle", "safe_halt"]
            .iter()
            .any(|s| symbol.contains(s))
    })
}

/// Busy samples, from the call chains `perf script` prints (one frame per line: address, symbol, (object); a
/// blank line between samples).
fn read_samples(data: &str, endpoints_use_ip: bool) -> anyhow::Result<Samples> {
    let text = output_of(Command::new("perf").args(["script", "-i", data, "-F", "ip,sym,dso"]))
        .map_err(anyhow::Error::msg)?;
    let mut samples = Samples::default();
    for block in text.split("\n\n") {
        let stack: Vec<(String, bool)> = block
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let _address = fields.next()?;
                let symbol = fields.next()?.split('+').next()?.to_owned();
                let kernel = line.contains("[kernel") || symbol.starts_with("bpf_prog_");
                Some((symbol, kernel))
            })
            .collect();
        if stack.is_empty() || is_idle(&stack) {
            continue;
        }
        let (category, frame) = category(&stack, endpoints_use_ip);
        *samples.by_category.entry(category).or_insert(0) += 1;
        if let Some(frame) = frame.filter(|_| is_gateway_work(category)) {
            *samples.gateway_frames.entry(frame.to_owned()).or_insert(0) += 1;
        }
    }
    Ok(samples)
}

impl Samples {
    fn add(&mut self, other: Samples) {
        for (category, n) in other.by_category {
            *self.by_category.entry(category).or_insert(0) += n;
        }
        for (frame, n) in other.gateway_frames {
            *self.gateway_frames.entry(frame).or_insert(0) += n;
        }
    }
}

/// One mode's profile, in CPU ns per unit of work.
pub(super) struct ModeProfile {
    mode: &'static str,
    by_category: BTreeMap<&'static str, f64>,
    /// Every frame of the gateway's own work, heaviest first (reports show the first TOP_FRAMES).
    frames: Vec<(String, f64)>,
}

impl ModeProfile {
    /// Samples over the units of work done meanwhile (packets, MiB, connections). Each sample stands for
    /// 1/FREQUENCY s of one CPU.
    pub(super) fn new(mode: &'static str, samples: &Samples, units: f64) -> ModeProfile {
        let ns_per_unit = |n: u64| n as f64 * 1e9 / f64::from(FREQUENCY) / units;
        let mut frames: Vec<(String, f64)> = samples
            .gateway_frames
            .iter()
            .map(|(frame, n)| (frame.clone(), ns_per_unit(*n)))
            .collect();
        frames.sort_by(|a, b| b.1.total_cmp(&a.1));
        ModeProfile {
            mode,
            by_category: samples
                .by_category
                .iter()
                .map(|(c, n)| (*c, ns_per_unit(*n)))
                .collect(),
            frames,
        }
    }

    /// Every round's samples summed, over all their units.
    fn summed(mode: &'static str, rounds: Vec<Round>) -> ModeProfile {
        let mut samples = Samples::default();
        let mut units = 0.0;
        for round in rounds {
            samples.add(round.samples);
            units += round.units;
        }
        ModeProfile::new(mode, &samples, units)
    }

    /// The heaviest frames of the gateway's own work.
    fn top_frames(&self) -> &[(String, f64)] {
        &self.frames[..self.frames.len().min(TOP_FRAMES)]
    }

    /// ns per unit of one frame of the gateway's own work (0 when no sample landed in it).
    pub(super) fn frame(&self, name: &str) -> f64 {
        self.frames
            .iter()
            .find(|(frame, _)| frame == name)
            .map_or(0.0, |(_, ns)| *ns)
    }

    /// ns per packet of the gateway's own work (`gateway`) or of the rest.
    pub(super) fn work(&self, gateway: bool) -> f64 {
        self.by_category
            .iter()
            .filter(|(name, _)| is_gateway_work(name) == gateway)
            .map(|(_, v)| v)
            .sum()
    }
}

/// Frames listed per mode.
const TOP_FRAMES: usize = 8;

/// A scenario the profile runs, and what its work is counted per.
pub(super) struct Profiled {
    pub(super) scenario: &'static str,
    /// The scenario's metric that measures what was done, and how many units one of it is per second.
    pub(super) metric: &'static str,
    pub(super) units_per_metric_second: f64,
    pub(super) unit: &'static str,
    /// Whether the endpoints' IP stacks are on the path (TCP), so that IP frames are the gateway's only under
    /// ip_forward.
    endpoints_use_ip: bool,
}

pub(super) const PROFILED: &[Profiled] = &[
    Profiled {
        scenario: "udp-many",
        metric: "kpps",
        units_per_metric_second: 1000.0,
        unit: "delivered packet",
        endpoints_use_ip: false,
    },
    Profiled {
        scenario: "tcp-stream-1",
        metric: "gbit_per_s",
        units_per_metric_second: 1e9 / 8.0 / 1_048_576.0,
        unit: "MiB carried",
        endpoints_use_ip: true,
    },
    Profiled {
        scenario: "tcp-crr",
        metric: "connections_per_s",
        units_per_metric_second: 1.0,
        unit: "connection (connect, request, close)",
        endpoints_use_ip: true,
    },
];

/// One round of one scenario in one mode: its samples and the units of work done meanwhile.
pub(super) struct Round {
    pub(super) samples: Samples,
    pub(super) units: f64,
}

pub fn run(rounds: usize, seconds: f64) -> anyhow::Result<()> {
    // The set-up in topology() installs perf (Debian's linux-perf).
    let (topo, tools) = topology(false)?;
    ensure!(
        Command::new("perf")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "perf is missing: `cargo xtask setup` installs it (Debian's linux-perf)"
    );
    let _tcp_server = super::KillOnDrop(super::scenarios::start_tcp_server(&topo, &tools)?);
    let scratch = PerfData::new("profile");
    // [scenario][mode][round]
    let mut recorded: Vec<Vec<Vec<Round>>> = PROFILED
        .iter()
        .map(|_| ALL.iter().map(|_| Vec::new()).collect())
        .collect();
    for round in 0..rounds {
        for (profiled, by_mode) in PROFILED.iter().zip(recorded.iter_mut()) {
            for (mode, rounds_of_mode) in ALL.iter().zip(by_mode.iter_mut()) {
                step(&format!(
                    "round {}/{rounds}: {} with {} under perf record",
                    round + 1,
                    profiled.scenario,
                    mode.name()
                ));
                let _active = enable(&topo, *mode);
                let done =
                    record_mode(profiled, &topo, &tools, seconds, &scratch).with_context(|| {
                        format!("profiling {} with {}", profiled.scenario, mode.name())
                    })?;
                rounds_of_mode.push(done);
            }
        }
    }

    let mut table = String::new();
    let mut json_scenarios = BTreeMap::new();
    for (profiled, by_mode) in PROFILED.iter().zip(recorded) {
        let ratios = RoundRatios::of(&by_mode);
        let profiles: Vec<ModeProfile> = ALL
            .iter()
            .zip(by_mode)
            .map(|(mode, rounds)| ModeProfile::summed(mode.name(), rounds))
            .collect();
        table.push_str(&markdown(profiled, &profiles, &ratios, rounds, seconds));
        table.push('\n');
        let modes: BTreeMap<&str, serde_json::Value> = profiles
            .iter()
            .map(|p| {
                (
                    p.mode,
                    json!({ "ns_per_unit": p.by_category, "top_gateway_frames": p.top_frames() }),
                )
            })
            .collect();
        json_scenarios.insert(
            profiled.scenario,
            json!({
                "unit": profiled.unit, "modes": modes,
                "veg_over_iptables_gateway_work_by_round": ratios.raw,
                "veg_over_iptables_gateway_work_per_same_path_by_round": ratios.normalized,
            }),
        );
    }
    super::publish(
        "profile",
        &table,
        Some(&json!({
            "rounds": rounds, "seconds": seconds, "frequency_hz": FREQUENCY, "scenarios": json_scenarios
        })),
    )
}

/// A scenario in the mode the topology's gateway is in, under perf record: the samples and the units of work.
pub(super) fn record_mode(
    profiled: &Profiled,
    topo: &Topology,
    tools: &Tools,
    seconds: f64,
    scratch: &PerfData,
) -> anyhow::Result<Round> {
    let mut perf = start_perf_record(&["-g"], FREQUENCY, scratch.path(), seconds)?;
    let sample = measure(profiled.scenario, topo, tools, seconds);
    let recorded = perf.wait()?;
    let sample = sample?;
    ensure!(recorded.success(), "perf record failed");
    let metric = sample
        .iter()
        .find(|(m, _)| *m == profiled.metric)
        .map(|(_, v)| *v)
        .with_context(|| format!("no {}", profiled.metric))?;
    Ok(Round {
        samples: read_samples(scratch.path(), profiled.endpoints_use_ip)?,
        units: metric * profiled.units_per_metric_second * seconds,
    })
}

/// Where `perf record` writes, in the temporary directory: removed, with the `.old` copy perf rotates to, when
/// dropped, so that a failed run leaves nothing behind either.
pub(super) struct PerfData(String);

impl PerfData {
    pub(super) fn new(name: &str) -> PerfData {
        let path = std::env::temp_dir().join(format!("veg-bench-{name}.data"));
        PerfData(path.to_string_lossy().into_owned())
    }

    pub(super) fn path(&self) -> &str {
        &self.0
    }
}

impl Drop for PerfData {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_file(format!("{}.old", self.0));
    }
}

/// `perf record -a -e cpu-clock` of the whole machine at `frequency` samples a second per CPU (with `extra`
/// arguments), into `output`, for `seconds` and a margin, once it has had half a second to start.
pub(super) fn start_perf_record(
    extra: &[&str],
    frequency: u32,
    output: &str,
    seconds: f64,
) -> anyhow::Result<std::process::Child> {
    let perf = Command::new("perf")
        .args(["record", "-a", "-e", "cpu-clock"])
        .args(extra)
        .args(["-F", &frequency.to_string(), "-o", output, "--", "sleep"])
        .arg(format!("{}", seconds + 1.0))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting perf record")?;
    std::thread::sleep(Duration::from_millis(500));
    Ok(perf)
}

/// veg's own work against iptables MASQUERADE's, round by round (each round's two modes ran minutes apart at
/// most): as measured, and each divided by its round's same path first, which takes out how fast the machine
/// happened to be while each mode ran.
struct RoundRatios {
    raw: Vec<f64>,
    normalized: Vec<f64>,
}

impl RoundRatios {
    fn of(by_mode: &[Vec<Round>]) -> RoundRatios {
        let index = |name| ALL.iter().position(|m| m.name() == name).expect("a mode");
        let (veg, iptables) = (&by_mode[index("veg")], &by_mode[index("iptables")]);
        let mut ratios = RoundRatios {
            raw: Vec::new(),
            normalized: Vec::new(),
        };
        for (v, i) in veg.iter().zip(iptables) {
            let (v, i) = (
                ModeProfile::new("", &v.samples, v.units),
                ModeProfile::new("", &i.samples, i.units),
            );
            ratios.raw.push(v.work(true) / i.work(true));
            ratios
                .normalized
                .push((v.work(true) / v.work(false)) / (i.work(true) / i.work(false)));
        }
        ratios
    }
}

/// "median (min-max)" of ratios.
pub(super) fn spread(values: &[f64]) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.as_slice() {
        [] => "-".into(),
        [one] => format!("{one:.2}x"),
        _ => format!(
            "{:.2}x ({:.2}-{:.2})",
            sorted[sorted.len() / 2],
            sorted[0],
            sorted[sorted.len() - 1]
        ),
    }
}

fn markdown(
    profiled: &Profiled,
    profiles: &[ModeProfile],
    ratios: &RoundRatios,
    rounds: usize,
    seconds: f64,
) -> String {
    let unit = profiled.unit;
    let mut out = format!(
        "{} ({rounds} round(s) of {seconds} s per mode, interleaved, samples summed) under \
         `perf record -a -g -e cpu-clock -F {FREQUENCY}`: CPU ns per {unit}, by what does the work \
         (each sample goes to the innermost frame with a category; idle excluded).\n\n| work |",
        profiled.scenario
    );
    for p in profiles {
        let _ = write!(out, " {} |", p.mode);
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(profiles.len()));
    out.push('\n');
    let names = CATEGORIES
        .iter()
        .map(|c| c.name)
        .chain([SERVER_DROP, ENDPOINT_IP, REST, USER]);
    for name in names {
        let _ = write!(out, "| {name} |");
        for p in profiles {
            let _ = write!(
                out,
                " {:.0} |",
                p.by_category.get(name).copied().unwrap_or(0.0)
            );
        }
        out.push('\n');
    }
    for (label, gateway) in [
        ("**the gateway's own work**", true),
        ("**the same path in every mode**", false),
    ] {
        let _ = write!(out, "| {label} |");
        for p in profiles {
            let _ = write!(out, " **{:.0}** |", p.work(gateway));
        }
        out.push('\n');
    }
    // The same path is the same work in every mode: dividing by it takes out how fast the machine happened to be.
    let _ = write!(out, "| **gateway's work per ns of the same path** |");
    for p in profiles {
        let _ = write!(out, " **{:.2}** |", p.work(true) / p.work(false));
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "\nveg's own work / MASQUERADE's, per round: {} as measured, {} per ns of the same path \
         (median, min-max over {} rounds).",
        spread(&ratios.raw),
        spread(&ratios.normalized),
        ratios.raw.len()
    );
    let _ = writeln!(
        out,
        "\n| mode | heaviest frames of the gateway's own work, ns per {unit} |\n|---|---|"
    );
    for p in profiles {
        let frames: Vec<String> = p
            .top_frames()
            .iter()
            .map(|(frame, ns)| format!("{frame} {ns:.0}"))
            .collect();
        let _ = writeln!(out, "| {} | {} |", p.mode, frames.join(", "));
    }
    out
}
