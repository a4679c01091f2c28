//! Which sources the gateway serves, and how.

/// What the gateway does with traffic from a source (the value in the policy LPM tries).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub action: u32,
}

/// Translate the source to the external address.
pub const ACTION_SNAT: u32 = 1;
/// Route unchanged (a policy with `snat: false`).
pub const ACTION_FORWARD: u32 = 2;

/// Key data of the IPv4 policy trie (the prefix length comes from aya's LPM key wrapper).
pub type PolicyKeyV4 = [u8; 4];

/// Key data of the IPv6 policy trie.
pub type PolicyKeyV6 = [u8; 16];

/// Capacity of each policy trie.
pub const POLICY_MAX_ENTRIES: u32 = 131_072;

#[cfg(feature = "user")]
unsafe impl aya::Pod for Policy {}
