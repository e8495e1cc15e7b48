//! The standalone (`--redis`) session's connections: the multiplexed command connection
//! every request of a session shares ([`Link`]), and the pub/sub connection ([`subscribe`]).
//! Used by the command side (`redis_thread.rs`) and the receiving side (`receive.rs`).

use std::sync::Arc;

use redis::Value;
use redis::aio::{MultiplexedConnection, PubSubStream};
use tokio::sync::Notify;

use super::script::{self, Names};
use super::{CONNECT_TIMEOUT, Fetched, RESPONSE_TIMEOUT};
use crate::channel::ChannelName;
use crate::ops::metrics::Metrics;

/// What a session needs to issue commands.
#[derive(Clone)]
pub(super) struct Link {
    pub(super) conn: MultiplexedConnection,
    /// Notified by any task whose request failed for want of a connection.
    pub(super) broken: Arc<Notify>,
    pub(super) metrics: Arc<Metrics>,
}

fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

impl Link {
    pub(super) async fn query(&self, cmd: &redis::Cmd) -> Option<Value> {
        let mut conn = self.conn.clone();
        match conn.send_packed_command(cmd).await {
            Ok(v) => Some(v),
            Err(e) => {
                self.failed(&e);
                None
            }
        }
    }

    pub(super) fn failed(&self, e: &redis::RedisError) {
        if is_connection_error(e) {
            self.broken.notify_one();
        } else {
            tracing::warn!("redis refused a command: {e}");
        }
    }

    /// Reads a channel's meta and the stream entries in `from..=to` (`to` None: to the end),
    /// atomically, so that the entries belong to the epoch returned.
    pub(super) async fn fetch(
        &self,
        prefix: &str,
        channel: &ChannelName,
        from: u64,
        to: Option<u64>,
    ) -> Option<Fetched> {
        let names = Names::new(prefix, channel);
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("HMGET").arg(&names.meta).arg("e").arg("s");
        let end = to.map_or_else(|| "+".to_string(), |t| format!("{t}-0"));
        pipe.cmd("XRANGE").arg(&names.stream).arg(format!("{from}-0")).arg(end);
        let mut conn = self.conn.clone();
        let reply: Vec<Value> = match pipe.query_async(&mut conn).await {
            Ok(v) => v,
            Err(e) => {
                self.failed(&e);
                return None;
            }
        };
        let [meta, entries] = reply.as_slice() else { return None };
        let Value::Array(meta) = meta else { return None };
        let epoch = meta.first().and_then(script::as_u64);
        let head = meta.get(1).and_then(script::as_u64).unwrap_or(0);
        let entries = match entries {
            Value::Array(items) => items.iter().filter_map(script::parse_entry).collect(),
            _ => Vec::new(),
        };
        Some(Fetched { epoch, head, entries })
    }
}

/// Opens a pub/sub connection subscribed to every channel of the prefix.
pub(super) async fn subscribe(client: &redis::Client, prefix: &str) -> Result<PubSubStream, String> {
    let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| "pub/sub connection timed out".to_string())?
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(RESPONSE_TIMEOUT, pubsub.psubscribe(script::pattern(prefix)))
        .await
        .map_err(|_| "PSUBSCRIBE timed out".to_string())?
        .map_err(|e| format!("PSUBSCRIBE: {e}"))?;
    Ok(pubsub.into_on_message())
}
