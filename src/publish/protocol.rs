//! The publisher wire protocol: parsing, in two steps like mini-redis — find out whether a
//! whole command is buffered, then parse it — so a partial command never blocks anything.
//!
//! ```text
//! PUB <channel> <nbytes> [text|binary]\r\n<payload>\r\n   → +OK <seq>\r\n
//! PING\r\n                                                → +PONG\r\n
//! ```
//! Every refusal is one `-ERR <reason>` line; [`Parsed::Refused::close`] says whether the
//! stream can go on (the framing is intact) or must be closed (it is not).

use crate::channel::ChannelName;
use crate::ops::metrics::PublishError;
use crate::ws::frame::MessageKind;

/// Longest command line accepted (the payload is not part of it).
pub const MAX_LINE: usize = 1024;

/// One parsed command.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    Publish {
        channel: ChannelName,
        kind: MessageKind,
        payload: &'a [u8],
    },
    Ping,
    /// A blank line: nothing to do.
    Empty,
    Refused {
        error: PublishError,
        message: String,
        /// The connection must be closed after the reply (framing lost or abuse).
        close: bool,
    },
}

fn refuse(error: PublishError, message: String, close: bool) -> Parsed<'static> {
    Parsed::Refused { error, message, close }
}

/// Printable, bounded excerpt of client bytes for an error message.
fn shown(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(128)]);
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// Parses the first command in `buf`. `None`: the command is not complete yet. Otherwise
/// the command and how many bytes it used.
pub fn parse(buf: &[u8], max_payload: usize) -> Option<(Parsed<'_>, usize)> {
    let window = &buf[..buf.len().min(MAX_LINE + 2)];
    let Some(nl) = window.iter().position(|&b| b == b'\n') else {
        return (buf.len() > MAX_LINE + 1)
            .then(|| (refuse(PublishError::LineTooLong, "line too long".into(), true), buf.len()));
    };
    let mut line = &buf[..nl];
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    if line.len() > MAX_LINE {
        return Some((refuse(PublishError::LineTooLong, "line too long".into(), true), nl + 1));
    }
    let after_line = nl + 1;
    let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let Some(cmd) = words.next() else {
        return Some((Parsed::Empty, after_line));
    };
    if cmd.eq_ignore_ascii_case(b"PING") {
        return Some((Parsed::Ping, after_line));
    }
    if !cmd.eq_ignore_ascii_case(b"PUB") {
        let msg = format!("unknown command '{}'", shown(cmd));
        return Some((refuse(PublishError::UnknownCommand, msg, false), after_line));
    }
    let channel = words.next().unwrap_or(b"");
    let len_word = words.next().unwrap_or(b"");
    let kind_word = words.next();
    let extra = words.next();
    let n: usize = match std::str::from_utf8(len_word)
        .ok()
        .filter(|s| s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
    {
        Some(n) => n,
        None => {
            let msg = format!("malformed length '{}'", shown(len_word));
            return Some((refuse(PublishError::MalformedLength, msg, true), after_line));
        }
    };
    if n > max_payload {
        let msg = format!("payload too large: {n} bytes > max-message-bytes {max_payload}");
        return Some((refuse(PublishError::TooLarge, msg, true), after_line));
    }
    // The payload and its line ending must be buffered before anything else is decided.
    let end = after_line + n;
    let used = match buf.get(end..) {
        None | Some([]) | Some([b'\r']) => return None,
        Some([b'\n', ..]) => end + 1,
        Some([b'\r', b'\n', ..]) => end + 2,
        Some(_) => {
            let msg = "payload not followed by CRLF".to_string();
            return Some((refuse(PublishError::MissingCrlf, msg, true), end));
        }
    };
    let payload = &buf[after_line..end];
    let channel = match std::str::from_utf8(channel).ok().map(ChannelName::parse) {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            return Some((
                refuse(PublishError::BadChannel, format!("bad channel name '{}': {e}", shown(channel)), false),
                used,
            ));
        }
        None => {
            let msg = format!("bad channel name '{}': not UTF-8", shown(channel));
            return Some((refuse(PublishError::BadChannel, msg, false), used));
        }
    };
    let kind = match kind_word {
        None => MessageKind::Text,
        Some(w) if w.eq_ignore_ascii_case(b"text") => MessageKind::Text,
        Some(w) if w.eq_ignore_ascii_case(b"binary") => MessageKind::Binary,
        Some(w) => {
            return Some((
                refuse(PublishError::BadType, format!("bad type '{}': expected text or binary", shown(w)), false),
                used,
            ));
        }
    };
    if let Some(w) = extra {
        let msg = format!("bad type '{}': expected text or binary (too many arguments)", shown(w));
        return Some((refuse(PublishError::BadType, msg, false), used));
    }
    if kind == MessageKind::Text && std::str::from_utf8(payload).is_err() {
        return Some((refuse(PublishError::InvalidUtf8, "text payload is not valid UTF-8".into(), false), used));
    }
    Some((Parsed::Publish { channel, kind, payload }, used))
}

/// Formats a `PUB` command for `payload` (used by `crier publish` and the load tool).
pub fn encode_pub(channel: &str, kind: MessageKind, payload: &[u8], out: &mut Vec<u8>) {
    let kind = match kind {
        MessageKind::Text => "text",
        MessageKind::Binary => "binary",
    };
    out.extend_from_slice(format!("PUB {channel} {} {kind}\r\n", payload.len()).as_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &[u8]) -> Option<(Parsed<'_>, usize)> {
        parse(s, 100)
    }

    fn err(s: &[u8]) -> (PublishError, bool, String, usize) {
        match p(s) {
            Some((Parsed::Refused { error, message, close }, used)) => (error, close, message, used),
            other => panic!("expected refusal, got {other:?}"),
        }
    }

    #[test]
    fn parses_publish_and_ping() {
        let (cmd, used) = p(b"PUB flights 5 text\r\nhello\r\nPING\r\n").unwrap();
        assert_eq!(used, 27);
        assert_eq!(
            cmd,
            Parsed::Publish {
                channel: ChannelName::parse("flights").unwrap(),
                kind: MessageKind::Text,
                payload: b"hello"
            }
        );
        assert_eq!(p(b"PING\r\n"), Some((Parsed::Ping, 6)));
        assert_eq!(p(b"ping\n"), Some((Parsed::Ping, 5)));
        let (cmd, used) = p(b"PUB * 3 binary\n\x00\xff\x01\n").unwrap();
        assert_eq!(used, 19);
        assert!(matches!(cmd, Parsed::Publish { kind: MessageKind::Binary, .. }));
        // Payload may hold CRLF itself: the length decides.
        let (cmd, _) = p(b"PUB a 4\r\n\r\n\r\n\r\n").unwrap();
        assert!(matches!(cmd, Parsed::Publish { payload: b"\r\n\r\n", .. }));
    }

    #[test]
    fn waits_for_complete_commands() {
        for partial in [
            &b"PUB flights 5 te"[..],
            b"PUB flights 5\r\nhel",
            b"PUB flights 5\r\nhello",
            b"PUB flights 5\r\nhello\r",
            b"PI",
        ] {
            assert_eq!(p(partial), None, "{:?}", String::from_utf8_lossy(partial));
        }
    }

    #[test]
    fn refusals_that_keep_the_connection() {
        let (e, close, msg, used) = err(b"FOO bar\r\nPING\r\n");
        assert_eq!((e, close, used), (PublishError::UnknownCommand, false, 9));
        assert!(msg.contains("unknown command 'FOO'"));
        let (e, close, msg, used) = err(b"PUB bad/name 2\r\nhi\r\n");
        assert_eq!((e, close, used), (PublishError::BadChannel, false, 20));
        assert!(msg.starts_with("bad channel name 'bad/name'"), "{msg}");
        let (e, close, _, _) = err(b"PUB a 2 jpeg\r\nhi\r\n");
        assert_eq!((e, close), (PublishError::BadType, false));
        let (e, close, _, used) = err(b"PUB a 2 text\r\n\xff\xfe\r\n");
        assert_eq!((e, close, used), (PublishError::InvalidUtf8, false, 18));
    }

    #[test]
    fn refusals_that_close() {
        assert_eq!(err(b"PUB a x\r\n").0, PublishError::MalformedLength);
        assert_eq!(err(b"PUB a -1\r\n").0, PublishError::MalformedLength);
        assert_eq!(err(b"PUB a\r\n").0, PublishError::MalformedLength);
        let (e, close, msg, _) = err(b"PUB a 101\r\n");
        assert_eq!((e, close), (PublishError::TooLarge, true));
        assert!(msg.contains("101 bytes > max-message-bytes 100"));
        assert_eq!(err(b"PUB a 2\r\nhello\r\n").0, PublishError::MissingCrlf);
        let long = vec![b'A'; MAX_LINE + 10];
        assert_eq!(err(&long).0, PublishError::LineTooLong);
    }

    #[test]
    fn encode_round_trips() {
        let mut out = Vec::new();
        encode_pub("gates", MessageKind::Binary, b"\x00\x01", &mut out);
        let (cmd, used) = p(&out).unwrap();
        assert_eq!(used, out.len());
        assert!(matches!(cmd, Parsed::Publish { kind: MessageKind::Binary, payload: b"\x00\x01", .. }));
    }
}
