//! Bandwidth limits per instance (the gateway's spec.bandwidth, `--egress-rate` and `--ingress-rate`): the rates
//! as Kube-OVN writes them, and the shaper that holds each direction to its rate.
//!
//! The shaper is the kernel's HTB on the interface the direction leaves by: one class at the rate over a byte
//! FIFO, with no default class, so that only the packets the programs steer into the class (by skb->priority:
//! shaping.rs in veg-ebpf), the forwarded ones, are limited, while the instance's own (BFD toward OVN, ARP and
//! neighbour discovery) pass by it. A shaper queues what exceeds the rate and drops only beyond the queue: TCP
//! through it keeps to the rate. A policer (dropping at once) held TCP to a quarter of it in our measurements, and
//! earliest-departure-time pacing needs the fq qdisc, which kernels built without CONFIG_NET_SCH_FQ lack.

use std::fmt;

use anyhow::{Context as _, bail};

use super::rtnetlink::{NLA_F_NESTED, NLM_F_CREATE, NLM_F_REPLACE, attribute, message, request};

/// A bandwidth limit, in bits per second (at least 1 Mbit/s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitRate(u64);

const MBIT: u64 = 1_000_000;

impl BitRate {
    pub fn bits_per_second(self) -> u64 {
        self.0
    }

    pub fn bytes_per_second(self) -> u64 {
        self.0 / 8
    }

    /// A rate of `mbit` Mbit/s, as an integer in the resource gives it; None for 0 (no limit).
    pub fn from_mbit(mbit: i64) -> anyhow::Result<Option<BitRate>> {
        if mbit < 0 {
            bail!("invalid bandwidth {mbit}: a rate is not negative (0 or absent: no limit)");
        }
        Ok((mbit > 0).then(|| BitRate((mbit as u64).saturating_mul(MBIT))))
    }

    /// Parse a rate as Kube-OVN's bandwidth fields take it: an integer in Mbit/s ("100"), or a quantity of bits per
    /// second with unit M, Mi, G or Gi ("100M", "1.5G", "512Mi"). None for a rate of 0 (no limit); a rate under
    /// 1 Mbit/s is raised to 1 Mbit/s, as upstream does.
    pub fn parse(text: &str) -> anyhow::Result<Option<BitRate>> {
        let advice = "expected Mbit/s as an integer (\"100\") or bits per second with unit M, Mi, G or Gi \
                      (\"100M\", \"1.5G\", \"512Mi\")";
        let text = text.trim();
        if let Ok(mbit) = text.parse::<i64>() {
            return BitRate::from_mbit(mbit).context(advice);
        }
        let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
            Some(at) => text.split_at(at),
            None => bail!("invalid bandwidth {text:?}: {advice}"),
        };
        let multiplier: u64 = match unit {
            "M" => MBIT,
            "Mi" => 1 << 20,
            "G" => 1_000 * MBIT,
            "Gi" => 1 << 30,
            _ => bail!("invalid bandwidth {text:?}: unknown unit {unit:?}; {advice}"),
        };
        let digits_and_one_dot = !number.is_empty()
            && number != "."
            && number.chars().all(|c| c.is_ascii_digit() || c == '.')
            && number.matches('.').count() <= 1;
        let value: f64 = match number.parse() {
            Ok(value) if digits_and_one_dot => value,
            _ => bail!("invalid bandwidth {text:?}: {advice}"),
        };
        let bits = (value * multiplier as f64).ceil();
        if bits >= u64::MAX as f64 {
            bail!("invalid bandwidth {text:?}: too large");
        }
        let bits = bits as u64;
        Ok((bits > 0).then(|| BitRate(bits.max(MBIT))))
    }
}

impl fmt::Display for BitRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1_000 * MBIT) {
            write!(f, "{} Gbit/s", self.0 / (1_000 * MBIT))
        } else if self.0.is_multiple_of(MBIT) {
            write!(f, "{} Mbit/s", self.0 / MBIT)
        } else {
            write!(f, "{:.3} Mbit/s", self.0 as f64 / MBIT as f64)
        }
    }
}

const RTM_NEWQDISC: u16 = 36;
const RTM_DELQDISC: u16 = 37;
const RTM_NEWTCLASS: u16 = 40;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_DIRECT_QLEN: u16 = 5;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
const TC_H_ROOT: u32 = 0xFFFF_FFFF;
/// TC_LINKLAYER_ETHERNET: the kernel computes transmission times itself (no rate table needed).
const LINKLAYER_ETHERNET: u8 = 1;
/// The shaper's handles: the HTB root qdisc 1:, its one class 1:1, the class's byte FIFO 2:.
const ROOT_HANDLE: u32 = 0x0001_0000;
/// The class the programs steer limited packets into (skb->priority); packets with any other priority (the
/// instance's own: BFD, ARP, neighbour discovery) bypass the shaper through HTB's direct queue.
pub const SHAPED_CLASS: u32 = 0x0001_0001;
const LEAF_HANDLE: u32 = 0x0002_0000;
/// The direct queue's length, for the instance's own packets, which are few.
const DIRECT_QUEUE_PACKETS: u32 = 1000;
/// psched ticks are 64 ns (PSCHED_SHIFT).
const PSCHED_SHIFT: u32 = 6;

impl BitRate {
    /// How many bytes may wait in the limit's queue before it drops: 20 ms at the rate, but at least four of
    /// the largest (64 KiB, GSO) packets a pod's veth hands over, so that one TCP burst fits.
    pub fn queue_bytes(self) -> u32 {
        (self.bytes_per_second() / 50).clamp(4 * 65_536, u64::from(u32::MAX)) as u32
    }

    /// How many bytes the class may send at once after a pause: 1 ms at the rate, at least one 64 KiB packet.
    fn burst_bytes(self) -> u64 {
        (self.bytes_per_second() / 1_000).max(65_536)
    }
}

/// struct tcmsg: family, padding, ifindex, handle, parent, info.
fn tcmsg(ifindex: u32, handle: u32, parent: u32) -> Vec<u8> {
    let mut tcmsg = vec![0u8; 4];
    tcmsg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    tcmsg.extend_from_slice(&handle.to_ne_bytes());
    tcmsg.extend_from_slice(&parent.to_ne_bytes());
    tcmsg.extend_from_slice(&0u32.to_ne_bytes());
    tcmsg
}

/// struct tc_ratespec at `bytes_per_second` (all ones when it needs the 64-bit attribute).
fn ratespec(bytes_per_second: u64) -> Vec<u8> {
    let mut spec = vec![0u8, LINKLAYER_ETHERNET];
    spec.extend_from_slice(&[0; 6]); // overhead, cell_align, mpu
    spec.extend_from_slice(&(bytes_per_second.min(u64::from(u32::MAX)) as u32).to_ne_bytes());
    spec
}

/// The three requests that shape what leaves `ifindex` at `rate`: an HTB root whose unclassified packets go
/// straight through (no default class), one class at the rate, and a byte FIFO under it.
fn shaper_requests(ifindex: u32, rate: BitRate) -> [Vec<u8>; 3] {
    // struct tc_htb_glob: version 3, rate2quantum 10, no default class, debug, direct_pkts.
    let mut glob = Vec::new();
    for field in [3u32, 10, 0, 0, 0] {
        glob.extend_from_slice(&field.to_ne_bytes());
    }
    let mut root_options = attribute(TCA_HTB_INIT, &glob);
    root_options.extend(attribute(
        TCA_HTB_DIRECT_QLEN,
        &DIRECT_QUEUE_PACKETS.to_ne_bytes(),
    ));
    let mut root = attribute(TCA_KIND, b"htb\0");
    root.extend(attribute(TCA_OPTIONS | NLA_F_NESTED, &root_options));

    let bytes_per_second = rate.bytes_per_second();
    let buffer_ticks =
        ((rate.burst_bytes() * 1_000_000_000 / bytes_per_second) >> PSCHED_SHIFT) as u32;
    // struct tc_htb_opt: rate, ceil (the same: the class never borrows), buffer, cbuffer, quantum (HTB derives
    // it), level, prio.
    let mut parms = ratespec(bytes_per_second);
    parms.extend(ratespec(bytes_per_second));
    for field in [buffer_ticks, buffer_ticks, 0, 0, 0] {
        parms.extend_from_slice(&field.to_ne_bytes());
    }
    let mut class_options = attribute(TCA_HTB_PARMS, &parms);
    if bytes_per_second > u64::from(u32::MAX) {
        class_options.extend(attribute(TCA_HTB_RATE64, &bytes_per_second.to_ne_bytes()));
        class_options.extend(attribute(TCA_HTB_CEIL64, &bytes_per_second.to_ne_bytes()));
    }
    let mut class = attribute(TCA_KIND, b"htb\0");
    class.extend(attribute(TCA_OPTIONS | NLA_F_NESTED, &class_options));

    // struct tc_fifo_qopt: the limit, in bytes for bfifo.
    let mut leaf = attribute(TCA_KIND, b"bfifo\0");
    leaf.extend(attribute(TCA_OPTIONS, &rate.queue_bytes().to_ne_bytes()));

    let create = NLM_F_CREATE | NLM_F_REPLACE;
    [
        message(
            RTM_NEWQDISC,
            create,
            &tcmsg(ifindex, ROOT_HANDLE, TC_H_ROOT),
            &root,
        ),
        message(
            RTM_NEWTCLASS,
            create,
            &tcmsg(ifindex, SHAPED_CLASS, ROOT_HANDLE),
            &class,
        ),
        message(
            RTM_NEWQDISC,
            create,
            &tcmsg(ifindex, LEAF_HANDLE, SHAPED_CLASS),
            &leaf,
        ),
    ]
}

/// The interfaces the agent shapes for the bandwidth limits (index and name). Dropping it gives them their
/// default qdisc back, so that nothing of the limits stays behind the agent.
pub struct Shapers(Vec<(u32, String)>);

impl Shapers {
    /// Shape what leaves each interface at its rate. Only packets the programs steer into the shaper's class
    /// (forwarded ones) are limited.
    pub fn install(interfaces: Vec<(u32, String, BitRate)>) -> anyhow::Result<Shapers> {
        let mut installed = Shapers(Vec::new());
        for (ifindex, name, rate) in interfaces {
            // Removed on drop even when only part of it went in.
            installed.0.push((ifindex, name.clone()));
            for request_bytes in shaper_requests(ifindex, rate) {
                request(&request_bytes).with_context(|| {
                    format!(
                        "shaping {name} to {rate} for the bandwidth limit (needs CAP_NET_ADMIN and the kernel's \
                         htb and bfifo qdiscs)"
                    )
                })?;
            }
            tracing::info!(
                interface = %name,
                %rate,
                queue_bytes = rate.queue_bytes(),
                "bandwidth limit shaping the interface"
            );
        }
        Ok(installed)
    }
}

impl Drop for Shapers {
    fn drop(&mut self) {
        for (ifindex, name) in self.0.drain(..) {
            let remove = message(RTM_DELQDISC, 0, &tcmsg(ifindex, 0, TC_H_ROOT), &[]);
            match request(&remove) {
                Ok(()) => {}
                // Gone already, with its interface or by someone's hand.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV)) => {}
                Err(e) => tracing::warn!(interface = %name, "removing the bandwidth shaper: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(text: &str) -> Option<u64> {
        BitRate::parse(text).unwrap().map(BitRate::bits_per_second)
    }

    #[test]
    fn rates_read_as_kube_ovn_writes_them() {
        assert_eq!(rate("100"), Some(100_000_000));
        assert_eq!(rate("100M"), Some(100_000_000));
        assert_eq!(rate("1.5G"), Some(1_500_000_000));
        assert_eq!(rate(".5G"), Some(500_000_000));
        assert_eq!(rate("512Mi"), Some(512 << 20));
        assert_eq!(rate("1Gi"), Some(1 << 30));
        assert_eq!(rate("0"), None, "0 is no limit");
        assert_eq!(
            rate("0.1M"),
            Some(1_000_000),
            "under 1 Mbit/s rounds up to 1"
        );
        assert_eq!(
            BitRate::from_mbit(20).unwrap().unwrap().bytes_per_second(),
            2_500_000
        );
    }

    #[test]
    fn bad_rates_say_what_is_expected() {
        for bad in ["-1", "100K", "1.2.3M", "M", ".M", "1e3M", "fast", "-5M", ""] {
            let err = BitRate::parse(bad).unwrap_err();
            assert!(
                format!("{err:#}").contains("Mbit/s as an integer"),
                "{bad:?}: {err:#}"
            );
        }
    }

    #[test]
    fn the_queue_holds_20_ms_and_at_least_four_large_packets() {
        let queue = |mbit| BitRate::from_mbit(mbit).unwrap().unwrap().queue_bytes();
        assert_eq!(queue(10_000), 25_000_000);
        assert_eq!(queue(10), 4 * 65_536);
    }

    #[test]
    fn the_shaper_is_a_root_htb_a_class_and_its_fifo() {
        let rate = BitRate::from_mbit(40).unwrap().unwrap();
        let [root, class, leaf] = shaper_requests(7, rate);
        let field = |m: &[u8], at: usize| u32::from_ne_bytes(m[at..at + 4].try_into().unwrap());
        // type, then tcmsg's ifindex, handle, parent
        assert_eq!(u16::from_ne_bytes([root[4], root[5]]), RTM_NEWQDISC);
        assert_eq!(
            (field(&root, 20), field(&root, 24), field(&root, 28)),
            (7, ROOT_HANDLE, TC_H_ROOT)
        );
        assert_eq!(&root[40..44], b"htb\0");
        assert_eq!(u16::from_ne_bytes([class[4], class[5]]), RTM_NEWTCLASS);
        assert_eq!(
            (field(&class, 24), field(&class, 28)),
            (SHAPED_CLASS, ROOT_HANDLE)
        );
        // TCA_OPTIONS { TCA_HTB_PARMS { rate { .., rate } ..} }: 5,000,000 bytes a second.
        assert_eq!(field(&class, 44 + 4 + 4 + 8), 5_000_000);
        assert_eq!(
            (field(&leaf, 24), field(&leaf, 28)),
            (LEAF_HANDLE, SHAPED_CLASS)
        );
        assert_eq!(&leaf[40..46], b"bfifo\0");
    }
}
