//! The policy trie: which sources are translated (snat) and which are routed unchanged (forward).

use std::{borrow::BorrowMut, collections::BTreeMap, net::Ipv4Addr};

use anyhow::Context as _;
use aya::maps::{
    MapData,
    lpm_trie::{Key, LpmTrie},
};
use ipnet::Ipv4Net;
use veg_common::policy::{ACTION_FORWARD, ACTION_SNAT, Policy, PolicyKeyV4};

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

pub type DesiredPolicy = BTreeMap<Ipv4Net, Action>;

pub struct PolicyTable<T> {
    trie: LpmTrie<T, PolicyKeyV4, Policy>,
}

/// What a sync changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PolicyChanges {
    pub added_or_changed: usize,
    pub removed: usize,
}

impl<T: BorrowMut<MapData>> PolicyTable<T> {
    pub fn new(trie: LpmTrie<T, PolicyKeyV4, Policy>) -> Self {
        PolicyTable { trie }
    }

    /// Make the trie hold exactly `desired`, touching only what differs, so flows of unchanged sources never see
    /// a gap.
    pub fn sync(&mut self, desired: &DesiredPolicy) -> anyhow::Result<PolicyChanges> {
        let mut current = BTreeMap::new();
        for key in self.trie.keys() {
            let key = key.context("reading the policy trie")?;
            let value = self.trie.get(&key, 0).context("reading the policy trie")?;
            let net = Ipv4Net::new(Ipv4Addr::from(key.data()), key.prefix_len() as u8)?;
            current.insert(net, value.action);
        }
        let mut changes = PolicyChanges::default();
        for (net, action) in desired {
            if current.get(net) != Some(&action.value()) {
                self.trie
                    .insert(
                        &key_of(net),
                        Policy {
                            action: action.value(),
                        },
                        0,
                    )
                    .with_context(|| format!("adding policy {net}"))?;
                changes.added_or_changed += 1;
            }
        }
        for net in current.keys().filter(|net| !desired.contains_key(net)) {
            self.trie
                .remove(&key_of(net))
                .with_context(|| format!("removing policy {net}"))?;
            changes.removed += 1;
        }
        Ok(changes)
    }
}

fn key_of(net: &Ipv4Net) -> Key<PolicyKeyV4> {
    Key::new(net.prefix_len() as u32, net.network().octets())
}
