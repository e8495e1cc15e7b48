//! Pure: the publish script, the names crier uses in Redis, and the wire formats of what
//! Redis sends back (script replies, pub/sub messages, stream entries).
//!
//! Nothing here does IO, so all of it is unit-tested. The script's contract is written in
//! `publish.lua` itself and in the README ("Cluster mode").

use bytes::Bytes;

use crate::channel::ChannelName;
use crate::ws::frame::MessageKind;

/// The publish script (see its header for keys, arguments and reply).
pub const PUBLISH_LUA: &str = include_str!("publish.lua");

/// Names of one channel's keys and pub/sub channel. All three share one hash tag,
/// `{<prefix>:<channel>}`, so they live in one Redis Cluster slot and the script touches
/// one slot only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// Hash with `e` (epoch) and `s` (last seq).
    pub meta: String,
    /// Stream of the channel's recent messages, entry id `<seq>-0`, fields `k` and `d`.
    pub stream: String,
    /// Pub/sub channel every node listens on.
    pub pubsub: String,
}

impl Names {
    pub fn new(prefix: &str, channel: &ChannelName) -> Self {
        let tag = format!("{{{prefix}:{channel}}}");
        Self { meta: format!("{tag}:m"), stream: format!("{tag}:s"), pubsub: tag }
    }
}

/// The pattern matching every crier pub/sub channel of `prefix` (standalone Redis). The
/// prefix is validated to hold no glob characters, so it needs no escaping.
pub fn pattern(prefix: &str) -> String {
    format!("{{{prefix}:*}}")
}

/// The pub/sub channel a node sends its probes to (`~` cannot start a channel name, so
/// it never collides with one).
pub fn probe_channel(prefix: &str, node: u64) -> String {
    format!("{{{prefix}:~probe:{node}}}")
}

/// What a pub/sub channel name stands for.
#[derive(Debug, PartialEq, Eq)]
pub enum Addressed {
    Channel(ChannelName),
    /// A probe sent by `node`.
    Probe(u64),
    /// Not ours (another prefix, or a name crier would not send).
    Foreign,
}

/// Reads a pub/sub channel name back.
pub fn addressed(prefix: &str, name: &str) -> Addressed {
    let Some(inner) = name.strip_prefix('{').and_then(|n| n.strip_suffix('}')) else {
        return Addressed::Foreign;
    };
    let Some(rest) = inner.strip_prefix(prefix).and_then(|r| r.strip_prefix(':')) else {
        return Addressed::Foreign;
    };
    if let Some(node) = rest.strip_prefix("~probe:") {
        return node.parse().map_or(Addressed::Foreign, Addressed::Probe);
    }
    ChannelName::parse(rest).map_or(Addressed::Foreign, Addressed::Channel)
}

/// The kind as the script stores it.
pub fn kind_code(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Text => "t",
        MessageKind::Binary => "b",
    }
}

fn kind_of(code: &[u8]) -> Option<MessageKind> {
    match code {
        b"t" => Some(MessageKind::Text),
        b"b" => Some(MessageKind::Binary),
        _ => None,
    }
}

/// One message as Redis numbered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numbered {
    pub seq: u64,
    pub epoch: u64,
    pub kind: MessageKind,
    pub payload: Bytes,
}

/// Parses a pub/sub message body: `<seq> <epoch> <t|b>\n<payload>`.
pub fn parse_message(body: &[u8]) -> Option<Numbered> {
    let nl = body.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&body[..nl]).ok()?;
    let mut words = head.split(' ');
    let seq = words.next()?.parse().ok()?;
    let epoch = words.next()?.parse().ok()?;
    let kind = kind_of(words.next()?.as_bytes())?;
    if words.next().is_some() {
        return None;
    }
    Some(Numbered { seq, epoch, kind, payload: Bytes::copy_from_slice(&body[nl + 1..]) })
}

/// Parses the script's reply: `[epoch, seq, epoch, seq, …]`, one pair per message.
pub fn parse_reply(v: &redis::Value, messages: usize) -> Option<Vec<(u64, u64)>> {
    let redis::Value::Array(items) = v else { return None };
    if items.len() != 2 * messages {
        return None;
    }
    items.chunks(2).map(|pair| Some((as_u64(&pair[0])?, as_u64(&pair[1])?))).collect()
}

/// An integer reply, or a decimal string reply.
pub fn as_u64(v: &redis::Value) -> Option<u64> {
    match v {
        redis::Value::Int(i) => u64::try_from(*i).ok(),
        redis::Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        redis::Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// One stream entry: id `<seq>-0`, fields `k` (kind) and `d` (payload).
pub fn parse_entry(v: &redis::Value) -> Option<(u64, MessageKind, Bytes)> {
    let redis::Value::Array(pair) = v else { return None };
    let [id, fields] = pair.as_slice() else { return None };
    let id = match id {
        redis::Value::BulkString(b) => std::str::from_utf8(b).ok()?,
        redis::Value::SimpleString(s) => s.as_str(),
        _ => return None,
    };
    let seq = id.strip_suffix("-0")?.parse().ok()?;
    let redis::Value::Array(fields) = fields else { return None };
    let (mut kind, mut data) = (None, None);
    for kv in fields.chunks(2) {
        let [redis::Value::BulkString(k), redis::Value::BulkString(v)] = kv else { return None };
        match k.as_slice() {
            b"k" => kind = kind_of(v),
            b"d" => data = Some(Bytes::copy_from_slice(v)),
            _ => {}
        }
    }
    Some((seq, kind?, data?))
}

/// The read of a channel's meta and its stream entries `from..=to` (`to` None: to the
/// end), in one MULTI so that the entries belong to the epoch read.
pub fn fetch_pipe(names: &Names, from: u64, to: Option<u64>) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.atomic();
    pipe.cmd("HMGET").arg(&names.meta).arg("e").arg("s");
    let end = to.map_or_else(|| "+".to_string(), |t| format!("{t}-0"));
    pipe.cmd("XRANGE").arg(&names.stream).arg(format!("{from}-0")).arg(end);
    pipe
}

/// The read of a channel for a Redis Cluster: the same as [`fetch_pipe`], as one script
/// (EVAL: atomic, and one command, so it can follow a migrating slot's ASK).
pub const FETCH_LUA: &str =
    "return {redis.call('hmget', KEYS[1], 'e', 's'), redis.call('xrange', KEYS[2], ARGV[1], ARGV[2])}";

pub fn fetch_cmd(names: &Names, from: u64, to: Option<u64>) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    let end = to.map_or_else(|| "+".to_string(), |t| format!("{t}-0"));
    cmd.arg(FETCH_LUA).arg(2).arg(&names.meta).arg(&names.stream).arg(format!("{from}-0")).arg(end);
    cmd
}

/// Reads the answer to [`fetch_pipe`] or [`fetch_cmd`]: the epoch (None: Redis holds no state), the last
/// seq, and the entries.
pub fn parse_fetched(reply: &[redis::Value]) -> Option<super::Fetched> {
    let [meta, entries] = reply else { return None };
    let redis::Value::Array(meta) = meta else { return None };
    let epoch = meta.first().and_then(as_u64);
    let head = meta.get(1).and_then(as_u64).unwrap_or(0);
    let entries = match entries {
        redis::Value::Array(items) => items.iter().filter_map(parse_entry).collect(),
        _ => Vec::new(),
    };
    Some(super::Fetched { epoch, head, entries })
}

/// Adds one message's keys and arguments to a script call under construction.
pub fn push_message(
    keys: &mut Vec<String>,
    args: &mut Vec<Bytes>,
    prefix: &str,
    channel: &ChannelName,
    kind: MessageKind,
    payload: Bytes,
) {
    let names = Names::new(prefix, channel);
    keys.push(names.meta);
    keys.push(names.stream);
    args.push(Bytes::from(names.pubsub));
    args.push(Bytes::from_static(kind_code(kind).as_bytes()));
    args.push(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap()
    }

    #[test]
    fn names_share_one_hash_tag() {
        let n = Names::new("crier", &ch("flights"));
        assert_eq!(n.meta, "{crier:flights}:m");
        assert_eq!(n.stream, "{crier:flights}:s");
        assert_eq!(n.pubsub, "{crier:flights}");
        assert_eq!(Names::new("crier", &ch("*")).pubsub, "{crier:*}");
        assert_eq!(pattern("crier"), "{crier:*}");
    }

    #[test]
    fn pubsub_names_read_back() {
        assert_eq!(addressed("crier", "{crier:flights}"), Addressed::Channel(ch("flights")));
        assert_eq!(addressed("crier", "{crier:*}"), Addressed::Channel(ch("*")));
        assert_eq!(addressed("crier", &probe_channel("crier", 42)), Addressed::Probe(42));
        assert_eq!(addressed("crier", "{crier2:flights}"), Addressed::Foreign);
        assert_eq!(addressed("crier", "{crier:bad/name}"), Addressed::Foreign);
        assert_eq!(addressed("crier", "crier:flights"), Addressed::Foreign);
    }

    #[test]
    fn messages_parse() {
        let m = parse_message(b"7 1700000000123456 t\n{\"a\":1}\nmore").unwrap();
        assert_eq!((m.seq, m.epoch, m.kind), (7, 1700000000123456, MessageKind::Text));
        assert_eq!(&m.payload[..], b"{\"a\":1}\nmore");
        assert_eq!(parse_message(b"1 2 b\n").unwrap().kind, MessageKind::Binary);
        for bad in [&b"7 1 t"[..], b"x 1 t\n", b"7 1 q\n", b"7 1 t extra\n", b""] {
            assert_eq!(parse_message(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn replies_and_entries_parse() {
        let v = Value::Array(vec![
            Value::BulkString(b"17".to_vec()),
            Value::Int(3),
            Value::BulkString(b"17".to_vec()),
            Value::Int(4),
        ]);
        assert_eq!(parse_reply(&v, 2), Some(vec![(17, 3), (17, 4)]));
        assert_eq!(parse_reply(&v, 1), None);
        assert_eq!(parse_reply(&Value::Nil, 1), None);
        let e = Value::Array(vec![
            Value::BulkString(b"12-0".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"k".to_vec()),
                Value::BulkString(b"b".to_vec()),
                Value::BulkString(b"d".to_vec()),
                Value::BulkString(vec![0, 1]),
            ]),
        ]);
        assert_eq!(parse_entry(&e), Some((12, MessageKind::Binary, Bytes::from_static(&[0, 1]))));
        let wrong_id = Value::Array(vec![Value::BulkString(b"12-1".to_vec()), Value::Array(vec![])]);
        assert_eq!(parse_entry(&wrong_id), None);
    }

    #[test]
    fn script_declares_its_contract() {
        for word in ["hsetnx", "hincrby", "xadd", "MAXLEN", "pexpire", "spublish"] {
            assert!(PUBLISH_LUA.contains(word), "{word}");
        }
        let (mut keys, mut args) = (Vec::new(), Vec::new());
        push_message(&mut keys, &mut args, "p", &ch("a"), MessageKind::Text, Bytes::from_static(b"x"));
        assert_eq!(keys, ["{p:a}:m", "{p:a}:s"]);
        assert_eq!(args, [Bytes::from_static(b"{p:a}"), Bytes::from_static(b"t"), Bytes::from_static(b"x")]);
    }
}
