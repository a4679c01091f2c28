//! `veg flows --fragments`: the fragmented datagrams the datapath follows, each with the address its first
//! fragment was translated to (which its later fragments get).

use std::{io::Write, net::Ipv4Addr};

use aya::maps::{HashMap, Map, MapData};
use serde::Serialize;
use veg_common::fragment::{DatagramKey, DatagramTranslation, END_SOURCE};

use crate::datapath::{monotonic_now_ns, pins};

/// One followed datagram.
#[derive(Debug, Serialize)]
pub struct FollowedDatagram {
    pub protocol: u8,
    pub source: Ipv4Addr,
    pub destination: Ipv4Addr,
    /// The IP identification.
    pub id: u16,
    /// "source" or "destination": the end whose address is rewritten.
    pub translated: &'static str,
    pub to: Ipv4Addr,
    /// Seconds left until the datapath stops following it.
    pub expires_in_seconds: u64,
}

pub fn run(name: &str, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let data = MapData::from_pin(pins::existing_map(name, pins::FRAGMENTS)?)?;
    let map: HashMap<MapData, DatagramKey, DatagramTranslation> =
        HashMap::try_from(Map::from_map_data(data)?)?;
    let now = monotonic_now_ns();
    let mut datagrams = Vec::new();
    for entry in map.iter() {
        let (key, translation) = entry?;
        let remaining = translation.remaining_ns(now);
        if remaining == 0 {
            continue;
        }
        datagrams.push(FollowedDatagram {
            protocol: key.protocol,
            source: Ipv4Addr::from(key.src.to_ne_bytes()),
            destination: Ipv4Addr::from(key.dst.to_ne_bytes()),
            id: u16::from_be(key.id),
            translated: if translation.end == END_SOURCE {
                "source"
            } else {
                "destination"
            },
            to: Ipv4Addr::from(translation.addr.to_ne_bytes()),
            expires_in_seconds: remaining.div_ceil(1_000_000_000),
        });
    }
    if json {
        serde_json::to_writer_pretty(&mut *out, &datagrams)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<5} {:<15} {:<15} {:>5} {:<11} {:<15} {:>8}",
        "PROTO", "SOURCE", "DESTINATION", "ID", "TRANSLATED", "TO", "EXPIRES"
    )?;
    for d in &datagrams {
        writeln!(
            out,
            "{:<5} {:<15} {:<15} {:>5} {:<11} {:<15} {:>7}s",
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
