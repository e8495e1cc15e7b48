//! crier: a thread-per-core WebSocket broadcast server.
//!
//! See ARCHITECTURE.md for the map. The binary (`main.rs`) only dispatches subcommands.

pub mod access;
pub mod channel;
pub mod cluster;
pub mod config;
pub mod hub;
pub mod ops;
pub mod peer;
pub mod publish;
pub mod server;
pub mod shard;
pub mod ws;
