//! PLACEHOLDER until the ops work lands: `crier check` preflight.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Connections this machine should hold.
    #[arg(long, default_value = "100000")]
    pub connections: usize,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn run(_args: &CheckArgs) -> std::process::ExitCode {
    eprintln!("crier check: not implemented yet");
    std::process::ExitCode::from(2)
}
