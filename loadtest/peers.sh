#!/usr/bin/env bash
# Runs the README's throughput target (and, optionally, the idle-density target) against
# crier and against the peer servers in loadtest/peers/, each the same way: the server
# alone on CPU 0, crier-load pinned to CPU 1, and prints crier-load's report for each run.
#
#   loadtest/peers.sh [SERVER] [MODE] [crier-load args]
#
#   SERVER  crier | ws | uws | tokio-tungstenite | tokio-tungstenite-4k | all (default all),
#           or several separated by commas (crier,uws)
#           (tokio-tungstenite-4k: the same server with a 4 KiB tungstenite read buffer)
#   MODE    throughput  10,000 connections, 256 B at 100 msg/s for 10 s (the default):
#                       deliveries per server CPU-second, latency, loss
#           light       the same at 10 msg/s, a load no server here falls behind on
#           idle        19,000 idle connections held 10 s: server RSS growth per connection
#           channels    10,000 connections, each on 5 of 1,000 channels, 2,000 msg/s of 256 B in
#                       total for 10 s (crier-load --mode channels; add --distribution zipf):
#                       deliveries per server CPU-second, latency, per-channel loss. Servers
#                       with channels only: crier, uws, tokio-tungstenite(-4k)
#           all         throughput, light, then idle
#
# After each report a "machine" line gives what CPUs 0 and 1 did during the run, from
# /proc/stat: busy time, the server process's share of CPU 0 (split into user and system
# time, from /proc/PID/stat), the rest ("other": other processes, e.g. a compiler, plus
# softirq work outside the server), and hypervisor steal.
# A run with much "other" or steal on CPU 0 was disturbed.
#
# Environment: RUNS=N repeats every run N times (default 1); PEERS_PORT (default 18090).
# Each run (server start, load, server stop) holds the lock /tmp/crier-bench.lock, so runs of
# other load tests on this machine wait for it and do not disturb it. Builds and installs
# (crier, crier-load, the tokio-tungstenite peer in release, `npm ci` for the Node peers) are
# done first, outside the lock. Reports are also kept in target/peers-results/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
which_servers=${1:-all}
asked_servers=$which_servers
mode=${2:-throughput}
shift $(($# < 2 ? $# : 2))
[ "$which_servers" = all ] && which_servers=crier,uws,ws,tokio-tungstenite,tokio-tungstenite-4k
IFS=, read -ra servers <<<"$which_servers"
for s in "${servers[@]}"; do
    case $s in
    crier | ws | uws | tokio-tungstenite | tokio-tungstenite-4k) ;;
    *)
        echo "usage: loadtest/peers.sh [crier|ws|uws|tokio-tungstenite|tokio-tungstenite-4k|all] [throughput|light|idle|channels|all] [crier-load args]" >&2
        exit 2
        ;;
    esac
done
case $mode in
throughput | light | idle) modes=("$mode") ;;
channels)
    modes=(channels)
    # Node ws's peer sends every message to every connection: it has no channels.
    if [ "$asked_servers" = all ]; then
        servers=(crier uws tokio-tungstenite tokio-tungstenite-4k)
    fi
    for s in "${servers[@]}"; do
        if [ "$s" = ws ]; then
            echo "channels mode: the ws peer has no channels; use crier, uws, tokio-tungstenite(-4k)" >&2
            exit 2
        fi
    done
    ;;
all) modes=(throughput light idle) ;;
*)
    echo "unknown mode '$mode' (throughput, light, idle, channels or all)" >&2
    exit 2
    ;;
esac
runs=${RUNS:-1}
port=${PEERS_PORT:-18090}
load=target/release/crier-load
tt=loadtest/peers/tokio-tungstenite/target/release/peer-tokio-tungstenite

# Builds and installs, before any measurement.
cargo build --release -q -p crier -p crier-load
for s in "${servers[@]}"; do
    case $s in
    ws | uws)
        if [ ! -d loadtest/peers/node/node_modules ]; then
            (cd loadtest/peers/node && npm ci --no-audit --no-fund --loglevel=error)
        fi
        ;;
    tokio-tungstenite*)
        CARGO_TARGET_DIR=$root/loadtest/peers/tokio-tungstenite/target \
            cargo build --release -q --manifest-path loadtest/peers/tokio-tungstenite/Cargo.toml
        ;;
    esac
done

work=$(mktemp -d)
results=target/peers-results/$(date +%Y%m%d-%H%M%S)
mkdir -p "$results"
server_pid=
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

exec 9>/tmp/crier-bench.lock

# start_server NAME MAX_CONNECTIONS: starts one server on CPU 0 (fd 9, the lock, closed for
# it) and waits for its ready line.
start_server() {
    local name=$1 max=$2 log=$work/$1.log sock=$work/$1.sock
    local listen=127.0.0.1:$port
    # The log of this server's previous run must not be mistaken for this one's ready line:
    # the background job truncates the file only when it gets to run.
    rm -f "$log"
    case $name in
    crier)
        MIMALLOC_ARENA_EAGER_COMMIT=${MIMALLOC_ARENA_EAGER_COMMIT:-0} taskset -c 0 target/release/crier serve \
            --listen "$listen" --admin-listen off --publish-socket "$sock" --shards 1 \
            --max-connections "$max" --max-connections-per-ip 0 --max-handshakes-per-ip-per-second 0 \
            2>"$log" 9>&- &
        ;;
    ws | uws)
        taskset -c 0 node "loadtest/peers/node/$name-server.js" --listen "$listen" \
            --publish-socket "$sock" 2>"$log" 9>&- &
        ;;
    tokio-tungstenite)
        taskset -c 0 "$tt" --listen "$listen" --publish-socket "$sock" 2>"$log" 9>&- &
        ;;
    tokio-tungstenite-4k)
        taskset -c 0 "$tt" --listen "$listen" --publish-socket "$sock" --read-buffer-size 4096 \
            2>"$log" 9>&- &
        ;;
    esac
    server_pid=$!
    for _ in $(seq 200); do
        grep -qs "ready ws=" "$log" && return 0
        if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
        sleep 0.05
    done
    echo "$name did not start:" >&2
    cat "$log" >&2
    exit 1
}

stop_server() {
    kill "$server_pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
}

# cpu_stat N: "busy steal" jiffies of CPU N; proc_cpu PID: "utime stime" jiffies.
cpu_stat() { awk -v cpu="cpu$1" '$1 == cpu { print $2 + $3 + $4 + $7 + $8, $9 }' /proc/stat; }
proc_cpu() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12, $13 }'; }
machine_before() {
    read -r m_b0 m_s0 <<<"$(cpu_stat 0)"
    read -r m_b1 m_s1 <<<"$(cpu_stat 1)"
    read -r m_u m_k <<<"$(proc_cpu "$server_pid")"
    m_t=$(date +%s.%N)
}
# The server's CPU is also split into user and system time (utime, stime), so that what its
# own code costs is in every run beside what the kernel's write path costs.
machine_after() {
    local b0 s0 b1 s1 u k t
    read -r b0 s0 <<<"$(cpu_stat 0)"
    read -r b1 s1 <<<"$(cpu_stat 1)"
    read -r u k <<<"$(proc_cpu "$server_pid" 2>/dev/null || echo "$m_u $m_k")"
    t=$(date +%s.%N)
    awk -v hz="$(getconf CLK_TCK)" -v b0="$((b0 - m_b0))" -v s0="$((s0 - m_s0))" -v b1="$((b1 - m_b1))" \
        -v s1="$((s1 - m_s1))" -v u="$((u - m_u))" -v k="$((k - m_k))" \
        -v e="$(awk -v a="$m_t" -v b="$t" 'BEGIN { print b - a }')" \
        'BEGIN { p = u + k; printf "%-24sover %.1f s: cpu0 busy %.2f s (server %.2f s: user %.2f s, system %.2f s; other %.2f s), steal %.2f s; cpu1 busy %.2f s, steal %.2f s\n",
            "machine", e, b0 / hz, p / hz, u / hz, k / hz, (b0 - p) / hz, s0 / hz, b1 / hz, s1 / hz }'
}

status=0
url=ws://127.0.0.1:$port/ws
# Runs of different servers alternate, so that a disturbance does not hit one server's runs only.
for m in "${modes[@]}"; do
    for r in $(seq "$runs"); do
        for s in "${servers[@]}"; do
            out=$results/$s-$m-$r.txt
            echo "=== $s  $m  run $r/$runs  ($(date +%T))"
            # At most 30 minutes in line behind other load tests.
            flock -w 1800 9 || { echo "could not get /tmp/crier-bench.lock" >&2; exit 1; }
            start_server "$s" 19500
            sed -n 's/.*\(ready ws=.*\)/\1/p' "$work/$s.log" | head -1
            rc=0
            machine_before
            case $m in
            throughput | light)
                # A server slower than the offered load delivers the backlog after the last
                # publish; --grace 180s lets it finish (crier-load stops waiting as soon as every
                # connection has everything), so that slow shows up as latency, not as loss.
                rate=100
                [ "$m" = light ] && rate=10
                "$load" --url "$url" -n 10000 --connect-rate 5000 --rate "$rate" --size 256 --duration 10s \
                    --grace 180s --publish-socket "$work/$s.sock" --server-pid "$server_pid" --pin-cpu 1 \
                    "$@" 9>&- | tee "$out" || rc=$?
                ;;
            channels)
                # Each message reaches the ~50 subscribers of its channel: 100,000 deliveries/s.
                "$load" --mode channels --url "$url" -n 10000 --connect-rate 5000 --rate 2000 --size 256 \
                    --duration 10s --channel-count 1000 --channels-per-conn 5 --grace 60s \
                    --publish-socket "$work/$s.sock" --server-pid "$server_pid" --pin-cpu 1 \
                    "$@" 9>&- | tee "$out" || rc=$?
                ;;
            idle)
                "$load" --mode idle --url "$url" -n 19000 --src-ips 2 --connect-rate 5000 --duration 10s \
                    --server-pid "$server_pid" --pin-cpu 1 "$@" 9>&- | tee "$out" || rc=$?
                ;;
            esac
            machine_after | tee -a "$out"
            stop_server
            flock -u 9
            [ "$rc" -eq 0 ] || { echo "crier-load exit status $rc" >&2; status=$rc; }
        done
    done
done

echo
echo "=== summary (reports in $results)"
for f in "$results"/*.txt; do
    echo "--- $(basename "$f" .txt)"
    grep -E '^(connections|channels|per-channel accounting|accounting|latency ms|server |deliveries/server-cpu-s|idle|run |machine|problems|PROBLEM)' "$f" || true
done
exit "$status"
