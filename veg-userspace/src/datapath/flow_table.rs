//! Reading the pinned flow table (for `veg flows`) and sweeping expired entries out of it, and their counts out
//! of the counts table (for the agent).

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd, BorrowedFd},
    path::Path,
};

use anyhow::Context as _;
use aya::maps::MapData;
use serde::Serialize;
use veg_common::flow::{
    DIRECTION_OUTBOUND, FlowCounts, FlowEntry, FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP,
    PROTO_UDP, STATE_FIN_IN, STATE_FIN_OUT, STATE_REPLY_SEEN, STATE_RST, STATE_SYN_OUT,
    idle_timeout_ns, is_expired, is_icmp,
};

use super::{
    batch, monotonic_now_ns, pins,
    port_usage::{PortUsage, port_usage},
};

/// An open flow table, from the running datapath or from its pin, and the counts table when the sweep needs it.
pub struct FlowTable {
    map: MapData,
    counts: Option<MapData>,
}

/// One translation, as `veg flows` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Flow {
    pub protocol: &'static str,
    pub original_source: SocketAddr,
    pub translated_source: SocketAddr,
    pub remote: SocketAddr,
    pub state: &'static str,
    pub expires_in_seconds: u64,
}

impl FlowTable {
    /// The flow table alone, for reading.
    pub fn from_pin(path: &Path) -> anyhow::Result<FlowTable> {
        let map = MapData::from_pin(path)
            .with_context(|| format!("opening flow table {}", path.display()))?;
        Ok(FlowTable { map, counts: None })
    }

    /// The flow table and the counts table of the gateway pinned in `pin_dir`, for sweeping.
    pub fn from_pins(pin_dir: &Path) -> anyhow::Result<FlowTable> {
        let mut table = FlowTable::from_pin(&pin_dir.join(pins::FLOWS))?;
        let counts = pin_dir.join(pins::FLOW_COUNTS);
        table.counts = Some(
            MapData::from_pin(&counts)
                .with_context(|| format!("opening counts table {}", counts.display()))?,
        );
        Ok(table)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.map.fd().as_fd()
    }

    pub fn entries(&self) -> anyhow::Result<Vec<(FlowKey, FlowEntry)>> {
        batch::read_all(self.fd()).context("reading the flow table")
    }

    /// How many translations are live.
    pub fn count(&self) -> anyhow::Result<usize> {
        let now = monotonic_now_ns();
        Ok(self
            .entries()?
            .iter()
            .filter(|(key, entry)| is_live_outbound(key, entry, now))
            .count())
    }

    /// Every live translation, from the outbound half of each pair, oldest first.
    pub fn flows(&self) -> anyhow::Result<Vec<Flow>> {
        let now = monotonic_now_ns();
        let mut entries: Vec<_> = self
            .entries()?
            .into_iter()
            .filter(|(key, entry)| is_live_outbound(key, entry, now))
            .collect();
        entries.sort_by_key(|(_, entry)| entry.created_ns);
        Ok(entries
            .iter()
            .map(|(key, entry)| describe(key, entry, now))
            .collect())
    }

    /// Delete every expired entry, and the counts of the translations that go. Both halves of a pair carry the
    /// same timestamp and state, so they expire together. Returns how many entries were removed, how many
    /// translations stay live and how full the port range is: the sweep reads the whole table anyway, so it is
    /// where those come from cheaply (a metrics scrape reads them). With `keep_ended`, also the expired
    /// translations themselves, with their counts, for their ended records.
    pub fn sweep(&self, keep_ended: bool) -> anyhow::Result<Swept> {
        let now = monotonic_now_ns();
        // The counts before the flows: a translation's counts are made after its entries, so counts whose
        // translation is not among the flows read after them belong to none (left by a translation the sweep or
        // a restart took) and go too.
        let counts: HashMap<FlowKey, FlowCounts> = match &self.counts {
            Some(map) => batch::read_all(map.fd().as_fd())
                .context("reading the counts table")?
                .into_iter()
                .collect(),
            None => HashMap::new(),
        };
        let entries = self.entries()?;
        let live = entries
            .iter()
            .filter(|(key, entry)| is_live_outbound(key, entry, now))
            .count();
        let ports = port_usage(&entries, now);
        let expired: Vec<(FlowKey, FlowEntry)> = entries
            .iter()
            .filter(|(key, entry)| is_expired(entry, key.protocol, now))
            .copied()
            .collect();
        let ended = if keep_ended {
            ended(&expired, &counts)
        } else {
            Vec::new()
        };
        let keys: Vec<FlowKey> = expired.into_iter().map(|(key, _)| key).collect();
        let removed = batch::delete(self.fd(), &keys).context("deleting expired flows")?;
        if let Some(map) = &self.counts {
            let live_outbound: HashSet<&FlowKey> = entries
                .iter()
                .filter(|(key, entry)| is_live_outbound(key, entry, now))
                .map(|(key, _)| key)
                .collect();
            let gone: Vec<FlowKey> = counts
                .into_keys()
                .filter(|key| !live_outbound.contains(key))
                .collect();
            batch::delete(map.fd().as_fd(), &gone)
                .context("deleting ended translations' counts")?;
        }
        Ok(Swept {
            removed,
            live,
            ports,
            ended,
        })
    }
}

/// The translations among the expired `entries` (one per outbound half), with their counts.
fn ended(
    entries: &[(FlowKey, FlowEntry)],
    counts: &HashMap<FlowKey, FlowCounts>,
) -> Vec<EndedFlow> {
    entries
        .iter()
        .filter(|(_, entry)| entry.direction == DIRECTION_OUTBOUND)
        .map(|(key, entry)| EndedFlow {
            key: *key,
            outbound: *entry,
            counts: counts.get(key).copied().unwrap_or_default(),
        })
        .collect()
}

/// A translation the sweep removed.
pub struct EndedFlow {
    pub key: FlowKey,
    pub outbound: FlowEntry,
    pub counts: FlowCounts,
}

/// What a sweep did and found.
pub struct Swept {
    /// Entries removed (two per translation).
    pub removed: usize,
    /// Translations live after it.
    pub live: usize,
    /// Ports in use, per external address and protocol.
    pub ports: Vec<PortUsage>,
    /// The translations removed, when asked for.
    pub ended: Vec<EndedFlow>,
}

/// The outbound half of a live pair: one per translation.
fn is_live_outbound(key: &FlowKey, entry: &FlowEntry, now: u64) -> bool {
    entry.direction == DIRECTION_OUTBOUND && !is_expired(entry, key.protocol, now)
}

fn describe(key: &FlowKey, entry: &FlowEntry, now: u64) -> Flow {
    let addr = |a: &veg_common::address::Address| -> IpAddr { a.to_ip(key.family) };
    let remote_port = if is_icmp(key.protocol) {
        0
    } else {
        u16::from_be(key.dst_port)
    };
    let deadline = entry.last_seen_ns + idle_timeout_ns(key.protocol, entry.state);
    Flow {
        protocol: protocol_name(key.protocol),
        original_source: SocketAddr::new(addr(&key.src_addr), u16::from_be(key.src_port)),
        translated_source: SocketAddr::new(addr(&entry.nat_addr), u16::from_be(entry.nat_port)),
        remote: SocketAddr::new(addr(&key.dst_addr), remote_port),
        state: state_name(key.protocol, entry.state),
        expires_in_seconds: deadline.saturating_sub(now) / 1_000_000_000,
    }
}

pub fn protocol_name(protocol: u8) -> &'static str {
    match protocol {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_ICMP => "icmp",
        PROTO_ICMPV6 => "icmpv6",
        _ => "other",
    }
}

/// Names in the spirit of conntrack's.
pub fn state_name(protocol: u8, state: u8) -> &'static str {
    if protocol != PROTO_TCP {
        return if state & STATE_REPLY_SEEN != 0 {
            "REPLIED"
        } else {
            "UNREPLIED"
        };
    }
    let fins = state & (STATE_FIN_OUT | STATE_FIN_IN);
    if state & STATE_RST != 0 {
        "CLOSE"
    } else if fins == STATE_FIN_OUT | STATE_FIN_IN {
        "TIME_WAIT"
    } else if fins != 0 {
        "FIN_WAIT"
    } else if state & STATE_REPLY_SEEN != 0 {
        "ESTABLISHED"
    } else if state & STATE_SYN_OUT != 0 {
        "SYN_SENT"
    } else {
        "UNREPLIED"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names() {
        assert_eq!(state_name(PROTO_TCP, STATE_SYN_OUT), "SYN_SENT");
        assert_eq!(
            state_name(PROTO_TCP, STATE_SYN_OUT | STATE_REPLY_SEEN),
            "ESTABLISHED"
        );
        assert_eq!(
            state_name(PROTO_TCP, STATE_REPLY_SEEN | STATE_FIN_OUT),
            "FIN_WAIT"
        );
        assert_eq!(
            state_name(PROTO_TCP, STATE_REPLY_SEEN | STATE_FIN_OUT | STATE_FIN_IN),
            "TIME_WAIT"
        );
        assert_eq!(state_name(PROTO_TCP, STATE_REPLY_SEEN | STATE_RST), "CLOSE");
        assert_eq!(state_name(PROTO_UDP, 0), "UNREPLIED");
        assert_eq!(state_name(PROTO_UDP, STATE_REPLY_SEEN), "REPLIED");
    }
}
