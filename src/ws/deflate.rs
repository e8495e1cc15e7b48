//! permessage-deflate (RFC 7692) payload transforms: compress once, inflate with a cap.
//!
//! crier always negotiates `server_no_context_takeover` and `client_no_context_takeover`,
//! so every message is compressed and inflated on its own. That is what lets the hub
//! compress a broadcast once for every subscriber, and lets a shard keep one [`Inflater`]
//! for all of its connections instead of a zlib stream (tens of KiB) per connection.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The four bytes a sync flush ends with; removed on send, appended on receive (§7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Compresses broadcast payloads (one per hub).
pub struct Compressor {
    inner: Compress,
}

impl Default for Compressor {
    fn default() -> Self {
        Self::new()
    }
}

impl Compressor {
    pub fn new() -> Self {
        // Raw DEFLATE (no zlib header), 32 KiB window; level 6 balances size and the one-off cost.
        Self { inner: Compress::new(Compression::new(6), false) }
    }

    /// The permessage-deflate payload for `data`, or `None` when compressing does not
    /// make it smaller (the message then goes out uncompressed, RSV1 clear).
    pub fn compress(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        self.deflate(data).filter(|out| out.len() < data.len())
    }

    /// The permessage-deflate payload for `data` (one message on its own, no context kept),
    /// however large; `None` only if zlib fails.
    pub fn deflate(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        self.inner.reset();
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        loop {
            let consumed = self.inner.total_in() as usize;
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            match self.inner.compress_vec(&data[consumed..], &mut out, FlushCompress::Sync) {
                Ok(_) => {}
                Err(_) => return None,
            }
            // Done once all input is in and the flush fit in the spare room.
            if self.inner.total_in() as usize == data.len() && out.len() < out.capacity() {
                break;
            }
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        Some(out)
    }
}

/// Why a compressed client message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    #[error("message inflates past the size limit")]
    TooBig,
    #[error("message is not valid DEFLATE data")]
    Corrupt,
}

/// Inflates client messages (one per shard, reset for every message).
pub struct Inflater {
    inner: Decompress,
    out: Vec<u8>,
}

impl Default for Inflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Inflater {
    pub fn new() -> Self {
        Self { inner: Decompress::new(false), out: Vec::new() }
    }

    /// Inflates one message's payload, refusing output larger than `cap` bytes.
    /// The result borrows this inflater's buffer until the next call.
    pub fn inflate(&mut self, data: &[u8], cap: usize) -> Result<&[u8], InflateError> {
        self.inner.reset(false);
        self.out.clear();
        for input in [data, &TAIL[..]] {
            let mut pos = 0;
            loop {
                if self.out.len() == self.out.capacity() {
                    // Grow geometrically, but never past cap + 1 (one byte more proves "too big").
                    let room = self.out.capacity().max(256).min(cap + 1 - self.out.len());
                    self.out.reserve_exact(room);
                }
                let (in_before, out_before) = (self.inner.total_in(), self.out.len());
                let status = self
                    .inner
                    .decompress_vec(&input[pos..], &mut self.out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Corrupt)?;
                pos += (self.inner.total_in() - in_before) as usize;
                if self.out.len() > cap {
                    return Err(InflateError::TooBig);
                }
                if status == Status::StreamEnd {
                    return Ok(&self.out); // a final block: anything after it is ignored
                }
                let room_left = self.out.len() < self.out.capacity();
                if pos == input.len() && room_left {
                    break; // all of this input consumed and everything flushed
                }
                let progressed = self.inner.total_in() != in_before || self.out.len() != out_before;
                if !progressed && room_left {
                    return Err(InflateError::Corrupt);
                }
            }
        }
        Ok(&self.out)
    }

    /// Drops the output buffer if a large message left it big (called from the shard sweep).
    pub fn shrink(&mut self) {
        if self.out.capacity() > 64 * 1024 {
            self.out = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tail_removed() {
        let text = br#"{"flight":"BA117","gate":"B32","status":"boarding","flight2":"BA117"}"#.repeat(20);
        let mut c = Compressor::new();
        let z = c.compress(&text).expect("repetitive text shrinks");
        assert!(z.len() < text.len() / 4);
        assert!(!z.ends_with(&TAIL));
        let mut i = Inflater::new();
        assert_eq!(i.inflate(&z, text.len()).unwrap(), &text[..]);
        // Each message stands alone (no context takeover): compressing again gives the same bytes.
        assert_eq!(c.compress(&text).unwrap(), z);
    }

    #[test]
    fn incompressible_payload_is_not_compressed() {
        let mut x: u64 = 0x9E3779B97F4A7C15;
        let random: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(Compressor::new().compress(&random), None);
        assert_eq!(Compressor::new().compress(b"a"), None);
    }

    #[test]
    fn large_payload_compresses_fully() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8 ^ (i / 7000) as u8).collect();
        let z = Compressor::new().compress(&data).unwrap();
        assert_eq!(Inflater::new().inflate(&z, data.len()).unwrap(), &data[..]);
    }

    #[test]
    fn inflate_cap_and_corrupt_input() {
        let data = vec![b'a'; 100_000];
        let z = Compressor::new().compress(&data).unwrap();
        let mut i = Inflater::new();
        assert_eq!(i.inflate(&z, 99_999), Err(InflateError::TooBig));
        assert_eq!(i.inflate(&z, 100_000).unwrap().len(), 100_000);
        assert_eq!(i.inflate(&[0xff, 0xff, 0xff, 0x00], 1000), Err(InflateError::Corrupt));
    }
}
