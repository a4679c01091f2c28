//! `cargo xtask bench failover`: on the lab with real OVN, gateway2 (vpc1, BFD 100 ms x 3, two instances) carries
//! a steady stream (a datagram every 5 ms); the instance carrying it is killed (agent gone, interfaces down), 20
//! times; each time, how long the stream went without an echo. p50 / p99 / max of that gap, written to
//! bench/results/failover.{md,json}.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use serde_json::json;
use veg_testbed::udp::{Echo, Stream};

use crate::{
    lab_demo::{Demo, GATEWAY2, instances_of_gateway2},
    workspace::{build_veg, setup, step},
};

const ROUNDS: usize = 20;
const PORT: u16 = 9000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn run() -> anyhow::Result<()> {
    setup()?;
    let veg = build_veg()?;
    let lab = Demo {
        veg: &veg,
        dir: "/run/veg-bench-failover",
        prefix: "vegbench",
        quiet: true,
    };
    step("failover: the lab, gateway2 on vpc1 with BFD 100 ms x 3 and two instances");
    lab.lab(&["up"])?;
    let result = measure(&lab);
    step("tearing the lab down");
    let down = lab.lab(&["down"]);
    let gaps = result?;
    down?;

    let mut sorted = gaps.clone();
    sorted.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (p50, p99, max) = (
        percentile(&sorted, 50.0),
        percentile(&sorted, 99.0),
        sorted[sorted.len() - 1],
    );
    let table = format!(
        "| failover (BFD 100 ms x 3, {ROUNDS} kills) | p50 | p99 | max |\n|---|---:|---:|---:|\n\
         | traffic gap, ms | {:.0} | {:.0} | {:.0} |\n",
        ms(p50),
        ms(p99),
        ms(max)
    );
    let json = json!({
        "rounds": ROUNDS,
        "gaps_ms": gaps.iter().map(|g| ms(*g).round()).collect::<Vec<_>>(),
        "p50_ms": ms(p50).round(), "p99_ms": ms(p99).round(), "max_ms": ms(max).round(),
    });
    super::publish("failover", &table, Some(&json))
}

fn measure(lab: &Demo) -> anyhow::Result<Vec<Duration>> {
    let server = SocketAddr::from(([172, 17, 0, 1], PORT));
    let echo = Echo::start(&lab.netns("external"), PORT);
    lab.apply(GATEWAY2)?;
    lab.wait_ready("gateway2", 2)?;
    let mut gaps = Vec::with_capacity(ROUNDS);
    for round in 1..=ROUNDS {
        let stream = Stream::start(&lab.netns("vpc1-client1"), server);
        std::thread::sleep(Duration::from_millis(500));
        let carrier = *echo
            .sources()
            .last()
            .context("the stream got no echo before the kill")?;
        let (victim, _) = instances_of_gateway2(lab.dir, carrier)?;
        let killed = Instant::now();
        lab.lab(&["kill", &victim.pod])?;
        std::thread::sleep(Duration::from_millis(1500));
        let gap = stream.longest_gap_after(killed);
        drop(stream);
        ensure!(
            gap < Duration::from_secs(1) + Duration::from_millis(400),
            "round {round}: no traffic for {gap:?}"
        );
        println!(
            "  round {round:2}: killed {} (carrying {carrier}); traffic gap {} ms",
            victim.pod,
            gap.as_millis()
        );
        gaps.push(gap);
        // Both instances back (the kubelet restarts the killed one) before the next round.
        std::thread::sleep(Duration::from_secs(1));
        lab.wait_ready("gateway2", 2)?;
        wait_both_sessions_up(lab)?;
    }
    Ok(gaps)
}

fn wait_both_sessions_up(lab: &Demo) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let out = std::process::Command::new("ovn-nbctl")
            .arg(format!("--db=unix:{}/nb.sock", lab.dir))
            .args([
                "--bare",
                "--columns=status",
                "find",
                "BFD",
                "logical_port=bfd@vpc1",
            ])
            .output()?;
        if String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .eq(["up", "up"])
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the killed instance's BFD session never came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
