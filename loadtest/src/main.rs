//! crier-load: the load-test tool of crier. See loadtest/README.md.

use clap::Parser;
use crier_load::{cli, coordinator, worker};

fn main() {
    // Workers are this binary re-executed with the hidden `worker` subcommand; they read
    // their configuration and commands from stdin and answer in JSON lines on stdout.
    if std::env::args_os().nth(1).is_some_and(|a| a == "worker") {
        worker::main();
    }
    let cli = cli::Cli::parse();
    std::process::exit(coordinator::run(cli));
}
