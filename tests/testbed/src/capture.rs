//! tcpdump on the far side: what really crossed a link, whatever the gateway believes it did.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// A running `tcpdump -n -S` (absolute TCP sequence numbers) on one interface of a namespace, collecting one line
/// per packet matching `filter`. Stops on drop.
pub struct Capture {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Capture {
    /// Start capturing and return once tcpdump listens.
    pub fn start(ns: &Netns, interface: &str, filter: &str) -> Capture {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "tcpdump", "-n", "-S", "-l"])
            .args(["--immediate-mode", "-i", interface, filter])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tcpdump (`cargo xtask setup` installs it)");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let collected = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !line.trim().is_empty() {
                    collected.lock().unwrap().push(line);
                }
            }
        });
        // tcpdump says "listening on IF" on stderr once its filter is in place.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = ready_tx.send(());
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("tcpdump did not start listening");
        Capture { child, lines }
    }

    /// The packets seen so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Stop and return the packets seen, after giving the last ones `settle` to arrive.
    pub fn stop(mut self, settle: Duration) -> Vec<String> {
        let deadline = Instant::now() + settle;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: signalling our own child; SIGINT makes tcpdump flush and exit.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(50));
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
