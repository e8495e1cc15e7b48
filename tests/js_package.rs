//! crier.js as an npm package (`clients/js/package.json`, `crier.d.ts`): `npm pack` ships
//! exactly the client, its types, its README and package.json; a scratch project installs
//! it from the checkout and from the packed tarball, imports it in Node (every export and
//! method of crier.js is declared in crier.d.ts), and `tsc --noEmit --strict` compiles
//! `tests/js/types-check.mts` (the whole API, and misuses marked `@ts-expect-error` that
//! must be refused) and the README's TypeScript snippet against the installed package, with
//! the module resolutions of a bundler and of Node.
//!
//! Needs node and npm (`apt-get install -y nodejs npm`) and TypeScript in tests/js
//! (`cd tests/js && npm ci`): scripts/test.sh installs them.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| {
        panic!("run {cmd:?}: {e} (node and npm: apt-get install -y nodejs npm; scripts/test.sh installs them)")
    })
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn npm(dir: &Path, args: &[&str]) -> String {
    // --offline: the package has no dependency, so nothing may come from a registry.
    ok(Command::new("npm").args(args).args(["--offline", "--no-audit", "--no-fund"]).current_dir(dir))
}

fn tsc() -> PathBuf {
    let tsc = repo().join("tests/js/node_modules/typescript/bin/tsc");
    assert!(tsc.exists(), "TypeScript is not installed in tests/js: cd tests/js && npm ci (scripts/test.sh does)");
    tsc
}

/// A scratch npm project (an ES module package) with crier-client installed from `spec`.
fn project_with(spec: &str) -> common::TempDir {
    let dir = common::TempDir::new();
    std::fs::write(dir.join("package.json"), r#"{"name":"scratch","private":true,"type":"module"}"#).unwrap();
    npm(dir.path(), &["install", spec]);
    dir
}

/// `tsc --noEmit --strict` on `files` in `dir`, with one module resolution.
fn typecheck(dir: &Path, files: &[&str], resolution: &str) {
    let module = if resolution == "bundler" { "esnext" } else { resolution };
    let out = run(Command::new("node")
        .arg(tsc())
        .args(["--noEmit", "--strict", "--target", "es2022", "--lib", "es2022,dom"])
        .args(["--module", module, "--moduleResolution", resolution])
        .args(files)
        .current_dir(dir));
    assert!(out.status.success(), "tsc --strict ({resolution}) {files:?}:\n{}", text(&out));
}

#[test]
fn package_json_matches_the_crate_and_points_at_the_client() {
    let pkg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("clients/js/package.json")).unwrap()).unwrap();
    assert_eq!(pkg["version"], VERSION, "clients/js/package.json's version is the crate's");
    assert_eq!(pkg["main"], "./crier.js");
    assert_eq!(pkg["types"], "./crier.d.ts");
    assert_eq!(pkg["exports"]["."]["types"], "./crier.d.ts");
    assert_eq!(pkg["exports"]["."]["default"], "./crier.js");
    assert_eq!(pkg["license"], "MIT OR Apache-2.0");
}

#[test]
fn npm_pack_ships_the_client_and_its_types() {
    let out = npm(&repo().join("clients/js"), &["pack", "--dry-run", "--json"]);
    let packed: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("npm pack --json: {e}\n{out}"));
    let mut files: Vec<&str> =
        packed[0]["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    files.sort();
    assert_eq!(files, ["README.md", "crier.d.ts", "crier.js", "package.json"]);
    assert_eq!(packed[0]["filename"], format!("crier-client-{VERSION}.tgz"));
}

/// Every export of crier.js and every public member of CrierClient, as Node sees them.
fn exported_names(project: &Path) -> Vec<String> {
    let script = r#"
        import * as m from "crier-client";
        import { createRequire } from "node:module";
        const resolved = createRequire(import.meta.url).resolve("crier-client");
        if (!resolved.endsWith("crier.js")) throw new Error(`resolved to ${resolved}`);
        const c = new m.CrierClient("ws://127.0.0.1:9/ws", { connect: false, channels: ["a", "a", "b"] });
        if (c.channels.join() !== "a,b" || c.connected !== false || c.lastSeq("a") !== 0) throw new Error("client");
        const names = [...Object.keys(m), ...Object.getOwnPropertyNames(m.CrierClient.prototype),
                       ...Object.keys(c)].filter((n) => !n.startsWith("_") && n !== "constructor");
        console.log(JSON.stringify([...new Set(names)]));
    "#;
    let out = ok(Command::new("node").args(["--input-type=module", "-e", script]).current_dir(project));
    serde_json::from_str(out.trim()).unwrap()
}

#[test]
fn installs_from_the_checkout_and_imports() {
    let project = project_with(repo().join("clients/js").to_str().unwrap());
    let names = exported_names(project.path());
    let dts = std::fs::read_to_string(repo().join("clients/js/crier.d.ts")).unwrap();
    for name in &names {
        let declared =
            [format!("const {name}:"), format!("class {name} "), format!("  readonly {name}:"), format!("  {name}(")]
                .iter()
                .any(|d| dts.contains(d.as_str()));
        assert!(declared, "crier.js has `{name}`, crier.d.ts does not declare it");
    }
    for name in
        ["CrierClient", "SUBPROTOCOL", "TOKEN_EXPIRED", "connect", "close", "position", "dropConnection", "epoch"]
    {
        assert!(names.iter().any(|n| n == name), "{name} missing from crier.js as imported: {names:?}");
    }
}

#[test]
fn types_compile_strict_against_the_packed_package() {
    let pack_dir = common::TempDir::new();
    let out =
        npm(&repo().join("clients/js"), &["pack", "--json", "--pack-destination", pack_dir.path().to_str().unwrap()]);
    let packed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let tarball = pack_dir.join(packed[0]["filename"].as_str().unwrap());
    let project = project_with(tarball.to_str().unwrap());
    assert!(
        project.join("node_modules/crier-client/crier.d.ts").is_file()
            && !project.join("node_modules/crier-client").is_symlink(),
        "a real copy of the package, with its types"
    );
    assert!(exported_names(project.path()).iter().any(|n| n == "CrierClient"));

    std::fs::copy(repo().join("tests/js/types-check.mts"), project.join("types-check.mts")).unwrap();
    // The README's TypeScript snippet, as written there.
    let readme = common::readme();
    let section = &readme[readme.find("### crier.js package").expect("README section \"crier.js package\"")..];
    let snippet = &section[section.find("```ts\n").expect("a ```ts block") + 6..];
    let snippet = &snippet[..snippet.find("```").unwrap()];
    std::fs::write(project.join("readme-snippet.mts"), snippet).unwrap();
    for resolution in ["bundler", "nodenext"] {
        typecheck(project.path(), &["types-check.mts", "readme-snippet.mts"], resolution);
    }

    // And the check can fail: a program that misuses the API is refused.
    std::fs::write(
        project.join("misuse.mts"),
        "import { CrierClient } from \"crier-client\";\n\
         new CrierClient(\"ws://h/ws\").addEventListener(\"message\", (e) => { const n: number = e.detail.data; });\n",
    )
    .unwrap();
    let out = run(Command::new("node")
        .arg(tsc())
        .args(["--noEmit", "--strict", "--lib", "es2022,dom", "--module", "nodenext", "misuse.mts"])
        .current_dir(project.path()));
    assert!(!out.status.success() && text(&out).contains("TS2322"), "tsc accepted a misuse:\n{}", text(&out));
}
