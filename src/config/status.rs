//! Arguments of `crier status` (the client is `ops::status`).

use std::path::PathBuf;

use clap::Args;

/// Arguments of `crier status`.
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// The admin address of the crier to ask (its --admin-listen): `http://HOST:PORT` or
    /// `HOST:PORT`.
    #[arg(long, env = "CRIER_ADMIN_URL", default_value = "http://127.0.0.1:9100", value_name = "URL")]
    pub admin: String,
    /// Refresh in place every second until interrupted (Ctrl-C).
    #[arg(long)]
    pub watch: bool,
    /// The file holding the admin token (the server's --admin-token-file), sent as
    /// `Authorization: Bearer`.
    #[arg(long, env = "CRIER_ADMIN_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Print the /stats document (JSON) as it came, instead of the table.
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    /// With --watch: stop after N refreshes (for tests and scripts; the exit code is the
    /// last refresh's). [default: until interrupted]
    #[arg(long, value_name = "N", requires = "watch", hide = true)]
    pub watch_count: Option<u64>,
}
