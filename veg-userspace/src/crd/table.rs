//! `kubectl get veg [-o wide]` as kubectl prints it, from the CRD's own printer columns: NAME, then each column's
//! JSONPath evaluated on the object (lists as compact JSON, as kubectl shows them), AGE as kubectl's human
//! duration, columns padded to their widest cell plus three spaces. The lab prints its gateways with it, and a
//! test holds the generated columns to the contract's example output.

use k8s_openapi::jiff::Timestamp;
use kube::CustomResourceExt;
use serde_json::Value;

use super::gateway::VpcEgressGateway;

/// kubectl's duration.HumanDuration.
pub fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    match () {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 && s % 60 == 0 => format!("{m}m"),
        _ if m < 10 => format!("{m}m{}s", s % 60),
        _ if m < 180 => format!("{m}m"),
        _ if h < 8 && m % 60 == 0 => format!("{h}h"),
        _ if h < 8 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if h < 192 && h % 24 == 0 => format!("{d}d"),
        _ if h < 192 => format!("{d}d{}h", h % 24),
        _ if d < 365 * 2 => format!("{d}d"),
        _ => format!("{}y{}d", d / 365, d % 365),
    }
}

/// A value at a dotted JSONPath such as ".status.workload.nodes".
fn at<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    path.trim_start_matches('.')
        .split('.')
        .try_fold(object, |v, key| v.get(key))
}

fn cell(value: Option<&Value>, type_: &str, now: Timestamp) -> String {
    match (value, type_) {
        (Some(Value::String(t)), "date") => t
            .parse::<Timestamp>()
            .map(|then| human_duration(now.as_second() - then.as_second()))
            .unwrap_or_else(|_| "<invalid>".into()),
        (Some(Value::String(s)), _) => s.clone(),
        (Some(Value::Null) | None, _) => String::new(),
        (Some(other), _) => other.to_string(),
    }
}

/// The table of `gateways`, with the -o wide columns when `wide`.
pub fn render(gateways: &[VpcEgressGateway], wide: bool, now: Timestamp) -> String {
    let crd = serde_json::to_value(VpcEgressGateway::crd()).expect("the CRD serializes");
    let columns: Vec<Value> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| wide || c["priority"].as_i64().unwrap_or(0) == 0)
        .collect();
    let mut rows = vec![
        std::iter::once("NAME".to_owned())
            .chain(
                columns
                    .iter()
                    .map(|c| c["name"].as_str().unwrap_or("").to_owned()),
            )
            .collect::<Vec<_>>(),
    ];
    for gateway in gateways {
        let object = serde_json::to_value(gateway).expect("a gateway serializes");
        let mut row = vec![object["metadata"]["name"].as_str().unwrap_or("").to_owned()];
        for column in &columns {
            let path = column["jsonPath"].as_str().unwrap_or("");
            let type_ = column["type"].as_str().unwrap_or("string");
            row.push(cell(at(&object, path), type_, now));
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let last = row.len() - 1;
        for (i, text) in row.iter().enumerate() {
            out.push_str(text);
            if i < last {
                out.push_str(&" ".repeat(widths[i] - text.chars().count() + 3));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(yaml: &str) -> VpcEgressGateway {
        serde_yaml::from_str(yaml).unwrap()
    }

    const NOW: i64 = 1_800_000_000;

    fn created(seconds_ago: i64) -> String {
        Timestamp::from_second(NOW - seconds_ago)
            .unwrap()
            .to_string()
    }

    /// The example output of Kube-OVN's VPC Egress Gateway guide, character for character.
    #[test]
    fn the_columns_are_the_contracts() {
        let now = Timestamp::from_second(NOW).unwrap();
        let gateway1 = |age: i64| {
            gateway(&format!(
                "metadata: {{name: gateway1, namespace: default, creationTimestamp: '{}'}}\n\
                 spec: {{vpc: ovn-cluster, replicas: 1, externalSubnet: macvlan1, policies: [{{snat: true, subnets: [ovn-default]}}]}}\n\
                 status: {{ready: true, phase: Completed, internalIPs: [10.16.0.12], externalIPs: [172.17.0.11], \
                 workload: {{apiVersion: apps/v1, kind: Deployment, name: gateway1, nodes: [kube-ovn-worker]}}}}\n",
                created(age)
            ))
        };
        assert_eq!(
            render(&[gateway1(13)], false, now),
            "NAME       VPC           REPLICAS   BFD ENABLED   EXTERNAL SUBNET   PHASE       READY   AGE\n\
             gateway1   ovn-cluster   1          false         macvlan1          Completed   true    13s\n"
        );
        assert_eq!(
            render(&[gateway1(82)], true, now),
            "NAME       VPC           REPLICAS   BFD ENABLED   EXTERNAL SUBNET   PHASE       READY   INTERNAL IPS     EXTERNAL IPS      WORKING NODES         AGE\n\
             gateway1   ovn-cluster   1          false         macvlan1          Completed   true    [\"10.16.0.12\"]   [\"172.17.0.11\"]   [\"kube-ovn-worker\"]   82s\n"
        );
        let gateway2 = gateway(&format!(
            "metadata: {{name: gateway2, namespace: default, creationTimestamp: '{}'}}\n\
             spec: {{vpc: vpc1, replicas: 2, externalSubnet: macvlan, bfd: {{enabled: true}}, policies: [{{snat: true, ipBlocks: [192.168.0.0/24]}}]}}\n\
             status: {{ready: true, phase: Completed, internalIPs: [192.168.0.2, 192.168.0.3], externalIPs: [172.17.0.13, 172.17.0.14], \
             workload: {{apiVersion: apps/v1, kind: Deployment, name: gateway2, nodes: [kube-ovn-worker, kube-ovn-worker2]}}}}\n",
            created(58)
        ));
        assert_eq!(
            render(&[gateway2], true, now),
            "NAME       VPC    REPLICAS   BFD ENABLED   EXTERNAL SUBNET   PHASE       READY   INTERNAL IPS                    EXTERNAL IPS                    WORKING NODES                            AGE\n\
             gateway2   vpc1   2          true          macvlan           Completed   true    [\"192.168.0.2\",\"192.168.0.3\"]   [\"172.17.0.13\",\"172.17.0.14\"]   [\"kube-ovn-worker\",\"kube-ovn-worker2\"]   58s\n"
        );
    }

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        let cases = [
            (13, "13s"),
            (119, "119s"),
            (120, "2m"),
            (150, "2m30s"),
            (39 * 60, "39m"),
            (3 * 3600 + 5 * 60, "3h5m"),
            (30 * 3600, "30h"),
            (3 * 86_400 + 7200, "3d2h"),
            (40 * 86_400, "40d"),
            (800 * 86_400, "2y70d"),
        ];
        for (seconds, text) in cases {
            assert_eq!(human_duration(seconds), text, "{seconds}");
        }
    }
}
