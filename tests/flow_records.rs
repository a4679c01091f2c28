//! Translation records end to end: `veg gateway --flow-records FILE` in a namespace topology, traffic whose
//! counts the test knows, flows aged in the pinned table so that the agent's sweep ends them, and the records
//! checked against what the server saw: one created and one ended record per translation, with the translated
//! source the server observed, the packets and bytes that went each way, and why it ended. `veg flows --watch`
//! shows the same records live.
//!
//! Run serially (`--test-threads=1`), as the other traffic suites.

use std::{
    collections::HashMap as StdHashMap,
    io::{BufRead, BufReader},
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use serde_json::Value;
use veg_common::flow::{FlowCounts, FlowEntry, FlowKey};
use veg_testbed::{
    servers::{tcp_echo, tcp_round_trip, udp_echo, udp_round_trip},
    skip_unless_root,
    topology::{GATEWAY_EXTERNAL_IP, Gateway, Topology, server},
};
use veg_userspace::datapath::pins;

/// New flows of the burst: their records (about 1.3 MB) fill the 1 MiB file once, so it rotates once.
const BURST: u16 = 2000;
const BURST_FIRST_PORT: u16 = 20000;

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `veg flows --watch --json`, its lines collected as they come. Killed on drop.
struct Watcher {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Watcher {
    fn start(veg: &str, name: &str) -> Watcher {
        let mut child = Command::new(veg)
            .args(["flows", "--name", name, "--watch", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting veg flows --watch");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let collected = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                collected.lock().unwrap().push(line);
            }
        });
        Watcher { child, lines }
    }

    fn records(&self) -> Vec<Value> {
        parse(&self.lines.lock().unwrap().join("\n"))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect()
}

/// Every record the agent wrote: the rotated file first, then the current one.
fn file_records(path: &Path) -> Vec<Value> {
    let rotated = PathBuf::from(format!("{}.1", path.display()));
    let mut text = std::fs::read_to_string(&rotated).unwrap_or_default();
    text.push_str(&std::fs::read_to_string(path).unwrap_or_default());
    parse(&text)
}

fn count(records: &[Value], event: &str) -> usize {
    records.iter().filter(|r| r["event"] == event).count()
}

/// The records, once `done` says they are all there, or after 30 s.
fn eventually(read: impl Fn() -> Vec<Value>, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let records = read();
        if done(&records) || Instant::now() > deadline {
            return records;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Make every translation look idle for hours, as if time had passed: the next sweep ends them all.
fn age_every_flow(gateway: &Gateway) {
    let data = MapData::from_pin(pins::gateway_dir(&gateway.name).join(pins::FLOWS)).unwrap();
    let mut map: HashMap<MapData, FlowKey, FlowEntry> =
        HashMap::try_from(Map::HashMap(data)).unwrap();
    let entries: Vec<(FlowKey, FlowEntry)> = map.iter().map(Result::unwrap).collect();
    for (key, mut entry) in entries {
        entry.last_seen_ns = 1;
        map.insert(key, entry, 0).unwrap();
    }
}

fn socket_address(field: &Value) -> SocketAddr {
    let text = field
        .as_str()
        .unwrap_or_else(|| panic!("{field} is no address"));
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// The one record of `event` whose original source is `source`.
fn record_of<'a>(records: &'a [Value], event: &str, source: &str) -> &'a Value {
    let found: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == event && r["original_source"] == source)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {event} record from {source}, found {found:?}"
    );
    found[0]
}

#[test]
fn every_translation_is_recorded_once_created_and_once_ended_as_the_server_saw_it() {
    if skip_unless_root() {
        return;
    }
    let dir = TempDir(std::env::temp_dir().join(veg_testbed::unique("veg-records-")));
    std::fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("records.jsonl");
    let mut topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let client = topo.add_client("10.16.0.2");
    let mut gateway = topo.start_gateway(&[
        "--sweep-interval",
        "1",
        "--flow-records",
        file.to_str().unwrap(),
        "--flow-records-max-size",
        "1",
    ]);
    let udp_server = udp_echo(&topo.server, 9000);
    let tcp_server = tcp_echo(&topo.server, 9001);

    // The watcher is connected once it shows a record: until then, warm-up flows (one each try).
    let watcher = Watcher::start(env!("CARGO_BIN_EXE_veg"), &gateway.name);
    let mut warm_up_port = 6000;
    let deadline = Instant::now() + Duration::from_secs(20);
    while watcher.records().is_empty() {
        assert!(
            Instant::now() < deadline,
            "veg flows --watch showed nothing"
        );
        udp_round_trip(topo.client(client), warm_up_port, server(9000), b"hello")
            .expect("a warm-up datagram through the gateway was lost");
        warm_up_port += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    let warm_ups = usize::from(warm_up_port - 6000);

    // One UDP flow of three round trips (36-byte packets each way), one TCP connection, then a burst of new
    // flows, one datagram each.
    for _ in 0..3 {
        udp_round_trip(topo.client(client), 7001, server(9000), b"count me")
            .expect("a datagram through the gateway was lost");
    }
    tcp_round_trip(topo.client(client), 7002, server(9001), &[7u8; 100])
        .expect("the TCP round trip through the gateway failed");
    topo.client(client).run(|| {
        for port in BURST_FIRST_PORT..BURST_FIRST_PORT + BURST {
            let socket = UdpSocket::bind(("0.0.0.0", port)).unwrap();
            socket.send_to(b"burst", server(9000)).unwrap();
        }
    });
    let flows = warm_ups + 2 + usize::from(BURST);
    let heard = Instant::now() + Duration::from_secs(10);
    while udp_server.peers().len() < warm_ups + 3 + usize::from(BURST) && Instant::now() < heard {
        std::thread::sleep(Duration::from_millis(100));
    }
    let created = eventually(|| file_records(&file), |r| count(r, "created") >= flows);
    assert_eq!(count(&created, "created"), flows, "created records");
    assert_eq!(count(&created, "ended"), 0, "nothing ended yet");

    // Time passes: the sweep ends every translation, each with its ended record.
    std::thread::sleep(Duration::from_millis(500));
    age_every_flow(&gateway);
    let records = eventually(|| file_records(&file), |r| count(r, "ended") >= flows);
    assert_eq!(count(&records, "created"), flows, "created records");
    assert_eq!(count(&records, "ended"), flows, "ended records");
    assert_eq!(gateway.counter("flows_created"), flows as u64);
    assert_eq!(gateway.counter("flow_records_lost"), 0);
    assert_eq!(gateway.counter("flow_counts_lost"), 0);
    // Their counts went with them: the sweep takes them out of the counts table before it hands the records on.
    let data = MapData::from_pin(pins::gateway_dir(&gateway.name).join(pins::FLOW_COUNTS)).unwrap();
    let counts: HashMap<MapData, FlowKey, FlowCounts> =
        HashMap::try_from(Map::HashMap(data)).unwrap();
    assert_eq!(counts.keys().count(), 0, "counts left behind");
    // The 1 MiB file was rotated once, and held to its size.
    let rotated = std::fs::metadata(format!("{}.1", file.display()))
        .expect("the records file was not rotated")
        .len();
    assert!(rotated <= 1024 * 1024, "FILE.1 holds {rotated} bytes");

    // The UDP flow: the translated source is the one the server saw; three 36-byte datagrams each way.
    let udp_created = record_of(&records, "created", "10.16.0.2:7001");
    let udp_ended = record_of(&records, "ended", "10.16.0.2:7001");
    let translated = socket_address(&udp_created["translated_source"]);
    assert_eq!(translated.ip().to_string(), GATEWAY_EXTERNAL_IP);
    assert!(
        udp_server.peers().contains(&translated),
        "the server never saw {translated}"
    );
    assert_eq!(udp_created["protocol"], "udp");
    assert_eq!(udp_created["remote"], server(9000).to_string());
    assert_eq!(udp_created["gateway"], gateway.name);
    assert_eq!(
        udp_ended["translated_source"],
        udp_created["translated_source"]
    );
    assert_eq!(udp_ended["reason"], "timeout");
    assert_eq!(udp_ended["packets_out"], 3);
    assert_eq!(udp_ended["bytes_out"], 3 * 36);
    assert_eq!(udp_ended["packets_in"], 3);
    assert_eq!(udp_ended["bytes_in"], 3 * 36);

    // The TCP connection closed both ways: at least handshake, data and FIN out, the 100 bytes among them.
    let tcp_created = record_of(&records, "created", "10.16.0.2:7002");
    let tcp_ended = record_of(&records, "ended", "10.16.0.2:7002");
    let translated = socket_address(&tcp_created["translated_source"]);
    assert_eq!(tcp_server.peers(), vec![translated]);
    assert_eq!(tcp_ended["reason"], "closed");
    assert!(
        tcp_ended["packets_out"].as_u64().unwrap() >= 4,
        "{tcp_ended}"
    );
    assert!(
        tcp_ended["bytes_out"].as_u64().unwrap() >= 100 + 4 * 40,
        "{tcp_ended}"
    );
    assert!(
        tcp_ended["packets_in"].as_u64().unwrap() >= 3,
        "{tcp_ended}"
    );
    assert!(
        tcp_ended["bytes_in"].as_u64().unwrap() >= 100 + 3 * 40,
        "{tcp_ended}"
    );

    // Each burst flow: one 33-byte datagram out.
    let burst_out: StdHashMap<String, u64> = records
        .iter()
        .filter(|r| r["event"] == "ended")
        .filter_map(|r| {
            Some((
                r["original_source"].as_str()?.to_owned(),
                r["packets_out"].as_u64()?,
            ))
        })
        .collect();
    for port in BURST_FIRST_PORT..BURST_FIRST_PORT + BURST {
        assert_eq!(
            burst_out.get(&format!("10.16.0.2:{port}")),
            Some(&1),
            "flow from port {port}"
        );
    }

    // The watcher saw what the file holds since it connected (during the warm-up flows).
    let watched = eventually(|| watcher.records(), |r| count(r, "ended") >= flows);
    assert_eq!(count(&watched, "ended"), flows);
    let created_after_warm_up = watched
        .iter()
        .filter(|r| r["event"] == "created")
        .filter(|r| socket_address(&r["original_source"]).port() >= 7000)
        .count();
    assert_eq!(created_after_warm_up, 2 + usize::from(BURST));
    assert_eq!(record_of(&watched, "ended", "10.16.0.2:7001"), udp_ended);

    // The agent stops: the watcher is told, and ends.
    gateway.stop();
    let mut watcher = watcher;
    let deadline = Instant::now() + Duration::from_secs(10);
    while watcher.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "veg flows --watch outlived the agent"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn watching_a_gateway_without_records_says_what_to_do() {
    if skip_unless_root() {
        return;
    }
    let topo = Topology::new(env!("CARGO_BIN_EXE_veg"));
    let gateway = topo.start_gateway(&[]);
    let out = Command::new(env!("CARGO_BIN_EXE_veg"))
        .args(["flows", "--name", &gateway.name, "--watch"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.contains("no translation records to watch") && error.contains("--flow-records"),
        "{error}"
    );
}
