//! Pure: Redis Cluster hash slots, and which master owns which (from `CLUSTER SLOTS`).
//!
//! Written here rather than taken from redis-rs: its `cluster_routing::Slot` computes the
//! slot of a key but does not give the number out, and crier needs the number to group a
//! batch of publishes by slot (one script call per slot, since a script may only touch
//! keys of one slot) and to find, for each master, a probe channel that lands on it.

use redis::Value;

/// Slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// CRC16-XMODEM (polynomial 0x1021, initial value 0), the checksum Redis Cluster uses.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// The slot of a key: the CRC16 of its hash tag (the part between the first `{` and the
/// next `}`, if not empty), else of the whole key, modulo 16384.
pub fn slot_of(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS
}

/// One master and the slot ranges it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Master {
    pub host: String,
    pub port: u16,
    pub ranges: Vec<(u16, u16)>,
}

impl Master {
    pub fn owns(&self, slot: u16) -> bool {
        self.ranges.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }

    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Reads a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, …], replicas…], …]`.
/// Masters come out sorted by address, each once, with all their ranges.
pub fn parse_cluster_slots(v: &Value) -> Option<Vec<Master>> {
    let Value::Array(ranges) = v else { return None };
    let mut masters: Vec<Master> = Vec::new();
    for r in ranges {
        let Value::Array(items) = r else { return None };
        let (start, end) = (as_int(items.first()?)?, as_int(items.get(1)?)?);
        let Value::Array(node) = items.get(2)? else { return None };
        let host = match node.first()? {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok()?,
            Value::SimpleString(s) => s.clone(),
            _ => return None,
        };
        let port = u16::try_from(as_int(node.get(1)?)?).ok()?;
        let (start, end) = (u16::try_from(start).ok()?, u16::try_from(end).ok()?);
        match masters.iter_mut().find(|m| m.host == host && m.port == port) {
            Some(m) => m.ranges.push((start, end)),
            None => masters.push(Master { host, port, ranges: vec![(start, end)] }),
        }
    }
    masters.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
    Some(masters)
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// `redis_version` from an `INFO server` reply, as (major, minor).
pub fn redis_version(info: &str) -> Option<(u32, u32)> {
    let line = info.lines().find_map(|l| l.strip_prefix("redis_version:"))?;
    let mut parts = line.trim().split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"bar"), 5061);
        assert_eq!(slot_of(b"hello"), 866);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"foo{}{bar}"), slot_of(b"foo{}{bar}"), "empty tag: the whole key");
        assert_ne!(slot_of(b"foo{}{bar}"), slot_of(b"bar"));
        assert_eq!(slot_of(b"{crier:a}:m"), slot_of(b"{crier:a}"));
    }

    #[test]
    fn cluster_slots_parse() {
        let node = |h: &str, p: i64| Value::Array(vec![Value::BulkString(h.into()), Value::Int(p)]);
        let range = |a: i64, b: i64, n: Value| Value::Array(vec![Value::Int(a), Value::Int(b), n]);
        let v = Value::Array(vec![
            range(5461, 10922, node("127.0.0.1", 7001)),
            range(0, 5460, node("127.0.0.1", 7000)),
            range(10923, 16383, node("127.0.0.1", 7000)),
        ]);
        let m = parse_cluster_slots(&v).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].port, m[0].ranges.clone()), (7000, vec![(0, 5460), (10923, 16383)]));
        assert!(m[0].owns(16383) && !m[0].owns(5461) && m[1].owns(5461));
        assert_eq!(parse_cluster_slots(&Value::Nil), None);
        assert_eq!(redis_version("# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:0\r\n"), Some((7, 0)));
        assert_eq!(redis_version("nothing"), None);
    }
}
