//! Property test (proptest) of the publisher protocol's two steps: on every prefix of a
//! valid pipelined stream, the check (`parse` returning `None`, "not a whole command yet")
//! and the parse agree: the commands wholly inside the prefix are parsed, exactly as in the
//! whole stream and using exactly their bytes, and the rest is "incomplete", never an error
//! or a different command. The fuzz target `fuzz/fuzz_targets/publish_protocol.rs` checks
//! the same on arbitrary bytes.

use proptest::prelude::*;

use super::protocol::{Parsed, encode_pub, parse};
use crate::channel::ChannelName;
use crate::ws::frame::MessageKind;

const MAX_PAYLOAD: usize = 300;

#[derive(Debug, Clone)]
enum Cmd {
    /// channel, kind word (None: left out, which means text), payload, CRLF (else LF).
    Pub(String, Option<MessageKind>, Vec<u8>, bool),
    Ping(bool),
    Empty(bool),
}

fn eol(crlf: bool) -> &'static [u8] {
    if crlf { b"\r\n" } else { b"\n" }
}

impl Cmd {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Cmd::Pub(channel, Some(kind), payload, true) => encode_pub(channel, *kind, payload, out),
            Cmd::Pub(channel, kind, payload, crlf) => {
                let word = match kind {
                    None => "",
                    Some(MessageKind::Text) => " text",
                    Some(MessageKind::Binary) => " binary",
                };
                out.extend_from_slice(format!("PUB {channel} {}{word}", payload.len()).as_bytes());
                out.extend_from_slice(eol(*crlf));
                out.extend_from_slice(payload);
                out.extend_from_slice(eol(*crlf));
            }
            Cmd::Ping(crlf) => {
                out.extend_from_slice(b"PING");
                out.extend_from_slice(eol(*crlf));
            }
            Cmd::Empty(crlf) => out.extend_from_slice(eol(*crlf)),
        }
    }

    fn matches(&self, parsed: &Parsed<'_>) -> bool {
        match (self, parsed) {
            (Cmd::Pub(c, k, p, _), Parsed::Publish { channel, kind, payload }) => {
                *channel == ChannelName::parse(c).unwrap() && *kind == k.unwrap_or(MessageKind::Text) && payload == p
            }
            (Cmd::Ping(_), Parsed::Ping) | (Cmd::Empty(_), Parsed::Empty) => true,
            _ => false,
        }
    }
}

fn command() -> impl Strategy<Value = Cmd> {
    let channel = prop_oneof![Just("*".to_string()), "[A-Za-z0-9_.:-]{1,64}"];
    // Text payloads are UTF-8 (may hold CR, LF and the next command's words); binary is any byte.
    let text = proptest::collection::vec(any::<char>(), 0..40)
        .prop_map(|cs| cs.into_iter().collect::<String>().into_bytes())
        .prop_filter("within max_payload", |p| p.len() <= MAX_PAYLOAD);
    let binary = proptest::collection::vec(any::<u8>(), 0..MAX_PAYLOAD);
    prop_oneof![
        4 => (channel.clone(), prop_oneof![Just(None), Just(Some(MessageKind::Text))], text, any::<bool>())
            .prop_map(|(c, k, p, crlf)| Cmd::Pub(c, k, p, crlf)),
        3 => (channel, binary, any::<bool>()).prop_map(|(c, p, crlf)| Cmd::Pub(c, Some(MessageKind::Binary), p, crlf)),
        1 => any::<bool>().prop_map(Cmd::Ping),
        1 => any::<bool>().prop_map(Cmd::Empty),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn check_and_parse_agree_on_every_prefix(cmds in proptest::collection::vec(command(), 1..8)) {
        let mut stream = Vec::new();
        let mut ends = Vec::new(); // where each command's bytes end
        for c in &cmds {
            c.encode(&mut stream);
            ends.push(stream.len());
        }
        for k in 0..=stream.len() {
            let prefix = &stream[..k];
            let mut pos = 0;
            let mut i = 0;
            while let Some((parsed, used)) = parse(&prefix[pos..], MAX_PAYLOAD) {
                prop_assert!(i < cmds.len(), "more commands than were sent, prefix {}", k);
                prop_assert!(cmds[i].matches(&parsed), "prefix {}: command {} is {:?}, sent {:?}", k, i, parsed, cmds[i]);
                pos += used;
                prop_assert_eq!(pos, ends[i], "command {} used exactly its bytes", i);
                i += 1;
            }
            // Incomplete exactly when the next command is not wholly in the prefix.
            let whole = ends.iter().take_while(|&&e| e <= k).count();
            prop_assert_eq!(i, whole, "prefix {}: {} commands parsed, {} are complete", k, i, whole);
        }
    }
}
