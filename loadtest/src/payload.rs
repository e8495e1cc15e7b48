//! Message payloads: an ASCII header `seq,unix_nanos,` padded with `x` to the requested
//! size. The timestamp is the message's *scheduled* publish time, so a stalled server
//! (or a publisher write that blocks on it) shows up as latency instead of silently
//! shifting the timetable.

/// Width of a unix-nanosecond timestamp for the next few centuries.
const TS_DIGITS: usize = 19;

/// Bytes the header takes for sequence numbers up to `max_seq`.
pub fn header_len(max_seq: u64) -> usize {
    digits(max_seq.max(1)) + 1 + TS_DIGITS + 1
}

fn digits(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 10 {
        v /= 10;
        n += 1;
    }
    n
}

/// Writes the payload for `seq` sent at `unix_ns` into `out` (cleared first). The result is
/// exactly `size` bytes unless the header alone is longer.
pub fn encode_into(out: &mut Vec<u8>, seq: u64, unix_ns: u64, size: usize) {
    use std::io::Write;
    out.clear();
    // Fixed-width timestamp keeps the header length independent of the clock.
    write!(out, "{seq},{unix_ns:0TS_DIGITS$},").expect("write to Vec");
    if out.len() < size {
        out.resize(size, b'x');
    }
}

/// Bytes the header of the `channels` workload takes:
/// `seq,unix_nanos,channel,channel_seq,` (the last two in digits of up to `channels` − 1 and
/// `max_seq`).
pub fn channel_header_len(max_seq: u64, channels: u32) -> usize {
    header_len(max_seq) + digits(u64::from(channels.max(1) - 1)) + 1 + digits(max_seq.max(1)) + 1
}

/// The `channels` workload's payload: the broadcast header followed by the channel's index
/// and the message's sequence number within that channel.
pub fn encode_channel_into(out: &mut Vec<u8>, seq: u64, unix_ns: u64, channel: u32, chseq: u64, size: usize) {
    use std::io::Write;
    out.clear();
    write!(out, "{seq},{unix_ns:0TS_DIGITS$},{channel},{chseq},").expect("write to Vec");
    if out.len() < size {
        out.resize(size, b'x');
    }
}

/// Reads `(seq, unix_ns, channel, channel_seq)` from a `channels` workload payload.
pub fn decode_channel(payload: &[u8]) -> Option<(u64, u64, u32, u64)> {
    let (seq, rest) = parse_num(payload)?;
    let (ts, rest) = parse_num(rest)?;
    let (ch, rest) = parse_num(rest)?;
    let (chseq, _) = parse_num(rest)?;
    Some((seq, ts, u32::try_from(ch).ok()?, chseq))
}

#[cfg(test)]
pub fn encode(seq: u64, unix_ns: u64, size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(size);
    encode_into(&mut v, seq, unix_ns, size);
    v
}

/// Reads `(seq, unix_ns)` from the start of a payload.
pub fn decode(payload: &[u8]) -> Option<(u64, u64)> {
    let (seq, rest) = parse_num(payload)?;
    let (ts, _) = parse_num(rest)?;
    Some((seq, ts))
}

fn parse_num(b: &[u8]) -> Option<(u64, &[u8])> {
    let mut v: u64 = 0;
    for (i, &c) in b.iter().enumerate().take(21) {
        match c {
            b'0'..=b'9' => {
                v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            }
            b',' if i > 0 => return Some((v, &b[i + 1..])),
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_size() {
        let p = encode(42, 1_700_000_000_123_456_789, 256);
        assert_eq!(p.len(), 256);
        assert!(p.starts_with(b"42,1700000000123456789,xxx"));
        assert_eq!(decode(&p), Some((42, 1_700_000_000_123_456_789)));
    }

    #[test]
    fn header_len_matches_encoding() {
        for seq in [1u64, 9, 10, 99_999, 1_000_000] {
            let p = encode(seq, 1_700_000_000_000_000_000, 0);
            assert_eq!(p.len(), header_len(seq), "seq {seq}");
        }
        // Small timestamps are zero-padded to the same width.
        assert_eq!(encode(1, 5, 0).len(), header_len(1));
        assert_eq!(decode(&encode(1, 5, 0)), Some((1, 5)));
    }

    #[test]
    fn reuses_buffer() {
        let mut buf = Vec::new();
        encode_into(&mut buf, 7, 9, 64);
        encode_into(&mut buf, 8, 10, 40);
        assert_eq!(buf.len(), 40);
        assert_eq!(decode(&buf), Some((8, 10)));
    }

    #[test]
    fn channel_payloads() {
        let mut buf = Vec::new();
        encode_channel_into(&mut buf, 12, 1_700_000_000_000_000_001, 999, 3, 128);
        assert_eq!(buf.len(), 128);
        assert!(buf.starts_with(b"12,1700000000000000001,999,3,xx"));
        assert_eq!(decode_channel(&buf), Some((12, 1_700_000_000_000_000_001, 999, 3)));
        // The broadcast decoder still reads the first two fields.
        assert_eq!(decode(&buf), Some((12, 1_700_000_000_000_000_001)));
        encode_channel_into(&mut buf, 20_000, 5, 999, 20_000, 0);
        assert_eq!(buf.len(), channel_header_len(20_000, 1000));
        assert_eq!(decode_channel(&encode(1, 5, 64)), None, "a broadcast payload has no channel");
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"hello"), None);
        assert_eq!(decode(b",1,"), None);
        assert_eq!(decode(b"12,"), None);
        assert_eq!(decode(b"12,34"), None);
        assert_eq!(decode(b"99999999999999999999999,1,"), None);
        assert_eq!(decode(b"{\"gate\":\"B32\"}"), None);
    }
}
