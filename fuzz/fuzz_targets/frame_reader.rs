//! `FrameReader::feed` on arbitrary bytes in arbitrary chunks.
//!
//! Checks, for every input:
//! - no panic;
//! - between reads the reader's buffers hold at most `max_message` plus one incomplete
//!   frame (a control frame of 125 bytes can be pending while a message's fragments are
//!   held) and its header (14 bytes), with at most twice that allocated (`Vec` growth);
//! - the events and the violation are the same whatever the chunking, and the same as a
//!   straightforward reference parser's (below, written from RFC 6455 §5 and RFC 7692 §6,
//!   independently of the reader's code).
//!
//! Input layout: byte 0 picks the limits (bit 0 deflate, bits 2-3 max_message), the mode
//! (bit 1) and how many read boundaries follow at the end (bits 4-7: N, two bytes each).
//! The bytes between are either raw stream bytes, or (mode "frames") a list of frame
//! descriptions that are encoded into valid-looking client frames, so that long valid
//! streams are reached quickly. Every stream is also fed in one read and, up to 256 bytes,
//! one byte per read.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use crier::ws::frame::MessageKind;
use crier::ws::reader::{Event, FrameReader, ReaderLimits, apply_mask};
use libfuzzer_sys::fuzz_target;

/// Longest client frame header: 2 + 8 (64-bit length) + 4 (mask).
const MAX_HEADER: usize = 14;
/// Longest control frame payload (§5.5).
const MAX_CONTROL: usize = 125;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Ping(Vec<u8>),
    Pong,
    Close(Option<(u16, String)>),
    Msg(MessageKind, bool, Vec<u8>),
}

impl Owned {
    fn from(e: Event<'_>) -> Owned {
        match e {
            Event::Ping(p) => Owned::Ping(p.to_vec()),
            Event::Pong => Owned::Pong,
            Event::Close(c) => Owned::Close(c.map(|(c, r)| (c, r.to_string()))),
            Event::Message { kind, compressed, payload } => Owned::Msg(kind, compressed, payload.to_vec()),
        }
    }
}

/// What a run produced: the events, then `Some(close code)` if the reader refused the stream.
type Outcome = (Vec<Owned>, Option<u16>);

/// Feeds `stream` cut at `cuts` (sorted offsets), the way a connection's reads would, and
/// checks the memory bound after every read.
fn run_reader(stream: &[u8], cuts: &[usize], limits: ReaderLimits) -> Outcome {
    let mut reader = FrameReader::default();
    let mut events = Vec::new();
    let mut closed = false;
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&stream.len())) {
        if end < start {
            continue;
        }
        let mut chunk = stream[start..end].to_vec();
        start = end;
        let res = reader.feed(&mut chunk, limits, &mut |e| {
            let ev = Owned::from(e);
            let go_on = !matches!(ev, Owned::Close(_));
            events.push(ev);
            if !go_on {
                closed = true;
            }
            go_on
        });
        if let Err(v) = res {
            return (events, Some(v.code));
        }
        if closed {
            // The connection stops reading frames after a close (the bytes behind it in
            // the same read are not parsed; they are not part of the bound either).
            break;
        }
        // What may be pending: a message's fragments (at most max_message) and one
        // incomplete frame, a data frame that fits in what is left of max_message or a
        // control frame (125 bytes), with its header. `buffered` counts capacity, which
        // `Vec` growth may double.
        let bound = 2 * (limits.max_message + MAX_CONTROL + MAX_HEADER);
        let held = reader.buffered();
        assert!(held <= bound, "reader holds {held} bytes between reads, max_message {}", limits.max_message);
    }
    (events, None)
}

/// The reference parser: whole stream at once, one frame at a time, each RFC rule checked in
/// the order the reader documents (header first, then the payload's contents).
/// RFC 6455 §8.1 lets an endpoint fail a text message as soon as its bytes cannot become
/// valid UTF-8; crier's reader does so for each fragment of an uncompressed text message
/// (compressed text is checked once inflated, by the shard).
fn cannot_become_utf8(open: &(MessageKind, bool, Vec<u8>)) -> bool {
    let (kind, compressed, data) = open;
    *kind == MessageKind::Text && !compressed && std::str::from_utf8(data).is_err_and(|e| e.error_len().is_some())
}

fn reference(stream: &[u8], limits: ReaderLimits) -> Outcome {
    let mut events = Vec::new();
    let mut pos = 0;
    // The open fragmented message: kind, compressed, data so far.
    let mut open: Option<(MessageKind, bool, Vec<u8>)> = None;
    loop {
        let rest = &stream[pos..];
        if rest.len() < 2 {
            return (events, None);
        }
        let (b0, b1) = (rest[0], rest[1]);
        let fin = b0 & 0x80 != 0;
        let (rsv1, rsv2, rsv3) = (b0 & 0x40 != 0, b0 & 0x20 != 0, b0 & 0x10 != 0);
        let opcode = b0 & 0x0F;
        let masked = b1 & 0x80 != 0;
        let (len, mut at) = match b1 & 0x7F {
            126 if rest.len() >= 4 => (u64::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
            127 if rest.len() >= 10 => (u64::from_be_bytes(rest[2..10].try_into().unwrap()), 10),
            126 | 127 => return (events, None),
            n => (u64::from(n), 2),
        };
        let mask = if masked {
            if rest.len() < at + 4 {
                return (events, None);
            }
            let m: [u8; 4] = rest[at..at + 4].try_into().unwrap();
            at += 4;
            Some(m)
        } else {
            None
        };
        const PROTOCOL: u16 = 1002;
        if !matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10) {
            return (events, Some(PROTOCOL));
        }
        if len >= 1 << 63 {
            return (events, Some(PROTOCOL));
        }
        let Some(mask) = mask else { return (events, Some(PROTOCOL)) };
        if rsv2 || rsv3 {
            return (events, Some(PROTOCOL));
        }
        let control = opcode >= 8;
        if control {
            if !fin || len > 125 || rsv1 {
                return (events, Some(PROTOCOL));
            }
        } else {
            let held = open.as_ref().map_or(0, |o| o.2.len()) as u64;
            if len + held > limits.max_message as u64 {
                return (events, Some(1009));
            }
        }
        let len = len as usize;
        if rest.len() - at < len {
            return (events, None);
        }
        let mut payload = rest[at..at + len].to_vec();
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        pos += at + len;
        match opcode {
            9 => events.push(Owned::Ping(payload)),
            10 => events.push(Owned::Pong),
            8 => {
                let close = match payload.len() {
                    0 => None,
                    1 => return (events, Some(PROTOCOL)),
                    _ => {
                        let code = u16::from_be_bytes([payload[0], payload[1]]);
                        let sendable = (1000..=1003).contains(&code)
                            || (1007..=1014).contains(&code)
                            || (3000..=4999).contains(&code);
                        if !sendable {
                            return (events, Some(PROTOCOL));
                        }
                        match String::from_utf8(payload[2..].to_vec()) {
                            Ok(reason) => Some((code, reason)),
                            Err(_) => return (events, Some(1007)),
                        }
                    }
                };
                events.push(Owned::Close(close));
                return (events, None);
            }
            0 => {
                let Some(o) = open.as_mut() else { return (events, Some(PROTOCOL)) };
                if rsv1 {
                    return (events, Some(PROTOCOL));
                }
                o.2.extend_from_slice(&payload);
                if !fin && cannot_become_utf8(o) {
                    return (events, Some(1007));
                }
                if fin {
                    let (kind, compressed, data) = open.take().unwrap();
                    events.push(Owned::Msg(kind, compressed, data));
                }
            }
            _ => {
                if open.is_some() || (rsv1 && !limits.deflate) {
                    return (events, Some(PROTOCOL));
                }
                let kind = if opcode == 1 { MessageKind::Text } else { MessageKind::Binary };
                if fin {
                    events.push(Owned::Msg(kind, rsv1, payload));
                } else {
                    let o = (kind, rsv1, payload);
                    if cannot_become_utf8(&o) {
                        return (events, Some(1007));
                    }
                    open = Some(o);
                }
            }
        }
    }
}

/// A frame to encode (mode "frames"): mostly valid, sometimes not.
#[derive(Debug, Arbitrary)]
struct FrameSpec {
    first: FirstByte,
    masked_unless: u8,
    mask: [u8; 4],
    /// 0: shortest length encoding; 1: 16-bit; 2: 64-bit (non-minimal encodings are legal).
    len_form: u8,
    payload: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
enum FirstByte {
    Text { fin: bool, rsv1: bool },
    Binary { fin: bool, rsv1: bool },
    Continue { fin: bool },
    Ping,
    Pong,
    Close { code: Option<u16> },
    Raw(u8),
}

fn encode(spec: &FrameSpec, out: &mut Vec<u8>) {
    let f = |fin: bool| if fin { 0x80u8 } else { 0 };
    let r = |rsv1: bool| if rsv1 { 0x40u8 } else { 0 };
    let mut payload = spec.payload.clone();
    let first = match spec.first {
        FirstByte::Text { fin, rsv1 } => f(fin) | r(rsv1) | 1,
        FirstByte::Binary { fin, rsv1 } => f(fin) | r(rsv1) | 2,
        FirstByte::Continue { fin } => f(fin),
        FirstByte::Ping => {
            payload.truncate(125);
            0x89
        }
        FirstByte::Pong => {
            payload.truncate(125);
            0x8A
        }
        FirstByte::Close { code } => {
            payload.truncate(123);
            if let Some(code) = code {
                let mut p = code.to_be_bytes().to_vec();
                p.extend_from_slice(&payload);
                payload = p;
            } else {
                payload.clear();
            }
            0x88
        }
        FirstByte::Raw(b) => b,
    };
    out.push(first);
    let masked = spec.masked_unless != 0xFF; // unmasked only now and then
    let m = if masked { 0x80 } else { 0 };
    let len = payload.len();
    match spec.len_form % 3 {
        0 if len < 126 => out.push(m | len as u8),
        0 | 1 if len < 65536 => {
            out.push(m | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(m | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&spec.mask);
        apply_mask(&mut payload, spec.mask);
    }
    out.extend_from_slice(&payload);
}

/// Read boundaries: each pair of bytes is an offset into the stream (sorted; may repeat,
/// giving empty reads).
fn cuts(chunking: &[u8], len: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> =
        chunking.chunks_exact(2).map(|c| usize::from(u16::from_be_bytes([c[0], c[1]])) % (len + 1)).collect();
    cuts.sort_unstable();
    cuts
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else { return };
    let deflate = control & 1 != 0;
    let structured = control & 2 != 0;
    let max_message = match (control >> 2) & 3 {
        0 => 0,
        1 => 125,
        2 => 1024,
        _ => 70_000,
    };
    let limits = ReaderLimits { max_message, deflate };
    let split = rest.len().saturating_sub(2 * usize::from(control >> 4));
    let (body, chunking) = rest.split_at(split);
    let stream = if structured {
        let mut u = Unstructured::new(body);
        let mut out = Vec::new();
        while let Ok(spec) = FrameSpec::arbitrary(&mut u) {
            encode(&spec, &mut out);
            if u.is_empty() {
                break;
            }
        }
        out
    } else {
        body.to_vec()
    };
    let cuts = cuts(chunking, stream.len());

    let expected = reference(&stream, limits);
    let whole = run_reader(&stream, &[], limits);
    assert_eq!(whole, expected, "one read vs the reference parser");
    let chunked = run_reader(&stream, &cuts, limits);
    assert_eq!(chunked, expected, "reads cut at {cuts:?} vs the reference parser");
    // Byte by byte, for short streams: the hardest chunking.
    if stream.len() <= 256 {
        let every: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(run_reader(&stream, &every, limits), expected, "one byte per read");
    }
});
