//! crier: a thread-per-core WebSocket broadcast server.
//!
//! See ARCHITECTURE.md for the map. The binary (`main.rs`) only dispatches subcommands.

pub mod admin;
pub mod channel;
pub mod check;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod deflate;
pub mod fanout;
pub mod frame;
pub mod handshake;
pub mod history;
pub mod hub;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod outbound;
pub mod publish;
pub mod server;
pub mod shard;
pub mod sockio;
