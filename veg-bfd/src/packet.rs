//! BFD control packets (RFC 5880 section 4.1): encoding, and decoding with the checks of section 6.8.6 that do not
//! need a session.

use std::fmt;

/// The mandatory section's length; veg sends no authentication section.
pub const CONTROL_LEN: usize = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    AdminDown = 0,
    Down = 1,
    Init = 2,
    Up = 3,
}

impl State {
    fn from_bits(bits: u8) -> State {
        match bits & 3 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::AdminDown => "AdminDown",
            State::Down => "Down",
            State::Init => "Init",
            State::Up => "Up",
        })
    }
}

/// Diagnostic codes (section 4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Diagnostic {
    None = 0,
    ControlDetectionTimeExpired = 1,
    EchoFailed = 2,
    NeighborSignaledSessionDown = 3,
    ForwardingPlaneReset = 4,
    PathDown = 5,
    ConcatenatedPathDown = 6,
    AdministrativelyDown = 7,
    ReverseConcatenatedPathDown = 8,
}

impl Diagnostic {
    fn from_bits(bits: u8) -> Diagnostic {
        match bits & 0x1f {
            1 => Diagnostic::ControlDetectionTimeExpired,
            2 => Diagnostic::EchoFailed,
            3 => Diagnostic::NeighborSignaledSessionDown,
            4 => Diagnostic::ForwardingPlaneReset,
            5 => Diagnostic::PathDown,
            6 => Diagnostic::ConcatenatedPathDown,
            7 => Diagnostic::AdministrativelyDown,
            8 => Diagnostic::ReverseConcatenatedPathDown,
            _ => Diagnostic::None,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Diagnostic::None => "none",
            Diagnostic::ControlDetectionTimeExpired => "control detection time expired",
            Diagnostic::EchoFailed => "echo function failed",
            Diagnostic::NeighborSignaledSessionDown => "neighbor signaled session down",
            Diagnostic::ForwardingPlaneReset => "forwarding plane reset",
            Diagnostic::PathDown => "path down",
            Diagnostic::ConcatenatedPathDown => "concatenated path down",
            Diagnostic::AdministrativelyDown => "administratively down",
            Diagnostic::ReverseConcatenatedPathDown => "reverse concatenated path down",
        }
    }
}

/// A BFD control packet. Intervals are in microseconds, as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlPacket {
    pub diagnostic: Diagnostic,
    pub state: State,
    pub poll: bool,
    pub final_: bool,
    pub control_plane_independent: bool,
    pub demand: bool,
    pub detect_mult: u8,
    pub my_discriminator: u32,
    pub your_discriminator: u32,
    pub desired_min_tx_us: u32,
    pub required_min_rx_us: u32,
    pub required_min_echo_rx_us: u32,
}

/// Why a received packet was discarded (section 6.8.6); each is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discard {
    Truncated,
    BadVersion,
    BadLength,
    ZeroDetectMult,
    Multipoint,
    ZeroMyDiscriminator,
    /// Your Discriminator is zero while the state is Init or Up.
    ZeroYourDiscriminator,
    /// Authentication requested; veg (like the reference) uses none.
    Authenticated,
    /// Your Discriminator names no session.
    UnknownDiscriminator,
    /// From an address that is not a configured peer.
    PeerNotAllowed,
    /// TTL (hop limit) below the configured minimum.
    LowTtl,
    /// The session is administratively down.
    SessionAdminDown,
}

impl Discard {
    pub const ALL: [Discard; 12] = [
        Discard::Truncated,
        Discard::BadVersion,
        Discard::BadLength,
        Discard::ZeroDetectMult,
        Discard::Multipoint,
        Discard::ZeroMyDiscriminator,
        Discard::ZeroYourDiscriminator,
        Discard::Authenticated,
        Discard::UnknownDiscriminator,
        Discard::PeerNotAllowed,
        Discard::LowTtl,
        Discard::SessionAdminDown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Discard::Truncated => "truncated",
            Discard::BadVersion => "bad_version",
            Discard::BadLength => "bad_length",
            Discard::ZeroDetectMult => "zero_detect_mult",
            Discard::Multipoint => "multipoint",
            Discard::ZeroMyDiscriminator => "zero_my_discriminator",
            Discard::ZeroYourDiscriminator => "zero_your_discriminator",
            Discard::Authenticated => "authenticated",
            Discard::UnknownDiscriminator => "unknown_discriminator",
            Discard::PeerNotAllowed => "peer_not_allowed",
            Discard::LowTtl => "low_ttl",
            Discard::SessionAdminDown => "session_admin_down",
        }
    }
}

const VERSION: u8 = 1;
const FLAG_POLL: u8 = 0x20;
const FLAG_FINAL: u8 = 0x10;
const FLAG_CPI: u8 = 0x08;
const FLAG_AUTH: u8 = 0x04;
const FLAG_DEMAND: u8 = 0x02;
const FLAG_MULTIPOINT: u8 = 0x01;

impl ControlPacket {
    pub fn encode(&self) -> [u8; CONTROL_LEN] {
        let mut b = [0u8; CONTROL_LEN];
        b[0] = (VERSION << 5) | (self.diagnostic as u8);
        b[1] = ((self.state as u8) << 6)
            | if self.poll { FLAG_POLL } else { 0 }
            | if self.final_ { FLAG_FINAL } else { 0 }
            | if self.control_plane_independent {
                FLAG_CPI
            } else {
                0
            }
            | if self.demand { FLAG_DEMAND } else { 0 };
        b[2] = self.detect_mult;
        b[3] = CONTROL_LEN as u8;
        b[4..8].copy_from_slice(&self.my_discriminator.to_be_bytes());
        b[8..12].copy_from_slice(&self.your_discriminator.to_be_bytes());
        b[12..16].copy_from_slice(&self.desired_min_tx_us.to_be_bytes());
        b[16..20].copy_from_slice(&self.required_min_rx_us.to_be_bytes());
        b[20..24].copy_from_slice(&self.required_min_echo_rx_us.to_be_bytes());
        b
    }

    /// Decode a UDP payload, applying every check of section 6.8.6 that needs no session.
    pub fn decode(payload: &[u8]) -> Result<ControlPacket, Discard> {
        if payload.len() < CONTROL_LEN {
            return Err(Discard::Truncated);
        }
        if payload[0] >> 5 != VERSION {
            return Err(Discard::BadVersion);
        }
        let flags = payload[1];
        let length = payload[3] as usize;
        let min_length = if flags & FLAG_AUTH != 0 {
            CONTROL_LEN + 2
        } else {
            CONTROL_LEN
        };
        if length < min_length || length > payload.len() {
            return Err(Discard::BadLength);
        }
        if payload[2] == 0 {
            return Err(Discard::ZeroDetectMult);
        }
        if flags & FLAG_MULTIPOINT != 0 {
            return Err(Discard::Multipoint);
        }
        let word = |i: usize| {
            u32::from_be_bytes([payload[i], payload[i + 1], payload[i + 2], payload[i + 3]])
        };
        let packet = ControlPacket {
            diagnostic: Diagnostic::from_bits(payload[0]),
            state: State::from_bits(flags >> 6),
            poll: flags & FLAG_POLL != 0,
            final_: flags & FLAG_FINAL != 0,
            control_plane_independent: flags & FLAG_CPI != 0,
            demand: flags & FLAG_DEMAND != 0,
            detect_mult: payload[2],
            my_discriminator: word(4),
            your_discriminator: word(8),
            desired_min_tx_us: word(12),
            required_min_rx_us: word(16),
            required_min_echo_rx_us: word(20),
        };
        if packet.my_discriminator == 0 {
            return Err(Discard::ZeroMyDiscriminator);
        }
        if packet.your_discriminator == 0 && packet.state > State::Down {
            return Err(Discard::ZeroYourDiscriminator);
        }
        // No authentication is configured, so an authenticated packet is refused (section 6.8.6).
        if flags & FLAG_AUTH != 0 {
            return Err(Discard::Authenticated);
        }
        Ok(packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ControlPacket {
        ControlPacket {
            diagnostic: Diagnostic::ControlDetectionTimeExpired,
            state: State::Up,
            poll: true,
            final_: false,
            control_plane_independent: false,
            demand: false,
            detect_mult: 3,
            my_discriminator: 0x11223344,
            your_discriminator: 0x55667788,
            desired_min_tx_us: 100_000,
            required_min_rx_us: 400_000,
            required_min_echo_rx_us: 0,
        }
    }

    #[test]
    fn encodes_the_wire_format() {
        let b = sample().encode();
        assert_eq!(b[0], 0x21, "version 1, diag 1");
        assert_eq!(b[1], 0xe0, "state Up, poll");
        assert_eq!(b[2], 3);
        assert_eq!(b[3], 24);
        assert_eq!(&b[4..8], &[0x11, 0x22, 0x33, 0x44]);
        assert_eq!(&b[12..16], &100_000u32.to_be_bytes());
        assert_eq!(ControlPacket::decode(&b), Ok(sample()));
        let final_only = ControlPacket {
            poll: false,
            final_: true,
            ..sample()
        }
        .encode();
        assert_eq!(final_only[1], 0xd0);
    }

    #[test]
    fn every_malformed_field_is_refused() {
        let good = sample().encode();
        let with = |f: &dyn Fn(&mut [u8; CONTROL_LEN])| {
            let mut b = good;
            f(&mut b);
            ControlPacket::decode(&b)
        };
        assert_eq!(ControlPacket::decode(&good[..23]), Err(Discard::Truncated));
        assert_eq!(with(&|b| b[0] = 0x41), Err(Discard::BadVersion));
        assert_eq!(with(&|b| b[0] = 0x01), Err(Discard::BadVersion));
        assert_eq!(with(&|b| b[3] = 23), Err(Discard::BadLength));
        assert_eq!(
            with(&|b| b[3] = 30),
            Err(Discard::BadLength),
            "longer than the payload"
        );
        assert_eq!(with(&|b| b[2] = 0), Err(Discard::ZeroDetectMult));
        assert_eq!(with(&|b| b[1] |= FLAG_MULTIPOINT), Err(Discard::Multipoint));
        assert_eq!(
            with(&|b| b[4..8].copy_from_slice(&[0; 4])),
            Err(Discard::ZeroMyDiscriminator)
        );
        assert_eq!(
            with(&|b| b[8..12].copy_from_slice(&[0; 4])),
            Err(Discard::ZeroYourDiscriminator)
        );
        // ...but a Down packet may not know our discriminator yet.
        let down = ControlPacket {
            state: State::Down,
            your_discriminator: 0,
            ..sample()
        }
        .encode();
        assert!(ControlPacket::decode(&down).is_ok());
        let mut auth = [0u8; 26];
        auth[..24].copy_from_slice(&good);
        auth[1] |= FLAG_AUTH;
        auth[3] = 26;
        assert_eq!(ControlPacket::decode(&auth), Err(Discard::Authenticated));
        auth[3] = 24;
        assert_eq!(
            ControlPacket::decode(&auth),
            Err(Discard::BadLength),
            "A bit needs room for the auth section"
        );
    }
}
