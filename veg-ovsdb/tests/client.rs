//! The OVSDB client against a real ovsdb-server holding OVN's Northbound schema; what it wrote is read back with
//! ovn-nbctl, an independent client.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use veg_ovsdb::{
    client::Client,
    endpoint::Endpoint,
    monitor::Monitor,
    replica::{Replica, Schema, column},
};
use veg_testbed::ovsdb::NbServer;

const NB: &str = "OVN_Northbound";

async fn connect(address: &str) -> Client {
    Client::connect(&address.parse::<Endpoint>().unwrap())
        .await
        .unwrap()
}

fn insert_router(name: &str) -> Value {
    json!({ "op": "insert", "table": "Logical_Router", "row": {
        "name": name, "external_ids": ["map", [["vendor", "kube-ovn"]]] } })
}

fn insert_bfd(port: &str, dst: &str) -> Value {
    json!({ "op": "insert", "table": "BFD", "row": { "logical_port": port, "dst_ip": dst } })
}

#[tokio::test]
async fn lists_databases_and_reads_the_schema_over_unix_and_tcp() {
    let server = NbServer::start();
    for address in [&server.unix, &server.tcp] {
        let client = connect(address).await;
        assert!(
            client.list_dbs().await.unwrap().contains(&NB.to_owned()),
            "{address}"
        );
        let schema = client.get_schema(NB).await.unwrap();
        assert_eq!(schema["name"], NB);
        for table in [
            "Logical_Router",
            "Logical_Router_Static_Route",
            "Logical_Router_Policy",
            "BFD",
            "Address_Set",
        ] {
            assert!(
                schema["tables"][table].is_object(),
                "no {table} in the schema"
            );
        }
        // Feature detection: Debian's OVN 23.03 routes can use BFD, its reroute policies cannot (23.09+).
        let schema = Schema::from_json(&schema);
        assert!(schema.has_column("Logical_Router_Static_Route", "bfd"));
        assert!(!schema.has_column("Logical_Router_Policy", "bfd_sessions"));
    }
}

#[tokio::test]
async fn a_transaction_is_applied_and_ovn_nbctl_sees_it() {
    let server = NbServer::start();
    let client = connect(&server.unix).await;
    let results = client.transact(NB, &[insert_router("vpc1")]).await.unwrap();
    assert!(results[0]["uuid"].is_array());
    assert!(server.nbctl(&["lr-list"]).contains("(vpc1)"));
    assert!(
        server
            .nbctl(&["get", "Logical_Router", "vpc1", "external_ids"])
            .contains("vendor=kube-ovn")
    );
}

#[tokio::test]
async fn a_rejected_transaction_names_the_operation_and_applies_nothing() {
    let server = NbServer::start();
    let client = connect(&server.unix).await;
    let bad = json!({ "op": "insert", "table": "No_Such_Table", "row": {} });
    let error = client
        .transact(NB, &[insert_router("half"), bad])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("operation 1 (insert on table No_Such_Table) failed"),
        "{error}"
    );
    assert!(error.contains("nothing was applied"), "{error}");
    assert!(
        !server.nbctl(&["lr-list"]).contains("half"),
        "the first operation of a failed transaction was applied"
    );

    // A duplicate BFD row violates the table's unique index: only the commit can tell.
    let duplicate = [
        insert_bfd("bfd@vpc1", "10.0.0.2"),
        insert_bfd("bfd@vpc1", "10.0.0.2"),
    ];
    let error = client
        .transact(NB, &duplicate)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("constraint violation"), "{error}");
    assert_eq!(
        server.nbctl(&["--columns=_uuid", "list", "BFD"]).trim(),
        "",
        "a BFD row was left behind"
    );
}

#[tokio::test]
async fn many_requests_in_flight_each_get_their_own_answer() {
    let server = NbServer::start();
    let client = std::sync::Arc::new(connect(&server.tcp).await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let client = client.clone();
        tasks.spawn(async move {
            (
                i,
                client.echo(json!([format!("request {i}")])).await.unwrap(),
            )
        });
    }
    let mut answered = 0;
    while let Some(result) = tasks.join_next().await {
        let (i, answer) = result.unwrap();
        assert_eq!(answer, json!([format!("request {i}")]));
        answered += 1;
    }
    assert_eq!(answered, 200);
}

#[tokio::test]
async fn the_server_echo_is_answered_so_an_idle_connection_stays_open() {
    let server = NbServer::start();
    let client = connect(&server.tcp).await;
    client.list_dbs().await.unwrap();
    // ovsdb-server probes an idle TCP client after about 5 s and drops it if it does not answer.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(
        client.list_dbs().await.is_ok(),
        "the server dropped the idle connection: its echo went unanswered"
    );
}

#[tokio::test]
async fn a_request_without_an_answer_times_out() {
    let dir = std::env::temp_dir().join(veg_testbed::unique("veg-silent-"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("silent.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    // Accepts, reads, never answers.
    tokio::spawn(async move {
        let (_stream, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let client = connect(&format!("unix:{}", path.display()))
        .await
        .with_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let error = client.list_dbs().await.unwrap_err().to_string();
    assert!(
        error.contains("did not answer list_dbs within 300ms"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn requests_in_flight_fail_when_the_server_goes_away() {
    let server = NbServer::start();
    let client = connect(&server.unix)
        .await
        .with_timeout(Duration::from_secs(5));
    client.list_dbs().await.unwrap();
    server.stop();
    let started = Instant::now();
    let error = client.list_dbs().await.unwrap_err().to_string();
    assert!(error.contains("closed"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a dead connection must fail at once, not time out"
    );
}

fn has_router(replica: &Replica, name: &str) -> bool {
    replica
        .rows("Logical_Router")
        .any(|(_, row)| column(row, "name") == name)
}

#[tokio::test]
async fn the_replica_follows_changes_made_by_others() {
    let server = NbServer::start();
    let monitor = Monitor::start(server.unix.parse().unwrap(), NB, &["BFD", "Logical_Router"]);
    let uuid = server
        .nbctl(&[
            "create",
            "BFD",
            "logical_port=bfd@vpc1",
            "dst_ip=10.0.0.2",
            "external_ids:vendor=kube-ovn",
        ])
        .trim()
        .to_owned();
    let wait = Duration::from_secs(5);
    assert!(
        monitor
            .wait_until(wait, |r| r
                .row("BFD", &uuid)
                .is_some_and(|row| column(row, "dst_ip") == "10.0.0.2"))
            .await
    );
    server.nbctl(&["set", "BFD", &uuid, "status=up", "min_rx=100"]);
    assert!(
        monitor
            .wait_until(wait, |r| r.row("BFD", &uuid).is_some_and(|row| *column(
                row, "status"
            ) == json!(
                ["set", ["up"]]
            ) && *column(row, "min_rx")
                == json!(["set", [100]])))
            .await,
        "{:?}",
        monitor.read(|r| r.row("BFD", &uuid).cloned())
    );
    server.nbctl(&["remove", "BFD", &uuid, "external_ids", "vendor"]);
    assert!(
        monitor
            .wait_until(wait, |r| r.row("BFD", &uuid).is_some_and(|row| *column(
                row,
                "external_ids"
            ) == json!(
                ["map", []]
            )))
            .await
    );
    server.nbctl(&["destroy", "BFD", &uuid]);
    assert!(
        monitor
            .wait_until(wait, |r| r.row("BFD", &uuid).is_none())
            .await
    );
}

#[tokio::test]
async fn a_restarted_server_is_reconnected_and_the_replica_converges() {
    let mut server = NbServer::start();
    let monitor = Monitor::start(server.unix.parse().unwrap(), NB, &["Logical_Router"]);
    server.nbctl(&["lr-add", "before"]);
    let wait = Duration::from_secs(10);
    assert!(monitor.wait_until(wait, |r| has_router(r, "before")).await);
    server.stop();
    // While the server is down the database changes behind the monitor's back.
    server.transact_offline(r#"["OVN_Northbound",{"op":"delete","table":"Logical_Router","where":[["name","==","before"]]}]"#);
    server.restart();
    server.nbctl(&["lr-add", "after"]);
    assert!(
        monitor
            .wait_until(wait, |r| has_router(r, "after") && !has_router(r, "before"))
            .await,
        "the replica did not converge: {:?}",
        monitor.read(|r| r
            .rows("Logical_Router")
            .map(|(_, row)| column(row, "name").clone())
            .collect::<Vec<_>>())
    );
    // And the monitor's connection carries transactions again.
    let client = monitor.client().expect("reconnected");
    client
        .transact(NB, &[insert_router("written-after-restart")])
        .await
        .unwrap();
    assert!(
        server
            .nbctl(&["lr-list"])
            .contains("(written-after-restart)")
    );
}

#[tokio::test]
async fn an_optional_column_changing_value_is_replicated() {
    let server = NbServer::start();
    let uuid = server
        .nbctl(&[
            "create",
            "BFD",
            "logical_port=p",
            "dst_ip=10.0.0.2",
            "status=down",
        ])
        .trim()
        .to_owned();
    let monitor = Monitor::start(server.unix.parse().unwrap(), NB, &["BFD"]);
    let wait = Duration::from_secs(5);
    let status = |r: &Replica| r.row("BFD", &uuid).map(|row| column(row, "status").clone());
    assert!(
        monitor
            .wait_until(wait, |r| status(r) == Some(json!(["set", ["down"]])))
            .await,
        "{:?}",
        monitor.read(status)
    );
    server.nbctl(&["set", "BFD", &uuid, "status=up"]);
    assert!(
        monitor
            .wait_until(wait, |r| status(r) == Some(json!(["set", ["up"]])))
            .await,
        "{:?}",
        monitor.read(status)
    );
}
