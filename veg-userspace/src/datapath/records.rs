//! Translation records as operators read them: one JSON object per line, from the datapath's raw records
//! (veg-common's record.rs) or from the sweep's expired flows, with wall-clock times.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use veg_common::{
    flow::{FlowCounts, FlowEntry, FlowKey, is_closed, is_icmp},
    record::{FlowRecord, end_reason, event},
};

use super::{flow_table::protocol_name, monotonic_now_ns};

/// Who writes the records: the gateway (its resource, NAMESPACE/NAME, or its --name) and the instance (the pod).
#[derive(Debug, Clone)]
pub struct Origin {
    pub gateway: String,
    pub instance: String,
}

/// One record line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TranslationRecord {
    /// "created" or "ended".
    pub event: String,
    /// When it happened, RFC 3339 (UTC).
    pub time: String,
    pub protocol: String,
    pub original_source: SocketAddr,
    pub translated_source: SocketAddr,
    pub remote: SocketAddr,
    pub gateway: String,
    pub instance: String,
    /// Ended records: "timeout", "closed", "evicted" or "readdressed".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Ended records: when the translation was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// Ended records: packets and bytes (IP length) each way, out being from the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets_out: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
}

/// CLOCK_MONOTONIC ns (the datapath's clock) as wall-clock time, RFC 3339.
fn wall_time(monotonic_ns: u64) -> String {
    let ago = monotonic_now_ns().saturating_sub(monotonic_ns);
    let ago = jiff::SignedDuration::from_nanos(ago.min(i64::MAX as u64) as i64);
    let at = jiff::Timestamp::now()
        .checked_sub(ago)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    format!("{at:.3}")
}

fn reason_name(reason: u8) -> &'static str {
    match reason {
        end_reason::TIMEOUT => "timeout",
        end_reason::CLOSED => "closed",
        end_reason::EVICTED => "evicted",
        end_reason::READDRESSED => "readdressed",
        _ => "unknown",
    }
}

impl TranslationRecord {
    /// A record the datapath sent; None for one this build does not know.
    pub fn from_datapath(raw: &FlowRecord, origin: &Origin) -> Option<TranslationRecord> {
        let ended = match raw.event {
            event::CREATED => false,
            event::ENDED => true,
            _ => return None,
        };
        let mut record = TranslationRecord::new(&raw.key, raw, origin, raw.time_ns);
        if ended {
            record.event = "ended".into();
            record.reason = Some(reason_name(raw.reason).into());
            record.started = Some(wall_time(raw.created_ns));
            record.packets_out = Some(raw.packets_out);
            record.bytes_out = Some(raw.bytes_out);
            record.packets_in = Some(raw.packets_in);
            record.bytes_in = Some(raw.bytes_in);
        }
        Some(record)
    }

    /// The ended record of a flow the sweep removes: its outbound half found under `key`, and its counts.
    pub fn expired(
        key: &FlowKey,
        outbound: &FlowEntry,
        counts: &FlowCounts,
        origin: &Origin,
    ) -> TranslationRecord {
        let raw = FlowRecord {
            event: event::ENDED,
            reason: if is_closed(outbound.state) {
                end_reason::CLOSED
            } else {
                end_reason::TIMEOUT
            },
            time_ns: monotonic_now_ns(),
            created_ns: outbound.created_ns,
            key: *key,
            nat_addr: outbound.nat_addr,
            nat_port: outbound.nat_port,
            packets_out: counts.packets_out,
            bytes_out: counts.bytes_out,
            packets_in: counts.packets_in,
            bytes_in: counts.bytes_in,
            ..FlowRecord::default()
        };
        TranslationRecord::from_datapath(&raw, origin).expect("an ended record")
    }

    fn new(key: &FlowKey, raw: &FlowRecord, origin: &Origin, time_ns: u64) -> TranslationRecord {
        let addr = |a: &veg_common::address::Address| -> IpAddr { a.to_ip(key.family) };
        let remote_port = if is_icmp(key.protocol) {
            0
        } else {
            u16::from_be(key.dst_port)
        };
        TranslationRecord {
            event: "created".into(),
            time: wall_time(time_ns),
            protocol: protocol_name(key.protocol).into(),
            original_source: SocketAddr::new(addr(&key.src_addr), u16::from_be(key.src_port)),
            translated_source: SocketAddr::new(addr(&raw.nat_addr), u16::from_be(raw.nat_port)),
            remote: SocketAddr::new(addr(&key.dst_addr), remote_port),
            gateway: origin.gateway.clone(),
            instance: origin.instance.clone(),
            reason: None,
            started: None,
            packets_out: None,
            bytes_out: None,
            packets_in: None,
            bytes_in: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use veg_common::{
        address::Address,
        flow::{DIRECTION_OUTBOUND, PROTO_UDP, STATE_FIN_IN, STATE_FIN_OUT},
    };

    use super::*;

    fn origin() -> Origin {
        Origin {
            gateway: "default/gw1".into(),
            instance: "gw1-0".into(),
        }
    }

    #[test]
    fn a_created_record_names_the_three_endpoints() {
        let raw = FlowRecord {
            event: event::CREATED,
            time_ns: monotonic_now_ns(),
            key: FlowKey {
                src_addr: Address::from_ip("10.0.1.5".parse().unwrap()),
                dst_addr: Address::from_ip("198.51.100.1".parse().unwrap()),
                src_port: 40000u16.to_be(),
                dst_port: 53u16.to_be(),
                protocol: PROTO_UDP,
                family: veg_common::address::FAMILY_IPV4,
                _pad: [0; 2],
            },
            nat_addr: Address::from_ip("172.18.0.10".parse().unwrap()),
            nat_port: 2000u16.to_be(),
            ..FlowRecord::default()
        };
        let record = TranslationRecord::from_datapath(&raw, &origin()).unwrap();
        let line = serde_json::to_string(&record).unwrap();
        assert!(line.starts_with(r#"{"event":"created","time":""#), "{line}");
        assert!(
            line.ends_with(
                r#""protocol":"udp","original_source":"10.0.1.5:40000","translated_source":"172.18.0.10:2000","remote":"198.51.100.1:53","gateway":"default/gw1","instance":"gw1-0"}"#
            ),
            "{line}"
        );
        // Times are the wall clock, to the millisecond.
        let time: jiff::Timestamp = record.time.parse().unwrap();
        assert!((jiff::Timestamp::now() - time).get_seconds().abs() < 5);
    }

    #[test]
    fn a_swept_flow_ends_by_timeout_or_closed_with_its_counts() {
        let key = FlowKey {
            protocol: veg_common::flow::PROTO_TCP,
            family: veg_common::address::FAMILY_IPV4,
            ..FlowKey::default()
        };
        let outbound = FlowEntry {
            direction: DIRECTION_OUTBOUND,
            ..FlowEntry::default()
        };
        let counts = FlowCounts {
            packets_out: 3,
            bytes_out: 180,
            packets_in: 2,
            bytes_in: 120,
        };
        let record = TranslationRecord::expired(&key, &outbound, &counts, &origin());
        assert_eq!(record.event, "ended");
        assert_eq!(record.reason.as_deref(), Some("timeout"));
        assert_eq!(
            (
                record.packets_out,
                record.bytes_out,
                record.packets_in,
                record.bytes_in
            ),
            (Some(3), Some(180), Some(2), Some(120))
        );
        let closed = FlowEntry {
            state: STATE_FIN_OUT | STATE_FIN_IN,
            ..outbound
        };
        let record = TranslationRecord::expired(&key, &closed, &FlowCounts::default(), &origin());
        assert_eq!(record.reason.as_deref(), Some("closed"));
        assert_eq!(record.packets_in, Some(0));
    }
}
