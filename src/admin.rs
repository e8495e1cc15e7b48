//! Admin HTTP: `GET /metrics` (Prometheus text) and `GET /healthz`, on the admin address
//! only (127.0.0.1 by default), never on the public WebSocket port.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use monoio::net::{TcpListener, TcpStream};

use crate::metrics::Metrics;
use crate::sockio::{recv_some, send_all};

/// Serves admin requests until the process exits.
pub async fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>) {
    let metrics = Rc::new(metrics);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let metrics = metrics.clone();
                monoio::spawn(async move {
                    let _ = monoio::time::timeout(Duration::from_secs(10), serve(stream, &metrics)).await;
                });
            }
            Err(e) => {
                tracing::warn!("admin accept: {e}");
                monoio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve(stream: TcpStream, metrics: &Metrics) {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    let (status, ctype, body) = loop {
        match recv_some(&stream, &mut buf[len..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => len += n,
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => break route(req.method, req.path, metrics),
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            _ => break ("400 Bad Request", "text/plain", "bad request\n".to_string()),
        }
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = send_all(&stream, resp.as_bytes()).await;
}

fn route(method: Option<&str>, path: Option<&str>, metrics: &Metrics) -> (&'static str, &'static str, String) {
    let path = path.unwrap_or("").split('?').next().unwrap_or("");
    match (method, path) {
        (Some("GET"), "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", metrics.render()),
        (Some("GET"), "/healthz") if metrics.draining.load(Relaxed) => {
            ("503 Service Unavailable", "text/plain", "draining\n".into())
        }
        // Cluster mode: without Redis this node can neither accept publishes nor receive
        // any, so it is not ready (its subscribers stay connected).
        (Some("GET"), "/healthz") if metrics.redis.enabled.load(Relaxed) && !metrics.redis.up.load(Relaxed) => {
            ("503 Service Unavailable", "text/plain", "redis unavailable\n".into())
        }
        (Some("GET"), "/healthz") => ("200 OK", "text/plain", "ok\n".into()),
        (Some("GET"), _) => ("404 Not Found", "text/plain", "not found: try /metrics or /healthz\n".into()),
        _ => ("405 Method Not Allowed", "text/plain", "use GET\n".into()),
    }
}
