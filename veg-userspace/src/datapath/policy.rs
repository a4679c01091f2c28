//! The policy tries, one per family: which sources are translated (snat) and which are routed unchanged (forward).

use std::{
    borrow::BorrowMut,
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::Context as _;
use aya::{
    Pod,
    maps::{
        MapData,
        lpm_trie::{Key, LpmTrie},
    },
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use veg_common::policy::{ACTION_FORWARD, ACTION_SNAT, Policy, PolicyKeyV4, PolicyKeyV6};

/// What the gateway does with each source prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Snat,
    Forward,
}

impl Action {
    fn value(self) -> u32 {
        match self {
            Action::Snat => ACTION_SNAT,
            Action::Forward => ACTION_FORWARD,
        }
    }
}

/// Source prefixes of either family and what is done with them.
pub type DesiredPolicy = BTreeMap<IpNet, Action>;

/// Whether the policy names IPv6 sources (which need an external IPv6 address to be translated to).
pub fn has_ipv6(policy: &DesiredPolicy) -> bool {
    policy.keys().any(|net| matches!(net, IpNet::V6(_)))
}

pub struct PolicyTable<T> {
    v4: LpmTrie<T, PolicyKeyV4, Policy>,
    v6: LpmTrie<T, PolicyKeyV6, Policy>,
}

/// What a sync changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PolicyChanges {
    pub added_or_changed: usize,
    pub removed: usize,
}

impl<T: BorrowMut<MapData>> PolicyTable<T> {
    pub fn new(v4: LpmTrie<T, PolicyKeyV4, Policy>, v6: LpmTrie<T, PolicyKeyV6, Policy>) -> Self {
        PolicyTable { v4, v6 }
    }

    /// Make the tries hold exactly `desired`, touching only what differs, so flows of unchanged sources never
    /// see a gap.
    pub fn sync(&mut self, desired: &DesiredPolicy) -> anyhow::Result<PolicyChanges> {
        let v4: BTreeMap<Ipv4Net, Action> = desired
            .iter()
            .filter_map(|(net, action)| match net {
                IpNet::V4(net) => Some((*net, *action)),
                IpNet::V6(_) => None,
            })
            .collect();
        let v6: BTreeMap<Ipv6Net, Action> = desired
            .iter()
            .filter_map(|(net, action)| match net {
                IpNet::V6(net) => Some((*net, *action)),
                IpNet::V4(_) => None,
            })
            .collect();
        let a = sync_trie(
            &mut self.v4,
            &v4,
            |net| Key::new(u32::from(net.prefix_len()), net.network().octets()),
            |data, len| Ipv4Net::new(Ipv4Addr::from(data), len).ok(),
        )?;
        let b = sync_trie(
            &mut self.v6,
            &v6,
            |net| Key::new(u32::from(net.prefix_len()), net.network().octets()),
            |data, len| Ipv6Net::new(Ipv6Addr::from(data), len).ok(),
        )?;
        Ok(PolicyChanges {
            added_or_changed: a.added_or_changed + b.added_or_changed,
            removed: a.removed + b.removed,
        })
    }
}

/// Sync one family's trie: `key_of` gives a prefix's key, `net_of` reads a key's data and length back.
fn sync_trie<T, K, N>(
    trie: &mut LpmTrie<T, K, Policy>,
    desired: &BTreeMap<N, Action>,
    key_of: impl Fn(&N) -> Key<K>,
    net_of: impl Fn(K, u8) -> Option<N>,
) -> anyhow::Result<PolicyChanges>
where
    T: BorrowMut<MapData>,
    K: Pod,
    N: Ord + Copy + std::fmt::Display,
{
    let mut current = BTreeMap::new();
    for key in trie.keys() {
        let key = key.context("reading the policy trie")?;
        let value = trie.get(&key, 0).context("reading the policy trie")?;
        let net = net_of(key.data(), key.prefix_len() as u8)
            .context("the policy trie holds a prefix longer than its address")?;
        current.insert(net, value.action);
    }
    let mut changes = PolicyChanges::default();
    for (net, action) in desired {
        if current.get(net) != Some(&action.value()) {
            let policy = Policy {
                action: action.value(),
            };
            trie.insert(&key_of(net), policy, 0)
                .with_context(|| format!("adding policy {net}"))?;
            changes.added_or_changed += 1;
        }
    }
    for net in current.keys().filter(|net| !desired.contains_key(net)) {
        trie.remove(&key_of(net))
            .with_context(|| format!("removing policy {net}"))?;
        changes.removed += 1;
    }
    Ok(changes)
}
