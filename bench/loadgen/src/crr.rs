//! New TCP connections per second: connect, one-byte request, one-byte response, close, over and over.
//!
//! The client closes with a reset (SO_LINGER 0): no side keeps TIME_WAIT, so neither the client's ephemeral ports
//! nor the server's TIME_WAIT table fill up, and one run cannot slow down the next.

/// The request byte of a short connection.
const REQUEST: u8 = b'c';

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

pub fn serve(port: u16) -> anyhow::Result<Value> {
    // "::" takes IPv4 too (as IPv4-mapped addresses): one server for both families' scenarios.
    let listener = TcpListener::bind(("::", port))?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        std::thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let mut byte = [0u8; 1];
            while let Ok(1) = stream.read(&mut byte) {
                if stream.write_all(&byte).is_err() {
                    break;
                }
            }
        });
    }
    Ok(json!({}))
}

pub fn run(dst: SocketAddr, threads: usize, duration: Duration) -> anyhow::Result<Value> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (done, failed, stop) = (done.clone(), failed.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let ok = (|| -> std::io::Result<()> {
                        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(1))?;
                        s.set_nodelay(true)?;
                        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
                        s.set_read_timeout(Some(Duration::from_secs(1)))?;
                        s.write_all(&[REQUEST])?;
                        let mut b = [0u8; 1];
                        s.read_exact(&mut b)?;
                        Ok(())
                    })();
                    if ok.is_ok() { &done } else { &failed }.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(
        json!({ "connections": done.load(Ordering::Relaxed), "failed": failed.load(Ordering::Relaxed), "seconds": seconds }),
    )
}
