#!/usr/bin/env bash
# The README's test command: on a fresh Debian machine (as root, or with sudo), install what
# the test suite needs and is missing, then run the whole suite (`cargo test --workspace`).
# `.ci/run` calls exactly this. Safe to run again: every install step is skipped when its
# tool is already there.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_ROOT_USER_ACTION=ignore

# Rust toolchain (rustup installs it under ~/.cargo).
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck source=/dev/null
    . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo ".ci/run: cargo is not on PATH and ~/.cargo/env does not exist" >&2
    exit 1
fi

sudo_if_needed() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian packages: a C compiler (crates with C code), python3 with pip (interop tests),
# and ShellCheck (tests/scripts.rs lints this script).
apt_missing=()
command -v cc >/dev/null 2>&1 || apt_missing+=(build-essential)
command -v python3 >/dev/null 2>&1 || apt_missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || apt_missing+=(python3-pip)
command -v shellcheck >/dev/null 2>&1 || apt_missing+=(shellcheck)
# systemd-analyze (tests/ops_files.rs verifies the unit and its security exposure),
# nginx and openssl (the NGINX sample is checked with nginx -t and a live upgrade).
command -v systemd-analyze >/dev/null 2>&1 || apt_missing+=(systemd)
command -v nginx >/dev/null 2>&1 || apt_missing+=(nginx-light)
command -v openssl >/dev/null 2>&1 || apt_missing+=(openssl)
# redis-server and redis-cli (>= 7) for the cluster-mode tests (real Redis on loopback ports:
# standalone, and a three-master Redis Cluster for tests/cluster_sharded.rs).
command -v redis-server >/dev/null 2>&1 || apt_missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || apt_missing+=(redis-tools)
# HAProxy for tests/proxy.rs (the PROXY protocol from a real L4 balancer, send-proxy-v2).
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || apt_missing+=(haproxy)
# promtool (Debian's prometheus package) and PyYAML for tests/dashboards.rs (the alert rules
# and the Grafana dashboard under deploy/).
command -v promtool >/dev/null 2>&1 || apt_missing+=(prometheus)
python3 -c 'import yaml' >/dev/null 2>&1 || apt_missing+=(python3-yaml)
# Headless Chromium and Node.js with npm for tests/browser.rs (crier.js in a real browser).
[ -x /usr/bin/chromium ] || apt_missing+=(chromium)
command -v node >/dev/null 2>&1 || apt_missing+=(nodejs)
command -v npm >/dev/null 2>&1 || apt_missing+=(npm)
# lintian for tests/deb.rs (the .deb that cargo deb builds has no lintian error).
command -v lintian >/dev/null 2>&1 || apt_missing+=(lintian)
if [ "${#apt_missing[@]}" -gt 0 ]; then
    echo ".ci/run: installing ${apt_missing[*]}"
    sudo_if_needed apt-get update -q
    sudo_if_needed apt-get install -y -q --no-install-recommends "${apt_missing[@]}"
fi

# Python `websockets`, the independent client of tests/interop.rs.
if ! python3 -c 'import websockets' >/dev/null 2>&1; then
    echo ".ci/run: installing Python websockets"
    python3 -m pip install -q websockets \
        || python3 -m pip install -q --break-system-packages websockets \
        || { sudo_if_needed apt-get update -q && sudo_if_needed apt-get install -y -q python3-websockets; }
fi
python3 -c 'import websockets; print("python websockets", websockets.__version__)'

# kosoku, the Autobahn TestSuite runner of tests/autobahn.rs (crier serve --echo).
if ! command -v kosoku >/dev/null 2>&1; then
    echo ".ci/run: installing kosoku"
    python3 -m pip install -q kosoku \
        || python3 -m pip install -q --break-system-packages kosoku
fi
kosoku --help >/dev/null

# Python PyJWT with cryptography (ES256, EdDSA): tests/access.rs mints its tokens with them.
if ! python3 -c 'import jwt, cryptography' >/dev/null 2>&1; then
    echo ".ci/run: installing Python PyJWT and cryptography"
    python3 -m pip install -q PyJWT cryptography \
        || python3 -m pip install -q --break-system-packages PyJWT cryptography \
        || { sudo_if_needed apt-get update -q && sudo_if_needed apt-get install -y -q python3-jwt python3-cryptography; }
fi
python3 -c 'import jwt, cryptography; print("python PyJWT", jwt.__version__, "cryptography", cryptography.__version__)'

# playwright-core (drives /usr/bin/chromium; it downloads no browser) for tests/browser.rs,
# at the version tests/browser/package-lock.json pins.
browser_dir=tests/browser
if [ -f "$browser_dir/package-lock.json" ]; then
    want_pw=$(node -p "require('./$browser_dir/package-lock.json').packages['node_modules/playwright-core'].version")
    have_pw=$(node -p "try { require('./$browser_dir/node_modules/playwright-core/package.json').version } catch { '' }")
    if [ "$have_pw" != "$want_pw" ]; then
        echo ".ci/run: installing playwright-core $want_pw in $browser_dir"
        (cd "$browser_dir" && npm ci --no-audit --no-fund)
    fi
fi
node --version
/usr/bin/chromium --version 2>/dev/null

# TypeScript for tests/js_package.rs (tsc --strict on crier.d.ts), at the version
# tests/js/package-lock.json pins.
js_dir=tests/js
want_ts=$(node -p "require('./$js_dir/package-lock.json').packages['node_modules/typescript'].version")
have_ts=$(node -p "try { require('./$js_dir/node_modules/typescript/package.json').version } catch { '' }")
if [ "$have_ts" != "$want_ts" ]; then
    echo ".ci/run: installing typescript $want_ts in $js_dir"
    (cd "$js_dir" && npm ci --no-audit --no-fund)
fi

# cargo-deb for tests/deb.rs (cargo deb builds the Debian package).
if ! cargo deb --version >/dev/null 2>&1; then
    echo ".ci/run: installing cargo-deb"
    cargo install cargo-deb --locked
fi
cargo deb --version

# The nightly toolchain and cargo-fuzz for tests/fuzz_smoke.rs (scripts/fuzz.sh runs each
# fuzz target for a short bounded time).
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo ".ci/run: installing the nightly Rust toolchain (cargo-fuzz needs it)"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo ".ci/run: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
cargo +nightly --version
cargo fuzz --version

cargo --version
cargo test --workspace
