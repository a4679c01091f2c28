//! The connection: one reader task that answers the server's echo requests and hands each response to the request
//! waiting for it (by id), one writer task, and any number of requests in flight.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::{mpsc, oneshot},
};
use tracing::debug;

use super::{endpoint::Endpoint, transaction, wire::MessageReader};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// Bytes on the wire, both ways, for benchmarks and logs.
#[derive(Default)]
pub struct Traffic {
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

pub struct Client {
    endpoint: Endpoint,
    traffic: Arc<Traffic>,
    /// Notifications (update2 of monitors); closes when the connection does.
    notifications: Mutex<Option<mpsc::UnboundedReceiver<Value>>>,
    outgoing: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    next_id: AtomicU64,
    timeout: Duration,
}

impl Client {
    pub async fn connect(endpoint: &Endpoint) -> anyhow::Result<Client> {
        let context = || format!("connecting to the OVN Northbound database at {endpoint}");
        match endpoint {
            Endpoint::Unix(path) => {
                let (read, write) = tokio::net::UnixStream::connect(path)
                    .await
                    .with_context(context)?
                    .into_split();
                Ok(Client::start(endpoint, read, write))
            }
            Endpoint::Tcp(address) => {
                let stream = tokio::net::TcpStream::connect(address)
                    .await
                    .with_context(context)?;
                stream.set_nodelay(true)?;
                let (read, write) = stream.into_split();
                Ok(Client::start(endpoint, read, write))
            }
        }
    }

    fn start(
        endpoint: &Endpoint,
        read: impl AsyncRead + Unpin + Send + 'static,
        write: impl AsyncWrite + Unpin + Send + 'static,
    ) -> Client {
        let (outgoing, to_write) = mpsc::unbounded_channel();
        let (notify, notifications) = mpsc::unbounded_channel();
        let pending: Pending = Arc::default();
        let traffic: Arc<Traffic> = Arc::default();
        tokio::spawn(write_loop(write, to_write, traffic.clone()));
        tokio::spawn(read_loop(
            read,
            outgoing.clone(),
            pending.clone(),
            notify,
            traffic.clone(),
        ));
        Client {
            endpoint: endpoint.clone(),
            traffic,
            notifications: Mutex::new(Some(notifications)),
            outgoing,
            pending,
            next_id: AtomicU64::new(1),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The server's notifications (monitor updates), for one taker; the channel ends with the connection.
    pub fn take_notifications(&self) -> Option<mpsc::UnboundedReceiver<Value>> {
        self.notifications.lock().unwrap().take()
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// (bytes sent, bytes received) on this connection so far.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.traffic.sent.load(Ordering::Relaxed),
            self.traffic.received.load(Ordering::Relaxed),
        )
    }

    /// How long a request may wait for its answer.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// Send a request and wait for its result (the server's error becomes this call's error).
    pub async fn request(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer_tx, answer_rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, answer_tx);
        let message = json!({ "method": method, "params": params, "id": id });
        if self
            .outgoing
            .send(message.to_string().into_bytes())
            .is_err()
        {
            self.pending.lock().unwrap().remove(&id);
            bail!("the connection to {} is closed", self.endpoint);
        }
        let answer = match tokio::time::timeout(self.timeout, answer_rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => bail!(
                "the connection to {} closed before it answered {method}",
                self.endpoint
            ),
            Err(_) => {
                self.pending.lock().unwrap().remove(&id);
                bail!(
                    "{} did not answer {method} within {:?}",
                    self.endpoint,
                    self.timeout
                );
            }
        };
        if !answer["error"].is_null() {
            bail!("{} refused {method}: {}", self.endpoint, answer["error"]);
        }
        Ok(answer["result"].clone())
    }

    pub async fn list_dbs(&self) -> anyhow::Result<Vec<String>> {
        let result = self.request("list_dbs", json!([])).await?;
        serde_json::from_value(result)
            .context("list_dbs answered something other than a list of names")
    }

    pub async fn get_schema(&self, db: &str) -> anyhow::Result<Value> {
        self.request("get_schema", json!([db])).await
    }

    pub async fn echo(&self, payload: Value) -> anyhow::Result<Value> {
        self.request("echo", payload).await
    }

    /// Run `operations` as one transaction. Either every operation applies, or none does and the error names the
    /// one that failed.
    pub async fn transact(&self, db: &str, operations: &[Value]) -> anyhow::Result<Vec<Value>> {
        let mut params = vec![json!(db)];
        params.extend_from_slice(operations);
        let result = self.request("transact", Value::Array(params)).await?;
        transaction::check(operations, &result).map_err(|e| anyhow!(e))
    }
}

async fn write_loop(
    mut write: impl AsyncWrite + Unpin,
    mut messages: mpsc::UnboundedReceiver<Vec<u8>>,
    traffic: Arc<Traffic>,
) {
    while let Some(message) = messages.recv().await {
        if write.write_all(&message).await.is_err() {
            return;
        }
        traffic
            .sent
            .fetch_add(message.len() as u64, Ordering::Relaxed);
    }
}

async fn read_loop(
    mut read: impl AsyncRead + Unpin,
    outgoing: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    notify: mpsc::UnboundedSender<Value>,
    traffic: Arc<Traffic>,
) {
    let mut reader = MessageReader::default();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match read.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        traffic.received.fetch_add(n as u64, Ordering::Relaxed);
        reader.push(&buffer[..n]);
        let Ok(messages) = reader.messages() else {
            debug!("the server sent something that is not JSON; closing");
            break;
        };
        for message in messages {
            if message["method"] == "echo" {
                // The server checks that we are alive (every ~5 s idle on TCP): answer or be dropped.
                let reply =
                    json!({ "result": message["params"], "error": null, "id": message["id"] });
                let _ = outgoing.send(reply.to_string().into_bytes());
            } else if message["id"].is_null() {
                let _ = notify.send(message);
            } else if let Some(id) = message["id"].as_u64()
                && let Some(waiter) = pending.lock().unwrap().remove(&id)
            {
                let _ = waiter.send(message);
            }
        }
    }
    // Dropping the waiters tells every request in flight that the connection is gone.
    pending.lock().unwrap().clear();
}
