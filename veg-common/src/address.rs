//! An IPv4 or IPv6 address as the datapath stores it.

/// Address family tags, as stored in keys (values of AF_INET / AF_INET6 would waste nothing, but these are
/// clearer in dumps).
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// An address in network byte order. IPv4 occupies the first four bytes; the rest are zero.
///
/// Aligned to 4 bytes so that the BPF programs copy and compare it a word at a time: BPF has no unaligned loads,
/// so at byte alignment every copy into a flow key and every `==` became sixteen byte loads a side (the programs
/// were 13% longer). Every struct that holds one already had it at a multiple of 4, so no layout moved (the size
/// and offset assertions beside each of them hold it).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Address {
    pub bytes: [u8; 16],
}

impl Address {
    pub const UNSPECIFIED: Address = Address { bytes: [0; 16] };

    /// From an IPv4 address in network byte order, as read from a header (the u32's in-memory bytes are the wire
    /// bytes).
    #[inline(always)]
    pub fn from_ipv4_be(addr: u32) -> Address {
        let b = addr.to_ne_bytes();
        Address {
            bytes: [b[0], b[1], b[2], b[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        }
    }

    /// The IPv4 address in network byte order, for writing into a header.
    #[inline(always)]
    pub fn ipv4_be(&self) -> u32 {
        u32::from_ne_bytes([self.bytes[0], self.bytes[1], self.bytes[2], self.bytes[3]])
    }
}

#[cfg(feature = "user")]
mod user {
    use super::Address;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    impl Address {
        pub fn from_ip(ip: IpAddr) -> Address {
            match ip {
                IpAddr::V4(v4) => {
                    let mut bytes = [0; 16];
                    bytes[..4].copy_from_slice(&v4.octets());
                    Address { bytes }
                }
                IpAddr::V6(v6) => Address { bytes: v6.octets() },
            }
        }

        pub fn to_ip(&self, family: u8) -> IpAddr {
            if family == super::FAMILY_IPV6 {
                IpAddr::V6(Ipv6Addr::from(self.bytes))
            } else {
                IpAddr::V4(Ipv4Addr::new(
                    self.bytes[0],
                    self.bytes[1],
                    self.bytes[2],
                    self.bytes[3],
                ))
            }
        }
    }

    unsafe impl aya::Pod for Address {}
}
