//! The `--config` TOML file, folded into the command line: each key is a flag name of
//! `crier serve --help`, checked on its own so an error names the file and the key, and
//! used only where the command line and the environment left the default.

use std::ffi::OsString;
use std::path::Path;

use clap::ArgMatches;
use clap::parser::ValueSource;

/// Turns the TOML file into `--key=value` arguments for the settings that the command line
/// and environment left at their defaults. Each value is checked on its own first, so an
/// error names the file and the key.
/// `serve` builds `crier serve`'s arguments onto a command (`ServeArgs::augment_args`).
pub(super) fn file_args(
    path: &Path,
    matches: &ArgMatches,
    serve: impl Fn(clap::Command) -> clap::Command,
) -> Result<Vec<OsString>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    text_args(&text, path, matches, serve)
}

/// [`file_args`] on the file's text (`path` only names it in errors).
pub(super) fn text_args(
    text: &str,
    path: &Path,
    matches: &ArgMatches,
    serve: impl Fn(clap::Command) -> clap::Command,
) -> Result<Vec<OsString>, String> {
    let table: toml::Table =
        text.parse().map_err(|e| format!("config file {}: not valid TOML: {e}", path.display()))?;
    let cmd = serve(clap::Command::new("serve"));
    let mut out = Vec::new();
    for (key, value) in table {
        let Some(arg) = cmd.get_arguments().find(|a| a.get_long() == Some(key.as_str()) && key != "config") else {
            return Err(format!(
                "config file {}: unknown setting '{key}' (settings are the flag names of `crier serve --help`, e.g. ping-interval)",
                path.display()
            ));
        };
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Float(f) => f.to_string(),
            // A list of seed URLs: `redis-cluster = ["redis://a:7000", "redis://b:7001"]`.
            toml::Value::Array(items) if key == "redis-cluster" => {
                let urls: Option<Vec<&str>> = items.iter().map(toml::Value::as_str).collect();
                match urls {
                    Some(urls) => urls.join(","),
                    None => {
                        return Err(format!(
                            "config file {}: setting 'redis-cluster' must be a string or a list of URL strings",
                            path.display()
                        ));
                    }
                }
            }
            other => {
                return Err(format!(
                    "config file {}: setting '{key}' must be a string, number or boolean, not {}",
                    path.display(),
                    other.type_str()
                ));
            }
        };
        let flag = format!("--{key}={value}");
        if let Err(e) = serve(clap::Command::new("serve").no_binary_name(true)).try_get_matches_from([&flag]) {
            let detail = e.kind().as_str().unwrap_or("invalid value");
            let why = e.to_string();
            let why = why.lines().next().unwrap_or(detail).trim_start_matches("error: ");
            return Err(format!("config file {}: setting '{key}' = {value:?}: {why}", path.display()));
        }
        let id = arg.get_id().as_str();
        if !matches!(matches.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
            out.push(OsString::from(flag));
        }
    }
    Ok(out)
}
