//! IPv4 forwarding of one interface, set over rtnetlink (RTM_SETLINK with IFLA_AF_SPEC / AF_INET /
//! IFLA_INET_CONF) rather than written to /proc/sys: container runtimes mount /proc/sys read-only in a pod, while
//! CAP_NET_ADMIN still lets the pod set its own interfaces' configuration over netlink. The datapath's route
//! lookups (bpf_fib_lookup) and the kernel's forwarding both look at the receiving interface's setting.

use anyhow::Context as _;

use super::rtnetlink::{NLA_F_NESTED, attribute, message};

const RTM_SETLINK: u16 = 19;
const IFLA_AF_SPEC: u16 = 26;
const IFLA_INET_CONF: u16 = 1;
/// enum ipv4_devconf in linux/ip.h starts at 1 with FORWARDING.
const IPV4_DEVCONF_FORWARDING: u16 = 1;

/// The RTM_SETLINK request that sets the interface's IPv4 forwarding.
fn request(ifindex: u32, on: bool) -> Vec<u8> {
    let conf = attribute(IPV4_DEVCONF_FORWARDING, &u32::from(on).to_ne_bytes());
    let inet = attribute(IFLA_INET_CONF | NLA_F_NESTED, &conf);
    let family = attribute(libc::AF_INET as u16 | NLA_F_NESTED, &inet);
    let spec = attribute(IFLA_AF_SPEC | NLA_F_NESTED, &family);
    // struct ifinfomsg: family AF_UNSPEC, padding, type, index, flags, change.
    let mut ifinfomsg = vec![0u8; 4];
    ifinfomsg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    ifinfomsg.extend_from_slice(&[0; 8]);
    message(RTM_SETLINK, 0, &ifinfomsg, &spec)
}

/// Turn IPv4 forwarding of the interface with index `ifindex` on or off.
pub fn set_forwarding(ifindex: u32, on: bool) -> anyhow::Result<()> {
    super::rtnetlink::request(&request(ifindex, on)).with_context(|| {
        format!("setting IPv4 forwarding of interface {ifindex} (needs CAP_NET_ADMIN)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_nests_the_setting_as_the_kernel_parses_it() {
        let message = request(7, true);
        assert_eq!(message.len(), 16 + 16 + 20);
        assert_eq!(u32::from_ne_bytes(message[0..4].try_into().unwrap()), 52);
        assert_eq!(
            i32::from_ne_bytes(message[20..24].try_into().unwrap()),
            7,
            "ifi_index"
        );
        // IFLA_AF_SPEC { AF_INET { IFLA_INET_CONF { FORWARDING = 1 } } }
        let nested = |at: usize| {
            (
                u16::from_ne_bytes([message[at], message[at + 1]]),
                u16::from_ne_bytes([message[at + 2], message[at + 3]]),
            )
        };
        assert_eq!(nested(32), (20, IFLA_AF_SPEC | NLA_F_NESTED));
        assert_eq!(nested(36), (16, 2 | NLA_F_NESTED));
        assert_eq!(nested(40), (12, IFLA_INET_CONF | NLA_F_NESTED));
        assert_eq!(nested(44), (8, IPV4_DEVCONF_FORWARDING));
        assert_eq!(u32::from_ne_bytes(message[48..52].try_into().unwrap()), 1);
    }
}
