//! The publisher protocol (`publish::protocol::parse`) on pipelined commands in arbitrary
//! chunks.
//!
//! `parse` is both steps of the protocol: `None` is the check ("not a whole command yet"),
//! `Some` the parse. Checks: no panic; `used` is within the buffer and never zero; on
//! every prefix of the stream the check says "incomplete" or the parse gives exactly what
//! the whole stream gives (nothing is decided on a partial command); a buffer of the size
//! the ingress allocates (`max_payload + MAX_LINE + 4`) is always decided, so a publisher
//! can never stall the ingress; and the commands are the same whether the stream arrives
//! in one read or in the reads given by the input, through the same loop as the ingress
//! (`publish/mod.rs`: parse from the front, keep the rest, stop at a refusal that closes).
//!
//! Byte 0 picks `max_payload` (bits 0-2) and how many bytes at the end are read boundaries
//! (bits 3-7: N, one byte each, scaled to the stream's length); the rest is the stream.
#![no_main]

use crier::publish::protocol::{MAX_LINE, Parsed, parse};
use libfuzzer_sys::fuzz_target;

/// A command as the ingress acts on it. A refusal that closes the connection ends the
/// stream, so its `used` (how far it looked) does not matter and is not compared.
#[derive(Debug, PartialEq, Eq)]
enum Cmd {
    Publish(String, crier::ws::frame::MessageKind, Vec<u8>, usize),
    Ping(usize),
    Empty(usize),
    Refused(String, bool, Option<usize>),
}

fn own(p: &Parsed<'_>, used: usize) -> Cmd {
    match p {
        Parsed::Publish { channel, kind, payload } => Cmd::Publish(channel.to_string(), *kind, payload.to_vec(), used),
        Parsed::Ping => Cmd::Ping(used),
        Parsed::Empty => Cmd::Empty(used),
        Parsed::Refused { error, message, close } => {
            Cmd::Refused(format!("{error:?}: {message}"), *close, (!close).then_some(used))
        }
    }
}

fn parse_checked(buf: &[u8], max_payload: usize) -> Option<Cmd> {
    let (p, used) = parse(buf, max_payload)?;
    assert!(used > 0 && used <= buf.len(), "used {used} of {}", buf.len());
    Some(own(&p, used))
}

/// The ingress loop over reads: returns the commands in order.
fn ingress(stream: &[u8], cuts: &[usize], max_payload: usize) -> Vec<Cmd> {
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&stream.len())) {
        if end < start {
            continue;
        }
        buf.extend_from_slice(&stream[start..end]);
        start = end;
        let mut pos = 0;
        while let Some(cmd) = parse_checked(&buf[pos..], max_payload) {
            let used = match &cmd {
                Cmd::Publish(.., u) | Cmd::Ping(u) | Cmd::Empty(u) | Cmd::Refused(_, false, Some(u)) => *u,
                Cmd::Refused(..) => {
                    out.push(cmd);
                    return out;
                }
            };
            pos += used;
            out.push(cmd);
        }
        buf.drain(..pos);
        assert!(buf.len() < max_payload + MAX_LINE + 4, "{} undecided bytes buffered", buf.len());
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else { return };
    let max_payload = [0, 1, 16, 100, 1000, 70_000, 5, 2048][usize::from(control & 7)];
    let split = rest.len().saturating_sub(usize::from(control >> 3));
    let (stream, chunking) = rest.split_at(split);

    // Prefixes: each one is undecided or decided exactly as the whole stream is.
    let whole = parse_checked(stream, max_payload);
    let step = (stream.len() / 64).max(1);
    for k in (0..stream.len()).step_by(step).chain(stream.len().checked_sub(1)) {
        if let Some(cmd) = parse_checked(&stream[..k], max_payload) {
            assert_eq!(Some(&cmd), whole.as_ref(), "prefix of {k} bytes decided differently");
        }
    }
    if stream.len() >= max_payload + MAX_LINE + 4 {
        assert!(whole.is_some(), "a full ingress buffer is undecided");
    }

    let mut cuts: Vec<usize> = chunking.iter().map(|&b| b as usize * stream.len() / 255).collect();
    cuts.sort_unstable();
    let one_read = ingress(stream, &[], max_payload);
    assert_eq!(ingress(stream, &cuts, max_payload), one_read, "reads cut at {cuts:?}");
    if stream.len() <= 200 {
        let every: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(ingress(stream, &every, max_payload), one_read, "one byte per read");
    }
});
