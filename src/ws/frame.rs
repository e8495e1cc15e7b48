//! Server frames (RFC 6455 §5): the encoders, and the close codes crier sends.
//!
//! Encoding is separate from IO: a [`Frame`] is a complete server frame (header and payload)
//! in one `Bytes`, built only here, so the hub can build a broadcast once and every shard can
//! write the same buffer to every socket. Header formatting uses tungstenite's `FrameHeader`;
//! tungstenite's `WebSocket` (128 KiB of buffers per connection) is never used. Client
//! frames are parsed in [`super::reader`].

use bytes::Bytes;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// Close codes used by crier (RFC 6455 §7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Private use (RFC 6455 §7.4.2): the connection's token expired (`access`).
    pub const TOKEN_EXPIRED: u16 = 4001;
}

/// Whether a data message is text or binary (the frame's opcode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Text,
    Binary,
}

impl MessageKind {
    fn opcode(self) -> OpCode {
        match self {
            MessageKind::Text => OpCode::Data(Data::Text),
            MessageKind::Binary => OpCode::Data(Data::Binary),
        }
    }
}

/// A complete, encoded server frame. Only the encoders in this module build one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn encode(opcode: OpCode, rsv1: bool, payload: &[u8]) -> Frame {
    let header = FrameHeader {
        is_final: true,
        rsv1,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: None, // §5.1: a server MUST NOT mask frames it sends.
    };
    let len = payload.len() as u64;
    let mut out = Vec::with_capacity(header.len(len) + payload.len());
    header.format(len, &mut out).expect("writing a frame header into a Vec cannot fail");
    out.extend_from_slice(payload);
    Frame(Bytes::from(out))
}

/// A data frame carrying a whole message. `compressed` sets RSV1 (RFC 7692 §6): the payload
/// must then be raw DEFLATE with the trailing `00 00 ff ff` removed.
pub fn encode_data(kind: MessageKind, payload: &[u8], compressed: bool) -> Frame {
    encode(kind.opcode(), compressed, payload)
}

/// A pong echoing a ping's application data (§5.5.3).
pub fn encode_pong(payload: &[u8]) -> Frame {
    encode(OpCode::Control(Control::Pong), false, payload)
}

/// A ping with no payload; the same bytes serve every connection.
pub fn encode_ping() -> Frame {
    Frame(Bytes::from_static(&[0x89, 0x00]))
}

/// A close frame with a status code and a reason (§5.5.1). The reason is cut to fit the
/// 125-byte control frame limit on a character boundary.
pub fn encode_close(code: u16, reason: &str) -> Frame {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OpCode::Control(Control::Close), false, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_server_frames_unmasked() {
        let f = encode_data(MessageKind::Text, b"hi", false);
        assert_eq!(f.bytes().as_ref(), &[0x81, 0x02, b'h', b'i']);
        let f = encode_data(MessageKind::Binary, &[0u8; 200], true);
        assert_eq!(&f.bytes()[..4], &[0xC2, 126, 0, 200]);
        assert_eq!(f.len(), 204);
        let f = encode_data(MessageKind::Text, &vec![b'a'; 70_000], false);
        assert_eq!(f.bytes()[1], 127);
        assert_eq!(encode_ping().bytes().as_ref(), &[0x89, 0]);
        assert_eq!(encode_pong(b"x").bytes().as_ref(), &[0x8A, 1, b'x']);
        assert_eq!(encode_close(1001, "bye").bytes().as_ref(), &[0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']);
        // Reasons are cut to fit a control frame, on a char boundary.
        assert!(encode_close(1000, &"é".repeat(100)).len() <= 127);
    }
}
