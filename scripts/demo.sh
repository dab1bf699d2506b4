#!/usr/bin/env bash
# One command for a working local DAP: builds the binaries, starts dap-server on SQLite
# (127.0.0.1:8080, data in ./dap-demo), creates an API key, enrols and starts a runner with the
# sample dataset shipped in runner/examples/data, runs a fetch task (operation 100) while the
# live event feed is printed, shows the result and leaves everything running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dap-target}"
PORT="${DAP_DEMO_PORT:-8080}"
DEMO="${DAP_DEMO_DIR:-$PWD/dap-demo}"
BASE="http://127.0.0.1:$PORT"

missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null 2>&1 || { echo "error: install Rust >= 1.85 (rustup) first" >&2; exit 1; }

echo "== building dap-server and dap-runner (first build takes a while on 2 cores)"
cargo build -q -p dap-server -p dap-runner
BIN="$CARGO_TARGET_DIR/debug"

mkdir -p "$DEMO"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

KEY=$("$BIN/dap-server" apikey create --name demo --scope admin --data-dir "$DEMO")
RUNNER_TOKEN=$("$BIN/dap-server" runner create --name demo-laptop --data-dir "$DEMO")

"$BIN/dap-server" serve --listen "127.0.0.1:$PORT" --data-dir "$DEMO" 2>"$DEMO/server.log" &
pids+=($!)
for _ in $(seq 1 100); do curl -fs "$BASE/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "$BASE/healthz" >/dev/null || { echo "server did not start; see $DEMO/server.log" >&2; exit 1; }

DAP_RUNNER_TOKEN="$RUNNER_TOKEN" "$BIN/dap-runner" --server "$BASE" --name demo-laptop \
  --dataset "sales=$PWD/runner/examples/data/sales.csv" 2>"$DEMO/runner.log" &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fs -H "Authorization: Bearer $KEY" "$BASE/api/v1/runners" | grep -q '"state":"idle"' && break
  sleep 0.1
done

echo "== live event feed (SSE):"
curl -sN -H "Authorization: Bearer $KEY" "$BASE/api/v1/events" | grep --line-buffered -E '^(event|data):' &
pids+=($!)
sleep 0.3

TASK=$(curl -fs -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
  -d '{"operation_code":100,"params":{"dataset":"sales","limit":5,"columns":["date","region","product","revenue"]}}' \
  "$BASE/api/v1/tasks")
TASK_ID=$(echo "$TASK" | sed -E 's/.*"task_id":"([^"]+)".*/\1/')
for _ in $(seq 1 100); do
  curl -fs -H "Authorization: Bearer $KEY" "$BASE/api/v1/tasks/$TASK_ID" | grep -qE '"status":"(completed|failed)"' && break
  sleep 0.1
done
sleep 0.3
echo
echo "== result of task $TASK_ID:"
curl -fs -H "Authorization: Bearer $KEY" "$BASE/api/v1/tasks/$TASK_ID/result" || \
  curl -s -H "Authorization: Bearer $KEY" "$BASE/api/v1/tasks/$TASK_ID"
echo
cat <<MSG

DAP is running (Ctrl-C stops it):
  API:          $BASE/            (name + version)
  Runners:      curl -H "Authorization: Bearer \$DAP_KEY" $BASE/api/v1/runners
  Datasets:     curl -H "Authorization: Bearer \$DAP_KEY" $BASE/api/v1/datasets
  Tasks:        curl -H "Authorization: Bearer \$DAP_KEY" $BASE/api/v1/tasks
  Live feed:    curl -N -H "Authorization: Bearer \$DAP_KEY" $BASE/api/v1/events
  New task:     curl -H "Authorization: Bearer \$DAP_KEY" -H 'Content-Type: application/json' \\
                  -d '{"operation_code":100,"params":{"dataset":"sales","limit":10}}' $BASE/api/v1/tasks
  Admin key:    export DAP_KEY=$KEY
  Logs:         $DEMO/server.log, $DEMO/runner.log
MSG
wait "${pids[0]}"
