//! The `crier` binary: parse the command line, dispatch to serve, publish, check or status.

use std::process::ExitCode;

use crier::config::{self, Command};

#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs before anything allocates (before `main`, and before mimalloc's own constructor,
/// which reads its options): see [`crier::ops::memory::allocator_defaults`].
#[cfg(not(feature = "system-alloc"))]
#[used]
#[unsafe(link_section = ".init_array.00101")]
static ALLOCATOR_DEFAULTS: extern "C" fn() = {
    extern "C" fn run() {
        crier::ops::memory::allocator_defaults();
    }
    run
};

fn main() -> ExitCode {
    let cli = match config::parse_cli() {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Serve(args) => match args.resolve() {
            Ok(cfg) => {
                init_logging(&cfg.log_filter);
                crier::server::run(cfg)
            }
            Err(e) => {
                eprintln!("crier: {e}");
                ExitCode::from(2)
            }
        },
        Command::Publish(args) => crier::publish::client::run(&args),
        Command::Check(args) => crier::ops::check::run(&args),
        Command::Status(args) => crier::ops::status::run(&args),
    }
}

fn init_logging(filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("crier: bad log filter {filter:?} ({e}); using info");
        tracing_subscriber::EnvFilter::new("info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
