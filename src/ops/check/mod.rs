//! `crier check`: a preflight that reads this machine's limits and says whether it can hold
//! N WebSocket connections, and for every setting that stands in the way, exactly what to
//! change and in which file of `tuning/` (or `systemd/crier.service`).
//!
//! This module owns the command line of `crier check` ([`CheckArgs`]) and [`run`], which
//! wires the three steps together; it holds no rule and formats nothing itself:
//! - `readings.rs`: what is read off the machine (`Readings::from_system`); a value that
//!   cannot be read (a hidden `/proc`, a missing sysctl) is `None`, never a panic;
//! - `rules.rs`: what each reading must be for N connections, and the advice (`assess`, a
//!   pure function, so every rule is unit-tested on made-up machines in `tests.rs`);
//! - `report.rs`: the table or JSON, and the exit status.
//!
//! Statuses: `blocking` means N connections cannot be held until it is fixed (the exit code
//! is then 1); `advice` means N fits but the box will behave worse than it could (reconnect
//! storms, memory pressure, io_uring unavailable); `ok`; `info`; `unknown`.
//!
//! `crier check` never changes the system: it only reads, and probes io_uring with a ring
//! that it closes at once.

use std::process::ExitCode;

use crate::config::CheckArgs;

mod readings;
mod report;
mod rules;
#[cfg(test)]
mod tests;

use readings::Readings;
pub use readings::{NofileLimits, nofile_limits};
use rules::assess;

/// `crier check`: reads this machine, prints the report, exits 1 when something blocks N.
pub fn run(args: &CheckArgs) -> ExitCode {
    report::print(&assess(&Readings::from_system(), args), args.json)
}
