//! A real OVN Northbound database (Debian's ovsdb-server with OVN's schema) in a temporary directory, listening on
//! a unix socket and a TCP port on loopback; stopped and removed on drop.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use crate::unique;

pub const NB_SCHEMA: &str = "/usr/share/ovn/ovn-nb.ovsschema";

/// The tables where a gateway's rows live (tagged external_ids:vpc-egress-gateway=<namespace>/<name>).
pub const GATEWAY_TABLES: [&str; 5] = [
    "Address_Set",
    "Port_Group",
    "BFD",
    "Logical_Router_Static_Route",
    "Logical_Router_Policy",
];

/// Select `columns` of every row of `table` in the Northbound database at `db` (unix:PATH), with ovsdb-client:
/// for columns ovn-nbctl does not know or show (bfd_sessions on 23.03, _version).
pub fn select(db: &str, table: &str, columns: &[&str]) -> Vec<serde_json::Value> {
    let query = serde_json::json!(["OVN_Northbound",
        { "op": "select", "table": table, "where": [], "columns": columns }]);
    let out = run("ovsdb-client", &["transact", db, &query.to_string()]);
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    reply[0]["rows"].as_array().cloned().unwrap_or_default()
}

pub struct NbServer {
    dir: PathBuf,
    /// `unix:PATH`, as ovn-nbctl --db takes it.
    pub unix: String,
    /// `tcp:127.0.0.1:PORT`.
    pub tcp: String,
}

fn run(program: &str, args: &[&str]) -> String {
    crate::command::run(Command::new(program).args(args))
}

impl NbServer {
    pub fn start() -> NbServer {
        NbServer::start_with_schema(NB_SCHEMA)
    }

    /// A server whose Northbound schema is Debian's (23.03) plus Logical_Router_Policy.bfd_sessions, as OVN 23.09
    /// has it: to exercise what veg does on newer servers.
    pub fn start_with_bfd_sessions() -> NbServer {
        let mut schema: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(NB_SCHEMA).unwrap()).unwrap();
        schema["tables"]["Logical_Router_Policy"]["columns"]["bfd_sessions"] = serde_json::json!({
            "type": { "key": { "type": "uuid", "refTable": "BFD", "refType": "weak" }, "min": 0, "max": "unlimited" }
        });
        let path = std::env::temp_dir().join(unique("veg-nb-schema-"));
        std::fs::write(&path, schema.to_string()).unwrap();
        let server = NbServer::start_with_schema(path.to_str().unwrap());
        let _ = std::fs::remove_file(&path);
        server
    }

    /// A server on a database created from `schema` (a file path).
    pub fn start_with_schema(schema: &str) -> NbServer {
        let dir = std::env::temp_dir().join(unique("veg-nb-"));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.to_str().unwrap().to_owned();
        run("ovsdb-tool", &["create", &format!("{d}/nb.db"), schema]);
        let mut server = NbServer {
            dir,
            unix: format!("unix:{d}/nb.sock"),
            tcp: String::new(),
        };
        server.launch();
        server.tcp = format!("tcp:127.0.0.1:{}", server.tcp_port());
        server
    }

    fn launch(&self) {
        let d = self.dir.to_str().unwrap();
        // A restart must find the port it logs anew, not the old one.
        let _ = std::fs::remove_file(self.dir.join("nb.log"));
        run(
            "ovsdb-server",
            &[
                &format!("{d}/nb.db"),
                &format!("--remote=punix:{d}/nb.sock"),
                "--remote=ptcp:0:127.0.0.1",
                &format!("--pidfile={d}/nb.pid"),
                &format!("--unixctl={d}/nb.ctl"),
                &format!("--log-file={d}/nb.log"),
                "--detach",
                "--no-chdir",
                "-vconsole:off",
            ],
        );
    }

    /// The TCP port ovsdb-server chose (it logs "listening on port N").
    fn tcp_port(&self) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = std::fs::read_to_string(self.dir.join("nb.log")).unwrap_or_default();
            if let Some(port) = log
                .lines()
                .rev()
                .find_map(|l| l.split("listening on port ").nth(1)?.trim().parse().ok())
            {
                return port;
            }
            assert!(
                Instant::now() < deadline,
                "ovsdb-server did not report its TCP port:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Select `columns` of every row of `table` with ovsdb-client (for columns ovn-nbctl does not know).
    pub fn select(&self, table: &str, columns: &[&str]) -> Vec<serde_json::Value> {
        select(&self.unix, table, columns)
    }

    /// `ovn-nbctl --db=unix:... ARGS`: an independent reader of what the database holds.
    pub fn nbctl(&self, args: &[&str]) -> String {
        run(
            "ovn-nbctl",
            &[&[format!("--db={}", self.unix).as_str()][..], args].concat(),
        )
    }

    fn pid(&self) -> Option<i32> {
        pid_in(&self.dir, "nb")
    }

    /// Start again on the same database file (after `stop`).
    pub fn restart(&mut self) {
        self.launch();
        self.tcp = format!("tcp:127.0.0.1:{}", self.tcp_port());
    }

    /// Run a transaction on the database file while the server is stopped (`ovsdb-tool transact`).
    pub fn transact_offline(&self, transaction: &str) -> String {
        run(
            "ovsdb-tool",
            &[
                "transact",
                self.dir.join("nb.db").to_str().unwrap(),
                transaction,
            ],
        )
    }

    /// Kill the server and wait until it is gone.
    pub fn stop(&self) {
        kill(self.pid());
    }
}

fn pid_in(dir: &std::path::Path, daemon: &str) -> Option<i32> {
    std::fs::read_to_string(dir.join(format!("{daemon}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// SIGKILL and wait until the process is gone or a zombie (PID 1 reaps slowly here): either way it serves nothing.
fn kill(pid: Option<i32>) {
    let Some(pid) = pid else { return };
    // SAFETY: signalling a process we started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
    {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The Northbound and Southbound databases with ovn-northd between them (no chassis): enough for northd to turn
/// NB rows into SB rows and copy BFD status back.
pub struct OvnCentral {
    pub nb: NbServer,
    /// `unix:PATH` of the Southbound database.
    pub sb: String,
}

impl OvnCentral {
    pub fn start() -> OvnCentral {
        let nb = NbServer::start();
        let d = nb.dir.to_str().unwrap().to_owned();
        run(
            "ovsdb-tool",
            &[
                "create",
                &format!("{d}/sb.db"),
                "/usr/share/ovn/ovn-sb.ovsschema",
            ],
        );
        run(
            "ovsdb-server",
            &[
                &format!("{d}/sb.db"),
                &format!("--remote=punix:{d}/sb.sock"),
                &format!("--pidfile={d}/sb.pid"),
                &format!("--unixctl={d}/sb.ctl"),
                &format!("--log-file={d}/sb.log"),
                "--detach",
                "--no-chdir",
                "-vconsole:off",
            ],
        );
        run(
            "ovn-northd",
            &[
                &format!("--ovnnb-db={}", nb.unix),
                &format!("--ovnsb-db=unix:{d}/sb.sock"),
                &format!("--pidfile={d}/northd.pid"),
                &format!("--unixctl={d}/northd.ctl"),
                &format!("--log-file={d}/northd.log"),
                "--detach",
                "--no-chdir",
                "-vconsole:off",
            ],
        );
        OvnCentral {
            sb: format!("unix:{d}/sb.sock"),
            nb,
        }
    }

    /// `ovn-sbctl --db=unix:... ARGS`.
    pub fn sbctl(&self, args: &[&str]) -> String {
        run(
            "ovn-sbctl",
            &[&[format!("--db={}", self.sb).as_str()][..], args].concat(),
        )
    }
}

impl Drop for OvnCentral {
    fn drop(&mut self) {
        kill(pid_in(&self.nb.dir, "northd"));
        kill(pid_in(&self.nb.dir, "sb"));
    }
}

impl Drop for NbServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
