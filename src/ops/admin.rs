//! Admin HTTP: `GET /metrics` (Prometheus text), `GET /healthz`, `GET /stats` (JSON, see
//! `ops::stats`) and `GET /` (the status page, `ops::page`), on the admin address only
//! (127.0.0.1 by default), never on the public WebSocket port. `/healthz` answers 503
//! while draining, and while publishers cannot reach crier through `--publish-socket`.
//! With `--admin-token-file`, every route but `/healthz` needs `Authorization: Bearer`;
//! `/` also takes the token as `?token=` (a browser cannot send the header on navigation;
//! the page moves it into sessionStorage and the header at once).

use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use monoio::net::{TcpListener, TcpStream};

use crate::access::Access;
use crate::ops::capacity::{AcceptErrors, MAX_ADMIN_CONNECTIONS};
use crate::ops::metrics::Metrics;
use crate::ops::page;
use crate::ops::stats::{Health, StatsSource};
use crate::shard::sockio::{recv_some, send_all, send_now};
use crate::ws::http;

/// Serves admin requests until the process exits. At most `MAX_ADMIN_CONNECTIONS` are
/// served at once, so that a flood of admin connections cannot take the descriptors kept
/// for publishers; past it a request gets a 503 straight away.
pub async fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>, access: Arc<Access>, stats: StatsSource) {
    let metrics = Rc::new(metrics);
    let stats = Rc::new(stats);
    let access = Rc::new(access);
    let open = Rc::new(Cell::new(0usize));
    let mut errors = AcceptErrors::default();
    loop {
        match listener.accept().await {
            Ok((stream, _)) if open.get() >= MAX_ADMIN_CONNECTIONS => {
                let _ = send_now(stream.as_raw_fd(), &busy());
            }
            Ok((stream, _)) => {
                let (metrics, open, access, stats) = (metrics.clone(), open.clone(), access.clone(), stats.clone());
                open.set(open.get() + 1);
                monoio::spawn(async move {
                    let served = serve(stream, &metrics, &access, &stats);
                    let _ = monoio::time::timeout(Duration::from_secs(10), served).await;
                    open.set(open.get() - 1);
                });
            }
            Err(e) => errors.handle("admin", &e).await,
        }
    }
}

/// The answer when `MAX_ADMIN_CONNECTIONS` are already being served.
fn busy() -> Vec<u8> {
    http::response("503 Service Unavailable", "text/plain", &[], b"too many admin connections\n")
}

async fn serve(stream: TcpStream, metrics: &Metrics, access: &Access, stats: &StatsSource) {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    let mut extra: &[(&str, &str)] = &[];
    let (status, ctype, body) = loop {
        match recv_some(&stream, &mut buf[len..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => len += n,
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                let (path, query) = req.path.unwrap_or("").split_once('?').unwrap_or((req.path.unwrap_or(""), ""));
                let header = req.headers.iter().find(|h| h.name.eq_ignore_ascii_case("Authorization")).map(|h| h.value);
                // The page itself, opened in a browser, can only bring the token in its URL.
                let from_query = (path == "/" && header.is_none()).then(|| page::query_token(query)).flatten();
                let auth = header.map(<[u8]>::to_vec).or_else(|| from_query.map(|t| [b"Bearer ", &t[..]].concat()));
                // --admin-token-file: everything but /healthz (load balancers probe it
                // without credentials) needs the bearer token.
                if path != "/healthz" && !access.admin_allows(auth.as_deref()) {
                    metrics.admin_unauthorized.fetch_add(1, Relaxed);
                    extra = &[("WWW-Authenticate", "Bearer")];
                    if path == "/" {
                        break ("401 Unauthorized", "text/html; charset=utf-8", page::LOGIN.to_string());
                    }
                    break (
                        "401 Unauthorized",
                        "text/plain",
                        "unauthorized: send Authorization: Bearer <the token of --admin-token-file>\n".to_string(),
                    );
                }
                break route(req.method, path, metrics, stats);
            }
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            _ => break ("400 Bad Request", "text/plain", "bad request\n".to_string()),
        }
    };
    let resp = http::response(status, ctype, extra, body.as_bytes());
    let _ = send_all(&stream, &resp).await;
}

fn route(
    method: Option<&str>,
    path: &str,
    metrics: &Metrics,
    stats: &StatsSource,
) -> (&'static str, &'static str, String) {
    match (method, path) {
        (Some("GET"), "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", metrics.render()),
        (Some("GET"), "/healthz") => match health(metrics) {
            Ok(()) => ("200 OK", "text/plain", "ok\n".into()),
            Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
        },
        (Some("GET"), "/stats") => {
            let h = health(metrics);
            let h = Health { ok: h.is_ok(), draining: metrics.draining.load(Relaxed), reason: h.err() };
            let doc =
                serde_json::to_string(&stats.snapshot(metrics, h)).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
            ("200 OK", "application/json", doc)
        }
        (Some("GET"), "/") => ("200 OK", "text/html; charset=utf-8", page::PAGE.to_string()),
        (Some("GET"), _) => ("404 Not Found", "text/plain", "not found: try /, /stats, /metrics or /healthz\n".into()),
        _ => ("405 Method Not Allowed", "text/plain", "use GET\n".into()),
    }
}

/// What `/healthz` answers: `Err(why)` is a 503 with `why` as its body.
fn health(metrics: &Metrics) -> Result<(), String> {
    if metrics.draining.load(Relaxed) {
        return Err("draining".into());
    }
    // Cluster mode: without Redis this node can neither accept publishes nor receive
    // any, so it is not ready (its subscribers stay connected).
    if metrics.redis.enabled.load(Relaxed) && !metrics.redis.up.load(Relaxed) {
        return Err("redis unavailable".into());
    }
    // Publishers cannot reach this crier: not healthy, and the body says why.
    match metrics.publish_socket_trouble.lock().ok().and_then(|t| t.clone()) {
        Some(why) => Err(why),
        None => Ok(()),
    }
}
