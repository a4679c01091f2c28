//! The maps shared with the agent. Those the agent reads (settings, policy, flows, counters, fragments) are pinned
//! by the agent under the gateway's bpffs directory, so that a restarted agent finds every live flow, its counters
//! and its policy where it left them. They are declared with BTF (`#[btf_map]`), so that the kernel knows their
//! keys' and values' fields and `bpftool map dump pinned` prints them by name.

use crate::{
    packet::Packet,
    pending::PendingRing,
    ports::PortSearch,
    rate::RateBucket,
    route_cache::{CachedRoute, ROUTE_CACHE_SLOTS},
    slow_path::SlowPathRecord,
};
use aya_ebpf::{
    bindings::bpf_fib_lookup,
    btf_maps,
    macros::{btf_map, map},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use veg_common::{
    address::Address,
    config::{CONFIG_KEY, GatewayConfig},
    flow::{FLOW_TABLE_DEFAULT_ENTRIES, FlowCounts, FlowEntry, FlowKey},
    fragment::{DatagramKey, DatagramKeyV6, DatagramTranslation, DatagramTranslationV6},
    policy::{POLICY_MAX_ENTRIES, Policy, PolicyKeyV4, PolicyKeyV6},
    record::FlowRecord,
    stats::Counters,
};

#[btf_map]
pub static CONFIG: btf_maps::Array<GatewayConfig, 1> = btf_maps::Array::new();

#[btf_map]
pub static POLICY_V4: btf_maps::LpmTrie<PolicyKeyV4, Policy, { POLICY_MAX_ENTRIES as usize }> =
    btf_maps::LpmTrie::new();

#[btf_map]
pub static POLICY_V6: btf_maps::LpmTrie<PolicyKeyV6, Policy, { POLICY_MAX_ENTRIES as usize }> =
    btf_maps::LpmTrie::new();

/// One shared table for both directions: a reply may land on another CPU than its request, so per-CPU tables
/// would miss it. A plain preallocated hash, not an LRU one: the kernel never evicts from it, so the datapath
/// decides what gives way when it is full (pending.rs): flows that never saw a reply, oldest first, never an
/// established one; with none to give, the new flow is dropped, as conntrack does. (An LRU map evicted whatever
/// was idle longest: a flood of new flows five times the table removed half the idle established flows.) A CPU
/// whose share of the preallocated entries runs out takes from the others', so all of them serve.
/// Sized by the agent (--max-flows); the declared size is the default.
#[btf_map]
pub static FLOWS: btf_maps::HashMap<FlowKey, FlowEntry, { FLOW_TABLE_DEFAULT_ENTRIES as usize }> =
    btf_maps::HashMap::new();

/// What each translation carried, keyed by its outbound key (records.rs), for its ended record: only while
/// translation records are on. Kept apart from the flow table so that a gateway without records pays nothing for
/// them there. Sized by the agent: one entry per translation with records on, a single one with them off (the
/// programs then never touch it); the declared size is the default table's. Preallocated, as the flow table is,
/// so that counting a new flow never allocates.
#[btf_map]
pub static FLOW_COUNTS: btf_maps::HashMap<
    FlowKey,
    FlowCounts,
    { (FLOW_TABLE_DEFAULT_ENTRIES / 2) as usize },
> = btf_maps::HashMap::new();

/// Per CPU, the flows created most recently, oldest first: the ones a full table gives up (pending.rs). Not
/// pinned: forgetting them only means a full table drops new flows until they are recorded again.
#[map]
pub static PENDING: PerCpuArray<PendingRing> = PerCpuArray::with_max_entries(1, 0);

/// One `Counters` per CPU, which only the programs write.
#[btf_map]
pub static STATS: btf_maps::PerCpuArray<Counters, 1> = btf_maps::PerCpuArray::new();

/// The counters of the work the agent does itself (the slow path's), which only the agent writes: apart from
/// STATS, so that the agent's writes never race with the programs' adds. The programs never touch it; it is
/// declared here so that it is created and pinned with the others.
#[btf_map]
pub static AGENT_STATS: btf_maps::Array<Counters, 1> = btf_maps::Array::new();

/// Per-CPU scratch space for the flow table's work (flows.rs, ports.rs). Not pinned: it holds nothing between
/// packets.
#[map]
pub static FLOW_SCRATCH: PerCpuArray<FlowScratch> = PerCpuArray::with_max_entries(1, 0);

/// Keys and entries being built, kept here rather than on the stack: the verifier allows 512 bytes of stack for a
/// program and the functions it calls together (the port search's steps, the ICMP error builder), and flow keys
/// and entries are 40 bytes each.
#[repr(C)]
pub struct FlowScratch {
    /// The flow a port is being searched for, and the entries a claim of one port builds from it.
    pub key: FlowKey,
    pub entry: FlowEntry,
    pub reverse_key: FlowKey,
    pub reverse: FlowEntry,
    pub forward: FlowEntry,
    /// The remote endpoint remembered as full (EXHAUSTED).
    pub endpoint: FlowKey,
    /// The other half of a pair being repaired.
    pub partner: FlowEntry,
    /// The other half's key of a translation being removed (flows.rs's remove_translation).
    pub removed_partner: FlowKey,
    /// The outbound key of the translation a packet from outside is counted on, and the counts a translation's
    /// first packet starts (records.rs).
    pub counts_key: FlowKey,
    pub counts: FlowCounts,
    /// The flow an ICMP error's quoted packet belongs to (icmp_errors.rs, icmp6_errors.rs).
    pub quoted_key: FlowKey,
    /// The address an ICMPv6 error from outside was translated back to: its client (icmp6_errors.rs).
    pub error_client: Address,
    /// The IPv6 datagram a fragment belongs to (fragments.rs).
    pub datagram_v6: DatagramKeyV6,
    /// The port search under way (ports.rs).
    pub search: PortSearch,
}

/// The per-CPU scratch space.
#[inline(always)]
pub fn flow_scratch() -> Option<&'static mut FlowScratch> {
    FLOW_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Remote endpoints toward which a port search recently failed: (remote address and port, external address,
/// protocol) -> until when (CLOCK_MONOTONIC ns) new flows toward them are dropped without searching again. This
/// is what keeps a client that offers more flows than the range holds from costing a full search per packet.
/// Not pinned: forgetting it only costs one search per endpoint.
#[map]
pub static EXHAUSTED: LruHashMap<FlowKey, u64> =
    LruHashMap::with_max_entries(EXHAUSTED_ENDPOINTS, 0);

/// How many exhausted endpoints are remembered at once (the least recently failed are forgotten first).
const EXHAUSTED_ENDPOINTS: u32 = 4096;

/// The packet being handled, as parsed (packet.rs). Not pinned: it holds nothing between packets.
#[map]
pub static PACKET: PerCpuArray<Packet> = PerCpuArray::with_max_entries(1, 0);

/// The translations of fragmented datagrams, for their later fragments (fragments.rs). Pinned, so that the agent
/// (which sends held fragments with them) and `veg flows` can read it.
#[btf_map]
pub static FRAGMENTS: btf_maps::LruHashMap<DatagramKey, DatagramTranslation, FRAGMENTED_DATAGRAMS> =
    btf_maps::LruHashMap::new();

/// Fragmented datagrams followed at once (the least recently seen are forgotten first).
const FRAGMENTED_DATAGRAMS: usize = 16384;

/// The translations of fragmented IPv6 datagrams, for their later fragments (fragments.rs). Pinned, so that the
/// agent (which sends held fragments with them) can read it.
#[btf_map]
pub static FRAGMENTS_V6: btf_maps::LruHashMap<
    DatagramKeyV6,
    DatagramTranslationV6,
    FRAGMENTED_DATAGRAMS,
> = btf_maps::LruHashMap::new();

/// Datagrams some of whose fragments the agent holds, waiting for their first fragment (slow_path.rs). Not
/// pinned; a mark lost only delays those fragments until the agent's next look.
#[map]
pub static HELD: LruHashMap<DatagramKey, u8> = LruHashMap::with_max_entries(HELD_DATAGRAMS, 0);

const HELD_DATAGRAMS: u32 = 4096;

/// Packets for the agent (slow_path.rs): 2 MiB, a few hundred packets. Not pinned: each agent reads its own.
#[map]
pub static SLOW_PATH: RingBuf = RingBuf::with_byte_size(2 * 1024 * 1024, 0);

/// Translation records for the agent (records.rs): 4 MiB, about 32,000 records, a third of a second of new flows
/// at the rate the bench's flow-table fill makes them. Not pinned: each agent reads its own.
#[map]
pub static FLOW_RECORDS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// A translation record being built (records.rs). Not pinned.
#[map]
pub static RECORD_SCRATCH: PerCpuArray<FlowRecord> = PerCpuArray::with_max_entries(1, 0);

/// A slow-path record being built: too big for the stack.
#[map]
pub static SLOW_PATH_SCRATCH: PerCpuArray<SlowPathRecord> = PerCpuArray::with_max_entries(1, 0);

/// The per-CPU budget of packets handed to the agent. Not pinned.
#[map]
pub static SLOW_PATH_RATE: PerCpuArray<RateBucket> = PerCpuArray::with_max_entries(1, 0);

/// The per-CPU budget of ICMP errors (see icmp.rs). Not pinned.
#[map]
pub static ICMP_RATE: PerCpuArray<RateBucket> = PerCpuArray::with_max_entries(1, 0);

/// Scratch space for route lookups (see route.rs).
#[map]
pub static FIB_PARAMS: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

/// Routes looked up lately, per CPU (route_cache.rs). Not pinned: a new load starts empty.
#[map]
pub static ROUTE_CACHE: PerCpuArray<CachedRoute> =
    PerCpuArray::with_max_entries(ROUTE_CACHE_SLOTS, 0);

/// A count of the route, rule, neighbour, address and link changes the agent heard of: a cached route looked up
/// under another count is stale (route_cache.rs). Not pinned: it belongs to the agent that loaded the programs.
#[map]
pub static ROUTE_GENERATION: Array<u32> = Array::with_max_entries(1, 0);

/// The gateway's settings, or None until the agent has written them.
#[inline(always)]
pub fn config() -> Option<&'static GatewayConfig> {
    let cfg = CONFIG.get(CONFIG_KEY)?;
    if cfg.ready == 0 { None } else { Some(cfg) }
}
