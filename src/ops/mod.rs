//! What operators see and what keeps the process healthy: the admin HTTP endpoint, metrics,
//! `/stats` and the status page, `crier status`, systemd notifications, the descriptor
//! budget, memory release, and the `crier check` preflight. Nothing here is on the
//! per-message path.

pub mod admin;
pub mod capacity;
pub mod check;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod page;
pub mod stats;
pub mod status;
