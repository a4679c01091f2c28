//! `cargo xtask bench xdp`: what the XDP lever would start from. veg as it runs (TC on both interfaces) against
//! veg with an XDP program that passes every packet attached natively to the instance's internal veth (eth0),
//! rounds interleaved. Whatever XDP did on eth0, the packet would still go on as an skb: net1 is a macvlan, which
//! has no XDP transmit, so an XDP redirect there has no native path and the TC program still has to hand the
//! packet over. The pass program's cost is therefore the least that moving any of veg's work to XDP would add.

use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, OwnedFd},
};

use anyhow::{Context as _, ensure};
use serde_json::json;
use veg_testbed::netns::Netns;

use super::{
    bpf_sys::{ATTR_SIZE, BPF_LINK_CREATE, BPF_PROG_LOAD, call_for_fd, put_u32, put_u64},
    modes::{Mode, enable},
    profile::{PROFILED, Profiled},
    report::median,
    scenarios::{kernel_cpu_ns, measure},
    topology,
};
use crate::workspace::step;

/// The scenarios measured, counted as the profile counts them: established UDP (per packet) and one TCP stream
/// (per MiB).
fn scenarios() -> impl Iterator<Item = &'static Profiled> {
    PROFILED
        .iter()
        .filter(|p| matches!(p.scenario, "udp-many" | "tcp-stream-1"))
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Tc,
    TcBehindXdpPass,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Tc => "veg (TC)",
            Variant::TcBehindXdpPass => "veg + XDP pass on eth0",
        }
    }
}

/// One scenario's run in one variant: its rate and the machine's kernel CPU per unit of work.
struct Measured {
    scenario: &'static Profiled,
    variant: Variant,
    /// The scenario's metric: kpps for UDP, Gbit/s for TCP.
    rate: f64,
    /// ns per packet for UDP, per MiB for TCP.
    kernel_ns_per_unit: f64,
}

pub fn run(rounds: usize, seconds: f64) -> anyhow::Result<()> {
    let (topo, tools) = topology(false)?;
    let mut measured = Vec::new();
    for round in 0..rounds {
        for variant in [Variant::Tc, Variant::TcBehindXdpPass] {
            step(&format!("round {}/{rounds}: {}", round + 1, variant.name()));
            let active = enable(&topo, Mode::Veg);
            let xdp = match variant {
                Variant::Tc => None,
                Variant::TcBehindXdpPass => Some(XdpPass::attach(&topo.gateway, "eth0")?),
            };
            for scenario in scenarios() {
                let name = scenario.scenario;
                let before = kernel_cpu_ns();
                let sample = measure(name, &topo, &tools, seconds)
                    .with_context(|| format!("{name} with {}", variant.name()))?;
                let kernel_ns = kernel_cpu_ns() - before;
                let rate = sample
                    .iter()
                    .find(|(m, _)| *m == scenario.metric)
                    .map(|(_, v)| *v)
                    .with_context(|| format!("{name} reported no {}", scenario.metric))?;
                let units = rate * scenario.units_per_metric_second * seconds;
                ensure!(
                    units > 0.0,
                    "{name} carried nothing with {}",
                    variant.name()
                );
                println!(
                    "  {name:<13} {}={rate:.2}  kernel_ns_per_unit={:.0}",
                    scenario.metric,
                    kernel_ns / units
                );
                measured.push(Measured {
                    scenario,
                    variant,
                    rate,
                    kernel_ns_per_unit: kernel_ns / units,
                });
            }
            drop(xdp);
            drop(active);
        }
    }
    let table = markdown(&measured, rounds, seconds);
    let rows: Vec<_> = measured
        .iter()
        .map(|m| {
            json!({ "scenario": m.scenario.scenario, "variant": m.variant.name(), "rate": m.rate,
                    "kernel_ns_per_unit": m.kernel_ns_per_unit })
        })
        .collect();
    super::publish(
        "xdp",
        &table,
        Some(&json!({ "rounds": rounds, "seconds": seconds, "runs": rows })),
    )
}

/// Which of a run's numbers a table row shows.
type Value = fn(&Measured) -> f64;

fn markdown(measured: &[Measured], rounds: usize, seconds: f64) -> String {
    let mut out = format!(
        "XDP's entry fee: medians of {rounds} round(s) of {seconds} s, variants interleaved; kernel CPU is the \
         whole machine's (system, irq, softirq).\n\n\
         | scenario | unit | veg (TC) | veg + XDP pass on eth0 | XDP pass / TC |\n|---|---|---:|---:|---:|\n"
    );
    let of = |scenario: &Profiled, variant, value: Value| {
        median(
            measured
                .iter()
                .filter(|m| std::ptr::eq(m.scenario, scenario) && m.variant == variant)
                .map(value)
                .collect(),
        )
    };
    for scenario in scenarios() {
        let cpu_unit = format!("kernel ns per {}", scenario.unit);
        let rows: [(&str, Value); 2] = [
            (scenario.metric, |m| m.rate),
            (&cpu_unit, |m| m.kernel_ns_per_unit),
        ];
        for (unit, value) in rows {
            let tc = of(scenario, Variant::Tc, value);
            let xdp = of(scenario, Variant::TcBehindXdpPass, value);
            out.push_str(&format!(
                "| {} | {unit} | {tc:.1} | {xdp:.1} | {:.2}x |\n",
                scenario.scenario,
                xdp / tc
            ));
        }
    }
    out
}

/// An XDP program that passes every packet (`r0 = XDP_PASS; exit`), attached in driver mode to an interface in a
/// namespace through a BPF link: closing the link (dropping this) detaches it.
struct XdpPass {
    _link: OwnedFd,
}

const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const XDP_PASS: i32 = 2;

impl XdpPass {
    fn attach(ns: &Netns, interface: &str) -> anyhow::Result<XdpPass> {
        let interface = interface.to_owned();
        ns.run(move || {
            let name = CString::new(interface.as_str())?;
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            ensure!(ifindex != 0, "no interface {interface}");
            let program = load_pass_program()?;
            let link = link_xdp(&program, ifindex)
                .with_context(|| format!("attaching XDP in driver mode to {interface}"))?;
            Ok(XdpPass { _link: link })
        })
    }
}

fn load_pass_program() -> anyhow::Result<OwnedFd> {
    // mov r0, XDP_PASS (opcode 0xb7, dst r0, imm); exit (0x95).
    let mut instructions = [0u8; 16];
    instructions[0] = 0xb7;
    instructions[4..8].copy_from_slice(&XDP_PASS.to_ne_bytes());
    instructions[8] = 0x95;
    let license = c"GPL";
    let mut attr = [0u8; ATTR_SIZE];
    put_u32(&mut attr, 0, BPF_PROG_TYPE_XDP); // prog_type
    put_u32(&mut attr, 4, 2); // insn_cnt
    put_u64(&mut attr, 8, instructions.as_ptr() as u64); // insns
    put_u64(&mut attr, 16, license.as_ptr() as u64); // license
    put_u32(&mut attr, 68, BPF_XDP); // expected_attach_type
    call_for_fd(BPF_PROG_LOAD, &attr).context("loading an XDP pass program")
}

fn link_xdp(program: &OwnedFd, ifindex: u32) -> std::io::Result<OwnedFd> {
    let mut attr = [0u8; ATTR_SIZE];
    put_u32(&mut attr, 0, program.as_raw_fd() as u32); // link_create.prog_fd
    put_u32(&mut attr, 4, ifindex); // link_create.target_ifindex
    put_u32(&mut attr, 8, BPF_XDP); // link_create.attach_type
    put_u32(&mut attr, 12, XDP_FLAGS_DRV_MODE); // link_create.flags
    call_for_fd(BPF_LINK_CREATE, &attr)
}
