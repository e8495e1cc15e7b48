#!/usr/bin/env bash
# The flight board example: starts crier (target/release/crier, from `cargo build
# --release`), the publisher (publish.py: one flight changes every second) and a static web
# server for index.html, then prints the page's address. Ctrl-C stops all three.
#
#   examples/flight-board/run.sh
#
# Ports (environment): CRIER_LISTEN (crier's WebSocket address, default 127.0.0.1:8080),
# CRIER_ADMIN_LISTEN (default 127.0.0.1:9100), FLIGHT_BOARD_PORT (the page, default 8000).
# CRIER_BIN picks another crier binary.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
crier=${CRIER_BIN:-$root/target/release/crier}
page_port=${FLIGHT_BOARD_PORT:-8000}
export CRIER_LISTEN=${CRIER_LISTEN:-127.0.0.1:8080}
export CRIER_ADMIN_LISTEN=${CRIER_ADMIN_LISTEN:-127.0.0.1:9100}
# A demo: no need for crier's 100,000 (nor for the warning when the open-file limit is lower).
export CRIER_MAX_CONNECTIONS=${CRIER_MAX_CONNECTIONS:-1000}

if [[ ! -x $crier ]]; then
	echo "run.sh: $crier not found: build it first with  cargo build --release" >&2
	exit 1
fi
command -v python3 >/dev/null || {
	echo "run.sh: python3 is needed (apt-get install python3)" >&2
	exit 1
}

work=$(mktemp -d "${TMPDIR:-/tmp}/crier-flight-board.XXXXXX")
export CRIER_PUBLISH_SOCKET=$work/publish.sock
pids=()
# shellcheck disable=SC2317 # called by the EXIT trap
stop() {
	trap - EXIT INT TERM
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap stop EXIT
interrupted=""
trap 'interrupted=130' INT
trap 'interrupted=143' TERM

"$crier" serve &
pids+=($!)
# crier creates the publisher socket once it is ready.
for _ in $(seq 100); do
	[[ -S $CRIER_PUBLISH_SOCKET ]] && break
	kill -0 "${pids[0]}" 2>/dev/null || {
		echo "run.sh: crier exited (is $CRIER_LISTEN or $CRIER_ADMIN_LISTEN in use?)" >&2
		exit 1
	}
	sleep 0.1
done
[[ -S $CRIER_PUBLISH_SOCKET ]] || {
	echo "run.sh: crier did not create $CRIER_PUBLISH_SOCKET within 10 s" >&2
	exit 1
}

python3 "$here/publish.py" --socket "$CRIER_PUBLISH_SOCKET" &
pids+=($!)
python3 -m http.server --bind 127.0.0.1 --directory "$here" "$page_port" >"$work/http.log" 2>&1 &
pids+=($!)

crier_http="http://${CRIER_LISTEN/0.0.0.0/127.0.0.1}"
url="http://127.0.0.1:$page_port/"
[[ $crier_http == "http://127.0.0.1:8080" ]] || url="$url?crier=$crier_http"
echo "flight board: open $url   (Ctrl-C stops crier, the publisher and the page server)"
# Until Ctrl-C, or until one of the three ends by itself.
status=0
wait -n "${pids[@]}" || status=$?
# crier ends on SIGINT too: give the trap a moment to tell Ctrl-C from a crash.
[[ -n $interrupted ]] || sleep 0.2
if [[ -n $interrupted ]]; then
	exit "$interrupted"
fi
echo "run.sh: a process exited (status $status); stopping the others" >&2
exit 1
