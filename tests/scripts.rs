//! The repository's scripts: `.ci/run`, `scripts/test.sh` (the README's test command) and
//! `scripts/fuzz.sh` pass shellcheck, and the Python interop script compiles.

#[macro_use]
mod common;

use common::assert_shellcheck;
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn ci_run_and_test_script_pass_shellcheck() {
    for script in [".ci/run", "scripts/test.sh", "scripts/fuzz.sh"] {
        assert_shellcheck(&root().join(script));
    }
}

#[test]
fn ci_run_is_the_readme_test_command() {
    use std::os::unix::fs::PermissionsExt;
    for script in [".ci/run", "scripts/test.sh"] {
        let p = root().join(script);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("#!/usr/bin/env bash\n") || text.starts_with("#!/bin/bash\n"), "{script}");
        assert!(text.contains("set -euo pipefail"), "{script}");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert!(mode & 0o111 != 0, "{script} is not executable");
    }
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    assert!(ci.contains("exec bash scripts/test.sh"), ".ci/run must run exactly the README's test command");
    let test = std::fs::read_to_string(root().join("scripts/test.sh")).unwrap();
    assert!(test.contains("cargo test --workspace"), "scripts/test.sh must end in the whole suite");
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let quick = &readme[readme.find("## Quickstart").unwrap()..readme.find("## Subscribers").unwrap()];
    assert!(quick.contains("\nscripts/test.sh\n"), "the quickstart's test command is scripts/test.sh");
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
