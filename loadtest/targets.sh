#!/usr/bin/env bash
# Runs one of the README's performance targets end to end: a release crier pinned to CPU 0,
# crier-load pinned to CPU 1, and prints crier-load's report (add --json for JSON).
#
#   loadtest/targets.sh density       19,000 idle connections (CONNECTIONS=N, SRC_IPS=K): RSS growth per connection
#                                     (JWT=HS256 or ES256: every connection with a token for channel c, crier with
#                                     --jwt-key-file; compare with `density --channels c`; CONNECT_RATE=R)
#   loadtest/targets.sh handshakes    storm mode for the handshake rate: CONNECTIONS (default 10,000) reconnect at
#                                     once, each with a token (JWT=none|HS256|ES256, default HS256)
#   loadtest/targets.sh throughput    10,000 connections (CONNECTIONS=N), 256 B at 100 msg/s: deliveries per server CPU-second
#   loadtest/targets.sh latency       19,000 connections (CONNECTIONS=N to change), 1 KiB at 10 msg/s: latency, loss
#   loadtest/targets.sh compression   the throughput run with every client on permessage-deflate
#   loadtest/targets.sh multiproc     100,000 connections over 6 crier processes sharing one port (--listen-shared), 2 msg/s
#   loadtest/targets.sh storm         19,000 connections (SRC_IPS=K, default 4; CONNECT_RATE=R, default 5000/s) drop and reconnect at once: time until all are back
#   loadtest/targets.sh soak          10,000 connections, 256 B at 10 msg/s for 10 minutes: RSS must stay flat
#   loadtest/targets.sh cluster-latency   1,000 connections, 256 B at 100 msg/s through a local redis-server
#                                     (--redis; SHARDED=1: a three-master Redis Cluster); the numbers to compare:
#                                     REDIS=0 (single node)
#   loadtest/targets.sh publish-rate  the publish-rate ceiling: PUBLISHERS (1) pipelined connections, COUNT (2,000,000)
#                                     messages each of SIZE (64) B, 10 checked subscribers (crier-pubrate); then
#                                     redis-benchmark's PUBLISH rate on the same box
#   loadtest/targets.sh cluster-rate  one node through Redis, RATE msg/s (default 50000) of 256 B to 10 subscribers;
#                                     SHARDED=1: through a local three-master Redis Cluster (--redis-cluster)
#   loadtest/targets.sh cluster       100,000 connections (CONNECTIONS=N) over 6 --redis nodes sharing one port and one
#                                     redis-server, 2 msg/s each published once, on node 1: loss, latency, RSS per node
#   loadtest/targets.sh cluster-throughput   the throughput run (CONNECTIONS=N, RATE=R) on one node, single-node then --redis, alternating,
#                                     RUNS times (default 2): deliveries per server and per shard CPU-second
#   loadtest/targets.sh cluster-foreign  two nodes; 10,000 msg/s (RATE) published on node b to 10 subscribers
#                                     of b; node a has none: a's CPU is what traffic it does not need costs
#                                     it (--redis: the pattern brings it all; SHARDED=1: per-channel SSUBSCRIBE)
#
# Extra arguments go to crier-load; crier takes its settings from CRIER_<NAME> environment
# variables (e.g. CRIER_FLUSH_DELAY=50ms). NICE=-10 runs crier, redis-server and crier-load
# at that niceness (root only), so that other work on the box (a compiler) takes less of
# their CPU. SYSCALLS=1 (cluster-throughput; needs perf and root) counts crier's write
# system calls during each run. Every run is bounded in count and time.
#
# The load comes from a few loopback addresses (SRC_IPS), thousands of connections each, far
# past crier's per-address defaults (1000 connections, 100 handshakes/s): the targets turn
# those limits off unless told otherwise. To measure with them on, spread the clients
# (e.g. SRC_IPS=64 CRIER_MAX_CONNECTIONS_PER_IP=1000 CRIER_MAX_HANDSHAKES_PER_IP_PER_SECOND=100
# loadtest/targets.sh density: 297 connections per address, 78 handshakes/s each).
set -euo pipefail
export CRIER_MAX_CONNECTIONS_PER_IP=${CRIER_MAX_CONNECTIONS_PER_IP:-0}
export CRIER_MAX_HANDSHAKES_PER_IP_PER_SECOND=${CRIER_MAX_HANDSHAKES_PER_IP_PER_SECOND:-0}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target=${1:?usage: loadtest/targets.sh density|handshakes|throughput|latency|compression|multiproc|storm|soak|publish-rate|cluster-latency|cluster-rate|cluster|cluster-throughput [crier-load args]}
shift
cargo build --release -q -p crier -p crier-load --bins
crier=target/release/crier
load=target/release/crier-load
work=$(mktemp -d)
port=${CRIER_PORT:-18080}
pids=()
prio=()
[ -n "${NICE:-}" ] && prio=(nice -n "$NICE")
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
    command -v redis-server >/dev/null || { echo "the cluster targets need redis-server: apt-get install -y redis-server" >&2; exit 1; }
    "${prio[@]}" taskset -c 1 redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
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
        [[ $(curl -fsS "http://$admin/metrics" 2>/dev/null) == *$'\ncrier_redis_up 1'* ]] && return 0
        sleep 0.05
    done
    echo "crier $1 did not connect to Redis" >&2
    exit 1
}

# start_crier NAME [crier serve args]: starts one crier on CPU 0 and waits for its ready line.
start_crier() {
    local name=$1
    shift
    "${prio[@]}" taskset -c 0 "$crier" serve \
        --listen "127.0.0.1:$port" --admin-listen 127.0.0.1:0 --publish-socket "$work/$name.sock" \
        --shards 1 "$@" 2>"$work/$name.log" &
    pids+=("$!")
    wait_ready "$name"
}

# wait_ready NAME: waits for the ready line in crier NAME's log ($work/NAME.log).
wait_ready() {
    for _ in $(seq 200); do
        grep -q "ready ws=" "$work/$1.log" && return 0
        sleep 0.05
    done
    echo "crier $1 did not start:" >&2
    cat "$work/$1.log" >&2
    exit 1
}

# stop_crier NAME: SIGTERM to crier NAME (the last one started), by PID; SIGKILL after 10 s.
stop_crier() {
    local pid=${pids[-1]}
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 200); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset 'pids[-1]'
}

# cpu_stat N: "busy steal" jiffies of CPU N (/proc/stat). machine_before / machine_after
# PID…: what CPUs 0 and 1 did meanwhile, the crier PIDs' share of CPU 0, the rest ("other":
# other processes, e.g. a compiler, and softirq work outside crier) and hypervisor steal; a
# run with much of either was disturbed.
cpu_stat() { awk -v cpu="cpu$1" '$1 == cpu { print $2 + $3 + $4 + $7 + $8, $9 }' /proc/stat; }
proc_cpu() {
    local pid t=0
    for pid in "$@"; do t=$((t + $(sed 's/^.*) //' "/proc/$pid/stat" | awk '{ print $12 + $13 }'))); done
    echo "$t"
}
machine_before() {
    read -r m_b0 m_s0 <<<"$(cpu_stat 0)"
    read -r m_b1 m_s1 <<<"$(cpu_stat 1)"
    m_p=$(proc_cpu "$@")
    m_t=$(date +%s.%N)
}
machine_after() {
    local b0 s0 b1 s1 p t
    read -r b0 s0 <<<"$(cpu_stat 0)"
    read -r b1 s1 <<<"$(cpu_stat 1)"
    p=$(proc_cpu "$@" 2>/dev/null || echo "$m_p")
    t=$(date +%s.%N)
    awk -v hz="$(getconf CLK_TCK)" -v b0="$((b0 - m_b0))" -v s0="$((s0 - m_s0))" -v b1="$((b1 - m_b1))" \
        -v s1="$((s1 - m_s1))" -v p="$((p - m_p))" -v e="$(awk -v a="$m_t" -v b="$t" 'BEGIN { print b - a }')" \
        'BEGIN { printf "%-24sover %.1f s: cpu0 busy %.2f s (crier %.2f s, other %.2f s), steal %.2f s; cpu1 busy %.2f s, steal %.2f s\n",
            "machine", e, b0 / hz, p / hz, (b0 - p) / hz, s0 / hz, b1 / hz, s1 / hz }'
}

# node_connections NAME: crier NAME's open connections now, from /metrics.
node_connections() {
    local admin
    admin=$(sed -n 's/.*ready ws=[^ ]* admin=\([^ ]*\) .*/\1/p' "$work/$1.log")
    curl -fsS "http://$admin/metrics" 2>/dev/null | awk '/^crier_connections\{/ { c += $2 } END { print c + 0 }'
}

# sample_peaks NAME…: until killed, every second, each node's open connections; the most
# seen goes to $work/NAME.peak (read by cluster_counters).
sample_peaks() {
    local n c
    for n in "$@"; do echo 0 >"$work/$n.peak"; done
    while :; do
        for n in "$@"; do
            c=$(node_connections "$n")
            [ "$c" -gt "$(cat "$work/$n.peak")" ] && echo "$c" >"$work/$n.peak"
        done
        sleep 1
    done
}

# shard_wakeups PID: voluntary context switches of crier PID's shard threads so far (each is
# a shard going to sleep with nothing left to do: fewer means more work per wake-up).
shard_wakeups() {
    local t n=0
    for t in /proc/"$1"/task/*; do
        [[ $(cat "$t/comm") == crier-shard* ]] || continue
        n=$((n + $(awk '/^voluntary_ctxt_switches/ { print $2 }' "$t/status")))
    done
    echo "$n"
}

# cluster_counters NAME: crier NAME's most connections seen, messages it encoded (once per
# message, however it got them) and its cluster-mode counters, from /metrics.
cluster_counters() {
    local admin
    admin=$(sed -n 's/.*ready ws=[^ ]* admin=\([^ ]*\) .*/\1/p' "$work/$1.log")
    curl -fsS "http://$admin/metrics" | awk -v n="$1" -v peak="$(cat "$work/$1.peak" 2>/dev/null || echo -)" '
        /^crier_messages_published_total / { p = $2 }
        /^crier_frames_encoded_total / { e = $2 }
        /^crier_redis_(up|reconnects_total|repaired_messages_total|unrepairable_messages_total|probes_failed_total) / { r = r " " $1 "=" $2 }
        /^crier_connections_closed_total\{/ && $2 > 0 { c = c " " $1 "=" $2 }
        END { printf "crier %s: at most %s connections; %d published on its socket, %d messages encoded;%s;%s\n", n, peak, p, e, r, c ? " closed:" c : " none closed" }'
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

# jwt_setup: for JWT=HS256|ES256, a key (made here, with openssl or Python's cryptography)
# and one token minted by PyJWT (tests/python/mint.py) granting channel `c` for an hour;
# sets jwt_args (crier serve flags) and token_query (`?token=…`, or empty for JWT=none).
jwt_setup() {
    jwt_args=()
    token_query=""
    local alg=${JWT:-none} key sign
    case $alg in
    none) return 0 ;;
    HS256)
        openssl rand -hex 32 >"$work/jwt.secret"
        key=$work/jwt.secret sign=$work/jwt.secret
        ;;
    ES256)
        python3 tests/python/mint.py keygen ES256 "$work"
        key=$work/public.pem sign=$work/private.pem
        ;;
    *)
        echo "JWT must be none, HS256 or ES256, not '$alg'" >&2
        exit 2
        ;;
    esac
    jwt_args=(--jwt-key-file "$key" --jwt-algorithm "$alg")
    local exp token
    exp=$(($(date +%s) + 3600))
    token=$(printf '{"alg": "%s", "key": "%s", "claims": {"exp": %s, "channels": ["c"]}}\n' "$alg" "$sign" "$exp" |
        python3 tests/python/mint.py sign)
    token_query="?token=$token"
    echo "JWT=$alg: crier ${jwt_args[*]}; every client sends a ${#token}-byte token" >&2
}

# Clients spread over source addresses 127.0.0.1…K so that none uses more than half of its
# ephemeral ports (a storm needs twice: the dropped connections sit in TIME_WAIT); past that
# the kernel's connect() port search, not crier, limits the connect rate.
url="ws://127.0.0.1:$port/ws"
status=0
case $target in
density)
    jwt_setup
    # With a token, every client subscribes to `c` (which the token grants): compare with
    # `loadtest/targets.sh density --channels c`, which does the same without a key.
    channels=()
    [ -n "$token_query" ] && channels=(--channels c)
    start_crier a --max-connections 19500 "${jwt_args[@]}"
    "$load" --mode idle --url "$url$token_query" "${channels[@]}" -n "${CONNECTIONS:-19000}" --connect-rate "${CONNECT_RATE:-5000}" \
        --src-ips "${SRC_IPS:-2}" --duration 10s --server-pid "${pids[0]}" --pin-cpu 1 "$@"
    ;;
handshakes)
    JWT=${JWT:-HS256}
    jwt_setup
    start_crier a --max-connections 19500 "${jwt_args[@]}"
    "$load" --mode storm --url "$url$token_query" --channels c -n "${CONNECTIONS:-10000}" --src-ips 4 \
        --connect-rate 5000 --publish-socket "$work/a.sock" --server-pid "${pids[0]}" --pin-cpu 1 "$@"
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
    "$load" --mode storm --url "$url" -n 19000 --src-ips "${SRC_IPS:-4}" --connect-rate "${CONNECT_RATE:-5000}" --publish-socket "$work/a.sock" \
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
publish-rate)
    # The publish-rate ceiling: PUBLISHERS pipelined publisher connections (default 1), each
    # COUNT messages (default 2,000,000) of SIZE bytes (default 64) as fast as crier takes
    # them, to 10 subscribers that check every delivery; then redis-benchmark's PUBLISH rate
    # on the same box, the anchor users know. crier gets both cores here (SHARDS, default 1,
    # and its control thread), as does the tool: the box has two.
    command -v redis-benchmark >/dev/null || { echo "publish-rate needs redis-benchmark: apt-get install -y redis-tools redis-server" >&2; exit 1; }
    "${prio[@]}" "$crier" serve --listen "127.0.0.1:$port" --admin-listen 127.0.0.1:0 --publish-socket "$work/a.sock" \
        --shards "${SHARDS:-1}" 2>"$work/a.log" &
    pids+=("$!")
    wait_ready a
    "${prio[@]}" target/release/crier-pubrate --ws "127.0.0.1:$port" --publish-socket "$work/a.sock" \
        --publishers "${PUBLISHERS:-1}" --count "${COUNT:-2000000}" --size "${SIZE:-64}" --server-pid "${pids[-1]}" "$@" ||
        status=$?
    stop_crier a
    start_redis
    echo "redis-benchmark PUBLISH, ${SIZE:-64} B, ${PUBLISHERS:-1} connection(s), pipeline 64:"
    # (-q redraws its line with \r; keep the last one, without the payload it echoes)
    redis-benchmark -p "${REDIS_PORT:-16379}" -c "${PUBLISHERS:-1}" -P 64 -n "${COUNT:-2000000}" -q \
        PUBLISH c "$(head -c "${SIZE:-64}" /dev/zero | tr '\0' x)" | tr '\r' '\n' | grep 'requests per second' |
        sed 's/^PUBLISH c x*:/PUBLISH (no subscribers):/'
    ;;
cluster-rate)
    redis_args
    start_crier a --max-connections 19500 "${redis[@]}"
    wait_redis_up a
    "$load" --url "$url" -n 10 --connect-rate 5000 --rate "${RATE:-50000}" --size 256 --duration 10s \
        --publish-socket "$work/a.sock" --server-pid "${pids[-1]}" --pin-cpu 1 "$@" || status=$?
    counters a
    ;;
cluster)
    # Six nodes joined by one redis-server, as behind a load balancer: they share the port
    # (--listen-shared: the kernel spreads connections over them, as NGINX least_conn would;
    # NGINX itself would need two descriptors per client, 200,000 here), each under the
    # 20,000-file limit. Every message is published once, on node 1's socket, and reaches
    # the other nodes through Redis only. Eight source addresses, as in multiproc.
    start_redis
    servers=()
    for i in 1 2 3 4 5 6; do
        start_crier "c$i" --max-connections 19000 --listen-shared --redis "$redis_url"
        servers+=(--server-pid "${pids[-1]}")
    done
    for i in 1 2 3 4 5 6; do wait_redis_up "c$i"; done
    nodes=("${pids[@]:1}")
    sample_peaks c1 c2 c3 c4 c5 c6 &
    sampler=$!
    pids+=("$sampler")
    machine_before "${nodes[@]}"
    # --grace 60s: deliveries that fall behind on the shared core show up as latency, not loss.
    "${prio[@]}" "$load" --url "$url" -n "${CONNECTIONS:-100000}" --procs 6 --src-ips 8 --connect-rate 2000 --rate 2 --size 256 \
        --duration "${DURATION:-30s}" --grace 60s --publish-socket "$work/c1.sock" "${servers[@]}" --pin-cpu 1 "$@" ||
        status=$?
    machine_after "${nodes[@]}"
    kill "$sampler"
    wait "$sampler" 2>/dev/null || true
    unset 'pids[-1]'
    for i in 1 2 3 4 5 6; do cluster_counters "c$i"; done
    ;;
cluster-throughput)
    # The throughput run (10,000 connections, 256 B at 100 msg/s for 10 s) on one node:
    # single-node, then with --redis (each PUB on the node's socket goes through Redis and
    # comes back on its subscription), alternating A/B/A/B… so that the other work on this
    # box hits both. crier-load reads the server's CPU from /proc/PID/stat and the shard
    # threads' from /proc/PID/task/*/stat. Each run holds /tmp/crier-bench.lock, as
    # loadtest/peers.sh does, so that other load tests do not run at the same time.
    command -v jq >/dev/null || { echo "cluster-throughput needs jq: apt-get install -y jq" >&2; exit 1; }
    start_redis
    exec 9>/tmp/crier-bench.lock
    summary=()
    for r in $(seq "${RUNS:-2}"); do
        for m in single redis; do
            redis=()
            [ "$m" = redis ] && redis=(--redis "$redis_url")
            flock -w 1800 9 || { echo "could not get /tmp/crier-bench.lock" >&2; exit 1; }
            echo "=== $m, run $r of ${RUNS:-2} ($(date +%T))"
            start_crier "$m$r" --max-connections 19500 "${redis[@]}"
            [ "$m" = redis ] && wait_redis_up "$m$r"
            cpid=${pids[-1]}
            machine_before "$cpid"
            wakeups=$(shard_wakeups "$cpid")
            if [ -n "${SYSCALLS:-}" ]; then
                # crier's write system calls while the load runs (perf, tracepoints: root).
                perf stat -x, -e syscalls:sys_enter_sendmsg,syscalls:sys_enter_writev,syscalls:sys_enter_write \
                    -p "$cpid" -o "$work/$m$r.perf" &
                perf_pid=$!
                pids+=("$perf_pid")
            fi
            rc=0
            "${prio[@]}" "$load" --url "$url" -n "${CONNECTIONS:-10000}" --src-ips 2 --connect-rate 5000 --rate "${RATE:-100}" --size 256 \
                --duration 10s --grace 60s --publish-socket "$work/$m$r.sock" --server-pid "$cpid" --pin-cpu 1 --json "$@" \
                9>&- >"$work/$m$r.json" || rc=$?
            writes=
            if [ -n "${SYSCALLS:-}" ]; then
                kill -INT "$perf_pid"
                wait "$perf_pid" 2>/dev/null || true
                unset 'pids[-1]'
                writes=$(awk -F, '$3 ~ /sys_enter/ { n += $1 } END { print n + 0 }' "$work/$m$r.perf")
            fi
            machine=$(machine_after "$cpid")
            wakeups=$(($(shard_wakeups "$cpid") - wakeups))
            stop_crier
            flock -u 9
            [ "$rc" -eq 0 ] || { echo "crier-load exit status $rc" >&2; status=$rc; }
            line=$(jq -r --arg m "$m" --arg r "$r" '"\($m) \($r): \(.deliveries_per_server_cpu_second // 0 | round) per server CPU-s, \(.deliveries_per_shard_cpu_second // 0 | round) per shard CPU-s; \(.delivery.deliveries) delivered, lost \(.delivery.lost) dup \(.delivery.duplicated) ooo \(.delivery.out_of_order); latency p50 \(.latency_ms.p50) ms p99 \(.latency_ms.p99) ms; server CPU \(.servers[0].cpu_publish_phase_seconds // 0 | . * 100 | round / 100) s, shards \(.servers[0].shard_cpu_publish_phase_seconds // 0 | . * 100 | round / 100) s"' "$work/$m$r.json")
            line="$line; shard thread slept $wakeups times"
            if [ -n "$writes" ]; then
                line="$line; $writes write calls ($(jq -r --arg w "$writes" '.delivery.deliveries / ($w | tonumber) * 10 | round / 10' "$work/$m$r.json") deliveries each)"
            fi
            echo "$line"
            echo "$machine"
            summary+=("$line" "  $machine")
        done
    done
    echo
    echo "=== summary"
    printf '%s\n' "${summary[@]}"
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
