//! permessage-deflate inflate with a cap (`ws::deflate::Inflater::inflate`).
//!
//! Checks: no panic; the output is never longer than the cap; a deflate bomb (16 MiB of
//! zeros, 16 KiB compressed, possibly cut or with bytes changed by the input) stops at the
//! cap; what the shard's `Compressor` produced inflates back to the same bytes, and is
//! "too big" one byte under its length; and one message leaves nothing behind for the next
//! (one inflater serves a whole shard): the result does not depend on what came before.
//!
//! Byte 0 picks the mode, bytes 1-3 the cap (up to 16 MiB; 1 MiB for the bomb).
#![no_main]

use std::sync::OnceLock;

use crier::ws::deflate::{Compressor, InflateError, Inflater};
use libfuzzer_sys::fuzz_target;

const BOMB_BYTES: usize = 16 << 20;

fn bomb() -> &'static [u8] {
    static BOMB: OnceLock<Vec<u8>> = OnceLock::new();
    BOMB.get_or_init(|| Compressor::new().compress(&vec![0u8; BOMB_BYTES]).expect("zeros compress"))
}

fn capped(inflater: &mut Inflater, data: &[u8], cap: usize) -> Result<Vec<u8>, InflateError> {
    let out = inflater.inflate(data, cap).map(<[u8]>::to_vec);
    if let Ok(out) = &out {
        assert!(out.len() <= cap, "inflated {} bytes with a cap of {cap}", out.len());
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let mode = data[0] % 3;
    let cap = usize::from(data[1]) << 16 | usize::from(data[2]) << 8 | usize::from(data[3]);
    let rest = &data[4..];
    let mut inflater = Inflater::new();
    match mode {
        // Arbitrary bytes as a compressed payload, after another message on the same inflater.
        0 => {
            let fresh = capped(&mut Inflater::new(), rest, cap);
            let _ = capped(&mut inflater, &rest[rest.len() / 2..], cap);
            assert_eq!(capped(&mut inflater, rest, cap), fresh, "state left from the previous message");
        }
        // The bomb, cut at a point and with up to 4 bytes replaced, both from the input.
        1 => {
            let mut z = bomb().to_vec();
            let mut edits = rest.chunks_exact(3);
            if let Some(cut) = edits.next() {
                let at = (usize::from(cut[0]) << 16 | usize::from(cut[1]) << 8 | usize::from(cut[2])) % (z.len() + 1);
                z.truncate(at.max(1));
            }
            for e in edits.take(4) {
                let at = (usize::from(e[0]) << 8 | usize::from(e[1])) % z.len();
                z[at] = e[2];
            }
            // Caps up to 1 MiB: enough to show the stop, cheap enough per run.
            let cap = cap % (1 << 20);
            let res = capped(&mut inflater, &z, cap);
            if z == bomb() {
                assert_eq!(res, Err(InflateError::TooBig), "the whole bomb under a cap of {cap}");
            }
        }
        // Round trip through the compressor the hub uses.
        _ => {
            let Some(z) = Compressor::new().compress(rest) else { return };
            assert_eq!(capped(&mut inflater, &z, rest.len()).as_deref(), Ok(rest), "round trip");
            assert_eq!(capped(&mut inflater, &z, rest.len() - 1), Err(InflateError::TooBig));
            assert_eq!(capped(&mut inflater, &z, cap.max(rest.len())).as_deref(), Ok(rest));
        }
    }
});
