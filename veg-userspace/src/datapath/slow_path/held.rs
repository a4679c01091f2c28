//! Fragments waiting for their datagram's first fragment. Bounded in datagrams, in fragments per datagram, in
//! bytes and in time: what does not fit, or waits too long, is dropped (the sender's datagram is lost, as it
//! would be to a full reassembly queue).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use veg_common::fragment::{DatagramKey, DatagramKeyV6};

use super::ipv6;

/// The datagram a held fragment belongs to, in the family it is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Datagram {
    V4(DatagramKey),
    V6(DatagramKeyV6),
}

/// The datagram of a fragment, IPv4 (a whole header) or IPv6 (a fragment header): None for anything else.
pub fn datagram_of(packet: &[u8]) -> Option<Datagram> {
    match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= 20 => Some(Datagram::V4(datagram_key(packet))),
        Some(6) => ipv6::datagram_key(packet).map(Datagram::V6),
        _ => None,
    }
}

/// How long a fragment waits for its first fragment. Out-of-order arrival on a multipath network is a matter of
/// microseconds to milliseconds; a first fragment later than this is taken as lost.
pub const HOLD_TIME: Duration = Duration::from_secs(2);
/// At most this many bytes held at once (a few hundred jumbo fragments).
const MAX_BYTES: usize = 4 * 1024 * 1024;
/// At most this many datagrams waiting at once.
const MAX_DATAGRAMS: usize = 1024;
/// At most this many fragments per datagram: a 64 KiB datagram in 1280-byte fragments is 52.
const MAX_PER_DATAGRAM: usize = 64;

/// The identity of the datagram an IPv4 packet (checked to have a whole header) is a fragment of, as the programs
/// key it: every field as it lies on the wire.
pub fn datagram_key(packet: &[u8]) -> DatagramKey {
    let word = |at: usize| {
        u32::from_ne_bytes([packet[at], packet[at + 1], packet[at + 2], packet[at + 3]])
    };
    DatagramKey {
        src: word(12),
        dst: word(16),
        id: u16::from_ne_bytes([packet[4], packet[5]]),
        protocol: packet[9],
        _pad: 0,
    }
}

struct Waiting {
    since: Instant,
    /// Whether the translation goes to the source (fragments from the VPC) or the destination.
    source: bool,
    packets: Vec<Vec<u8>>,
}

/// Held fragments by datagram.
#[derive(Default)]
pub struct Held {
    datagrams: HashMap<Datagram, Waiting>,
    bytes: usize,
}

impl Held {
    /// Hold a fragment. Returns false when it is no fragment `datagram_of` knows, or a limit refuses it.
    pub fn hold(&mut self, source: bool, packet: Vec<u8>, now: Instant) -> bool {
        let Some(key) = datagram_of(&packet) else {
            return false;
        };
        if self.bytes + packet.len() > MAX_BYTES
            || (self.datagrams.len() >= MAX_DATAGRAMS && !self.datagrams.contains_key(&key))
        {
            return false;
        }
        let waiting = self.datagrams.entry(key).or_insert_with(|| Waiting {
            since: now,
            source,
            packets: Vec::new(),
        });
        if waiting.packets.len() >= MAX_PER_DATAGRAM {
            return false;
        }
        self.bytes += packet.len();
        waiting.packets.push(packet);
        true
    }

    /// The held fragments of a datagram, and whether its source is translated; they are no longer held.
    pub fn take(&mut self, key: &Datagram) -> Option<(bool, Vec<Vec<u8>>)> {
        let waiting = self.datagrams.remove(key)?;
        self.bytes -= waiting.packets.iter().map(Vec::len).sum::<usize>();
        Some((waiting.source, waiting.packets))
    }

    /// The datagrams waiting.
    pub fn keys(&self) -> Vec<Datagram> {
        self.datagrams.keys().copied().collect()
    }

    /// Drop the datagrams that waited longer than HOLD_TIME; returns how many fragments went.
    pub fn expire(&mut self, now: Instant) -> usize {
        let old: Vec<Datagram> = self
            .datagrams
            .iter()
            .filter(|(_, w)| now.duration_since(w.since) >= HOLD_TIME)
            .map(|(k, _)| *k)
            .collect();
        old.iter()
            .filter_map(|k| self.take(k))
            .map(|(_, packets)| packets.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fragment(id: u8, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len.max(20)];
        p[0] = 0x45;
        p[5] = id;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 0, 0, 2]);
        p[16..20].copy_from_slice(&[192, 0, 2, 1]);
        p
    }

    #[test]
    fn fragments_are_taken_by_datagram_and_expire_after_the_hold_time() {
        let start = Instant::now();
        let mut held = Held::default();
        assert!(held.hold(true, fragment(1, 100), start));
        assert!(held.hold(true, fragment(1, 100), start));
        assert!(held.hold(false, fragment(2, 100), start));
        let (source, packets) = held.take(&datagram_of(&fragment(1, 20)).unwrap()).unwrap();
        assert!(source);
        assert_eq!(packets.len(), 2);
        assert_eq!(held.expire(start + HOLD_TIME / 2), 0);
        assert_eq!(held.expire(start + HOLD_TIME), 1);
        assert!(held.is_empty());
        assert_eq!(held.bytes, 0);
    }

    #[test]
    fn limits_refuse_what_does_not_fit() {
        let now = Instant::now();
        let mut held = Held::default();
        for _ in 0..MAX_PER_DATAGRAM {
            assert!(held.hold(true, fragment(1, 20), now));
        }
        assert!(!held.hold(true, fragment(1, 20), now), "per datagram");
        let mut held = Held::default();
        assert!(held.hold(true, fragment(1, MAX_BYTES), now));
        assert!(!held.hold(true, fragment(2, 20), now), "bytes");
    }
}
