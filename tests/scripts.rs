//! The repository's scripts: `.ci/run` passes shellcheck, the Python interop script compiles.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn ci_run_passes_shellcheck() {
    let out = match Command::new("shellcheck").arg(root().join(".ci/run")).output() {
        Ok(o) => o,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("shellcheck not installed ({e}); skipped outside CI (.ci/run installs it)");
            return;
        }
        Err(e) => panic!("shellcheck is missing in CI: {e}"),
    };
    assert!(out.status.success(), "shellcheck .ci/run:\n{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn ci_run_is_executable_bash() {
    use std::os::unix::fs::PermissionsExt;
    let p = root().join(".ci/run");
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.starts_with("#!/usr/bin/env bash\n") || text.starts_with("#!/bin/bash\n"));
    assert!(text.contains("set -euo pipefail"));
    assert!(text.contains("cargo test --workspace"), "must run the README's test command");
    let mode = std::fs::metadata(&p).unwrap().permissions().mode();
    assert!(mode & 0o111 != 0, ".ci/run is not executable");
}

#[test]
fn python_interop_script_compiles() {
    let script = root().join("tests/python/subscribe.py");
    let out = Command::new("python3")
        .args(["-c", "import sys; compile(open(sys.argv[1]).read(), sys.argv[1], 'exec')"])
        .arg(&script)
        .output()
        .expect("python3 is needed for the interop tests");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
