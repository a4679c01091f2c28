//! A monitored database: a replica of some tables that follows every change (monitor_cond + update2), and that
//! survives the server going away: the monitor reconnects with backoff, monitors again and rebuilds the replica
//! from the fresh initial state, so it converges to whatever the database holds now.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    client::Client,
    endpoint::Endpoint,
    replica::{Replica, Schema},
};

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The monitor's shared state: the replica, the current connection (for transactions), and a counter bumped on
/// every change so waiters can tell.
pub struct Monitor {
    replica: Arc<Mutex<Replica>>,
    client: Arc<Mutex<Option<Arc<Client>>>>,
    changes: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Monitor {
    /// Start monitoring every column of `tables` in `db`. Returns at once; the replica fills as soon as the
    /// database answers (see `wait_until`).
    pub fn start(endpoint: Endpoint, db: &str, tables: &[&str]) -> Monitor {
        let replica = Arc::new(Mutex::new(Replica::default()));
        let client = Arc::new(Mutex::new(None));
        let (changed, changes) = watch::channel(0u64);
        let requests: serde_json::Map<String, Value> = tables
            .iter()
            .map(|t| (t.to_string(), json!([{}])))
            .collect();
        let task = tokio::spawn(keep_monitoring(
            endpoint,
            db.to_owned(),
            Value::Object(requests),
            replica.clone(),
            client.clone(),
            changed,
        ));
        Monitor {
            replica,
            client,
            changes,
            task,
        }
    }

    /// Read the replica.
    pub fn read<T>(&self, f: impl FnOnce(&Replica) -> T) -> T {
        f(&self.replica.lock().unwrap())
    }

    /// The live connection, when there is one.
    pub fn client(&self) -> Option<Arc<Client>> {
        self.client.lock().unwrap().clone()
    }

    /// A receiver that changes with every update of the replica.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Wait until the first connection has been made and the replica filled. Returns whether it was.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut changes = self.changes.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        while self.client().is_none() {
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
        true
    }

    /// Wait until `condition` holds on the replica, or `timeout` passes. Returns whether it held.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        condition: impl Fn(&Replica) -> bool,
    ) -> bool {
        let mut changes = self.changes.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.read(&condition) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep_monitoring(
    endpoint: Endpoint,
    db: String,
    requests: Value,
    replica: Arc<Mutex<Replica>>,
    current: Arc<Mutex<Option<Arc<Client>>>>,
    changed: watch::Sender<u64>,
) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        match monitor_once(
            &endpoint,
            &db,
            &requests,
            &replica,
            &current,
            &changed,
            &mut backoff,
        )
        .await
        {
            Ok(()) => warn!(%endpoint, "the database connection closed; reconnecting"),
            Err(e) => warn!(%endpoint, "monitoring failed: {e:#}; retrying in {backoff:?}"),
        }
        *current.lock().unwrap() = None;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn monitor_once(
    endpoint: &Endpoint,
    db: &str,
    requests: &Value,
    replica: &Mutex<Replica>,
    current: &Mutex<Option<Arc<Client>>>,
    changed: &watch::Sender<u64>,
    backoff: &mut Duration,
) -> anyhow::Result<()> {
    let client = Arc::new(Client::connect(endpoint).await?);
    let mut notifications = client
        .take_notifications()
        .expect("a new client has its notifications");
    let schema = Schema::from_json(&client.get_schema(db).await?);
    let initial = client
        .request("monitor_cond", json!([db, "veg", requests]))
        .await?;
    {
        let mut replica = replica.lock().unwrap();
        *replica = Replica::new(schema);
        replica.apply(&initial);
    }
    *current.lock().unwrap() = Some(client);
    changed.send_modify(|n| *n += 1);
    *backoff = BACKOFF_FIRST;
    info!(%endpoint, db, "monitoring");
    while let Some(message) = notifications.recv().await {
        if message["method"] == "update2" {
            replica.lock().unwrap().apply(&message["params"][1]);
            changed.send_modify(|n| *n += 1);
        }
    }
    Ok(())
}
