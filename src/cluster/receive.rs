//! The standalone (`--redis`) session's receiving side: pub/sub messages through the
//! sequencer (gaps read back from the streams first), the resynchronisation at the start of
//! every subscription, the idle probe, and the bounded hand-off to the control thread.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use redis::aio::PubSubStream;

use super::link::{Link, subscribe};
use super::script::{self, Addressed};
use super::sequencer::{Sequencer, Verdict};
use super::{BEHIND_AFTER, DELIVERY_QUEUE, Delivery, PROBE_IDLE, PROBE_TIMEOUT};
use crate::channel::ChannelName;
use crate::ops::metrics::Metrics;
use crate::ws::frame::MessageKind;

/// How often the idle probe is looked at.
const PROBE_TICK: Duration = Duration::from_millis(500);

/// Consumes pub/sub until the session breaks. When the control thread falls behind (see
/// [`deliver`]) it drops the subscription, with whatever redis-rs has buffered for it,
/// waits for the delivery queue to drain, and subscribes again: the resynchronisation at
/// the start of [`listen`] reads what was missed from the streams. Publishing goes on
/// meanwhile, on the session's command connection.
pub(super) async fn receive(
    client: &redis::Client,
    sequencer: &mut Sequencer,
    deliveries: &flume::Sender<Delivery>,
    link: &Link,
    stream: PubSubStream,
    prefix: &str,
    node: u64,
) -> &'static str {
    let mut stream = stream;
    loop {
        let mut current = stream;
        match listen(sequencer, deliveries, link, &mut current, prefix, node).await {
            Err(Behind { channel, seq, epoch }) => {
                link.metrics.redis.fell_behind.fetch_add(1, Relaxed);
                // The resynchronisation reads back the channels the sequencer knows. Make
                // it know every channel whose messages are about to be dropped: the one
                // that did not fit, and those redis-rs has already buffered.
                sequencer.missed(&channel, seq, epoch);
                while let Some(Some(msg)) = current.next().now_or_never() {
                    if let (Addressed::Channel(c), Some(m)) = (
                        script::addressed(prefix, msg.get_channel_name()),
                        script::parse_message(msg.get_payload_bytes()),
                    ) {
                        sequencer.missed(&c, m.seq, m.epoch);
                    }
                }
                // Closes the pub/sub connection: redis-rs stops reading it into its buffer.
                drop(current);
                tracing::warn!(
                    "redis: this node fell behind the messages Redis sends it; re-subscribing and reading the streams"
                );
                while deliveries.len() > DELIVERY_QUEUE / 2 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                stream = match subscribe(client, prefix).await {
                    Ok(s) => s,
                    Err(_) => return "pub/sub reconnect failed",
                };
            }
            Ok(why) => return why,
        }
    }
}

/// The control thread did not take this message within [`BEHIND_AFTER`].
struct Behind {
    channel: ChannelName,
    seq: u64,
    epoch: u64,
}

/// Consumes one subscription: resynchronises first, then delivers in seq order, repairing
/// gaps, and probes when idle. Returns why the subscription (and the session) ended, or
/// `Behind`.
async fn listen(
    sequencer: &mut Sequencer,
    deliveries: &flume::Sender<Delivery>,
    link: &Link,
    stream: &mut PubSubStream,
    prefix: &str,
    node: u64,
) -> Result<&'static str, Behind> {
    let metrics = &link.metrics;
    // Resynchronise: what was published while this node was not subscribed is in the
    // streams. Messages arriving meanwhile wait in the pub/sub stream; the sequencer drops
    // the ones the catch-up already delivered.
    for (channel, pos) in sequencer.positions() {
        let Some(f) = link.fetch(prefix, &channel, pos.seq + 1, None).await else {
            return Ok("resynchronisation failed");
        };
        let f = match f.epoch {
            None => continue, // Redis holds nothing for it; the next message starts an epoch
            Some(e) if e == pos.epoch => f,
            Some(_) => match link.fetch(prefix, &channel, 1, None).await {
                Some(f) => f,
                None => return Ok("resynchronisation failed"),
            },
        };
        let Some(epoch) = f.epoch else { continue };
        repair_from(sequencer, deliveries, metrics, &channel, epoch, f.entries, None).await?;
    }
    let probe_channel = script::probe_channel(prefix, node);
    let mut probe: Option<(String, Instant)> = None;
    let mut probes = 0u64;
    let mut last_heard = Instant::now();
    let mut tick = tokio::time::interval(PROBE_TICK);
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = tick.tick() => {
                match &probe {
                    Some((_, sent)) if sent.elapsed() > PROBE_TIMEOUT => {
                        metrics.redis.probes_failed.fetch_add(1, Relaxed);
                        return Ok("subscription probe did not come back");
                    }
                    None if last_heard.elapsed() > PROBE_IDLE => {
                        probes += 1;
                        let token = format!("{node}:{probes}");
                        let mut cmd = redis::cmd("PUBLISH");
                        cmd.arg(&probe_channel).arg(&token);
                        let l = link.clone();
                        tokio::spawn(async move { l.query(&cmd).await });
                        probe = Some((token, Instant::now()));
                    }
                    _ => {}
                }
                continue;
            }
        };
        let Some(msg) = msg else { return Ok("subscription closed") };
        last_heard = Instant::now();
        match script::addressed(prefix, msg.get_channel_name()) {
            Addressed::Probe(n) if n == node => {
                if probe.as_ref().is_some_and(|(t, _)| t.as_bytes() == msg.get_payload_bytes()) {
                    probe = None;
                }
            }
            Addressed::Probe(_) | Addressed::Foreign => {}
            Addressed::Channel(channel) => {
                let Some(m) = script::parse_message(msg.get_payload_bytes()) else {
                    tracing::warn!("redis: malformed message on {}; ignored", msg.get_channel_name());
                    continue;
                };
                probe = None; // anything heard proves the subscription delivers
                match sequencer.check(&channel, m.seq, m.epoch) {
                    Verdict::Duplicate => {}
                    Verdict::Deliver => {
                        deliver(sequencer, deliveries, &channel, m.seq, m.epoch, m.kind, m.payload).await?
                    }
                    Verdict::Missing { from, to } => {
                        // Read the hole back from the stream before this message goes out.
                        let Some(f) = link.fetch(prefix, &channel, from, Some(to)).await else {
                            return Ok("repair failed");
                        };
                        let entries = if f.epoch == Some(m.epoch) { f.entries } else { Vec::new() };
                        repair_from(sequencer, deliveries, metrics, &channel, m.epoch, entries, Some(to)).await?;
                        deliver(sequencer, deliveries, &channel, m.seq, m.epoch, m.kind, m.payload).await?;
                    }
                }
            }
        }
    }
}

/// Delivers fetched entries that the sequencer still lacks, counting what was repaired and
/// what Redis no longer held (up to `to`, or up to the last entry).
async fn repair_from(
    sequencer: &mut Sequencer,
    deliveries: &flume::Sender<Delivery>,
    metrics: &Metrics,
    channel: &ChannelName,
    epoch: u64,
    entries: Vec<(u64, MessageKind, Bytes)>,
    to: Option<u64>,
) -> Result<(), Behind> {
    let r = sequencer.repair(channel, epoch, entries, to);
    if r.lost > 0 {
        metrics.redis.unrepairable.fetch_add(r.lost, Relaxed);
        tracing::warn!("redis: {} message(s) of {channel} are no longer in its stream", r.lost);
    }
    for (seq, kind, payload) in r.deliver {
        metrics.redis.repaired.fetch_add(1, Relaxed);
        deliver(sequencer, deliveries, channel, seq, epoch, kind, payload).await?;
    }
    Ok(())
}

/// Hands one message to the control thread, waiting up to [`BEHIND_AFTER`] for room in its
/// queue. The message counts as delivered only once queued, so after `Behind` the
/// resynchronisation reads it (and what follows) back from the stream.
async fn deliver(
    sequencer: &mut Sequencer,
    deliveries: &flume::Sender<Delivery>,
    channel: &ChannelName,
    seq: u64,
    epoch: u64,
    kind: MessageKind,
    payload: Bytes,
) -> Result<(), Behind> {
    let d = Delivery { channel: channel.clone(), seq, epoch, kind, payload, received_at: Instant::now() };
    match deliveries.try_send(d) {
        Ok(()) => {}
        Err(flume::TrySendError::Full(d)) => match tokio::time::timeout(BEHIND_AFTER, deliveries.send_async(d)).await {
            Ok(_) => {}
            Err(_) => return Err(Behind { channel: channel.clone(), seq, epoch }),
        },
        // The control thread is gone: the process is exiting.
        Err(flume::TrySendError::Disconnected(_)) => {}
    }
    sequencer.delivered(channel, seq, epoch);
    Ok(())
}
