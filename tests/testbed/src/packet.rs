//! Building Ethernet/IPv4 and Ethernet/IPv6 frames with every checksum computed from scratch, so a test can
//! compare the datapath's output byte for byte with the frame a netfilter router would have sent.

use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        payload: Vec<u8>,
    },
    /// `no_checksum`: sent with checksum 0 (allowed for UDP over IPv4).
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
        no_checksum: bool,
    },
    /// Echo request (8) or reply (0); in an IPv6 frame ICMPv6's (128, 129).
    IcmpEcho {
        kind: u8,
        id: u16,
        seq: u16,
        payload: Vec<u8>,
    },
}

#[derive(Clone, Debug)]
pub struct Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub tos: u8,
    pub id: u16,
    /// The flags and fragment offset field (0x4000: don't fragment).
    pub frag: u16,
    /// IPv4 options, a multiple of 4 bytes.
    pub options: Vec<u8>,
    pub l4: L4,
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

impl Frame {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Frame {
        Frame {
            dst_mac: [0x02, 0, 0, 0, 0xaa, 0x01],
            src_mac: [0x02, 0, 0, 0, 0xaa, 0x02],
            src,
            dst,
            ttl: 64,
            tos: 0x10,
            id: 0x1c46,
            frag: 0x4000,
            options: Vec::new(),
            l4,
        }
    }

    /// A UDP datagram with a checksum, DF clear (a datagram to fragment).
    pub fn udp(
        (src, sport): (Ipv4Addr, u16),
        (dst, dport): (Ipv4Addr, u16),
        payload: Vec<u8>,
    ) -> Frame {
        let mut frame = Frame::new(
            src,
            dst,
            L4::Udp {
                sport,
                dport,
                payload,
                no_checksum: false,
            },
        );
        frame.frag = 0;
        frame
    }

    pub fn bytes(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        let ihl = 20 + self.options.len();
        let mut ip = Vec::with_capacity(ihl);
        ip.push(0x40 | (ihl / 4) as u8);
        ip.push(self.tos);
        ip.extend_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&self.id.to_be_bytes());
        ip.extend_from_slice(&self.frag.to_be_bytes());
        ip.push(self.ttl);
        ip.push(self.protocol());
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        ip.extend_from_slice(&self.options);
        let csum = checksum(&ip, 0);
        ip[10..12].copy_from_slice(&csum.to_be_bytes());

        let mut frame = Vec::new();
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        frame.extend_from_slice(&0x0800u16.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&l4);
        frame
    }

    fn protocol(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::IcmpEcho { .. } => 1,
        }
    }

    fn pseudo_header_sum(&self, l4_len: usize) -> u32 {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&self.src.octets());
        pseudo.extend_from_slice(&self.dst.octets());
        pseudo.extend_from_slice(&[0, self.protocol()]);
        pseudo.extend_from_slice(&(l4_len as u16).to_be_bytes());
        sum_words(&pseudo)
    }

    fn l4_bytes(&self) -> Vec<u8> {
        // ICMP's checksum has no pseudo-header.
        l4_bytes(&self.l4, |len| self.pseudo_header_sum(len), false)
    }
}

/// The transport header and payload, checksummed with `pseudo(length)` as the pseudo-header's sum (for ICMP
/// too when `icmp_pseudo`, as ICMPv6 has).
fn l4_bytes(l4: &L4, pseudo: impl Fn(usize) -> u32, icmp_pseudo: bool) -> Vec<u8> {
    {
        match l4 {
            L4::Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
                payload,
            } => {
                let mut b = Vec::new();
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&seq.to_be_bytes());
                b.extend_from_slice(&ack.to_be_bytes());
                b.push(5 << 4);
                b.push(*flags);
                b.extend_from_slice(&64240u16.to_be_bytes());
                b.extend_from_slice(&[0, 0, 0, 0]);
                b.extend_from_slice(payload);
                let csum = checksum(&b, pseudo(b.len()));
                b[16..18].copy_from_slice(&csum.to_be_bytes());
                b
            }
            L4::Udp {
                sport,
                dport,
                payload,
                no_checksum,
            } => {
                let mut b = Vec::new();
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(payload);
                if !no_checksum {
                    let mut csum = checksum(&b, pseudo(b.len()));
                    if csum == 0 {
                        csum = 0xffff; // RFC 768: a computed 0 is sent as all ones
                    }
                    b[6..8].copy_from_slice(&csum.to_be_bytes());
                }
                b
            }
            L4::IcmpEcho {
                kind,
                id,
                seq,
                payload,
            } => {
                let mut b = vec![*kind, 0, 0, 0];
                b.extend_from_slice(&id.to_be_bytes());
                b.extend_from_slice(&seq.to_be_bytes());
                b.extend_from_slice(payload);
                let initial = if icmp_pseudo { pseudo(b.len()) } else { 0 };
                let csum = checksum(&b, initial);
                b[2..4].copy_from_slice(&csum.to_be_bytes());
                b
            }
        }
    }
}

/// An Ethernet/IPv6 frame: the fixed header, extension headers, and a transport header.
#[derive(Clone, Debug)]
pub struct Frame6 {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    /// Extension headers in order, as (their protocol number, their bytes); each one's next-header byte is
    /// filled in by `bytes`.
    pub extension: Vec<(u8, Vec<u8>)>,
    pub l4: L4,
}

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// An empty options header (hop-by-hop or destination options): 8 bytes, a PadN option filling it.
pub fn empty_options_header() -> Vec<u8> {
    vec![0, 0, 1, 4, 0, 0, 0, 0]
}

impl Frame6 {
    /// The frames a sender makes of this datagram (no extension headers of its own) with fragment headers of
    /// identification `id`: its transport header and payload (checksummed whole) cut into pieces of `chunk` bytes,
    /// a multiple of 8, first first.
    pub fn fragments(&self, id: u32, chunk: usize) -> Vec<Vec<u8>> {
        assert!(chunk.is_multiple_of(8) && self.extension.is_empty());
        let whole = self.bytes();
        let (headers, l4) = whole.split_at(14 + 40);
        let pieces: Vec<&[u8]> = l4.chunks(chunk).collect();
        pieces
            .iter()
            .enumerate()
            .map(|(i, piece)| {
                let more = u16::from(i + 1 < pieces.len());
                let offset_flags = ((i * chunk) as u16) | more;
                let mut frame = headers.to_vec();
                frame[14 + 6] = 44; // next header: fragment
                frame[18..20].copy_from_slice(&((8 + piece.len()) as u16).to_be_bytes());
                frame.extend_from_slice(&[self.protocol(), 0]);
                frame.extend_from_slice(&offset_flags.to_be_bytes());
                frame.extend_from_slice(&id.to_be_bytes());
                frame.extend_from_slice(piece);
                frame
            })
            .collect()
    }

    pub fn new(src: Ipv6Addr, dst: Ipv6Addr, l4: L4) -> Frame6 {
        Frame6 {
            dst_mac: [0x02, 0, 0, 0, 0xaa, 0x01],
            src_mac: [0x02, 0, 0, 0, 0xaa, 0x02],
            src,
            dst,
            hop_limit: 64,
            extension: Vec::new(),
            l4,
        }
    }

    fn protocol(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::IcmpEcho { .. } => 58,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let protocol = self.protocol();
        let pseudo = |len: usize| {
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&self.src.octets());
            pseudo.extend_from_slice(&self.dst.octets());
            pseudo.extend_from_slice(&(len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, protocol]);
            sum_words(&pseudo)
        };
        let l4 = l4_bytes(&self.l4, pseudo, true);
        let mut extension = Vec::new();
        let first = self.extension.first().map_or(protocol, |(kind, _)| *kind);
        for (i, (_, header)) in self.extension.iter().enumerate() {
            let mut header = header.clone();
            header[0] = self
                .extension
                .get(i + 1)
                .map_or(protocol, |(kind, _)| *kind);
            extension.extend_from_slice(&header);
        }
        let payload_len = (extension.len() + l4.len()) as u16;
        let mut frame = Vec::new();
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        frame.extend_from_slice(&0x86ddu16.to_be_bytes());
        frame.extend_from_slice(&[0x60, 0, 0, 0]);
        frame.extend_from_slice(&payload_len.to_be_bytes());
        frame.push(first);
        frame.push(self.hop_limit);
        frame.extend_from_slice(&self.src.octets());
        frame.extend_from_slice(&self.dst.octets());
        frame.extend_from_slice(&extension);
        frame.extend_from_slice(&l4);
        frame
    }
}

fn sum_words(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum()
}

/// The Internet checksum of `data` plus an initial (pseudo-header) sum.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial + sum_words(data);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The source or destination port (ICMP: identifier) of a frame built by `Frame::bytes`, read back.
pub fn l4_port(frame: &[u8], source: bool) -> u16 {
    let l4 = 14 + ((frame[14] & 0x0f) as usize) * 4;
    let off = match frame[23] {
        1 => 4,
        _ if source => 0,
        _ => 2,
    };
    u16::from_be_bytes([frame[l4 + off], frame[l4 + off + 1]])
}

/// The ICMP error a router sends about `offending` (the frame as it arrived): `kind`, `code` and the 4 bytes after
/// the checksum (`rest`), from `from` to the offender's source, between these MACs, quoting the offender's IP
/// header and the `quote_l4` bytes after it (zero-padded when the packet is shorter). IP: DF, ID 0, TTL 64, TOS
/// 0xc0; both checksums computed here from scratch.
#[allow(clippy::too_many_arguments)]
pub fn icmp_error_frame(
    offending: &[u8],
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    from: Ipv4Addr,
    (kind, code, rest): (u8, u8, [u8; 4]),
    quote_l4: usize,
) -> Vec<u8> {
    let ihl = ((offending[14] & 0x0f) as usize) * 4;
    let mut quote = offending[14..].to_vec();
    quote.resize(ihl + quote_l4, 0);
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(&quote);
    let csum = checksum(&icmp, 0).to_be_bytes();
    icmp[2..4].copy_from_slice(&csum);
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0xc0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&from.octets());
    ip.extend_from_slice(&offending[26..30]);
    let csum = checksum(&ip, 0).to_be_bytes();
    ip[10..12].copy_from_slice(&csum);
    let mut frame = dst_mac.to_vec();
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&icmp);
    frame
}

/// The ICMPv6 error a router sends from `from` to the sender of the IPv6 frame `offending` (no extension headers):
/// its IPv6 header and `quote_l4` bytes after it quoted (zero-padded), hop limit 64.
pub fn icmp6_error_frame(
    offending: &[u8],
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    from: Ipv6Addr,
    (kind, code, rest): (u8, u8, [u8; 4]),
    quote_l4: usize,
) -> Vec<u8> {
    let to: [u8; 16] = offending[22..38].try_into().unwrap();
    let mut quote = offending[14..].to_vec();
    quote.resize(40 + quote_l4, 0);
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(&quote);
    let mut pseudo = from.octets().to_vec();
    pseudo.extend_from_slice(&to);
    pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    let csum = checksum(&icmp, sum_words(&pseudo)).to_be_bytes();
    icmp[2..4].copy_from_slice(&csum);
    let mut frame = dst_mac.to_vec();
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    frame.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[58, 64]);
    frame.extend_from_slice(&from.octets());
    frame.extend_from_slice(&to);
    frame.extend_from_slice(&icmp);
    frame
}

/// Send the IPv4 packet of `frame` (its Ethernet header skipped) exactly as built, through a raw socket of the
/// calling thread's network namespace: for packets no socket would send, such as a spoofed RST.
pub fn send_raw(frame: &[u8]) {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW,
        Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
    )
    .expect("raw socket");
    let dst = Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]);
    let to = std::net::SocketAddr::from((dst, 0));
    socket
        .send_to(&frame[14..], &to.into())
        .expect("sending a raw packet");
}

/// Send the IPv6 packet of `frame` (its Ethernet header skipped) exactly as built, through a raw IPv6 socket of the
/// calling thread's namespace (IPPROTO_RAW: the header is the caller's).
pub fn send_raw6(frame: &[u8]) {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV6,
        socket2::Type::RAW,
        Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
    )
    .expect("raw IPv6 socket");
    let dst: [u8; 16] = frame[38..54].try_into().unwrap();
    let to = std::net::SocketAddr::from((Ipv6Addr::from(dst), 0));
    socket
        .send_to(&frame[14..], &to.into())
        .expect("sending a raw IPv6 packet");
}

/// The IPv4 fragments of `frame` (Ethernet + IPv4 without options), each carrying `chunk` bytes of its IP payload
/// (a multiple of 8; the last carries the rest), as a router fragments: same identification, DF clear, MF on all
/// but the last, header checksums computed here.
pub fn fragments(frame: &[u8], chunk: usize) -> Vec<Vec<u8>> {
    assert_eq!(chunk % 8, 0, "fragment payloads are multiples of 8 bytes");
    let (head, payload) = frame.split_at(14 + 20);
    let pieces: Vec<&[u8]> = payload.chunks(chunk).collect();
    pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let mut out = head.to_vec();
            out[16..18].copy_from_slice(&((20 + piece.len()) as u16).to_be_bytes());
            let more = if i + 1 < pieces.len() { 0x2000 } else { 0 };
            out[20..22].copy_from_slice(&(more | (i * chunk / 8) as u16).to_be_bytes());
            out[24..26].copy_from_slice(&[0, 0]);
            let csum = checksum(&out[14..34], 0);
            out[24..26].copy_from_slice(&csum.to_be_bytes());
            out.extend_from_slice(piece);
            out
        })
        .collect()
}

/// The fragments a sender makes of a UDP datagram (`chunk` bytes of IP payload each, identification `id`), in
/// reverse order: the first fragment last, as a multipath network may deliver them.
pub fn udp_fragments_last_first(
    (src, sport): (Ipv4Addr, u16),
    (dst, dport): (Ipv4Addr, u16),
    payload: Vec<u8>,
    id: u16,
    chunk: usize,
) -> Vec<Vec<u8>> {
    let mut frame = Frame::udp((src, sport), (dst, dport), payload);
    frame.id = id;
    let mut pieces = fragments(&frame.bytes(), chunk);
    pieces.reverse();
    pieces
}
