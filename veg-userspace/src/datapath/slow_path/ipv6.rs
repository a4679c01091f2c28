//! The IPv6 work the slow path does on whole packets: finding the datagram a held fragment belongs to (its fragment
//! header, behind the extension headers before it) and giving the fragment its datagram's translation. Only the
//! address changes, and the hop limit: IPv6 has no header checksum, and a later fragment no transport header.

use std::net::Ipv6Addr;

use veg_common::{address::Address, fragment::DatagramKeyV6};

use super::ipv4::Unsendable;

const HEADER: usize = 40;
const HOP_LIMIT: usize = 7;
const SOURCE: usize = 8;
const DESTINATION: usize = 24;
/// Extension headers (RFC 8200 4.1).
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DESTINATION_OPTIONS: u8 = 60;
/// As the programs walk them: at most this many extension headers.
const MAX_EXTENSION_HEADERS: usize = 4;

/// An IPv6 packet whose payload length fits in `packet`: its length, headers included.
fn checked_len(packet: &[u8]) -> Result<usize, Unsendable> {
    if packet.len() < HEADER || packet[0] >> 4 != 6 {
        return Err(Unsendable::Malformed);
    }
    let len = HEADER + usize::from(u16::from_be_bytes([packet[4], packet[5]]));
    if len > packet.len() {
        return Err(Unsendable::Malformed);
    }
    Ok(len)
}

/// The datagram a fragment belongs to, as the programs key it: its addresses, its fragment header's
/// identification (as on the wire) and the protocol that header names. None for a packet without one.
pub fn datagram_key(packet: &[u8]) -> Option<DatagramKeyV6> {
    let len = checked_len(packet).ok()?;
    let mut next = packet[6];
    let mut at = HEADER;
    for _ in 0..MAX_EXTENSION_HEADERS {
        let header = packet.get(at..at + 8).filter(|_| at + 8 <= len)?;
        match next {
            FRAGMENT => {
                let address = |from: usize| Address {
                    bytes: packet[from..from + 16].try_into().expect("16 bytes"),
                };
                return Some(DatagramKeyV6 {
                    src: address(SOURCE),
                    dst: address(DESTINATION),
                    id: u32::from_ne_bytes(header[4..8].try_into().expect("4 bytes")),
                    protocol: header[0],
                    _pad: [0; 3],
                });
            }
            HOP_BY_HOP | ROUTING | DESTINATION_OPTIONS => {
                next = header[0];
                at += (usize::from(header[1]) + 1) * 8;
            }
            _ => return None,
        }
    }
    None
}

/// Give a held fragment its datagram's translated address (`source`: the source address, else the destination)
/// and decrement its hop limit, as the programs would have; the packet is cut to its own length.
pub fn translate_fragment(
    packet: &mut Vec<u8>,
    source: bool,
    addr: Ipv6Addr,
) -> Result<(), Unsendable> {
    let len = checked_len(packet)?;
    packet.truncate(len);
    if packet[HOP_LIMIT] <= 1 {
        return Err(Unsendable::TtlExpired);
    }
    packet[HOP_LIMIT] -= 1;
    let at = if source { SOURCE } else { DESTINATION };
    packet[at..at + 16].copy_from_slice(&addr.octets());
    Ok(())
}

/// The destination address of a packet whose header was checked.
pub fn destination(packet: &[u8]) -> Ipv6Addr {
    let bytes: [u8; 16] = packet[DESTINATION..DESTINATION + 16]
        .try_into()
        .expect("a checked header");
    Ipv6Addr::from(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A later fragment (offset 1232) of a UDP datagram, with a destination options header before its fragment
    /// header.
    fn fragment() -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 0, DESTINATION_OPTIONS, 64];
        p.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&[FRAGMENT, 0, 1, 4, 0, 0, 0, 0]);
        p.extend_from_slice(&[17, 0, 0x04, 0xd0, 0x12, 0x34, 0x56, 0x78]);
        p.extend_from_slice(&[0xab; 100]);
        let payload = (p.len() - HEADER) as u16;
        p[4..6].copy_from_slice(&payload.to_be_bytes());
        p
    }

    #[test]
    fn a_fragment_is_keyed_by_its_datagram_and_translated() {
        let mut packet = fragment();
        let key = datagram_key(&packet).unwrap();
        assert_eq!(key.protocol, 17);
        assert_eq!(key.id.to_ne_bytes(), [0x12, 0x34, 0x56, 0x78]);
        assert_eq!(
            Ipv6Addr::from(key.src.bytes),
            "fd00::2".parse::<Ipv6Addr>().unwrap()
        );
        let external: Ipv6Addr = "fd00:172:17::11".parse().unwrap();
        packet.extend_from_slice(&[0; 7]); // trailing bytes past the payload length are cut
        translate_fragment(&mut packet, true, external).unwrap();
        assert_eq!(&packet[SOURCE..SOURCE + 16], &external.octets());
        assert_eq!(packet[HOP_LIMIT], 63);
        assert_eq!(packet.len(), fragment().len());
        packet[HOP_LIMIT] = 1;
        assert_eq!(
            translate_fragment(&mut packet, false, external),
            Err(Unsendable::TtlExpired)
        );
        // No fragment header, or not IPv6: no datagram.
        let mut plain = fragment();
        plain[6] = 17;
        assert_eq!(datagram_key(&plain), None);
        assert_eq!(datagram_key(&[0x45; 60]), None);
    }
}
