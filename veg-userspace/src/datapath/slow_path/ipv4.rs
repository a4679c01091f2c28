//! The IPv4 work the slow path does on whole packets in user space: giving a held fragment its datagram's
//! translation, fragmenting a packet too big for its next hop (RFC 791), and completing a transport checksum left
//! for offload.

use std::fmt;

const MIN_HEADER: usize = 20;
const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// Why a packet could not be sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Unsendable {
    /// Shorter than its headers say, or a header that is not of its IP version.
    Malformed,
    /// Its TTL (hop limit) would expire on forwarding.
    TtlExpired,
    /// IP identification 0 on a fragment: the kernel's raw socket replaces an identification of 0, which would
    /// split the datagram's fragments apart.
    ZeroIdentification,
    /// DF set, or an MTU too small for even one 8-byte piece after the header.
    CannotFragment,
}

impl fmt::Display for Unsendable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unsendable::Malformed => "malformed IP packet",
            Unsendable::TtlExpired => "TTL expired",
            Unsendable::ZeroIdentification => "fragment with IP identification 0",
            Unsendable::CannotFragment => "cannot be fragmented (DF set or MTU too small)",
        })
    }
}

fn be16(packet: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([packet[at], packet[at + 1]])
}

fn put_be16(packet: &mut [u8], at: usize, value: u16) {
    packet[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// The header's length, checked against the packet: an IPv4 packet whose total length fits in `packet`.
fn header_len(packet: &[u8]) -> Result<usize, Unsendable> {
    if packet.len() < MIN_HEADER || packet[0] >> 4 != 4 {
        return Err(Unsendable::Malformed);
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(be16(packet, 2));
    if ihl < MIN_HEADER || total < ihl || total > packet.len() {
        return Err(Unsendable::Malformed);
    }
    Ok(ihl)
}

/// The destination address of a packet whose header was checked.
pub fn destination(packet: &[u8]) -> [u8; 4] {
    [packet[16], packet[17], packet[18], packet[19]]
}

/// Ones'-complement sum of 16-bit big-endian words (an odd last byte padded with zero), not folded.
fn sum_words(bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    let mut sum: u32 = chunks
        .by_ref()
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Recompute the header checksum of a packet whose header is `ihl` bytes.
fn fill_header_checksum(packet: &mut [u8], ihl: usize) {
    put_be16(packet, 10, 0);
    let sum = !fold(sum_words(&packet[..ihl]));
    put_be16(packet, 10, sum);
}

/// Give a held fragment its datagram's translation: `addr` written as its source (`source`) or destination, the
/// TTL decremented as a router does, the header checksum recomputed. Later fragments carry no transport header,
/// so nothing else changes.
pub fn translate_fragment(
    packet: &mut Vec<u8>,
    source: bool,
    addr: [u8; 4],
) -> Result<(), Unsendable> {
    let ihl = header_len(packet)?;
    packet.truncate(usize::from(be16(packet, 2)));
    if be16(packet, 4) == 0 {
        return Err(Unsendable::ZeroIdentification);
    }
    if packet[8] <= 1 {
        return Err(Unsendable::TtlExpired);
    }
    packet[8] -= 1;
    let at = if source { 12 } else { 16 };
    packet[at..at + 4].copy_from_slice(&addr);
    fill_header_checksum(packet, ihl);
    Ok(())
}

/// The options a fragment after the first carries: those with the copied flag (RFC 791), padded to 4 bytes.
fn copied_options(options: &[u8]) -> Vec<u8> {
    let mut copied = Vec::new();
    let mut at = 0;
    while at < options.len() {
        let kind = options[at];
        match kind {
            0 => break,
            1 => at += 1,
            _ => {
                let len = options.get(at + 1).map_or(0, |l| usize::from(*l));
                if len < 2 || at + len > options.len() {
                    break;
                }
                if kind & 0x80 != 0 {
                    copied.extend_from_slice(&options[at..at + len]);
                }
                at += len;
            }
        }
    }
    while copied.len() % 4 != 0 {
        copied.push(0);
    }
    copied
}

/// Split a packet (already translated, its TTL decremented) into fragments of at most `mtu` bytes, as a router
/// does: each payload but the last a multiple of 8 bytes, MF on all but the last (which keeps the packet's own,
/// when it is itself a fragment), the first with every option, the others with the copied ones. `new_id` is used
/// when the packet, not a fragment yet, has identification 0.
pub fn fragment(packet: &[u8], mtu: usize, new_id: u16) -> Result<Vec<Vec<u8>>, Unsendable> {
    let ihl = header_len(packet)?;
    let total = usize::from(be16(packet, 2));
    let flags = be16(packet, 6);
    if flags & FLAG_DF != 0 {
        return Err(Unsendable::CannotFragment);
    }
    let already_fragment = flags & (FLAG_MF | OFFSET_MASK) != 0;
    let mut id = be16(packet, 4);
    if id == 0 {
        if already_fragment {
            return Err(Unsendable::ZeroIdentification);
        }
        id = new_id.max(1);
    }
    let later_options = copied_options(&packet[MIN_HEADER..ihl]);
    let payload = &packet[ihl..total];
    let mut fragments = Vec::new();
    let mut at = 0;
    while at < payload.len() {
        let first = at == 0;
        let header = if first {
            ihl
        } else {
            MIN_HEADER + later_options.len()
        };
        let room = mtu.saturating_sub(header) / 8 * 8;
        if room == 0 {
            return Err(Unsendable::CannotFragment);
        }
        let take = room.min(payload.len() - at);
        let last = at + take == payload.len();
        let mut piece = Vec::with_capacity(header + take);
        if first {
            piece.extend_from_slice(&packet[..ihl]);
        } else {
            piece.extend_from_slice(&packet[..MIN_HEADER]);
            piece.extend_from_slice(&later_options);
            piece[0] = 0x40 | (header / 4) as u8;
        }
        piece.extend_from_slice(&payload[at..at + take]);
        put_be16(&mut piece, 2, (header + take) as u16);
        put_be16(&mut piece, 4, id);
        let more = !last || flags & FLAG_MF != 0;
        let offset = (flags & OFFSET_MASK) + (at / 8) as u16;
        put_be16(&mut piece, 6, if more { FLAG_MF } else { 0 } | offset);
        fill_header_checksum(&mut piece, header);
        fragments.push(piece);
        at += take;
    }
    Ok(fragments)
}

/// A whole TCP or UDP datagram whose checksum field holds only the pseudo-header's sum, as a sender's stack leaves
/// it for the network card (CHECKSUM_PARTIAL) when the packet never left the host: completed, since the
/// fragments will not be offloaded. A datagram with a real checksum (or UDP's none) is left alone: a corrupted one
/// stays detectable.
pub fn complete_offloaded_checksum(packet: &mut [u8]) -> Result<(), Unsendable> {
    let ihl = header_len(packet)?;
    let total = usize::from(be16(packet, 2));
    if be16(packet, 6) & (FLAG_MF | OFFSET_MASK) != 0 {
        return Ok(()); // a fragment: the checksum is not all here
    }
    let field = match packet[9] {
        PROTO_TCP if total >= ihl + 20 => ihl + 16,
        PROTO_UDP if total >= ihl + 8 => ihl + 6,
        _ => return Ok(()),
    };
    let l4_len = (total - ihl) as u32;
    let pseudo = sum_words(&packet[12..20]) + u32::from(packet[9]) + l4_len;
    let current = be16(packet, field);
    if current != fold(pseudo) {
        return Ok(());
    }
    put_be16(packet, field, 0);
    let mut sum = !fold(pseudo + sum_words(&packet[ihl..total]));
    if sum == 0 && packet[9] == PROTO_UDP {
        sum = 0xffff;
    }
    put_be16(packet, field, sum);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP datagram 10.0.0.2:1000 -> 192.0.2.1:53 with `payload` bytes and a correct checksum.
    fn udp(payload: usize, options: &[u8]) -> Vec<u8> {
        let ihl = MIN_HEADER + options.len();
        let total = ihl + 8 + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x40 | (ihl / 4) as u8;
        put_be16(&mut p, 2, total as u16);
        put_be16(&mut p, 4, 0x1234);
        p[8] = 63;
        p[9] = PROTO_UDP;
        p[12..16].copy_from_slice(&[10, 0, 0, 2]);
        p[16..20].copy_from_slice(&[192, 0, 2, 1]);
        p[MIN_HEADER..ihl].copy_from_slice(options);
        put_be16(&mut p, ihl, 1000);
        put_be16(&mut p, ihl + 2, 53);
        put_be16(&mut p, ihl + 4, (8 + payload) as u16);
        for (i, b) in p[ihl + 8..].iter_mut().enumerate() {
            *b = i as u8;
        }
        fill_header_checksum(&mut p, ihl);
        let pseudo = sum_words(&p[12..20]) + u32::from(PROTO_UDP) + (8 + payload) as u32;
        let sum = !fold(pseudo + sum_words(&p[ihl..]));
        put_be16(&mut p, ihl + 6, sum);
        p
    }

    fn valid_header(p: &[u8]) -> bool {
        let ihl = usize::from(p[0] & 0x0f) * 4;
        fold(sum_words(&p[..ihl])) == 0xffff
    }

    /// Reassemble fragments (any order) the way a receiver does.
    fn reassemble(fragments: &[Vec<u8>]) -> Vec<u8> {
        let mut payload = Vec::new();
        let mut sorted: Vec<&Vec<u8>> = fragments.iter().collect();
        sorted.sort_by_key(|f| be16(f, 6) & OFFSET_MASK);
        for f in &sorted {
            let ihl = usize::from(f[0] & 0x0f) * 4;
            assert_eq!(usize::from(be16(f, 6) & OFFSET_MASK) * 8, payload.len());
            payload.extend_from_slice(&f[ihl..]);
        }
        payload
    }

    #[test]
    fn a_datagram_is_split_at_8_byte_boundaries_and_reassembles_whole() {
        let packet = udp(3972, &[]);
        let pieces = fragment(&packet, 1500, 7).unwrap();
        assert_eq!(pieces.len(), 3);
        assert_eq!(
            pieces.iter().map(Vec::len).collect::<Vec<_>>(),
            [1500, 1500, 1040]
        );
        for (i, p) in pieces.iter().enumerate() {
            assert!(valid_header(p), "fragment {i}");
            assert_eq!(be16(p, 4), 0x1234, "the datagram's identification");
            let more = be16(p, 6) & FLAG_MF != 0;
            assert_eq!(more, i < 2);
        }
        assert_eq!(reassemble(&pieces), packet[MIN_HEADER..]);
    }

    #[test]
    fn only_copied_options_follow_the_first_fragment() {
        // Record route (7, not copied) and a copied security-like option (0x82), padded with a NOP and EOL.
        let options = [7, 7, 4, 0, 0, 0, 0, 0x82, 4, 0xaa, 0xbb, 1];
        let packet = udp(2000, &options);
        let pieces = fragment(&packet, 1000, 7).unwrap();
        assert_eq!(usize::from(pieces[0][0] & 0x0f) * 4, 32);
        for later in &pieces[1..] {
            assert_eq!(usize::from(later[0] & 0x0f) * 4, 24);
            assert_eq!(&later[20..24], &[0x82, 4, 0xaa, 0xbb]);
            assert!(valid_header(later));
        }
        assert_eq!(reassemble(&pieces), packet[32..]);
    }

    #[test]
    fn a_fragment_is_split_further_keeping_its_offset_and_more_fragments_flag() {
        let packet = udp(3000, &[]);
        let halves = fragment(&packet, 1600, 7).unwrap();
        let smaller: Vec<Vec<u8>> = halves
            .iter()
            .flat_map(|h| fragment(h, 600, 7).unwrap())
            .collect();
        assert!(smaller.iter().all(|f| f.len() <= 600 && valid_header(f)));
        assert_eq!(reassemble(&smaller), packet[MIN_HEADER..]);
        assert_eq!(be16(smaller.last().unwrap(), 6) & FLAG_MF, 0);
    }

    #[test]
    fn df_a_tiny_mtu_and_a_zero_identification_are_refused_or_handled() {
        let mut packet = udp(2000, &[]);
        put_be16(&mut packet, 6, FLAG_DF);
        assert_eq!(fragment(&packet, 1500, 7), Err(Unsendable::CannotFragment));
        put_be16(&mut packet, 6, 0);
        assert_eq!(fragment(&packet, 27, 7), Err(Unsendable::CannotFragment));
        put_be16(&mut packet, 4, 0);
        let pieces = fragment(&packet, 1500, 7).unwrap();
        assert!(pieces.iter().all(|p| be16(p, 4) == 7));
        put_be16(&mut packet, 6, FLAG_MF);
        assert_eq!(
            fragment(&packet, 1500, 7),
            Err(Unsendable::ZeroIdentification)
        );
        assert_eq!(fragment(&packet[..10], 1500, 7), Err(Unsendable::Malformed));
    }

    #[test]
    fn a_held_fragment_gets_the_address_and_one_hop_less() {
        let mut packet = fragment(&udp(2000, &[]), 1000, 7).unwrap().remove(1);
        translate_fragment(&mut packet, true, [203, 0, 113, 5]).unwrap();
        assert_eq!(&packet[12..16], &[203, 0, 113, 5]);
        assert_eq!(packet[8], 62);
        assert!(valid_header(&packet));
        packet[8] = 1;
        assert_eq!(
            translate_fragment(&mut packet, false, [10, 0, 0, 9]),
            Err(Unsendable::TtlExpired)
        );
    }

    #[test]
    fn only_a_checksum_left_for_offload_is_completed() {
        let whole = udp(100, &[]);
        let mut partial = whole.clone();
        let pseudo = fold(sum_words(&whole[12..20]) + u32::from(PROTO_UDP) + 108);
        put_be16(&mut partial, 26, pseudo);
        complete_offloaded_checksum(&mut partial).unwrap();
        assert_eq!(partial, whole);
        let mut corrupt = whole.clone();
        corrupt[40] ^= 0xff;
        let before = corrupt.clone();
        complete_offloaded_checksum(&mut corrupt).unwrap();
        assert_eq!(corrupt, before, "a wrong checksum stays wrong");
    }
}
