//! Request/response latency on one TCP connection.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

pub fn run(dst: SocketAddr, duration: Duration) -> anyhow::Result<Value> {
    let mut stream = TcpStream::connect_timeout(&dst, Duration::from_secs(2))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut samples = Vec::new();
    let start = Instant::now();
    let mut byte = [0u8; 1];
    while start.elapsed() < duration {
        let t = Instant::now();
        stream.write_all(b"x")?;
        stream.read_exact(&mut byte)?;
        samples.push(t.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    let pct = |p: f64| {
        samples
            .get(((samples.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    Ok(json!({ "round_trips": samples.len(), "p50_us": pct(0.50), "p99_us": pct(0.99) }))
}
