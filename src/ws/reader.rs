//! Client frames (RFC 6455 §5): [`FrameReader`] turns bytes read from a client into
//! [`Event`]s and enforces the RFC's rules, each at the line that cites it; a broken rule is a
//! [`Violation`] carrying its close code and the reason it is counted under.
//!
//! Pure: no IO, no shard. It never allocates for a message that fits in one frame. Header
//! parsing uses tungstenite's `FrameHeader`.

use std::io::Cursor;

use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::frame::{MessageKind, close_code};
use crate::ops::metrics::CloseReason;

/// Why a client's frames or messages broke the rules: the close code the RFC assigns, the
/// close frame's reason text, and what `crier_connections_closed_total` counts it as. Built
/// only by the constructors below, so a code and its count never disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
    pub close_reason: CloseReason,
}

impl Violation {
    /// 1002: the frames break RFC 6455 (§7.4.1).
    pub const fn protocol(reason: &'static str) -> Violation {
        Violation { code: close_code::PROTOCOL_ERROR, reason, close_reason: CloseReason::ProtocolError }
    }

    /// 1007: text (or a close reason) that is not UTF-8 (§8.1).
    pub const fn invalid_utf8(reason: &'static str) -> Violation {
        Violation { code: close_code::INVALID_PAYLOAD, reason, close_reason: CloseReason::InvalidUtf8 }
    }

    /// 1007 as well: a permessage-deflate payload that does not inflate (RFC 7692 §8.2.3.2
    /// leaves the code to the endpoint; 1007 is "data inconsistent with the message type").
    pub const fn bad_compression(reason: &'static str) -> Violation {
        Violation { code: close_code::INVALID_PAYLOAD, reason, close_reason: CloseReason::BadCompression }
    }

    /// 1009: larger than `--max-client-message-bytes`.
    pub const fn too_big(reason: &'static str) -> Violation {
        Violation { code: close_code::MESSAGE_TOO_BIG, reason, close_reason: CloseReason::MessageTooBig }
    }
}

const fn protocol(reason: &'static str) -> Violation {
    Violation::protocol(reason)
}

/// What a client sent, one event per complete control frame or data message.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Ping(&'a [u8]),
    Pong,
    /// A close frame: its code and reason, if it had a payload.
    Close(Option<(u16, &'a str)>),
    /// A complete data message. `compressed` means RSV1 was set on its first frame and the
    /// payload still has to be inflated (and, for text, checked as UTF-8 after that).
    Message {
        kind: MessageKind,
        compressed: bool,
        payload: &'a [u8],
    },
}

/// A fragmented data message being put together (§5.4).
#[derive(Debug)]
struct Assembly {
    kind: MessageKind,
    compressed: bool,
    data: Vec<u8>,
    /// Uncompressed text: `data[..checked]` is known to be valid UTF-8 (what follows may be
    /// the start of a sequence the next fragment completes).
    checked: u32,
}

impl Assembly {
    /// Uncompressed text fails as soon as its bytes cannot become valid UTF-8, not at its
    /// last fragment (§8.1 allows either; Autobahn 6.4 calls this failing fast). Compressed
    /// text is checked once inflated, by the shard.
    fn check_utf8(&mut self) -> Result<(), Violation> {
        if self.kind != MessageKind::Text || self.compressed {
            return Ok(());
        }
        // `u32`: a message is at most --max-client-message-bytes (≤ 1 GiB), and it keeps the
        // reader, which every connection has, as small as before.
        match std::str::from_utf8(&self.data[self.checked as usize..]) {
            Ok(_) => self.checked = self.data.len() as u32,
            // Cut off in the middle of a sequence: wait for the rest.
            Err(e) if e.error_len().is_none() => self.checked += e.valid_up_to() as u32,
            Err(_) => return Err(Violation::invalid_utf8("text message is not valid UTF-8")),
        }
        Ok(())
    }
}

/// Parses client frames from a connection's byte stream.
///
/// Holds no buffer while a connection is idle: bytes are parsed straight from the shard's
/// read buffer, and only an incomplete frame's bytes (or a fragmented message) are kept.
#[derive(Debug, Default)]
pub struct FrameReader {
    partial: Vec<u8>,
    assembly: Option<Assembly>,
}

/// Limits a [`FrameReader`] enforces.
#[derive(Debug, Clone, Copy)]
pub struct ReaderLimits {
    /// Largest message (sum of fragments, before inflating) a client may send.
    pub max_message: usize,
    /// permessage-deflate was negotiated, so RSV1 is allowed on a message's first frame.
    pub deflate: bool,
}

impl FrameReader {
    /// Bytes held between reads (an incomplete frame, or fragments of a message): the
    /// capacity of both buffers. A hook for the unit tests and `fuzz/` (`cfg(fuzzing)` is set
    /// by `cargo fuzz`), not part of the API.
    #[cfg(any(test, fuzzing))]
    #[doc(hidden)]
    pub fn buffered(&self) -> usize {
        self.partial.capacity() + self.assembly.as_ref().map_or(0, |a| a.data.capacity())
    }

    /// Parses `input` (just read from the socket; unmasked in place), calling `sink` for each
    /// event. `sink` returns false to stop (after a close). Returns the first violation.
    pub fn feed(
        &mut self,
        input: &mut [u8],
        limits: ReaderLimits,
        sink: &mut dyn FnMut(Event<'_>) -> bool,
    ) -> Result<(), Violation> {
        if self.partial.is_empty() {
            let used = parse_frames(input, &mut self.assembly, limits, sink)?;
            if used < input.len() {
                self.partial.extend_from_slice(&input[used..]);
            }
        } else {
            self.partial.extend_from_slice(input);
            let mut buf = std::mem::take(&mut self.partial);
            let used = parse_frames(&mut buf, &mut self.assembly, limits, sink)?;
            buf.drain(..used);
            if buf.is_empty() {
                buf = Vec::new(); // give the memory back while idle
            } else if buf.capacity() > 2 * buf.len() {
                // This read completed frames and left the start of another: keep room for
                // that one, not for the whole read (fuzz/frame_reader found 64 KiB reads
                // each pinning their size behind one byte of a header).
                buf.shrink_to_fit();
            }
            self.partial = buf;
        }
        Ok(())
    }
}

/// Parses whole frames from `buf`; returns how many bytes were consumed.
fn parse_frames(
    buf: &mut [u8],
    assembly: &mut Option<Assembly>,
    limits: ReaderLimits,
    sink: &mut dyn FnMut(Event<'_>) -> bool,
) -> Result<usize, Violation> {
    let mut pos = 0;
    while pos < buf.len() {
        let mut cursor = Cursor::new(&buf[pos..]);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => break,
            // tungstenite refuses reserved opcodes here (§5.2).
            Err(_) => return Err(protocol("reserved opcode")),
        };
        let header_len = cursor.position() as usize;
        if len >> 63 != 0 {
            // §5.2: in a 64-bit payload length "the most significant bit MUST be 0". Such a
            // frame is malformed, not merely too big: 1002, not 1009.
            return Err(protocol("64-bit payload length with the most significant bit set"));
        }
        let Some(mask) = header.mask else {
            return Err(protocol("client frames must be masked")); // §5.1
        };
        if header.rsv2 || header.rsv3 {
            return Err(protocol("reserved bit set")); // §5.2
        }
        let is_control = matches!(header.opcode, OpCode::Control(_));
        if is_control {
            if !header.is_final {
                return Err(protocol("fragmented control frame")); // §5.5
            }
            if len > 125 {
                return Err(protocol("control frame payload over 125 bytes")); // §5.5
            }
            if header.rsv1 {
                return Err(protocol("RSV1 set on a control frame")); // RFC 7692 §6.1
            }
        } else {
            let held = assembly.as_ref().map_or(0, |a| a.data.len()) as u64;
            if len.saturating_add(held) > limits.max_message as u64 {
                return Err(Violation::too_big("message too big"));
            }
        }
        let len = len as usize;
        if buf.len() - pos - header_len < len {
            break; // wait for the rest of the payload
        }
        let start = pos + header_len;
        let payload = &mut buf[start..start + len];
        apply_mask(payload, mask);
        pos = start + len;

        let keep_going = match header.opcode {
            OpCode::Control(Control::Ping) => sink(Event::Ping(payload)),
            OpCode::Control(Control::Pong) => sink(Event::Pong),
            OpCode::Control(Control::Close) => {
                let close = parse_close(payload)?;
                sink(Event::Close(close));
                false
            }
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                return Err(protocol("reserved opcode"));
            }
            OpCode::Data(Data::Continue) => {
                let Some(open) = assembly.as_mut() else {
                    return Err(protocol("continuation frame without a message")); // §5.4
                };
                if header.rsv1 {
                    return Err(protocol("RSV1 set on a continuation frame")); // RFC 7692 §6.1
                }
                open.data.extend_from_slice(payload);
                if !header.is_final {
                    open.check_utf8()?;
                }
                if header.is_final {
                    let done = assembly.take().expect("checked above");
                    sink(Event::Message { kind: done.kind, compressed: done.compressed, payload: &done.data })
                } else {
                    true
                }
            }
            OpCode::Data(data) => {
                if assembly.is_some() {
                    return Err(protocol("new message before the previous one ended")); // §5.4
                }
                if header.rsv1 && !limits.deflate {
                    return Err(protocol("RSV1 set without permessage-deflate")); // §5.2
                }
                let kind = if data == Data::Text { MessageKind::Text } else { MessageKind::Binary };
                if header.is_final {
                    sink(Event::Message { kind, compressed: header.rsv1, payload })
                } else {
                    let mut open = Assembly { kind, compressed: header.rsv1, data: payload.to_vec(), checked: 0 };
                    open.check_utf8()?;
                    *assembly = Some(open);
                    true
                }
            }
        };
        if !keep_going {
            break;
        }
    }
    Ok(pos)
}

/// Validates a close frame's payload (§5.5.1, §7.4).
fn parse_close(payload: &[u8]) -> Result<Option<(u16, &str)>, Violation> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(protocol("close payload of one byte")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            // §7.4.1/§7.4.2: codes a peer may send; 1004-1006 and 1015 must not be sent.
            let allowed = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !allowed {
                return Err(protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(&payload[2..])
                .map_err(|_| Violation::invalid_utf8("close reason is not valid UTF-8"))?;
            Ok(Some((code, reason)))
        }
    }
}

/// XORs `buf` with the 4-byte masking key (§5.3), eight bytes at a time.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let v = u64::from_ne_bytes(chunk.try_into().expect("chunk of 8")) ^ wide;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Our own encoder, not tungstenite's FrameHeader (which the reader parses with): the
    // tests check the wire independently of the code under test.
    fn client_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![first];
        let m = if mask.is_some() { 0x80 } else { 0 };
        if payload.len() < 126 {
            out.push(m | payload.len() as u8);
        } else if payload.len() < 65536 {
            out.push(m | 126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            out.push(m | 127);
            out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        let mut body = payload.to_vec();
        if let Some(mask) = mask {
            out.extend_from_slice(&mask);
            apply_mask(&mut body, mask);
        }
        out.extend_from_slice(&body);
        out
    }

    const MASK: Option<[u8; 4]> = Some([1, 2, 3, 4]);
    const LIMITS: ReaderLimits = ReaderLimits { max_message: 1024, deflate: false };

    #[derive(Debug, PartialEq)]
    enum Owned {
        Ping(Vec<u8>),
        Pong,
        Close(Option<(u16, String)>),
        Msg(MessageKind, bool, Vec<u8>),
    }

    fn feed_all(r: &mut FrameReader, chunks: &[&[u8]], limits: ReaderLimits) -> (Vec<Owned>, Result<(), Violation>) {
        let mut events = Vec::new();
        for chunk in chunks {
            let mut data = chunk.to_vec();
            let res = r.feed(&mut data, limits, &mut |e| {
                events.push(match e {
                    Event::Ping(p) => Owned::Ping(p.to_vec()),
                    Event::Pong => Owned::Pong,
                    Event::Close(c) => Owned::Close(c.map(|(c, r)| (c, r.to_string()))),
                    Event::Message { kind, compressed, payload } => Owned::Msg(kind, compressed, payload.to_vec()),
                });
                true
            });
            if res.is_err() {
                return (events, res);
            }
        }
        (events, Ok(()))
    }

    #[test]
    fn parses_messages_split_across_reads() {
        let frame = client_frame(0x81, b"hello world", MASK);
        let mut r = FrameReader::default();
        let (ev, res) = feed_all(&mut r, &[&frame[..3], &frame[3..9], &frame[9..]], LIMITS);
        res.unwrap();
        assert_eq!(ev, vec![Owned::Msg(MessageKind::Text, false, b"hello world".to_vec())]);
        assert_eq!(r.buffered(), 0, "no buffer kept once the frame is complete");
    }

    #[test]
    fn reassembles_fragments_with_interleaved_control() {
        let mut bytes = client_frame(0x02, b"ab", MASK);
        bytes.extend(client_frame(0x89, b"p", MASK));
        bytes.extend(client_frame(0x00, b"cd", MASK));
        bytes.extend(client_frame(0x80, b"e", MASK));
        let mut r = FrameReader::default();
        let (ev, res) = feed_all(&mut r, &[&bytes], LIMITS);
        res.unwrap();
        assert_eq!(ev, vec![Owned::Ping(b"p".to_vec()), Owned::Msg(MessageKind::Binary, false, b"abcde".to_vec())]);
    }

    #[test]
    fn close_and_pong() {
        let mut bytes = client_frame(0x8A, b"", MASK);
        bytes.extend(client_frame(0x88, &[0x03, 0xE8, b'o', b'k'], MASK));
        bytes.extend(client_frame(0x81, b"after close is ignored", MASK));
        let (ev, res) = feed_all(&mut FrameReader::default(), &[&bytes], LIMITS);
        res.unwrap();
        assert_eq!(ev, vec![Owned::Pong, Owned::Close(Some((1000, "ok".into())))]);
    }

    fn violation(bytes: &[u8], limits: ReaderLimits) -> Violation {
        feed_all(&mut FrameReader::default(), &[bytes], limits).1.unwrap_err()
    }

    #[test]
    fn rejects_protocol_violations_with_rfc_codes() {
        assert_eq!(violation(&client_frame(0x81, b"x", None), LIMITS).code, 1002);
        assert_eq!(violation(&client_frame(0x83, b"x", MASK), LIMITS).code, 1002);
        assert_eq!(violation(&client_frame(0x8B, b"x", MASK), LIMITS).code, 1002);
        assert_eq!(violation(&client_frame(0xA1, b"x", MASK), LIMITS).code, 1002);
        assert_eq!(violation(&client_frame(0xC1, b"x", MASK), LIMITS).code, 1002);
        assert_eq!(violation(&client_frame(0x09, b"x", MASK), LIMITS).code, 1002);
        assert_eq!(violation(&client_frame(0x89, &[0; 126], MASK), LIMITS).code, 1002);
        assert_eq!(violation(&client_frame(0x80, b"x", MASK), LIMITS).code, 1002);
        assert_eq!(violation(&client_frame(0x88, &[3], MASK), LIMITS).code, 1002);
        assert_eq!(violation(&client_frame(0x88, &[0x03, 0xED], MASK), LIMITS).code, 1002);
        assert_eq!(violation(&client_frame(0x88, &[0x03, 0xE8, 0xFF], MASK), LIMITS).code, 1007);
        assert_eq!(violation(&client_frame(0x82, &[0; 1025], MASK), LIMITS).code, 1009);
        // A 64-bit length of 2^63 breaks §5.2; the largest legal one is only too big.
        let msb = [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(violation(&msb, LIMITS), protocol("64-bit payload length with the most significant bit set"));
        let max = [0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4];
        assert_eq!(violation(&max, LIMITS).code, 1009);
        // Each violation carries what it is counted as, next to its code.
        assert_eq!(violation(&client_frame(0x81, b"x", None), LIMITS).close_reason, CloseReason::ProtocolError);
        let bad_reason = client_frame(0x88, &[0x03, 0xE8, 0xFF], MASK);
        assert_eq!(violation(&bad_reason, LIMITS).close_reason, CloseReason::InvalidUtf8);
        assert_eq!(violation(&client_frame(0x82, &[0; 1025], MASK), LIMITS).close_reason, CloseReason::MessageTooBig);
        assert_eq!(Violation::bad_compression("x").code, 1007);
        assert_eq!(Violation::bad_compression("x").close_reason, CloseReason::BadCompression);
        let mut two = client_frame(0x01, b"a", MASK);
        two.extend(client_frame(0x81, b"b", MASK));
        assert_eq!(violation(&two, LIMITS).code, 1002);
        // Fragments together over the limit.
        let mut big = client_frame(0x02, &[0; 600], MASK);
        big.extend(client_frame(0x80, &[0; 600], MASK));
        assert_eq!(violation(&big, LIMITS).code, 1009);
    }

    #[test]
    fn rsv1_only_with_deflate_and_only_on_first_frame() {
        let deflate = ReaderLimits { deflate: true, ..LIMITS };
        let (ev, res) = feed_all(&mut FrameReader::default(), &[&client_frame(0xC1, b"z", MASK)], deflate);
        res.unwrap();
        assert_eq!(ev, vec![Owned::Msg(MessageKind::Text, true, b"z".to_vec())]);
        let mut cont = client_frame(0x41, b"z", MASK);
        cont.extend(client_frame(0xC0, b"z", MASK));
        assert_eq!(violation(&cont, deflate).code, 1002);
    }

    #[test]
    fn fragmented_text_fails_as_soon_as_it_cannot_be_utf8() {
        // "κόσμε" split inside a two-byte sequence: valid so far, so it waits for the rest.
        let text = "κόσμε".as_bytes();
        let mut ok = client_frame(0x01, &text[..3], MASK);
        ok.extend(client_frame(0x00, &text[3..7], MASK));
        ok.extend(client_frame(0x80, &text[7..], MASK));
        let (ev, res) = feed_all(&mut FrameReader::default(), &[&ok], LIMITS);
        res.unwrap();
        assert_eq!(ev, vec![Owned::Msg(MessageKind::Text, false, text.to_vec())]);
        // 0xF4 0x90 can never start a valid sequence (past U+10FFFF): refused at the first
        // fragment, with no need for the final one (Autobahn 6.4.1 sends it after a pause).
        let mut bad = client_frame(0x01, &[b'a', 0xF4, 0x90], MASK);
        let first_only = bad.clone();
        bad.extend(client_frame(0x80, &[0x80, 0x80], MASK));
        let v = violation(&first_only, LIMITS);
        assert_eq!((v.code, v.close_reason), (1007, CloseReason::InvalidUtf8));
        assert_eq!(violation(&bad, LIMITS).code, 1007);
        // In a continuation, as soon as it arrives.
        let mut cont = client_frame(0x01, b"ok", MASK);
        cont.extend(client_frame(0x00, &[0xC0, 0xAF], MASK));
        assert_eq!(violation(&cont, LIMITS).code, 1007);
        // Binary and compressed messages are not text-checked here.
        let bin = client_frame(0x02, &[0xFF], MASK);
        assert!(feed_all(&mut FrameReader::default(), &[&bin], LIMITS).1.is_ok());
        let deflate = ReaderLimits { deflate: true, ..LIMITS };
        assert!(feed_all(&mut FrameReader::default(), &[&client_frame(0x41, &[0xFF], MASK)], deflate).1.is_ok());
    }

    #[test]
    fn a_read_that_completes_frames_leaves_only_the_next_frames_bytes_held() {
        // Found by fuzz/frame_reader (corpus/frame_reader/regression-partial-capacity): a
        // partial frame, then a large read of whole frames ending in one byte of the next,
        // kept the large read's capacity for that one byte.
        let limits = ReaderLimits { max_message: 125, deflate: false };
        let frame = client_frame(0x82, &[7; 100], MASK);
        let mut read = frame[1..].to_vec();
        for _ in 0..40 {
            read.extend(&frame);
        }
        read.push(frame[0]);
        let mut r = FrameReader::default();
        let (ev, res) = feed_all(&mut r, &[&frame[..1], &read], limits);
        res.unwrap();
        assert_eq!(ev.len(), 41);
        assert!(r.buffered() <= 16, "one byte pending, {} bytes held", r.buffered());
    }

    #[test]
    fn mask_matches_bytewise_xor() {
        let mask = [0xA1, 0x02, 0xF3, 0x44];
        for len in 0..40 {
            let orig: Vec<u8> = (0..len as u8).collect();
            let mut fast = orig.clone();
            apply_mask(&mut fast, mask);
            let slow: Vec<u8> = orig.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            assert_eq!(fast, slow);
        }
    }
}
