//! The fuzz targets' short run: `scripts/fuzz.sh 20` runs each of the five cargo-fuzz
//! targets in fuzz/ for 20 seconds from the committed seed corpora (and what earlier runs
//! found), so a change that makes one of them crash fails the suite. The long runs and
//! their results are in the README ("Fuzzing").
//!
//! Needs the nightly toolchain and cargo-fuzz; scripts/test.sh installs both, and the
//! script fails (it never skips) with the install command when one is missing.

use std::path::Path;
use std::process::Command;

#[test]
fn every_fuzz_target_runs_20_seconds_without_a_crash() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out =
        Command::new(root.join("scripts/fuzz.sh")).arg("20").current_dir(root).output().expect("scripts/fuzz.sh runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scripts/fuzz.sh 20 failed ({}):\n{stdout}\n{stderr}", out.status);
    // One summary line per target, each with a final libFuzzer status line: all five ran.
    for target in ["frame_reader", "handshake", "publish_protocol", "inflate", "config"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{target}: status 0,")))
            .unwrap_or_else(|| panic!("no successful run of {target} in:\n{stdout}"));
        assert!(line.contains("DONE") && line.contains("cov: "), "{target} did not finish its run: {line}");
    }
}
