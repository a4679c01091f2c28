//! `veg-loadgen`: the traffic of `cargo xtask bench`. Each subcommand runs for a fixed time and prints one JSON
//! object with what it counted, so the bench can compare modes on numbers taken the same way.

mod crr;
mod rr;
mod udp;

use std::{net::SocketAddr, time::Duration};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "veg-loadgen",
    about = "Traffic generators and sinks for veg's benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send small UDP packets as fast as possible, spread over FLOWS source ports, as Ethernet frames written to
    /// INTERFACE (AF_PACKET + sendmmsg) toward the gateway's MAC address.
    UdpFlood {
        #[command(flatten)]
        path: udp::FramePath,
        #[arg(long, default_value_t = 1)]
        flows: u16,
        #[arg(long, default_value_t = 18)]
        payload: usize,
        #[arg(long)]
        seconds: f64,
    },
    /// Open FLOWS distinct UDP flows with one packet each, as fast as the path takes them (AF_PACKET + sendmmsg),
    /// over DST_PORTS destination ports starting at DST's port; for the flow-table scale test.
    UdpOpenFlows {
        #[command(flatten)]
        path: udp::FramePath,
        #[arg(long)]
        flows: u32,
        #[arg(long, default_value_t = 64)]
        dst_ports: u16,
    },
    /// Accept TCP connections on PORT and answer each request byte with one byte, until killed.
    TcpServer {
        #[arg(long)]
        port: u16,
    },
    /// Short TCP connections (connect, 1-byte request, 1-byte response, close) with THREADS in parallel.
    TcpCrr {
        #[arg(long)]
        dst: SocketAddr,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long)]
        seconds: f64,
    },
    /// Request/response round trips (1 byte each way) on one TCP connection; latency percentiles.
    TcpRr {
        #[arg(long)]
        dst: SocketAddr,
        #[arg(long)]
        seconds: f64,
    },
}

fn main() -> anyhow::Result<()> {
    let secs = |s: f64| Duration::from_secs_f64(s);
    let report = match Cli::parse().command {
        Command::UdpFlood {
            path,
            flows,
            payload,
            seconds,
        } => udp::flood(&path, flows, payload, secs(seconds))?,
        Command::UdpOpenFlows {
            path,
            flows,
            dst_ports,
        } => udp::open_flows(&path, flows, dst_ports)?,
        Command::TcpServer { port } => crr::serve(port)?,
        Command::TcpCrr {
            dst,
            threads,
            seconds,
        } => crr::run(dst, threads, secs(seconds))?,
        Command::TcpRr { dst, seconds } => rr::run(dst, secs(seconds))?,
    };
    println!("{report}");
    Ok(())
}
