//! Port exhaustion: what a packet costs the gateway when its flow can get no port. A client offers twice as many
//! UDP flows toward one server endpoint as the translation range holds (the same 4,096-port range in every mode),
//! each flow's packets again and again: half the flows are translated, the packets of the other half find the
//! range full. The number that matters is the kernel's CPU per offered packet, against the established cost of
//! udp-many in the same run: a client that asks for more than the range holds must not make every packet dear.

use veg_testbed::topology::Topology;

use super::{
    modes::enable_translating,
    report::{self, Record},
    scenarios::{Sample, Tools, flood},
};

pub const SCENARIO: &str = "port-exhaustion";
/// The translation range of every mode here: 4,096 ports toward the one remote endpoint.
const RANGE: &str = "10000-14095";
/// Twice what the range holds.
const FLOWS: u16 = 8192;
const UDP_PORT: u16 = 9100;

/// Every mode in turn, `rounds` times, `seconds` each.
pub fn run(
    topo: &Topology,
    tools: &Tools,
    rounds: usize,
    seconds: f64,
) -> anyhow::Result<Vec<Record>> {
    let doing = format!("offered {FLOWS} flows for {} ports", FLOWS / 2);
    report::interleaved(SCENARIO, rounds, &doing, |mode| {
        let _active = enable_translating(topo, mode, &[], Some(RANGE));
        measure(topo, tools, seconds)
    })
}

fn measure(topo: &Topology, tools: &Tools, seconds: f64) -> anyhow::Result<Sample> {
    let flood = flood(topo, tools, UDP_PORT, FLOWS, seconds)?;
    let offered = flood.sent.max(1.0);
    Ok(vec![
        (
            "kernel_ns_per_offered_packet",
            flood.kernel_cpu_ns / offered,
        ),
        ("offered_kpps", offered / flood.seconds / 1000.0),
        ("delivered_pct", 100.0 * flood.delivered / offered),
    ])
}
