//! Network namespaces for tests: created with `ip netns add`, deleted on drop (also when the test panics).

use std::{fs::File, os::fd::AsRawFd, process::Command, thread};

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Netns {
        ip(&["netns", "add", name]);
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        // No duplicate address detection on the interfaces to come: until a link's link-local address has passed
        // it (one to two seconds), the kernel sends no neighbour solicitation for packets it forwards or the
        // datapath redirects, and the first IPv6 packets of a test would be lost.
        for scope in ["all", "default"] {
            ns.sysctl(&format!("net.ipv6.conf.{scope}.accept_dad"), "0");
        }
        ns
    }

    /// `ip -n NAME ARGS...`, panicking with ip's message on failure.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full);
    }

    /// A veth pair: `local` in this namespace, `peer` in `other`.
    pub fn add_veth(&self, local: &str, peer: &str, other: &Netns) {
        self.ip(&[
            "link",
            "add",
            local,
            "type",
            "veth",
            "peer",
            "name",
            peer,
            "netns",
            &other.name,
        ]);
    }

    /// `program args` to be run inside the namespace.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name, program])
            .args(args);
        command
    }

    /// Run a command inside the namespace, whatever its outcome.
    pub fn exec(&self, program: &str, args: &[&str]) -> std::process::Output {
        self.command(program, args)
            .output()
            .unwrap_or_else(|e| panic!("running {program} in {}: {e}", self.name))
    }

    /// Run a command inside the namespace that must succeed; its stdout.
    pub fn exec_ok(&self, program: &str, args: &[&str]) -> String {
        crate::command::run(&mut self.command(program, args))
    }

    /// Run `f` on a thread inside this namespace (sockets it opens live there).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.name);
        thread::spawn(move || {
            enter(&path);
            f()
        })
    }

    /// Run `f` inside this namespace and wait for it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().expect("thread in namespace panicked")
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec_ok("sysctl", &["-qw", &format!("{key}={value}")]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Move the calling thread into the namespace at `path`.
pub fn enter(path: &str) {
    let file = File::open(path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    // SAFETY: valid fd; affects the calling thread only.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

pub fn ip(args: &[&str]) {
    crate::command::run(Command::new("ip").args(args));
}
