#!/usr/bin/env bash
# Every DAP benchmark and the Celery + Redis comparison in one run, then DAP and Celery side by
# side. Builds the release binaries, generates (or reuses) the benchmark CSVs under
# ~/.cache/dap-bench-data, sets up ~/.cache/dap-bench-venv (pandas, celery, redis) and
# redis-server (Debian) if missing. All `name: value unit` lines are also kept in
# $DAP_BENCH_OUT (default: a temp file, printed at the end).
#   DAP_BENCH_ROWS (10000000)  rows of the op-200 CSV; e.g. 1000000 for a quick check
#   DAP_BENCH_FETCH_BYTES (1073741824)  size of the op-100 CSV
#   DAP_BENCH_RUNS (3)  timed runs per side for op 200 / op 100
#   DAP_BENCH_ITERATIONS (2000)  sequential tasks for the latency figures (DAP and Celery)
#   DAP_BENCH_CONNECTIONS (10000)  idle runner connections for `idle`
#   DAP_BENCH_SUBSCRIBERS (1000)  SSE subscribers for `fanout`
#   DAP_BENCH_PG_ITERATIONS (500)  sequential tasks for the PostgreSQL latency figures
#   DAP_BENCH_SKIP  space-separated parts to leave out: noop pg filter fetch idle fanout celery
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
cd "$HERE/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dap-target}"
SKIP=" ${DAP_BENCH_SKIP:-} "
skip() { [[ "$SKIP" == *" $1 "* ]]; }
OUT="${DAP_BENCH_OUT:-$(mktemp "${TMPDIR:-/tmp}/dap-bench-results.XXXXXX")}"
: >"$OUT"

echo "== building dap-bench, dap-server and dap-runner (release)" >&2
cargo build -q --release -p dap-bench -p dap-server -p dap-runner
BENCH="$CARGO_TARGET_DIR/release/dap-bench"
# shellcheck source=python-env.sh
. "$HERE/python-env.sh"
export DAP_BENCH_PYTHON="$PY"

run() { echo "== $*" >&2; "$@" | tee -a "$OUT"; }
skip noop || run "$BENCH" --iterations "${DAP_BENCH_ITERATIONS:-2000}"
# The same push loop on PostgreSQL (Debian's server binaries, a throwaway cluster with fsync
# and synchronous commit on, stopped by PID): figures prefixed `postgres_`.
if ! skip pg; then
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "== installing postgresql (Debian)" >&2
    sudo_() { if [[ "$(id -u)" -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
  fi
  run env DAP_PG_DURABLE=1 scripts/postgres-test.sh run -- \
    sh -c 'exec "$0" --iterations "$1" --database "$DAP_TEST_POSTGRES_URL"' \
    "$BENCH" "${DAP_BENCH_PG_ITERATIONS:-500}"
fi
skip filter || run "$BENCH" filter-vs-pandas
skip fetch || run "$BENCH" fetch-schema
# 10,000 sockets on each side (the server and dap-bench are separate processes): raise the
# open-files limit as far as the hard limit allows (capped at 65536).
HARD="$(ulimit -Hn)"
[[ "$HARD" == unlimited ]] && HARD=65536
ulimit -n "$(( HARD < 65536 ? HARD : 65536 ))"
skip idle || run "$BENCH" idle-connections
skip fanout || run "$BENCH" sse-fanout
skip celery || run "$HERE/celery/run.sh"

value() { sed -n -E "s/^$1: ([^ ]+) .*/\\1/p" "$OUT" | tail -1; }
row() { printf '%-24s %14s %14s  %s\n' "$1" "${2:--}" "${3:--}" "$4"; }
echo
echo "== DAP vs Celery + Redis (same machine, same run)"
row "" "DAP" "Celery" ""
row "dispatch p50" "$(value dispatch_latency_p50)" "$(value celery_dispatch_latency_p50)" ms
row "dispatch p99" "$(value dispatch_latency_p99)" "$(value celery_dispatch_latency_p99)" ms
row "no-op round trip p50" "$(value noop_round_trip_p50)" "$(value celery_noop_round_trip_p50)" ms
row "no-op round trip p99" "$(value noop_round_trip_p99)" "$(value celery_noop_round_trip_p99)" ms
row "throughput (1 runner)" "$(value durable_throughput_sqlite_1_runners)" "$(value celery_throughput)" tasks/s
row "throughput (16 runners)" "$(value durable_throughput_sqlite_16_runners)" "" tasks/s
row "same, batch creates" "$(value durable_throughput_sqlite_batch100_16_runners)" "" tasks/s
row "PostgreSQL dispatch p50" "$(value postgres_dispatch_latency_p50)" "" ms
row "PostgreSQL throughput (16)" "$(value durable_throughput_postgres_16_runners)" "" tasks/s
echo
echo "all results: $OUT"
