//! The answer of `crier check`: the [`Report`] and its [`Finding`]s as data, the table people
//! read, the JSON machines read, and the exit status (0 when nothing blocks N, 1 when
//! something does, 2 when the report cannot be encoded).
//!
//! It must never judge a reading (that is `rules.rs`): it shows what the rules found, as they
//! found it.

use std::fmt::Write as _;
use std::process::ExitCode;

use serde::Serialize;

/// How one setting stands against N connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine for N.
    Ok,
    /// Facts with no judgement.
    Info,
    /// N fits, but changing this makes the box behave better.
    Advice,
    /// N connections cannot be held until this changes.
    Blocking,
    /// Could not be read.
    Unknown,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Info => "info",
            Status::Advice => "advice",
            Status::Blocking => "BLOCKING",
            Status::Unknown => "unknown",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The setting, as the operator knows it: `RLIMIT_NOFILE`, `fs.nr_open`, `memory`, …
    pub item: &'static str,
    pub status: Status,
    /// The live value.
    pub current: String,
    /// What N connections need (empty when nothing specific).
    pub needed: String,
    /// Why it matters.
    pub why: String,
    /// What to change and where; set whenever `status` is `advice` or `blocking`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The memory estimate behind the `memory` finding.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryEstimate {
    pub kernel_bytes_per_connection: u64,
    pub user_bytes_per_connection: u64,
    pub idle_bytes: u64,
    pub broadcast_bytes: u64,
}

/// The whole answer of `crier check`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub connections: u64,
    /// `ok` or `blocked`.
    pub verdict: &'static str,
    pub blocking: usize,
    pub advice: usize,
    pub memory: MemoryEstimate,
    pub findings: Vec<Finding>,
}

/// 1536 → "1.5 KiB", 3 GiB → "3.0 GiB".
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{b} B") } else { format!("{v:.1} {}", UNITS[i]) }
}

/// The report as the table `crier check` prints.
pub fn render_table(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "crier check: can this machine hold {} connections?\n", report.connections);
    let _ = writeln!(s, "{:<9} {:<30} {:<44} NEEDED", "STATUS", "SETTING", "CURRENT");
    for f in &report.findings {
        let _ = writeln!(s, "{:<9} {:<30} {:<44} {}", f.status.label(), f.item, f.current, f.needed);
        if matches!(f.status, Status::Advice | Status::Blocking | Status::Unknown) || f.fix.is_some() {
            wrap(&mut s, "why: ", &f.why);
            if let Some(fix) = &f.fix {
                wrap(&mut s, "fix: ", fix);
            }
        }
    }
    let m = &report.memory;
    let _ = writeln!(
        s,
        "\nmemory estimate: {} × ({} kernel + {} crier) = {} idle, +{} while a broadcast is in flight",
        report.connections,
        human_bytes(m.kernel_bytes_per_connection),
        human_bytes(m.user_bytes_per_connection),
        human_bytes(m.idle_bytes),
        human_bytes(m.broadcast_bytes)
    );
    if report.blocking == 0 {
        let _ = writeln!(
            s,
            "verdict: ok, this machine can hold {} connections ({} advice)",
            report.connections, report.advice
        );
    } else {
        let _ = writeln!(
            s,
            "verdict: BLOCKED, {} setting(s) stop {} connections; fix the BLOCKING lines above ({} advice)",
            report.blocking, report.connections, report.advice
        );
    }
    s
}

/// Word-wraps `text` under the table, indented, at ~100 columns.
fn wrap(out: &mut String, label: &str, text: &str) {
    const INDENT: usize = 10;
    const WIDTH: usize = 100;
    let mut line = format!("{:INDENT$}{label}", "");
    let mut fresh = true;
    for word in text.split_whitespace() {
        if !fresh && line.chars().count() + 1 + word.chars().count() > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = format!("{:w$}", "", w = INDENT + label.len());
            fresh = true;
        }
        if !fresh {
            line.push(' ');
        }
        line.push_str(word);
        fresh = false;
    }
    out.push_str(&line);
    out.push('\n');
}

/// Prints the report (the table, or one JSON object with `json`) and returns the exit status.
pub fn print(report: &Report, json: bool) -> ExitCode {
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("crier check: cannot encode the report as JSON: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", render_table(report));
    }
    if report.blocking == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_picks_the_unit() {
        assert_eq!(human_bytes(3686), "3.6 KiB");
        assert_eq!(human_bytes(100), "100 B");
    }
}
