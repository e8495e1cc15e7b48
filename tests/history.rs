//! History and resume against the real binary: the `crier.v1` envelope (on and off,
//! compressed and plain), `since=` resumes (nothing missed, some missed, beyond history,
//! another epoch), the replay/live seam under a publisher at full speed while clients
//! reconnect in a loop, `last=N`, TTL expiry, the refusals, and the metrics.

#[macro_use]
mod common;

use common::*;
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const PROTOCOL: (&str, &str) = ("Sec-WebSocket-Protocol", "crier.v1");
const DEFLATE_OFFER: (&str, &str) = ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits");
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);
/// A replay is written at once (not at the shard's next sweep, up to a second later).
const REPLAY_PROMPT: Duration = Duration::from_millis(700);

// ---------------------------------------------------------------------------------------
// The crier.v1 envelope, parsed.
// ---------------------------------------------------------------------------------------

/// One thing a `crier.v1` connection receives.
#[derive(Clone, PartialEq, Eq)]
enum Item {
    /// `m <channel> <seq> <epoch>\n<payload>`
    Msg { channel: String, seq: u64, epoch: u64, payload: Vec<u8>, binary: bool, compressed: bool },
    /// `gap <channel> <from> <to> <epoch>\n`
    Gap { channel: String, from: u64, to: u64, epoch: u64 },
    /// `reset <channel> <epoch>\n`
    Reset { channel: String, epoch: u64 },
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Item::Msg { channel, seq, epoch, payload, binary, compressed } => write!(
                f,
                "m {channel} {seq} {epoch} ({}{}, {} bytes: {:?})",
                if *binary { "binary" } else { "text" },
                if *compressed { ", deflated" } else { "" },
                payload.len(),
                String::from_utf8_lossy(&payload[..payload.len().min(40)])
            ),
            Item::Gap { channel, from, to, epoch } => write!(f, "gap {channel} {from} {to} {epoch}"),
            Item::Reset { channel, epoch } => write!(f, "reset {channel} {epoch}"),
        }
    }
}

impl Item {
    fn channel(&self) -> &str {
        match self {
            Item::Msg { channel, .. } | Item::Gap { channel, .. } | Item::Reset { channel, .. } => channel,
        }
    }
    fn seq(&self) -> u64 {
        match self {
            Item::Msg { seq, .. } => *seq,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

fn num(s: &str, what: &str, whole: &str) -> u64 {
    s.parse().unwrap_or_else(|_| panic!("{what} {s:?} is not a decimal number in envelope header {whole:?}"))
}

/// Parse a frame received on a `crier.v1` connection, checking the documented format.
fn parse_item(m: &Message) -> Item {
    let nl = m.data.iter().position(|&b| b == b'\n').unwrap_or_else(|| panic!("no header line in {m:?}"));
    let header = std::str::from_utf8(&m.data[..nl]).unwrap_or_else(|_| panic!("header is not ASCII in {m:?}"));
    let rest = &m.data[nl + 1..];
    let f: Vec<&str> = header.split(' ').collect();
    match f.as_slice() {
        ["m", channel, seq, epoch] => Item::Msg {
            channel: channel.to_string(),
            seq: num(seq, "seq", header),
            epoch: num(epoch, "epoch", header),
            payload: rest.to_vec(),
            binary: m.is_binary(),
            compressed: m.compressed,
        },
        ["gap", channel, from, to, epoch] => {
            assert!(m.is_text(), "a gap notice must be a text frame: {m:?}");
            assert!(rest.is_empty(), "a gap notice is one line: {m:?}");
            Item::Gap {
                channel: channel.to_string(),
                from: num(from, "from", header),
                to: num(to, "to", header),
                epoch: num(epoch, "epoch", header),
            }
        }
        ["reset", channel, epoch] => {
            assert!(m.is_text(), "a reset notice must be a text frame: {m:?}");
            assert!(rest.is_empty(), "a reset notice is one line: {m:?}");
            Item::Reset { channel: channel.to_string(), epoch: num(epoch, "epoch", header) }
        }
        _ => panic!("unknown envelope header {header:?} in {m:?}"),
    }
}

fn next_item(c: &mut WsClient) -> Item {
    match c.recv(IO_TIMEOUT) {
        Ok(m) => parse_item(&m),
        Err(e) => panic!("expected an envelope or a notice, got {e:?}"),
    }
}

fn items(c: &mut WsClient, n: usize) -> Vec<Item> {
    (0..n).map(|_| next_item(c)).collect()
}

/// A `crier.v1` subscriber (optionally offering permessage-deflate); checks the echo.
fn env_ws(s: &Server, target: &str, deflate: bool) -> WsClient {
    let mut headers = vec![PROTOCOL];
    if deflate {
        headers.push(DEFLATE_OFFER);
    }
    let c =
        WsClient::connect_with(s.ws, target, &headers).unwrap_or_else(|r| panic!("{target}: upgrade refused: {r:?}"));
    assert_eq!(
        c.response.header("sec-websocket-protocol"),
        Some("crier.v1"),
        "the 101 must echo the subprotocol: {:?}",
        c.response
    );
    assert_eq!(c.deflate, deflate, "permessage-deflate negotiation: {:?}", c.response);
    c
}

/// The server's epoch, read from a live envelope on a channel of its own (so it depends on
/// neither `last=` nor history; the probe publish is retried in case the subscription is
/// registered just after the 101).
fn epoch_of(s: &Server) -> u64 {
    let mut c = env_ws(s, "/ws?channels=epoch.probe", false);
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        s.publish("epoch.probe", "probe");
        match c.recv(Duration::from_millis(500)) {
            Ok(m) => match parse_item(&m) {
                Item::Msg { epoch, channel, .. } if channel == "epoch.probe" => return epoch,
                other => panic!("expected the probe message, got {other:?}"),
            },
            Err(WsEnd::Timeout) if Instant::now() < deadline => continue,
            Err(e) => panic!("no probe message in an envelope: {e:?}"),
        }
    }
}

fn payload(channel: &str, seq: u64) -> String {
    format!("{channel}#{seq}")
}

/// Publish text messages so that each payload is `<channel>#<seq>`; returns the last seq.
fn publish_numbered(p: &mut Publisher, channel: &str, from_seq: u64, n: u64) -> u64 {
    let mut last = 0;
    for seq in from_seq..from_seq + n {
        let got = p.publish(channel, payload(channel, seq).as_bytes(), false);
        assert_eq!(got, seq, "publisher got another seq than expected on {channel}");
        last = got;
    }
    last
}

/// Assert `it` is message `seq` of `channel` in `epoch`, as published by `publish_numbered`.
fn assert_msg(it: &Item, channel: &str, seq: u64, epoch: u64) {
    match it {
        Item::Msg { channel: c, seq: s, epoch: e, payload: p, binary: false, .. }
            if c == channel && *s == seq && *e == epoch && p == payload(channel, seq).as_bytes() => {}
        other => panic!("expected m {channel} {seq} {epoch} with payload {:?}, got {other:?}", payload(channel, seq)),
    }
}

/// Split what arrived per channel (order between channels is not specified).
fn per_channel(items: &[Item]) -> HashMap<String, Vec<Item>> {
    let mut m: HashMap<String, Vec<Item>> = HashMap::new();
    for it in items {
        m.entry(it.channel().to_string()).or_default().push(it.clone());
    }
    m
}

fn seqs(items: &[Item]) -> Vec<u64> {
    items.iter().map(Item::seq).collect()
}

// ---------------------------------------------------------------------------------------
// Resume.
// ---------------------------------------------------------------------------------------

both_drivers! {
    /// Resuming at the last seq seen replays nothing, reports nothing, and continues live.
    fn resume_with_nothing_missed(d) {
        let s = Server::start(d);
        let epoch = epoch_of(&s);
        let mut p = s.publisher();
        publish_numbered(&mut p, "a", 1, 3);
        let unsatisfied0 = s.metric0("crier_resumes_unsatisfied_total", &[]);
        let mut c = env_ws(&s, &format!("/ws?channels=a&since={epoch}:3"), false);
        c.expect_silence(QUIET);
        publish_numbered(&mut p, "a", 4, 1);
        assert_msg(&next_item(&mut c), "a", 4, epoch);
        c.expect_silence(QUIET);
        assert_eq!(s.metric0("crier_resumes_unsatisfied_total", &[]), unsatisfied0);
    }

    /// Everything after the given seqs is replayed once, in order, per channel, then live;
    /// text and binary keep their frame type in the envelope.
    fn resume_with_some_missed(d) {
        let s = Server::start(d);
        let epoch = epoch_of(&s);
        let mut p = s.publisher();
        publish_numbered(&mut p, "a", 1, 10);
        let bins: Vec<Vec<u8>> = (1..=10u64).map(|i| random_bytes(i, 20 + i as usize)).collect();
        for (i, b) in bins.iter().enumerate() {
            assert_eq!(p.publish("b", b, true), i as u64 + 1);
        }
        let t0 = Instant::now();
        let mut c = env_ws(&s, &format!("/ws?channels=a,b&since={epoch}:4,7"), false);
        let got = per_channel(&items(&mut c, 6 + 3));
        assert!(t0.elapsed() < REPLAY_PROMPT, "the replay took {:?}: it must be sent at once", t0.elapsed());
        let a = &got["a"];
        assert_eq!(seqs(a), (5..=10).collect::<Vec<_>>(), "channel a replay: {a:?}");
        for it in a {
            assert_msg(it, "a", it.seq(), epoch);
        }
        let b = &got["b"];
        assert_eq!(seqs(b), vec![8, 9, 10], "channel b replay: {b:?}");
        for it in b {
            let Item::Msg { payload, binary, epoch: e, .. } = it else { unreachable!() };
            assert!(*binary, "binary publish must arrive in a binary frame: {it:?}");
            assert_eq!(*e, epoch);
            assert_eq!(payload, &bins[it.seq() as usize - 1], "binary payload of {it:?}");
        }
        c.expect_silence(QUIET);
        publish_numbered(&mut p, "a", 11, 1);
        assert_msg(&next_item(&mut c), "a", 11, epoch);
        c.expect_silence(QUIET);
    }

    /// With `--history-messages 5`, asking for more than is held gets a gap notice first,
    /// naming exactly what is lost, then the 5 held messages.
    fn resume_beyond_history(d) {
        let s = Server::builder(d).args(["--history-messages", "5"]).start();
        let epoch = epoch_of(&s);
        let mut p = s.publisher();
        publish_numbered(&mut p, "a", 1, 12);
        publish_numbered(&mut p, "b", 1, 3);
        let gaps0 = s.metric0("crier_resumes_unsatisfied_total", &[("reason", "gap")]);

        let mut c = env_ws(&s, &format!("/ws?channels=a&since={epoch}:2"), false);
        assert_eq!(
            next_item(&mut c),
            Item::Gap { channel: "a".into(), from: 3, to: 7, epoch },
            "the gap notice must come first and name 3..=7"
        );
        for seq in 8..=12 {
            assert_msg(&next_item(&mut c), "a", seq, epoch);
        }
        c.expect_silence(QUIET);

        // From the start (seq 0), on two channels: a lost 1..=7; b is whole (no notice).
        let mut c = env_ws(&s, &format!("/ws?channels=b,a&since={epoch}:0,0"), false);
        let got = per_channel(&items(&mut c, 1 + 5 + 3));
        assert_eq!(got["a"][0], Item::Gap { channel: "a".into(), from: 1, to: 7, epoch });
        assert_eq!(seqs(&got["a"][1..]), (8..=12).collect::<Vec<_>>());
        assert_eq!(seqs(&got["b"]), vec![1, 2, 3], "b is held whole: no gap");
        c.expect_silence(QUIET);
        publish_numbered(&mut p, "a", 13, 1);
        assert_msg(&next_item(&mut c), "a", 13, epoch);

        s.wait_metric("crier_resumes_unsatisfied_total", &[("reason", "gap")], IO_TIMEOUT, "+2", |v| v - gaps0 == 2.0);
    }

    /// Another epoch (a client from before a restart): reset first, then all that is held.
    fn resume_with_another_epoch(d) {
        let s = Server::builder(d).args(["--history-messages", "5"]).start();
        let epoch = epoch_of(&s);
        let mut p = s.publisher();
        publish_numbered(&mut p, "a", 1, 3);
        let resets0 = s.metric0("crier_resumes_unsatisfied_total", &[("reason", "reset")]);
        let stale = epoch - 1;
        let mut c = env_ws(&s, &format!("/ws?channels=a,quiet&since={stale}:40,7"), false);
        let got = per_channel(&items(&mut c, 2 + 3));
        assert_eq!(got["a"][0], Item::Reset { channel: "a".into(), epoch }, "reset must come first: {got:?}");
        for (i, it) in got["a"][1..].iter().enumerate() {
            assert_msg(it, "a", i as u64 + 1, epoch);
        }
        assert_eq!(got["quiet"], vec![Item::Reset { channel: "quiet".into(), epoch }]);
        c.expect_silence(QUIET);
        publish_numbered(&mut p, "a", 4, 1);
        assert_msg(&next_item(&mut c), "a", 4, epoch);
        s.wait_metric("crier_resumes_unsatisfied_total", &[("reason", "reset")], IO_TIMEOUT, "+1", |v| {
            v - resets0 >= 1.0
        });
    }

    /// `last=N`: the N latest held messages of each channel, then live; with and without
    /// the envelope.
    fn last_n(d) {
        let s = Server::start(d);
        let epoch = epoch_of(&s);
        let mut p = s.publisher();
        publish_numbered(&mut p, "a", 1, 10);
        publish_numbered(&mut p, "b", 1, 2);

        let t0 = Instant::now();
        let mut c = env_ws(&s, "/ws?channels=a,b&last=4", false);
        let got = per_channel(&items(&mut c, 4 + 2));
        assert!(t0.elapsed() < REPLAY_PROMPT, "the replay took {:?}: it must be sent at once", t0.elapsed());
        assert_eq!(
            seqs(&got["a"]),
            vec![7, 8, 9, 10],
            "last=4 after 10 acknowledged publishes must give exactly 7..=10 first"
        );
        assert_eq!(seqs(&got["b"]), vec![1, 2], "b holds only 2");
        for it in got.values().flatten() {
            assert_msg(it, it.channel(), it.seq(), epoch);
        }
        c.expect_silence(QUIET);

        // Bare payloads without crier.v1.
        let mut bare = s.ws("/ws?channels=a&last=3");
        assert_eq!(bare.response.header("sec-websocket-protocol"), None);
        for seq in 8..=10 {
            assert_eq!(bare.expect_text(), payload("a", seq));
        }
        bare.expect_silence(QUIET);

        // last=0 and no last: nothing but live.
        let mut none = env_ws(&s, "/ws?channels=a&last=0", false);
        none.expect_silence(QUIET);
        publish_numbered(&mut p, "a", 11, 1);
        assert_msg(&next_item(&mut c), "a", 11, epoch);
        assert_msg(&next_item(&mut none), "a", 11, epoch);
        assert_eq!(bare.expect_text(), payload("a", 11));
    }
}

// ---------------------------------------------------------------------------------------
// TTL.
// ---------------------------------------------------------------------------------------

both_drivers! {
    /// Messages older than `--history-ttl` are gone: a resume from 0 gets a gap naming
    /// them, `last=N` gets nothing; a fresh publish is held again.
    fn ttl_expiry(d) {
        let s = Server::builder(d).args(["--history-ttl", "1s"]).start();
        let epoch = epoch_of(&s);
        let mut p = s.publisher();
        publish_numbered(&mut p, "a", 1, 3);
        let published = Instant::now();
        // Held at first (well within the TTL).
        let mut c = env_ws(&s, &format!("/ws?channels=a&since={epoch}:0"), false);
        let first = items(&mut c, 3);
        if published.elapsed() < Duration::from_millis(800) {
            assert_eq!(seqs(&first), vec![1, 2, 3], "held before the TTL: {first:?}");
        }
        drop(c);
        // Let the TTL elapse; then poll (expiry may be swept lazily).
        std::thread::sleep(Duration::from_millis(1100));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut c = env_ws(&s, &format!("/ws?channels=a&since={epoch}:0"), false);
            let it = next_item(&mut c);
            if it == (Item::Gap { channel: "a".into(), from: 1, to: 3, epoch }) {
                c.expect_silence(QUIET);
                break;
            }
            assert!(Instant::now() < deadline, "expired messages still replayed 10 s after the TTL: {it:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut c = env_ws(&s, "/ws?channels=a&last=5", false);
            match c.recv(QUIET) {
                Err(WsEnd::Timeout) => break,
                Ok(m) => {
                    let it = parse_item(&m);
                    assert!(Instant::now() < deadline, "last=5 still replays expired messages: {it:?}");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("last=5 after the TTL: {e:?}"),
            }
        }
        // A new message is held again, and a resume from 3 gets it without a gap.
        publish_numbered(&mut p, "a", 4, 1);
        let mut c = env_ws(&s, &format!("/ws?channels=a&since={epoch}:3"), false);
        assert_msg(&next_item(&mut c), "a", 4, epoch);
        c.expect_silence(QUIET);
    }
}

// ---------------------------------------------------------------------------------------
// The envelope: on and off, compressed and plain.
// ---------------------------------------------------------------------------------------

both_drivers! {
    /// Four kinds of subscriber on one channel: {crier.v1, bare} × {deflate, plain}. Each
    /// gets every message, in its own format; the envelope frame is built once per message.
    fn envelope_on_and_off_compressed_and_plain(d) {
        let s = Server::start(d);
        let epoch = epoch_of(&s);
        const EACH: usize = 5;
        let mut env_z: Vec<WsClient> = (0..EACH).map(|_| env_ws(&s, "/ws?channels=board", true)).collect();
        let mut env_p: Vec<WsClient> = (0..EACH).map(|_| env_ws(&s, "/ws?channels=board", false)).collect();
        let mut bare_z: Vec<WsClient> = (0..EACH).map(|_| s.ws_deflate("/ws?channels=board")).collect();
        let mut bare_p: Vec<WsClient> = (0..EACH).map(|_| s.ws("/ws?channels=board")).collect();
        // A client asking for another subprotocol only is not answered with one.
        let mut other = WsClient::connect_with(s.ws, "/ws?channels=board", &[("Sec-WebSocket-Protocol", "chat")])
            .unwrap_or_else(|r| panic!("upgrade refused: {r:?}"));
        assert_eq!(other.response.header("sec-websocket-protocol"), None, "{:?}", other.response);
        s.wait_connections(4 * EACH + 1);

        // Compressible text, incompressible binary, short text (not worth deflating).
        let msgs: Vec<(Vec<u8>, bool)> = vec![
            (compressible_text(2000).into_bytes(), false),
            (random_bytes(7, 3000), true),
            ("é court".as_bytes().to_vec(), false),
            (compressible_text(5000).into_bytes(), true),
        ];
        let enc0 = s.metric0("crier_frames_encoded_total", &[]);
        let z0 = s.metric0("crier_compressions_total", &[]);
        let mut p = s.publisher();
        for (i, (data, binary)) in msgs.iter().enumerate() {
            assert_eq!(p.publish("board", data, *binary), i as u64 + 1);
        }
        for (i, (data, binary)) in msgs.iter().enumerate() {
            let seq = i as u64 + 1;
            let compressible = i == 0 || i == 3;
            for (k, c) in env_z.iter_mut().chain(env_p.iter_mut()).enumerate() {
                let deflated = k < EACH;
                let m = c.expect_msg();
                assert_eq!(m.is_binary(), *binary, "envelope keeps the frame type: {m:?}");
                assert_eq!(m.compressed, deflated && compressible, "RSV1 of message {seq} to envelope client {k}");
                let want = [format!("m board {seq} {epoch}\n").into_bytes(), data.clone()].concat();
                assert!(m.data == want, "envelope client {k}, message {seq}: got {m:?}");
            }
            for (k, c) in bare_z.iter_mut().chain(bare_p.iter_mut()).chain([&mut other]).enumerate() {
                let deflated = k < EACH;
                let m = c.expect_msg();
                assert_eq!(m.is_binary(), *binary);
                assert_eq!(m.compressed, deflated && compressible, "RSV1 of message {seq} to bare client {k}");
                assert!(&m.data == data, "bare client {k}, message {seq}: got {m:?}");
            }
        }
        let enc = s.metric0("crier_frames_encoded_total", &[]) - enc0;
        let z = s.metric0("crier_compressions_total", &[]) - z0;
        let n = msgs.len() as f64;
        assert_eq!(enc, 2.0 * n, "each message framed once bare and once in the envelope, for all subscribers");
        assert!(z <= 2.0 * n, "each frame compressed at most once: {z} compressions for {n} messages");
    }

    /// `since=` without crier.v1 is refused with 400 (a bare client could not be told of
    /// a gap); so is a `since=` with the wrong number of seqs or a bad `last`.
    fn resume_refusals(d) {
        let s = Server::start(d);
        let refused0 = s.metric0("crier_connections_refused_total", &[("reason", "bad_request")]);
        let r = WsClient::connect_with(s.ws, "/ws?channels=a&since=1:0", &[])
            .err()
            .expect("since= without crier.v1 must be refused");
        assert_eq!(r.status, 400, "{r:?}");
        assert!(r.body_text().contains("crier.v1"), "the body must say why: {r:?}");
        let bad = ["channels=a,b&since=1:0", "channels=a&since=x:0", "channels=a&since=1", "channels=a&last=x"];
        for query in bad {
            let target = format!("/ws?{query}");
            let target = target.as_str();
            let r = WsClient::connect_with(s.ws, target, &[PROTOCOL])
                .err()
                .unwrap_or_else(|| panic!("{target} must be refused"));
            assert_eq!(r.status, 400, "{target}: {r:?}");
        }
        let refused = s.metric0("crier_connections_refused_total", &[("reason", "bad_request")]) - refused0;
        assert_eq!(refused, 5.0);
        s.assert_serving();
    }

    /// The replay metrics count what was served.
    fn replay_metrics(d) {
        let s = Server::builder(d).args(["--history-messages", "5"]).start();
        let epoch = epoch_of(&s);
        let mut p = s.publisher();
        publish_numbered(&mut p, "a", 1, 8);
        let replays = || s.metric0("crier_replays_total", &[]);
        let replayed = || s.metric0("crier_messages_replayed_total", &[]);
        let gaps = || s.metric0("crier_resumes_unsatisfied_total", &[("reason", "gap")]);
        let resets = || s.metric0("crier_resumes_unsatisfied_total", &[("reason", "reset")]);
        let (r0, m0, g0, x0) = (replays(), replayed(), gaps(), resets());

        // Two missed, held: one replay of two messages.
        let mut c = env_ws(&s, &format!("/ws?channels=a&since={epoch}:6"), false);
        assert_eq!(seqs(&items(&mut c, 2)), vec![7, 8]);
        s.wait_metric("crier_messages_replayed_total", &[], IO_TIMEOUT, "+2", |v| v - m0 == 2.0);
        assert_eq!(replays() - r0, 1.0);
        // Beyond history: a gap, five replayed.
        let mut c = env_ws(&s, &format!("/ws?channels=a&since={epoch}:1"), false);
        assert!(matches!(next_item(&mut c), Item::Gap { from: 2, to: 3, .. }));
        items(&mut c, 5);
        s.wait_metric("crier_messages_replayed_total", &[], IO_TIMEOUT, "+7", |v| v - m0 == 7.0);
        assert_eq!(replays() - r0, 2.0);
        assert_eq!(gaps() - g0, 1.0);
        // Another epoch: a reset, five replayed.
        let mut c = env_ws(&s, &format!("/ws?channels=a&since={}:8", epoch + 1), false);
        assert!(matches!(next_item(&mut c), Item::Reset { .. }));
        items(&mut c, 5);
        s.wait_metric("crier_messages_replayed_total", &[], IO_TIMEOUT, "+12", |v| v - m0 == 12.0);
        assert_eq!(replays() - r0, 3.0);
        assert_eq!(resets() - x0, 1.0);
        // last=3: a replay of three.
        let mut c = env_ws(&s, "/ws?channels=a&last=3", false);
        items(&mut c, 3);
        s.wait_metric("crier_messages_replayed_total", &[], IO_TIMEOUT, "+15", |v| v - m0 == 15.0);
        assert_eq!(replays() - r0, 4.0);
        assert_eq!(gaps() - g0, 1.0, "no other resume was unsatisfied");
        assert_eq!(resets() - x0, 1.0, "no other resume was unsatisfied");
    }
}

// ---------------------------------------------------------------------------------------
// A real restart: the epoch changes and an old position is answered with a reset.
// ---------------------------------------------------------------------------------------

#[test]
fn restart_changes_the_epoch() {
    let sock = TempDir::new();
    let path = sock.join("p.sock");
    let mut s = Server::builder(Driver::Epoll).publish_socket(&path).start();
    let old = epoch_of(&s);
    publish_numbered(&mut s.publisher(), "a", 1, 4);
    let mut c = env_ws(&s, &format!("/ws?channels=a&since={old}:4"), false);
    s.sigterm();
    assert_eq!(c.expect_close(IO_TIMEOUT), Some(1001), "SIGTERM closes clients with 1001");
    assert!(s.wait_exit(Duration::from_secs(10)).is_some_and(|st| st.success()), "crier did not exit 0 on SIGTERM");

    let s = Server::builder(Driver::Epoll).publish_socket(&path).start();
    publish_numbered(&mut s.publisher(), "a", 1, 2);
    let mut c = env_ws(&s, &format!("/ws?channels=a&since={old}:4"), false);
    let Item::Reset { channel, epoch: new } = next_item(&mut c) else { panic!("expected a reset notice first") };
    assert_eq!(channel, "a");
    assert_ne!(new, old, "a restarted crier must have another epoch");
    assert_msg(&next_item(&mut c), "a", 1, new);
    assert_msg(&next_item(&mut c), "a", 2, new);
    c.expect_silence(QUIET);
}

// ---------------------------------------------------------------------------------------
// The replay/live seam under load.
// ---------------------------------------------------------------------------------------

both_drivers! {
    /// A publisher runs at full speed on two channels while 20 clients reconnect in a loop
    /// with `since=`: every client's sequence numbers are contiguous on each channel from
    /// its first message to the very last published, without a duplicate.
    fn seam_under_full_speed_publishing(d) {
        seam(d, Duration::from_secs(4), 20, false, 1024);
    }
}

/// The same with permessage-deflate clients, so replayed and live envelopes are the
/// compressed frames. (Compressing makes a debug build publish far slower, hence apart.)
#[test]
fn seam_with_compression() {
    seam(Driver::Epoll, Duration::from_secs(3), 6, true, 64);
}

const SEAM_CHANNELS: [&str; 2] = ["seam.a", "seam.b"];
/// Per channel, at most this many publishes: history holds them all, so a lagging client
/// never legitimately meets a gap, and the clients can catch up in bounded time.
const SEAM_MAX_PER_CHANNEL: u64 = 60_000;
/// The publisher goes flat out for a burst (`burst` messages), then pauses so that 20
/// debug-build clients on two cores can catch up and reconnect into the next burst.
const SEAM_PAUSE: Duration = Duration::from_millis(40);

/// What the publisher and the clients share.
struct SeamState {
    /// Per channel, the last seq the publisher has been answered for.
    published: [AtomicU64; 2],
    done: AtomicBool,
    /// Connections that had a backlog replayed and then went on with live messages
    /// (published after their 101) while the publisher ran: each crossed the seam.
    crossings: AtomicU64,
}

fn seam(d: Driver, publish_for: Duration, clients: usize, deflate: bool, burst: u64) {
    let s = Arc::new(
        Server::builder(d)
            .args(["--history-messages", "100000", "--history-bytes", "64MiB", "--max-queue-bytes", "16MiB"])
            .start(),
    );
    let epoch = epoch_of(&s);
    let mut p = s.publisher();
    let st = Arc::new(SeamState {
        published: [AtomicU64::new(0), AtomicU64::new(0)],
        done: AtomicBool::new(false),
        crossings: AtomicU64::new(0),
    });

    let workers: Vec<_> = (0..clients)
        .map(|k| {
            let (s, st) = (s.clone(), st.clone());
            std::thread::spawn(move || seam_client(&s, k, epoch, deflate, &st))
        })
        .collect();

    // Flat out, pipelined: batches of 64 commands, then their replies.
    const BATCH: u64 = 64;
    let start = Instant::now();
    let mut last = [0u64, 0u64];
    while start.elapsed() < publish_for && last[1] < SEAM_MAX_PER_CHANNEL {
        for _ in 0..burst / BATCH {
            let mut buf = Vec::with_capacity(BATCH as usize * 40);
            for i in 0..BATCH {
                let ch = SEAM_CHANNELS[(i % 2) as usize];
                buf.extend_from_slice(&pub_command(ch, format!("{:08}", last[0] + i).as_bytes(), Some("text")));
            }
            p.send(&buf).expect("publish batch");
            for i in 0..BATCH {
                last[(i % 2) as usize] = parse_ok(&p.expect_line());
            }
            st.published[0].store(last[0], Ordering::SeqCst);
            st.published[1].store(last[1], Ordering::SeqCst);
        }
        std::thread::sleep(SEAM_PAUSE);
    }
    let published = start.elapsed();
    st.done.store(true, Ordering::SeqCst);
    let crossings_while_publishing = st.crossings.load(Ordering::SeqCst);

    let mut connections = 0;
    let mut slow = 0;
    for (k, w) in workers.into_iter().enumerate() {
        let (c, sl) = w.join().unwrap_or_else(|_| panic!("client {k} failed (see its panic above)"));
        connections += c;
        slow += sl;
    }
    eprintln!(
        "seam: {} messages published in {published:?}; {connections} connections, \
         {crossings_while_publishing} crossed the seam while publishing, {slow} slow-consumer closes",
        last[0] + last[1]
    );
    assert!(
        crossings_while_publishing >= 2 * clients as u64,
        "too few connections went from replay to live while publishing ({crossings_while_publishing}): \
         the seam was not exercised"
    );
}

/// One client: connect with `since=`, read until the replay has given way to live
/// messages and a few more, cut the connection (TCP close, or a close frame first),
/// reconnect; once the publisher has stopped, read up to its last seqs. Returns
/// (connections, slow-consumer closes).
fn seam_client(s: &Server, k: usize, epoch: u64, deflate: bool, st: &SeamState) -> (usize, usize) {
    // Half the clients list the channels the other way round (since= follows that order).
    let order: Vec<usize> = if k.is_multiple_of(2) { vec![0, 1] } else { vec![1, 0] };
    let names: Vec<&str> = order.iter().map(|&i| SEAM_CHANNELS[i]).collect();
    let published = || [st.published[0].load(Ordering::SeqCst), st.published[1].load(Ordering::SeqCst)];
    let mut last = [0u64, 0u64];
    let mut rng = 0x2545_F491_4F6C_DD1Du64 ^ (k as u64 + 1).wrapping_mul(0x9E37_79B9);
    let mut connections = 0;
    let mut slow = 0;
    loop {
        let since: Vec<String> = order.iter().map(|&i| last[i].to_string()).collect();
        let target = format!("/ws?channels={}&since={epoch}:{}", names.join(","), since.join(","));
        let before = published();
        let mut c = SeamReader::new(env_ws(s, &target, deflate), epoch);
        let after = published();
        let finishing = st.done.load(Ordering::SeqCst);
        connections += 1;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // The replay is over once the client holds everything published before it
        // connected; the seam is crossed when a live message (published after the 101)
        // follows. Only a connection that had something to replay counts as a crossing.
        let had_backlog = (0..2).any(|i| before[i] > last[i]);
        let mut crossed = false;
        let mut extra = (rng % 50) as usize;
        let mut idle_since = Instant::now();
        loop {
            if st.done.load(Ordering::SeqCst) && (0..2).all(|i| last[i] >= st.published[i].load(Ordering::SeqCst)) {
                return (connections, slow);
            }
            if crossed && !st.done.load(Ordering::SeqCst) {
                if extra == 0 {
                    break;
                }
                extra -= 1;
            }
            let (i, seq) = match c.next(Duration::from_millis(200)) {
                Ok(m) => m,
                Err(WsEnd::Timeout) => {
                    assert!(
                        idle_since.elapsed() < IO_TIMEOUT,
                        "client {k}: nothing for {IO_TIMEOUT:?} on {target}; at {last:?}, published {:?}",
                        published()
                    );
                    continue;
                }
                Err(WsEnd::Close(Some(1008), _)) => {
                    // Too far behind: the server cut it as a slow consumer. Resume.
                    slow += 1;
                    break;
                }
                Err(e) => panic!("client {k}: connection {connections} ({target}) ended: {e:?}; at {last:?}"),
            };
            idle_since = Instant::now();
            let ch = SEAM_CHANNELS[i];
            assert!(seq > last[i], "client {k}: duplicate on {ch}: {seq} after {} ({target})", last[i]);
            assert_eq!(seq, last[i] + 1, "client {k}: hole on {ch}: {seq} after {} ({target})", last[i]);
            last[i] = seq;
            if !crossed && seq > after[i] && (0..2).all(|j| last[j] >= before[j]) {
                crossed = true;
                if had_backlog && !finishing {
                    st.crossings.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        let mut c = c.into_inner();
        if rng.is_multiple_of(2) {
            let _ = c.write_all(&encode_frame(true, 0, OP_CLOSE, &1000u16.to_be_bytes(), Some([1, 2, 3, 4])));
        }
        drop(c);
        // Stay away a little, so that the next connection has a backlog to replay.
        std::thread::sleep(Duration::from_millis(rng % 20));
    }
}

/// A lean reader of `m seam.<x> <seq> <epoch>` envelopes: the seam clients must keep up
/// with a publisher at full speed, in a debug build, twenty at a time on two cores.
struct SeamReader {
    stream: std::net::TcpStream,
    buf: Vec<u8>,
    pos: usize,
    deflate: bool,
    epoch: Vec<u8>,
}

impl SeamReader {
    fn new(c: WsClient, epoch: u64) -> SeamReader {
        let deflate = c.deflate;
        let (stream, buf) = c.into_parts();
        SeamReader { stream, buf, pos: 0, deflate, epoch: epoch.to_string().into_bytes() }
    }

    fn into_inner(self) -> std::net::TcpStream {
        self.stream
    }

    /// The next message: (channel index, seq). Pings are skipped.
    fn next(&mut self, timeout: Duration) -> Result<(usize, u64), WsEnd> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((op, rsv1, range)) = self.frame()? {
                match op {
                    OP_TEXT => return Ok(self.envelope(rsv1, range)),
                    OP_CLOSE => {
                        let p = &self.buf[range];
                        return Err(WsEnd::Close(
                            (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]])),
                            String::new(),
                        ));
                    }
                    OP_PING | OP_PONG => continue,
                    other => return Err(WsEnd::Protocol(format!("unexpected opcode {other:#x}"))),
                }
            }
            self.fill(deadline)?;
        }
    }

    /// One complete frame in the buffer: (opcode, RSV1, payload range).
    fn frame(&mut self) -> Result<Option<(u8, bool, std::ops::Range<usize>)>, WsEnd> {
        let b = &self.buf[self.pos..];
        if b.len() < 2 {
            return Ok(None);
        }
        if b[0] & 0x80 == 0 || b[1] & 0x80 != 0 {
            return Err(WsEnd::Protocol(format!("fragmented or masked frame: {:#x} {:#x}", b[0], b[1])));
        }
        let (len, head) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
            126 | 127 => return Ok(None),
            n => (n as usize, 2),
        };
        if b.len() < head + len {
            return Ok(None);
        }
        let start = self.pos + head;
        self.pos = start + len;
        Ok(Some((b[0] & 0x0f, b[0] & 0x40 != 0, start..start + len)))
    }

    fn fill(&mut self, deadline: Instant) -> Result<(), WsEnd> {
        use std::io::Read;
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(WsEnd::Timeout);
        }
        self.stream.set_read_timeout(Some(left)).unwrap();
        let n = self.buf.len();
        self.buf.resize(n + 256 * 1024, 0);
        let r = self.stream.read(&mut self.buf[n..]);
        let got = *r.as_ref().unwrap_or(&0);
        self.buf.truncate(n + got);
        match r {
            Ok(0) => Err(WsEnd::Eof),
            Ok(_) => Ok(()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                Err(WsEnd::Timeout)
            }
            Err(e) => Err(WsEnd::Io(e)),
        }
    }

    fn envelope(&mut self, rsv1: bool, range: std::ops::Range<usize>) -> (usize, u64) {
        let inflated;
        let p: &[u8] = if rsv1 {
            assert!(self.deflate, "RSV1 without permessage-deflate");
            inflated = inflate_raw(&self.buf[range]);
            &inflated
        } else {
            &self.buf[range]
        };
        let bad = || panic!("not a seam envelope: {:?}", String::from_utf8_lossy(&p[..p.len().min(60)]));
        // "m seam.a 123 <epoch>\n<payload>"
        if !p.starts_with(b"m seam.") || p.len() < 10 {
            bad();
        }
        let i = match p[7] {
            b'a' => 0,
            b'b' => 1,
            _ => bad(),
        };
        let mut at = 9;
        let mut seq = 0u64;
        while at < p.len() && p[at].is_ascii_digit() {
            seq = seq * 10 + u64::from(p[at] - b'0');
            at += 1;
        }
        if at == 9 || p.get(at) != Some(&b' ') {
            bad();
        }
        let nl = p[at..].iter().position(|&c| c == b'\n').unwrap_or_else(bad) + at;
        assert!(p[at + 1..nl] == self.epoch[..], "epoch changed: {:?}", String::from_utf8_lossy(&p[..nl]));
        (i, seq)
    }
}
