//! `veg flows --fragments`: the fragmented datagrams the datapath follows, each with the address its first
//! fragment was translated to (which its later fragments get).

use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::{
    Pod,
    maps::{HashMap, Map, MapData},
};
use serde::Serialize;
use veg_common::fragment::{
    DatagramKey, DatagramKeyV6, DatagramTranslation, DatagramTranslationV6, END_SOURCE,
};

use crate::datapath::{monotonic_now_ns, pins};

/// One followed datagram.
#[derive(Debug, Serialize)]
pub struct FollowedDatagram {
    pub protocol: u8,
    pub source: IpAddr,
    pub destination: IpAddr,
    /// The IP identification (IPv6: the fragment header's).
    pub id: u32,
    /// "source" or "destination": the end whose address is rewritten.
    pub translated: &'static str,
    pub to: IpAddr,
    /// Seconds left until the datapath stops following it.
    pub expires_in_seconds: u64,
}

/// The entries of the pinned map `map` of gateway `name` that are still followed at `now`, each described.
fn followed<K: Pod, V: Pod>(
    name: &str,
    map: &str,
    now: u64,
    describe: impl Fn(K, V, u64) -> Option<FollowedDatagram>,
) -> anyhow::Result<Vec<FollowedDatagram>> {
    let data = MapData::from_pin(pins::existing_map(name, map)?)?;
    let map: HashMap<MapData, K, V> = HashMap::try_from(Map::from_map_data(data)?)?;
    let mut datagrams = Vec::new();
    for entry in map.iter() {
        let (key, translation) = entry?;
        datagrams.extend(describe(key, translation, now));
    }
    Ok(datagrams)
}

fn end_name(end: u8) -> &'static str {
    if end == END_SOURCE {
        "source"
    } else {
        "destination"
    }
}

pub fn run(name: &str, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let now = monotonic_now_ns();
    let v4 = |key: DatagramKey, translation: DatagramTranslation, now| {
        let remaining = translation.remaining_ns(now);
        let v4 = |addr: u32| IpAddr::V4(Ipv4Addr::from(addr.to_ne_bytes()));
        (remaining > 0).then(|| FollowedDatagram {
            protocol: key.protocol,
            source: v4(key.src),
            destination: v4(key.dst),
            id: u32::from(u16::from_be(key.id)),
            translated: end_name(translation.end),
            to: v4(translation.addr),
            expires_in_seconds: remaining.div_ceil(1_000_000_000),
        })
    };
    let v6 = |key: DatagramKeyV6, translation: DatagramTranslationV6, now| {
        let remaining = translation.remaining_ns(now);
        let v6 = |addr: veg_common::address::Address| IpAddr::V6(Ipv6Addr::from(addr.bytes));
        (remaining > 0).then(|| FollowedDatagram {
            protocol: key.protocol,
            source: v6(key.src),
            destination: v6(key.dst),
            id: u32::from_be(key.id),
            translated: end_name(translation.end),
            to: v6(translation.addr),
            expires_in_seconds: remaining.div_ceil(1_000_000_000),
        })
    };
    let mut datagrams = followed(name, pins::FRAGMENTS, now, v4)?;
    // Pins made before IPv6 have no FRAGMENTS_V6: nothing to show there.
    datagrams.extend(followed(name, pins::FRAGMENTS_V6, now, v6).unwrap_or_default());
    if json {
        serde_json::to_writer_pretty(&mut *out, &datagrams)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<5} {:<24} {:<24} {:>10} {:<11} {:<24} {:>8}",
        "PROTO", "SOURCE", "DESTINATION", "ID", "TRANSLATED", "TO", "EXPIRES"
    )?;
    for d in &datagrams {
        writeln!(
            out,
            "{:<5} {:<24} {:<24} {:>10} {:<11} {:<24} {:>7}s",
            d.protocol,
            d.source.to_string(),
            d.destination.to_string(),
            d.id,
            d.translated,
            d.to.to_string(),
            d.expires_in_seconds
        )?;
    }
    writeln!(out, "{} fragmented datagram(s) followed", datagrams.len())?;
    Ok(())
}
