//! Property tests (proptest) of the frame encoders and the reader: encode then parse is the
//! identity for every payload length class (7-bit 0..=125, 16-bit 126..=65535, 64-bit
//! 65536 and up). Server frames (`frame::encode_*`) are read back by a reference decoder
//! written here from RFC 6455 §5.2; masked the way a client would send them, by the
//! `FrameReader`, in any chunking. The fuzz target `fuzz/fuzz_targets/frame_reader.rs`
//! checks the reader on arbitrary bytes; these state what must hold for every valid frame.

use proptest::prelude::*;

use super::frame::{MessageKind, encode_close, encode_data, encode_pong};
use super::reader::{Event, FrameReader, ReaderLimits, apply_mask};

/// One decoded frame: FIN, RSV1, opcode, mask, payload (unmasked) and the header length.
#[derive(Debug, PartialEq)]
struct Decoded {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    masked: bool,
    payload: Vec<u8>,
    header_len: usize,
}

/// RFC 6455 §5.2, for exactly one complete frame (the whole buffer).
fn decode(b: &[u8]) -> Decoded {
    let (fin, rsv1, opcode) = (b[0] & 0x80 != 0, b[0] & 0x40 != 0, b[0] & 0x0F);
    assert_eq!(b[0] & 0x30, 0, "RSV2 and RSV3 are never set");
    let masked = b[1] & 0x80 != 0;
    let (len, mut at) = match b[1] & 0x7F {
        126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
        127 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
        n => (n as usize, 2),
    };
    // §5.2: "the minimal number of bytes MUST be used to encode the length".
    match at {
        4 => assert!(len >= 126),
        10 => assert!(len >= 65536),
        _ => {}
    }
    let mut mask = None;
    if masked {
        mask = Some([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        at += 4;
    }
    assert_eq!(b.len(), at + len, "the frame is exactly header + payload");
    let mut payload = b[at..].to_vec();
    if let Some(m) = mask {
        payload.iter_mut().enumerate().for_each(|(i, x)| *x ^= m[i % 4]);
    }
    Decoded { fin, rsv1, opcode, masked, payload, header_len: at }
}

/// A server frame as a client would send it: mask bit set, key inserted, payload masked.
fn masked(server_frame: &[u8], key: [u8; 4]) -> Vec<u8> {
    let d = decode(server_frame);
    let mut out = server_frame[..d.header_len].to_vec();
    out[1] |= 0x80;
    out.extend_from_slice(&key);
    let mut body = d.payload;
    apply_mask(&mut body, key);
    out.extend_from_slice(&body);
    out
}

/// A payload of `len` bytes, cheap to build at any length (no per-byte strategy).
fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add((i as u8).wrapping_mul(31)) ^ (i >> 8) as u8).collect()
}

fn kind() -> impl Strategy<Value = MessageKind> {
    prop_oneof![Just(MessageKind::Text), Just(MessageKind::Binary)]
}

/// Feeds `bytes` to a fresh reader in reads cut at `cuts`; returns the one message.
fn read_back(bytes: &[u8], cuts: &[usize], max_message: usize) -> (MessageKind, bool, Vec<u8>) {
    let mut reader = FrameReader::default();
    let mut got = Vec::new();
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    bounds.sort_unstable();
    bounds.push(bytes.len());
    let mut start = 0;
    for end in bounds {
        let mut chunk = bytes[start..end].to_vec();
        start = end;
        let limits = ReaderLimits { max_message, deflate: true };
        reader
            .feed(&mut chunk, limits, &mut |e| {
                match e {
                    Event::Message { kind, compressed, payload } => got.push((kind, compressed, payload.to_vec())),
                    other => panic!("unexpected {other:?}"),
                }
                true
            })
            .expect("a valid frame is accepted");
    }
    assert_eq!(got.len(), 1, "exactly one message");
    assert_eq!(reader.buffered(), 0, "nothing held after a complete frame");
    got.pop().unwrap()
}

fn check_data_round_trip(kind: MessageKind, len: usize, seed: u8, compressed: bool, key: [u8; 4], cuts: &[usize]) {
    let data = payload(len, seed);
    let frame = encode_data(kind, &data, compressed);
    let d = decode(frame.bytes());
    let opcode = if kind == MessageKind::Text { 1 } else { 2 };
    assert_eq!((d.fin, d.rsv1, d.opcode, d.masked), (true, compressed, opcode, false));
    assert_eq!(
        d.header_len,
        if len < 126 {
            2
        } else if len < 65536 {
            4
        } else {
            10
        }
    );
    assert!(d.payload == data, "payload of {len} bytes read back");
    let (k, c, p) = read_back(&masked(frame.bytes(), key), cuts, len.max(1));
    assert_eq!((k, c), (kind, compressed));
    assert!(p == data, "the reader returns the {len} bytes encoded");
}

proptest! {
    #[test]
    fn data_frames_7_bit_lengths(kind in kind(), len in 0usize..=125, seed: u8, compressed: bool, key: [u8; 4],
                                 cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
        check_data_round_trip(kind, len, seed, compressed, key, &cuts);
    }

    #[test]
    fn data_frames_16_bit_lengths(kind in kind(), len in 126usize..=65535, seed: u8, compressed: bool, key: [u8; 4],
                                  cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
        check_data_round_trip(kind, len, seed, compressed, key, &cuts);
    }

    #[test]
    fn control_frames(len in 0usize..=125, seed: u8, code in 1000u16..=1003, reason in "[ -~é]{0,80}") {
        let data = payload(len, seed);
        let pong = decode(encode_pong(&data).bytes());
        prop_assert_eq!((pong.fin, pong.rsv1, pong.opcode, pong.header_len), (true, false, 0xA, 2));
        prop_assert_eq!(pong.payload, data);
        let close = decode(encode_close(code, &reason).bytes());
        prop_assert_eq!((close.fin, close.opcode), (true, 0x8));
        prop_assert!(close.payload.len() <= 125);
        prop_assert_eq!(u16::from_be_bytes([close.payload[0], close.payload[1]]), code);
        let text = std::str::from_utf8(&close.payload[2..]).expect("the reason is cut on a char boundary");
        prop_assert!(reason.starts_with(text));
    }
}

proptest! {
    // Frames of 64 KiB and more are slow to build in a debug build: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn data_frames_64_bit_lengths(kind in kind(), len in 65536usize..=300_000, seed: u8, compressed: bool,
                                  key: [u8; 4], cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
        check_data_round_trip(kind, len, seed, compressed, key, &cuts);
    }
}

#[test]
fn length_class_boundaries() {
    for len in [0, 1, 125, 126, 127, 65535, 65536, 65537] {
        check_data_round_trip(MessageKind::Binary, len, 7, false, [9, 8, 7, 6], &[1, 3, 70_000]);
    }
}
