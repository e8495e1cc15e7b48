#!/usr/bin/env bash
# Runs one of the README's performance targets end to end: a release crier pinned to CPU 0,
# crier-load pinned to CPU 1, and prints crier-load's report (add --json for JSON).
#
#   loadtest/targets.sh density       19,000 idle connections (CONNECTIONS=N, SRC_IPS=K): RSS growth per connection
#   loadtest/targets.sh throughput    10,000 connections (CONNECTIONS=N), 256 B at 100 msg/s: deliveries per server CPU-second
#   loadtest/targets.sh latency       19,000 connections (CONNECTIONS=N to change), 1 KiB at 10 msg/s: latency, loss
#   loadtest/targets.sh compression   the throughput run with every client on permessage-deflate
#   loadtest/targets.sh multiproc     100,000 connections over 6 crier processes sharing one port (--listen-shared), 2 msg/s
#   loadtest/targets.sh storm         19,000 connections drop and reconnect at once: time until all are back
#   loadtest/targets.sh soak          10,000 connections, 256 B at 10 msg/s for 10 minutes: RSS must stay flat
#   loadtest/targets.sh cluster-latency   1,000 connections, 256 B at 100 msg/s through a local redis-server
#                                     (--redis; SHARDED=1: a three-master Redis Cluster); the numbers to compare:
#                                     REDIS=0 (single node)
#   loadtest/targets.sh cluster-rate  one node through Redis, RATE msg/s (default 50000) of 256 B to 10 subscribers;
#                                     SHARDED=1: through a local three-master Redis Cluster (--redis-cluster)
#   loadtest/targets.sh cluster-foreign  two nodes; 10,000 msg/s (RATE) published on node b to 10 subscribers
#                                     of b; node a has none: a's CPU is what traffic it does not need costs
#                                     it (--redis: the pattern brings it all; SHARDED=1: per-channel SSUBSCRIBE)
#
# Extra arguments go to crier-load; crier takes its settings from CRIER_<NAME> environment
# variables (e.g. CRIER_FLUSH_DELAY=50ms). Every run is bounded in count and time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target=${1:?usage: loadtest/targets.sh density|throughput|latency|compression|multiproc|storm|soak [crier-load args]}
shift
cargo build --release -q -p crier -p crier-load
crier=target/release/crier
load=target/release/crier-load
work=$(mktemp -d)
port=${CRIER_PORT:-18080}
pids=()
# shellcheck disable=SC2317 # invoked by the trap below
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# start_redis: a throw-away redis-server (no persistence) on CPU 1 next to crier-load, for the
# cluster targets; sets redis_url.
start_redis() {
    local rport=${REDIS_PORT:-16379}
    taskset -c 1 redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
        >"$work/redis.log" 2>&1 &
    pids+=("$!")
    for _ in $(seq 200); do
        [ "$(redis-cli -p "$rport" ping 2>/dev/null)" = PONG ] && break
        sleep 0.05
    done
    redis_url="redis://127.0.0.1:$rport/"
}

# start_redis_cluster: three throw-away cluster-enabled redis-servers on CPU 1, joined into one
# Redis Cluster (no replicas); sets cluster_seeds.
start_redis_cluster() {
    local base=${REDIS_PORT:-17100} seeds=() addrs=()
    for i in 0 1 2; do
        local p=$((base + i))
        mkdir -p "$work/rc$i"
        taskset -c 1 redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
            --cluster-config-file nodes.conf --save '' --appendonly no --dir "$work/rc$i" \
            >"$work/rc$i.log" 2>&1 &
        pids+=("$!")
        for _ in $(seq 200); do
            [ "$(redis-cli -p "$p" ping 2>/dev/null)" = PONG ] && break
            sleep 0.05
        done
        addrs+=("127.0.0.1:$p")
        seeds+=("redis://127.0.0.1:$p")
    done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes >"$work/rc-create.log"
    for i in 0 1 2; do
        for _ in $(seq 400); do
            redis-cli -p $((base + i)) cluster info | grep -q cluster_state:ok && break
            sleep 0.05
        done
    done
    cluster_seeds=$(IFS=,; echo "${seeds[*]}")
}

# redis_args: --redis (a local redis-server) or, with SHARDED=1, --redis-cluster (a local
# three-master Redis Cluster); sets redis.
redis_args() {
    if [ "${SHARDED:-0}" = 1 ]; then
        start_redis_cluster
        redis=(--redis-cluster "$cluster_seeds")
    else
        start_redis
        redis=(--redis "$redis_url")
    fi
}

# wait_redis_up NAME: polls crier NAME's /metrics until its cluster thread is connected.
wait_redis_up() {
    local admin
    admin=$(sed -n 's/.*ready ws=[^ ]* admin=\([^ ]*\) .*/\1/p' "$work/$1.log")
    for _ in $(seq 200); do
        curl -fsS "http://$admin/metrics" | grep -q '^crier_redis_up 1' && return 0
        sleep 0.05
    done
    echo "crier $1 did not connect to Redis" >&2
    exit 1
}

# start_crier NAME [crier serve args]: starts one crier on CPU 0 and waits for its ready line.
start_crier() {
    local name=$1
    shift
    MIMALLOC_ARENA_EAGER_COMMIT=${MIMALLOC_ARENA_EAGER_COMMIT:-0} taskset -c 0 "$crier" serve \
        --listen "127.0.0.1:$port" --admin-listen 127.0.0.1:0 --publish-socket "$work/$name.sock" \
        --shards 1 "$@" 2>"$work/$name.log" &
    pids+=("$!")
    for _ in $(seq 200); do
        grep -q "ready ws=" "$work/$name.log" && return 0
        sleep 0.05
    done
    echo "crier $name did not start:" >&2
    cat "$work/$name.log" >&2
    exit 1
}

# counters NAME: after the run, crier NAME's own count of messages, encodings, compressions and
# slow-consumer closes, from its /metrics (compressions must equal messages).
counters() {
    local admin
    admin=$(sed -n 's/.*ready ws=[^ ]* admin=\([^ ]*\) .*/\1/p' "$work/$1.log")
    echo "crier /metrics (http://$admin):"
    curl -fsS "http://$admin/metrics" |
        grep -E '^crier_(messages_published|frames_encoded|compressions|slow_consumer_closes)_total' || true
}

# Clients spread over source addresses 127.0.0.1…K so that none uses more than half of its
# ephemeral ports (a storm needs twice: the dropped connections sit in TIME_WAIT); past that
# the kernel's connect() port search, not crier, limits the connect rate.
url="ws://127.0.0.1:$port/ws"
status=0
case $target in
density)
    start_crier a --max-connections 19500
    "$load" --mode idle --url "$url" -n "${CONNECTIONS:-19000}" --connect-rate 5000 --src-ips "${SRC_IPS:-2}" \
        --duration 10s --server-pid "${pids[0]}" --pin-cpu 1 "$@"
    ;;
throughput | compression)
    deflate=()
    [ "$target" = compression ] && deflate=(--deflate)
    start_crier a --max-connections 19500
    "$load" --url "$url" -n "${CONNECTIONS:-10000}" --src-ips 2 --connect-rate 5000 --rate 100 --size 256 --duration 10s \
        "${deflate[@]}" --publish-socket "$work/a.sock" --server-pid "${pids[0]}" --pin-cpu 1 "$@" || status=$?
    counters a
    ;;
latency)
    start_crier a --max-connections 19500
    "$load" --url "$url" -n "${CONNECTIONS:-19000}" --src-ips 2 --connect-rate 5000 --rate 10 --size 1024 --duration 30s \
        --publish-socket "$work/a.sock" --server-pid "${pids[0]}" --pin-cpu 1 "$@" || status=$?
    counters a
    ;;
storm)
    start_crier a --max-connections 19500
    "$load" --mode storm --url "$url" -n 19000 --src-ips 4 --connect-rate 5000 --publish-socket "$work/a.sock" \
        --server-pid "${pids[0]}" --pin-cpu 1 "$@"
    ;;
soak)
    start_crier a --max-connections 19500
    "$load" --mode soak --url "$url" -n 10000 --src-ips 2 --connect-rate 5000 --rate 10 --size 256 --duration 10m \
        --sample-interval 30s --publish-socket "$work/a.sock" --server-pid "${pids[0]}" --pin-cpu 1 "$@"
    ;;
multiproc)
    # Six crier processes (each under the 20,000-file limit) share the port on purpose
    # (--listen-shared; without it the second would refuse to start); every message is
    # published to each of them. Eight source addresses keep
    # each under half of its ephemeral ports, past which the kernel's connect() port search
    # (not crier) becomes the bottleneck.
    sockets=()
    servers=()
    for i in 1 2 3 4 5 6; do
        start_crier "c$i" --max-connections 19500 --listen-shared
        sockets+=(--publish-socket "$work/c$i.sock")
        servers+=(--server-pid "${pids[-1]}")
    done
    "$load" --url "$url" -n 100000 --procs 6 --src-ips 8 --connect-rate 2000 --rate 2 --size 256 \
        --duration 30s "${sockets[@]}" "${servers[@]}" --pin-cpu 1 "$@"
    ;;
cluster-latency)
    redis=()
    if [ "${REDIS:-1}" != 0 ]; then
        redis_args
    fi
    start_crier a --max-connections 19500 "${redis[@]}"
    [ "${#redis[@]}" -gt 0 ] && wait_redis_up a
    "$load" --url "$url" -n "${CONNECTIONS:-1000}" --connect-rate 5000 --rate 100 --size 256 --duration 20s \
        --publish-socket "$work/a.sock" --server-pid "${pids[-1]}" --pin-cpu 1 "$@" || status=$?
    counters a
    ;;
cluster-rate)
    redis_args
    start_crier a --max-connections 19500 "${redis[@]}"
    wait_redis_up a
    "$load" --url "$url" -n 10 --connect-rate 5000 --rate "${RATE:-50000}" --size 256 --duration 10s \
        --publish-socket "$work/a.sock" --server-pid "${pids[-1]}" --pin-cpu 1 "$@" || status=$?
    counters a
    ;;
cluster-foreign)
    redis_args
    # Node a listens on another port and gets no subscriber; crier-load's subscribers and
    # publisher use node b.
    port=$((port + 1))
    start_crier a --max-connections 1000 "${redis[@]}"
    a_pid=${pids[-1]}
    port=$((port - 1))
    start_crier b --max-connections 1000 "${redis[@]}"
    wait_redis_up a
    wait_redis_up b
    "$load" --url "$url" -n 10 --channels feed --connect-rate 5000 --rate "${RATE:-10000}" --size 256 --duration 10s \
        --publish-socket "$work/b.sock" --server-pid "$a_pid" --server-pid "${pids[-1]}" --pin-cpu 1 "$@" || status=$?
    counters b
    ;;
*)
    echo "unknown target '$target'" >&2
    exit 2
    ;;
esac
exit "$status"
