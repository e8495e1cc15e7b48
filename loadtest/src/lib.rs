//! crier-load's parts, shared by its two binaries: `crier-load` (src/main.rs: many
//! subscribers, a scheduled publisher, one merged report) and `crier-pubrate`
//! (src/bin/crier-pubrate.rs: the publish-rate ceiling), which reuses the WebSocket
//! client (`ws`) and the /proc readings (`sys`). See loadtest/README.md.

pub mod channels;
pub mod cli;
pub mod coordinator;
pub mod payload;
pub mod progress;
pub mod publisher;
pub mod report;
pub mod sys;
pub mod tracker;
pub mod worker;
pub mod ws;
