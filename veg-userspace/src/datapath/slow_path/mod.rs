//! The agent's half of the datapath's slow path. The programs hand over, through the SLOW_PATH ring buffer, the
//! packets a TC program cannot finish (see docs/datapath.md, "The slow path"):
//!
//! - later fragments that came before their datagram's first fragment: held here (held.rs) until the programs
//!   translate the first fragment and say so (or the FRAGMENTS map, looked at every 100 ms, shows it), then given
//!   that translation and sent; dropped after 2 s. IPv6 fragments alike (ipv6.rs), found in FRAGMENTS_V6 at the
//!   next look (the programs send no notice for them);
//! - packets too big for their next hop with DF clear, already translated: fragmented here (ipv4.rs) and sent.
//!
//! Packets leave through a raw socket (raw_socket.rs), routed by the kernel. The counters this side keeps go to the
//! programs' STATS map, so `veg stats` shows the whole story in one place.

pub mod held;
pub mod ipv4;
pub mod ipv6;
pub mod raw_socket;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{HashMap, Map, MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{debug, warn};
use veg_common::{
    fragment::{
        DatagramKey, DatagramKeyV6, DatagramTranslation, DatagramTranslationV6, SlowPathHeader,
        kind,
    },
    stats::Counter,
};

use super::{monotonic_now_ns, pins, stats::AgentCounters};
use held::{Datagram, Held};
use raw_socket::RawSocket;

/// How often held fragments are looked up again in FRAGMENTS (a missed notice costs at most this), expired, and
/// the counters written.
const LOOK_AGAIN: Duration = Duration::from_millis(100);
const HEADER_LEN: usize = std::mem::size_of::<SlowPathHeader>();

/// The counts since they were last written to STATS.
#[derive(Default)]
struct Counts {
    released: u64,
    expired: u64,
    created: u64,
    send_failed: u64,
}

pub struct SlowPath {
    ring: AsyncFd<RingBuf<MapData>>,
    fragments: HashMap<MapData, DatagramKey, DatagramTranslation>,
    fragments_v6: HashMap<MapData, DatagramKeyV6, DatagramTranslationV6>,
    counters: AgentCounters,
    socket: RawSocket,
    /// None where IPv6 is disabled: IPv6 fragments are then dropped when released.
    socket_v6: Option<RawSocket>,
    held: Held,
    counts: Counts,
}

impl SlowPath {
    /// The slow path of the datapath whose ring is `ring` and whose maps are pinned in `pin_dir`.
    pub fn new(ring: RingBuf<MapData>, pin_dir: &Path) -> anyhow::Result<SlowPath> {
        let open = |name: &str| {
            let pin = pin_dir.join(name);
            MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))
        };
        let fragments = open(pins::FRAGMENTS)?;
        let fragments_v6 = open(pins::FRAGMENTS_V6)?;
        Ok(SlowPath {
            // SAFETY: the ring owns its map's descriptor, which stays open and the same while the AsyncFd owns
            // the ring.
            ring: unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)
                .context("watching the slow-path ring")?,
            fragments: HashMap::try_from(Map::from_map_data(fragments)?)?,
            fragments_v6: HashMap::try_from(Map::from_map_data(fragments_v6)?)?,
            counters: AgentCounters::open(pin_dir)?,
            socket: RawSocket::open().context(
                "opening a raw IPv4 socket for the slow path (the agent needs CAP_NET_RAW)",
            )?,
            socket_v6: RawSocket::open_v6()
                .inspect_err(|e| {
                    warn!("no raw IPv6 socket ({e}): held IPv6 fragments will be dropped")
                })
                .ok(),
            held: Held::default(),
            counts: Counts::default(),
        })
    }

    /// Serve the programs' hand-overs until `stop`.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(LOOK_AGAIN);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                ready = self.ring.readable_mut() => {
                    let records = match ready {
                        Ok(mut guard) => {
                            let mut records = Vec::new();
                            while let Some(item) = guard.get_inner_mut().next() {
                                records.push(item.to_vec());
                            }
                            guard.clear_ready();
                            records
                        }
                        Err(e) => {
                            warn!("the slow-path ring failed: {e}; held fragments and packets to fragment are dropped from now on");
                            return;
                        }
                    };
                    for record in records {
                        self.handle(&record);
                    }
                    self.flush_counts();
                }
                _ = tick.tick() => self.look_again(),
                _ = &mut stop => break,
            }
        }
        self.flush_counts();
    }

    fn handle(&mut self, record: &[u8]) {
        let Some((header, data)) = parse(record) else {
            debug!(len = record.len(), "slow-path record too short; ignored");
            return;
        };
        match header.kind {
            kind::HOLD_FROM_VPC | kind::HOLD_FROM_OUTSIDE => {
                let source = header.kind == kind::HOLD_FROM_VPC;
                self.hold(source, data.to_vec());
            }
            kind::FIRST_ARRIVED => {
                if let Some((key, translation)) = parse_first_arrived(data) {
                    let addr = Ipv4Addr::from(translation.addr.to_ne_bytes());
                    self.release(&Datagram::V4(key), IpAddr::V4(addr));
                }
            }
            kind::FRAGMENT => self.fragment(data, usize::from(header.mtu)),
            other => debug!(kind = other, "unknown slow-path record; ignored"),
        }
    }

    /// A fragment before its first: sent at once if the first came meanwhile, else held.
    fn hold(&mut self, source: bool, packet: Vec<u8>) {
        let Some(key) = held::datagram_of(&packet) else {
            self.counts.expired += 1;
            return;
        };
        if !self.held.hold(source, packet, Instant::now()) {
            self.counts.expired += 1;
            return;
        }
        if let Some(addr) = self.translation(&key) {
            self.release(&key, addr);
        }
    }

    /// The first fragment's translated address, if it was seen lately.
    fn translation(&self, key: &Datagram) -> Option<IpAddr> {
        let now = monotonic_now_ns();
        match key {
            Datagram::V4(key) => {
                let found = self.fragments.get(key, 0).ok()?;
                let addr = Ipv4Addr::from(found.addr.to_ne_bytes());
                found.is_fresh(now).then_some(IpAddr::V4(addr))
            }
            Datagram::V6(key) => {
                let found = self.fragments_v6.get(key, 0).ok()?;
                let addr = Ipv6Addr::from(found.addr.bytes);
                found.is_fresh(now).then_some(IpAddr::V6(addr))
            }
        }
    }

    /// Send a datagram's held fragments with its first fragment's translated address.
    fn release(&mut self, key: &Datagram, addr: IpAddr) {
        let Some((source, packets)) = self.held.take(key) else {
            return;
        };
        for mut packet in packets {
            let translated = match addr {
                IpAddr::V4(addr) => ipv4::translate_fragment(&mut packet, source, addr.octets()),
                IpAddr::V6(addr) => ipv6::translate_fragment(&mut packet, source, addr),
            };
            let sent = translated
                .map_err(|e| e.to_string())
                .and_then(|()| self.send(&packet));
            match sent {
                Ok(()) => self.counts.released += 1,
                Err(e) => {
                    debug!("a held fragment could not be sent: {e}");
                    self.counts.send_failed += 1;
                }
            }
        }
    }

    /// A translated packet too big for its next hop: fragmented and sent.
    fn fragment(&mut self, packet: &[u8], mtu: usize) {
        let mut packet = packet.to_vec();
        let pieces = ipv4::complete_offloaded_checksum(&mut packet)
            .and_then(|()| ipv4::fragment(&packet, mtu, random_id()));
        let pieces = match pieces {
            Ok(pieces) => pieces,
            Err(e) => {
                debug!(mtu, "a packet could not be fragmented: {e}");
                self.counts.send_failed += 1;
                return;
            }
        };
        for piece in pieces {
            match self.send(&piece) {
                Ok(()) => self.counts.created += 1,
                Err(e) => {
                    debug!("a fragment could not be sent: {e}");
                    self.counts.send_failed += 1;
                }
            }
        }
    }

    /// Send a checked packet of either family to its destination.
    fn send(&self, packet: &[u8]) -> Result<(), String> {
        let (socket, to) = if packet[0] >> 4 == 6 {
            let socket = self.socket_v6.as_ref().ok_or("no raw IPv6 socket")?;
            (socket, IpAddr::V6(ipv6::destination(packet)))
        } else {
            (
                &self.socket,
                IpAddr::V4(Ipv4Addr::from(ipv4::destination(packet))),
            )
        };
        socket
            .send(packet, to)
            .map_err(|e| format!("sending to {to}: {e}"))
    }

    /// Every 100 ms: held datagrams whose first fragment came without a notice are released, those that waited
    /// too long dropped, and the counts written.
    fn look_again(&mut self) {
        for key in self.held.keys() {
            if let Some(addr) = self.translation(&key) {
                self.release(&key, addr);
            }
        }
        self.counts.expired += self.held.expire(Instant::now()) as u64;
        self.flush_counts();
    }

    /// Write the counts (few, rarely nonzero: a handful of map updates at most).
    fn flush_counts(&mut self) {
        let counts = std::mem::take(&mut self.counts);
        for (counter, n) in [
            (Counter::FragmentsReleased, counts.released),
            (Counter::FragmentsExpired, counts.expired),
            (Counter::FragmentsCreated, counts.created),
            (Counter::SlowPathSendFailed, counts.send_failed),
        ] {
            if let Err(e) = self.counters.add(counter, n) {
                warn!("writing the slow path's counters failed: {e:#}");
            }
        }
    }
}

/// A record's header and its data, or None when it is shorter than its header says.
pub fn parse(record: &[u8]) -> Option<(SlowPathHeader, &[u8])> {
    if record.len() < HEADER_LEN {
        return None;
    }
    let header = SlowPathHeader {
        kind: record[0],
        _pad: 0,
        mtu: u16::from_ne_bytes([record[2], record[3]]),
        len: u16::from_ne_bytes([record[4], record[5]]),
        _pad2: 0,
    };
    let data = record.get(HEADER_LEN..HEADER_LEN + usize::from(header.len))?;
    Some((header, data))
}

/// The data of a FIRST_ARRIVED record: the datagram and its first fragment's translation.
pub fn parse_first_arrived(data: &[u8]) -> Option<(DatagramKey, DatagramTranslation)> {
    const KEY_LEN: usize = std::mem::size_of::<DatagramKey>();
    const LEN: usize = KEY_LEN + std::mem::size_of::<DatagramTranslation>();
    if data.len() < LEN {
        return None;
    }
    // SAFETY: both are plain #[repr(C)] integers, read unaligned from bytes of their size.
    unsafe {
        Some((
            std::ptr::read_unaligned(data.as_ptr().cast()),
            std::ptr::read_unaligned(data[KEY_LEN..].as_ptr().cast()),
        ))
    }
}

/// An IP identification for a packet fragmented here that had none (0).
fn random_id() -> u16 {
    let mut id = [0u8; 2];
    // SAFETY: getrandom(2) into a 2-byte buffer.
    unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    u16::from_ne_bytes(id).max(1)
}
