#!/usr/bin/env bash
# Celery + Redis on this machine doing the no-op round trip that dap-bench measures for DAP.
# Installs redis-server (Debian) if missing and a venv with celery + redis (PyPI), starts Redis
# on 127.0.0.1 on a free port (append-only file, fsync every second: about what DAP's SQLite
# WAL with synchronous=NORMAL promises) and one worker (prefork, one process per core), runs
# bench.py, then stops both by PID. Prints `celery_*: value unit` lines.
#   DAP_BENCH_ITERATIONS (2000)  sequential tasks for the latency figures
#   DAP_BENCH_CELERY_TASKS (5000) tasks for the throughput figure
#   DAP_BENCH_CELERY_CONCURRENCY (nproc) worker processes
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"

if ! command -v redis-server >/dev/null 2>&1; then
  echo "== installing redis-server (Debian)" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >&2
fi
# shellcheck source=../python-env.sh
. "$HERE/../python-env.sh"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/dap-bench-celery.XXXXXX")"
PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
REDIS_PID=""; WORKER_PID=""
cleanup() {
  # No errexit here: a killed child's non-zero status must not skip the rest.
  set +e
  for pid in $WORKER_PID $REDIS_PID; do
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

redis-server --port "$PORT" --bind 127.0.0.1 --dir "$WORK" --save "" \
  --appendonly yes --appendfsync everysec --daemonize no >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
export CELERY_BROKER_URL="redis://127.0.0.1:$PORT/0"
for _ in $(seq 1 100); do
  "$PY" -c "import redis,sys; redis.Redis(port=$PORT).ping()" 2>/dev/null && break
  sleep 0.1
done
"$PY" -c "import redis; redis.Redis(port=$PORT).ping()" || { cat "$WORK/redis.log" >&2; exit 1; }

cd "$HERE"
"$PY" -m celery -A tasks worker --pool prefork \
  --concurrency "${DAP_BENCH_CELERY_CONCURRENCY:-$(nproc)}" \
  --without-gossip --without-mingle --without-heartbeat --loglevel WARNING \
  >"$WORK/worker.log" 2>&1 &
WORKER_PID=$!

"$PY" bench.py --iterations "${DAP_BENCH_ITERATIONS:-2000}" --tasks "${DAP_BENCH_CELERY_TASKS:-5000}" || {
  echo "celery bench failed; worker log:" >&2; tail -20 "$WORK/worker.log" >&2; exit 1; }
echo "# celery $("$PY" -c 'import celery; print(celery.__version__)'), redis $(redis-server --version | sed -E 's/.*v=([^ ]+).*/\1/')" >&2
