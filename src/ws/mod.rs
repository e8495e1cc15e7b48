//! The WebSocket protocol, pure: RFC 6455 frames and handshake, RFC 7692 permessage-deflate,
//! and the HTTP responses they need. Nothing here does IO or knows about shards or the hub,
//! so every parser can be unit-tested and fuzzed on bytes alone.

pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod http;
pub mod reader;

#[cfg(test)]
mod proptests;
