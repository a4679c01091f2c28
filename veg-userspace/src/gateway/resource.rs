//! `veg gateway --gateway NAMESPACE/NAME`: the instance takes its policy from its VpcEgressGateway and the Subnets
//! the policies name, and follows them: every change is synced into the policy trie in place (only what differs),
//! so flows of unchanged sources never see a gap and no restart is needed.

use std::{fmt, str::FromStr};

use anyhow::{Context as _, bail};
use futures::{StreamExt, stream};
use kube::{
    Api, Client,
    api::ListParams,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tokio::sync::watch;
use tracing::{info, warn};

use super::settings::parse_cidr;
use crate::{
    crd::{gateway::VpcEgressGateway, network::Subnet},
    datapath::policy::{Action, DesiredPolicy},
};

/// NAMESPACE/NAME of a VpcEgressGateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRef {
    pub namespace: String,
    pub name: String,
}

impl FromStr for GatewayRef {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<GatewayRef> {
        match s.split_once('/') {
            Some((namespace, name))
                if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(GatewayRef {
                    namespace: namespace.into(),
                    name: name.into(),
                })
            }
            _ => bail!("invalid --gateway {s:?}: expected NAMESPACE/NAME of a VpcEgressGateway"),
        }
    }
}

impl fmt::Display for GatewayRef {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The datapath's policy for the gateway: each policy's ipBlocks and the CIDRs of its subnets (both families: a
/// dual-stack subnet's "v4,v6"), translated (snat: true) or routed unchanged. A source given both ways is
/// translated, as the reference's MASQUERADE would. Selectors pick pods anywhere in the VPC, always translated:
/// then every source not forwarded is translated (0.0.0.0/0 and ::/0; the forward prefixes are more specific), as
/// the reference's MASQUERADE of everything but forward sources; OVN sends only the selected pods here. The agent
/// keeps the families it has an external address for.
pub fn policy_of(gateway: &VpcEgressGateway, subnets: &[Subnet]) -> Result<DesiredPolicy, String> {
    let mut policy = DesiredPolicy::new();
    for rule in &gateway.spec.policies {
        let mut sources: Vec<String> = rule.ip_blocks.clone();
        for name in &rule.subnets {
            let subnet = subnets
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(name.as_str()))
                .ok_or_else(|| {
                    format!("subnet {name:?} named by the gateway's policies does not exist")
                })?;
            sources.extend(
                subnet
                    .spec
                    .cidr_block
                    .split(',')
                    .map(|c| c.trim().to_owned()),
            );
        }
        let action = if rule.snat {
            Action::Snat
        } else {
            Action::Forward
        };
        for source in sources.iter().filter(|s| !s.is_empty()) {
            let net = parse_cidr(source).map_err(|e| format!("{e:#}"))?;
            let entry = policy.entry(net).or_insert(action);
            if action == Action::Snat {
                *entry = Action::Snat;
            }
        }
    }
    if !gateway.spec.selectors.is_empty() {
        policy.insert(ipnet::IpNet::V4(Default::default()), Action::Snat);
        policy.insert(ipnet::IpNet::V6(Default::default()), Action::Snat);
    }
    Ok(policy)
}

/// The policy now, read once (the instance starts with it), and a channel carrying every later change.
pub async fn follow(
    client: Client,
    gateway: GatewayRef,
) -> anyhow::Result<(DesiredPolicy, watch::Receiver<DesiredPolicy>)> {
    let gateways: Api<VpcEgressGateway> = Api::namespaced(client.clone(), &gateway.namespace);
    let subnets: Api<Subnet> = Api::all(client);
    let resource = gateways.get(&gateway.name).await.with_context(|| {
        format!("reading VpcEgressGateway {gateway} (does it exist, and may this pod read it?)")
    })?;
    let all = subnets
        .list(&ListParams::default())
        .await
        .context("listing Subnets")?;
    let initial = policy_of(&resource, &all.items)
        .map_err(|e| anyhow::anyhow!("VpcEgressGateway {gateway}: {e}"))?;
    if initial.is_empty() {
        bail!("VpcEgressGateway {gateway} gives no IPv4 source: nothing to translate or forward");
    }
    let (updates, receiver) = watch::channel(initial.clone());
    tokio::spawn(watch_changes(gateways, subnets, gateway, updates));
    Ok((initial, receiver))
}

/// Recompute the policy whenever the gateway or a subnet changes; send it when it differs. A policy that cannot
/// be computed (a subnet gone, a bad CIDR) is logged and the last good one stays.
async fn watch_changes(
    gateways: Api<VpcEgressGateway>,
    subnets: Api<Subnet>,
    gateway: GatewayRef,
    updates: watch::Sender<DesiredPolicy>,
) {
    let (gateway_store, gateway_writer) = reflector::store();
    let (subnet_store, subnet_writer) = reflector::store();
    let only_ours = watcher::Config::default().fields(&format!("metadata.name={}", gateway.name));
    let gateway_events = reflector::reflector(gateway_writer, watcher(gateways, only_ours))
        .default_backoff()
        .touched_objects()
        .map(|e| e.map(drop));
    let subnet_events =
        reflector::reflector(subnet_writer, watcher(subnets, watcher::Config::default()))
            .default_backoff()
            .touched_objects()
            .map(|e| e.map(drop));
    let mut events = std::pin::pin!(stream::select(gateway_events, subnet_events));
    let key = ObjectRef::new(&gateway.name).within(&gateway.namespace);
    while let Some(event) = events.next().await {
        if let Err(e) = event {
            warn!(%gateway, "watching the gateway's resources: {e}; retrying");
            continue;
        }
        if let Some(policy) = current_policy(&gateway_store, &subnet_store, &key, &gateway)
            && *updates.borrow() != policy
        {
            info!(%gateway, sources = policy.len(), "the gateway's policy changed");
            if updates.send(policy).is_err() {
                return;
            }
        }
    }
}

fn current_policy(
    gateways: &Store<VpcEgressGateway>,
    subnets: &Store<Subnet>,
    key: &ObjectRef<VpcEgressGateway>,
    gateway: &GatewayRef,
) -> Option<DesiredPolicy> {
    let resource = gateways.get(key)?;
    let subnets: Vec<Subnet> = subnets.state().iter().map(|s| s.as_ref().clone()).collect();
    match policy_of(&resource, &subnets) {
        Ok(policy) if policy.is_empty() => {
            warn!(%gateway, "the gateway now gives no IPv4 source; keeping the last policy");
            None
        }
        Ok(policy) => Some(policy),
        Err(e) => {
            warn!(%gateway, "{e}; keeping the last policy");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::network::SubnetSpec;

    fn subnet(name: &str, cidr: &str) -> Subnet {
        Subnet::new(
            name,
            SubnetSpec {
                cidr_block: cidr.into(),
                ..Default::default()
            },
        )
    }

    fn gateway(policies: &str) -> VpcEgressGateway {
        serde_yaml::from_str(&format!("metadata: {{name: g, namespace: ns}}\nspec: {{externalSubnet: e, policies: {policies}}}"))
            .unwrap()
    }

    #[test]
    fn the_policy_comes_from_ip_blocks_and_subnets() {
        let subnets = [
            subnet("dual", "10.16.0.0/16,fd00:10:16::/64"),
            subnet("other", "10.17.0.0/16"),
        ];
        let policy = policy_of(
            &gateway("[{snat: true, subnets: [dual], ipBlocks: [10.18.0.5]}, {ipBlocks: [10.19.0.0/16, 'fd00::/8']}, {ipBlocks: [10.18.0.5]}]"),
            &subnets,
        )
        .unwrap();
        let expected: DesiredPolicy = [
            ("10.16.0.0/16", Action::Snat),
            ("fd00:10:16::/64", Action::Snat),
            ("10.18.0.5/32", Action::Snat),
            ("10.19.0.0/16", Action::Forward),
            ("fd00::/8", Action::Forward),
        ]
        .into_iter()
        .map(|(net, action)| (net.parse().unwrap(), action))
        .collect();
        assert_eq!(policy, expected);
    }

    #[test]
    fn selected_pods_are_translated_wherever_they_are() {
        let mut g = gateway("[{ipBlocks: [10.19.0.0/16]}]");
        g.spec.selectors =
            serde_yaml::from_str("[{podSelector: {matchLabels: {app: web}}}]").unwrap();
        let expected: DesiredPolicy = [
            ("0.0.0.0/0", Action::Snat),
            ("::/0", Action::Snat),
            ("10.19.0.0/16", Action::Forward),
        ]
        .into_iter()
        .map(|(net, action)| (net.parse().unwrap(), action))
        .collect();
        assert_eq!(policy_of(&g, &[]).unwrap(), expected);
    }

    #[test]
    fn a_missing_subnet_or_bad_block_is_an_error_that_says_which() {
        let missing = policy_of(&gateway("[{snat: true, subnets: [gone]}]"), &[]).unwrap_err();
        assert!(missing.contains("subnet \"gone\""), "{missing}");
        let bad = policy_of(&gateway("[{snat: true, ipBlocks: [10.16.0.1/16]}]"), &[]).unwrap_err();
        assert!(bad.contains("host bits are set"), "{bad}");
    }

    #[test]
    fn gateway_references_are_namespace_slash_name() {
        assert_eq!(
            "default/gateway1".parse::<GatewayRef>().unwrap(),
            GatewayRef {
                namespace: "default".into(),
                name: "gateway1".into()
            }
        );
        for bad in ["gateway1", "/g", "ns/", "a/b/c"] {
            let error = bad.parse::<GatewayRef>().unwrap_err().to_string();
            assert!(error.contains("NAMESPACE/NAME"), "{bad}: {error}");
        }
    }
}
