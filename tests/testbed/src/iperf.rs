//! iperf3 between two namespaces: the rate the receiving side measured.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use crate::{command::output_of, netns::Netns};

/// An iperf3 server in a namespace, serving one test after another; killed when dropped.
pub struct Iperf3Server {
    child: Child,
    port: u16,
}

impl Iperf3Server {
    /// Start it and wait until it listens.
    pub fn start(ns: &Netns, port: u16) -> Iperf3Server {
        let mut child = ns
            .command("iperf3", &["-s", "--forceflush", "-p", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting iperf3 -s");
        let mut first = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout);
        while !first.contains("listening") {
            first.clear();
            if lines.read_line(&mut first).unwrap_or(0) == 0 {
                let _ = child.kill();
                panic!("iperf3 -s exited before listening");
            }
        }
        // Keep reading (and discarding) its output, so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.lines().map_while(Result::ok).for_each(drop));
        Iperf3Server { child, port }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Run a client in `client` toward `server_ip` for `seconds`, with `extra` arguments (e.g. "-R", or "-u -b
    /// 100M"); the rate the receiving side measured, in bits per second.
    pub fn measure(&self, client: &Netns, server_ip: &str, seconds: u32, extra: &[&str]) -> f64 {
        measure(&client.name, server_ip, self.port, seconds, extra)
    }
}

/// `Iperf3Server::measure` from the namespace named `netns` toward the server at `server_ip:port` (callable from
/// another thread, for a run in the background).
pub fn measure(netns: &str, server_ip: &str, port: u16, seconds: u32, extra: &[&str]) -> f64 {
    let port = port.to_string();
    let seconds = seconds.to_string();
    let mut args = vec![
        "netns", "exec", netns, "iperf3", "-c", server_ip, "-p", &port, "-t", &seconds, "-J",
    ];
    args.extend_from_slice(extra);
    let output = output_of(Command::new("ip").args(&args))
        .unwrap_or_else(|e| panic!("iperf3 {args:?} failed: {e}"));
    let report: serde_json::Value = serde_json::from_str(&output).expect("iperf3 -J prints JSON");
    // What the receiving side got (for UDP: what arrived of what was sent).
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no received rate in iperf3's report: {report}"))
}

impl Drop for Iperf3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
