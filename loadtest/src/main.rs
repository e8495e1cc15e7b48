//! crier-load: the load-test tool of crier. See loadtest/README.md.

mod channels;
mod cli;
mod coordinator;
mod payload;
mod progress;
mod publisher;
mod report;
mod sys;
mod tracker;
mod worker;
mod ws;

use clap::Parser;

fn main() {
    // Workers are this binary re-executed with the hidden `worker` subcommand; they read
    // their configuration and commands from stdin and answer in JSON lines on stdout.
    if std::env::args_os().nth(1).is_some_and(|a| a == "worker") {
        worker::main();
    }
    let cli = cli::Cli::parse();
    std::process::exit(coordinator::run(cli));
}
