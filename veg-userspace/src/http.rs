//! The smallest HTTP/1 server that probes and Prometheus need: one GET per connection, answered and closed. The
//! agent's health listener and the controller's metrics listener both run it with their own routes.

use std::sync::Arc;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// An answer: status line text ("200 OK"), content type, body.
pub struct Response {
    pub status: &'static str,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn ok(body: String) -> Response {
        Response {
            status: "200 OK",
            content_type: "text/plain",
            body,
        }
    }

    /// Prometheus' text exposition format.
    pub fn metrics(body: String) -> Response {
        Response {
            content_type: "text/plain; version=0.0.4",
            ..Response::ok(body)
        }
    }

    pub fn with_status(status: &'static str, body: String) -> Response {
        Response {
            status,
            ..Response::ok(body)
        }
    }
}

/// Answer every connection with `route(path)` until the listener fails.
pub async fn serve(listener: TcpListener, route: Arc<dyn Fn(&str) -> Response + Send + Sync>) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let route = Arc::clone(&route);
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let n = stream.read(&mut request).await.unwrap_or(0);
            let path = std::str::from_utf8(&request[..n])
                .ok()
                .and_then(|r| r.split_whitespace().nth(1))
                .unwrap_or("");
            let response = route(path);
            let text = format!(
                "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                response.status,
                response.content_type,
                response.body.len(),
                response.body
            );
            let _ = stream.write_all(text.as_bytes()).await;
        });
    }
}
