#!/usr/bin/env bash
# Gateway cold start to ready (fresh database, and migrations already applied) and idle
# memory, on the release build. Usage: tests/bench/gateway_startup.sh [runs]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-10}
server=${AIHUMMER_TEST_PG:-postgres://postgres@127.0.0.1:5432}
cargo build --release -q -p aihummer-gateway
bin=target/release/aihummer-gateway
port=18990
db=aihummer_bench_startup

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# Starts the gateway and sets $pid and $elapsed (milliseconds until /readyz answers 200).
# No command substitution here: the gateway would hold its output pipe open.
start_and_time() {
    local t0
    t0=$(now_ms)
    AIHUMMER_DATABASE_URL="$server/$db" AIHUMMER_GATEWAY_ADDR="127.0.0.1:$port" AIHUMMER_LOG=warn \
        "$bin" >/dev/null 2>&1 &
    pid=$!
    until curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do sleep 0.002; done
    elapsed=$(( $(now_ms) - t0 ))
}

stop() { kill -TERM "$pid"; wait "$pid" || true; }

fresh=(); warm=()
for _ in $(seq "$runs"); do
    psql -q -d "$server/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" 2>/dev/null
    start_and_time; fresh+=("$elapsed"); stop
    start_and_time; warm+=("$elapsed")
    sleep 2
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    stop
done
psql -q -d "$server/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"

summary() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "median %d ms, worst %d ms (n=%d)", a[int((NR+1)/2)], a[NR], NR}'; }
echo "cold start to ready, fresh database:       $(summary "${fresh[@]}")"
echo "cold start to ready, migrations applied:   $(summary "${warm[@]}")"
echo "idle resident memory after ready (last run): ${rss} KiB"
