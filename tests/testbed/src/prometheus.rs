//! A real Prometheus server (Debian's) in a test's namespace, scraping one target every second, and its HTTP API.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::netns::Netns;

/// Where Prometheus listens, inside the namespace it runs in.
pub const PROMETHEUS: &str = "127.0.0.1:9090";

/// Prometheus in a namespace. Stopped (and its data removed) on drop.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
}

impl Prometheus {
    /// Scraping `target` (ADDRESS:PORT in `ns`) as job `veg`, and evaluating the rule file `rules` (its text), if
    /// given, every second.
    pub fn start(ns: &Netns, target: &str, rules: Option<&str>) -> Prometheus {
        let dir = std::env::temp_dir().join(crate::unique("veg-prometheus-"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        let rule_files = rules.map_or_else(String::new, |rules| {
            let path = dir.join("veg.rules.yaml");
            std::fs::write(&path, rules).unwrap();
            format!("rule_files: ['{}']\n", path.display())
        });
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n{rule_files}\
                 scrape_configs: [{{job_name: veg, static_configs: [{{targets: ['{target}']}}]}}]\n"
            ),
        )
        .unwrap();
        let child = ns
            .command(
                "prometheus",
                &[
                    &format!("--config.file={}", config.display()),
                    &format!("--storage.tsdb.path={}", dir.join("data").display()),
                    &format!("--web.listen-address={PROMETHEUS}"),
                ],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus (scripts/setup installs it)");
        Prometheus { child, dir }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The body of `GET path` from `address`, from inside `ns`.
pub fn http_get(ns: &Netns, address: &'static str, path: String) -> Option<String> {
    let response = ns.run(move || {
        let mut stream = TcpStream::connect(address).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: veg\r\n\r\n").ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        Some(text)
    })?;
    Some(response.split_once("\r\n\r\n")?.1.to_owned())
}

/// `query` (PromQL) through Prometheus' HTTP API, from inside `ns`: the value of its single result, if any.
pub fn query(ns: &Netns, query: &str) -> Option<f64> {
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = http_get(ns, PROMETHEUS, format!("/api/v1/query?query={encoded}"))?;
    let body: Value = serde_json::from_str(&body).ok()?;
    body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// The query's value once it equals `expected`, or what it was after 30 s.
pub fn eventually(ns: &Netns, promql: &str, expected: f64) -> Option<f64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let value = query(ns, promql);
        if value == Some(expected) || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Assert that the query comes to equal `expected` within 30 s (`eventually`).
pub fn assert_eventually(ns: &Netns, promql: &str, expected: f64) {
    assert_eq!(eventually(ns, promql, expected), Some(expected), "{promql}");
}

/// The metric names an exposition (a `/metrics` body) declares.
pub fn exported_names(exposition: &str) -> Vec<String> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}
